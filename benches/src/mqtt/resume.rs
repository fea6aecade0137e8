//! `tidemq-bench mqtt offline --phases resume`: the sessions parked before
//! come back and take what was stored for them.
//!
//! Session i connects again with the same client id (at most
//! `--concurrency` at a time), to the broker given, which may be another
//! node of a cluster than the one it was parked on: then each CONNECT is a
//! takeover. It must get CONNACK with session present, then reads its
//! `--messages` queued messages (acknowledging each) and disconnects.
//!
//! Two figures: the resume, TCP connect to CONNACK (a success needs the
//! session present), and the drain, TCP connect to the last of its
//! messages (a session that gets fewer within `--timeout-secs` failed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemq_proto::mqtt::{Packet, PubResponse, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{Client, SessionKind};
use super::target::Target;
use super::{KEEP_ALIVE_SECS, OfflineArgs, note_error};
use crate::recorder::{FinalReport, Recorder, spawn_ticker};

/// The figures of the resume phase.
#[derive(Debug, Clone, Default)]
pub struct ResumeReport {
    /// CONNACKs with the session present; latency from the TCP connect.
    pub resumed: FinalReport,
    /// Sessions that got every queued message; latency from the TCP
    /// connect to the last message.
    pub drained: FinalReport,
}

/// Brings every parked session back, at most `--concurrency` at a time.
pub async fn resume_sessions(args: &OfflineArgs) -> anyhow::Result<ResumeReport> {
    let common = &args.common;
    let resumed = Arc::new(Recorder::new(0));
    let drained = Arc::new(Recorder::new(0));
    let ticker = {
        let resumed = Arc::clone(&resumed);
        spawn_ticker(common.output, move || resumed.tick())
    };
    let permits = Arc::new(Semaphore::new(common.concurrency));
    let target = Arc::new(common.target()?);
    let mut tasks = JoinSet::new();
    for index in 0..common.count {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (resumed, drained) = (Arc::clone(&resumed), Arc::clone(&drained));
        let comeback = Comeback {
            target: Arc::clone(&target),
            id: common.client_id('o', index),
            protocol: common.protocol(),
            messages: args.messages,
            timeout: common.timeout(),
        };
        tasks.spawn(async move {
            let _permit = permit;
            comeback.run(&resumed, &drained).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    ticker.abort();
    Ok(ResumeReport {
        resumed: resumed.report(),
        drained: drained.report(),
    })
}

/// One session coming back.
struct Comeback {
    target: Arc<Target>,
    id: String,
    protocol: tidemq_proto::mqtt::Protocol,
    messages: u64,
    timeout: Duration,
}

impl Comeback {
    /// Resumes the session and drains it, recording both.
    async fn run(self, resumed: &Recorder, drained: &Recorder) {
        let started = Instant::now();
        let connect = Client::connect(
            &self.target,
            self.id.clone(),
            self.protocol,
            KEEP_ALIVE_SECS,
            SessionKind::Persistent,
        );
        let mut client = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(client)) if client.session_present() => client,
            Ok(Ok(_)) => {
                resumed.failure();
                drained.failure();
                note_error("resume failed", &format!("{}: no session present", self.id));
                return;
            }
            Ok(Err(e)) => {
                resumed.failure();
                drained.failure();
                note_error("resume failed", &e);
                return;
            }
            Err(_) => {
                resumed.timeout();
                drained.timeout();
                return;
            }
        };
        resumed.success(started.elapsed());
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, drain(&mut client, self.messages)).await {
            Ok(Ok(())) => drained.success(started.elapsed()),
            Ok(Err(e)) => {
                drained.failure();
                note_error("drain failed", &e);
            }
            Err(_) => drained.timeout(),
        }
        if let Err(e) = client.disconnect_and_wait(self.timeout).await {
            note_error("disconnect failed", &e);
        }
    }
}

/// Reads `messages` PUBLISH packets, acknowledging the QoS 1 ones (the
/// acknowledgements of what one read brought go out together).
async fn drain(client: &mut Client, messages: u64) -> anyhow::Result<()> {
    let mut got = 0;
    while got < messages {
        while let Some(packet) = client.next_buffered()? {
            if let Packet::Publish(publish) = packet {
                if publish.qos == QoS::AtLeastOnce
                    && let Some(id) = publish.packet_id
                {
                    client.send(&Packet::PubAck(PubResponse::success(id)))?;
                }
                got += 1;
            }
        }
        client.flush().await?;
        if got < messages {
            client.fill().await?;
        }
    }
    Ok(())
}
