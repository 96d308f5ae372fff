//! The `[mqtt]` table of the configuration file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PublishError;

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// Accepted by the parser so the error can say what to do; not supported yet.
    #[serde(rename = "5")]
    V5,
}

/// How a batch of events is rendered into one MQTT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `{"schema":"tracegate.events/1", ..., "events":[...]}` (docs/events.md).
    #[default]
    Json,
    /// EPCIS 2.0 documents; reserved, see [`super::render`].
    Epcis2,
}

/// The `[mqtt]` table. Secrets are never in this struct: only paths of the
/// files holding them, so `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` (plain, default port 1883) or `mqtts://host:port`
    /// (TLS, default port 8883). Credentials in the URL are refused.
    pub url: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Defaults to the gateway id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// PEM CA bundle for `mqtts://`; defaults to the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for mutual TLS.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// File whose first line is the MQTT user name.
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    /// File whose first line is the MQTT password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// N: at most this many events in one MQTT message.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// B: at most this many bytes of event JSON in one MQTT message (a single
    /// larger event still goes alone).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// L: a partly filled batch of live events waits at most this long.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Backlog drain rate in events/s; 0 = unlimited. Live events are not limited.
    #[serde(default)]
    pub backlog_rate_limit: u32,
    /// Unacknowledged MQTT messages allowed at once (QoS 1 window); a quarter
    /// of it (at least one) is kept free for live events during a backlog drain.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    #[serde(default = "default_health_interval_secs")]
    pub health_interval_secs: u64,
    /// First reconnect delay; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// How often the published watermark is written to SQLite (at most).
    #[serde(default = "default_mark_interval_ms")]
    pub mark_interval_ms: u64,
    #[serde(default)]
    pub protocol: MqttProtocol,
    #[serde(default)]
    pub payload_format: PayloadFormat,
}

