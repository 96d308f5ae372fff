//! A simulated UHF reader: a deterministic tag population moving through a
//! portal.
//!
//! [`SimWorld`] is sans-IO: given a seed and the current time it yields the
//! reads a real reader would report, so tests can replay a scenario exactly.
//! [`run`] drives it in real time for `tracegate demo` and `run`.
//!
//! Each simulated tag crosses a two-antenna portal: it is first seen by the
//! first configured antenna (outside), then by the last one (inside), with an
//! RSSI that rises while it approaches and falls as it leaves. Reads are
//! spread over the tags present, so a busy portal reads each tag less often,
//! as a real reader's anti-collision does.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, HostTime};
use crate::health::{ReaderHealth, ReaderState};
use crate::read::RawRead;
use crate::sink::{ReadSink, SinkClosed};

/// `[[readers]]` entry with `kind = "sim"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub name: String,
    /// Antenna ports; a tag moves from the first to the last.
    #[serde(default = "default_antennas")]
    pub antennas: Vec<u8>,
    /// Reads per second while at least one tag is in the field.
    #[serde(default = "default_read_rate")]
    pub read_rate: u32,
    /// A new tag enters the field every this many milliseconds.
    #[serde(default = "default_arrival_interval_ms")]
    pub arrival_interval_ms: u64,
    /// How long each tag stays in the field.
    #[serde(default = "default_dwell_ms")]
    pub dwell_ms: u64,
    /// Stop introducing tags after this many (0: never stop).
    #[serde(default)]
    pub max_tags: u64,
    /// Seed for the tag population and read pattern.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// GS1 company prefix (7 digits) and item reference (6 digits) of the
    /// SGTIN-96 EPCs the tags carry.
    #[serde(default = "default_company_prefix")]
    pub company_prefix: u64,
    #[serde(default = "default_item_reference")]
    pub item_reference: u64,
    /// Give every tag a TID too (a serialised Impinj-like TID).
    #[serde(default)]
    pub with_tid: bool,
    /// Tags entering together at each arrival (a pallet or a carton): they
    /// share one enter and leave time, so simulated photo-eyes can follow
    /// the load ([`SimConfig::load_at`]).
    #[serde(default = "default_pallet_size")]
    pub pallet_size: u64,
}

fn default_pallet_size() -> u64 {
    1
}

fn default_antennas() -> Vec<u8> {
    vec![1, 2]
}
fn default_read_rate() -> u32 {
    200
}
fn default_arrival_interval_ms() -> u64 {
    700
}
fn default_dwell_ms() -> u64 {
    3_000
}
fn default_seed() -> u64 {
    42
}
fn default_company_prefix() -> u64 {
    614_141
}
fn default_item_reference() -> u64 {
    812_345
}

impl SimConfig {
    /// A config with defaults, for tests and the demo.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            antennas: default_antennas(),
            read_rate: default_read_rate(),
            arrival_interval_ms: default_arrival_interval_ms(),
            dwell_ms: default_dwell_ms(),
            max_tags: 0,
            seed: default_seed(),
            company_prefix: default_company_prefix(),
            item_reference: default_item_reference(),
            with_tid: false,
            pallet_size: 1,
        }
    }

    /// The load (enter and leave ms since the reader started) in the field
    /// at `t_ms`, the latest one if loads overlap. A pure function of the
    /// config: simulated photo-eyes use it to break their beams in step
    /// with the tags the reader reports.
    pub fn load_at(&self, t_ms: u64) -> Option<(u64, u64)> {
        let interval = self.arrival_interval_ms.max(1);
        let k = t_ms / interval;
        let loads = self.max_tags.div_ceil(self.pallet_size.max(1));
        (0..=k)
            .rev()
            .take_while(|&j| j * interval + self.dwell_ms > t_ms)
            .find(|&j| self.max_tags == 0 || j < loads)
            .map(|j| (j * interval, j * interval + self.dwell_ms))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.antennas.is_empty() || self.antennas.contains(&0) {
            return Err("antennas must list at least one port, numbered from 1".into());
        }
        if self.read_rate == 0 || self.read_rate > 1_000_000 {
            return Err("read_rate must be between 1 and 1000000 reads/s".into());
        }
        if self.pallet_size == 0 || self.pallet_size > 100_000 {
            return Err("pallet_size must be between 1 and 100000".into());
        }
        if self.dwell_ms == 0 || self.arrival_interval_ms == 0 {
            return Err("dwell_ms and arrival_interval_ms must be above 0".into());
        }
        if self.company_prefix > 9_999_999 || self.item_reference > 999_999 {
            return Err("company_prefix must fit 7 digits and item_reference 6".into());
        }
        Ok(())
    }
}

