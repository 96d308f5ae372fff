//! Test support shared by the UHF driver tests (`uhf_mercury`, `uhf_r2000`):
//! running a driver into a channel, collecting its reads, waiting on the
//! simulator, and the in-memory byte stream check.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracegate_drivers::{RawRead, ReadSink, ReaderHealth, ReaderMsg};

/// A driver running in a task, writing into a channel the test reads.
pub struct Running<E> {
    pub rx: tracegate_drivers::ReadReceiver,
    pub health: Arc<ReaderHealth>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), E>>,
}

/// Spawns `run` (a protocol's `run`) with a fresh sink, health and token.
pub fn start<E, F, Fut>(name: &str, protocol: &'static str, run: F) -> Running<E>
where
    F: FnOnce(ReadSink, Arc<ReaderHealth>, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let (sink, rx) = ReadSink::channel(1024);
    let health = ReaderHealth::new(name, protocol);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(sink, health.clone(), cancel.clone()));
    Running {
        rx,
        health,
        cancel,
        task,
    }
}

impl<E: Debug> Running<E> {
    /// The driver's own result, which must come within `secs`.
    pub async fn outcome(&mut self, secs: u64) -> Result<(), E> {
        tokio::time::timeout(Duration::from_secs(secs), &mut self.task)
            .await
            .expect("the driver did not end in time")
            .expect("the driver task panicked")
    }

    /// Cancels the driver, which must then end cleanly.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        self.outcome(5)
            .await
            .expect("a cancelled driver ends with Ok");
    }
}

/// Collects reads (firing their commit acks) until `done` says so, or fails
/// after 20 s.
pub async fn collect_until(
    rx: &mut tracegate_drivers::ReadReceiver,
    reads: &mut Vec<RawRead>,
    mut done: impl FnMut(&[RawRead]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(reads) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ReaderMsg::Reads { reads: r, ack })) => {
                reads.extend(r);
                if let Some(a) = ack {
                    a.fire();
                }
            }
            Ok(Some(ReaderMsg::Tap(_))) => panic!("a UHF driver produced a tap"),
            Ok(None) => panic!("driver ended; {} reads so far", reads.len()),
            Err(_) => panic!("timed out with {} reads", reads.len()),
        }
    }
}

/// Polls `cond` until it holds, or fails after 20 s.
pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a simulator (`serve`) and a driver (`drive`) over the two ends of an
/// in-memory duplex until `want` reads arrived, then cancels both, which
/// must end cleanly. Returns the reads.
pub async fn reads_over_duplex<S, SF, D, DF, E>(
    name: &str,
    protocol: &'static str,
    serve: S,
    drive: D,
    want: usize,
) -> Vec<RawRead>
where
    S: FnOnce(DuplexStream, CancellationToken) -> SF,
    SF: Future<Output = io::Result<()>> + Send + 'static,
    D: FnOnce(DuplexStream, ReadSink, Arc<ReaderHealth>, CancellationToken) -> DF,
    DF: Future<Output = Result<(), E>> + Send + 'static,
    E: Debug + Send + 'static,
{
    let (host, module) = tokio::io::duplex(4096);
    let cancel = CancellationToken::new();
    let sim_task = tokio::spawn(serve(module, cancel.clone()));
    let mut r = start(name, protocol, |sink, health, c| {
        drive(host, sink, health, c)
    });
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= want).await;
    // The driver first: a simulator going away first would be a disconnect.
    r.stop().await;
    cancel.cancel();
    sim_task.await.unwrap().unwrap();
    reads
}
