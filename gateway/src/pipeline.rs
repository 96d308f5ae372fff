//! The pipeline task: reader messages in, committed-event drafts out.
//!
//! One task owns the dedup engine. It routes each read to the read points
//! covering its reader and antenna, applies their filters (RSSI floor, EPC
//! patterns), feeds the engine, renders events and hands them to the store
//! writer. Both channels are bounded and block when full: backpressure runs
//! from a stuck store back to the readers (whose own buffers then hold the
//! reads) rather than dropping anything here. The reader channel is bounded
//! in reads ([`tracegate_drivers::sink`]), the way to the store in drafts
//! ([`DRAFTS_IN_STORE`]), so memory stays bounded whatever the batch sizes.
//!
//! Time: the dedup engine decides on the reads' own time. The pipeline's
//! clock only moves it while no read is in flight (see
//! [`Dedup::clock_tick`]), so a backlog delays events but never changes them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracegate_drivers::{Clock, CommitAck, RawRead, ReadReceiver, ReaderMsg, Tap};

use crate::config::{Config, EpcisAction, ReadPoint};
use crate::dedup::{Dedup, Direction, Kind, PointSettings, TagEvent};
use crate::event::{
    self, DepartureReason, EpcisContext, Event, EventBody, Origin, ReadContext, SunReplayCheck,
    TapEvent, UhfEvent, UhfIdentity, UtcMs,
};
use crate::heartbeat::Heartbeat;
use crate::store::{EventDraft, WriteRequest};
use crate::suspect::Suspicion;

/// Routes and caches are looked up per read; std's SipHash cost more than
/// the lookups (see `dedup`).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Read windows and beams (`crate::door`).
    pub(crate) door: crate::door::Doors,
    door_inputs: Option<mpsc::Receiver<crate::door::DoorInput>>,
    /// The stack lights' task: told of passes and flagged events.
    notices: Option<crate::Observer<crate::gpio::SignalNotice>>,
    /// Master-data verdicts (`None`: no `[masterdata]`).
    masterdata: Option<crate::masterdata::verdict::Verdicts>,
    decodings: Decodings,
    /// `tracegate_reads_total` per (reader, antenna), registered on first
    /// use: looking a labelled counter up per batch cost two `String`s and a
    /// registry search each time. Bounded by the configured readers and
    /// their antennas.
    read_counters: HashMap<(Arc<str>, u8), metrics::Counter>,
}

/// GS1 decodings of arrived tags, kept from a tag's arrival for its
/// `present` reports and its departure: a tag is decoded once per visit,
/// not once per event (decoding builds a dozen URI strings).
#[derive(Debug, Default)]
struct Decodings(HashMap<Box<[u8]>, tracegate_gs1::Decoded>);

/// Decodings kept before the cache starts over. Each costs about 1 KiB
/// (a dozen strings and the table's slack), and every arrived tag not yet
/// departed has one: at saturation that is the sustainable rate times a
/// tag's stay, and 65,536 of them were a third of the 64 MiB the daemon
/// may use (BENCHMARKS.md, "Memory at saturation"). Beyond this many tags
/// present at once a departure decodes its tag again (CPU, not memory).
const DECODING_CACHE: usize = 8_192;

impl Decodings {
    fn decode(&mut self, kind: Kind, epc: &[u8]) -> tracegate_gs1::Decoded {
        match kind {
            Kind::Arrived => {
                let d = tracegate_gs1::decode_epc(epc);
                if self.0.len() >= DECODING_CACHE {
                    self.0.clear();
                }
                self.0.insert(epc.into(), d.clone());
                d
            }
            Kind::Present => self
                .0
                .get(epc)
                .cloned()
                .unwrap_or_else(|| tracegate_gs1::decode_epc(epc)),
            Kind::Departed => self
                .0
                .remove(epc)
                .unwrap_or_else(|| tracegate_gs1::decode_epc(epc)),
        }
    }
}

/// Adds verdicts and identities to NFC taps (SUN verification, Digital Link).
/// Sans-IO: a verified SUN counter is returned for the store to check
/// against replay in the commit of the tap.
pub trait TapEnricher: Send + std::fmt::Debug {
    fn enrich(&mut self, tap: &Tap, event: &mut TapEvent) -> Option<SunReplayCheck>;
}