/// Encodes an SGTIN-96 with filter 1 and partition 5 (7-digit company prefix).
pub fn sgtin96(company_prefix: u64, item_reference: u64, serial: u64) -> [u8; 12] {
    let mut v: u128 = 0x30;
    v = (v << 3) | 1; // filter: point of sale item
    v = (v << 3) | 5; // partition: 24-bit company prefix, 20-bit item reference
    v = (v << 24) | u128::from(company_prefix & 0xFF_FFFF);
    v = (v << 20) | u128::from(item_reference & 0xF_FFFF);
    v = (v << 38) | u128::from(serial & 0x3F_FFFF_FFFF);
    let bytes = v.to_be_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&bytes[4..]);
    out
}

#[derive(Debug, Clone)]
struct SimTag {
    epc: [u8; 12],
    tid: Option<Vec<u8>>,
    enter_ms: u64,
    leave_ms: u64,
}

/// One read produced by the world, before it is stamped with host time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRead {
    pub epc: [u8; 12],
    pub tid: Option<Vec<u8>>,
    pub antenna: u8,
    pub rssi_dbm: i16,
    pub frequency_khz: u32,
    pub at_ms: u64,
}

/// The longest stretch of reads one step reports (see `step_reads`).
pub const MAX_CATCH_UP_MS: u64 = 100;

/// The most reads one step reports, however high `read_rate` is and however
/// long the step: a module's reply is bounded too. Each step's reads are one
/// batch into the pipeline, and a batch is held whole while its reader
/// waits for room: at 160,000 reads/s a 100 ms catch-up made batches of
/// 16,000 reads (about 2.5 MiB each, two readers waiting and one in the
/// pipeline at saturation). 2,048 allows 204,800 reads/s at the 10 ms tick.
pub const MAX_STEP_READS: u64 = 2_048;

/// The simulated field. Deterministic: the same config and the same sequence
/// of `step` times give the same reads.
#[derive(Debug)]
pub struct SimWorld {
    config: SimConfig,
    rng: StdRng,
    present: Vec<SimTag>,
    next_serial: u64,
    introduced: u64,
    next_arrival_ms: u64,
    last_step_ms: Option<u64>,
    /// Fractional reads carried between steps so the rate is exact.
    read_budget: f64,
}

impl SimWorld {
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        // Serials start at a seed-dependent offset so two simulated readers
        // with different seeds do not report the same EPCs.
        let next_serial = (config.seed % 10_000) * 1_000_000 + 1;
        Self {
            config,
            rng,
            present: Vec::new(),
            next_serial,
            introduced: 0,
            next_arrival_ms: 0,
            last_step_ms: None,
            read_budget: 0.0,
        }
    }

    /// Number of tags introduced so far.
    pub fn introduced(&self) -> u64 {
        self.introduced
    }

    /// Whether every tag has been introduced and has left (only with `max_tags`).
    pub fn finished(&self) -> bool {
        self.config.max_tags != 0
            && self.introduced >= self.config.max_tags
            && self.present.is_empty()
    }

    /// Advances the world to `now_ms` and returns the reads in between.
    pub fn step(&mut self, now_ms: u64) -> Vec<SimRead> {
        let since = self.last_step_ms.unwrap_or(now_ms);
        self.last_step_ms = Some(now_ms);
        while self.next_arrival_ms <= now_ms
            && (self.config.max_tags == 0 || self.introduced < self.config.max_tags)
        {
            for _ in 0..self.config.pallet_size.max(1) {
                if self.config.max_tags != 0 && self.introduced >= self.config.max_tags {
                    break;
                }
                self.introduce(self.next_arrival_ms, now_ms);
            }
            self.next_arrival_ms += self.config.arrival_interval_ms;
        }
        self.step_reads(since, now_ms)
    }

    /// Introduces the next tag, entering at `enter`. A tag that already
    /// left by `now_ms` (it passed while the reader was not polled) is
    /// counted but never held: nothing could read it, and holding every tag
    /// of a long pause made the field briefly hold hundreds of thousands.
    fn introduce(&mut self, enter: u64, now_ms: u64) {
        {
            let serial = self.next_serial;
            self.next_serial += 1;
            self.introduced += 1;
            if enter + self.config.dwell_ms <= now_ms {
                return;
            }
            let tid = self.config.with_tid.then(|| {
                let mut t = vec![0xE2, 0x80, 0x11, 0x70, 0x00, 0x00];
                t.extend_from_slice(&serial.to_be_bytes()[2..]);
                t
            });
            self.present.push(SimTag {
                epc: sgtin96(
                    self.config.company_prefix,
                    self.config.item_reference,
                    serial,
                ),
                tid,
                enter_ms: enter,
                leave_ms: enter + self.config.dwell_ms,
            });
        }
    }

    fn step_reads(&mut self, since: u64, now_ms: u64) -> Vec<SimRead> {
        self.present.retain(|t| t.leave_ms > now_ms);
        if self.present.is_empty() {
            self.read_budget = 0.0;
            return Vec::new();
        }
        // A reader whose host stops taking reads (backpressure) stops
        // reading, as a module does when it is not polled: after a pause
        // it reports one round's worth, not the whole pause's.
        let elapsed = now_ms.saturating_sub(since).min(MAX_CATCH_UP_MS) as f64 / 1000.0;
        self.read_budget += elapsed * f64::from(self.config.read_rate);
        let n = self.read_budget.floor();
        self.read_budget -= n;
        // Beyond the cap the reads are not taken, as a saturated module's.
        let n = n.min(MAX_STEP_READS as f64);
        let mut reads = Vec::with_capacity(n as usize);
        for _ in 0..(n as u64) {
            let i = self.rng.gen_range(0..self.present.len());
            let tag = &self.present[i];
            let progress =
                (now_ms.saturating_sub(tag.enter_ms)) as f64 / self.config.dwell_ms as f64;
            let antennas = &self.config.antennas;
            // Approaching: mostly the first antenna; leaving: mostly the last.
            let near_last = self.rng.gen_bool(progress.clamp(0.05, 0.95));
            let antenna = match (antennas.first(), antennas.last()) {
                (Some(&first), Some(&last)) => {
                    if near_last {
                        last
                    } else {
                        first
                    }
                }
                _ => 1,
            };
            // Triangular RSSI profile: -75 dBm at the edges, -45 at mid-dwell.
            let closeness = 1.0 - (progress - 0.5).abs() * 2.0;
            let jitter = self.rng.gen_range(-2..=2);
            let rssi = (-75.0 + 30.0 * closeness) as i16 + jitter;
            // FCC hopping channels, 902.75 to 927.25 MHz in 500 kHz steps.
            let frequency_khz = 902_750 + 500 * self.rng.gen_range(0..50u32);
            reads.push(SimRead {
                epc: tag.epc,
                tid: tag.tid.clone(),
                antenna,
                rssi_dbm: rssi,
                frequency_khz,
                at_ms: now_ms,
            });
        }
        reads
    }
}

