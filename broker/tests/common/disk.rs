//! A small ext4 filesystem of a test's own, loop-mounted from an image
//! file, for what a node does on a full disk.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

/// A mounted ext4 image; unmounted and removed when dropped.
pub struct LoopDisk {
    image: tempfile::TempDir,
    mount: tempfile::TempDir,
}

impl LoopDisk {
    /// Makes and mounts an ext4 filesystem of `bytes` (no blocks reserved
    /// for root). `None` when not running as root, which mounting needs
    /// (CI runs as root): an unprivileged `cargo test` skips and says so.
    pub fn mount(bytes: u64) -> anyhow::Result<Option<LoopDisk>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a filesystem needs root");
            return Ok(None);
        }
        let (image, mount) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)?.set_len(bytes)?;
        run(Command::new("mkfs.ext4").args(["-q", "-m", "0"]).arg(&file))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(mount.path()))?;
        Ok(Some(LoopDisk { image, mount }))
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("{command:?}"))?;
    ensure!(status.success(), "{command:?}: {status}");
    Ok(())
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // Before the image and the mount point are removed.
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}
