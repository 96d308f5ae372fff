//! The pipeline task: reader messages in, committed-event drafts out.
//!
//! One task owns the dedup engine. It routes each read to the read points
//! covering its reader and antenna, applies their filters (RSSI floor, EPC
//! patterns), feeds the engine, renders events and hands them to the store
//! writer. Both channels are bounded and block when full: backpressure runs
//! from a stuck store back to the readers (whose own buffers then hold the
//! reads) rather than dropping anything here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracegate_drivers::{Clock, RawRead, ReaderMsg, Tap};

use crate::config::{Config, ReadPoint};
use crate::dedup::{Dedup, PointSettings, TagEvent};
use crate::event::{self, Origin};
use crate::heartbeat::Heartbeat;
use crate::store::{EventDraft, WriteRequest};
use crate::suspect::Suspicion;

/// Everything the pipeline needs besides its channels.
#[derive(Debug)]
pub struct Pipeline {
    origin: Origin,
    read_points: Vec<ReadPoint>,
    /// (reader, antenna) → indices of read points covering it.
    uhf_routes: HashMap<(Arc<str>, u8), Vec<usize>>,
    /// NFC reader → read points.
    nfc_routes: HashMap<Arc<str>, Vec<usize>>,
    filters: Vec<Filter>,
    dedup: Dedup,
    suspicion: Suspicion,
    clock: Clock,
    taps: Box<dyn TapEnricher>,
}

/// Adds verdicts and identities to NFC taps (SUN verification, Digital Link).
pub trait TapEnricher: Send + std::fmt::Debug {
    fn enrich(&mut self, tap: &Tap, body: &mut serde_json::Map<String, serde_json::Value>);
}

/// Leaves taps as the driver reported them.
#[derive(Debug, Default)]
pub struct NoEnrichment;

impl TapEnricher for NoEnrichment {
    fn enrich(&mut self, _tap: &Tap, _body: &mut serde_json::Map<String, serde_json::Value>) {}
}

#[derive(Debug, Default)]
struct Filter {
    rssi_floor_dbm: Option<i16>,
    patterns: Vec<tracegate_gs1::EpcPattern>,
    /// Pattern verdict per EPC: a tag is read many times a second, and
    /// decoding it every time would cost more than deduplicating it.
    verdicts: HashMap<Box<[u8]>, bool>,
}

/// Verdicts remembered per read point before the cache starts over.
const VERDICT_CACHE: usize = 65_536;

impl Filter {
    fn accepts(&mut self, read: &RawRead) -> bool {
        if let (Some(floor), Some(rssi)) = (self.rssi_floor_dbm, read.rssi_dbm) {
            if rssi < floor {
                return false;
            }
        }
        if self.patterns.is_empty() {
            return true;
        }
        if let Some(&verdict) = self.verdicts.get(read.epc.as_slice()) {
            return verdict;
        }
        let decoded = tracegate_gs1::decode_epc(&read.epc);
        let verdict = self.patterns.iter().any(|p| p.matches(&decoded));
        if self.verdicts.len() >= VERDICT_CACHE {
            self.verdicts.clear();
        }
        self.verdicts
            .insert(read.epc.clone().into_boxed_slice(), verdict);
        verdict
    }
}

