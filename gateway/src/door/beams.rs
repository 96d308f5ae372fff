//! Direction from two photo-eye beams, sans-IO, and its combination with the
//! antenna order the read window saw.
//!
//! One beam faces outside, one inside. A *passage* starts when either beam
//! breaks while both are clear, and ends once both have stayed clear for
//! `clear_hold_ms`: a beam that flickers (a swaying load, a forklift mast)
//! inside that time is part of the same passage, not a new one. At the end:
//! - the outside beam broke first and the inside one cleared last: `in`;
//! - the inside beam broke first and the outside one cleared last: `out`;
//! - both broke but the load left the way it came: `reversed`, no direction;
//! - only one beam ever broke: `one_beam`, no direction.
//!
//! [`combine`] then weighs the beams against the antenna votes (each tag
//! read first by the outside antenna and last by the inside one votes `in`,
//! the reverse `out`; the same rule the dedup engine applies to departures).
//! Beams are a physical barrier and decide when they saw a passage through;
//! antennas decide otherwise. The result says which source decided and how
//! sure it is, and keeps both readings so a disagreement is visible.

use crate::event::{
    AntennaVotes, BeamPassage, BeamReading, BeamSide, Confidence, Direction, DirectionEvidence,
    DirectionSource,
};

/// A finished passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passage {
    /// When the first beam broke (monotonic ms).
    pub started_ms: u64,
    /// When the last beam cleared (before the clear hold).
    pub ended_ms: u64,
    pub reading: BeamReading,
}

/// What a beam edge or the passing of time did to the beam pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeamSignal {
    /// A passage began: the first beam broke.
    Started { at_ms: u64 },
    /// Both beams have been clear for the hold time.
    Ended(Passage),
}

#[derive(Debug, Clone)]
struct Current {
    started_ms: u64,
    first: BeamSide,
    broke_outside: bool,
    broke_inside: bool,
    last_cleared: Option<BeamSide>,
    /// Breaks after the first one (a flickering beam counts here).
    rebreaks: u32,
}

#[derive(Debug, Clone)]
pub struct TwoBeams {
    clear_hold_ms: u64,
    outside: bool,
    inside: bool,
    current: Option<Current>,
    /// Both beams clear since (while a passage is open).
    clear_since: Option<u64>,
}

impl TwoBeams {
    pub fn new(clear_hold_ms: u64) -> Self {
        Self {
            clear_hold_ms,
            outside: false,
            inside: false,
            current: None,
            clear_since: None,
        }
    }

    /// Whether either beam is broken now.
    pub fn occupied(&self) -> bool {
        self.outside || self.inside
    }

    /// A debounced edge of one beam (`broken` = beam interrupted). Call
    /// [`TwoBeams::poll`] first: a passage ends at the first poll after its
    /// hold, and a break before that poll still belongs to it.
    pub fn on_edge(&mut self, side: BeamSide, broken: bool, at_ms: u64) -> Option<BeamSignal> {
        let slot = match side {
            BeamSide::Outside => &mut self.outside,
            BeamSide::Inside => &mut self.inside,
        };
        if *slot == broken {
            return None;
        }
        *slot = broken;
        if broken {
            self.clear_since = None;
            match &mut self.current {
                Some(c) => {
                    c.rebreaks += 1;
                    match side {
                        BeamSide::Outside => c.broke_outside = true,
                        BeamSide::Inside => c.broke_inside = true,
                    }
                }
                None => {
                    self.current = Some(Current {
                        started_ms: at_ms,
                        first: side,
                        broke_outside: side == BeamSide::Outside,
                        broke_inside: side == BeamSide::Inside,
                        last_cleared: None,
                        rebreaks: 0,
                    });
                    return Some(BeamSignal::Started { at_ms });
                }
            }
        } else {
            if let Some(c) = &mut self.current {
                c.last_cleared = Some(side);
            }
            if !self.occupied() {
                self.clear_since = Some(at_ms);
            }
        }
        None
    }

