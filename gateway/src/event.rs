//! The event model: one typed [`Event`] for UHF and NFC, serialised to the
//! JSON the store keeps and the registry receives (docs/events.md,
//! docs/events.schema.json).
//!
//! An event is an envelope (`id`, `seq`, `type`, `gateway`, `time`) around a
//! body per kind ([`EventBody`]). The pipeline builds events without `id` and
//! `seq`; the store numbers them when it commits them and serialises each
//! one exactly once, so what `tracegate events` prints, what the demo shows
//! and what MQTT carries are the same bytes. A new kind (pallet passes,
//! alerts) is a new [`EventBody`] variant with its own body struct.
//!
//! This module depends on no other module of the crate: the pipeline maps
//! dedup and config values into these types, the store and the publisher
//! read them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracegate_gs1::{Decoded, TidInfo};

/// Who is speaking: stamped on every event.
#[derive(Debug, Clone)]
pub struct Origin {
    pub gateway: String,
    pub site: String,
}

// ------------------------------------------------------------------ time ----

/// A point in time as UTC milliseconds since the Unix epoch. Serialised as
/// UTC ISO-8601 with exactly three decimals (`2026-11-28T00:07:12.345Z`),
/// the form EPCIS event hashing expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UtcMs(pub i64);

/// 0000-01-01T00:00:00.000Z: the earliest time with a four-digit year.
pub const MIN_ISO_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z: the latest time with a four-digit year.
pub const MAX_ISO_MS: i64 = 253_402_300_799_999;

const DAY_MS: i64 = 86_400_000;

/// UTC ISO-8601 with exactly three decimals. Times outside years 0000-9999
/// are clamped to the nearest end, so the output always has the documented
/// shape (a Pi without RTC and NTP starts in 1970, never out of range; only
/// a corrupt value gets here).
pub fn iso_ms(utc_ms: i64) -> String {
    UtcMs(utc_ms).to_string()
}

