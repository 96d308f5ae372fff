//! At the door: read windows ("passes"), two-beam direction, input
//! debounce and stack-light rules. Every part here is sans-IO (monotonic
//! time in, decisions out); the GPIO backends and the task that drives
//! them live in `crate::gpio`, the wiring into the pipeline is a few calls
//! on [`Doors`].

pub mod beams;
pub mod debounce;
pub mod signals;
pub mod window;

use tracegate_drivers::{HostTime, RawRead};
use tracegate_gs1::EpcPattern;

use crate::config::ReadPoint;
use crate::dedup::DedupKey;
use crate::event::{
    BeamReading, Event, EventBody, Origin, PassEvent, PassTag, ReadContext, UhfIdentity, UtcMs,
    WindowClosed,
};
use crate::gpio::config::Trigger;
use crate::suspect::Suspicion;

use beams::{BeamSignal, TwoBeams};
use window::{ClosedWindow, ReadWindow, WindowConfig};

/// A debounced input edge, as the GPIO task hands it to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorInput {
    /// Index into the configured inputs.
    pub input: usize,
    pub active: bool,
    pub at: HostTime,
}

#[derive(Debug)]
struct Point {
    window: ReadWindow,
    trigger: Trigger,
    beams: Option<TwoBeams>,
    /// The last finished beam passage, for the window it belongs to.
    passage: Option<beams::Passage>,
    tag_events: bool,
    parent_pattern: Option<EpcPattern>,
}

/// A window closed at a read point, with the beam reading for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedPass {
    pub read_point: usize,
    pub window: ClosedWindow,
    pub beams: Option<BeamReading>,
}

/// Every read point's window and beams.
#[derive(Debug, Default)]
pub struct Doors {
    points: Vec<Option<Point>>,
    closed: Vec<ClosedPass>,
}

/// `at` moved to `t_ms` (at or before it), UTC shifted alike.
fn at_mono(at: HostTime, t_ms: u64) -> HostTime {
    let back = at.mono_ms.saturating_sub(t_ms);
    HostTime {
        mono_ms: at.mono_ms - back,
        utc_ms: at.utc_ms - i64::try_from(back).unwrap_or(0),
        clock_synced: at.clock_synced,
    }
}

