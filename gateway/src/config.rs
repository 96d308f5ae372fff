//! Configuration: raw TOML structs (`deny_unknown_fields`), then one
//! validation step into the typed [`Config`] the gateway runs on.
//!
//! Syntax errors, unknown keys and wrong types are reported as
//! `FILE:LINE:COL: message`; semantic errors (duplicate names, unknown
//! references, zero windows) name the offending entry.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracegate_drivers::mercury::MercuryConfig;
use tracegate_drivers::nfc::PcscConfig;
use tracegate_drivers::r2000::R2000Config;
use tracegate_drivers::sim::SimConfig;

use crate::store::{FullPolicy, StoreConfig};

// ---------------------------------------------------------------- raw ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub gateway: RawGateway,
    #[serde(default)]
    pub readers: Vec<ReaderConfig>,
    #[serde(default)]
    pub read_points: Vec<RawReadPoint>,
    #[serde(default)]
    pub dedup: RawDedup,
    #[serde(default)]
    pub store: RawStore,
    pub mqtt: Option<crate::publish::MqttConfig>,
    #[serde(default)]
    pub ops: crate::ops::OpsConfig,
    #[serde(default)]
    pub nfc: RawNfc,
    #[serde(default)]
    pub flags: RawFlags,
}

/// Suspicious-serial flags (see `suspect.rs`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFlags {
    /// Flag `over_scanned` when a serial arrives at one read point more than
    /// this many times within `over_scan_window_secs`; 0 turns it off.
    pub over_scan_max_arrivals: usize,
    pub over_scan_window_secs: u64,
}

impl Default for RawFlags {
    fn default() -> Self {
        Self {
            over_scan_max_arrivals: 0,
            over_scan_window_secs: 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: String,
    pub site: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tracegate")
}

/// One `[[readers]]` entry; `kind` selects the driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ReaderConfig {
    Sim(SimConfig),
    Mercury(MercuryConfig),
    R2000(R2000Config),
    Pcsc(PcscConfig),
}

impl ReaderConfig {
    pub fn name(&self) -> &str {
        match self {
            ReaderConfig::Sim(c) => &c.name,
            ReaderConfig::Mercury(c) => &c.name,
            ReaderConfig::R2000(c) => &c.name,
            ReaderConfig::Pcsc(c) => &c.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ReaderConfig::Sim(_) => "sim",
            ReaderConfig::Mercury(_) => "mercury",
            ReaderConfig::R2000(_) => "r2000",
            ReaderConfig::Pcsc(_) => "pcsc",
        }
    }