impl Pipeline {
    pub fn new(config: &Config, clock: Clock, taps: Box<dyn TapEnricher>) -> Self {
        let mut uhf_routes: HashMap<(Arc<str>, u8), Vec<usize>> = HashMap::new();
        let mut nfc_routes: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, rp) in config.read_points.iter().enumerate() {
            let reader: Arc<str> = Arc::from(rp.reader.as_str());
            if rp.antennas.is_empty() {
                nfc_routes.entry(reader).or_default().push(i);
            } else {
                for &a in &rp.antennas {
                    uhf_routes.entry((reader.clone(), a)).or_default().push(i);
                }
            }
        }
        let filters = config
            .read_points
            .iter()
            .map(|rp| Filter {
                rssi_floor_dbm: rp.rssi_floor_dbm,
                patterns: rp.epc_patterns.clone(),
                verdicts: HashMap::new(),
            })
            .collect();
        let points = config
            .read_points
            .iter()
            .map(|rp| PointSettings {
                direction: rp.direction,
            })
            .collect();
        Self {
            origin: Origin {
                gateway: config.gateway_id.clone(),
                site: config.site.clone(),
            },
            read_points: config.read_points.clone(),
            uhf_routes,
            nfc_routes,
            filters,
            dedup: Dedup::new(config.dedup, points),
            suspicion: Suspicion::new(
                config
                    .read_points
                    .iter()
                    .map(|rp| rp.expect_patterns.clone())
                    .collect(),
                config.over_scan,
            ),
            clock,
            taps,
        }
    }

    fn drafts(&mut self, events: &[TagEvent], into: &mut Vec<EventDraft>) {
        for e in events {
            if let Some(rp) = self.read_points.get(e.read_point) {
                metrics::counter!("tracegate_events_total", "type" => e.kind.as_str()).increment(1);
                let decoded = tracegate_gs1::decode_epc(&e.tag.epc);
                let arrival = (e.kind == crate::dedup::Kind::Arrived).then_some(e.at.utc_ms);
                let flags = self.suspicion.flags(
                    e.read_point,
                    &e.tag.epc,
                    &decoded,
                    e.tag.tid.as_deref(),
                    arrival,
                );
                for f in &flags {
                    metrics::counter!("tracegate_flags_total", "flag" => *f).increment(1);
                }
                into.push(event::tag_event_draft(
                    &self.origin,
                    rp,
                    e,
                    &decoded,
                    &flags,
                ));
            }
        }
    }

    /// Processes reads; returns the drafts they produced.
    pub fn on_reads(&mut self, reads: &[RawRead]) -> Vec<EventDraft> {
        let mut events = Vec::new();
        // Metrics are counted per batch: a labelled counter lookup per read
        // would cost more than the dedup itself.
        let mut per_antenna: Vec<(&str, u8, u64)> = Vec::new();
        let (mut unrouted, mut deduped, mut filtered) = (0u64, 0u64, 0u64);
        for read in reads {
            match per_antenna
                .iter_mut()
                .find(|(r, a, _)| *a == read.antenna && *r == &*read.reader)
            {
                Some(slot) => slot.2 += 1,
                None => per_antenna.push((&read.reader, read.antenna, 1)),
            }
            let Some(points) = self.uhf_routes.get(&(read.reader.clone(), read.antenna)) else {
                unrouted += 1;
                continue;
            };
            for &rp in points {
                if self.filters.get_mut(rp).is_some_and(|f| f.accepts(read)) {
                    deduped += 1;
                    self.dedup.observe(rp, read, &mut events);
                } else {
                    filtered += 1;
                }
            }
        }
        for (reader, antenna, n) in per_antenna {
            metrics::counter!("tracegate_reads_total", "reader" => reader.to_owned(), "antenna" => antenna.to_string())
                .increment(n);
        }
        metrics::counter!("tracegate_reads_unrouted_total").increment(unrouted);
        metrics::counter!("tracegate_dedup_reads_total").increment(deduped);
        metrics::counter!("tracegate_reads_filtered_total").increment(filtered);
        let mut drafts = Vec::with_capacity(events.len());
        self.drafts(&events, &mut drafts);
        drafts
    }

    /// Advances time; returns departures and re-reports.
    pub fn on_tick(&mut self) -> Vec<EventDraft> {
        let mut events = Vec::new();
        self.dedup.tick(self.clock.now(), &mut events);
        let stats = self.dedup.stats();
        metrics::gauge!("tracegate_dedup_tracked_tags").set(stats.tracked as f64);
        metrics::gauge!("tracegate_dedup_evictions").set(stats.evictions as f64);
        let mut drafts = Vec::with_capacity(events.len());
        self.drafts(&events, &mut drafts);
        drafts
    }

    pub fn on_tap(&mut self, tap: &Tap) -> Vec<EventDraft> {
        let points: Vec<usize> = self
            .nfc_routes
            .get(&tap.reader)
            .cloned()
            .unwrap_or_default();
        let names: Vec<String> = if points.is_empty() {
            // An NFC reader with no read point still records its taps, under
            // the reader's own name, rather than losing them.
            vec![tap.reader.to_string()]
        } else {
            points
                .iter()
                .filter_map(|&i| self.read_points.get(i).map(|rp| rp.name.clone()))
                .collect()
        };
        let mut drafts = Vec::new();
        for name in names {
            let mut body = event::tap_body(&self.origin, &name, tap);
            self.taps.enrich(tap, &mut body);
            metrics::counter!("tracegate_events_total", "type" => "tap").increment(1);
            drafts.push(EventDraft {
                event_type: "tap".into(),
                event_utc_ms: tap.host.utc_ms,
                body,
            });
        }
        drafts
    }
}

