//! Dedup throughput: raw reads/s through the engine with 10,000 tags in the
//! field, the way the pipeline feeds it (one read at a time, a tick every
//! 100 ms of simulated time). Time is simulated, so the figure is the engine's
//! own cost, not the clock's.
//!
//! cargo bench -p tracegate --bench dedup

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use tracegate::dedup::{Dedup, PointSettings};
use tracegate::dedup::{DedupConfig, DedupKey};
use tracegate_drivers::{HostTime, RawRead};

const TAGS: u64 = 10_000;
const READS: u64 = 200_000;

fn reads() -> Vec<RawRead> {
    let reader: Arc<str> = Arc::from("bench");
    // A pseudo-random but fixed order over the population, 2 µs apart
    // (500,000 reads/s of simulated time: every tag is read every ~20 ms).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..READS)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let serial = x % TAGS;
            RawRead {
                reader: reader.clone(),
                antenna: (1 + (x >> 32) % 4) as u8,
                epc: tracegate_drivers::sim::sgtin96(614_141, 812_345, serial).to_vec(),
                tid: None,
                pc: Some(0x3000),
                rssi_dbm: Some(-60 - ((x >> 40) % 20) as i16),
                frequency_khz: Some(915_250),
                phase_deg: None,
                reader_timestamp_ms: None,
                host: HostTime {
                    mono_ms: i / 500,
                    utc_ms: 1_700_000_000_000 + (i / 500) as i64,
                    clock_synced: true,
                },
            }
        })
        .collect()
}

fn config() -> DedupConfig {
    DedupConfig {
        key: DedupKey::Epc,
        min_reads: std::num::NonZeroU32::new(2).unwrap(),
        arrival_window: Duration::from_millis(1_000),
        departure_timeout: Duration::from_millis(3_000),
        report_interval: None,
        max_tags: std::num::NonZeroUsize::new(100_000).unwrap(),
    }
}

fn bench(c: &mut Criterion) {
    let input = reads();
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(READS));
    group.sample_size(20);
    group.bench_function("10k_tags_in_field", |b| {
        b.iter_batched(
            || {
                // Warm state: every tag already tracked and arrived, as in a
                // busy portal.
                let mut d = Dedup::new(config(), vec![PointSettings::default()]);
                let mut out = Vec::new();
                for r in input.iter().take(50_000) {
                    d.observe(0, r, &mut out);
                }
                d
            },
            |mut d| {
                let mut out = Vec::with_capacity(1024);
                let mut next_tick = 0;
                for r in &input {
                    d.observe(0, r, &mut out);
                    if r.host.mono_ms >= next_tick {
                        d.tick(r.host, &mut out);
                        next_tick = r.host.mono_ms + 100;
                        out.clear();
                    }
                }
                d
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The technician's page taps the raw reads: what that costs per batch of
/// reads while nobody has the page open, next to the dedup work the same
/// batches need (the baseline, in the same run).
fn read_tap_idle(c: &mut Criterion) {
    const BATCH: usize = 50;
    let input = reads();
    let batches: Vec<Vec<RawRead>> = input.chunks(BATCH).map(<[RawRead]>::to_vec).collect();
    let mut group = c.benchmark_group("read_tap_idle");
    group.throughput(Throughput::Elements(READS));
    group.sample_size(20);
    let tap = tracegate::read_tap::ReadTap::new();
    for with_tap in [false, true] {
        let name = if with_tap {
            "dedup_then_idle_tap"
        } else {
            "dedup_only"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let d = Dedup::new(config(), vec![PointSettings::default()]);
                    (d, batches.clone())
                },
                |(mut d, batches)| {
                    let mut out = Vec::with_capacity(1024);
                    for batch in batches {
                        for r in &batch {
                            d.observe(0, r, &mut out);
                        }
                        out.clear();
                        if with_tap {
                            tap.offer(batch);
                        } else {
                            drop(batch);
                        }
                    }
                    d
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// The same work as [`read_tap_idle`], once, for an instruction counter
/// (wall time on a shared machine is too noisy to see an atomic load):
///
/// ```text
/// TRACEGATE_BENCH_ONCE=dedup_only valgrind --tool=callgrind \
///     --toggle-collect='*read_tap_work*' target/release/deps/dedup-<hash>
/// ```
///
/// and again with `dedup_then_idle_tap`; only `read_tap_work` is counted,
/// so building the input is not.
fn read_tap_once(mode: &str) {
    const BATCH: usize = 50;
    let with_tap = match mode {
        "dedup_only" => false,
        "dedup_then_idle_tap" => true,
        other => panic!("TRACEGATE_BENCH_ONCE={other}: dedup_only or dedup_then_idle_tap"),
    };
    let batches: Vec<Vec<RawRead>> = reads().chunks(BATCH).map(<[RawRead]>::to_vec).collect();
    let tap = tracegate::read_tap::ReadTap::new();
    let d = Dedup::new(config(), vec![PointSettings::default()]);
    let d = read_tap_work(d, batches, with_tap.then_some(&tap));
    std::hint::black_box(d);
}

#[inline(never)]
fn read_tap_work(
    mut d: Dedup,
    batches: Vec<Vec<RawRead>>,
    tap: Option<&tracegate::read_tap::ReadTap>,
) -> Dedup {
    let mut out = Vec::with_capacity(1024);
    for batch in batches {
        for r in &batch {
            d.observe(0, r, &mut out);
        }
        out.clear();
        match tap {
            Some(tap) => tap.offer(batch),
            None => drop(batch),
        }
    }
    d
}

criterion_group!(benches, bench, read_tap_idle);

fn main() {
    if let Ok(mode) = std::env::var("TRACEGATE_BENCH_ONCE") {
        read_tap_once(&mode);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
