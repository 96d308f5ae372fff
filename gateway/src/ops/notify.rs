//! systemd readiness, status, watchdog and reload notifications.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`), so `run`
//! calls them unconditionally. SIGHUP itself is handled in `reload.rs`.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Heartbeats;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // Losing a notification is not fatal by itself; a lost READY=1 makes
        // systemd time the start out, which the log then explains.
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// READY=1: send once the store is open and the readers and publisher run.
pub fn notify_ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// STOPPING=1: send as soon as shutdown starts (SIGTERM).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// STATUS=…: one line shown by `systemctl status tracegate`.
pub fn notify_status(status: &str) {
    // A newline would end the STATUS= assignment and start a bogus one.
    let line = status.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)]);
}

/// EXTEND_TIMEOUT_USEC=…: during long start-up work (integrity check,
/// migration), so `TimeoutStartSec` does not kill a healthy start.
pub fn notify_extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// RELOADING=1 with MONOTONIC_USEC, as `Type=notify-reload` (systemd ≥ 253)
/// requires and older versions accept. Follow with [`notify_ready`].
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Whether the watchdog may ping now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogDecision {
    Ping,
    /// A component (or a reader task, `reader NAME`) has made no progress
    /// for `age_ms` (> the allowed age).
    Withhold {
        component: Arc<str>,
        age_ms: u64,
    },
}

/// The decision over heartbeat ages, sans-IO: ping only while every age
/// (the pipeline, store, publisher and each reader task) is at most
/// `max_age_ms`. A reader that is disconnected and retrying keeps its
/// progress counter moving, so it does not stop the pings.
pub fn decide(ages: &[(Arc<str>, u64)], max_age_ms: u64) -> WatchdogDecision {
    match ages.iter().find(|(_, age)| *age > max_age_ms) {
        None => WatchdogDecision::Ping,
        Some((component, age_ms)) => WatchdogDecision::Withhold {
            component: component.clone(),
            age_ms: *age_ms,
        },
    }
}

pub fn watchdog_decision(heartbeats: &Heartbeats, max_age: Duration) -> WatchdogDecision {
    let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    decide(&heartbeats.ages(), max_ms)
}

/// Pings systemd's watchdog (WATCHDOG=1) at half of `WatchdogSec` while
/// every heartbeat is younger than `max_age`. When one is older, pings stop
/// and systemd kills and restarts the service after `WatchdogSec`; the log
/// and `systemctl status` name the stuck component. Returns at once when the
/// watchdog is not enabled for this process (`WATCHDOG_USEC` unset or for
/// another PID), and when `cancel` fires.
pub async fn watchdog(heartbeats: Heartbeats, max_age: Duration, cancel: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        tracing::debug!("systemd watchdog not enabled");
        return;
    };
    let period = (timeout / 2).max(Duration::from_millis(10));
    tracing::info!(
        watchdog_secs = timeout.as_secs_f64(),
        max_age_secs = max_age.as_secs_f64(),
        "systemd watchdog enabled"
    );
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withholding: Option<Arc<str>> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match watchdog_decision(&heartbeats, max_age) {
            WatchdogDecision::Ping => {
                if let Some(component) = withholding.take() {
                    tracing::warn!(
                        component = %component,
                        "component is making progress again, watchdog pings resume"
                    );
                    notify_status("running");
                }
                send(&[NotifyState::Watchdog]);
            }
            WatchdogDecision::Withhold { component, age_ms } => {
                if withholding.as_ref() != Some(&component) {
                    tracing::error!(
                        component = %component,
                        age_ms,
                        "component has made no progress: withholding watchdog pings, systemd will restart the service"
                    );
                    notify_status(&format!(
                        "{component} stuck for {:.0} s, watchdog pings stopped",
                        age_ms as f64 / 1000.0
                    ));
                    withholding = Some(component);
                }
            }
        }
    }
}

