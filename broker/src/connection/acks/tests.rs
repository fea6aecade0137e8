use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tidemq_proto::mqtt::{Packet, PubResponse, ReasonCode};
use tidemq_storage_engine::StorageError;
use tokio::sync::oneshot;

use super::{AckQueue, Done, RecordSink, Work, Write};
use crate::durable::DurableError;

type Reply = oneshot::Sender<Result<(), DurableError>>;

/// The records of one write, and how to complete it (taken once).
type Batch = (Vec<u32>, Option<Reply>);

/// Records are numbers; a batch is written when the test completes it.
#[derive(Clone, Default)]
struct Sink {
    batches: Arc<Mutex<Vec<Batch>>>,
}

impl Sink {
    fn batches(&self) -> Vec<Vec<u32>> {
        let batches = self.batches.lock().expect("lock");
        batches.iter().map(|(records, _)| records.clone()).collect()
    }

    fn complete(&self, batch: usize, result: Result<(), DurableError>) {
        let reply = self.batches.lock().expect("lock")[batch].1.take();
        reply
            .expect("batch not completed yet")
            .send(result)
            .expect("queue alive");
    }
}

impl RecordSink for Sink {
    type Record = u32;
    type Stored = u32;

    fn write(&self, records: Vec<u32>) -> BoxFuture<'static, Result<Vec<u32>, DurableError>> {
        let (tx, rx) = oneshot::channel();
        self.batches
            .lock()
            .expect("lock")
            .push((records.clone(), Some(tx)));
        async move {
            rx.await.expect("test completes every batch")?;
            Ok(records)
        }
        .boxed()
    }
}

fn puback(id: u16) -> Packet {
    Packet::PubAck(PubResponse::success(id))
}

fn record(n: u32, id: u16) -> Work<u32, u32> {
    Work {
        publish: true,
        ..Work::after(Write::Record(n), Some(puback(id)))
    }
}

fn ids(done: &[Done<u32>]) -> Vec<u16> {
    done.iter()
        .map(|d| match &d.response {
            Some(Packet::PubAck(ack)) => ack.packet_id,
            Some(Packet::PingResp) => 0,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// Everything released so far, without waiting.
fn ready(queue: &mut AckQueue<Sink>) -> Vec<Done<u32>> {
    let mut out = Vec::new();
    while let Some(Some(step)) = queue.next().now_or_never() {
        out.extend(step.expect("writes succeed"));
    }
    out
}

fn failed() -> DurableError {
    DurableError::from(StorageError::Closed)
}

#[test]
fn a_reply_with_nothing_before_it_leaves_at_once() {
    let mut queue = AckQueue::new(Sink::default());
    let done = queue
        .push(Work::reply(Packet::PingResp))
        .expect("not queued");
    assert!(matches!(done.response, Some(Packet::PingResp)));
    assert!(queue.is_empty());
    assert_eq!(queue.len(), 0);
}

#[test]
fn records_of_one_pass_are_one_write_and_release_in_order() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    for n in 1..=3 {
        assert!(queue.push(record(n, n as u16)).is_none());
    }
    assert!(
        sink.batches().is_empty(),
        "records wait for the end of the pass"
    );
    queue.end_pass();
    assert_eq!(sink.batches(), vec![vec![1, 2, 3]]);
    assert_eq!(queue.len(), 3);
    assert_eq!(queue.unacked_publishes(), 3);
    assert!(
        ready(&mut queue).is_empty(),
        "nothing before the write is done"
    );
    sink.complete(0, Ok(()));
    let done = ready(&mut queue);
    assert_eq!(ids(&done), vec![1, 2, 3]);
    assert_eq!(
        done.iter().map(|d| d.stored).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    assert_eq!(queue.len(), 0);
    assert_eq!(queue.unacked_publishes(), 0);
}

#[test]
fn a_reply_after_records_sends_them_first_and_waits_behind_them() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    queue.push(record(1, 1));
    assert!(
        queue.push(Work::reply(Packet::PingResp)).is_none(),
        "must wait"
    );
    assert_eq!(
        sink.batches(),
        vec![vec![1]],
        "the record went out before the reply queued"
    );
    queue.push(record(2, 2));
    queue.end_pass();
    assert_eq!(sink.batches(), vec![vec![1], vec![2]]);
    // The second write finishes first; nothing may overtake the first.
    sink.complete(1, Ok(()));
    assert!(ready(&mut queue).is_empty());
    sink.complete(0, Ok(()));
    assert_eq!(ids(&ready(&mut queue)), vec![1, 0, 2]);
}

#[test]
fn a_write_of_its_own_keeps_its_place() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    let (tx, rx) = oneshot::channel::<()>();
    queue.push(record(1, 1));
    let alone = async move {
        rx.await.map_err(|_| failed())?;
        Ok(Some(99))
    };
    queue.push(Work::after(Write::Alone(alone.boxed()), Some(puback(2))));
    queue.push(record(3, 3));
    queue.end_pass();
    sink.complete(0, Ok(()));
    sink.complete(1, Ok(()));
    assert_eq!(
        ids(&ready(&mut queue)),
        vec![1],
        "2 waits for its own write"
    );
    tx.send(()).expect("queue alive");
    let done = ready(&mut queue);
    assert_eq!(ids(&done), vec![2, 3]);
    assert_eq!(done[0].stored, Some(99));
}

#[test]
fn a_qos2_id_is_in_progress_until_its_write_is_done() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    queue.push(Work {
        qos2: Some(7),
        ..record(1, 7)
    });
    assert!(queue.qos2_in_progress(7));
    assert!(!queue.qos2_in_progress(8));
    queue.end_pass();
    sink.complete(0, Ok(()));
    let done = ready(&mut queue);
    assert_eq!(done[0].qos2, Some(7), "the caller records the id only now");
    assert!(!queue.qos2_in_progress(7));
}

