//! The `[mqtt]` table of the configuration file.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The `[mqtt]` table as written in the file; [`RawMqtt::validate`] turns
/// it into the [`MqttConfig`] the publisher runs on. Secrets are never in
/// either struct, only paths of the files holding them, so `Debug` is safe
/// to log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
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
    /// The PUBACK deadline: connected, messages out and no PUBACK for this
    /// long, the connection is dropped and made again (a silent partition
    /// is noticed here, not at the keep-alive); events waiting this long
    /// with no PUBACK at all report `publish_stalled`.
    #[serde(default = "default_puback_timeout_secs")]
    pub puback_timeout_secs: u64,
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

/// The publisher's settings, checked once when the configuration is loaded:
/// nothing downstream validates or parses them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub broker: BrokerUrl,
    /// Topic prefix: non-empty, no wildcards, no trailing '/'.
    pub topic_prefix: String,
    /// 1 to 256 bytes; `None`: the gateway id.
    pub client_id: Option<String>,
    /// PEM CA bundle for TLS; `None`: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS (only with a TLS broker URL).
    pub client_auth: Option<ClientAuth>,
    pub credentials: Option<Credentials>,
    /// 5 s to 65535 s (what MQTT's keep-alive field can carry).
    pub keep_alive: Duration,
    /// At least 1 s.
    pub connect_timeout: Duration,
    /// 1 s to 600 s (default 10 s).
    pub puback_timeout: Duration,
    /// At most this many events in one message (up to 10000).
    pub batch_max_events: NonZeroUsize,
    /// At most this many bytes of event JSON in one message (1 KiB to 16 MiB).
    pub batch_max_bytes: NonZeroUsize,
    /// How long a partly filled batch of live events may wait (zero: never).
    pub linger: Duration,
    /// Backlog drain rate in events/s; `None`: unlimited.
    pub backlog_rate_limit: Option<NonZeroU32>,
    /// Unacknowledged messages allowed at once (up to 1000).
    pub inflight: NonZeroU16,
    /// At least 1 s.
    pub health_interval: Duration,
    /// First reconnect delay (at least 1 ms), doubling up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often, at most, the published watermark is written to SQLite.
    pub mark_interval: Duration,
    pub payload_format: PayloadFormat,
}

/// Client certificate and key for mutual TLS: one is useless without the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Files holding the MQTT user name and (optionally) password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username_file: PathBuf,
    pub password_file: Option<PathBuf>,
}

