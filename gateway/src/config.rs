//! Configuration: the file is parsed and checked once, here, into the typed
//! [`Config`] the gateway runs on; each module owns its settings type
//! (`DedupConfig` in `dedup`, `MqttConfig` in `publish`, `OpsConfig` in
//! `ops`, ...) and nothing downstream re-parses or re-validates a value.
//!
//! Every problem found is reported, not only the first, each as
//! `FILE:LINE:COL: message` where the location is known: every section and
//! every `[[readers]]`/`[[read_points]]` entry is deserialised on its own so
//! one mistake does not hide the next. (A TOML syntax error still stops the
//! parse: after it, the structure of the file is unknown.)

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracegate_drivers::mercury::MercuryConfig;
use tracegate_drivers::nfc::PcscConfig;
use tracegate_drivers::r2000::R2000Config;
use tracegate_drivers::sim::SimConfig;
use tracegate_gs1::EpcPattern;

use crate::dedup::{DedupConfig, DedupKey, Portal};
use crate::masterdata::config::{MasterdataConfig, RawMasterdata};
use crate::ops::{OpsConfig, RawOps};
use crate::publish::{MqttConfig, RawMqtt};
use crate::store::{FullPolicy, StoreConfig, MIN_MAX_BYTES};
use crate::suspect::OverScan;

// ---------------------------------------------------------------- raw ----

/// The top-level keys a config file may have.
const SECTIONS: &[&str] = &[
    "gateway",
    "readers",
    "read_points",
    "dedup",
    "store",
    "mqtt",
    "ops",
    "nfc",
    "flags",
    "masterdata",
    "gpio",
];

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
    /// Read windows ("passes"), see `crate::door::window`.
    pub window: Option<crate::gpio::config::RawWindow>,
    /// The read point's stack light.
    pub signal: Option<crate::gpio::config::RawSignal>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawDirection {
    pub outside: u8,
    pub inside: u8,
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
    pub commit_age_ms: u64,
    pub commit_max_events: usize,
    pub retention_secs: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            // A commit per 25 ms at most under load: a tenth of the fsyncs
            // and transactions of one per event at 1,500 events/s, within an
            // event-to-PUBACK budget of 50 ms (BENCHMARKS.md).
            commit_interval_ms: 25,
            // Under load a group waits until its oldest event will be 40 ms
            // old once committed: with a few ms to the broker after the
            // commit, an event reaches it within the 50 ms budget, and
            // commits come every ~28 ms instead of every 25 (BENCHMARKS.md).
            commit_age_ms: 40,
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
    pub mqtt: Option<MqttConfig>,
    pub ops: OpsConfig,
    pub sun_key_files: Vec<PathBuf>,
    /// `None`: the `over_scanned` flag is off.
    pub over_scan: Option<OverScan>,
    /// `None`: no master data (no downlink, no master-data checks).
    pub masterdata: Option<MasterdataConfig>,
    /// `None`: no `[gpio]` table (no photo-eyes, no stack lights).
    pub gpio: Option<crate::gpio::GpioConfig>,
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
    pub direction: Option<Portal>,
    pub rssi_floor_dbm: Option<i16>,
    /// Only tags matching one of these count (empty: every tag).
    pub epc_patterns: Vec<EpcPattern>,
    /// Tags matching none of these are flagged `unexpected` (empty: off).
    pub expect_patterns: Vec<EpcPattern>,
    pub biz_step: Option<String>,
    pub disposition: Option<String>,
    pub read_point_id: Option<String>,
    pub biz_location: Option<String>,
    pub action: EpcisAction,
    /// Read windows and the stack light, when configured.
    pub door: Option<crate::gpio::DoorPoint>,
}

// ------------------------------------------------------------- errors ----

/// One thing wrong with a config file, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column (in characters).
    pub at: Option<(usize, usize)>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Everything found wrong, in file order, one `FILE:LINE:COL: message`
    /// (or `FILE: message`) per line.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match p.at {
            Some((line, col)) => format!("{path}:{line}:{col}: {}", p.message),
            None => format!("{path}: {}", p.message),
        })
        .collect();
    lines.join("\n")
}

// ---------------------------------------------------------- functions ----

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = read(path, &shown)?;
    parse(&text, &shown)
}

/// [`load`], then opens every file the config names (SUN key files, MQTT
/// credential and TLS files) and reports each one that cannot be used,
/// with the field that names it: what `check-config` and a reload need to
/// know before the daemon relies on the file.
pub fn load_and_check_files(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = read(path, &shown)?;
    let config = parse(&text, &shown)?;
    let problems = check_files(&config, &Locator { text: &text });
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(&shown, problems))
    }
}

/// Largest config file read: real ones are a few KiB, and parsing a huge
/// one (a pasted blob as an id) would take the Pi's memory first.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn read(path: &Path, shown: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let io = |source| ConfigError::Io {
        path: shown.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than {MAX_CONFIG_BYTES} bytes; a config is a few KiB"),
        )));
    }
    Ok(text)
}

fn invalid(path: &str, mut problems: Vec<Problem>) -> ConfigError {
    // File order, like a compiler; problems without a place go last.
    problems.sort_by_key(|p| p.at.unwrap_or((usize::MAX, usize::MAX)));
    ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    }
}

