//! Master-data benchmarks (BENCHMARKS.md, "Master data"):
//! 1. verdict lookup per event with 10 million commissioned serials and
//!    100,000 blocked ranges (p50/p99/max), against a naive `HashSet` lookup
//!    of the same serials in the same run, for two shapes: `runs` (runs of
//!    100) and `random` (10M isolated serials over SGTIN-96's serial space,
//!    the index's worst case);
//! 2. memory the index holds (its heap, and RSS before/after), against the
//!    naive set;
//! 3. applying a 10-million-serial dataset through the store writer while
//!    1,000 single-event requests per second flow: the longest request ->
//!    commit wait during the apply, against the same load without an apply,
//!    and the apply time (parse + index, store).
//!
//! `cargo bench -p tracegate --bench masterdata` (optionally with
//! `-- lookup`, `-- apply`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tracegate::masterdata::format::{build, Scope};
use tracegate::masterdata::index::{Checks, IndexBuilder, Subject};
use tracegate::masterdata::records::parse_payload;
use tracegate::masterdata::service::{Active, Dataset};
use tracegate::store::masterdata::MasterdataJob;
use tracegate::store::{spawn_writer, EventDraft, FullPolicy, Store, StoreConfig, WriteRequest};

const GTINS: [&str; 4] = [
    "09506000134352",
    "00614141123452",
    "04012345000009",
    "08712345678906",
];
const SERIALS: u64 = 10_000_000;
const RUN: u64 = 100;
const BLOCKED: u64 = 100_000;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// 10M serials in runs of 100 (with gaps of 100) over four GTINs, 100k
/// blocked ranges of 1-50 serials, a market rule per GTIN: JSON Lines.
fn payload_ranges() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = String::new();
    let per_gtin = SERIALS / GTINS.len() as u64;
    for g in GTINS {
        let mut start = 1;
        for _ in 0..per_gtin / RUN {
            out += &format!(
                "{{\"t\":\"commissioned\",\"gtin\":\"{g}\",\"from\":{start},\"to\":{}}}\n",
                start + RUN - 1
            );
            start += 2 * RUN;
        }
        out += &format!("{{\"t\":\"market\",\"gtin\":\"{g}\",\"markets\":[\"DE\",\"AT\"]}}\n");
    }
    for _ in 0..BLOCKED {
        let g = GTINS[rng.gen_range(0..GTINS.len())];
        let a = rng.gen_range(1..2 * per_gtin);
        out += &format!(
            "{{\"t\":\"blocked\",\"gtin\":\"{g}\",\"from\":{a},\"to\":{},\"reason\":\"stolen\"}}\n",
            a + rng.gen_range(0..50)
        );
    }
    out.into_bytes()
}

/// The same 10M serials listed one by one (`serials` arrays of 1,000): the
/// worst case for transfer and apply.
fn payload_lists() -> Vec<u8> {
    let mut out = String::with_capacity(120 << 20);
    let per_gtin = SERIALS / GTINS.len() as u64;
    for g in GTINS {
        let mut start = 1;
        let mut list = Vec::with_capacity(1000);
        for _ in 0..per_gtin / RUN {
            for s in start..start + RUN {
                list.push(format!("\"{s}\""));
                if list.len() == 1000 {
                    out += &format!(
                        "{{\"t\":\"commissioned\",\"gtin\":\"{g}\",\"serials\":[{}]}}\n",
                        list.join(",")
                    );
                    list.clear();
                }
            }
            start += 2 * RUN;
        }
    }
    out.into_bytes()
}

/// One dataset holding what `b` collected.
fn active_of_index(b: IndexBuilder) -> Active {
    Active {
        datasets: vec![std::sync::Arc::new(Dataset {
            name: "bench".into(),
            version: 1,
            applied_utc_ms: 0,
            index: b.finish(),
        })],
    }
}

fn active_of(payload: &[u8]) -> Active {
    let mut b = IndexBuilder::default();
    parse_payload(payload, |r| b.add(r)).unwrap();
    active_of_index(b)
}

fn pct(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

/// The commissioned serials of the random shape (`.ci/masterdata-rss.py
/// --shape random`): per GTIN 2.5M distinct serials over SGTIN-96's 38-bit
/// serial space, one at a random place in each stride of 2^38 / 2.5M, so
/// no two are adjacent: the index's worst case.
fn random_serials() -> Vec<Vec<u64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let per_gtin = SERIALS / GTINS.len() as u64;
    let stride = (1u64 << 38) / per_gtin;
    GTINS
        .iter()
        .map(|_| {
            (0..per_gtin)
                .map(|i| i * stride + 1 + rng.gen_range(0..stride - 1))
                .collect()
        })
        .collect()
}