impl UtcMs {
    /// The ISO-8601 text in a stack buffer. Written digit by digit rather
    /// than through `write!`: every UHF event carries three times, and the
    /// formatting machinery cost more than the rest of the event's JSON.
    fn iso_bytes(self) -> [u8; 24] {
        let ms = self.0.clamp(MIN_ISO_MS, MAX_ISO_MS);
        let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
        let t = ms.rem_euclid(DAY_MS);
        let mut b = *b"0000-00-00T00:00:00.000Z";
        // Every value is non-negative and fits its field (years 0000-9999).
        let mut put = |at: usize, width: usize, v: i64| {
            let mut v = v;
            for i in (at..at + width).rev() {
                if let Some(c) = b.get_mut(i) {
                    *c = b'0' + (v % 10) as u8;
                }
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, t / 3_600_000);
        put(14, 2, t / 60_000 % 60);
        put(17, 2, t / 1000 % 60);
        put(20, 3, t % 1000);
        b
    }
}

impl fmt::Display for UtcMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.iso_bytes();
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`). Formatting by hand keeps chrono
/// out of the per-event path: three times per UHF event.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl UtcMs {
    /// Parses any RFC 3339 time (sub-millisecond digits are truncated).
    pub fn parse(text: &str) -> Option<UtcMs> {
        Self::parse_own(text).or_else(|| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| UtcMs(t.timestamp_millis()))
        })
    }

    /// The exact form [`iso_ms`] writes, read without chrono: stored events
    /// are read back on every `epcis2` batch and `tracegate events` line.
    fn parse_own(text: &str) -> Option<UtcMs> {
        let b = text.as_bytes();
        if b.len() != 24
            || [
                (4, b'-'),
                (7, b'-'),
                (10, b'T'),
                (13, b':'),
                (16, b':'),
                (19, b'.'),
                (23, b'Z'),
            ]
            .iter()
            .any(|&(i, c)| b.get(i) != Some(&c))
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            b.get(from..to)?.iter().try_fold(0i64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        };
        let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, mi, s, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
        let days_in_month = match mo {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
            2 => 28,
            _ => return None,
        };
        if d < 1 || d > days_in_month || h > 23 || mi > 59 || s > 59 {
            // Leap seconds and anything odd go through chrono.
            return None;
        }
        let days = days_from_civil(y, mo, d);
        Some(UtcMs(
            days * DAY_MS + h * 3_600_000 + mi * 60_000 + s * 1000 + ms,
        ))
    }
}

impl Serialize for UtcMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.iso_bytes();
        // ASCII digits and separators only: always UTF-8.
        s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for UtcMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        UtcMs::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
    }
}

// ------------------------------------------------------------- envelope ----

/// One event. `id` and `seq` are assigned by the store when it commits the
/// event: before that they are empty and 0 (see [`Event::new`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// `{gateway}:{store}:{seq}`: the registry's deduplication key.
    pub id: String,
    /// Position in this gateway store's commit order (from 1).
    pub seq: u64,
    pub gateway: String,
    /// When it happened.
    pub time: UtcMs,
    /// `type` and the fields of that kind.
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// An event not yet committed.
    pub fn new(gateway: impl Into<String>, time: UtcMs, body: EventBody) -> Self {
        Self {
            id: String::new(),
            seq: 0,
            gateway: gateway.into(),
            time,
            body,
        }
    }

    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// The event's JSON with the given `id` and `seq` (the store's commit
    /// path: it numbers and serialises a draft in one step, without copying).
    pub fn to_json_numbered(&self, id: &str, seq: u64) -> Result<String, serde_json::Error> {
        if let EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) = &self.body {
            // The hot path, written by hand (byte for byte what serde writes).
            return json::uhf_event(id, seq, self, b);
        }
        serde_json::to_string(&Numbered {
            id,
            seq,
            event: self,
        })
    }

    /// The flags of the event (empty for kinds that carry none).
    pub fn flags(&self) -> &[Flag] {
        match &self.body {
            EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) => &b.flags,
            EventBody::Tap(b) => &b.flags,
            EventBody::Pass(b) => &b.flags,
            EventBody::Overflow(_) | EventBody::Salvage(_) | EventBody::MasterdataApplied(_) => &[],
        }
    }

    /// A minimal arrival of `epc` with one read on antenna 1 and no EPCIS
    /// context (tests, benchmarks, examples).
    pub fn sample_arrival(
        gateway: &str,
        site: &str,
        read_point: &str,
        epc: &[u8],
        utc_ms: i64,
    ) -> Event {
        let decoded = tracegate_gs1::decode_epc(epc);
        Event::new(
            gateway,
            UtcMs(utc_ms),
            EventBody::Arrived(UhfEvent {
                at: ReadContext {
                    site: site.to_owned(),
                    read_point: read_point.to_owned(),
                    reader: read_point.to_owned(),
                    clock_synced: true,
                },
                identity: UhfIdentity::new(epc, &decoded, None),
                first_seen: UtcMs(utc_ms),
                last_seen: UtcMs(utc_ms),
                read_count: 1,
                peak_rssi_dbm: None,
                antennas: vec![1],
                direction: None,
                reason: None,
                flags: Vec::new(),
                masterdata: None,
                epcis: None,
            }),
        )
    }

    /// One line for a person reading `tracegate events`: seq, time, type,
    /// read point, the serial (pure identity or EPC, Digital Link or UID),
    /// then flags, verdicts and the id.
    pub fn human_line(&self) -> String {
        self.to_string()
    }
}

/// The wire order: envelope first (`id`, `seq`, `type`, `gateway`, `time`),
/// then the body's fields. Deserialisation does not depend on the order.
#[derive(Serialize)]
struct Wire<'a, B> {
    id: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    kind: EventKind,
    gateway: &'a str,
    time: UtcMs,
    #[serde(flatten)]
    body: &'a B,
}

struct Numbered<'a> {
    id: &'a str,
    seq: u64,
    event: &'a Event,
}

impl Serialize for Numbered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        macro_rules! wire {
            ($b:expr) => {
                Wire {
                    id: self.id,
                    seq: self.seq,
                    kind: e.body.kind(),
                    gateway: &e.gateway,
                    time: e.time,
                    body: $b,
                }
                .serialize(s)
            };
        }
        match &e.body {
            EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) => wire!(b),
            EventBody::Tap(b) => wire!(b),
            EventBody::Pass(b) => wire!(b),
            EventBody::Overflow(b) => wire!(b),
            EventBody::Salvage(b) => wire!(b),
            EventBody::MasterdataApplied(b) => wire!(b),
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Numbered {
            id: &self.id,
            seq: self.seq,
            event: self,
        }
        .serialize(s)
    }
}

/// The kind of an event: its `type` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Arrived,
    Departed,
    Present,
    Tap,
    Overflow,
    Salvage,
    MasterdataApplied,
    Pass,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Arrived => "arrived",
            EventKind::Departed => "departed",
            EventKind::Present => "present",
            EventKind::Tap => "tap",
            EventKind::Overflow => "overflow",
            EventKind::Salvage => "salvage",
            EventKind::MasterdataApplied => "masterdata_applied",
            EventKind::Pass => "pass",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What happened, per kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A UHF tag appeared at a read point (ALE addition).
    Arrived(UhfEvent),
    /// A UHF tag has not been read for the departure timeout (ALE deletion).
    Departed(UhfEvent),
    /// A UHF tag is still there (periodic re-report).
    Present(UhfEvent),
    /// An NFC card or tag was presented.
    Tap(TapEvent),
    /// The store was full and dropped or refused events.
    Overflow(OverflowEvent),
    /// The store was found corrupt: what was carried into the fresh one.
    Salvage(SalvageEvent),
    /// A master-data dataset from the registry is now in force.
    MasterdataApplied(MasterdataAppliedEvent),
    /// A read window closed: every tag one pallet or carton carried.
    Pass(PassEvent),
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Arrived(_) => EventKind::Arrived,
            EventBody::Departed(_) => EventKind::Departed,
            EventBody::Present(_) => EventKind::Present,
            EventBody::Tap(_) => EventKind::Tap,
            EventBody::Overflow(_) => EventKind::Overflow,
            EventBody::Salvage(_) => EventKind::Salvage,
            EventBody::MasterdataApplied(_) => EventKind::MasterdataApplied,
            EventBody::Pass(_) => EventKind::Pass,
        }
    }
}

/// Where and by what a tag was seen; shared by every tag event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadContext {
    pub site: String,
    /// The configured read point (door, conveyor, desk).
    pub read_point: String,
    /// The reader that saw the tag.
    pub reader: String,
    /// Whether the gateway clock was NTP-synchronised at `time`.
    pub clock_synced: bool,
}

// -------------------------------------------------------------- UHF body ----

/// `arrived`, `departed` and `present`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UhfEvent {
    #[serde(flatten)]
    pub at: ReadContext,
    pub identity: UhfIdentity,
    /// First and last read of this presence.
    pub first_seen: UtcMs,
    pub last_seen: UtcMs,
    /// Reads merged into this event.
    pub read_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rssi_dbm: Option<i16>,
    /// Antenna ports that saw the tag, ascending.
    pub antennas: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DepartureReason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// Details of master-data flags (blocked reason, bound serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masterdata: Option<MasterdataDetail>,
    /// The read point's EPCIS settings: the registry and the `epcis2`
    /// payload need no copy of the gateway's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epcis: Option<EpcisContext>,
}

/// What was read from a UHF tag: raw hex plus what GS1 decoding found.
/// An EPC that is not a valid GS1 EPC keeps its hex and gets an
/// `urn:epc:raw:` identity (scheme `raw`); no read is lost to decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UhfIdentity {
    #[serde(with = "hex_upper")]
    pub epc: Vec<u8>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "hex_upper_opt"
    )]
    pub tid: Option<Vec<u8>>,
    /// GS1 EPC scheme (`sgtin-96`, ..., `raw`).
    pub scheme: String,
    /// `urn:epc:id:...`, `urn:epc:raw:...`, or for SGTIN+/DSGTIN+ the
    /// canonical GS1 Digital Link.
    pub pure_identity: String,
    pub tag_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digital_link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid_info: Option<TidInfo>,
}

impl UhfIdentity {
    /// The identity of an EPC (and TID, if read) from its GS1 decoding.
    pub fn new(epc: &[u8], decoded: &Decoded, tid: Option<&[u8]>) -> Self {
        Self::from_decoded(epc, decoded.clone(), tid)
    }

    /// Like [`UhfIdentity::new`], taking the decoding's strings instead of
    /// copying them (the pipeline's per-event path).
    pub fn from_decoded(epc: &[u8], decoded: Decoded, tid: Option<&[u8]>) -> Self {
        Self {
            epc: epc.to_vec(),
            tid: tid.map(<[u8]>::to_vec),
            scheme: decoded.scheme,
            pure_identity: decoded.pure_identity_uri,
            tag_uri: decoded.tag_uri,
            gtin: decoded.gtin,
            serial: decoded.serial,
            element_string: decoded.element_string,
            digital_link: decoded.digital_link,
            tid_info: tid.map(tracegate_gs1::decode_tid),
        }
    }

    /// Whether the EPC decoded as a GS1 EPC.
    pub fn is_gs1(&self) -> bool {
        self.scheme != "raw"
    }
}

/// Direction through a two-antenna portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// Why a tag was declared gone other than by its departure timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepartureReason {
    /// Pushed out of the dedup table by `max_tags`.
    Evicted,
}

/// Suspicious-serial warnings raised at the edge (the event is still
/// delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// The EPC is not a valid GS1 EPC.
    Unknown,
    /// The EPC matches none of the read point's `expect_patterns`.
    Unexpected,
    /// The same EPC was seen with two different TIDs.
    Cloned,
    /// The serial arrived at this read point too often within the window.
    OverScanned,
    /// An NFC tap whose SUN did not verify.
    ForgedNfc,
    /// An NFC tap with a valid SUN whose counter was seen before.
    ReplayedNfc,
    /// Master data: the serial is not among the commissioned ones.
    UnknownSerial,
    /// Master data: the serial is blocked (`masterdata.blocked_reason`).
    Blocked,
    /// Master data: the serial is meant for other markets than this gateway's.
    WrongMarket,
    /// Master data: the NFC tag's UID is bound to another serial
    /// (`masterdata.bound_serial`).
    SerialMismatch,
    /// Master data: not on an expected shipment of this read point.
    NotExpected,
    /// Master data: a pass at a read point that expects a shipment missed
    /// some of its items (`shipment.missing`).
    ShipmentIncomplete,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Unknown => "unknown",
            Flag::Unexpected => "unexpected",
            Flag::Cloned => "cloned",
            Flag::OverScanned => "over_scanned",
            Flag::ForgedNfc => "forged_nfc",
            Flag::ReplayedNfc => "replayed_nfc",
            Flag::UnknownSerial => "unknown_serial",
            Flag::Blocked => "blocked",
            Flag::WrongMarket => "wrong_market",
            Flag::SerialMismatch => "serial_mismatch",
            Flag::NotExpected => "not_expected",
            Flag::ShipmentIncomplete => "shipment_incomplete",
        }
    }
}

/// Why the registry blocked a serial. On overlapping blocked ranges the
/// later variant in this order wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    Other,
    Destroyed,
    Revoked,
    Recalled,
    Stolen,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Other => "other",
            BlockReason::Destroyed => "destroyed",
            BlockReason::Revoked => "revoked",
            BlockReason::Recalled => "recalled",
            BlockReason::Stolen => "stolen",
        }
    }
}

/// The details of master-data flags that a flag name alone cannot carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterdataDetail {
    /// With the `blocked` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<BlockReason>,
    /// With `serial_mismatch`: the GTIN and serial the tag's UID is bound
    /// to by its commissioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_gtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_serial: Option<String>,
}

/// The read point's EPCIS 2.0 settings, carried on every UHF event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpcisContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_point_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_location: Option<String>,
    /// The EPCIS action of an `arrived` event at this read point.
    pub action: EpcisAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpcisAction {
    Add,
    Observe,
    Delete,
}

// -------------------------------------------------------------- NFC body ----

/// `tap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapEvent {
    #[serde(flatten)]
    pub at: ReadContext,
    pub identity: NfcIdentity,
    pub tap: TapDetails,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// Details of master-data flags (blocked reason, bound serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masterdata: Option<MasterdataDetail>,
    /// NTAG 424 DNA SUN verification, when keys are configured and the
    /// NDEF URI carries SUN parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sun: Option<SunResult>,
}

impl TapEvent {
    /// A tap as the driver reported it, before Digital Link and SUN
    /// enrichment.
    pub fn new(at: ReadContext, tap: &tracegate_drivers::Tap) -> Self {
        Self {
            at,
            identity: NfcIdentity {
                uid: tap.uid.clone(),
                gtin: None,
                serial: None,
                lot: None,
                digital_link: None,
                source: None,
            },
            tap: TapDetails {
                tag_type: tap.tag_type.clone(),
                atr: tap.atr.clone(),
                ndef_uri: tap.ndef_uri.clone(),
                ndef_text: tap.ndef_text.clone(),
            },
            flags: Vec::new(),
            masterdata: None,
            sun: None,
        }
    }