/// Leaves taps as the driver reported them.
#[derive(Debug, Default)]
pub struct NoEnrichment;

impl TapEnricher for NoEnrichment {
    fn enrich(&mut self, _tap: &Tap, _event: &mut TapEvent) -> Option<SunReplayCheck> {
        None
    }
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
        let mut uhf_routes: HashMap<(Arc<str>, u8), Vec<usize>> = HashMap::default();
        let mut nfc_routes: HashMap<Arc<str>, Vec<usize>> = HashMap::default();
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
                verdicts: HashMap::default(),
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
            door: crate::door::Doors::new(&config.read_points, config.dedup.key, clock.mono_ms()),
            door_inputs: None,
            notices: None,
            clock,
            taps,
            decodings: Decodings::default(),
            masterdata: None,
            read_counters: HashMap::default(),
        }
    }

    /// Judges every event against the master data in force from now on.
    pub fn set_masterdata(&mut self, verdicts: crate::masterdata::verdict::Verdicts) {
        self.masterdata = Some(verdicts);
    }

    /// Connects the GPIO task: debounced input edges in, notices out.
    pub fn attach_gpio(
        &mut self,
        inputs: mpsc::Receiver<crate::door::DoorInput>,
        notices: crate::Observer<crate::gpio::SignalNotice>,
    ) {
        self.door_inputs = Some(inputs);
        self.notices = Some(notices);
    }

    fn notify(&self, read_point: usize, pass: Option<&event::PassEvent>, flags: &[event::Flag]) {
        let (Some(n), Some(rp)) = (&self.notices, self.read_points.get(read_point)) else {
            return;
        };
        // The lamp task never holds up the pipeline: a full channel drops
        // the notice and counts it.
        let _ = n.send(crate::gpio::SignalNotice {
            read_point,
            read_point_name: rp.name.clone(),
            pass: pass.is_some(),
            tag_count: pass.map_or(0, |p| p.tag_count),
            direction: pass.and_then(|p| p.direction),
            flags: flags.to_vec(),
        });
    }

    /// `pass` events for the windows closed since the last call.
    fn passes(&mut self, into: &mut Vec<EventDraft>) {
        for closed in self.door.take_closed() {
            let Some(rp) = self.read_points.get(closed.read_point) else {
                continue;
            };
            let event = self.door.pass_event(
                &self.origin,
                rp,
                &closed,
                &mut self.suspicion,
                epcis_context(rp),
            );
            metrics::counter!("tracegate_events_total", "type" => "pass").increment(1);
            // Master data first: its verdicts drive the stack light too.
            let mut event = event;
            if let Some(md) = &self.masterdata {
                md.judge(&mut event);
            }
            if let EventBody::Pass(p) = &event.body {
                self.notify(closed.read_point, Some(p), &p.flags);
            }
            into.push(EventDraft::new(event));
        }
    }

    /// A debounced input edge from the GPIO task.
    pub fn on_door_input(&mut self, input: &crate::door::DoorInput) -> Vec<EventDraft> {
        self.door.on_input(input);
        let mut drafts = Vec::new();
        self.passes(&mut drafts);
        drafts
    }

    /// Closes every open read window (the readers have stopped).
    pub fn on_shutdown(&mut self) -> Vec<EventDraft> {
        self.door.shutdown(self.clock.now());
        let mut drafts = Vec::new();
        self.passes(&mut drafts);
        drafts
    }

    fn drafts(&mut self, events: &[TagEvent], into: &mut Vec<EventDraft>) {
        // Counted per call: a labelled counter lookup per event costs more
        // than the increment.
        let mut per_kind = [0u64; 3];
        for e in events {
            if !self.door.tag_events(e.read_point) {
                continue;
            }
            if let Some(rp) = self.read_points.get(e.read_point) {
                per_kind[e.kind as usize] += 1;
                let decoded = self.decodings.decode(e.kind, &e.tag.epc);
                let arrival = (e.kind == crate::dedup::Kind::Arrived).then_some(e.at.utc_ms);
                let flags = self.suspicion.flags(
                    e.read_point,
                    &e.tag.epc,
                    &decoded,
                    e.tag.tid.as_deref(),
                    arrival,
                );
                for f in &flags {
                    metrics::counter!("tracegate_flags_total", "flag" => f.as_str()).increment(1);
                }
                let mut event = uhf_event(
                    &self.origin,
                    rp,
                    e,
                    UhfIdentity::from_decoded(&e.tag.epc, decoded, e.tag.tid.as_deref()),
                    flags,
                );
                if let Some(md) = &self.masterdata {
                    md.judge(&mut event);
                }
                // After the master-data verdicts: their flags light red too.
                if !event.flags().is_empty() {
                    self.notify(e.read_point, None, event.flags());
                }
                into.push(EventDraft::new(event));
            }
        }
        for kind in [Kind::Arrived, Kind::Departed, Kind::Present] {
            let n = per_kind[kind as usize];
            if n > 0 {
                metrics::counter!("tracegate_events_total", "type" => kind.as_str()).increment(n);
            }
        }
    }

    /// Processes reads; returns the drafts they produced.
    pub fn on_reads(&mut self, reads: &[RawRead]) -> Vec<EventDraft> {
        let mut events = Vec::new();
        // Metrics are counted per batch: a labelled counter lookup per read
        // would cost more than the dedup itself.
        let mut per_antenna: Vec<(&Arc<str>, u8, u64)> = Vec::new();
        let (mut unrouted, mut deduped, mut filtered) = (0u64, 0u64, 0u64);
        for read in reads {
            match per_antenna
                .iter_mut()
                .find(|(r, a, _)| *a == read.antenna && **r == read.reader)
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
                    self.door.on_read(rp, read);
                } else {
                    filtered += 1;
                }
            }
        }
        for (reader, antenna, n) in per_antenna {
            self.read_counters
                .entry((reader.clone(), antenna))
                .or_insert_with(|| {
                    metrics::counter!("tracegate_reads_total", "reader" => reader.to_string(), "antenna" => antenna.to_string())
                })
                .increment(n);
        }
        metrics::counter!("tracegate_reads_unrouted_total").increment(unrouted);
        metrics::counter!("tracegate_dedup_reads_total").increment(deduped);
        metrics::counter!("tracegate_reads_filtered_total").increment(filtered);
        let mut drafts = Vec::with_capacity(events.len());
        self.drafts(&events, &mut drafts);
        self.passes(&mut drafts);
        drafts
    }

    /// Advances time; returns departures and re-reports. While reads are in
    /// flight towards the pipeline (`oldest_in_flight`: the oldest read time
    /// among them) the clock moves dedup time no further than them.
    pub fn on_tick(&mut self, oldest_in_flight: Option<u64>) -> Vec<EventDraft> {
        let mut events = Vec::new();
        let now = self.clock.now();
        self.dedup.hold_back(oldest_in_flight);
        self.dedup.clock_tick(now, &mut events);
        self.door.poll_held_back(now, oldest_in_flight);
        let stats = self.dedup.stats();
        metrics::gauge!("tracegate_dedup_tracked_tags").set(stats.tracked as f64);
        metrics::gauge!("tracegate_dedup_evictions").set(stats.evictions as f64);
        metrics::gauge!("tracegate_dedup_late_reads").set(stats.late_reads as f64);
        let mut drafts = Vec::with_capacity(events.len());
        self.drafts(&events, &mut drafts);
        self.passes(&mut drafts);
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
        // Verified once per tap: one tap seen by two read points is one
        // SUN observation, and the store gives both events one verdict.
        let mut tap_event = TapEvent::new(
            ReadContext {
                site: self.origin.site.clone(),
                read_point: String::new(),
                reader: tap.reader.to_string(),
                clock_synced: tap.host.clock_synced,
            },
            tap,
        );
        let replay = self.taps.enrich(tap, &mut tap_event);
        if !tap_event.flags.is_empty() {
            for &i in &points {
                self.notify(i, None, &tap_event.flags);
            }
        }
        let mut drafts = Vec::with_capacity(names.len());
        for name in names {
            let mut body = tap_event.clone();
            body.at.read_point = name;
            metrics::counter!("tracegate_events_total", "type" => "tap").increment(1);
            let mut event = Event::new(
                self.origin.gateway.clone(),
                UtcMs(tap.host.utc_ms),
                EventBody::Tap(body),
            );
            if let Some(md) = &self.masterdata {
                md.judge(&mut event);
            }
            drafts.push(EventDraft {
                event,
                replay: replay.clone(),
            });
        }
        drafts
    }

    /// When [`run`] should next call [`Pipeline::on_tick`]: once the next
    /// departure deadline (plus the clock grace) has passed, never later than
    /// [`MAX_TICK_MS`] (periodic `present` reports and gauges), rounded up to
    /// the next point of a [`TICK_GRID_MS`] grid counted from the clock's origin;
    /// read windows close on time, off the grid (the stack light waits for
    /// the close).
    ///
    /// Why a grid: departures fall due at every tag's own last read plus the
    /// timeout, so a fixed slack after each deadline woke the pipeline up to
    /// once per slack, between the readers' batches. On the grid, departures
    /// due close together go out in one write request, and wake-ups coincide
    /// with every other timer on the same grid (the simulated readers tick
    /// on it too). A departure waits at most one grid step, 5 ms on average,
    /// as with the former fixed 5 ms slack.
    pub fn next_tick_at(&self) -> tokio::time::Instant {
        let now = self.clock.mono_ms();
        let due = self
            .dedup
            .next_deadline_ms(now)
            // A clock tick moves dedup time to the clock less the grace.
            .map_or(MAX_TICK_MS, |ms| {
                ms.saturating_add(crate::dedup::CLOCK_GRACE_MS)
            })
            .min(MAX_TICK_MS);
        let at = on_grid(now.saturating_add(due));
        let at = match self.door.deadline_ms() {
            Some(t) => at.min(t.max(now)),
            None => at,
        };
        tokio::time::Instant::from_std(self.clock.origin()) + Duration::from_millis(at)
    }
}