/// Runs a simulated reader in real time until `cancel` fires.
pub async fn run(
    config: &SimConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), SinkClosed> {
    let mut world = SimWorld::new(config.clone());
    let reader: Arc<str> = Arc::from(config.name.as_str());
    // Every simulated reader of the process ticks on one grid, multiples
    // of TICK from the shared clock's origin, so the runtime's timer fires
    // them together: one wake-up per period for all of them instead of one
    // each (three portals at 100 ticks/s were 300 timer wake-ups/s, most of
    // the async side's scheduling cost in the end-to-end bench). It saves
    // the simulator's cost only: real readers wake the gateway when their
    // bytes arrive. The origin is in the past, so the first tick is at once;
    // Skip then puts every later one on the grid (also after a late turn),
    // and the next step still reports the reads of the time that passed (up
    // to [`MAX_CATCH_UP_MS`]), so the read rate does not change.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(clock.origin()), TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let origin = clock.mono_ms();
    health.set_state(ReaderState::Running);
    health.set_detail("model", "simulated two-antenna portal");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                health.set_state(ReaderState::Stopped);
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        health.alive();
        let host = clock.now();
        let reads = world.step(host.mono_ms.saturating_sub(origin));
        if reads.is_empty() {
            continue;
        }
        health
            .frames_ok
            .fetch_add(reads.len() as u64, std::sync::atomic::Ordering::Relaxed);
        health.count_reads(reads.len(), host.utc_ms);
        let batch = reads
            .into_iter()
            .map(|r| to_raw(&reader, r, host))
            .collect();
        tokio::select! {
            _ = cancel.cancelled() => {
                health.set_state(ReaderState::Stopped);
                return Ok(());
            }
            sent = sink.reads(batch) => sent?,
        }
    }
}

/// How often a simulated reader reports its reads.
const TICK: Duration = Duration::from_millis(10);

