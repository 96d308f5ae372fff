//! Input debounce, sans-IO: raw level changes in (with monotonic ms), stable
//! edges out.
//!
//! A change counts once the input has held the new level for `debounce_ms`;
//! a flicker shorter than that is no edge at all. The edge is stamped with
//! the moment of the raw change that started it, not the moment the filter
//! confirmed it: read windows and beam order use when the beam really broke.
//! With `debounce_ms = 0` every change is an edge at once (the kernel's own
//! debounce, when the backend has one, already filtered it).

/// A confirmed change of a debounced input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The new logical level: `true` is active (beam broken, button pressed).
    pub active: bool,
    /// When the raw change that became this edge happened (monotonic ms).
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Debouncer {
    debounce_ms: u64,
    stable: bool,
    /// A raw level differing from `stable`, and since when.
    candidate: Option<u64>,
}

impl Debouncer {
    /// Starts from the level the input had when it was opened.
    pub fn new(debounce_ms: u64, initial: bool) -> Self {
        Self {
            debounce_ms,
            stable: initial,
            candidate: None,
        }
    }

    /// The debounced level.
    pub fn level(&self) -> bool {
        self.stable
    }

    /// A raw level seen at `now_ms` (an edge event or a sample). Returns the
    /// edge when the change is confirmed at once (`debounce_ms = 0`), or when
    /// a pending change has already held long enough.
    pub fn sample(&mut self, raw: bool, now_ms: u64) -> Option<Edge> {
        if let Some(edge) = self.poll(now_ms) {
            // The pending change was confirmed before this sample; a sample
            // back at the old level starts the next change, pending from now
            // (a zero debounce never leaves a change pending, so this branch
            // only runs with a debounce time and cannot confirm at once).
            if raw != self.stable {
                self.candidate = Some(now_ms);
            }
            return Some(edge);
        }
        if raw == self.stable {
            self.candidate = None;
            return None;
        }
        if self.candidate.is_none() {
            self.candidate = Some(now_ms);
        }
        self.poll(now_ms)
    }

    /// Confirms a pending change once it has held for `debounce_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Edge> {
        let since = self.candidate?;
        if now_ms.saturating_sub(since) < self.debounce_ms {
            return None;
        }
        self.candidate = None;
        self.stable = !self.stable;
        Some(Edge {
            active: self.stable,
            at_ms: since,
        })
    }

    /// When [`Debouncer::poll`] could next confirm something.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.candidate.map(|s| s.saturating_add(self.debounce_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_change_held_for_the_debounce_time_is_one_edge_stamped_when_it_began() {
        let mut d = Debouncer::new(10, false);
        assert_eq!(d.sample(true, 100), None);
        assert_eq!(d.poll(109), None);
        assert_eq!(
            d.poll(110),
            Some(Edge {
                active: true,
                at_ms: 100
            })
        );
        assert!(d.level());
        assert_eq!(d.poll(500), None, "one edge per change");
    }

    #[test]
    fn a_flicker_shorter_than_the_debounce_time_is_no_edge() {
        let mut d = Debouncer::new(10, false);
        assert_eq!(d.sample(true, 100), None);
        assert_eq!(d.sample(false, 104), None);
        assert_eq!(d.sample(true, 106), None);
        assert_eq!(d.sample(false, 108), None);
        assert_eq!(d.poll(200), None);
        assert!(!d.level());
        assert_eq!(d.deadline_ms(), None);
    }

    #[test]
    fn zero_debounce_passes_every_change_at_once() {
        let mut d = Debouncer::new(0, true);
        assert_eq!(
            d.sample(false, 5),
            Some(Edge {
                active: false,
                at_ms: 5
            })
        );
        assert_eq!(
            d.sample(true, 5),
            Some(Edge {
                active: true,
                at_ms: 5
            })
        );
    }

    #[test]
    fn a_sample_after_the_deadline_confirms_the_pending_change_first() {
        let mut d = Debouncer::new(10, false);
        d.sample(true, 0);
        let e = d.sample(false, 50);
        assert_eq!(
            e,
            Some(Edge {
                active: true,
                at_ms: 0
            })
        );
        // The release at 50 is now pending against the new level.
        assert_eq!(d.deadline_ms(), Some(60));
        assert_eq!(
            d.poll(60),
            Some(Edge {
                active: false,
                at_ms: 50
            })
        );
    }

    proptest! {
        /// Edges alternate in level, are stamped in order, and every edge
        /// follows a raw level held for at least the debounce time.
        #[test]
        fn edges_alternate_and_follow_held_levels(
            debounce in 0u64..30,
            steps in proptest::collection::vec((any::<bool>(), 0u64..40), 0..200),
        ) {
            let mut d = Debouncer::new(debounce, false);
            let mut now = 0;
            let mut level = false;
            let mut last_at = 0;
            let mut raw_log: Vec<(u64, bool)> = vec![(0, false)];
            for (raw, gap) in steps {
                now += gap;
                for e in d.poll(now).into_iter().chain(d.sample(raw, now)) {
                    prop_assert_eq!(e.active, !level);
                    prop_assert!(e.at_ms >= last_at);
                    level = e.active;
                    last_at = e.at_ms;
                    // The raw level was at e.active from e.at_ms for at
                    // least `debounce` ms (no opposite sample in between).
                    prop_assert!(!raw_log.iter().any(|&(t, r)| t > e.at_ms && t < e.at_ms + debounce && r != e.active));
                }
                raw_log.push((now, raw));
            }
        }
    }
}