/// The first point of the tick grid at or after `ms` (ms since the clock's
/// origin).
fn on_grid(ms: u64) -> u64 {
    ms.div_ceil(TICK_GRID_MS).saturating_mul(TICK_GRID_MS)
}

/// The longest the pipeline sleeps without a read: `present` reports and the
/// dedup gauges need no finer resolution.
const MAX_TICK_MS: u64 = 100;
/// Departures are decided on this grid from the clock's origin (see
/// [`Pipeline::next_tick_at`]). An event's `time` is when its timeout ran
/// out, so the wait for the grid is part of its time-to-registry latency.
const TICK_GRID_MS: u64 = 10;

/// The event for a dedup decision at a read point.
fn uhf_event(
    origin: &Origin,
    point: &ReadPoint,
    e: &TagEvent,
    identity: UhfIdentity,
    flags: Vec<event::Flag>,
) -> Event {
    let t = &e.tag;
    let body = UhfEvent {
        at: ReadContext {
            site: origin.site.clone(),
            read_point: point.name.clone(),
            reader: t.reader.to_string(),
            clock_synced: t.clock_synced && e.at.clock_synced,
        },
        identity,
        first_seen: UtcMs(t.first_seen.utc_ms),
        last_seen: UtcMs(t.last_seen.utc_ms),
        read_count: t.read_count,
        peak_rssi_dbm: t.peak_rssi_dbm,
        antennas: t.antennas.clone(),
        direction: e.direction.map(|d| match d {
            Direction::In => event::Direction::In,
            Direction::Out => event::Direction::Out,
        }),
        // `evicted` is the only reason the dedup engine gives.
        reason: e.reason.map(|_| DepartureReason::Evicted),
        flags,
        masterdata: None,
        epcis: Some(epcis_context(point)),
    };
    let body = match e.kind {
        Kind::Arrived => EventBody::Arrived(body),
        Kind::Departed => EventBody::Departed(body),
        Kind::Present => EventBody::Present(body),
    };
    Event::new(origin.gateway.clone(), UtcMs(e.at.utc_ms), body)
}