/// Parses and validates config text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    let hash = {
        let digest = Sha256::digest(text.as_bytes());
        hex::encode(&digest[..8])
    };
    let mut p = Problems {
        at: Locator { text },
        list: Vec::new(),
    };
    // Syntax first: after a syntax error nothing else can be trusted.
    let top: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            p.toml_error(&e);
            return Err(invalid(source, p.list));
        }
    };
    for key in top.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            let at = p.at.top_level_key(key);
            p.push(
                at,
                format!(
                    "unknown field `{key}`, expected one of {}",
                    SECTIONS
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    check_durations(&top, &mut p);
    let raw = RawSections {
        gateway: section::<OnlyGateway>(text, &mut p).and_then(|s| {
            if s.gateway.is_none() {
                p.push(None, "missing table [gateway] (id and site)");
            }
            s.gateway
        }),
        readers: {
            let values = section::<OnlyReaders>(text, &mut p).map(|s| s.readers);
            entries::<ReaderConfig>(values, "readers", &mut p)
        },
        read_points: {
            let values = section::<OnlyReadPoints>(text, &mut p).map(|s| s.read_points);
            entries::<RawReadPoint>(values, "read_points", &mut p)
        },
        dedup: section::<OnlyDedup>(text, &mut p).map(|s| s.dedup),
        store: section::<OnlyStore>(text, &mut p).map(|s| s.store),
        mqtt: section::<OnlyMqtt>(text, &mut p).map(|s| s.mqtt),
        ops: section::<OnlyOps>(text, &mut p).map(|s| s.ops),
        nfc: section::<OnlyNfc>(text, &mut p).map(|s| s.nfc),
        flags: section::<OnlyFlags>(text, &mut p).map(|s| s.flags),
        masterdata: section::<OnlyMasterdata>(text, &mut p).map(|s| s.masterdata),
        gpio: section::<OnlyGpio>(text, &mut p).map(|s| s.gpio),
    };
    match validate(raw, &mut p) {
        Some(parts) if p.list.is_empty() => Ok(parts.into_config(hash, source)),
        _ => Err(invalid(source, p.list)),
    }
}

// One struct per section, each deserialised from the whole text: the
// section's errors keep their exact location, and an error in one section
// does not stop the others from being checked.
#[derive(Deserialize)]
struct OnlyGateway {
    gateway: Option<RawGateway>,
}
#[derive(Deserialize)]
struct OnlyDedup {
    #[serde(default)]
    dedup: RawDedup,
}
#[derive(Deserialize)]
struct OnlyStore {
    #[serde(default)]
    store: RawStore,
}
#[derive(Deserialize)]
struct OnlyMqtt {
    mqtt: Option<RawMqtt>,
}
#[derive(Deserialize)]
struct OnlyOps {
    #[serde(default)]
    ops: RawOps,
}
#[derive(Deserialize)]
struct OnlyNfc {
    #[serde(default)]
    nfc: RawNfc,
}
#[derive(Deserialize)]
struct OnlyFlags {
    #[serde(default)]
    flags: RawFlags,
}
#[derive(Deserialize)]
struct OnlyMasterdata {
    masterdata: Option<RawMasterdata>,
}
#[derive(Deserialize)]
struct OnlyGpio {
    gpio: Option<crate::gpio::config::RawGpio>,
}
#[derive(Deserialize)]
struct OnlyReaders {
    #[serde(default)]
    readers: Vec<toml::Value>,
}
#[derive(Deserialize)]
struct OnlyReadPoints {
    #[serde(default)]
    read_points: Vec<toml::Value>,
}

fn section<T: DeserializeOwned>(text: &str, p: &mut Problems) -> Option<T> {
    match toml::from_str::<T>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            p.toml_error(&e);
            None
        }
    }
}

/// Each entry of an array of tables on its own, so every bad entry is
/// reported. `None` in the result: that entry is broken (already reported).
fn entries<T: DeserializeOwned>(
    values: Option<Vec<toml::Value>>,
    array: &'static str,
    p: &mut Problems,
) -> Vec<Option<T>> {
    values
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, v)| match T::deserialize(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let region = p.at.entry(array, i);
                let message = e.message().trim().to_owned();
                let at = p.at.refine(region, &message);
                p.push(at, format!("{array}[{i}]: {message}"));
                None
            }
        })
        .collect()
}

/// Finds where things are in the source text, for messages. Best effort:
/// a key it cannot find (written as a dotted key or an inline table) gets
/// the location of its section, or none.
struct Locator<'a> {
    text: &'a str,
}

