//! Criterion micro-benches of the storage engine's append and read paths.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidemq_storage_engine::{StorageEngine, SyncPolicy};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("append");
    for (name, sync, batch) in [
        ("no-sync/1", SyncPolicy::Never, 1usize),
        ("no-sync/64", SyncPolicy::Never, 64),
        ("fdatasync/1", SyncPolicy::Always, 1),
        ("fdatasync/64", SyncPolicy::Always, 64),
    ] {
        let dir = tempfile::tempdir_in(".").expect("scratch dir");
        let engine = rt
            .block_on(
                StorageEngine::builder(dir.path())
                    .io_threads(1)
                    .sync_policy(sync)
                    .open(),
            )
            .expect("engine opens");
        rt.block_on(engine.create_partition(0)).expect("partition");
        let records = vec![vec![7u8; 1024]; batch];
        group.throughput(Throughput::Bytes((1024 * batch) as u64));
        group.bench_function(BenchmarkId::new("1KiB", name), |b| {
            b.iter(|| rt.block_on(engine.append(0, &records)).expect("append"));
        });
        rt.block_on(engine.close()).expect("close");
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(".").expect("scratch dir");
    let engine = rt
        .block_on(
            StorageEngine::builder(dir.path())
                .io_threads(1)
                .sync_policy(SyncPolicy::Never)
                .segment_bytes(4 * 1024 * 1024)
                .max_record_bytes(64 * 1024)
                .open(),
        )
        .expect("engine opens");
    rt.block_on(engine.create_partition(0)).expect("partition");
    let batch = vec![vec![3u8; 1024]; 100];
    for _ in 0..200 {
        rt.block_on(engine.append(0, &batch)).expect("append");
    }
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(64 * 1024));
    let mut from = 0u64;
    group.bench_function("64KiB-from-random-offsets", |b| {
        b.iter(|| {
            from = (from + 7919) % 19_900;
            let records = rt.block_on(engine.read(0, from, 64 * 1024)).expect("read");
            assert!(!records.is_empty());
        });
    });
    group.finish();
    rt.block_on(engine.close()).expect("close");
}

criterion_group!(benches, append, read);
criterion_main!(benches);