/// The random shape's index: the serials as `serials` lists of 1,000 (the
/// records the parser would give for that payload, without the JSON), the
/// same 100,000 blocked ranges (over the 38-bit space) and market rules as
/// `payload_ranges`.
fn active_random(serials: &[Vec<u64>]) -> Active {
    use tracegate::event::BlockReason;
    use tracegate::masterdata::records::{parse_gtin, Record, Serial, Serials};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut b = IndexBuilder::default();
    for (g, list) in GTINS.iter().zip(serials) {
        let gtin = parse_gtin(g).unwrap();
        for part in list.chunks(1000) {
            b.add(Record::Commissioned {
                gtin,
                serials: Serials::List(part.iter().map(|&n| Serial::Num(n)).collect()),
            });
        }
        b.add(Record::Market {
            gtin,
            serials: Serials::All,
            markets: vec!["DE".into(), "AT".into()],
        });
    }
    for _ in 0..BLOCKED {
        let gtin = parse_gtin(GTINS[rng.gen_range(0..GTINS.len())]).unwrap();
        let a = rng.gen_range(1..1u64 << 38);
        b.add(Record::Blocked {
            gtin,
            serials: Serials::Range(a, a + rng.gen_range(0..50)),
            reason: BlockReason::Stolen,
        });
    }
    active_of_index(b)
}

fn lookup() {
    lookup_shape("runs");
    lookup_shape("random");
}

/// Lookup latency and index memory for one shape (`runs`: 100,000 runs of
/// 100; `random`: 10M isolated serials), each with 100,000 blocked ranges;
/// then the naive `HashSet` of the same serials as the baseline.
fn lookup_shape(shape: &str) {
    let random = (shape == "random").then(random_serials);
    let per_gtin = SERIALS / GTINS.len() as u64;
    // Half the probes commissioned (for runs, about half of 1..2*per_gtin
    // is; for random, a listed serial or any number of the 38-bit space).
    let probes: Vec<(usize, String)> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        (0..1_000_000)
            .map(|k| {
                let g = rng.gen_range(0..GTINS.len());
                let s = match &random {
                    None => rng.gen_range(1..2 * per_gtin),
                    Some(r) if k % 2 == 0 => r[g][rng.gen_range(0..r[g].len())],
                    Some(_) => rng.gen_range(1..1u64 << 38),
                };
                (g, s.to_string())
            })
            .collect()
    };
    // RSS before the payload exists; after the index is built and the
    // payload dropped (large buffers go back to the OS).
    let rss0 = rss_kib();
    let t = Instant::now();
    let active = match &random {
        None => {
            let payload = payload_ranges();
            let a = active_of(&payload);
            drop(payload);
            a
        }
        Some(r) => active_random(r),
    };
    let build_s = t.elapsed().as_secs_f64();
    let rss1 = rss_kib();
    let index = &active.datasets[0].index;
    let mut times = Vec::with_capacity(probes.len());
    let mut flags = Vec::new();
    let mut flagged = 0u64;
    for (g, s) in &probes {
        let subject = Subject {
            gtin: Some(GTINS[*g]),
            serial: Some(s),
            ..Subject::default()
        };
        flags.clear();
        let t = Instant::now();
        let d = active.check(&subject, "dock", Checks::ALL, Some("DE"), &mut flags);
        times.push(t.elapsed().as_nanos() as f64 / 1000.0);
        flagged += u64::from(!flags.is_empty() || d.is_some());
    }
    let (p50, p99, max) = pct(times);
    println!("[{shape}] index: {:?}", index.counts());
    println!("[{shape}] lookup (Active::check, all checks): p50 {p50:.2} us  p99 {p99:.2} us  max {max:.1} us  ({flagged} of 1M flagged); build {build_s:.2} s");
    println!(
        "[{shape}] index heap {:.1} MiB (commissioned serials {:.1} MiB); RSS +{:.1} MiB",
        index.heap_bytes() as f64 / 1048576.0,
        index.commissioned_bytes() as f64 / 1048576.0,
        rss1.saturating_sub(rss0) as f64 / 1024.0
    );
    // Baseline: a naive set of every (GTIN, serial).
    let rss2 = rss_kib();
    let mut naive: HashSet<(u64, u64)> = HashSet::new();
    match &random {
        None => {
            for g in 0..GTINS.len() as u64 {
                let mut start = 1;
                for _ in 0..per_gtin / RUN {
                    naive.extend((start..start + RUN).map(|s| (g, s)));
                    start += 2 * RUN;
                }
            }
        }
        Some(r) => {
            for (g, list) in r.iter().enumerate() {
                naive.extend(list.iter().map(|&s| (g as u64, s)));
            }
        }
    }
    let rss3 = rss_kib();
    let mut times = Vec::with_capacity(probes.len());
    let mut hits = 0u64;
    for (g, s) in &probes {
        let t = Instant::now();
        let n: u64 = s.parse().unwrap_or(0);
        hits += u64::from(naive.contains(&(*g as u64, n)));
        times.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let (b50, b99, bmax) = pct(times);
    println!("[{shape}] baseline HashSet<(gtin, serial)> of the 10M serials: p50 {b50:.2} us  p99 {b99:.2} us  max {bmax:.1} us ({hits} hits); RSS +{:.1} MiB", rss3.saturating_sub(rss2) as f64 / 1024.0);
    println!(
        "[{shape}] ratio p99 index/baseline: {:.2}; RSS index/baseline: {:.4}",
        p99 / b99,
        (rss1.saturating_sub(rss0)) as f64 / (rss3.saturating_sub(rss2)).max(1) as f64
    );
    drop(naive);
    drop(active);
    drop(random);
    if shape != "runs" {
        return;
    }

    // The listed worst case: same serials, 10M entries one by one.
    let rss4 = rss_kib();
    let lists = payload_lists();
    let t = Instant::now();
    let a2 = active_of(&lists);
    let build_s = t.elapsed().as_secs_f64();
    let mib = lists.len() >> 20;
    drop(lists);
    let rss5 = rss_kib();
    println!(
        "listed 10M serials ({mib} MiB payload): parse + index {build_s:.2} s, index RSS +{} KiB, {:?}",
        rss5.saturating_sub(rss4),
        a2.datasets[0].index.counts()
    );
}