impl Locator<'_> {
    /// The byte range of `[name]` (or of the `index`-th `[[name]]`): from its
    /// header to the next header.
    fn region(&self, name: &str, array: bool, index: usize) -> Option<Range<usize>> {
        let mut offset = 0;
        let mut start = None;
        let mut seen = 0;
        for line in self.text.split_inclusive('\n') {
            let header = table_header(line);
            if let Some(s) = start {
                if header.is_some() {
                    return Some(s..offset);
                }
            } else if let Some((h, is_array)) = header {
                if h == name && is_array == array {
                    if seen == index {
                        start = Some(offset);
                    }
                    seen += 1;
                }
            }
            offset += line.len();
        }
        start.map(|s| s..self.text.len())
    }

    fn entry(&self, array: &str, index: usize) -> Option<Range<usize>> {
        self.region(array, true, index)
    }

    /// Where `key = ...` is written inside `region` (or the region's start).
    fn key(&self, region: Option<Range<usize>>, key: &str) -> Option<(usize, usize)> {
        let region = region?;
        let body = self.text.get(region.clone())?;
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(
                        self.line_col(region.start + offset + (line.len() - trimmed.len())),
                    );
                }
            }
            offset += line.len();
        }
        Some(self.line_col(region.start))
    }

    fn in_section(&self, section: &str, key: &str) -> Option<(usize, usize)> {
        self.key(self.region(section, false, 0), key)
    }

    fn in_entry(&self, array: &str, index: usize, key: &str) -> Option<(usize, usize)> {
        self.key(self.entry(array, index), key)
    }

    /// `key` in the `[array.sub]` table of the `index`-th `[[array]]`
    /// entry (or in the entry itself, for an inline table).
    fn in_subtable(
        &self,
        array: &str,
        index: usize,
        sub: &str,
        key: &str,
    ) -> Option<(usize, usize)> {
        let entry = self.entry(array, index)?;
        let wanted = format!("{array}.{sub}");
        let mut offset = entry.end;
        let mut found = None;
        for line in self.text.get(entry.end..)?.split_inclusive('\n') {
            match table_header(line) {
                Some((h, false)) if h == wanted => {
                    found = Some(offset);
                    break;
                }
                Some((h, _)) if !h.starts_with(&format!("{array}.")) => break,
                _ => {}
            }
            offset += line.len();
        }
        match found {
            Some(start) => {
                // The subtable runs to the next header after its own.
                let mut end = start;
                for (n, l) in self.text.get(start..)?.split_inclusive('\n').enumerate() {
                    if n > 0 && table_header(l).is_some() {
                        break;
                    }
                    end += l.len();
                }
                self.key(Some(start..end), key)
            }
            None => self.key(Some(entry), key),
        }
    }

    /// An unknown top-level key: either a table header or a bare key
    /// before the first table.
    fn top_level_key(&self, key: &str) -> Option<(usize, usize)> {
        self.region(key, false, 0)
            .or_else(|| self.region(key, true, 0))
            .map(|r| self.line_col(r.start))
            .or_else(|| {
                let end = self
                    .text
                    .split_inclusive('\n')
                    .scan(0, |off, l| {
                        let at = *off;
                        *off += l.len();
                        Some((at, l))
                    })
                    .find(|(_, l)| table_header(l).is_some())
                    .map_or(self.text.len(), |(at, _)| at);
                self.key(Some(0..end), key)
            })
    }

    /// Errors inside an entry name an unknown field but carry the entry's
    /// position (or none); point at the key itself when it can be found.
    fn refine(&self, region: Option<Range<usize>>, message: &str) -> Option<(usize, usize)> {
        let field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next());
        match field {
            Some(f) => self.key(region, f),
            None => region.map(|r| self.line_col(r.start)),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let text = self.text;
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
}

/// `[name]` → (name, false), `[[name]]` → (name, true); anything else None.
fn table_header(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    let t = t.split('#').next().unwrap_or(t).trim_end();
    let (inner, array) = if let Some(i) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        (i, true)
    } else if let Some(i) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        (i, false)
    } else {
        return None;
    };
    Some((inner.trim().to_owned(), array))
}

/// A problem message short enough for a terminal: a number from the file
/// (`1e300` comes back from serde as 301 digits) keeps its first digits and
/// says how long it was, and a message is cut at 400 characters.
fn shorten(message: &str) -> String {
    const LONG_NUMBER: usize = 20;
    let mut out = String::with_capacity(message.len().min(450));
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() > LONG_NUMBER {
            out.push_str(&digits[..8]);
            out.push_str(&format!("…({} digits)", digits.len()));
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in message.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    if out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "…";
    }
    out
}

/// Longest duration a `*_ms` key may give: a day. Longer is a typo, and a
/// duration near the integer limit would overflow `Instant + Duration`.
const MAX_MS: i64 = 86_400_000;
/// Longest duration a `*_secs` key may give: a year (retention is the
/// longest one anybody needs at the edge).
const MAX_SECS: i64 = 31_536_000;