    /// Records a SUN verdict, raising `forged_nfc` or `replayed_nfc` when it
    /// is not `genuine` (and dropping a flag an earlier verdict raised).
    pub fn set_sun_verdict(&mut self, verdict: SunVerdict) {
        self.flags
            .retain(|f| !matches!(f, Flag::ForgedNfc | Flag::ReplayedNfc));
        if let Some(flag) = verdict.flag() {
            self.flags.push(flag);
        }
        if let Some(sun) = &mut self.sun {
            sun.verdict = verdict;
        }
        // The URL is authenticated only by a MAC that covers it and a tap
        // that is not a replay of someone else's read.
        if self.identity.digital_link.is_some() {
            let covered = verdict.authentic()
                && self
                    .sun
                    .as_ref()
                    .is_some_and(|s| s.covers.contains(&SunCovered::Url));
            self.identity.source = Some(if covered {
                IdentitySource::Authenticated
            } else {
                IdentitySource::Claimed
            });
        }
    }
}

/// What was read from an NFC tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfcIdentity {
    #[serde(with = "hex_upper")]
    pub uid: Vec<u8>,
    /// From the NDEF URI when it is a GS1 Digital Link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lot: Option<String>,
    /// The tag's own URI, when it is a GS1 Digital Link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digital_link: Option<String>,
    /// Whether the Digital Link identity above (GTIN, serial, lot) is
    /// authenticated by the tap's SUN MAC or only claimed by the tag's
    /// memory; present whenever a Digital Link is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IdentitySource>,
}

