use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::masterdata::records::{parse_payload, Serials};

const GTIN: u64 = 9_506_000_134_352;
const GTIN_S: &str = "09506000134352";

/// Small domain so random ranges overlap, touch and nest often.
fn ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..200, 0u64..20), 0..40)
        .prop_map(|v| v.into_iter().map(|(a, len)| (a, a + len)).collect())
}

fn reason() -> impl Strategy<Value = BlockReason> {
    proptest::sample::select(vec![
        BlockReason::Other,
        BlockReason::Destroyed,
        BlockReason::Revoked,
        BlockReason::Recalled,
        BlockReason::Stolen,
    ])
}

proptest! {
    #[test]
    fn range_set_agrees_with_a_naive_set(runs in ranges()) {
        let naive: BTreeSet<u64> = runs.iter().flat_map(|&(a, z)| a..=z).collect();
        let set = RangeSet::from_ranges(runs);
        for x in 0..240 {
            prop_assert_eq!(set.contains(x), naive.contains(&x), "x = {}", x);
        }
        prop_assert_eq!(set.count(), naive.len() as u64);
        // Runs are disjoint and not adjacent: none could be merged further.
        let runs: Vec<_> = set.iter_runs().collect();
        for w in runs.windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0);
        }
    }

    /// Hundreds of runs (several compressed blocks), gaps from 2 to the
    /// whole u64 range, lengths from 1 to huge: every run's ends and the
    /// numbers around them answer as a plain sorted list of runs does.
    #[test]
    fn compressed_range_set_agrees_with_its_runs_across_blocks(
        runs in proptest::collection::vec(
            (any::<u64>(), prop_oneof![Just(0u64), 0u64..5, any::<u64>()]),
            0..600,
        )
    ) {
        let runs: Vec<(u64, u64)> = runs
            .into_iter()
            .map(|(a, len)| (a, a.saturating_add(len)))
            .collect();
        let set = RangeSet::from_ranges(runs.clone());
        // The merged runs, the plain way.
        let mut sorted = runs.clone();
        sorted.sort_unstable();
        let mut plain: Vec<(u64, u64)> = Vec::new();
        for (a, z) in sorted {
            match plain.last_mut() {
                Some(l) if a <= l.1.saturating_add(1) => l.1 = l.1.max(z),
                _ => plain.push((a, z)),
            }
        }
        prop_assert_eq!(set.iter_runs().collect::<Vec<_>>(), plain.clone());
        prop_assert_eq!(set.runs(), plain.len());
        let inside = |x: u64| plain.iter().any(|&(a, z)| a <= x && x <= z);
        for &(a, z) in &plain {
            for x in [a.wrapping_sub(1), a, a.saturating_add(1), z.saturating_sub(1), z, z.wrapping_add(1)] {
                prop_assert_eq!(set.contains(x), inside(x), "x = {}", x);
            }
        }
    }

    /// Folding runs into a set in several steps (as the builder does every
    /// `COMPACT_RUNS`) gives the set of all of them at once.
    #[test]
    fn a_set_built_in_steps_equals_the_set_built_at_once(
        parts in proptest::collection::vec(ranges(), 0..5)
    ) {
        let all: Vec<(u64, u64)> = parts.iter().flatten().copied().collect();
        let mut stepwise = RangeSet::default();
        for p in parts {
            stepwise = stepwise.union(p);
        }
        prop_assert_eq!(
            stepwise.iter_runs().collect::<Vec<_>>(),
            RangeSet::from_ranges(all).iter_runs().collect::<Vec<_>>()
        );
    }

    #[test]
    fn blocked_ranges_agree_with_a_naive_map_and_the_strongest_reason_wins(
        runs in proptest::collection::vec(((0u64..200, 0u64..20), reason()), 0..40)
    ) {
        let mut naive: BTreeMap<u64, BlockReason> = BTreeMap::new();
        let mut b = IndexBuilder::default();
        for ((a, len), r) in &runs {
            for x in *a..=a + len {
                let e = naive.entry(x).or_insert(*r);
                *e = (*e).max(*r);
            }
            b.add(Record::Blocked { gtin: GTIN, serials: Serials::Range(*a, a + len), reason: *r });
        }
        let idx = b.finish();
        for x in 0..240 {
            prop_assert_eq!(idx.blocked_reason(GTIN, SerialRef::Num(x)), naive.get(&x).copied());
        }
        prop_assert_eq!(idx.blocked_reason(GTIN + 1, SerialRef::Num(1)), None);
    }

    #[test]
    fn market_rules_agree_with_a_naive_union_of_covering_rules(
        rules in proptest::collection::vec(
            (proptest::option::of((0u64..100, 0u64..30)), proptest::collection::btree_set(0u8..4, 1..3)),
            0..12)
    ) {
        let names = ["DE", "AT", "FR", "US"];
        let mut b = IndexBuilder::default();
        type Rule = (Option<(u64, u64)>, BTreeSet<u8>);
        let mut naive: Vec<Rule> = Vec::new();
        for (range, markets) in &rules {
            let serials = match range {
                Some((a, len)) => Serials::Range(*a, a + len),
                None => Serials::All,
            };
            b.add(Record::Market {
                gtin: GTIN,
                serials,
                markets: markets.iter().map(|&m| names[m as usize].to_owned()).collect(),
            });
            naive.push((range.map(|(a, len)| (a, a + len)), markets.clone()));
        }
        let idx = b.finish();
        for x in 0..140 {
            let covering: Vec<&BTreeSet<u8>> = naive
                .iter()
                .filter(|(r, _)| r.is_none_or(|(a, z)| (a..=z).contains(&x)))
                .map(|(_, m)| m)
                .collect();
            for (m, name) in names.iter().enumerate() {
                let want = (!covering.is_empty()).then(|| covering.iter().any(|s| s.contains(&(m as u8))));
                prop_assert_eq!(idx.market_allows(GTIN, SerialRef::Num(x), name), want, "x {} {}", x, name);
            }
        }
    }

    #[test]
    fn commissioned_lists_and_ranges_agree_with_a_naive_set(
        runs in ranges(),
        singles in proptest::collection::vec(0u64..240, 0..30),
        texts in proptest::collection::btree_set("[A-Z0-9]{1,4}", 0..10),
    ) {
        let mut b = IndexBuilder::default();
        let mut naive: BTreeSet<String> = BTreeSet::new();
        for (a, z) in &runs {
            b.add(Record::Commissioned { gtin: GTIN, serials: Serials::Range(*a, *z) });
            naive.extend((*a..=*z).map(|x| x.to_string()));
        }
        let list: Vec<Serial> = singles
            .iter()
            .map(|x| x.to_string())
            .chain(texts.iter().cloned())
            .map(|s| { naive.insert(s.clone()); Serial::parse(&s) })
            .collect();
        b.add(Record::Commissioned { gtin: GTIN, serials: Serials::List(list) });
        let idx = b.finish();
        let probes: Vec<String> = (0..250u64)
            .map(|x| x.to_string())
            .chain(texts.iter().cloned())
            .chain(["0012".to_owned(), "ZZZZZ".to_owned()])
            .collect();
        for p in probes {
            prop_assert_eq!(idx.is_commissioned(GTIN, SerialRef::parse(&p)), naive.contains(&p), "{}", p);
        }
    }
}