#[test]
fn a_failed_write_releases_nothing_after_it() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    queue.push(Work {
        qos2: Some(5),
        ..record(1, 5)
    });
    queue.push(Work::reply(Packet::PingResp));
    sink.complete(0, Err(failed()));
    let first = queue.next().now_or_never().flatten().expect("resolved");
    assert!(first.is_err(), "the failure is reported");
    assert!(
        queue.qos2_in_progress(5),
        "a failed QoS 2 id is never recorded"
    );
}

#[tokio::test]
async fn finish_completes_every_write_without_a_connection() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    queue.push(record(1, 1));
    queue.push(Work::reply(Packet::PingResp));
    queue.push(record(2, 2));
    // The pass never ended: the connection closed first.
    let finished = tokio::spawn(queue.finish());
    tokio::task::yield_now().await;
    assert_eq!(
        sink.batches(),
        vec![vec![1], vec![2]],
        "finish sent the open pass"
    );
    sink.complete(0, Ok(()));
    sink.complete(1, Ok(()));
    let (done, error) = finished.await.expect("no panic");
    assert!(error.is_none());
    assert_eq!(
        done.iter().filter_map(|d| d.stored).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_failed_write_whose_works_can_refuse_releases_the_refusals() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    let refusal = |packet_id| {
        Packet::PubAck(PubResponse {
            reason: ReasonCode::QuotaExceeded,
            ..PubResponse::success(packet_id)
        })
    };
    queue.push(Work {
        refusal: Some(Some(refusal(1))),
        ..record(1, 1)
    });
    queue.push(Work {
        qos2: Some(2),
        refusal: Some(Some(refusal(2))),
        ..record(2, 2)
    });
    queue.push(Work::reply(Packet::PingResp));
    queue.end_pass();
    sink.complete(0, Err(failed()));
    let done = ready(&mut queue);
    assert_eq!(ids(&done), vec![1, 2, 0], "refusals, then what followed");
    assert!(done[..2].iter().all(|d| d.refused && d.stored.is_none()));
    assert_eq!(done[1].qos2, None, "a refused QoS 2 id is not recorded");
    assert!(!queue.qos2_in_progress(2), "nor held");
    assert_eq!(queue.unacked_publishes(), 0);
    assert!(queue.is_empty());
}

#[test]
fn one_work_without_a_refusal_makes_the_failure_end_the_connection() {
    let sink = Sink::default();
    let mut queue = AckQueue::new(sink.clone());
    queue.push(Work {
        refusal: Some(None),
        ..record(1, 1)
    });
    queue.push(record(2, 2));
    queue.end_pass();
    sink.complete(0, Err(failed()));
    let first = queue.next().now_or_never().flatten().expect("resolved");
    assert!(first.is_err());
}
