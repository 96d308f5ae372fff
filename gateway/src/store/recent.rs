//! The last few commits, kept in memory by the writer for the publisher's
//! live lane.
//!
//! Live events are read right after their commit. Reading them back from
//! SQLite cost a query, a row decode per event and two thread hand-offs
//! (publisher → reader thread → publisher) per MQTT message; the writer
//! already holds exactly those events when the commit returns. So after each
//! commit (and before it announces the new `committed` seq) the writer
//! appends the commit's stored events here, and [`StoreReader::read_after`]
//! answers from here when the range asked for is covered, falling back to
//! the reader thread otherwise (the backlog, anything older than the buffer).
//!
//! Only committed events ever enter, so durability before publish holds.
//! The buffer answers exactly what SQLite would: it covers a contiguous seq
//! range `(from, upto]`, and inside it every stored row is present. A commit
//! that deleted rows (the `drop_oldest` policy) empties it, so an event the
//! store has dropped is never served from memory.
//!
//! Bounded by [`MAX_EVENTS`] and [`MAX_BYTES`]: the oldest events go first
//! (and `from` moves up), so a publisher that falls behind simply reads from
//! SQLite again.
//!
//! [`StoreReader::read_after`]: super::StoreReader::read_after

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::StoredEvent;

/// At most this many events are kept (about a second at 1,500 events/s).
pub const MAX_EVENTS: usize = 2_048;
/// At most this many payload bytes are kept.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// Shared between the writer thread (appends) and the publisher (reads);
/// each holds the lock only to copy a few events.
#[derive(Debug, Clone, Default)]
pub struct RecentCommits {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every stored event with `from < seq <= upto` is in `events`.
    from: u64,
    upto: u64,
    /// False until the first commit (nothing is covered yet).
    valid: bool,
    events: VecDeque<StoredEvent>,
    bytes: usize,
}

impl Inner {
    fn reset(&mut self, at: u64) {
        self.events.clear();
        self.bytes = 0;
        self.from = at;
        self.upto = at;
        self.valid = true;
    }
}

impl RecentCommits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a commit that left `meta.last_seq` at `last_seq` and stored
    /// `events` (in seq order). `dropped`: the commit deleted rows by
    /// policy; nothing up to `last_seq` may then be served from memory.
    pub fn push(&self, last_seq: u64, dropped: bool, events: Vec<StoredEvent>) {
        // Without deletions a commit's rows are `before + 1 ..= last_seq`
        // (refused drafts get no seq), so its first row tells where it began.
        let before = events.first().map_or(last_seq, |e| e.seq.saturating_sub(1));
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !g.valid || g.upto != before || dropped {
            // A commit this buffer did not see (or one that deleted rows):
            // start over after it.
            g.reset(before);
        }
        if dropped {
            g.reset(last_seq);
            return;
        }
        for e in events {
            g.bytes += e.payload.len();
            g.events.push_back(e);
        }
        g.upto = last_seq;
        while g.events.len() > MAX_EVENTS || g.bytes > MAX_BYTES {
            let Some(old) = g.events.pop_front() else {
                break;
            };
            g.bytes -= old.payload.len();
            g.from = old.seq;
        }
    }

    /// Forgets everything (the store changed in a way the writer did not
    /// record here).
    pub fn clear(&self) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.valid = false;
        g.events.clear();
        g.bytes = 0;
    }

    /// Events with `seq > after`, oldest first, at most `limit`, as SQLite
    /// would return them; `None` when the buffer does not cover `after`.
    pub fn read_after(&self, after: u64, limit: usize) -> Option<Vec<StoredEvent>> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !g.valid || after < g.from || after > g.upto {
            return None;
        }
        // Seqs ascend: skip to the first one above `after`.
        let start = g.events.partition_point(|e| e.seq <= after);
        Some(g.events.range(start..).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("g:s:{seq}"),
            event_type: "arrived".into(),
            event_utc_ms: 0,
            payload: "{}".into(),
        }
    }

    fn seqs(v: Option<Vec<StoredEvent>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|e| e.seq).collect())
    }

    #[test]
    fn answers_only_inside_the_commits_it_saw() {
        let r = RecentCommits::new();
        assert_eq!(seqs(r.read_after(0, 10)), None, "nothing seen yet");
        r.push(10, false, Vec::new());
        r.push(13, false, (11..=13).map(ev).collect());
        r.push(15, false, (14..=15).map(ev).collect());
        assert_eq!(seqs(r.read_after(10, 10)), Some(vec![11, 12, 13, 14, 15]));
        assert_eq!(seqs(r.read_after(12, 2)), Some(vec![13, 14]));
        assert_eq!(seqs(r.read_after(15, 10)), Some(vec![]), "all read");
        assert_eq!(seqs(r.read_after(9, 10)), None, "older than the buffer");
        assert_eq!(seqs(r.read_after(16, 10)), None, "newer than any commit");
    }

    #[test]
    fn a_commit_it_did_not_see_starts_it_over() {
        let r = RecentCommits::new();
        r.push(3, false, (1..=3).map(ev).collect());
        // Commit 4..=5 never pushed (e.g. written by another path).
        r.push(7, false, (6..=7).map(ev).collect());
        assert_eq!(seqs(r.read_after(3, 10)), None, "4 and 5 are unknown here");
        assert_eq!(seqs(r.read_after(5, 10)), Some(vec![6, 7]));
    }

    #[test]
    fn a_commit_that_dropped_rows_empties_it() {
        let r = RecentCommits::new();
        r.push(3, false, (1..=3).map(ev).collect());
        r.push(5, true, (4..=5).map(ev).collect());
        assert_eq!(seqs(r.read_after(0, 10)), None);
        assert_eq!(seqs(r.read_after(3, 10)), None);
        assert_eq!(seqs(r.read_after(5, 10)), Some(vec![]));
        r.push(6, false, vec![ev(6)]);
        assert_eq!(seqs(r.read_after(5, 10)), Some(vec![6]));
    }

    #[test]
    fn gaps_inside_a_commit_are_answered_as_sqlite_would() {
        // Seqs with no row (none today, but the reader must not care).
        let r = RecentCommits::new();
        r.push(6, false, vec![ev(1), ev(2), ev(5), ev(6)]);
        assert_eq!(seqs(r.read_after(2, 10)), Some(vec![5, 6]));
        assert_eq!(seqs(r.read_after(3, 1)), Some(vec![5]));
    }

    #[test]
    fn the_oldest_events_go_when_it_is_full() {
        let r = RecentCommits::new();
        let n = MAX_EVENTS as u64 + 10;
        r.push(n, false, (1..=n).map(ev).collect());
        assert_eq!(seqs(r.read_after(0, 1)), None);
        assert_eq!(seqs(r.read_after(9, 1)), None);
        assert_eq!(seqs(r.read_after(10, 1)), Some(vec![11]));
        r.clear();
        assert_eq!(seqs(r.read_after(n, 1)), None, "cleared");
    }
}