#[test]
fn a_range_ending_at_the_largest_serial_is_kept() {
    let m = RangeMap::flatten(vec![(5, u64::MAX, 1u8)], |a| *a.keys().next().unwrap_or(&0));
    assert_eq!(m.get(u64::MAX), Some(&1));
    assert_eq!(m.get(4), None);
    let s = RangeSet::from_ranges(vec![(u64::MAX, u64::MAX), (0, 0)]);
    assert!(s.contains(u64::MAX) && s.contains(0) && !s.contains(1));
    let all = RangeSet::from_ranges(vec![(0, u64::MAX)]);
    assert!(all.contains(0) && all.contains(u64::MAX) && all.count() == u64::MAX);
}

#[test]
fn unrelated_serials_cost_a_few_bytes_each() {
    // Serials as sparse as 2.5 million per GTIN spread over SGTIN-96's
    // 38-bit serial space (gaps of ~110,000; 10 million over four GTINs):
    // Elias-Fano's ~18 bits plus block heads and offsets, not 16 bytes a
    // run.
    let step = (1u64 << 38) / 2_500_000;
    let runs: Vec<(u64, u64)> = (0..100_000u64)
        .map(|i| (i * step + 1, i * step + 1))
        .collect();
    let set = RangeSet::from_ranges(runs);
    assert_eq!(set.runs(), 100_000);
    assert!(set.heap_bytes() < 100_000 * 3, "{} bytes", set.heap_bytes());
    assert!(set.contains(step * 500 + 1) && !set.contains(step * 500 + 2));
}