    /// Antenna ports the reader uses; `None` for NFC readers (no antennas).
    pub fn antennas(&self) -> Option<&[u8]> {
        match self {
            ReaderConfig::Sim(c) => Some(&c.antennas),
            ReaderConfig::Mercury(c) => Some(&c.antennas),
            ReaderConfig::R2000(c) => Some(&c.antennas),
            ReaderConfig::Pcsc(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EpcisAction {
    Add,
    #[default]
    Observe,
    Delete,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReadPoint {
    pub name: String,
    pub reader: String,
    /// Antennas of `reader` this read point covers; all of them if absent.
    pub antennas: Option<Vec<u8>>,
    /// Two-antenna portal: which antenna faces outside and which inside.
    pub direction: Option<RawDirection>,
    /// Reads weaker than this are ignored (dBm).
    pub rssi_floor_dbm: Option<i16>,
    /// Only tags matching one of these EPC pure-identity patterns count
    /// (`urn:epc:pat:sgtin-96:3.0614141.*.*`).
    #[serde(default)]
    pub epc_patterns: Vec<String>,
    /// Tags matching none of these patterns are reported with the
    /// `unexpected` flag (they are not dropped).
    #[serde(default)]
    pub expect_patterns: Vec<String>,
    /// EPCIS: CBV business step (`receiving`, `shipping`, `packing`, ...).
    pub biz_step: Option<String>,
    /// EPCIS: CBV disposition (`in_progress`, `in_transit`, ...).
    pub disposition: Option<String>,
    /// EPCIS: read point identifier (`urn:epc:id:sgln:...`).
    pub read_point_id: Option<String>,
    /// EPCIS: business location identifier (`urn:epc:id:sgln:...`).
    pub biz_location: Option<String>,
    /// EPCIS action for events at this read point.
    #[serde(default)]
    pub action: EpcisAction,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawDirection {
    pub outside: u8,
    pub inside: u8,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupKey {
    #[default]
    Epc,
    Tid,
    EpcTid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDedup {
    pub key: DedupKey,
    pub min_reads: u32,
    pub arrival_window_ms: u64,
    pub departure_timeout_ms: u64,
    /// Re-report present tags this often; 0 turns it off.
    pub report_interval_ms: u64,
    pub max_tags: usize,
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            key: DedupKey::Epc,
            min_reads: 1,
            arrival_window_ms: 1_000,
            departure_timeout_ms: 3_000,
            report_interval_ms: 0,
            max_tags: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub max_bytes: u64,
    pub full_policy: FullPolicy,
    pub commit_interval_ms: u64,
    pub commit_max_events: usize,
    pub retention_secs: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            commit_interval_ms: 100,
            commit_max_events: 1_000,
            retention_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNfc {
    /// NTAG 424 DNA SUN key files, one per product.
    #[serde(default)]
    pub sun_key_files: Vec<PathBuf>,
}

// -------------------------------------------------------------- typed ----

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    pub site: String,
    pub data_dir: PathBuf,
    pub readers: Vec<ReaderConfig>,
    pub read_points: Vec<ReadPoint>,
    pub dedup: DedupConfig,
    pub store: StoreConfig,
    pub mqtt: Option<crate::publish::MqttConfig>,
    pub ops: crate::ops::OpsConfig,
    pub sun_key_files: Vec<PathBuf>,
    pub flags: RawFlags,
    /// SHA-256 of the source text (first 16 hex digits), for status messages.
    pub hash: String,
    /// Where it came from, for messages.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ReadPoint {
    pub name: String,
    pub reader: String,
    /// Covered antennas; empty for NFC read points.
    pub antennas: Vec<u8>,
    pub direction: Option<RawDirection>,
    pub rssi_floor_dbm: Option<i16>,
    pub epc_patterns: Vec<String>,
    pub expect_patterns: Vec<String>,
    pub biz_step: Option<String>,
    pub disposition: Option<String>,
    pub read_point_id: Option<String>,
    pub biz_location: Option<String>,
    pub action: EpcisAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    pub key: DedupKey,
    pub min_reads: u32,
    pub arrival_window: Duration,
    pub departure_timeout: Duration,
    pub report_interval: Option<Duration>,
    pub max_tags: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        let raw = RawDedup::default();
        Self {
            key: raw.key,
            min_reads: raw.min_reads,
            arrival_window: Duration::from_millis(raw.arrival_window_ms),
            departure_timeout: Duration::from_millis(raw.departure_timeout_ms),
            report_interval: None,
            max_tags: raw.max_tags,
        }
    }
}

// ------------------------------------------------------------- errors ----

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys, wrong types: located in the file.
    #[error("{path}:{line}:{col}: {message}")]
    Parse {
        path: String,
        line: usize,
        col: usize,
        message: String,
    },
    /// The file parsed but does not make sense.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

// ---------------------------------------------------------- functions ----

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses and validates config text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| line_col(text, refine_offset(text, s, e.message())))
            .unwrap_or((1, 1));
        ConfigError::Parse {
            path: source.to_owned(),
            line,
            col,
            message: e.message().trim().to_owned(),
        }
    })?;
    let hash = {
        let digest = Sha256::digest(text.as_bytes());
        hex::encode(&digest[..8])
    };
    validate(raw, source, hash)
}

/// Errors inside `[[readers]]` (an internally tagged enum) are reported by
/// the TOML parser at the start of the table; when the message names an
/// unknown field, point at the key itself instead.
fn refine_offset(text: &str, span: std::ops::Range<usize>, message: &str) -> usize {
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let (Some(field), Some(table)) = (field, text.get(span.clone())) else {
        return span.start;
    };
    let mut offset = 0;
    for line in table.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(field) {
            if rest.trim_start().starts_with('=') {
                return span.start + offset + (line.len() - trimmed.len());
            }
        }
        offset += line.len();
    }
    span.start
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

struct Problems {
    source: String,
    list: Vec<String>,
}

impl Problems {
    fn push(&mut self, msg: impl fmt::Display) {
        self.list.push(msg.to_string());
    }
}

fn validate(raw: RawConfig, source: &str, hash: String) -> Result<Config, ConfigError> {
    let mut p = Problems {
        source: source.to_owned(),
        list: Vec::new(),
    };
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !id_ok(&raw.gateway.id) {
        p.push(format!(
            "[gateway] id {:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it is part of MQTT topics and event ids)",
            raw.gateway.id
        ));
    }
    if !id_ok(&raw.gateway.site) {
        p.push(format!(
            "[gateway] site {:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it is part of MQTT topics)",
            raw.gateway.site
        ));
    }

    let mut reader_names: HashMap<&str, &ReaderConfig> = HashMap::new();
    for (i, r) in raw.readers.iter().enumerate() {
        if !id_ok(r.name()) {
            p.push(format!(
                "readers[{i}]: name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                r.name()
            ));
        }
        if reader_names.insert(r.name(), r).is_some() {
            p.push(format!(
                "readers[{i}]: duplicate reader name {:?}; every reader needs its own name",
                r.name()
            ));
        }
        if let Some(ants) = r.antennas() {
            if ants.is_empty() || ants.contains(&0) {
                p.push(format!(
                    "readers[{i}] ({}): antennas must list at least one port, numbered from 1",
                    r.name()
                ));
            }
        }
        let checked = match r {
            ReaderConfig::Sim(c) => c.validate(),
            ReaderConfig::Mercury(c) => c.validate().map_err(|e| e.to_string()),
            ReaderConfig::R2000(c) => c.validate().map_err(|e| e.to_string()),
            ReaderConfig::Pcsc(_) => Ok(()),
        };
        if let Err(e) = checked {
            p.push(format!("readers[{i}] ({}): {e}", r.name()));
        }
    }

    let mut read_points = Vec::new();
    let mut rp_names = HashSet::new();
    for (i, rp) in raw.read_points.into_iter().enumerate() {
        if !id_ok(&rp.name) {
            p.push(format!(
                "read_points[{i}]: name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                rp.name
            ));
        }
        if !rp_names.insert(rp.name.clone()) {
            p.push(format!(
                "read_points[{i}]: duplicate read point name {:?}",
                rp.name
            ));
        }
        let Some(reader) = reader_names.get(rp.reader.as_str()) else {
            let known: Vec<&str> = reader_names.keys().copied().collect();
            p.push(format!(
                "read_points[{i}] ({}): reader {:?} is not defined in [[readers]] (defined: {})",
                rp.name,
                rp.reader,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
            continue;
        };
        let antennas = match (&rp.antennas, reader.antennas()) {
            (Some(list), Some(all)) => {
                for a in list {
                    if !all.contains(a) {
                        p.push(format!(
                            "read_points[{i}] ({}): antenna {a} is not one of reader {:?}'s antennas {:?}",
                            rp.name, rp.reader, all
                        ));
                    }
                }
                list.clone()
            }
            (Some(list), None) if !list.is_empty() => {
                p.push(format!(
                    "read_points[{i}] ({}): reader {:?} is an NFC reader and has no antennas",
                    rp.name, rp.reader
                ));
                Vec::new()
            }
            (_, Some(all)) => all.to_vec(),
            (_, None) => Vec::new(),
        };
        if let Some(d) = rp.direction {
            if d.inside == d.outside {
                p.push(format!(
                    "read_points[{i}] ({}): direction needs two different antennas, got {} for both",
                    rp.name, d.inside
                ));
            }
            for a in [d.inside, d.outside] {
                if !antennas.contains(&a) {
                    p.push(format!(
                        "read_points[{i}] ({}): direction antenna {a} is not covered by this read point (antennas {:?})",
                        rp.name, antennas
                    ));
                }
            }
        }
        for pat in rp.epc_patterns.iter().chain(&rp.expect_patterns) {
            if let Err(e) = crate::event::check_epc_pattern(pat) {
                p.push(format!(
                    "read_points[{i}] ({}): epc pattern {pat:?} is invalid: {e}",
                    rp.name
                ));
            }
        }
        read_points.push(ReadPoint {
            name: rp.name,
            reader: rp.reader,
            antennas,
            direction: rp.direction,
            rssi_floor_dbm: rp.rssi_floor_dbm,
            epc_patterns: rp.epc_patterns,
            expect_patterns: rp.expect_patterns,
            biz_step: rp.biz_step,
            disposition: rp.disposition,
            read_point_id: rp.read_point_id,
            biz_location: rp.biz_location,
            action: rp.action,
        });
    }

    let d = &raw.dedup;
    if d.min_reads == 0 {
        p.push("[dedup] min_reads must be at least 1");
    }
    if d.arrival_window_ms == 0 {
        p.push("[dedup] arrival_window_ms must be above 0 (a window of zero can never collect min_reads)");
    }
    if d.departure_timeout_ms == 0 {
        p.push(
            "[dedup] departure_timeout_ms must be above 0 (a tag would depart between two reads)",
        );
    }
    if d.max_tags == 0 {
        p.push("[dedup] max_tags must be at least 1");
    }
    let s = &raw.store;
    if s.max_bytes < 1024 * 1024 {
        p.push("[store] max_bytes must be at least 1048576 (1 MiB)");
    }
    if s.commit_interval_ms == 0 || s.commit_max_events == 0 {
        p.push("[store] commit_interval_ms and commit_max_events must be above 0");
    }

    if let Some(m) = &raw.mqtt {
        if let Err(e) = m.validate() {
            p.push(format!("[mqtt] {e}"));
        }
    }
    if let Err(e) = raw.ops.validate() {
        p.push(e);
    }

    if !p.list.is_empty() {
        return Err(ConfigError::Invalid {
            path: p.source,
            message: p.list.join("; "),
        });
    }

    let data_dir = raw.gateway.data_dir;
    Ok(Config {
        gateway_id: raw.gateway.id,
        site: raw.gateway.site,
        store: StoreConfig {
            path: data_dir.join("events.db"),
            max_bytes: s.max_bytes,
            full_policy: s.full_policy,
            commit_interval_ms: s.commit_interval_ms,
            commit_max_events: s.commit_max_events,
            retention_secs: s.retention_secs,
        },
        data_dir,
        readers: raw.readers,
        read_points,
        dedup: DedupConfig {
            key: d.key,
            min_reads: d.min_reads,
            arrival_window: Duration::from_millis(d.arrival_window_ms),
            departure_timeout: Duration::from_millis(d.departure_timeout_ms),
            report_interval: (d.report_interval_ms > 0)
                .then(|| Duration::from_millis(d.report_interval_ms)),
            max_tags: d.max_tags,
        },
        mqtt: raw.mqtt,
        ops: raw.ops,
        sun_key_files: raw.nfc.sun_key_files,
        flags: raw.flags,
        hash,
        source: source.to_owned(),
    })
}

impl Config {
    /// Points the store at another directory (the demo uses a temporary one).
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        self.store.path = dir.join("events.db");
        self.data_dir = dir;
    }

    /// One-line summary for `check-config`.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .readers
            .iter()
            .map(|r| format!("{} ({})", r.name(), r.kind()))
            .collect();
        format!(
            "gateway {} at site {}: {} reader(s) [{}], {} read point(s), store {}, mqtt {}",
            self.gateway_id,
            self.site,
            self.readers.len(),
            kinds.join(", "),
            self.read_points.len(),
            self.store.path.display(),
            if self.mqtt.is_some() {
                "configured"
            } else {
                "off"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
id = "gw1"
site = "site1"
data_dir = "/tmp/x"

[[readers]]
name = "sim1"
kind = "sim"

[[read_points]]
name = "door"
reader = "sim1"
"#;

    #[test]
    fn a_minimal_config_validates_with_defaults() {
        let c = parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.read_points[0].antennas, vec![1, 2]);
        assert_eq!(c.dedup.min_reads, 1);
        assert_eq!(c.store.path, PathBuf::from("/tmp/x/events.db"));
    }

    #[test]
    fn an_unknown_key_is_reported_with_line_and_column() {
        let text = MINIMAL.replace("site = \"site1\"", "site = \"site1\"\ncolour = \"red\"");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:5:1: "), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn an_unknown_key_inside_a_reader_is_located() {
        let text = MINIMAL.replace("kind = \"sim\"", "kind = \"sim\"\nbaud_rate = 9600");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:10:1: "), "{err}");
        assert!(err.contains("baud_rate"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_reported_with_line_and_column() {
        let text = MINIMAL.replace(
            "[[readers]]",
            "[dedup]\nmin_reads = \"three\"\n\n[[readers]]",
        );
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:8:13: "), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_entry() {
        let text = format!(
            "{MINIMAL}\n[[readers]]\nname = \"sim1\"\nkind = \"sim\"\n\n[[read_points]]\nname = \"x\"\nreader = \"nope\"\n\n[[read_points]]\nname = \"y\"\nreader = \"sim1\"\nantennas = [7]\n\n[dedup]\narrival_window_ms = 0\n"
        );
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("duplicate reader name \"sim1\""), "{err}");
        assert!(err.contains("reader \"nope\" is not defined"), "{err}");
        assert!(err.contains("antenna 7 is not one of"), "{err}");
        assert!(err.contains("arrival_window_ms must be above 0"), "{err}");
    }

    #[test]
    fn every_example_in_the_config_directory_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 4, "expected the four example configs, found {n}");
    }
}