/// Bounds every `*_ms` and `*_secs` key of every table, table array and
/// their subtables (present and future settings alike), before any of them
/// becomes a `Duration`.
fn check_durations(top: &toml::Table, p: &mut Problems) {
    fn check(
        p: &mut Problems,
        at: Option<(usize, usize)>,
        place: &str,
        key: &str,
        v: &toml::Value,
    ) {
        let (max, shown) = if key.ends_with("_ms") {
            (MAX_MS, "86400000 (a day)")
        } else if key.ends_with("_secs") {
            (MAX_SECS, "31536000 (a year)")
        } else {
            return;
        };
        if let toml::Value::Integer(n) = v {
            if *n > max {
                p.push(
                    at,
                    format!("{place}{key} = {n} is longer than allowed: at most {shown}"),
                );
            }
        }
    }
    /// `[section]` and its nested tables (`[gpio.inputs.eye]`), by dotted name.
    fn table(p: &mut Problems, name: &str, t: &toml::Table) {
        for (k, v) in t {
            if let toml::Value::Table(sub) = v {
                table(p, &format!("{name}.{k}"), sub);
            } else {
                let at = p.at.in_section(name, k);
                check(p, at, &format!("[{name}] "), k, v);
            }
        }
    }
    /// The `i`-th `[[array]]` entry and its subtables (`[read_points.window]`;
    /// deeper tables are located at their subtable).
    fn entry(p: &mut Problems, array: &str, i: usize, sub: Option<&str>, t: &toml::Table) {
        for (k, v) in t {
            match (v, sub) {
                (toml::Value::Table(inner), None) => entry(p, array, i, Some(k), inner),
                (toml::Value::Table(inner), Some(_)) => entry(p, array, i, sub, inner),
                (_, None) => {
                    let at = p.at.in_entry(array, i, k);
                    check(p, at, &format!("{array}[{i}]: "), k, v);
                }
                (_, Some(s)) => {
                    let at = p.at.in_subtable(array, i, s, k);
                    check(p, at, &format!("{array}[{i}].{s}: "), k, v);
                }
            }
        }
    }
    for (section, v) in top {
        match v {
            toml::Value::Table(t) => table(p, section, t),
            toml::Value::Array(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    if let toml::Value::Table(t) = e {
                        entry(p, section, i, None, t);
                    }
                }
            }
            _ => {}
        }
    }
}

struct Problems<'a> {
    at: Locator<'a>,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, at: Option<(usize, usize)>, message: impl fmt::Display) {
        self.list.push(Problem {
            at,
            message: shorten(&message.to_string()),
        });
    }

    fn toml_error(&mut self, e: &toml::de::Error) {
        let at = e.span().map(|s| self.at.line_col(s.start));
        self.push(at, e.message().trim());
    }
}

/// What the file held, section by section; `None` where a section could not
/// be read (its problems are already recorded).
struct RawSections {
    gateway: Option<RawGateway>,
    readers: Vec<Option<ReaderConfig>>,
    read_points: Vec<Option<RawReadPoint>>,
    dedup: Option<RawDedup>,
    store: Option<RawStore>,
    mqtt: Option<Option<RawMqtt>>,
    ops: Option<RawOps>,
    nfc: Option<RawNfc>,
    flags: Option<RawFlags>,
    masterdata: Option<Option<RawMasterdata>>,
    gpio: Option<Option<crate::gpio::config::RawGpio>>,
}

/// The checked pieces of a [`Config`].
struct Parts {
    gateway: RawGateway,
    readers: Vec<ReaderConfig>,
    read_points: Vec<ReadPoint>,
    dedup: DedupConfig,
    store: RawStore,
    mqtt: Option<MqttConfig>,
    ops: OpsConfig,
    nfc: RawNfc,
    over_scan: Option<OverScan>,
    masterdata: Option<MasterdataConfig>,
    gpio: Option<crate::gpio::GpioConfig>,
}

impl Parts {
    fn into_config(self, hash: String, source: &str) -> Config {
        let data_dir = self.gateway.data_dir;
        let s = self.store;
        Config {
            gateway_id: self.gateway.id,
            site: self.gateway.site,
            store: StoreConfig {
                path: data_dir.join("events.db"),
                max_bytes: s.max_bytes,
                full_policy: s.full_policy,
                commit_interval_ms: s.commit_interval_ms,
                commit_age_ms: s.commit_age_ms,
                commit_max_events: s.commit_max_events,
                retention_secs: s.retention_secs,
            },
            data_dir,
            readers: self.readers,
            read_points: self.read_points,
            dedup: self.dedup,
            mqtt: self.mqtt,
            ops: self.ops,
            sun_key_files: self.nfc.sun_key_files,
            over_scan: self.over_scan,
            masterdata: self.masterdata,
            gpio: self.gpio,
            hash,
            source: source.to_owned(),
        }
    }
}

/// Longest gateway id, site or name: they are MQTT topic levels, event id
/// parts and labels on every metric.
pub const MAX_NAME_LEN: usize = 64;

fn id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A name as a problem message shows it: quoted, and cut when it is long.
fn shown_name(s: &str) -> String {
    if s.chars().count() <= MAX_NAME_LEN {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(16).collect();
        format!("{head:?}… ({} characters)", s.chars().count())
    }
}

