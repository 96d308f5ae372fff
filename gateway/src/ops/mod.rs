//! Operations: logging, the metrics/health/status endpoint, systemd
//! readiness, watchdog and reload notifications (SIGHUP itself is handled
//! by `reload.rs`).
//!
//! What `run` does with this module, in order:
//! 1. [`init_logging`] (from `main`, before anything logs).
//! 2. [`install_metrics`] before any component emits a metric.
//! 3. [`OpsHttp::bind`] (so a taken port fails start-up, before READY=1),
//!    then spawn [`OpsHttp::serve`].
//! 4. [`notify_ready`] once the store is open and readers and publisher run;
//!    spawn [`watchdog`].
//! 5. On SIGTERM: [`notify_stopping`], flush, exit.

mod access;
mod http;
mod logging;
mod notify;
mod page;
mod status;

pub use access::{Credentials, CredentialsError};
pub use http::{
    fetch_status, fetch_status_with, install_metrics, serve_http, OpsHttp, StatusSource,
};
pub use page::PageSources;
pub use status::{
    evaluate_health, render_status_human, with_health, Condition, Health, HealthInputs,
    HealthState, HeartbeatAge, LatencyMs, PublisherStatus, Severity, Status, StoreStatus,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use logging::{init_logging, LogFormat};
pub use notify::{
    notify_extend_timeout, notify_ready, notify_reload_finished, notify_reloading, notify_status,
    notify_stopping, watchdog, watchdog_decision, WatchdogDecision,
};

/// Default address of the HTTP endpoint: loopback only, Prometheus's
/// conventional exporter port range.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9464";
/// A gateway has one or two technicians looking at once.
pub const DEFAULT_MAX_VIEWERS: usize = 4;
/// Far above what scrapers, `tracegate status` and a few browsers use
/// (a browser keeps about 6 connections), far below what the process's
/// file descriptors allow.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;

/// The `[ops]` table as written in the file; [`RawOps::validate`] gives
/// the [`OpsConfig`] the gateway runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOps {
    /// Where `/metrics`, `/healthz` and `/status` are served. `"off"`
    /// disables the endpoint (and with it `tracegate status`).
    #[serde(with = "addr_or_off")]
    pub metrics_addr: Option<SocketAddr>,
    /// A component whose heartbeat is older than this is considered stuck:
    /// the watchdog stops pinging systemd and `/healthz` answers 503.
    pub stale_after_secs: u64,
    /// File with the token or user/password the endpoint requires (see
    /// `access.rs`); required when `metrics_addr` is not a loopback address.
    pub credentials_file: Option<PathBuf>,
    /// Browsers that may follow the page's live stream at once.
    pub max_viewers: usize,
    /// Open connections at once; one more gets a 503 and is closed.
    pub max_connections: usize,
}