fn default_topic_prefix() -> String {
    "tracegate".to_string()
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_batch_max_events() -> usize {
    100
}
fn default_batch_max_bytes() -> usize {
    64 * 1024
}
fn default_linger_ms() -> u64 {
    20
}
fn default_inflight() -> u16 {
    32
}
fn default_health_interval_secs() -> u64 {
    60
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}
fn default_mark_interval_ms() -> u64 {
    200
}

impl MqttConfig {
    /// A config with every default and the given URL.
    pub fn with_url(url: impl Into<String>) -> Self {
        MqttConfig {
            url: url.into(),
            topic_prefix: default_topic_prefix(),
            client_id: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username_file: None,
            password_file: None,
            keep_alive_secs: default_keep_alive_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            batch_max_events: default_batch_max_events(),
            batch_max_bytes: default_batch_max_bytes(),
            linger_ms: default_linger_ms(),
            backlog_rate_limit: 0,
            inflight: default_inflight(),
            health_interval_secs: default_health_interval_secs(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            mark_interval_ms: default_mark_interval_ms(),
            protocol: MqttProtocol::V311,
            payload_format: PayloadFormat::Json,
        }
    }

    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<BrokerUrl, PublishError> {
        let url = BrokerUrl::parse(&self.url)?;
        let bad = |msg: String| Err(PublishError::Config(msg));
        if self.protocol == MqttProtocol::V5 {
            return bad("mqtt.protocol = \"5\" is not supported yet; use \"3.1.1\"".into());
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#', '\0'])
            || self.topic_prefix.ends_with('/')
        {
            return bad(format!(
                "mqtt.topic_prefix {:?} must be non-empty, without '+', '#' or a trailing '/'",
                self.topic_prefix
            ));
        }
        if self.batch_max_events == 0 || self.batch_max_events > 10_000 {
            return bad("mqtt.batch_max_events must be between 1 and 10000".into());
        }
        if self.batch_max_bytes < 1024 || self.batch_max_bytes > 16 * 1024 * 1024 {
            return bad("mqtt.batch_max_bytes must be between 1024 and 16777216".into());
        }
        if self.inflight == 0 || self.inflight > 1000 {
            return bad("mqtt.inflight must be between 1 and 1000".into());
        }
        if self.keep_alive_secs < 5 || self.keep_alive_secs > 65_535 {
            return bad("mqtt.keep_alive_secs must be between 5 and 65535".into());
        }
        if self.connect_timeout_secs == 0 {
            return bad("mqtt.connect_timeout_secs must be at least 1".into());
        }
        if self.health_interval_secs == 0 {
            return bad("mqtt.health_interval_secs must be at least 1".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return bad(
                "mqtt.reconnect_min_ms must be at least 1 and not above reconnect_max_ms".into(),
            );
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return bad(
                "mqtt.client_cert_file and mqtt.client_key_file must be given together".into(),
            );
        }
        if !url.tls
            && (self.ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some())
        {
            return bad(format!(
                "mqtt.url {} is plain MQTT but TLS files are configured; use mqtts://",
                self.url
            ));
        }
        if self.password_file.is_some() && self.username_file.is_none() {
            return bad("mqtt.password_file needs mqtt.username_file".into());
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 256 {
                return bad("mqtt.client_id must be 1 to 256 bytes".into());
            }
        }
        Ok(url)
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, PublishError> {
        let err = |why: &str| {
            Err(PublishError::Config(format!(
                "mqtt.url {url:?}: {why} (expected mqtt://host:port or mqtts://host:port)"
            )))
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return err("unknown scheme");
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return err("credentials in the URL are not allowed; use username_file/password_file");
        }
        if rest.contains(['/', '?', '#']) {
            return err("a path or query is not allowed");
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return err("unclosed '[' in IPv6 address");
            };
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().ok(),
                None if after.is_empty() => Some(default_port),
                None => None,
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().ok()),
                None => (rest.to_string(), Some(default_port)),
            }
        };
        let Some(port) = port.filter(|p| *p != 0) else {
            return err("bad port");
        };
        if host.is_empty() {
            return err("missing host");
        }
        Ok(BrokerUrl { tls, host, port })
    }
}

/// A secret read from a file; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Reads the first line of `path` (a trailing newline is not part of it).
    pub fn from_file(path: &Path, what: &str) -> Result<Secret, PublishError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PublishError::Config(format!(
                "cannot read the MQTT {what} file {}: {e}",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(PublishError::Config(format!(
                "the MQTT {what} file {} is empty",
                path.display()
            )));
        }
        Ok(Secret(line))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_parse_with_default_ports() {
        let u = BrokerUrl::parse("mqtt://broker.local").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.local", 1883)
        );
        let u = BrokerUrl::parse("mqtts://10.0.0.1:9000/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.1", 9000));
        let u = BrokerUrl::parse("mqtts://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8883));
        let u = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!(u.port, 1884);
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h:1883",
            "mqtt://h/topic",
            "mqtt://[::1",
        ] {
            let e = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("mqtt.url"), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_in_url_are_not_echoed_in_the_error() {
        let e = MqttConfig::with_url("mqtt://user:hunter2@h")
            .validate()
            .unwrap_err();
        // The URL is echoed, so the refusal itself must be the guard: the
        // config never reaches a connection attempt or a log line.
        assert!(e
            .to_string()
            .contains("credentials in the URL are not allowed"));
    }

    #[test]
    fn toml_table_with_defaults_and_unknown_key_refused() {
        let c: MqttConfig = toml::from_str("url = \"mqtt://127.0.0.1:1883\"").unwrap();
        assert_eq!(c, MqttConfig::with_url("mqtt://127.0.0.1:1883"));
        assert_eq!(c.topic_prefix, "tracegate");
        assert!(c.validate().is_ok());
        let e = toml::from_str::<MqttConfig>("url = \"mqtt://h\"\nbatch_size = 3").unwrap_err();
        assert!(e.to_string().contains("batch_size"));
        let c: MqttConfig = toml::from_str("url = \"mqtt://h\"\nprotocol = \"5\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("3.1.1"));
    }

    #[test]
    fn tls_files_with_plain_url_and_half_client_auth_are_refused() {
        let mut c = MqttConfig::with_url("mqtt://h");
        c.ca_file = Some("/x".into());
        assert!(c.validate().is_err());
        let mut c = MqttConfig::with_url("mqtts://h");
        c.client_cert_file = Some("/x".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn secret_debug_is_redacted_and_first_line_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret-value\n").unwrap();
        let s = Secret::from_file(&p, "password").unwrap();
        assert_eq!(s.expose(), "s3cret-value");
        assert!(!format!("{s:?}").contains("s3cret"));
        std::fs::write(&p, "").unwrap();
        assert!(Secret::from_file(&p, "password").is_err());
    }
}