    /// Ends a passage whose beams have been clear for the hold time.
    pub fn poll(&mut self, now_ms: u64) -> Option<Passage> {
        let since = self.clear_since?;
        if now_ms.saturating_sub(since) < self.clear_hold_ms {
            return None;
        }
        self.clear_since = None;
        let c = self.current.take()?;
        let last = c.last_cleared.unwrap_or(c.first);
        let passage = match (c.broke_outside && c.broke_inside, c.first, last) {
            (false, _, _) => BeamPassage::OneBeam,
            (true, BeamSide::Outside, BeamSide::Inside) => BeamPassage::In,
            (true, BeamSide::Inside, BeamSide::Outside) => BeamPassage::Out,
            (true, _, _) => BeamPassage::Reversed,
        };
        Some(Passage {
            started_ms: c.started_ms,
            ended_ms: since,
            reading: BeamReading {
                first: c.first,
                passage,
                rebreaks: c.rebreaks,
            },
        })
    }

    pub fn deadline_ms(&self) -> Option<u64> {
        self.clear_since
            .filter(|_| self.current.is_some())
            .map(|s| s.saturating_add(self.clear_hold_ms))
    }
}

/// Share of antenna votes that must agree before the antennas alone give a
/// direction with `medium` confidence (below it: `low`).
const CLEAR_MAJORITY: f64 = 0.8;