/// Who vouches for a tap's Digital Link identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// A genuine SUN MAC covers the whole URL, serial included.
    Authenticated,
    /// Read from the tag's memory and not covered by a verified MAC: anyone
    /// can write it. The registry binds it to the tag through the UID (its
    /// commissioning records), never through this event alone.
    Claimed,
}

/// What a verified SUN MAC authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SunCovered {
    /// The tag's UID (always, for a verified MAC).
    Uid,
    /// The read counter, when the tag mirrors it into the URL.
    Counter,
    /// The URL from the first byte after the URI identifier code up to the
    /// MAC: host, path, GTIN and serial.
    Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapDetails {
    /// `ntag215`, `ntag424dna`, `mifare_ultralight`, `unknown`, ...
    pub tag_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndef_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndef_text: Option<String>,
    #[serde(with = "hex_upper")]
    pub atr: Vec<u8>,
}

/// NTAG 424 DNA SUN verification of a tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SunResult {
    pub verdict: SunVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<u32>,
    /// The configured product whose keys verified (or were tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The UID the SUN data carried.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "hex_upper_opt"
    )]
    pub uid: Option<Vec<u8>>,
    /// What the MAC authenticates (empty unless the verdict is genuine or
    /// genuine_no_counter; a replayed tap keeps what its MAC covered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<SunCovered>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SunVerdict {
    /// The MAC verifies and the counter is above the last one seen.
    Genuine,
    /// The MAC verifies, but the tag does not mirror its read counter, so
    /// no replay check was possible: a copied URL would verify too.
    GenuineNoCounter,
    /// A valid SUN of another tag: its UID differs from the UID the reader
    /// reported, or the chip is not an NTAG 424 DNA (a copied URL).
    UidMismatch,
    /// The MAC verifies but the counter was seen before: a copied URL.
    Replayed,
    /// Forged or altered.
    InvalidMac,
    /// No configured product's key fits.
    UnknownKey,
    /// A SUN mode this gateway does not verify (LRP).
    Unsupported,
    /// The counter store could not be read. Only gateways that checked
    /// counters outside the commit wrote this; it is kept so their stored
    /// events still read.
    Unverified,
}

