//! The page's live view of raw reads, sans-IO: reads go in as they come,
//! and every flush (the viewer's tick, time passed in) gives the tags that
//! changed since the last one and each antenna's read rate and RSSI over
//! the interval. One aggregator per viewer, so a flush is a diff for that
//! viewer only.
//!
//! Memory is bounded: at most [`MAX_TAGS`] tags (the least recently read is
//! forgotten first) and one counter per antenna seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tracegate_drivers::RawRead;

/// Tags the live list keeps: "the last few hundred reads collapsed per tag".
pub const MAX_TAGS: usize = 300;

/// One row of the live tag list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagRow {
    /// Stable key of the row: reader and EPC.
    pub key: String,
    /// GS1 pure identity (or `urn:epc:raw:…`).
    pub identity: String,
    pub epc: String,
    pub reader: Arc<str>,
    /// Read points covering the antenna of the last read.
    pub read_points: Vec<String>,
    pub antenna: u8,
    pub rssi_dbm: Option<i16>,
    pub peak_rssi_dbm: Option<i16>,
    pub count: u64,
    pub last_seen_utc_ms: i64,
}

/// One antenna over the last flush interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AntennaRate {
    pub reader: Arc<str>,
    pub antenna: u8,
    pub reads_per_sec: f64,
    pub rssi_avg_dbm: Option<f64>,
    pub rssi_max_dbm: Option<i16>,
}

/// What one flush sends to the browser.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveUpdate {
    /// Rows that changed since the previous flush.
    pub tags: Vec<TagRow>,
    /// Every antenna known, also those without reads (their rate drops to 0).
    pub antennas: Vec<AntennaRate>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    reads: u64,
    rssi_sum: i64,
    rssi_n: u64,
    rssi_max: Option<i16>,
}

/// (reader, antenna) → the read points that cover it.
pub type Routes = HashMap<(Arc<str>, u8), Vec<String>>;

#[derive(Debug)]
pub struct LiveAggregator {
    routes: Routes,
    tags: HashMap<String, TagRow>,
    dirty: HashSet<String>,
    antennas: BTreeMap<(Arc<str>, u8), Window>,
    last_flush_mono_ms: u64,
}

impl LiveAggregator {
    /// Known antennas (from the routes) show from the first flush, before
    /// any read: the technician sees what is configured.
    pub fn new(routes: Routes, now_mono_ms: u64) -> Self {
        let antennas = routes
            .keys()
            .map(|k| (k.clone(), Window::default()))
            .collect();
        Self {
            routes,
            tags: HashMap::new(),
            dirty: HashSet::new(),
            antennas,
            last_flush_mono_ms: now_mono_ms,
        }
    }