fn to_raw(reader: &Arc<str>, r: SimRead, host: HostTime) -> RawRead {
    RawRead {
        reader: reader.clone(),
        antenna: r.antenna,
        epc: r.epc.to_vec(),
        tid: r.tid,
        pc: Some(0x3000),
        rssi_dbm: Some(r.rssi_dbm),
        frequency_khz: Some(r.frequency_khz),
        phase_deg: None,
        reader_timestamp_ms: None,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgtin96_encodes_the_tds_example_with_filter_one() {
        // TDS example urn:epc:tag:sgtin-96:3.0614141.812345.6789 is
        // 3074257BF7194E4000001A85; the simulator uses filter 1 instead of 3,
        // which changes only the filter bits of the second byte.
        assert_eq!(
            hex::encode_upper(sgtin96(614_141, 812_345, 6789)),
            "3034257BF7194E4000001A85"
        );
    }

    #[test]
    fn a_pallet_enters_together_and_load_at_follows_it() {
        let mut cfg = SimConfig::named("s");
        cfg.pallet_size = 5;
        cfg.arrival_interval_ms = 4_000;
        cfg.dwell_ms = 2_000;
        cfg.max_tags = 10;
        cfg.read_rate = 2_000;
        let mut w = SimWorld::new(cfg.clone());
        let reads: Vec<SimRead> = (0..=1_000).flat_map(|t| w.step(t * 10)).collect();
        let first: std::collections::BTreeSet<_> = reads
            .iter()
            .filter(|r| r.at_ms < 2_000)
            .map(|r| r.epc)
            .collect();
        let second: std::collections::BTreeSet<_> = reads
            .iter()
            .filter(|r| (4_000..6_000).contains(&r.at_ms))
            .map(|r| r.epc)
            .collect();
        assert_eq!((first.len(), second.len()), (5, 5));
        assert!(reads.iter().all(|r| cfg.load_at(r.at_ms).is_some()));
        assert_eq!(cfg.load_at(1_000), Some((0, 2_000)));
        assert_eq!(cfg.load_at(3_000), None);
        assert_eq!(cfg.load_at(5_999), Some((4_000, 6_000)));
        assert_eq!(cfg.load_at(8_500), None, "max_tags: two pallets only");
    }

    #[test]
    fn the_same_seed_gives_the_same_reads() {
        let run = || {
            let mut w = SimWorld::new(SimConfig::named("s"));
            (0..500).flat_map(|t| w.step(t * 10)).collect::<Vec<_>>()
        };
        let a = run();
        assert!(!a.is_empty());
        assert_eq!(a, run());
    }

    #[test]
    fn the_read_rate_is_honoured_while_tags_are_present() {
        let mut cfg = SimConfig::named("s");
        cfg.read_rate = 1_000;
        cfg.arrival_interval_ms = 100;
        let mut w = SimWorld::new(cfg);
        let reads: usize = (0..=1000).map(|t| w.step(t * 10).len()).sum();
        assert!((9_900..=10_000).contains(&reads), "{reads}");
    }

    #[test]
    fn one_step_reports_at_most_max_step_reads_however_long_the_pause() {
        let mut cfg = SimConfig::named("s");
        cfg.read_rate = 1_000_000;
        cfg.pallet_size = 100;
        cfg.arrival_interval_ms = 10;
        let mut w = SimWorld::new(cfg);
        w.step(0);
        // 100 ms of catch-up at 1,000,000 reads/s would be 100,000 reads.
        let reads = w.step(100);
        assert_eq!(reads.len() as u64, MAX_STEP_READS);
    }

    #[test]
    fn tags_that_passed_during_a_pause_are_counted_but_not_held() {
        let mut cfg = SimConfig::named("s");
        cfg.pallet_size = 100;
        cfg.arrival_interval_ms = 1;
        cfg.dwell_ms = 100;
        let mut w = SimWorld::new(cfg);
        w.step(0);
        // A reader that waited 10 s: a million tags passed meanwhile.
        let reads = w.step(10_000);
        assert_eq!(w.introduced(), 100 * 10_001);
        // Only those still in the field are held (and can be read).
        assert!(w.present.len() <= 100 * 100, "{}", w.present.len());
        assert!(reads.iter().all(|r| r.at_ms == 10_000));
    }

    #[test]
    fn tags_move_from_the_first_antenna_to_the_last_and_then_leave() {
        let mut cfg = SimConfig::named("s");
        cfg.max_tags = 1;
        cfg.read_rate = 2_000;
        let mut w = SimWorld::new(cfg);
        let reads: Vec<SimRead> = (0..=400).flat_map(|t| w.step(t * 10)).collect();
        let early: Vec<_> = reads.iter().filter(|r| r.at_ms < 500).collect();
        let late: Vec<_> = reads.iter().filter(|r| r.at_ms > 2_500).collect();
        assert!(early.iter().filter(|r| r.antenna == 1).count() > early.len() * 3 / 4);
        assert!(late.iter().filter(|r| r.antenna == 2).count() > late.len() * 3 / 4);
        assert!(reads.iter().all(|r| r.at_ms < 3_000));
        assert!(w.finished());
        let peak = reads.iter().map(|r| r.rssi_dbm).max().unwrap();
        let first = reads.first().unwrap().rssi_dbm;
        assert!(peak > first + 15, "RSSI should rise towards mid-dwell");
    }
}