impl Doors {
    pub fn new(read_points: &[ReadPoint], key: DedupKey, start_ms: u64) -> Self {
        let points = read_points
            .iter()
            .map(|rp| {
                rp.door.as_ref().map(|d| Point {
                    window: ReadWindow::new(
                        WindowConfig {
                            open_on_input: d.open_on_input,
                            open_on_first_read: d.open_on_first_read,
                            open_every_ms: d.open_every_ms,
                            linger_ms: d.linger_ms,
                            stable_ms: d.stable_ms,
                            max_duration_ms: d.max_duration_ms,
                            max_tags: d.max_tags,
                            key,
                            portal: rp.direction,
                        },
                        start_ms,
                    ),
                    trigger: d.trigger,
                    beams: match d.trigger {
                        Trigger::Beams { clear_hold_ms, .. } => Some(TwoBeams::new(clear_hold_ms)),
                        _ => None,
                    },
                    passage: None,
                    tag_events: d.tag_events,
                    parent_pattern: d.parent_pattern.clone(),
                })
            })
            .collect();
        Self {
            points,
            closed: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.points.iter().all(Option::is_none)
    }

    /// Whether per-tag `arrived`/`departed`/`present` events are kept at
    /// the read point (read points without a window keep them).
    pub fn tag_events(&self, read_point: usize) -> bool {
        match self.points.get(read_point) {
            Some(Some(p)) => p.tag_events,
            _ => true,
        }
    }

    fn poll_point(&mut self, i: usize, now: HostTime) {
        let Some(Some(p)) = self.points.get_mut(i) else {
            return;
        };
        if let Some(b) = &mut p.beams {
            if let Some(passage) = b.poll(now.mono_ms) {
                p.passage = Some(passage);
                p.window.on_trigger(false, at_mono(now, passage.ended_ms));
            }
        }
        if let Some(w) = p.window.poll(now) {
            let beams = p
                .passage
                .take()
                .filter(|ps| ps.ended_ms >= w.opened_at.mono_ms.saturating_sub(1_000))
                .map(|ps| ps.reading);
            self.closed.push(ClosedPass {
                read_point: i,
                window: w,
                beams,
            });
        }
    }

    /// A read accepted at `read_point` (after its filters).
    pub fn on_read(&mut self, read_point: usize, read: &RawRead) {
        if !matches!(self.points.get(read_point), Some(Some(_))) {
            return;
        }
        self.poll_point(read_point, read.host);
        if let Some(Some(p)) = self.points.get_mut(read_point) {
            p.window.on_read(read);
        }
    }

    /// A debounced input edge: feeds every read point it triggers.
    pub fn on_input(&mut self, input: &DoorInput) {
        for i in 0..self.points.len() {
            let Some(Some(p)) = self.points.get(i) else {
                continue;
            };
            let uses = match p.trigger {
                Trigger::Input(n) => n == input.input,
                Trigger::Beams {
                    outside, inside, ..
                } => outside == input.input || inside == input.input,
                Trigger::None => false,
            };
            if !uses {
                continue;
            }
            self.poll_point(i, input.at);
            let Some(Some(p)) = self.points.get_mut(i) else {
                continue;
            };
            match (p.trigger, &mut p.beams) {
                (Trigger::Beams { outside, .. }, Some(b)) => {
                    let side = if input.input == outside {
                        crate::event::BeamSide::Outside
                    } else {
                        crate::event::BeamSide::Inside
                    };
                    if let Some(BeamSignal::Started { at_ms }) =
                        b.on_edge(side, input.active, input.at.mono_ms)
                    {
                        p.passage = None;
                        p.window.on_trigger(true, at_mono(input.at, at_ms));
                    }
                }
                _ => {
                    p.window.on_trigger(input.active, input.at);
                }
            }
        }
    }

    /// Advances time for every read point.
    pub fn poll(&mut self, now: HostTime) {
        for i in 0..self.points.len() {
            self.poll_point(i, now);
        }
    }

    /// [`Doors::poll`] on the reads' own time: while reads are in flight
    /// towards the pipeline (`oldest_in_flight`: the oldest of their
    /// monotonic times), the door's clock stops there, so a backlog (a
    /// stalled store, a busy pipeline) cannot close a window, and split a
    /// pass in two, before its reads arrive. Dedup is held back the same way.
    pub fn poll_held_back(&mut self, now: HostTime, oldest_in_flight: Option<u64>) {
        self.poll(oldest_in_flight.map_or(now, |t| at_mono(now, t)));
    }

    /// Closes every open window (`shutdown`).
    pub fn shutdown(&mut self, now: HostTime) {
        self.poll(now);
        for (i, p) in self.points.iter_mut().enumerate() {
            if let Some(p) = p {
                if let Some(w) = p.window.close(now, WindowClosed::Shutdown) {
                    self.closed.push(ClosedPass {
                        read_point: i,
                        window: w,
                        beams: p.passage.take().map(|ps| ps.reading),
                    });
                }
            }
        }
    }

    /// The next moment a window or beam pair needs [`Doors::poll`].
    pub fn deadline_ms(&self) -> Option<u64> {
        self.points
            .iter()
            .flatten()
            .flat_map(|p| {
                [
                    p.window.deadline_ms(),
                    p.beams.as_ref().and_then(|b| b.deadline_ms()),
                ]
            })
            .flatten()
            .min()
    }

    /// Windows closed since the last call.
    pub fn take_closed(&mut self) -> Vec<ClosedPass> {
        std::mem::take(&mut self.closed)
    }

    /// The `pass` event for a closed window: identities decoded, each tag's
    /// suspicious-serial flags, direction from beams and antennas, the
    /// packing parent when there is exactly one.
    pub fn pass_event(
        &self,
        origin: &Origin,
        point: &ReadPoint,
        closed: &ClosedPass,
        suspicion: &mut Suspicion,
        epcis: crate::event::EpcisContext,
    ) -> Event {
        let w = &closed.window;
        let mut flags: Vec<crate::event::Flag> = Vec::new();
        let mut parents = Vec::new();
        let mut all_items = true;
        let parent_pattern = match self.points.get(closed.read_point) {
            Some(Some(p)) => p.parent_pattern.as_ref(),
            _ => None,
        };
        let tags: Vec<PassTag> = w
            .tags
            .iter()
            .map(|t| {
                let decoded = tracegate_gs1::decode_epc(&t.epc);
                let tag_flags =
                    suspicion.flags(closed.read_point, &t.epc, &decoded, t.tid.as_deref(), None);
                for f in &tag_flags {
                    if !flags.contains(f) {
                        flags.push(*f);
                    }
                }
                let identity = UhfIdentity::from_decoded(&t.epc, decoded, t.tid.as_deref());
                match parent_pattern {
                    Some(pat)
                        if identity.scheme.starts_with("sscc") && pattern_matches(pat, &t.epc) =>
                    {
                        parents.push(identity.pure_identity.clone());
                    }
                    _ => all_items &= identity.scheme.contains("sgtin"),
                }
                PassTag {
                    identity,
                    antennas: t.antennas.clone(),
                    read_count: t.read_count,
                    first_seen: UtcMs(t.first_seen.utc_ms),
                    last_seen: UtcMs(t.last_seen.utc_ms),
                    peak_rssi_dbm: t.peak_rssi_dbm,
                    flags: tag_flags,
                }
            })
            .collect();
        let evidence = (point.direction.is_some() || closed.beams.is_some())
            .then(|| beams::combine(closed.beams, w.votes));
        let parent = (parents.len() == 1 && all_items && tags.len() > 1)
            .then(|| parents.pop())
            .flatten();
        let reader = w
            .tags
            .first()
            .map_or_else(|| point.reader.clone(), |t| t.reader.to_string());
        let trigger = match self.points.get(closed.read_point) {
            Some(Some(p)) => match p.trigger {
                Trigger::None => None,
                _ => Some(trigger_name(point)),
            },
            _ => None,
        }
        .flatten();
        let body = PassEvent {
            at: ReadContext {
                site: origin.site.clone(),
                read_point: point.name.clone(),
                reader,
                clock_synced: w.opened_at.clock_synced && w.closed_at.clock_synced,
            },
            opened_at: UtcMs(w.opened_at.utc_ms),
            closed_at: UtcMs(w.closed_at.utc_ms),
            opened_by: w.opened_by,
            closed_by: w.closed_by,
            trigger,
            direction: evidence.and_then(|e| e.direction),
            direction_evidence: evidence,
            tag_count: w.tag_count,
            read_count: w.read_count,
            tags,
            overflow: w.overflow,
            flags,
            parent,
            shipment: None,
            epcis: Some(epcis),
        };
        Event::new(
            origin.gateway.clone(),
            UtcMs(w.closed_at.utc_ms),
            EventBody::Pass(body),
        )
    }
}

fn pattern_matches(pattern: &EpcPattern, epc: &[u8]) -> bool {
    pattern.matches(&tracegate_gs1::decode_epc(epc))
}

/// The name of the input(s) that trigger a read point's windows.
fn trigger_name(point: &ReadPoint) -> Option<String> {
    point.door.as_ref().and_then(|d| d.trigger_names.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracegate_drivers::Clock;

    use super::*;
    use crate::event::{BeamPassage, Confidence, Direction, DirectionSource};
    use crate::pipeline::{NoEnrichment, Pipeline};

    const DOOR: &str = r#"
[gateway]
id = "g"
site = "s"

[[readers]]
name = "dock"
kind = "sim"

[[read_points]]
name = "dock-door-1"
reader = "dock"
direction = { outside = 1, inside = 2 }

[read_points.window]
beams = { outside = "eye-out", inside = "eye-in" }
beam_clear_hold_ms = 100
linger_ms = 300
tag_events = false

[gpio]
backend = "sim"
chip = "x"
[gpio.inputs.eye-out]
line = 1
[gpio.inputs.eye-in]
line = 2
"#;

    fn t(ms: u64) -> HostTime {
        HostTime {
            mono_ms: ms,
            utc_ms: 1_700_000_000_000 + ms as i64,
            clock_synced: true,
        }
    }

    fn read(serial: u64, antenna: u8, ms: u64) -> RawRead {
        RawRead {
            reader: Arc::from("dock"),
            antenna,
            epc: tracegate_drivers::sim::sgtin96(614_141, 812_345, serial).to_vec(),
            tid: None,
            pc: None,
            rssi_dbm: Some(-60),
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: t(ms),
        }
    }

    fn edge(input: usize, active: bool, ms: u64) -> DoorInput {
        DoorInput {
            input,
            active,
            at: t(ms),
        }
    }

    #[test]
    fn a_window_waits_for_reads_still_in_flight_before_it_closes() {
        let config = crate::config::parse(DOOR, "t.toml").unwrap();
        let mut p = Pipeline::new(&config, Clock::new(), Box::new(NoEnrichment));
        let g = config.gpio.as_ref().unwrap();
        let (out, inn) = if g.inputs[0].name == "eye-out" {
            (0, 1)
        } else {
            (1, 0)
        };
        p.on_door_input(&edge(out, true, 1_000));
        p.on_reads(&[read(1, 1, 1_050)]);
        p.on_door_input(&edge(inn, true, 1_300));
        p.on_door_input(&edge(out, false, 1_700));
        p.on_door_input(&edge(inn, false, 2_000));
        // The clock is far past the linger's end (2.3 s), but a read taken at
        // 2.25 s is still queued: the window stays open for it.
        p.door.poll_held_back(t(9_000), Some(2_250));
        assert!(p.door.take_closed().is_empty());
        p.on_reads(&[read(2, 2, 2_250)]);
        p.door.poll_held_back(t(9_000), None);
        let closed = p.door.take_closed();
        assert_eq!(closed.len(), 1, "one pass, not split by the backlog");
        assert_eq!(closed[0].window.tags.len(), 2);
    }

    #[test]
    fn a_pallet_through_two_beams_is_one_pass_event_with_its_tags_and_direction() {
        let config = crate::config::parse(DOOR, "t.toml").unwrap();
        let mut p = Pipeline::new(&config, Clock::new(), Box::new(NoEnrichment));
        let (out, inn) = (0usize, 1usize);
        // Inputs are indexed in name order: eye-in (0), eye-out (1).
        let g = config.gpio.as_ref().unwrap();
        let (out, inn) = if g.inputs[0].name == "eye-out" {
            (out, inn)
        } else {
            (inn, out)
        };
        assert!(p.on_door_input(&edge(out, true, 1_000)).is_empty());
        let mut drafts = Vec::new();
        drafts.extend(p.on_reads(&[read(1, 1, 1_050), read(2, 1, 1_060)]));
        drafts.extend(p.on_door_input(&edge(inn, true, 1_300)));
        drafts.extend(p.on_reads(&[read(1, 2, 1_500), read(2, 2, 1_600), read(3, 2, 1_650)]));
        drafts.extend(p.on_door_input(&edge(out, false, 1_700)));
        drafts.extend(p.on_door_input(&edge(inn, false, 2_000)));
        assert!(
            drafts.is_empty(),
            "tag_events = false: no per-tag events; window still open"
        );
        // Both beams clear at 2.0 s (confirmed after the 100 ms hold); the
        // 300 ms linger counts from the clearing.
        p.door.poll(t(2_299));
        assert!(p.door.take_closed().is_empty());
        p.door.poll(t(2_300));
        let closed = p.door.take_closed();
        assert_eq!(closed.len(), 1);
        let rp = config.read_points[0].clone();
        let event = p.door.pass_event(
            &Origin {
                gateway: "g".into(),
                site: "s".into(),
            },
            &rp,
            &closed[0],
            &mut crate::suspect::Suspicion::new(vec![Vec::new()], None),
            crate::event::EpcisContext {
                biz_step: None,
                disposition: None,
                read_point_id: None,
                biz_location: None,
                action: crate::event::EpcisAction::Observe,
            },
        );
        let EventBody::Pass(pass) = &event.body else {
            panic!("{event:?}")
        };
        assert_eq!(pass.tag_count, 3);
        assert_eq!(pass.read_count, 5);
        assert_eq!(pass.opened_at, UtcMs(1_700_000_001_000));
        assert_eq!(pass.closed_at, UtcMs(1_700_000_002_300));
        assert_eq!(pass.closed_by, WindowClosed::Release);
        let serials: Vec<_> = pass
            .tags
            .iter()
            .map(|t| t.identity.serial.clone().unwrap())
            .collect();
        assert_eq!(serials, ["1", "2", "3"]);
        let ev = pass.direction_evidence.unwrap();
        assert_eq!(ev.beams.unwrap().passage, BeamPassage::In);
        assert_eq!(
            (pass.direction, ev.source, ev.confidence),
            (Some(Direction::In), DirectionSource::Both, Confidence::High)
        );
        assert_eq!(pass.trigger.as_deref(), Some("eye-out+eye-in"));
        // The JSON round-trips through the typed event.
        let json = event.to_json_numbered("g:s:1", 1).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.body, event.body);
    }

    #[test]
    fn a_packing_pass_names_its_one_sscc_as_parent_and_two_ssccs_name_none() {
        let text = DOOR.replace(
            "tag_events = false",
            "tag_events = false\nparent_pattern = \"urn:epc:idpat:sscc:0614141.*\"",
        );
        let config = crate::config::parse(&text, "t.toml").unwrap();
        let sscc = |n: u8| {
            let mut r = read(0, 1, 1_100);
            r.epc = hex::decode("3114257BF4499602D2000000").unwrap();
            r.epc[11] = n;
            r
        };
        let run = |extra: Vec<RawRead>| {
            let mut doors = Doors::new(&config.read_points, DedupKey::Epc, 0);
            doors.on_input(&edge(0, true, 1_000));
            for r in [read(1, 1, 1_050), read(2, 1, 1_060)]
                .into_iter()
                .chain(extra)
            {
                doors.on_read(0, &r);
            }
            doors.shutdown(t(5_000));
            let closed = doors.take_closed();
            let e = doors.pass_event(
                &Origin {
                    gateway: "g".into(),
                    site: "s".into(),
                },
                &config.read_points[0],
                &closed[0],
                &mut crate::suspect::Suspicion::new(vec![Vec::new()], None),
                crate::event::EpcisContext {
                    biz_step: None,
                    disposition: None,
                    read_point_id: None,
                    biz_location: None,
                    action: crate::event::EpcisAction::Observe,
                },
            );
            match e.body {
                EventBody::Pass(p) => p.parent,
                other => panic!("{other:?}"),
            }
        };
        let one = run(vec![sscc(0)]).expect("one SSCC: a parent");
        assert!(one.starts_with("urn:epc:id:sscc:0614141."), "{one}");
        assert_eq!(run(vec![sscc(0), sscc(1)]), None, "two SSCCs: no parent");
        assert_eq!(run(vec![]), None, "no SSCC: no parent");
    }

    #[test]
    fn the_pipeline_commits_a_pass_when_the_linger_runs_out_and_closes_open_windows_at_shutdown() {
        let config = crate::config::parse(DOOR, "t.toml").unwrap();
        let clock = Clock::new();
        let mut p = Pipeline::new(&config, clock, Box::new(NoEnrichment));
        let now = clock.now();
        p.on_door_input(&DoorInput {
            input: 0,
            active: true,
            at: now,
        });
        let mut r = read(7, 1, 0);
        r.host = clock.now();
        p.on_reads(&[r]);
        let drafts = p.on_shutdown();
        assert_eq!(drafts.len(), 1);
        let EventBody::Pass(pass) = &drafts[0].event.body else {
            panic!()
        };
        assert_eq!(
            (pass.closed_by, pass.tag_count),
            (WindowClosed::Shutdown, 1)
        );
    }
}