impl SunVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            SunVerdict::Genuine => "genuine",
            SunVerdict::GenuineNoCounter => "genuine_no_counter",
            SunVerdict::UidMismatch => "uid_mismatch",
            SunVerdict::Replayed => "replayed",
            SunVerdict::InvalidMac => "invalid_mac",
            SunVerdict::UnknownKey => "unknown_key",
            SunVerdict::Unsupported => "unsupported",
            SunVerdict::Unverified => "unverified",
        }
    }

    /// The MAC verified for this very tag (the counter may not be checked).
    pub fn authentic(self) -> bool {
        matches!(self, SunVerdict::Genuine | SunVerdict::GenuineNoCounter)
    }

    /// The flag a tap with this verdict carries.
    pub fn flag(self) -> Option<Flag> {
        match self {
            SunVerdict::Genuine | SunVerdict::GenuineNoCounter | SunVerdict::Unverified => None,
            SunVerdict::Replayed => Some(Flag::ReplayedNfc),
            SunVerdict::InvalidMac
            | SunVerdict::UnknownKey
            | SunVerdict::Unsupported
            | SunVerdict::UidMismatch => Some(Flag::ForgedNfc),
        }
    }
}

/// A verified SUN read counter still to be checked against the highest one
/// stored for its UID. The store decides `genuine` or `replayed` inside the
/// transaction that commits the tap, and keeps the counter in that commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SunReplayCheck {
    pub uid: Vec<u8>,
    pub counter: u32,
}