fn index(payload: &str) -> MasterIndex {
    let mut b = IndexBuilder::default();
    parse_payload(payload.as_bytes(), |r| b.add(r)).unwrap();
    b.finish()
}

fn flags_of(idx: &MasterIndex, s: Subject, rp: &str) -> (Vec<Flag>, Option<MasterdataDetail>) {
    let mut flags = Vec::new();
    let d = idx.check(&s, rp, Checks::ALL, Some("DE"), &mut flags);
    (flags, d)
}

#[test]
fn every_check_raises_its_flag() {
    let idx = index(&format!(
        "{{\"t\":\"commissioned\",\"gtin\":\"{GTIN_S}\",\"from\":1,\"to\":100}}\n\
         {{\"t\":\"blocked\",\"gtin\":\"{GTIN_S}\",\"from\":50,\"to\":60,\"reason\":\"recalled\"}}\n\
         {{\"t\":\"market\",\"gtin\":\"{GTIN_S}\",\"from\":90,\"to\":100,\"markets\":[\"US\"]}}\n\
         {{\"t\":\"nfc\",\"uid\":\"04A1B2C3D4E5F6\",\"gtin\":\"{GTIN_S}\",\"serial\":\"7\"}}\n\
         {{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"gtin\":\"{GTIN_S}\",\"from\":1,\"to\":10}}\n"
    ));
    let item = |serial| Subject {
        gtin: Some(GTIN_S),
        serial: Some(serial),
        ..Subject::default()
    };
    assert_eq!(flags_of(&idx, item("5"), "dock"), (vec![], None));
    assert_eq!(flags_of(&idx, item("5"), "other").0, vec![]);
    assert_eq!(
        flags_of(&idx, item("500"), "other").0,
        vec![Flag::UnknownSerial]
    );
    let (f, d) = flags_of(&idx, item("55"), "other");
    assert_eq!(f, vec![Flag::Blocked]);
    assert_eq!(d.unwrap().blocked_reason, Some(BlockReason::Recalled));
    assert_eq!(
        flags_of(&idx, item("95"), "other").0,
        vec![Flag::WrongMarket]
    );
    assert_eq!(
        flags_of(&idx, item("11"), "dock").0,
        vec![Flag::NotExpected]
    );
    let tap = Subject {
        uid: Some(&[0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
        ..item("8")
    };
    let (f, d) = flags_of(&idx, tap, "other");
    assert_eq!(f, vec![Flag::SerialMismatch]);
    let d = d.unwrap();
    assert_eq!(
        (d.bound_gtin.as_deref(), d.bound_serial.as_deref()),
        (Some(GTIN_S), Some("7"))
    );
    let tap_ok = Subject {
        uid: Some(&[0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
        ..item("7")
    };
    assert_eq!(flags_of(&idx, tap_ok, "other").0, vec![]);
    // Checks that are off raise nothing.
    let mut flags = Vec::new();
    idx.check(&item("55"), "dock", Checks::NONE, Some("DE"), &mut flags);
    assert!(flags.is_empty());
}

#[test]
fn without_commissioned_data_no_serial_is_unknown_and_sscc_can_be_expected() {
    let idx = index(
        "{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"sscc\":\"106141412345678908\"}\n",
    );
    let pallet = Subject {
        sscc: sscc_of_element_string("(00)106141412345678908"),
        ..Subject::default()
    };
    assert_eq!(flags_of(&idx, pallet, "dock").0, vec![]);
    let other = Subject {
        gtin: Some(GTIN_S),
        serial: Some("1"),
        ..Subject::default()
    };
    assert_eq!(flags_of(&idx, other, "dock").0, vec![Flag::NotExpected]);
    assert_eq!(idx.expected("dock").map(Expected::count), Some(1));
}