/// One thing wrong with the `[mqtt]` table, and the key it is about (so the
/// config loader can point at the line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttProblem {
    pub key: &'static str,
    pub message: String,
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
/// Well below the keep-alive (a silent partition is noticed at 1.5 of it):
/// a broker that answers at all answers a PUBACK in milliseconds, and a
/// slow SD card at the broker end in a second or two.
pub const DEFAULT_PUBACK_TIMEOUT_SECS: u64 = 10;
fn default_puback_timeout_secs() -> u64 {
    DEFAULT_PUBACK_TIMEOUT_SECS
}
fn default_batch_max_events() -> usize {
    100
}
fn default_batch_max_bytes() -> usize {
    64 * 1024
}
/// No linger by default: the store writer already groups the events of a
/// few tens of milliseconds into one commit, and each commit becomes one
/// message; lingering on top of that only added its time to every event's
/// latency.
fn default_linger_ms() -> u64 {
    0
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

impl RawMqtt {
    /// A table with every default and the given URL.
    pub fn with_url(url: impl Into<String>) -> Self {
        RawMqtt {
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
            puback_timeout_secs: default_puback_timeout_secs(),
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

    /// Checks everything that can be checked without touching the network
    /// or the files named, and reports every problem, not only the first.
    pub fn validate(self) -> Result<MqttConfig, Vec<MqttProblem>> {
        let mut problems = Vec::new();
        let mut bad = |key: &'static str, message: String| {
            problems.push(MqttProblem { key, message });
        };
        let broker = match BrokerUrl::parse(&self.url) {
            Ok(u) => Some(u),
            Err(e) => {
                bad("url", e.to_string());
                None
            }
        };
        if self.protocol == MqttProtocol::V5 {
            bad(
                "protocol",
                "mqtt.protocol = \"5\" is not supported yet; use \"3.1.1\"".into(),
            );
        }
        if let Err(why) = check_topic_prefix(&self.topic_prefix) {
            bad("topic_prefix", format!("mqtt.topic_prefix: {why}"));
        }
        let batch_max_events = NonZeroUsize::new(self.batch_max_events)
            .filter(|n| n.get() <= 10_000)
            .or_else(|| {
                bad(
                    "batch_max_events",
                    "mqtt.batch_max_events must be between 1 and 10000".into(),
                );
                None
            });
        let batch_max_bytes = NonZeroUsize::new(self.batch_max_bytes)
            .filter(|n| (1024..=16 * 1024 * 1024).contains(&n.get()))
            .or_else(|| {
                bad(
                    "batch_max_bytes",
                    "mqtt.batch_max_bytes must be between 1024 and 16777216".into(),
                );
                None
            });
        let inflight = NonZeroU16::new(self.inflight)
            .filter(|n| n.get() <= 1000)
            .or_else(|| {
                bad(
                    "inflight",
                    "mqtt.inflight must be between 1 and 1000".into(),
                );
                None
            });
        if !(5..=65_535).contains(&self.keep_alive_secs) {
            bad(
                "keep_alive_secs",
                "mqtt.keep_alive_secs must be between 5 and 65535".into(),
            );
        }
        if self.connect_timeout_secs == 0 {
            bad(
                "connect_timeout_secs",
                "mqtt.connect_timeout_secs must be at least 1".into(),
            );
        }
        if !(1..=600).contains(&self.puback_timeout_secs) {
            bad(
                "puback_timeout_secs",
                "mqtt.puback_timeout_secs must be between 1 and 600".into(),
            );
        }
        if self.health_interval_secs == 0 {
            bad(
                "health_interval_secs",
                "mqtt.health_interval_secs must be at least 1".into(),
            );
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            bad(
                "reconnect_min_ms",
                "mqtt.reconnect_min_ms must be at least 1 and not above reconnect_max_ms".into(),
            );
        }
        let client_auth = match (self.client_cert_file, self.client_key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientAuth {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (cert, _) => {
                bad(
                    if cert.is_some() {
                        "client_cert_file"
                    } else {
                        "client_key_file"
                    },
                    "mqtt.client_cert_file and mqtt.client_key_file must be given together".into(),
                );
                None
            }
        };
        if let Some(url) = &broker {
            if !url.tls && (self.ca_file.is_some() || client_auth.is_some()) {
                bad(
                    "url",
                    format!(
                        "mqtt.url {} is plain MQTT but TLS files are configured; use mqtts://",
                        self.url
                    ),
                );
            }
        }
        let credentials = match (self.username_file, self.password_file) {
            (Some(username_file), password_file) => Some(Credentials {
                username_file,
                password_file,
            }),
            (None, None) => None,
            (None, Some(_)) => {
                bad(
                    "password_file",
                    "mqtt.password_file needs mqtt.username_file".into(),
                );
                None
            }
        };
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 256 {
                bad("client_id", "mqtt.client_id must be 1 to 256 bytes".into());
            }
        }
        match (broker, batch_max_events, batch_max_bytes, inflight) {
            (Some(broker), Some(batch_max_events), Some(batch_max_bytes), Some(inflight))
                if problems.is_empty() =>
            {
                Ok(MqttConfig {
                    broker,
                    topic_prefix: self.topic_prefix,
                    client_id: self.client_id,
                    ca_file: self.ca_file,
                    client_auth,
                    credentials,
                    keep_alive: Duration::from_secs(self.keep_alive_secs),
                    connect_timeout: Duration::from_secs(self.connect_timeout_secs),
                    puback_timeout: Duration::from_secs(self.puback_timeout_secs),
                    batch_max_events,
                    batch_max_bytes,
                    linger: Duration::from_millis(self.linger_ms),
                    backlog_rate_limit: NonZeroU32::new(self.backlog_rate_limit),
                    inflight,
                    health_interval: Duration::from_secs(self.health_interval_secs),
                    reconnect_min: Duration::from_millis(self.reconnect_min_ms),
                    reconnect_max: Duration::from_millis(self.reconnect_max_ms),
                    mark_interval: Duration::from_millis(self.mark_interval_ms),
                    payload_format: self.payload_format,
                })
            }
            _ => Err(problems),
        }
    }
}

impl MqttConfig {
    /// Settings with every default and the given URL (the demo, tests).
    pub fn with_url(url: impl Into<String>) -> Result<MqttConfig, PublishError> {
        RawMqtt::with_url(url).validate().map_err(|problems| {
            PublishError::Config(
                problems
                    .into_iter()
                    .map(|p| p.message)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }
}

/// Opens every file the settings name and reports, per field, each one the
/// publisher could not use: credentials must have a non-empty first line,
/// TLS files must hold PEM certificates or a key, and a client certificate
/// must go with its key. Contents never appear in a message.
pub fn check_files(cfg: &MqttConfig) -> Vec<MqttProblem> {
    let mut problems = Vec::new();
    let mut bad = |key: &'static str, message: String| {
        problems.push(MqttProblem { key, message });
    };
    if let Some(creds) = &cfg.credentials {
        if let Err(e) = Secret::from_file(&creds.username_file, "username") {
            bad("username_file", format!("mqtt.username_file: {e}"));
        }
        if let Some(path) = &creds.password_file {
            if let Err(e) = Secret::from_file(path, "password") {
                bad("password_file", format!("mqtt.password_file: {e}"));
            }
        }
    }
    if !cfg.broker.tls {
        return problems;
    }
    let ca = cfg
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(super::tls::SYSTEM_CA_BUNDLE));
    let mut files_ok = true;
    if let Err(e) = pem_certificates(&ca) {
        files_ok = false;
        bad("ca_file", format!("mqtt.ca_file {}: {e}", ca.display()));
    }
    if let Some(auth) = &cfg.client_auth {
        if let Err(e) = pem_certificates(&auth.cert_file) {
            files_ok = false;
            bad(
                "client_cert_file",
                format!("mqtt.client_cert_file {}: {e}", auth.cert_file.display()),
            );
        }
        use rustls::pki_types::pem::PemObject;
        if let Err(e) = rustls::pki_types::PrivateKeyDer::from_pem_file(&auth.key_file) {
            files_ok = false;
            bad(
                "client_key_file",
                format!(
                    "mqtt.client_key_file {}: no usable private key ({e})",
                    auth.key_file.display()
                ),
            );
        }
    }
    // Each file is fine on its own; whether they work together (a key that
    // matches the certificate) is what building the TLS client tells.
    if files_ok {
        if let Err(e) = super::tls::client_config(cfg) {
            bad("client_cert_file", e.to_string());
        }
    }
    problems
}

/// The number of PEM certificates in `path`; none is an error.
fn pem_certificates(path: &Path) -> Result<usize, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs.len())
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` with the `url`
    /// crate (WHATWG host rules: a space or other forbidden character in
    /// the host is refused). Credentials in the URL are refused, and the
    /// error then never repeats the URL: it would carry the password into
    /// the journal.
    pub fn parse(url: &str) -> Result<BrokerUrl, PublishError> {
        const EXPECTED: &str = "expected mqtt://host:port or mqtts://host:port";
        let shown = if url.contains('@') {
            "(not shown: it contains credentials)".to_owned()
        } else {
            format!("{url:?}")
        };
        let err = |why: &str| {
            Err(PublishError::Config(format!(
                "mqtt.url {shown}: {why} ({EXPECTED})"
            )))
        };
        if url.len() > MAX_URL_LEN {
            return err(&format!("longer than {MAX_URL_LEN} characters"));
        }
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return err(&e.to_string()),
        };
        let tls = match parsed.scheme() {
            "mqtts" => true,
            "mqtt" => false,
            _ => return err("unknown scheme"),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return err("credentials in the URL are not allowed; use username_file/password_file");
        }
        if !matches!(parsed.path(), "" | "/")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return err("a path or query is not allowed");
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return err("missing host"),
        };
        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
        if port == 0 {
            return err("bad port");
        }
        Ok(BrokerUrl { tls, host, port })
    }
}

/// Longest topic prefix. With the site and gateway id (64 characters each)
/// and the longest suffix, every topic stays far below MQTT's 65,535-byte
/// limit, so no topic is refused by the broker after `check-config` passed.
pub const MAX_TOPIC_PREFIX_LEN: usize = 128;

/// A topic prefix is one or more MQTT topic levels the gateway publishes
/// under: no wildcards, no NUL, no empty level (a leading, trailing or
/// doubled '/'), and no leading '$' (brokers reserve `$SYS` and friends and
/// refuse or ignore publishes there).
pub fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_TOPIC_PREFIX_LEN {
        return Err(format!(
            "{} characters; at most {MAX_TOPIC_PREFIX_LEN}",
            prefix.len()
        ));
    }
    let why = if prefix.is_empty() {
        "must not be empty"
    } else if prefix.contains(['+', '#', '\0']) {
        "must not contain '+', '#' or NUL (they are wildcards or invalid in a topic)"
    } else if prefix.starts_with('$') {
        "must not start with '$' (topics starting with '$' are reserved by the broker)"
    } else if prefix.split('/').any(str::is_empty) {
        "must not start or end with '/' or contain '//' (every topic level needs a name)"
    } else {
        return Ok(());
    };
    Err(format!("{prefix:?} {why}"))
}

/// Longest broker URL accepted: a host name is at most 253 characters.
const MAX_URL_LEN: usize = 300;

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A secret read from a file; `Debug` never shows it, and its memory is
/// wiped when it is dropped. It is read when a connection is made and handed
/// to rumqttc, whose options keep their own copy for that connection (their
/// `Debug` would print it: tracegate never formats them).
#[derive(PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    /// Reads the first line of `path` (a trailing newline is not part of it).
    pub fn from_file(path: &Path, what: &str) -> Result<Secret, PublishError> {
        tracegate_drivers::secret_file::warn_if_readable_by_others(path, &format!("MQTT {what}"));
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            PublishError::Config(format!(
                "cannot read the MQTT {what} file {}: {e}",
                path.display()
            ))
        })?);
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
            "mqtt://ho st:1883",
            "mqtt://h:1883?x=1",
        ] {
            let e = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("mqtt.url"), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_before_any_connection() {
        for url in [
            "mqtt://user:hunter2@h",
            "mqtts://:hunter2@h:8883",
            "mqtt://us er:hunter2@h",
        ] {
            let e = MqttConfig::with_url(url).unwrap_err().to_string();
            // Refused before any connection, and the refusal itself does
            // not carry the password into a log line.
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("mqtt.url"), "{e}");
        }
    }

    #[test]
    fn a_table_with_defaults_becomes_typed_settings_and_unknown_keys_are_refused() {
        let raw: RawMqtt = toml::from_str("url = \"mqtt://127.0.0.1:1883\"").unwrap();
        assert_eq!(raw, RawMqtt::with_url("mqtt://127.0.0.1:1883"));
        let c = raw.validate().unwrap();
        assert_eq!(c.topic_prefix, "tracegate");
        assert_eq!(c.broker.to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.backlog_rate_limit, None);
        let e = toml::from_str::<RawMqtt>("url = \"mqtt://h\"\nbatch_size = 3").unwrap_err();
        assert!(e.to_string().contains("batch_size"));
        let raw: RawMqtt = toml::from_str("url = \"mqtt://h\"\nprotocol = \"5\"").unwrap();
        let problems = raw.validate().unwrap_err();
        assert_eq!(problems[0].key, "protocol");
        assert!(problems[0].message.contains("3.1.1"));
    }

    #[test]
    fn every_problem_in_the_table_is_reported_with_its_key() {
        let mut raw = RawMqtt::with_url("mqtt://h");
        raw.batch_max_events = 0;
        raw.inflight = 0;
        raw.keep_alive_secs = 1;
        raw.password_file = Some("/pw".into());
        let keys: Vec<&str> = raw.validate().unwrap_err().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "batch_max_events",
                "inflight",
                "keep_alive_secs",
                "password_file"
            ]
        );
    }

    #[test]
    fn tls_files_with_plain_url_and_half_client_auth_are_refused() {
        let mut c = RawMqtt::with_url("mqtt://h");
        c.ca_file = Some("/x".into());
        assert_eq!(c.validate().unwrap_err()[0].key, "url");
        let mut c = RawMqtt::with_url("mqtts://h");
        c.client_cert_file = Some("/x".into());
        assert_eq!(c.validate().unwrap_err()[0].key, "client_cert_file");
    }

    #[test]
    fn topic_prefixes_must_be_plain_topic_levels() {
        for ok in ["tracegate", "acme/eu/tracegate", "a.b-c_d"] {
            assert_eq!(check_topic_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "$SYS/x", "/lead", "trail/", "a//b", "a/+/b", "a/#", "a\0b",
        ] {
            assert!(check_topic_prefix(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_TOPIC_PREFIX_LEN + 1);
        let e = check_topic_prefix(&long).unwrap_err();
        assert!(e.len() < 100, "the prefix is not echoed: {e}");
    }

    #[test]
    fn broker_urls_print_back_in_their_canonical_form() {
        for (given, shown) in [
            ("mqtt://h", "mqtt://h:1883"),
            ("mqtts://[::1]", "mqtts://[::1]:8883"),
            ("mqtt://10.0.0.1:1884/", "mqtt://10.0.0.1:1884"),
        ] {
            assert_eq!(BrokerUrl::parse(given).unwrap().to_string(), shown);
        }
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