/// Runs until every reader's sink is dropped (readers stopped), then returns,
/// dropping the writer's channel so it commits the rest and stops.
pub async fn run(
    mut pipeline: Pipeline,
    mut rx: mpsc::Receiver<ReaderMsg>,
    writer: mpsc::Sender<WriteRequest>,
    heartbeat: Arc<Heartbeat>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        heartbeat.beat();
        let request = tokio::select! {
            msg = rx.recv() => match msg {
                Some(ReaderMsg::Reads { reads, ack }) => {
                    let drafts = pipeline.on_reads(&reads);
                    (!drafts.is_empty() || ack.is_some()).then_some(WriteRequest { drafts, ack })
                }
                Some(ReaderMsg::Tap(tap)) => Some(WriteRequest { drafts: pipeline.on_tap(&tap), ack: None }),
                None => break,
            },
            _ = tick.tick() => {
                let drafts = pipeline.on_tick();
                (!drafts.is_empty()).then_some(WriteRequest { drafts, ack: None })
            }
        };
        if let Some(req) = request {
            if writer.send(req).await.is_err() {
                tracing::error!(
                    event = "pipeline.writer_gone",
                    "the store writer stopped; events can no longer be committed"
                );
                return;
            }
        }
    }
    tracing::info!(
        event = "pipeline.stopped",
        "all readers stopped; pipeline drained"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_drivers::HostTime;

    const CONFIG: &str = r#"
[gateway]
id = "g"
site = "s"

[[readers]]
name = "r"
kind = "sim"
antennas = [1, 2]

[[read_points]]
name = "door"
reader = "r"
antennas = [1]
rssi_floor_dbm = -70
epc_patterns = ["urn:epc:pat:sgtin-96:*.0614141.812345.*"]
"#;

    fn read(epc: &str, antenna: u8, rssi: i16) -> RawRead {
        RawRead {
            reader: Arc::from("r"),
            antenna,
            epc: hex::decode(epc).unwrap(),
            tid: None,
            pc: None,
            rssi_dbm: Some(rssi),
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: HostTime {
                mono_ms: 0,
                utc_ms: 1_700_000_000_000,
                clock_synced: true,
            },
        }
    }

    fn pipeline() -> Pipeline {
        let config = crate::config::parse(CONFIG, "t.toml").unwrap();
        Pipeline::new(&config, Clock::new(), Box::new(NoEnrichment))
    }

    #[test]
    fn only_matching_epcs_above_the_rssi_floor_on_covered_antennas_arrive() {
        let mut p = pipeline();
        let matching = "3074257BF7194E4000001A85"; // sgtin 0614141.812345.6789
        let other_item = "3074257BF7194E4000001A85".replace("BF7194E", "BF7000E");
        // Twice each: the second time the pattern verdict comes from the cache.
        for _ in 0..2 {
            assert!(p.on_reads(&[read(&other_item, 1, -50)]).is_empty());
            assert!(
                p.on_reads(&[read(matching, 1, -80)]).is_empty(),
                "below the floor"
            );
            assert!(
                p.on_reads(&[read(matching, 2, -50)]).is_empty(),
                "antenna 2 is not covered"
            );
        }
        let drafts = p.on_reads(&[read(matching, 1, -50)]);
        assert_eq!(drafts.len(), 1);
        assert_eq!(drafts[0].event_type, "arrived");
        assert_eq!(
            drafts[0].body["identity"]["pure_identity"],
            "urn:epc:id:sgtin:0614141.812345.6789"
        );
    }
}