// --------------------------------------------------------- overflow body ----

/// `overflow`: events the store's full policy dropped or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverflowEvent {
    pub policy: OverflowPolicy,
    /// Exactly how many events were lost.
    pub count: u64,
    /// The dropped seq range (`drop_oldest`); `null` for `reject_new`,
    /// whose refused events never got a seq.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The time range of the lost events.
    pub from: UtcMs,
    pub to: UtcMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    DropOldest,
    RejectNew,
}

// ---------------------------------------------------------- salvage body ----

/// `salvage`: the store was found corrupt at start, moved aside, and a
/// fresh one started. Every unpublished event that could still be read was
/// carried into the fresh store unchanged (its original `id` and `seq`, so
/// the registry deduplicates it like any resend); this event says how many,
/// and which unpublished seqs could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalvageEvent {
    /// The corrupt store's id (the middle part of its events' ids), when
    /// it could be read.
    pub from_store: Option<String>,
    /// Where the corrupt file was moved (kept for inspection).
    pub moved_to: String,
    /// Why it was judged corrupt.
    pub reason: String,
    /// Unpublished events carried into the fresh store.
    pub carried: u64,
    /// Unpublished seqs of the old store that could not be read, as
    /// inclusive ranges (at most [`SalvageEvent::MAX_RANGES`]; `lost` counts
    /// them all). Seqs an earlier `overflow` event already announced are
    /// not repeated here.
    pub missing: Vec<(u64, u64)>,
    /// How many unpublished events could not be read: lost to the registry.
    pub lost: u64,
    /// Whether the old file's last sequence number and publish watermark
    /// could be read; without them `lost` is only what gaps showed.
    pub bounds_known: bool,
}

impl SalvageEvent {
    /// Ranges listed in one event; a store damaged everywhere lists the
    /// first ones and counts the rest in `lost`.
    pub const MAX_RANGES: usize = 100;
}

// ------------------------------------------------- masterdata_applied body ----

/// `masterdata_applied`: which dataset version this gateway now enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterdataAppliedEvent {
    pub site: String,
    /// The dataset's name (docs/masterdata.md).
    pub name: String,
    pub version: u64,
    /// The version it replaced (absent: the first of that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    /// `fleet`, `site S` or `gateway S/G`, from the signed manifest.
    pub scope: String,
    pub records: u64,
    /// From the first stored chunk to the switch.
    pub apply_ms: u64,
}

