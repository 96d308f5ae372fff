//! The per-event verdicts: what the pipeline calls for every event it
//! builds. Reads the datasets in force through a `watch` (one read lock for
//! the duration of one lookup, no allocation unless a flag is raised).

use std::sync::Arc;

use tokio::sync::watch;

use super::config::MasterdataConfig;
use super::index::{sscc_of_element_string, Subject};
use super::service::Active;
use super::shipment;
use crate::event::{Event, EventBody, Flag, UhfIdentity};

/// What the index looks up for a UHF tag.
fn uhf_subject(id: &UhfIdentity) -> Subject<'_> {
    Subject {
        gtin: id.gtin.as_deref(),
        serial: id.serial.as_deref().filter(|_| id.gtin.is_some()),
        sscc: id
            .element_string
            .as_deref()
            .and_then(sscc_of_element_string),
        uid: None,
    }
}

#[derive(Debug, Clone)]
pub struct Verdicts {
    active: watch::Receiver<Arc<Active>>,
    config: MasterdataConfig,
}

impl Verdicts {
    pub fn new(active: watch::Receiver<Arc<Active>>, config: MasterdataConfig) -> Self {
        Self { active, config }
    }

    /// Adds the master-data flags (and their details) to a UHF or tap event.
    pub fn judge(&self, event: &mut Event) {
        let active = self.active.borrow();
        if active.datasets.is_empty() {
            return;
        }
        let market = self.config.market.as_deref();
        let before;
        let (flags, detail) = match &mut event.body {
            EventBody::Arrived(b) | EventBody::Departed(b) | EventBody::Present(b) => {
                let subject = uhf_subject(&b.identity);
                let checks = self.config.checks_for(&b.at.read_point);
                before = b.flags.len();
                b.masterdata =
                    active.check(&subject, &b.at.read_point, checks, market, &mut b.flags);
                (&b.flags, &b.masterdata)
            }
            EventBody::Tap(b) => {
                let id = &b.identity;
                let subject = Subject {
                    gtin: id.gtin.as_deref(),
                    serial: id.serial.as_deref(),
                    sscc: None,
                    uid: Some(&id.uid),
                };
                let checks = self.config.checks_for(&b.at.read_point);
                before = b.flags.len();
                b.masterdata =
                    active.check(&subject, &b.at.read_point, checks, market, &mut b.flags);
                (&b.flags, &b.masterdata)
            }
            EventBody::Pass(p) => {
                // Every tag of the pallet, as its own event would be, then
                // the pallet against the shipment this door expects.
                let checks = self.config.checks_for(&p.at.read_point);
                let read_point = p.at.read_point.as_str();
                for t in &mut p.tags {
                    let before = t.flags.len();
                    active.check(
                        &uhf_subject(&t.identity),
                        read_point,
                        checks,
                        market,
                        &mut t.flags,
                    );
                    for f in t.flags.iter().skip(before) {
                        metrics::counter!("tracegate_flags_total", "flag" => f.as_str())
                            .increment(1);
                        if !p.flags.contains(f) {
                            p.flags.push(*f);
                        }
                    }
                }
                if checks.not_expected {
                    let subjects: Vec<Subject> =
                        p.tags.iter().map(|t| uhf_subject(&t.identity)).collect();
                    p.shipment = active
                        .expected_index(read_point)
                        .and_then(|index| shipment::evaluate_pass(index, read_point, &subjects));
                    if let Some(v) = &p.shipment {
                        for (raise, flag) in [
                            (v.missing_count > 0, Flag::ShipmentIncomplete),
                            (v.unexpected_count > 0, Flag::NotExpected),
                        ] {
                            if raise && !p.flags.contains(&flag) {
                                metrics::counter!("tracegate_flags_total", "flag" => flag.as_str())
                                    .increment(1);
                                p.flags.push(flag);
                            }
                        }
                    }
                }
                return;
            }
            EventBody::Overflow(_) | EventBody::Salvage(_) | EventBody::MasterdataApplied(_) => {
                return
            }
        };
        let _ = detail;
        for f in flags.iter().skip(before) {
            metrics::counter!("tracegate_flags_total", "flag" => f.as_str()).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::masterdata::index::{Checks, IndexBuilder};
    use crate::masterdata::records::parse_payload;
    use crate::masterdata::service::Dataset;

    fn identity(serial: u64) -> UhfIdentity {
        let epc = tracegate_gs1::encode_sgtin96(1, "0614141", "812345", serial).unwrap();
        UhfIdentity::new(&epc, &tracegate_gs1::decode_epc(&epc), None)
    }

    fn verdicts(gtin: &str) -> Verdicts {
        let payload = format!(
            "{{\"t\":\"expected\",\"read_point\":\"dock\",\"shipment\":\"ASN1\",\"gtin\":\"{gtin}\",\"from\":1,\"to\":3}}\n"
        );
        let mut b = IndexBuilder::default();
        parse_payload(payload.as_bytes(), |r| b.add(r)).unwrap();
        let active = Active {
            datasets: vec![Arc::new(Dataset {
                name: "asn".into(),
                version: 1,
                applied_utc_ms: 0,
                index: b.finish(),
            })],
        };
        let (_tx, rx) = watch::channel(Arc::new(active));
        Verdicts::new(
            rx,
            MasterdataConfig {
                trusted_key_files: Vec::new(),
                market: None,
                max_dataset_bytes: 1 << 20,
                default_checks: Checks::ALL,
                read_point_checks: HashMap::new(),
            },
        )
    }

    fn pass(serials: &[u64]) -> Event {
        let tags: Vec<serde_json::Value> = serials
            .iter()
            .map(|&s| {
                serde_json::json!({
                    "identity": identity(s), "antennas": [1], "read_count": 1,
                    "first_seen": "2026-12-07T08:00:00.000Z", "last_seen": "2026-12-07T08:00:01.000Z"
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": "g:0:1", "seq": 1, "type": "pass", "gateway": "g",
            "time": "2026-12-07T08:00:02.000Z", "site": "s", "read_point": "dock",
            "reader": "r", "clock_synced": true,
            "opened_at": "2026-12-07T08:00:00.000Z", "closed_at": "2026-12-07T08:00:02.000Z",
            "opened_by": "input", "closed_by": "release",
            "tag_count": serials.len(), "read_count": serials.len(), "tags": tags
        }))
        .unwrap()
    }

    #[test]
    fn a_pass_is_judged_against_the_expected_shipment_and_its_tags_are_flagged() {
        let gtin = identity(1).gtin.unwrap();
        let v = verdicts(&gtin);

        let mut full = pass(&[1, 2, 3]);
        v.judge(&mut full);
        let EventBody::Pass(p) = &full.body else {
            unreachable!()
        };
        let s = p.shipment.as_ref().expect("the door expects a shipment");
        assert!(s.complete, "{s:?}");
        assert!(p.flags.is_empty(), "{:?}", p.flags);

        let mut short = pass(&[1, 2, 9]);
        v.judge(&mut short);
        let EventBody::Pass(p) = &short.body else {
            unreachable!()
        };
        let s = p.shipment.as_ref().unwrap();
        assert!(!s.complete);
        assert_eq!((s.missing_count, s.unexpected_count), (1, 1), "{s:?}");
        assert_eq!(s.missing, vec![format!("(01){gtin}(21)3")]);
        assert_eq!(s.unexpected, vec![format!("(01){gtin}(21)9")]);
        assert!(p.flags.contains(&Flag::ShipmentIncomplete), "{:?}", p.flags);
        assert!(p.flags.contains(&Flag::NotExpected), "{:?}", p.flags);
        // The stray tag carries its own flag, the expected ones none.
        assert_eq!(p.tags[2].flags, vec![Flag::NotExpected]);
        assert!(p.tags[0].flags.is_empty() && p.tags[1].flags.is_empty());
    }
}