fn store_config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("events.db"),
        max_bytes: 512 << 20,
        full_policy: FullPolicy::DropOldest,
        commit_interval_ms: 10,
        commit_age_ms: 0,
        commit_max_events: 500,
        retention_secs: 7 * 24 * 3600,
    }
}

fn draft(i: u64) -> EventDraft {
    let epc = hex::decode(format!("3074257BF7194E40{:08X}", i as u32)).unwrap();
    EventDraft::new(tracegate::event::Event::sample_arrival(
        "gw",
        "site",
        "dock",
        &epc,
        1_765_000_000_000 + i as i64,
    ))
}

/// Longest and p99 request -> commit wait (ms) at 1,000 requests/s for
/// `secs`, with `apply` (a dataset) sent to the writer after 1 s. Returns
/// (p99, max, apply time).
fn paced(apply: Option<&[u8]>, secs: u64) -> (f64, f64, Option<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_config(dir.path());
    let mut store = Store::open(&cfg, "gw").unwrap();
    store.masterdata_load().unwrap();
    let jobs = store.masterdata_channel();
    let (tx, rx) = mpsc::channel(4096);
    let w = spawn_writer(store, rx, None, None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let built = apply.map(|p| {
        build(
            &SigningKey::from_bytes(&[1; 32]),
            "bench",
            1,
            Scope::default(),
            "",
            p,
            256 * 1024,
        )
        .unwrap()
    });
    let (lat, took) = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut waits = Vec::new();
        let mut reply: Option<(Instant, oneshot::Receiver<_>)> = None;
        let mut built = built;
        for i in 0..1000 * secs {
            tick.tick().await;
            if i == 1000 {
                if let Some(b) = built.take() {
                    let (rtx, rrx) = oneshot::channel();
                    jobs.send(MasterdataJob {
                        name: "bench".into(),
                        version: 1,
                        manifest: b.frame,
                        chunks: b.chunks,
                        reply: rtx,
                    })
                    .await
                    .unwrap();
                    reply = Some((Instant::now(), rrx));
                }
            }
            let (ack, acked) = tracegate_drivers::CommitAck::pair();
            let sent = Instant::now();
            tx.send(WriteRequest {
                drafts: vec![draft(i)],
                ack: Some(ack),
            })
            .await
            .unwrap();
            waits.push(tokio::spawn(async move {
                acked.await.unwrap();
                sent.elapsed().as_secs_f64() * 1000.0
            }));
        }
        let took = match reply {
            Some((t0, r)) => {
                r.await.unwrap().unwrap();
                Some(t0.elapsed())
            }
            None => None,
        };
        let mut lat = Vec::new();
        for w in waits {
            lat.push(w.await.unwrap());
        }
        (lat, took)
    });
    drop(tx);
    drop(w.watermark);
    w.handle.join().unwrap();
    let (_, p99, max) = pct(lat);
    (p99, max, took)
}

fn apply() {
    let lists = payload_lists();
    let t = Instant::now();
    let a = active_of(&lists);
    let parse = t.elapsed();
    drop(a);
    let (b99, bmax, _) = paced(None, 12);
    println!("1,000 requests/s, no apply: request->commit p99 {b99:.1} ms, max {bmax:.1} ms");
    let (p99, max, took) = paced(Some(&lists), 12);
    let took = took.unwrap();
    println!(
        "1,000 requests/s while applying 10M listed serials ({} MiB, {} chunks of 256 KiB): p99 {p99:.1} ms, max {max:.1} ms; store apply {:.2} s, parse + index {:.2} s (off the writer); max ratio to baseline {:.2}",
        lists.len() >> 20,
        lists.len().div_ceil(256 * 1024),
        took.as_secs_f64(),
        parse.as_secs_f64(),
        max / bmax
    );
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!(
        "machine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    if filter.as_deref().is_none_or(|f| "lookup".contains(f)) {
        lookup();
    }
    if filter.as_deref().is_none_or(|f| "apply".contains(f)) {
        apply();
    }
}