/// The read point's EPCIS settings, as every UHF event and pass carries them.
fn epcis_context(point: &ReadPoint) -> EpcisContext {
    EpcisContext {
        biz_step: point.biz_step.clone(),
        disposition: point.disposition.clone(),
        read_point_id: point.read_point_id.clone(),
        biz_location: point.biz_location.clone(),
        action: match point.action {
            EpcisAction::Add => event::EpcisAction::Add,
            EpcisAction::Observe => event::EpcisAction::Observe,
            EpcisAction::Delete => event::EpcisAction::Delete,
        },
    }
}

/// Drafts handed to the store writer and not yet committed, at most: the
/// pipeline waits (backpressure) before it hands over more. Two full groups
/// of the writer's default `commit_max_events`: one committing, one filling.
pub const DRAFTS_IN_STORE: usize = 2_048;

/// The most drafts in one request to the writer. One read batch (or one
/// tick after a stall) can make thousands of events; handed over whole, a
/// single request passed [`DRAFTS_IN_STORE`] and became a commit group of
/// thousands of events and their JSON (about 20 MiB at saturation,
/// BENCHMARKS.md "Memory at saturation"). Split into requests of this size,
/// each waits for room like any other, so the bound holds for every request.
pub const DRAFTS_PER_REQUEST: usize = DRAFTS_IN_STORE / 8;