// ------------------------------------------------------------ pass body ----

/// `pass`: one read window (a pallet through a door, a carton through a
/// tunnel) and every tag read in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassEvent {
    #[serde(flatten)]
    pub at: ReadContext,
    /// When the window opened and closed (`time` is the close).
    pub opened_at: UtcMs,
    pub closed_at: UtcMs,
    pub opened_by: WindowOpened,
    pub closed_by: WindowClosed,
    /// The input that opened or closed the window, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// How the direction was found (present at read points with beams or a
    /// two-antenna portal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction_evidence: Option<DirectionEvidence>,
    /// Distinct tags and reads in the window, including any beyond
    /// `max_tags` that are counted in `overflow` but not listed.
    pub tag_count: u64,
    pub read_count: u64,
    /// The tags, in the order they were first read.
    pub tags: Vec<PassTag>,
    /// Set when the window saw more tags than the read point's `max_tags`:
    /// the tags are never silently cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<PassOverflow>,
    /// Every flag any listed tag carries, once each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// The one SSCC matching the read point's `parent_pattern`, when the
    /// pass is a packing aggregation (exactly one such SSCC, the other tags
    /// SGTINs): EPCIS renders it as an `AggregationEvent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Master data: the pass against the read point's expected shipments
    /// (present only where one is expected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment: Option<ShipmentVerdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epcis: Option<EpcisContext>,
}

/// A pass against the expected shipments of its read point: `complete`, or
/// what is `missing` and what is `unexpected` (labels `(01)GTIN(21)SERIAL`
/// or `(00)SSCC`, sorted, at most 1,000 listed; the counts are exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentVerdict {
    /// Every expected item was seen and nothing else.
    pub complete: bool,
    pub missing_count: u64,
    pub missing: Vec<String>,
    pub unexpected_count: u64,
    pub unexpected: Vec<String>,
    /// The shipments the read point expects.
    pub shipments: Vec<String>,
}

/// One tag of a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassTag {
    pub identity: UhfIdentity,
    /// Antenna ports that read it, ascending.
    pub antennas: Vec<u8>,
    pub read_count: u64,
    pub first_seen: UtcMs,
    pub last_seen: UtcMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rssi_dbm: Option<i16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
}

/// What opened a read window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowOpened {
    /// The trigger input went active (a photo-eye or a beam broke).
    Input,
    /// The first read while no window was open.
    FirstRead,
    /// The read point's schedule (`open_every_ms`).
    Schedule,
}

/// What closed a read window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowClosed {
    /// The trigger input released (both beams clear) and the linger passed.
    Release,
    /// No new tag for `stable_ms` (ALE stable set).
    Stable,
    /// The window reached `max_duration_ms`.
    MaxDuration,
    /// The gateway stopped with the window open.
    Shutdown,
}

/// Tags beyond a window's `max_tags`: counted, not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassOverflow {
    pub max_tags: u64,
    pub tags_not_listed: u64,
    pub reads_not_listed: u64,
}

/// How a pass's direction was decided.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DirectionEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    pub source: DirectionSource,
    pub confidence: Confidence,
    /// The two-beam reading, at read points with beams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beams: Option<BeamReading>,
    pub antennas: AntennaVotes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionSource {
    /// Beams and antennas agree.
    Both,
    Beams,
    Antennas,
    /// Neither gave a direction.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Beams and antennas agree.
    High,
    /// One source only: beams with no antenna majority, or a clear (80 %)
    /// antenna majority without a beam passage.
    Medium,
    /// The sources disagree, or the antenna majority is narrow.
    Low,
}

/// What the two beams saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeamReading {
    /// The beam that broke first.
    pub first: BeamSide,
    pub passage: BeamPassage,
    /// Breaks after the first one (the second beam, and any bounce).
    pub rebreaks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeamSide {
    Outside,
    Inside,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeamPassage {
    /// Outside beam first, inside beam cleared last.
    In,
    /// Inside beam first, outside beam cleared last.
    Out,
    /// Both beams broke, but the load left the way it came.
    Reversed,
    /// Only one beam broke.
    OneBeam,
}

impl BeamPassage {
    pub fn direction(self) -> Option<Direction> {
        match self {
            BeamPassage::In => Some(Direction::In),
            BeamPassage::Out => Some(Direction::Out),
            BeamPassage::Reversed | BeamPassage::OneBeam => None,
        }
    }
}

/// Tags read first by the outside antenna and last by the inside one
/// (`inward`), and the reverse (`outward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AntennaVotes {
    pub inward: u32,
    pub outward: u32,
}