/// Weighs a beam reading against antenna votes (see the module docs).
pub fn combine(beams: Option<BeamReading>, votes: AntennaVotes) -> DirectionEvidence {
    let total = votes.inward + votes.outward;
    let antennas = match votes.inward.cmp(&votes.outward) {
        std::cmp::Ordering::Greater => Some(Direction::In),
        std::cmp::Ordering::Less => Some(Direction::Out),
        std::cmp::Ordering::Equal => None,
    };
    let majority = if total == 0 {
        0.0
    } else {
        f64::from(votes.inward.max(votes.outward)) / f64::from(total)
    };
    let beam_direction = beams.and_then(|b| b.passage.direction());
    let (direction, source, confidence) = match (beam_direction, antennas) {
        (Some(b), Some(a)) if a == b => (Some(b), DirectionSource::Both, Confidence::High),
        // Beams are a physical barrier: they win, but the disagreement
        // lowers the confidence and both readings stay in the event.
        (Some(b), Some(_)) => (Some(b), DirectionSource::Beams, Confidence::Low),
        (Some(b), None) => (Some(b), DirectionSource::Beams, Confidence::Medium),
        (None, Some(a)) => (
            Some(a),
            DirectionSource::Antennas,
            if majority >= CLEAR_MAJORITY {
                Confidence::Medium
            } else {
                Confidence::Low
            },
        ),
        (None, None) => (None, DirectionSource::None, Confidence::Low),
    };
    DirectionEvidence {
        direction,
        source,
        confidence,
        beams,
        antennas: votes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use BeamSide::{Inside, Outside};

    fn run(hold: u64, edges: &[(BeamSide, bool, u64)], end: u64) -> Vec<BeamSignal> {
        let mut b = TwoBeams::new(hold);
        let mut out = Vec::new();
        for &(side, broken, at) in edges {
            out.extend(b.on_edge(side, broken, at));
        }
        out.extend(b.poll(end).map(BeamSignal::Ended));
        out
    }

    fn passage(signals: &[BeamSignal]) -> BeamReading {
        match signals.last() {
            Some(BeamSignal::Ended(p)) => p.reading,
            other => panic!("no passage ended: {other:?}"),
        }
    }

    #[test]
    fn outside_first_inside_last_is_in() {
        let s = run(
            100,
            &[
                (Outside, true, 0),
                (Inside, true, 300),
                (Outside, false, 900),
                (Inside, false, 1200),
            ],
            1300,
        );
        assert_eq!(s[0], BeamSignal::Started { at_ms: 0 });
        let BeamSignal::Ended(p) = s[1] else {
            panic!("{s:?}")
        };
        assert_eq!((p.started_ms, p.ended_ms), (0, 1200));
        assert_eq!(p.reading.passage, BeamPassage::In);
    }

    #[test]
    fn inside_first_outside_last_is_out() {
        let s = run(
            100,
            &[
                (Inside, true, 0),
                (Outside, true, 300),
                (Inside, false, 900),
                (Outside, false, 1200),
            ],
            1300,
        );
        assert_eq!(passage(&s).passage, BeamPassage::Out);
    }

    #[test]
    fn a_bouncing_beam_within_the_hold_is_one_passage_with_the_same_direction() {
        let s = run(
            200,
            &[
                (Outside, true, 0),
                (Outside, false, 40),
                (Outside, true, 90), // the mast sways: back within 200 ms
                (Inside, true, 300),
                (Outside, false, 900),
                (Inside, false, 1200),
                (Inside, true, 1250), // the load's tail bounces on the way out
                (Inside, false, 1280),
            ],
            1500,
        );
        let starts = s
            .iter()
            .filter(|x| matches!(x, BeamSignal::Started { .. }))
            .count();
        assert_eq!(starts, 1, "{s:?}");
        let r = passage(&s);
        assert_eq!(r.passage, BeamPassage::In);
        assert_eq!(r.rebreaks, 3, "the inside break and two bounces");
    }

    #[test]
    fn a_load_that_backs_out_is_reversed_and_one_that_never_reaches_the_second_beam_is_one_beam() {
        let s = run(
            50,
            &[
                (Outside, true, 0),
                (Inside, true, 300),
                (Inside, false, 600),
                (Outside, false, 900),
            ],
            1000,
        );
        assert_eq!(passage(&s).passage, BeamPassage::Reversed);
        let s = run(50, &[(Outside, true, 0), (Outside, false, 600)], 700);
        assert_eq!(passage(&s).passage, BeamPassage::OneBeam);
    }

    #[test]
    fn beams_and_antennas_that_agree_give_high_confidence() {
        let through_in = BeamReading {
            first: Outside,
            passage: BeamPassage::In,
            rebreaks: 1,
        };
        let e = combine(
            Some(through_in),
            AntennaVotes {
                inward: 20,
                outward: 1,
            },
        );
        assert_eq!(
            (e.direction, e.source, e.confidence),
            (Some(Direction::In), DirectionSource::Both, Confidence::High)
        );
    }

    #[test]
    fn beams_win_a_disagreement_with_low_confidence_and_both_readings_kept() {
        let through_out = BeamReading {
            first: Inside,
            passage: BeamPassage::Out,
            rebreaks: 1,
        };
        let votes = AntennaVotes {
            inward: 12,
            outward: 2,
        };
        let e = combine(Some(through_out), votes);
        assert_eq!(
            (e.direction, e.source, e.confidence),
            (
                Some(Direction::Out),
                DirectionSource::Beams,
                Confidence::Low
            )
        );
        assert_eq!(e.antennas, votes);
        assert_eq!(e.beams, Some(through_out));
    }

    #[test]
    fn without_a_beam_passage_the_antenna_majority_decides() {
        let e = combine(
            None,
            AntennaVotes {
                inward: 1,
                outward: 9,
            },
        );
        assert_eq!(
            (e.direction, e.source, e.confidence),
            (
                Some(Direction::Out),
                DirectionSource::Antennas,
                Confidence::Medium
            )
        );
        let e = combine(
            None,
            AntennaVotes {
                inward: 4,
                outward: 6,
            },
        );
        assert_eq!(e.confidence, Confidence::Low);
        let e = combine(None, AntennaVotes::default());
        assert_eq!((e.direction, e.source), (None, DirectionSource::None));
    }

    proptest! {
        /// Every passage that starts ends once both beams stay clear, and
        /// a passage gives a direction only when both beams broke.
        #[test]
        fn passages_start_and_end_in_pairs(
            hold in 0u64..100,
            edges in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..80), 0..100),
        ) {
            let mut b = TwoBeams::new(hold);
            let mut now = 0;
            let mut open = false;
            let check = |s: BeamSignal, open: &mut bool| -> Result<(), TestCaseError> {
                match s {
                    BeamSignal::Started { .. } => { prop_assert!(!*open); *open = true; }
                    BeamSignal::Ended(p) => {
                        prop_assert!(*open);
                        *open = false;
                        prop_assert!(p.ended_ms >= p.started_ms);
                    }
                }
                Ok(())
            };
            for (outside, broken, gap) in edges {
                now += gap;
                if let Some(p) = b.poll(now) { check(BeamSignal::Ended(p), &mut open)?; }
                let side = if outside { Outside } else { Inside };
                if let Some(s) = b.on_edge(side, broken, now) { check(s, &mut open)?; }
            }
            for side in [Outside, Inside] {
                if let Some(s) = b.on_edge(side, false, now) { check(s, &mut open)?; }
            }
            if let Some(p) = b.poll(now + hold) { check(BeamSignal::Ended(p), &mut open)?; }
            prop_assert!(!open, "a passage never ended");
        }
    }
}