/// Requests handed to the writer and not yet committed, oldest first: the
/// bound of [`DRAFTS_IN_STORE`]. Each request carries the pipeline's own
/// commit ack; a reader's ack (Mercury tag-buffer mode) fires when it does.
#[derive(Debug)]
struct InStore {
    drafts: usize,
    pending: VecDeque<Pending>,
    /// Every request released so far of the batch being released was
    /// committed (a batch split into several requests acks its reader only
    /// when all of them were).
    batch_ok: bool,
}

impl Default for InStore {
    fn default() -> Self {
        Self {
            drafts: 0,
            pending: VecDeque::new(),
            batch_ok: true,
        }
    }
}

#[derive(Debug)]
struct Pending {
    committed: oneshot::Receiver<()>,
    drafts: usize,
    /// On the last request of a batch only.
    reader_ack: Option<CommitAck>,
    /// The first request of its batch.
    first: bool,
}

impl InStore {
    /// Waits for the oldest request's commit (or refusal) and releases it.
    async fn settle_oldest(&mut self) {
        if let Some(mut p) = self.pending.pop_front() {
            let result = (&mut p.committed).await;
            self.release(p, result.is_ok());
        }
    }

    /// Releases every request already settled, without waiting.
    fn settle_ready(&mut self) {
        while let Some(p) = self.pending.front_mut() {
            let ok = match p.committed.try_recv() {
                Ok(()) => true,
                Err(oneshot::error::TryRecvError::Closed) => false,
                Err(oneshot::error::TryRecvError::Empty) => break,
            };
            if let Some(p) = self.pending.pop_front() {
                self.release(p, ok);
            }
        }
    }

    fn release(&mut self, p: Pending, committed: bool) {
        self.drafts = self.drafts.saturating_sub(p.drafts);
        if p.first {
            self.batch_ok = true;
        }
        self.batch_ok &= committed;
        // An unfired reader ack (refused, or the writer gone) means "not
        // committed", exactly as if the writer had dropped it itself.
        if let (true, Some(ack)) = (self.batch_ok, p.reader_ack) {
            ack.fire();
        }
    }

    /// Hands `req` to the writer in requests of at most
    /// [`DRAFTS_PER_REQUEST`] drafts, in order, each first waiting while the
    /// drafts not yet committed would exceed [`DRAFTS_IN_STORE`]. The
    /// reader's ack goes with the last one and fires only if all of them
    /// were committed. `false`: the writer is gone.
    async fn submit(&mut self, writer: &mpsc::Sender<WriteRequest>, req: WriteRequest) -> bool {
        if req.drafts.len() <= DRAFTS_PER_REQUEST {
            return self.submit_one(writer, req, true).await;
        }
        let WriteRequest { drafts, mut ack } = req;
        let mut drafts = drafts.into_iter();
        let mut first = true;
        while !drafts.as_slice().is_empty() {
            let part: Vec<EventDraft> = drafts.by_ref().take(DRAFTS_PER_REQUEST).collect();
            let ack = if drafts.as_slice().is_empty() {
                ack.take()
            } else {
                None
            };
            let req = WriteRequest { drafts: part, ack };
            if !self.submit_one(writer, req, first).await {
                return false;
            }
            first = false;
        }
        true
    }