    pub fn add(&mut self, reads: &[RawRead]) {
        for r in reads {
            let w = self
                .antennas
                .entry((r.reader.clone(), r.antenna))
                .or_default();
            w.reads += 1;
            if let Some(rssi) = r.rssi_dbm {
                w.rssi_sum += i64::from(rssi);
                w.rssi_n += 1;
                w.rssi_max = Some(w.rssi_max.map_or(rssi, |m| m.max(rssi)));
            }
            let epc = hex::encode_upper(&r.epc);
            let key = format!("{}/{epc}", r.reader);
            if !self.tags.contains_key(&key) && self.tags.len() >= MAX_TAGS {
                self.evict_oldest();
            }
            let read_points = self
                .routes
                .get(&(r.reader.clone(), r.antenna))
                .cloned()
                .unwrap_or_default();
            let row = self.tags.entry(key.clone()).or_insert_with(|| TagRow {
                key: key.clone(),
                identity: tracegate_gs1::decode_epc(&r.epc).pure_identity_uri,
                epc,
                reader: r.reader.clone(),
                read_points: Vec::new(),
                antenna: r.antenna,
                rssi_dbm: None,
                peak_rssi_dbm: None,
                count: 0,
                last_seen_utc_ms: r.host.utc_ms,
            });
            row.read_points = read_points;
            row.antenna = r.antenna;
            row.rssi_dbm = r.rssi_dbm;
            row.peak_rssi_dbm = match (row.peak_rssi_dbm, r.rssi_dbm) {
                (Some(p), Some(n)) => Some(p.max(n)),
                (p, n) => p.or(n),
            };
            row.count += 1;
            row.last_seen_utc_ms = row.last_seen_utc_ms.max(r.host.utc_ms);
            self.dirty.insert(key);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(oldest) = self
            .tags
            .values()
            .min_by_key(|t| t.last_seen_utc_ms)
            .map(|t| t.key.clone())
        {
            self.tags.remove(&oldest);
            self.dirty.remove(&oldest);
        }
    }

    /// The changes since the last flush; resets the antenna windows.
    pub fn flush(&mut self, now_mono_ms: u64) -> LiveUpdate {
        let secs = (now_mono_ms.saturating_sub(self.last_flush_mono_ms) as f64 / 1000.0).max(0.001);
        self.last_flush_mono_ms = now_mono_ms;
        let mut tags: Vec<TagRow> = self
            .dirty
            .drain()
            .filter_map(|k| self.tags.get(&k).cloned())
            .collect();
        tags.sort_by_key(|t| std::cmp::Reverse(t.last_seen_utc_ms));
        let antennas = self
            .antennas
            .iter_mut()
            .map(|((reader, antenna), w)| {
                let rate = AntennaRate {
                    reader: reader.clone(),
                    antenna: *antenna,
                    reads_per_sec: w.reads as f64 / secs,
                    rssi_avg_dbm: (w.rssi_n > 0).then(|| w.rssi_sum as f64 / w.rssi_n as f64),
                    rssi_max_dbm: w.rssi_max,
                };
                *w = Window::default();
                rate
            })
            .collect();
        LiveUpdate { tags, antennas }
    }

    /// Tags currently held (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tags.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tracegate_drivers::HostTime;

    fn read(reader: &str, antenna: u8, epc: &[u8], rssi: Option<i16>, utc_ms: i64) -> RawRead {
        RawRead {
            reader: reader.into(),
            antenna,
            epc: epc.to_vec(),
            tid: None,
            pc: None,
            rssi_dbm: rssi,
            frequency_khz: None,
            phase_deg: None,
            reader_timestamp_ms: None,
            host: HostTime {
                mono_ms: 0,
                utc_ms,
                clock_synced: true,
            },
        }
    }

    fn routes() -> Routes {
        let mut r = Routes::new();
        r.insert(("portal".into(), 1), vec!["door-7".into()]);
        r.insert(("portal".into(), 2), vec!["door-7".into()]);
        r
    }

    const SGTIN: [u8; 12] = [
        0x30, 0x74, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0x00, 0x00, 0x1A, 0x85,
    ];

    #[test]
    fn configured_antennas_show_before_any_read_with_a_zero_rate() {
        let mut a = LiveAggregator::new(routes(), 0);
        let u = a.flush(500);
        assert!(u.tags.is_empty());
        assert_eq!(u.antennas.len(), 2);
        assert!(u
            .antennas
            .iter()
            .all(|x| x.reads_per_sec == 0.0 && x.rssi_avg_dbm.is_none()));
    }

    #[test]
    fn reads_collapse_per_tag_with_rssi_now_peak_count_and_read_point() {
        let mut a = LiveAggregator::new(routes(), 0);
        a.add(&[
            read("portal", 1, &SGTIN, Some(-60), 10),
            read("portal", 2, &SGTIN, Some(-45), 20),
            read("portal", 2, &SGTIN, Some(-50), 30),
        ]);
        let u = a.flush(1000);
        assert_eq!(u.tags.len(), 1);
        let t = &u.tags[0];
        assert_eq!(t.identity, "urn:epc:id:sgtin:0614141.812345.6789");
        assert_eq!(
            (t.antenna, t.rssi_dbm, t.peak_rssi_dbm, t.count),
            (2, Some(-50), Some(-45), 3)
        );
        assert_eq!(t.read_points, vec!["door-7".to_owned()]);
        assert_eq!(t.last_seen_utc_ms, 30);
        let a2 = &u.antennas[1];
        assert_eq!(
            (a2.antenna, a2.reads_per_sec, a2.rssi_max_dbm),
            (2, 2.0, Some(-45))
        );
        assert_eq!(a2.rssi_avg_dbm, Some(-47.5));
        // Nothing new: no rows, rates back to zero.
        let u = a.flush(1500);
        assert!(u.tags.is_empty());
        assert!(u.antennas.iter().all(|x| x.reads_per_sec == 0.0));
    }

    proptest! {
        #[test]
        fn the_tag_table_never_exceeds_its_bound_and_keeps_the_newest(
            epcs in proptest::collection::vec(0u16..2000, 1..1500)
        ) {
            let mut a = LiveAggregator::new(routes(), 0);
            for (i, e) in epcs.iter().enumerate() {
                a.add(&[read("portal", 1, &e.to_be_bytes(), None, i as i64)]);
                prop_assert!(a.len() <= MAX_TAGS);
            }
            let last = epcs[epcs.len() - 1];
            let u = a.flush(100);
            prop_assert!(u.tags.len() <= MAX_TAGS);
            prop_assert!(u.tags.iter().any(|t| t.epc == hex::encode_upper(last.to_be_bytes())));
        }
    }
}