impl Default for RawOps {
    fn default() -> Self {
        Self {
            metrics_addr: DEFAULT_HTTP_ADDR.parse().ok(),
            stale_after_secs: 20,
            credentials_file: None,
            max_viewers: DEFAULT_MAX_VIEWERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Operations settings, checked once when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// `None`: no HTTP endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// How long a component may go without progress before it counts as
    /// stuck; never zero (everything would be stuck all the time).
    pub stale_after: Duration,
    /// Set (and required) when `metrics_addr` is not loopback; the file is
    /// read when the endpoint starts, never its content into the config.
    pub credentials_file: Option<PathBuf>,
    /// At least 1.
    pub max_viewers: usize,
    /// At least 16.
    pub max_connections: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            metrics_addr: DEFAULT_HTTP_ADDR.parse().ok(),
            stale_after: Duration::from_secs(20),
            credentials_file: None,
            max_viewers: DEFAULT_MAX_VIEWERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl RawOps {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(self) -> Result<OpsConfig, (&'static str, String)> {
        if self.stale_after_secs == 0 {
            return Err((
                "stale_after_secs",
                "[ops] stale_after_secs must be at least 1 (seconds a component may go without progress)"
                    .into(),
            ));
        }
        if let Some(addr) = self.metrics_addr {
            if !addr.ip().is_loopback() && self.credentials_file.is_none() {
                return Err((
                    "metrics_addr",
                    format!(
                        "[ops] metrics_addr {addr} is not a loopback address: the page, /status and /metrics \
                         would be open to the network; set [ops] credentials_file to a file holding \
                         `token = ...` or `user = ...` and `password = ...` (see docs/operations.md)"
                    ),
                ));
            }
        }
        if self.max_viewers == 0 {
            return Err((
                "max_viewers",
                "[ops] max_viewers must be at least 1 (browsers following the page at once)".into(),
            ));
        }
        if self.max_connections < 16 {
            return Err((
                "max_connections",
                "[ops] max_connections must be at least 16".into(),
            ));
        }
        Ok(OpsConfig {
            metrics_addr: self.metrics_addr,
            stale_after: Duration::from_secs(self.stale_after_secs),
            credentials_file: self.credentials_file,
            max_viewers: self.max_viewers,
            max_connections: self.max_connections,
        })
    }
}

mod addr_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        t.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "metrics_addr {t:?} is not an IP:port address (e.g. \"127.0.0.1:9464\") or \"off\""
            ))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(
        "invalid log filter {filter:?}: {reason} (use e.g. \"info\" or \"tracegate=debug,info\")"
    )]
    LogFilter { filter: String, reason: String },
    #[error("logging was already initialised")]
    LoggingAlreadySet,
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot listen on {addr} for /metrics: {source} (change [ops] metrics_addr or set it to \"off\")")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot reach tracegate at {addr}: {reason} (is the service running, and is [ops] metrics_addr this address?)")]
    Fetch { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("[ops] credentials_file: {0}")]
    Credentials(#[from] CredentialsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        #[serde(default)]
        ops: RawOps,
    }

    #[test]
    fn an_absent_ops_table_gives_the_loopback_default() {
        let w: Wrapper = toml::from_str("").unwrap();
        assert_eq!(w.ops.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(w.ops.stale_after_secs, 20);
    }

    #[test]
    fn metrics_addr_off_disables_the_endpoint() {
        let w: Wrapper = toml::from_str("[ops]\nmetrics_addr = \"off\"\n").unwrap();
        assert_eq!(w.ops.metrics_addr, None);
        let back = toml::to_string(&w.ops).unwrap();
        assert!(back.contains("metrics_addr = \"off\""), "{back}");
    }

    #[test]
    fn a_bad_address_or_unknown_key_is_a_clear_error() {
        let e = toml::from_str::<Wrapper>("[ops]\nmetrics_addr = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("not an IP:port"), "{e}");
        let e = toml::from_str::<Wrapper>("[ops]\nmetric_addr = \"off\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn a_zero_stale_age_is_rejected_and_a_valid_one_becomes_a_duration() {
        let raw = RawOps {
            stale_after_secs: 0,
            ..RawOps::default()
        };
        assert_eq!(raw.validate().unwrap_err().0, "stale_after_secs");
        assert_eq!(RawOps::default().validate().unwrap(), OpsConfig::default());
    }

    #[test]
    fn an_address_beyond_loopback_needs_a_credentials_file() {
        let w: Wrapper = toml::from_str("[ops]\nmetrics_addr = \"0.0.0.0:9464\"\n").unwrap();
        let (key, msg) = w.ops.validate().unwrap_err();
        assert_eq!(key, "metrics_addr");
        assert!(msg.contains("credentials_file"), "{msg}");
        let w: Wrapper = toml::from_str(
            "[ops]\nmetrics_addr = \"0.0.0.0:9464\"\ncredentials_file = \"/etc/tracegate/page.cred\"\nmax_viewers = 2\n",
        )
        .unwrap();
        let ops = w.ops.validate().unwrap();
        assert_eq!(ops.max_viewers, 2);
        assert!(ops.credentials_file.is_some());
        let w: Wrapper = toml::from_str("[ops]\nmetrics_addr = \"[::1]:9464\"\n").unwrap();
        assert!(
            w.ops.validate().is_ok(),
            "IPv6 loopback needs no credentials"
        );
    }

    #[test]
    fn zero_viewers_or_too_few_connections_are_rejected() {
        let raw = RawOps {
            max_viewers: 0,
            ..RawOps::default()
        };
        assert_eq!(raw.validate().unwrap_err().0, "max_viewers");
        let raw = RawOps {
            max_connections: 4,
            ..RawOps::default()
        };
        assert_eq!(raw.validate().unwrap_err().0, "max_connections");
    }

    const GATEWAY: &str = "[gateway]\nid = \"gw1\"\nsite = \"site1\"\ndata_dir = \"/tmp/x\"\n\n\
        [[readers]]\nname = \"sim1\"\nkind = \"sim\"\n\n[[read_points]]\nname = \"door\"\nreader = \"sim1\"\n";

    #[test]
    fn the_config_check_locates_an_exposed_address_and_opens_the_credentials_file() {
        let text = format!("{GATEWAY}\n[ops]\nmetrics_addr = \"0.0.0.0:9464\"\n");
        let err = crate::config::parse(&text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:15:1: [ops] metrics_addr 0.0.0.0:9464 is not a loopback"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.cred");
        let weak = dir.path().join("weak.cred");
        std::fs::write(&weak, "token = hunter2\n").unwrap();
        for (file, needle) in [(&missing, "cannot read"), (&weak, "at least 16 characters")] {
            let text = format!(
                "{GATEWAY}\n[ops]\nmetrics_addr = \"0.0.0.0:9464\"\ncredentials_file = {file:?}\n"
            );
            let path = dir.path().join("t.toml");
            std::fs::write(&path, &text).unwrap();
            crate::config::load(&path).unwrap();
            let err = crate::config::load_and_check_files(&path)
                .unwrap_err()
                .to_string();
            assert!(err.contains(":16:1: [ops] credentials_file"), "{err}");
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("hunter2"), "the secret leaked: {err}");
        }
        std::fs::write(&weak, "user = tech\npassword = long-enough\n").unwrap();
        crate::config::load_and_check_files(&dir.path().join("t.toml")).unwrap();
    }
}