/// The checks serde cannot do. Returns the pieces when every section could
/// be read; the caller decides by whether any problem was recorded.
fn validate(raw: RawSections, p: &mut Problems) -> Option<Parts> {
    if let Some(g) = &raw.gateway {
        if !id_ok(&g.id) {
            let at = p.at.in_section("gateway", "id");
            p.push(at, format!(
                "[gateway] id {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (it is part of MQTT topics and event ids)",
                shown_name(&g.id)
            ));
        }
        if !id_ok(&g.site) {
            let at = p.at.in_section("gateway", "site");
            p.push(at, format!(
                "[gateway] site {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (it is part of MQTT topics)",
                shown_name(&g.site)
            ));
        }
    }

    // Without a reader the pipeline has no input and ends at once; under
    // systemd that reads as a stuck pipeline and a watchdog restart every
    // minute, so say it here instead.
    if raw.readers.is_empty() {
        p.push(
            None,
            "no [[readers]] entry: a gateway needs at least one reader (kind = \"mercury\", \"r2000\", \"pcsc\" or \"sim\")",
        );
    }
    let readers_ok = raw.readers.iter().all(Option::is_some);
    let mut reader_names: HashMap<&str, &ReaderConfig> = HashMap::new();
    for (i, r) in raw.readers.iter().enumerate() {
        let Some(r) = r else { continue };
        let at_name = p.at.in_entry("readers", i, "name");
        if !id_ok(r.name()) {
            p.push(at_name, format!(
                "readers[{i}]: name {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
                shown_name(r.name())
            ));
        }
        if reader_names.insert(r.name(), r).is_some() {
            p.push(
                at_name,
                format!(
                    "readers[{i}]: duplicate reader name {:?}; every reader needs its own name",
                    r.name()
                ),
            );
        }
        if let Some(ants) = r.antennas() {
            if ants.is_empty() || ants.contains(&0) {
                let at = p.at.in_entry("readers", i, "antennas");
                p.push(
                    at,
                    format!(
                        "readers[{i}] ({}): antennas must list at least one port, numbered from 1",
                        r.name()
                    ),
                );
            }
        }
        let checked = match r {
            ReaderConfig::Sim(c) => c.validate(),
            ReaderConfig::Mercury(c) => c.validate().map_err(|e| e.to_string()),
            ReaderConfig::R2000(c) => c.validate().map_err(|e| e.to_string()),
            ReaderConfig::Pcsc(_) => Ok(()),
        };
        if let Err(e) = checked {
            let at = p.at.in_entry("readers", i, "kind");
            p.push(at, format!("readers[{i}] ({}): {e}", r.name()));
        }
    }

    let gpio = raw.gpio.map(|g| {
        g.map(|g| {
            let mut found = Vec::new();
            let typed = g.validate(&mut found);
            for (place, message) in found {
                let at = match place {
                    crate::gpio::config::Place::Gpio(key) => p.at.in_section("gpio", key),
                    crate::gpio::config::Place::Input(name, key) => {
                        p.at.in_section(&format!("gpio.inputs.{name}"), key)
                            .or_else(|| p.at.in_section("gpio", "inputs"))
                    }
                    crate::gpio::config::Place::Output(name, key) => {
                        p.at.in_section(&format!("gpio.outputs.{name}"), key)
                            .or_else(|| p.at.in_section("gpio", "outputs"))
                    }
                    _ => p.at.in_section("gpio", "backend"),
                };
                p.push(at, message);
            }
            typed
        })
    });
    let mut read_points = Vec::new();
    let mut rp_names = HashSet::new();
    let read_points_ok = raw.read_points.iter().all(Option::is_some);
    for (i, rp) in raw.read_points.into_iter().enumerate() {
        let Some(mut rp) = rp else { continue };
        let (window, signal) = (rp.window.take(), rp.signal.take());
        let name = rp.name.clone();
        if let Some(mut point) = read_point(i, rp, &reader_names, readers_ok, &mut rp_names, p) {
            let mut found = Vec::new();
            point.door = crate::gpio::config::door_point(
                &name,
                window.as_ref(),
                signal.as_ref(),
                gpio.as_ref().and_then(Option::as_ref),
                &mut found,
            );
            for (place, message) in found {
                let at = match place {
                    crate::gpio::config::Place::Signal(key) => {
                        p.at.in_subtable("read_points", i, "signal", key)
                    }
                    crate::gpio::config::Place::Window(key) => {
                        p.at.in_subtable("read_points", i, "window", key)
                    }
                    _ => p.at.in_entry("read_points", i, "name"),
                };
                p.push(at, format!("read_points[{i}]: {message}"));
            }
            read_points.push(point);
        }
    }

    let dedup = raw.dedup.and_then(|d| dedup(d, p));
    if let Some(s) = &raw.store {
        if s.max_bytes < MIN_MAX_BYTES {
            let at = p.at.in_section("store", "max_bytes");
            p.push(
                at,
                format!("[store] max_bytes must be at least {MIN_MAX_BYTES}"),
            );
        }
        for (key, zero) in [
            ("commit_interval_ms", s.commit_interval_ms == 0),
            ("commit_max_events", s.commit_max_events == 0),
        ] {
            if zero {
                let at = p.at.in_section("store", key);
                p.push(at, format!("[store] {key} must be above 0"));
            }
        }
    }
    let mqtt = match raw.mqtt {
        Some(Some(m)) => match m.validate() {
            Ok(m) => Some(Some(m)),
            Err(problems) => {
                for problem in problems {
                    let at = p.at.in_section("mqtt", problem.key);
                    p.push(at, format!("[mqtt] {}", problem.message));
                }
                None
            }
        },
        Some(None) => Some(None),
        None => None,
    };
    let ops = raw.ops.and_then(|o| match o.validate() {
        Ok(o) => Some(o),
        Err((key, message)) => {
            let at = p.at.in_section("ops", key);
            p.push(at, message);
            None
        }
    });
    let over_scan = raw.flags.map(|f| {
        NonZeroUsize::new(f.over_scan_max_arrivals).map(|max_arrivals| {
            if f.over_scan_window_secs == 0 {
                let at = p.at.in_section("flags", "over_scan_window_secs");
                p.push(
                    at,
                    "[flags] over_scan_window_secs must be above 0 when over_scan_max_arrivals is set",
                );
            }
            OverScan {
                max_arrivals,
                window: Duration::from_secs(f.over_scan_window_secs),
            }
        })
    });
    let masterdata = match raw.masterdata {
        Some(Some(m)) => {
            let names: Vec<&str> = read_points
                .iter()
                .map(|r: &ReadPoint| r.name.as_str())
                .collect();
            match m.validate(&names) {
                Ok(m) => Some(Some(m)),
                Err(problems) => {
                    for problem in problems {
                        let at = p.at.in_section(problem.table, &problem.key);
                        p.push(at, problem.message);
                    }
                    None
                }
            }
        }
        Some(None) => Some(None),
        None => None,
    };
    if !readers_ok || !read_points_ok {
        return None;
    }
    Some(Parts {
        gateway: raw.gateway?,
        readers: raw.readers.into_iter().flatten().collect(),
        read_points,
        dedup: dedup?,
        store: raw.store?,
        mqtt: mqtt?,
        ops: ops?,
        nfc: raw.nfc?,
        over_scan: over_scan?,
        masterdata: masterdata?,
        gpio: gpio?,
    })
}