/// READY=1 after a reload that restarted nothing: the file was unchanged,
/// or it was rejected and the running configuration stays. A rejection is
/// shown in `systemctl status` until the next successful start or reload.
/// (A reload that applies a new file restarts the components, and `run`
/// sends READY=1 itself once they are up.)
pub fn notify_reload_finished(rejected: Option<&str>) {
    match rejected {
        None => send(&[NotifyState::Ready, NotifyState::Status("running")]),
        Some(error) => {
            let status = format!("reload failed: {error}").replace(['\n', '\r'], " ");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;

    use tracegate_drivers::Clock;

    use super::*;

    /// The notify tests set process-wide environment variables.
    static ENV: Mutex<()> = Mutex::new(());

    struct FakeSystemd {
        sock: UnixDatagram,
        _dir: tempfile::TempDir,
    }

    impl FakeSystemd {
        /// Binds a datagram socket and points NOTIFY_SOCKET (and, when
        /// given, WATCHDOG_USEC/WATCHDOG_PID) at it, as systemd does.
        fn start(watchdog: Option<Duration>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            std::env::set_var("NOTIFY_SOCKET", &path);
            match watchdog {
                Some(d) => {
                    std::env::set_var("WATCHDOG_USEC", d.as_micros().to_string());
                    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
                }
                None => {
                    std::env::remove_var("WATCHDOG_USEC");
                    std::env::remove_var("WATCHDOG_PID");
                }
            }
            Self { sock, _dir: dir }
        }

        /// Every datagram received within `window`.
        fn drain(&self, window: Duration) -> Vec<String> {
            let until = std::time::Instant::now() + window;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while std::time::Instant::now() < until {
                if let Ok(n) = self.sock.recv(&mut buf) {
                    out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            out
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
    }

    fn count(msgs: &[String], line: &str) -> usize {
        msgs.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }

    #[test]
    fn ready_stopping_and_status_reach_the_notify_socket() {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let sd = FakeSystemd::start(None);
        notify_ready();
        notify_status("draining\nbacklog");
        notify_stopping();
        let msgs = sd.drain(Duration::from_millis(200));
        assert!(count(&msgs, "READY=1") >= 1, "{msgs:?}");
        assert!(count(&msgs, "STATUS=draining backlog") >= 1, "{msgs:?}");
        assert!(count(&msgs, "STOPPING=1") >= 1, "{msgs:?}");
    }

    #[test]
    fn decision_withholds_for_the_stale_component_only() {
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let publisher = hb.register("publisher");
        assert_eq!(
            watchdog_decision(&hb, Duration::from_secs(5)),
            WatchdogDecision::Ping
        );
        std::thread::sleep(Duration::from_millis(60));
        store.beat();
        match watchdog_decision(&hb, Duration::from_millis(30)) {
            WatchdogDecision::Withhold { component, age_ms } => {
                assert_eq!(&*component, "publisher");
                assert!(age_ms > 30);
            }
            WatchdogDecision::Ping => panic!("a stale publisher must stop the pings"),
        }
        publisher.beat();
        assert_eq!(
            watchdog_decision(&hb, Duration::from_millis(30)),
            WatchdogDecision::Ping
        );
    }

    /// The reader side of the decision, sans-IO: a reader task's age is the
    /// time since its progress counter last moved ([`crate::heartbeat::Progress`]).
    #[test]
    fn a_wedged_reader_stops_the_pings_and_a_retrying_one_does_not() {
        use crate::heartbeat::Progress;
        let max = 20_000;
        let (mut retrying, mut wedged) = (Progress::new(0, 0), Progress::new(0, 0));
        let mut turns = 0u64;
        let ages_at = |now: u64, turns: u64, r: &mut Progress, w: &mut Progress| {
            vec![
                (Arc::<str>::from("store"), 100),
                (Arc::<str>::from("reader dock"), r.observe(turns, now)),
                (Arc::<str>::from("reader desk"), w.observe(7, now)),
            ]
        };
        // Both readers worked until t = 0; then "desk" blocks in a call
        // that never returns, while "dock" is unplugged and retried every
        // 1.5 s by its supervisor (each attempt is a turn).
        let mut now = 0;
        while now <= max {
            turns += 1;
            let ages = ages_at(now, turns, &mut retrying, &mut wedged);
            assert_eq!(decide(&ages, max), WatchdogDecision::Ping, "t = {now} ms");
            now += 1_500;
        }
        let ages = ages_at(now, turns + 1, &mut retrying, &mut wedged);
        assert_eq!(
            decide(&ages, max),
            WatchdogDecision::Withhold {
                component: Arc::from("reader desk"),
                age_ms: now
            }
        );
        // Only the wedged one counts: without it the pings go on.
        assert_eq!(decide(&ages[..2], max), WatchdogDecision::Ping);
    }

    #[test]
    fn watchdog_pings_while_fresh_and_stops_when_a_component_is_stuck() {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let sd = FakeSystemd::start(Some(Duration::from_millis(100)));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hb = Heartbeats::new(Clock::new());
        let store = hb.register("store");
        let cancel = CancellationToken::new();
        let task = rt.spawn(watchdog(
            hb.clone(),
            Duration::from_millis(150),
            cancel.clone(),
        ));
        // The store makes progress every 10 ms until `beating` is cancelled.
        let beating = CancellationToken::new();
        {
            let store = store.clone();
            let stop = beating.clone();
            rt.spawn(async move {
                while !stop.is_cancelled() {
                    store.beat();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }

        // Phase 1: healthy, pings every 50 ms.
        let msgs = sd.drain(Duration::from_millis(400));
        assert!(
            count(&msgs, "WATCHDOG=1") >= 3,
            "pings while healthy: {msgs:?}"
        );

        // Phase 2: the store stops; after 150 ms it is stale and pings stop.
        beating.cancel();
        let _ = sd.drain(Duration::from_millis(300));
        let msgs = sd.drain(Duration::from_millis(400));
        assert_eq!(
            count(&msgs, "WATCHDOG=1"),
            0,
            "no pings while stuck: {msgs:?}"
        );

        // Phase 3: progress again, pings resume.
        let beating = CancellationToken::new();
        {
            let store = store.clone();
            let stop = beating.clone();
            rt.spawn(async move {
                while !stop.is_cancelled() {
                    store.beat();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        let msgs = sd.drain(Duration::from_millis(300));
        assert!(count(&msgs, "WATCHDOG=1") >= 1, "pings resume: {msgs:?}");
        beating.cancel();
        cancel.cancel();
        rt.block_on(task).unwrap();
    }

    #[test]
    fn stuck_component_is_named_in_the_status_line() {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let sd = FakeSystemd::start(Some(Duration::from_millis(60)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hb = Heartbeats::new(Clock::new());
        let _never_beats = hb.register("publisher");
        let cancel = CancellationToken::new();
        rt.block_on(async {
            let c = cancel.clone();
            let t = tokio::spawn(watchdog(hb.clone(), Duration::from_millis(20), c));
            tokio::time::sleep(Duration::from_millis(150)).await;
            cancel.cancel();
            t.await.unwrap();
        });
        let msgs = sd.drain(Duration::from_millis(100));
        assert!(
            msgs.iter()
                .any(|m| m.contains("STATUS=publisher stuck for")),
            "{msgs:?}"
        );
    }

    #[test]
    fn without_watchdog_usec_the_task_returns_at_once() {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let sd = FakeSystemd::start(None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hb = Heartbeats::new(Clock::new());
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                watchdog(hb, Duration::from_secs(1), CancellationToken::new()),
            )
            .await
            .unwrap();
        });
        assert_eq!(
            count(&sd.drain(Duration::from_millis(100)), "WATCHDOG=1"),
            0
        );
    }

    #[test]
    fn a_rejected_reload_says_why_in_the_status_and_is_ready_again() {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let sd = FakeSystemd::start(None);
        notify_reloading();
        notify_reload_finished(Some("readers[0].port: no such\ndevice"));
        let msgs = sd.drain(Duration::from_millis(100));
        assert_eq!(count(&msgs, "RELOADING=1"), 1, "{msgs:?}");
        assert!(count(&msgs, "READY=1") >= 1, "{msgs:?}");
        assert_eq!(
            count(
                &msgs,
                "STATUS=reload failed: readers[0].port: no such device"
            ),
            1,
            "{msgs:?}"
        );
    }
}