    async fn submit_one(
        &mut self,
        writer: &mpsc::Sender<WriteRequest>,
        mut req: WriteRequest,
        first: bool,
    ) -> bool {
        let n = req.drafts.len();
        if n == 0 {
            return writer.send(req).await.is_ok();
        }
        self.settle_ready();
        while self.drafts + n > DRAFTS_IN_STORE && !self.pending.is_empty() {
            self.settle_oldest().await;
        }
        let (ours, committed) = CommitAck::pair();
        let reader_ack = req.ack.replace(ours);
        if writer.send(req).await.is_err() {
            return false;
        }
        self.drafts += n;
        self.pending.push_back(Pending {
            committed,
            drafts: n,
            reader_ack,
            first,
        });
        true
    }
}

/// How long readers must have gone without waiting before the pipeline
/// says the backpressure is over.
const BACKPRESSURE_CLEARS: Duration = Duration::from_secs(5);

/// Runs until every reader's sink is dropped (readers stopped), then returns,
/// dropping the writer's channel so it commits the rest and stops.
pub async fn run(
    mut pipeline: Pipeline,
    mut rx: ReadReceiver,
    writer: mpsc::Sender<WriteRequest>,
    heartbeat: Arc<Heartbeat>,
    read_tap: Option<crate::read_tap::ReadTap>,
) {
    // Ticks follow the dedup engine's next departure deadline rather than a
    // fixed period: with a fixed 100 ms tick a departure waited up to 100 ms
    // before it even reached the store.
    let mut next_tick = pipeline.next_tick_at();
    // Door inputs (GPIO edges), when a GPIO task runs; otherwise a channel
    // that never yields.
    let (_never_tx, never_rx) = mpsc::channel(1);
    let mut door_rx = pipeline.door_inputs.take().unwrap_or(never_rx);
    let mut in_store = InStore::default();
    let (mut reads_taken, mut drafts_made) = (0u64, 0u64);
    // Readers waiting for room: said once when it starts, once when it ends.
    let mut waits_seen = rx.waits();
    let mut last_wait: Option<tokio::time::Instant> = None;
    loop {
        heartbeat.beat();
        let request = tokio::select! {
            msg = rx.recv() => match msg {
                Some(ReaderMsg::Reads { reads, ack }) => {
                    reads_taken += reads.len() as u64;
                    // Reads still queued behind this batch hold dedup time back.
                    pipeline.dedup.hold_back(rx.oldest_in_flight());
                    let drafts = pipeline.on_reads(&reads);
                    // The technician's page: moves the batch (no copy) and only while watched.
                    if let Some(tap) = &read_tap { tap.offer(reads); }
                    (!drafts.is_empty() || ack.is_some()).then_some(WriteRequest { drafts, ack })
                }
                Some(ReaderMsg::Tap(tap)) => Some(WriteRequest { drafts: pipeline.on_tap(&tap), ack: None }),
                None => break,
            },
            Some(input) = door_rx.recv() => {
                let drafts = pipeline.on_door_input(&input);
                (!drafts.is_empty()).then_some(WriteRequest { drafts, ack: None })
            }
            // Commits settle here too, so a reader's ack fires promptly.
            result = async { match in_store.pending.front_mut() {
                Some(p) => (&mut p.committed).await.is_ok(),
                None => std::future::pending().await,
            } } => {
                if let Some(p) = in_store.pending.pop_front() {
                    in_store.release(p, result);
                }
                None
            }
            _ = tokio::time::sleep_until(next_tick) => {
                let drafts = pipeline.on_tick(rx.oldest_in_flight());
                next_tick = pipeline.next_tick_at();
                let now = tokio::time::Instant::now();
                let waits = rx.waits();
                if waits > waits_seen {
                    if last_wait.is_none() {
                        tracing::warn!(
                            event = "pipeline.backpressure",
                            queued_reads = rx.queued_reads(),
                            drafts_in_store = in_store.drafts,
                            "readers are waiting for room: the pipeline or the store cannot keep up; reads stay at the readers, none is dropped, events are delayed"
                        );
                    }
                    last_wait = Some(now);
                    waits_seen = waits;
                } else if last_wait.is_some_and(|t| now.duration_since(t) >= BACKPRESSURE_CLEARS) {
                    last_wait = None;
                    tracing::info!(event = "pipeline.backpressure_cleared", "readers no longer wait for room");
                }
                metrics::gauge!("tracegate_read_queue_reads").set(rx.queued_reads() as f64);
                metrics::counter!("tracegate_reader_waits_total").absolute(waits);
                metrics::gauge!("tracegate_pipeline_drafts_in_store").set(in_store.drafts as f64);
                (!drafts.is_empty()).then_some(WriteRequest { drafts, ack: None })
            }
        };
        // A read may have started a tag whose deadline is sooner than the
        // planned wake-up (only when nothing was tracked before).
        next_tick = next_tick.min(pipeline.next_tick_at());
        if let Some(req) = request {
            drafts_made += req.drafts.len() as u64;
            if !in_store.submit(&writer, req).await {
                tracing::error!(
                    event = "pipeline.writer_gone",
                    "the store writer stopped; events can no longer be committed"
                );
                return;
            }
        }
    }
    // Every reader has stopped and every read it handed over has been
    // processed: nothing is in flight, so the clock decides the departures
    // that fell due meanwhile; then open read windows close.
    let mut drafts = pipeline.on_tick(None);
    drafts.extend(pipeline.on_shutdown());
    drafts_made += drafts.len() as u64;
    if !drafts.is_empty()
        && !in_store
            .submit(&writer, WriteRequest { drafts, ack: None })
            .await
    {
        tracing::error!(
            event = "pipeline.writer_gone",
            "the store writer stopped; the last events could not be committed"
        );
    }
    tracing::info!(
        event = "pipeline.stopped",
        reads = reads_taken,
        events = drafts_made,
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

    /// `n` copies of one arrival draft.
    fn drafts(n: usize) -> Vec<EventDraft> {
        let mut p = pipeline();
        let one = p.on_reads(&[read("3074257BF7194E4000001A85", 1, -50)]);
        assert_eq!(one.len(), 1);
        vec![one[0].clone(); n]
    }

    #[tokio::test]
    async fn a_large_batch_goes_to_the_writer_in_bounded_requests_and_acks_its_reader_once_all_committed(
    ) {
        let (tx, mut rx) = mpsc::channel(16);
        let mut in_store = InStore::default();
        let (reader_ack, mut reader_done) = CommitAck::pair();
        let n = DRAFTS_PER_REQUEST * 2 + 10;
        let req = WriteRequest {
            drafts: drafts(n),
            ack: Some(reader_ack),
        };
        assert!(in_store.submit(&tx, req).await);
        let mut sizes = Vec::new();
        let mut acks = Vec::new();
        while let Ok(r) = rx.try_recv() {
            sizes.push(r.drafts.len());
            acks.push(r.ack.unwrap());
        }
        assert_eq!(sizes, [DRAFTS_PER_REQUEST, DRAFTS_PER_REQUEST, 10]);
        assert_eq!(in_store.drafts, n);
        // The writer commits them in order; the reader hears only after the last.
        let mut acks = acks.into_iter();
        for ack in acks.by_ref().take(2) {
            ack.fire();
        }
        tokio::task::yield_now().await;
        in_store.settle_ready();
        assert!(
            reader_done.try_recv().is_err(),
            "acked before its last part"
        );
        acks.next().unwrap().fire();
        in_store.settle_ready();
        assert!(reader_done.try_recv().is_ok());
        assert_eq!(in_store.drafts, 0);
    }

    #[tokio::test]
    async fn a_split_batch_with_a_refused_part_does_not_ack_its_reader() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut in_store = InStore::default();
        let (reader_ack, mut reader_done) = CommitAck::pair();
        let req = WriteRequest {
            drafts: drafts(DRAFTS_PER_REQUEST + 1),
            ack: Some(reader_ack),
        };
        assert!(in_store.submit(&tx, req).await);
        let first = rx.try_recv().unwrap();
        let last = rx.try_recv().unwrap();
        // The store refused the first part (reject_new drops its ack) and
        // committed the second.
        drop(first);
        last.ack.unwrap().fire();
        in_store.settle_ready();
        assert!(in_store.pending.is_empty());
        assert!(
            reader_done.try_recv().is_err(),
            "a refused part must keep the reader's data"
        );
        // The next batch starts afresh.
        let (reader_ack, mut reader_done) = CommitAck::pair();
        let req = WriteRequest {
            drafts: drafts(3),
            ack: Some(reader_ack),
        };
        assert!(in_store.submit(&tx, req).await);
        rx.try_recv().unwrap().ack.unwrap().fire();
        in_store.settle_ready();
        assert!(reader_done.try_recv().is_ok());
    }

    #[test]
    fn the_pipeline_wakes_for_the_next_departure_on_the_tick_grid() {
        let text = format!("{CONFIG}\n[dedup]\ndeparture_timeout_ms = 40\n");
        let config = crate::config::parse(&text, "t.toml").unwrap();
        let mut p = Pipeline::new(&config, Clock::new(), Box::new(NoEnrichment));
        let origin = tokio::time::Instant::from_std(p.clock.origin());
        let offset = |at: tokio::time::Instant| at.duration_since(origin).as_millis() as u64;
        let now = p.clock.mono_ms();
        let idle = offset(p.next_tick_at());
        assert_eq!(idle % TICK_GRID_MS, 0, "on the grid");
        assert!(
            idle >= now + MAX_TICK_MS && idle < now + MAX_TICK_MS + TICK_GRID_MS,
            "nothing tracked: the periodic tick ({now} -> {idle})"
        );
        let mut r = read("3074257BF7194E4000001A85", 1, -50);
        r.host = p.clock.now();
        let read_at = r.host.mono_ms;
        p.on_reads(&[r]);
        let wake = offset(p.next_tick_at());
        let due = read_at + 40 + crate::dedup::CLOCK_GRACE_MS;
        assert_eq!(wake % TICK_GRID_MS, 0, "on the grid: {wake}");
        assert!(
            wake >= due && wake < due + TICK_GRID_MS,
            "wakes when the 40 ms departure timeout runs out ({due}), not after 100 ms: {wake}"
        );
    }

    #[test]
    fn grid_points_round_up() {
        assert_eq!(on_grid(0), 0);
        assert_eq!(on_grid(1), 10);
        assert_eq!(on_grid(10), 10);
        assert_eq!(on_grid(19), 20);
        assert_eq!(on_grid(u64::MAX), u64::MAX, "saturates, no overflow");
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
        let EventBody::Arrived(body) = &drafts[0].event.body else {
            panic!("not an arrival: {:?}", drafts[0].event);
        };
        assert_eq!(
            body.identity.pure_identity,
            "urn:epc:id:sgtin:0614141.812345.6789"
        );
    }

    const TWO_DESKS: &str = r#"
[gateway]
id = "g"
site = "s"

[[readers]]
name = "nfc"
kind = "pcsc"

[[read_points]]
name = "desk"
reader = "nfc"

[[read_points]]
name = "till"
reader = "nfc"
"#;

    /// Verifies every tap as genuine with counter 9 and counts the calls.
    #[derive(Debug, Default)]
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl TapEnricher for Counting {
        fn enrich(&mut self, tap: &Tap, event: &mut TapEvent) -> Option<SunReplayCheck> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            event.sun = Some(crate::event::SunResult {
                verdict: crate::event::SunVerdict::Genuine,
                counter: Some(9),
                product: None,
                uid: Some(tap.uid.clone()),
                covers: Vec::new(),
            });
            Some(SunReplayCheck {
                uid: tap.uid.clone(),
                counter: 9,
            })
        }
    }

    #[test]
    fn a_tap_is_verified_once_and_recorded_at_every_read_point_of_its_reader() {
        let config = crate::config::parse(TWO_DESKS, "t.toml").unwrap();
        let calls = Counting::default();
        let seen = calls.0.clone();
        let mut p = Pipeline::new(&config, Clock::new(), Box::new(calls));
        let tap = Tap {
            reader: Arc::from("nfc"),
            uid: vec![4, 1, 2, 3, 4, 5, 6],
            tag_type: "ntag424dna".into(),
            ndef_uri: None,
            ndef_text: None,
            atr: vec![0x3b],
            host: HostTime {
                mono_ms: 0,
                utc_ms: 1_700_000_000_000,
                clock_synced: true,
            },
        };
        let drafts = p.on_tap(&tap);
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 1);
        let points: Vec<&str> = drafts
            .iter()
            .map(|d| match &d.event.body {
                EventBody::Tap(t) => t.at.read_point.as_str(),
                other => panic!("not a tap: {other:?}"),
            })
            .collect();
        assert_eq!(points, ["desk", "till"]);
        for d in &drafts {
            assert_eq!(d.replay.as_ref().map(|r| r.counter), Some(9));
            assert_eq!(d.event.time, UtcMs(1_700_000_000_000));
        }
    }
}
