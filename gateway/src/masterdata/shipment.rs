//! Pass verdicts against an expected shipment (sans-IO): given what a pass
//! (one read window at a door) saw and the read point's expected shipments,
//! say `complete`, or what is `missing` and what is `unexpected`.
//!
//! The pipeline calls [`evaluate_pass`] (through `verdict::Verdicts::judge`)
//! for every `pass` event with the identities of its tags.

use std::collections::BTreeSet;

use super::index::{MasterIndex, Subject};
use super::records::parse_gtin;

/// At most this many serials are listed in `missing` and `unexpected`
/// (the counts are always exact), so one pass event stays a bounded size.
pub const MAX_LISTED: usize = 1_000;

/// The verdict type lives with the event that carries it.
pub use crate::event::ShipmentVerdict as PassVerdict;

fn label(s: &Subject) -> String {
    match (s.sscc, s.gtin, s.serial) {
        (Some(sscc), _, _) => format!("(00){sscc}"),
        (None, Some(g), Some(ser)) => format!("(01){g}(21){ser}"),
        (None, Some(g), None) => format!("(01){g}"),
        _ => s
            .uid
            .map(|u| format!("uid:{}", hex::encode_upper(u)))
            .unwrap_or_else(|| "unidentified".to_owned()),
    }
}

/// Evaluates a pass at `read_point`. `None` when the read point has no
/// expected shipment (no verdict to give).
pub fn evaluate_pass(
    index: &MasterIndex,
    read_point: &str,
    seen: &[Subject],
) -> Option<PassVerdict> {
    let expected = index.expected(read_point)?;
    let mut hit: BTreeSet<String> = BTreeSet::new();
    let mut unexpected: BTreeSet<String> = BTreeSet::new();
    for s in seen {
        let l = label(s);
        let on_list =
            s.sscc.is_some_and(|x| expected.ssccs.contains(x))
                || match (s.gtin.and_then(parse_gtin), s.serial) {
                    (Some(g), Some(ser)) => expected.items.get(&g).is_some_and(|set| {
                        match super::records::canonical_number(ser) {
                            Some(n) => set.nums.contains(n),
                            None => set.text.contains(ser),
                        }
                    }),
                    _ => false,
                };
        if on_list {
            hit.insert(l);
        } else {
            unexpected.insert(l);
        }
    }
    let total = expected.count();
    let missing_count = total.saturating_sub(hit.len() as u64);
    // List missing items in order, skipping those seen; ranges are walked
    // only as far as the listing needs.
    let mut missing = Vec::new();
    let mut ssccs: Vec<&str> = expected.ssccs.iter().map(|s| &**s).collect();
    ssccs.sort_unstable();
    let mut gtins: Vec<&u64> = expected.items.keys().collect();
    gtins.sort_unstable();
    'list: {
        for s in ssccs {
            let l = format!("(00){s}");
            if !hit.contains(&l) {
                if missing.len() >= MAX_LISTED {
                    break 'list;
                }
                missing.push(l);
            }
        }
        for g in gtins {
            let Some(set) = expected.items.get(g) else {
                continue;
            };
            let mut text: Vec<&str> = set.text.iter().map(|t| &**t).collect();
            text.sort_unstable();
            let nums = set
                .nums
                .iter_runs()
                .flat_map(|(a, z)| a..=z)
                .map(|n| n.to_string());
            for ser in nums.chain(text.into_iter().map(str::to_owned)) {
                let l = format!("(01){g:014}(21){ser}");
                if !hit.contains(&l) {
                    if missing.len() >= MAX_LISTED {
                        break 'list;
                    }
                    missing.push(l);
                }
            }
        }
    }
    let unexpected_count = unexpected.len() as u64;
    Some(PassVerdict {
        complete: missing_count == 0 && unexpected_count == 0,
        missing_count,
        missing,
        unexpected_count,
        unexpected: unexpected.into_iter().take(MAX_LISTED).collect(),
        shipments: expected.shipments.iter().cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masterdata::index::IndexBuilder;
    use crate::masterdata::records::parse_payload;

    const G: &str = "09506000134352";

    fn index() -> MasterIndex {
        let payload = format!(
            "{{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"gtin\":\"{G}\",\"from\":1,\"to\":3}}\n\
             {{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"sscc\":\"106141412345678908\"}}\n"
        );
        let mut b = IndexBuilder::default();
        parse_payload(payload.as_bytes(), |r| b.add(r)).unwrap();
        b.finish()
    }

    fn item(serial: &str) -> Subject<'_> {
        Subject {
            gtin: Some(G),
            serial: Some(serial),
            ..Subject::default()
        }
    }

    #[test]
    fn a_pass_with_everything_and_nothing_else_is_complete() {
        let idx = index();
        let pallet = Subject {
            sscc: Some("106141412345678908"),
            ..Subject::default()
        };
        let seen = [item("1"), item("2"), item("3"), item("2"), pallet];
        let v = evaluate_pass(&idx, "dock", &seen).unwrap();
        assert!(v.complete, "{v:?}");
        assert_eq!(v.shipments, vec!["ASN1"]);
    }

    #[test]
    fn a_short_pass_lists_missing_and_unexpected_serials() {
        let idx = index();
        let v = evaluate_pass(&idx, "dock", &[item("1"), item("9")]).unwrap();
        assert!(!v.complete);
        assert_eq!(v.missing_count, 3);
        assert_eq!(
            v.missing,
            vec![
                "(00)106141412345678908",
                "(01)09506000134352(21)2",
                "(01)09506000134352(21)3"
            ]
        );
        assert_eq!(v.unexpected, vec!["(01)09506000134352(21)9"]);
        assert_eq!(evaluate_pass(&idx, "elsewhere", &[]), None);
    }
}