fn read_point(
    i: usize,
    rp: RawReadPoint,
    reader_names: &HashMap<&str, &ReaderConfig>,
    readers_ok: bool,
    rp_names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<ReadPoint> {
    let at = |key: &str| p.at.in_entry("read_points", i, key);
    let at_name = at("name");
    if !id_ok(&rp.name) {
        p.push(at_name, format!(
            "read_points[{i}]: name {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
            shown_name(&rp.name)
        ));
    }
    if !rp_names.insert(rp.name.clone()) {
        p.push(
            at_name,
            format!("read_points[{i}]: duplicate read point name {:?}", rp.name),
        );
    }
    let Some(reader) = reader_names.get(rp.reader.as_str()) else {
        // A reader entry that failed to parse may be the one meant: saying
        // "not defined" then would be noise.
        if readers_ok {
            let mut known: Vec<&str> = reader_names.keys().copied().collect();
            known.sort_unstable();
            let at = p.at.in_entry("read_points", i, "reader");
            p.push(
                at,
                format!(
                    "read_points[{i}] ({}): reader {:?} is not defined in [[readers]] (defined: {})",
                    rp.name,
                    rp.reader,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        return None;
    };
    let at_antennas = p.at.in_entry("read_points", i, "antennas");
    let antennas = match (&rp.antennas, reader.antennas()) {
        (Some(list), Some(all)) => {
            for a in list {
                if !all.contains(a) {
                    p.push(
                        at_antennas,
                        format!(
                            "read_points[{i}] ({}): antenna {a} is not one of reader {:?}'s antennas {:?}",
                            rp.name, rp.reader, all
                        ),
                    );
                }
            }
            list.clone()
        }
        (Some(list), None) if !list.is_empty() => {
            p.push(
                at_antennas,
                format!(
                    "read_points[{i}] ({}): reader {:?} is an NFC reader and has no antennas",
                    rp.name, rp.reader
                ),
            );
            Vec::new()
        }
        (_, Some(all)) => all.to_vec(),
        (_, None) => Vec::new(),
    };
    let direction = rp.direction.map(|d| {
        let at = p.at.in_entry("read_points", i, "direction");
        if d.inside == d.outside {
            p.push(
                at,
                format!(
                    "read_points[{i}] ({}): direction needs two different antennas, got {} for both",
                    rp.name, d.inside
                ),
            );
        }
        for a in [d.inside, d.outside] {
            if !antennas.contains(&a) {
                p.push(at, format!(
                    "read_points[{i}] ({}): direction antenna {a} is not covered by this read point (antennas {:?})",
                    rp.name, antennas
                ));
            }
        }
        Portal {
            outside: d.outside,
            inside: d.inside,
        }
    });
    let mut patterns = |key: &str, list: &[String]| -> Vec<EpcPattern> {
        let at = p.at.in_entry("read_points", i, key);
        list.iter()
            .filter_map(|pat| match EpcPattern::parse(pat) {
                Ok(parsed) => Some(parsed),
                Err(e) => {
                    p.push(
                        at,
                        format!(
                            "read_points[{i}] ({}): {key} {pat:?} is invalid: {e}",
                            rp.name
                        ),
                    );
                    None
                }
            })
            .collect()
    };
    let epc_patterns = patterns("epc_patterns", &rp.epc_patterns);
    let expect_patterns = patterns("expect_patterns", &rp.expect_patterns);
    Some(ReadPoint {
        name: rp.name,
        reader: rp.reader,
        antennas,
        direction,
        rssi_floor_dbm: rp.rssi_floor_dbm,
        epc_patterns,
        expect_patterns,
        biz_step: rp.biz_step,
        disposition: rp.disposition,
        read_point_id: rp.read_point_id,
        biz_location: rp.biz_location,
        action: rp.action,
        door: None,
    })
}

fn dedup(d: RawDedup, p: &mut Problems) -> Option<DedupConfig> {
    let at = |key| p.at.in_section("dedup", key);
    let (a_min, a_win, a_dep, a_max) = (
        at("min_reads"),
        at("arrival_window_ms"),
        at("departure_timeout_ms"),
        at("max_tags"),
    );
    let min_reads = NonZeroU32::new(d.min_reads);
    if min_reads.is_none() {
        p.push(a_min, "[dedup] min_reads must be at least 1");
    }
    if d.arrival_window_ms == 0 {
        p.push(
            a_win,
            "[dedup] arrival_window_ms must be above 0 (a window of zero can never collect min_reads)",
        );
    }
    if d.departure_timeout_ms == 0 {
        p.push(
            a_dep,
            "[dedup] departure_timeout_ms must be above 0 (a tag would depart between two reads)",
        );
    }
    let max_tags = NonZeroUsize::new(d.max_tags);
    if max_tags.is_none() {
        p.push(a_max, "[dedup] max_tags must be at least 1");
    }
    Some(DedupConfig {
        key: d.key,
        min_reads: min_reads?,
        arrival_window: Duration::from_millis(d.arrival_window_ms),
        departure_timeout: Duration::from_millis(d.departure_timeout_ms),
        report_interval: (d.report_interval_ms > 0)
            .then(|| Duration::from_millis(d.report_interval_ms)),
        max_tags: max_tags?,
    })
}

/// Opens every file `config` names and reports those that cannot be used.
fn check_files(config: &Config, at: &Locator) -> Vec<Problem> {
    let mut problems = Vec::new();
    for path in &config.sun_key_files {
        if let Err(e) = tracegate_drivers::nfc::sun::KeyFile::load(path) {
            problems.push(Problem {
                at: at.in_section("nfc", "sun_key_files"),
                message: format!("[nfc] sun_key_files: {e}"),
            });
        }
    }
    if let Some(path) = &config.ops.credentials_file {
        if let Err(e) = crate::ops::Credentials::load(path) {
            problems.push(Problem {
                at: at.in_section("ops", "credentials_file"),
                message: format!("[ops] credentials_file: {e}"),
            });
        }
    }
    if let Some(md) = &config.masterdata {
        if let Err(errors) = crate::masterdata::config::load_trusted_keys(md) {
            for e in errors {
                problems.push(Problem {
                    at: at.in_section("masterdata", "trusted_keys"),
                    message: format!("[masterdata] trusted_keys: {e}"),
                });
            }
        }
    }
    if let Some(g) = config
        .gpio
        .as_ref()
        .filter(|g| g.backend == crate::gpio::config::BackendKind::Cdev)
    {
        let pins = g
            .inputs
            .iter()
            .map(|i| ("inputs", &i.name, &i.chip, i.line));
        let pins = pins.chain(
            g.outputs
                .iter()
                .map(|o| ("outputs", &o.name, &o.chip, o.line)),
        );
        for (kind, name, chip, line) in pins {
            if let Err(e) = crate::gpio::cdev::check(name, chip, line) {
                problems.push(Problem {
                    at: at.in_section(&format!("gpio.{kind}.{name}"), "line"),
                    message: format!("[gpio] {e}"),
                });
            }
        }
    }
    if let Some(mqtt) = &config.mqtt {
        for problem in crate::publish::config::check_files(mqtt) {
            problems.push(Problem {
                at: at.in_section("mqtt", problem.key),
                message: format!("[mqtt] {}", problem.message),
            });
        }
    }
    problems
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
            match &self.mqtt {
                Some(m) => m.broker.to_string(),
                None => "off".to_owned(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_readers_is_refused_with_what_to_add() {
        let text = MINIMAL.replace("[[readers]]\nname = \"sim1\"\nkind = \"sim\"\n", "");
        assert!(!text.contains("[[readers]]"), "{text}");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("no [[readers]] entry"), "{err}");
    }

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
        assert_eq!(c.dedup.min_reads.get(), 1);
        assert!(c.mqtt.is_none() && c.over_scan.is_none());
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
    fn a_gateway_id_longer_than_64_characters_is_refused_without_being_echoed() {
        let long = "g".repeat(70_000);
        let text = MINIMAL.replace("id = \"gw1\"", &format!("id = \"{long}\""));
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:3:"), "{err}");
        assert!(err.contains("(70000 characters)"), "{err}");
        assert!(err.len() < 400, "{} characters", err.len());
        let ok = MINIMAL.replace("id = \"gw1\"", &format!("id = \"{}\"", "g".repeat(64)));
        assert!(parse(&ok, "t.toml").is_ok());
    }

    #[test]
    fn durations_longer_than_a_day_or_a_year_are_refused_where_they_are_written() {
        let text = MINIMAL
            .replace(
                "[[readers]]",
                "[dedup]\ndeparture_timeout_ms = 9223372036854775807\n\n[[readers]]",
            )
            .replace("kind = \"sim\"", "kind = \"sim\"\ndwell_ms = 86400001");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("t.toml:8:1: [dedup] departure_timeout_ms"),
            "{err}"
        );
        assert!(err.contains("readers[0]: dwell_ms = 86400001"), "{err}");
        let nested = format!(
            "{MINIMAL}\n[read_points.window]\nlinger_ms = 99999999999\n\n[gpio.inputs.eye]\nline = 1\ndebounce_ms = 99999999999\n"
        );
        let err = parse(&nested, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("read_points[0].window: linger_ms = 99999999999"),
            "{err}"
        );
        assert!(
            err.contains("[gpio.inputs.eye] debounce_ms = 99999999999"),
            "{err}"
        );
        let day = MINIMAL.replace(
            "[[readers]]",
            "[dedup]\ndeparture_timeout_ms = 86400000\n\n[[readers]]",
        );
        assert!(parse(&day, "t.toml").is_ok());
    }

    #[test]
    fn a_huge_number_is_not_echoed_digit_by_digit() {
        let text = MINIMAL.replace(
            "[[readers]]",
            "[dedup]\narrival_window_ms = 1e300\n\n[[readers]]",
        );
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("(301 digits)"), "{err}");
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn a_config_file_over_1_mib_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, format!("{MINIMAL}\n# {}\n", "x".repeat(1 << 20))).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
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

    #[test]
    fn every_problem_is_reported_each_at_its_line_in_file_order() {
        let text = r#"colour = "red"
[gateway]
id = "gw 1"
site = "s"

[[readers]]
name = "r1"
kind = "sim"
baud_rate = 9600

[[readers]]
name = "r2"
kind = "sim"

[[read_points]]
name = "door"
reader = "r2"
epc_patterns = ["urn:epc:pat:nonsense"]

[dedup]
min_reads = "three"

[store]
max_bytes = 10

[mqtt]
url = "mqtt://h"
inflight = 0
keep_alive_secs = 1

[ops]
stale_after_secs = 0
"#;
        let err = parse(text, "t.toml").unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}");
        };
        let lines: Vec<usize> = problems.iter().filter_map(|p| p.at.map(|a| a.0)).collect();
        assert_eq!(lines, [1, 3, 9, 18, 21, 24, 28, 29, 32], "{err}");
        let text = err.to_string();
        for needle in [
            "t.toml:3:1: [gateway] id \"gw 1\"",
            "t.toml:9:1: readers[0]: unknown field `baud_rate`",
            "t.toml:18:1: read_points[0] (door): epc_patterns \"urn:epc:pat:nonsense\" is invalid",
            "t.toml:21:13: invalid type: string \"three\"",
            &format!("t.toml:24:1: [store] max_bytes must be at least {MIN_MAX_BYTES}"),
            "t.toml:28:1: [mqtt] mqtt.inflight",
            "t.toml:29:1: [mqtt] mqtt.keep_alive_secs",
            "t.toml:32:1: [ops] stale_after_secs",
            "t.toml:1:1: unknown field `colour`",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn patterns_mqtt_and_flags_arrive_typed() {
        let text = format!(
            "{MINIMAL}epc_patterns = [\"urn:epc:pat:sgtin-96:*.0614141.*.*\"]\n\
             [mqtt]\nurl = \"mqtts://broker.example\"\nlinger_ms = 0\nbacklog_rate_limit = 500\n\
             [flags]\nover_scan_max_arrivals = 3\nover_scan_window_secs = 60\n"
        );
        let c = parse(&text, "t.toml").unwrap();
        let decoded = tracegate_gs1::decode_epc_hex("3074257BF7194E4000001A85").unwrap();
        assert!(c.read_points[0].epc_patterns[0].matches(&decoded));
        let m = c.mqtt.unwrap();
        assert_eq!(m.broker.to_string(), "mqtts://broker.example:8883");
        assert_eq!(m.linger, Duration::ZERO);
        assert_eq!(m.backlog_rate_limit.map(|r| r.get()), Some(500));
        let o = c.over_scan.unwrap();
        assert_eq!(
            (o.max_arrivals.get(), o.window),
            (3, Duration::from_secs(60))
        );
    }

    #[test]
    fn the_store_minimum_is_the_stores_own() {
        let ok = format!("{MINIMAL}\n[store]\nmax_bytes = {MIN_MAX_BYTES}\n");
        assert_eq!(parse(&ok, "t.toml").unwrap().store.max_bytes, MIN_MAX_BYTES);
        let below = format!("{MINIMAL}\n[store]\nmax_bytes = {}\n", MIN_MAX_BYTES - 1);
        assert!(parse(&below, "t.toml").is_err());
    }

    #[test]
    fn a_syntax_error_is_located_and_reported_alone() {
        let text = MINIMAL.replace("site = \"site1\"", "site = \"site1");
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn check_files_names_the_field_of_every_file_that_cannot_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("user");
        std::fs::write(&empty, "").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("missing");
        let text = format!(
            "{MINIMAL}\n[mqtt]\nurl = \"mqtts://h\"\nca_file = {not_pem:?}\n\
             client_cert_file = {missing:?}\nclient_key_file = {missing:?}\n\
             username_file = {empty:?}\npassword_file = {missing:?}\n\
             [nfc]\nsun_key_files = [{missing:?}]\n"
        );
        let path = dir.path().join("t.toml");
        std::fs::write(&path, &text).unwrap();
        load(&path).unwrap();
        let err = load_and_check_files(&path).unwrap_err().to_string();
        for needle in [
            ":17:1: [mqtt] mqtt.ca_file",
            ":18:1: [mqtt] mqtt.client_cert_file",
            ":19:1: [mqtt] mqtt.client_key_file",
            ":20:1: [mqtt] mqtt.username_file",
            ":21:1: [mqtt] mqtt.password_file",
            ":23:1: [nfc] sun_key_files",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
        }
        assert_eq!(err.lines().count(), 6, "{err}");
    }
}