// ---------------------------------------------------------- human output ----

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8}  {}  {:<9}", self.seq, self.time, self.kind())?;
        match &self.body {
            EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) => {
                write!(f, " {:<14}", b.at.read_point)?;
                if b.identity.is_gs1() {
                    write!(f, " {}", b.identity.pure_identity)?;
                } else {
                    write!(f, " epc:{}", hex::encode_upper(&b.identity.epc))?;
                }
                if let Some(d) = b.direction {
                    write!(f, "  dir:{}", if d == Direction::In { "in" } else { "out" })?;
                }
                if b.reason.is_some() {
                    write!(f, "  evicted")?;
                }
            }
            EventBody::Tap(b) => {
                write!(f, " {:<14}", b.at.read_point)?;
                match &b.identity.digital_link {
                    Some(dl) => write!(f, " {dl}")?,
                    None => write!(f, " uid:{}", hex::encode_upper(&b.identity.uid))?,
                }
                if let Some(sun) = &b.sun {
                    write!(f, "  sun:{}", sun.verdict.as_str())?;
                    if let Some(c) = sun.counter {
                        write!(f, "#{c}")?;
                    }
                }
            }
            EventBody::Pass(b) => {
                write!(f, " {:<14} {} tags", b.at.read_point, b.tag_count)?;
                if let Some(d) = b.direction {
                    write!(f, "  dir:{}", if d == Direction::In { "in" } else { "out" })?;
                }
                if let Some(o) = b.overflow {
                    write!(f, "  ({} not listed)", o.tags_not_listed)?;
                }
            }
            EventBody::Overflow(b) => {
                write!(
                    f,
                    " {} lost {} events from {} to {}",
                    match b.policy {
                        OverflowPolicy::DropOldest => "drop_oldest",
                        OverflowPolicy::RejectNew => "reject_new",
                    },
                    b.count,
                    b.from,
                    b.to
                )?;
                if let (Some(a), Some(z)) = (b.first_seq, b.last_seq) {
                    write!(f, " (seq {a}..{z})")?;
                }
            }
            EventBody::Salvage(b) => {
                write!(
                    f,
                    " corrupt store moved to {}: {} unpublished events carried, {} lost",
                    b.moved_to, b.carried, b.lost
                )?;
            }
            EventBody::MasterdataApplied(b) => {
                write!(
                    f,
                    " {} version {} ({} records)",
                    b.name, b.version, b.records
                )?;
            }
        }
        let flags = self.flags();
        if !flags.is_empty() {
            let names: Vec<&str> = flags.iter().map(|fl| fl.as_str()).collect();
            write!(f, "  !{}", names.join(",!"))?;
        }
        write!(f, "  {}", self.id)
    }
}

// ------------------------------------------------------------------- misc ----

/// Bytes as upper-case hex on the wire; either case is read.
mod hex_upper {
    use serde::{Deserialize, Deserializer, Serializer};

    /// EPCs and TIDs are at most 62 and 64 bytes: encoded on the stack,
    /// without a `String` per field per event.
    const STACK: usize = 64;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if v.len() > STACK {
            return s.serialize_str(&hex::encode_upper(v));
        }
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut buf = [0u8; STACK * 2];
        for (pair, &byte) in buf.chunks_exact_mut(2).zip(v) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0F)];
        }
        let out = buf.get(..v.len() * 2).unwrap_or_default();
        s.serialize_str(std::str::from_utf8(out).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        hex::decode(text.as_ref()).map_err(serde::de::Error::custom)
    }
}

mod hex_upper_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => super::hex_upper::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            Some(text) => hex::decode(text.as_ref())
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

mod json;

#[cfg(test)]
mod tests;
