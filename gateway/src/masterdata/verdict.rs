//! The per-event verdicts: what the pipeline calls for every event it
//! builds. Reads the datasets in force through a `watch` (one read lock for
//! the duration of one lookup, no allocation unless a flag is raised).

use std::sync::Arc;

use tokio::sync::watch;

use super::config::MasterdataConfig;
use super::index::{sscc_of_element_string, Subject};
use super::service::Active;
use crate::event::{Event, EventBody};

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
                let id = &b.identity;
                let subject = Subject {
                    gtin: id.gtin.as_deref(),
                    serial: id.serial.as_deref().filter(|_| id.gtin.is_some()),
                    sscc: id
                        .element_string
                        .as_deref()
                        .and_then(sscc_of_element_string),
                    uid: None,
                };
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
            // A pass is judged through its tags' own events; the
            // expected-shipment verdict of a pass (`shipment::evaluate_pass`)
            // is not wired yet.
            EventBody::Overflow(_)
            | EventBody::Salvage(_)
            | EventBody::MasterdataApplied(_)
            | EventBody::Pass(_) => return,
        };
        let _ = detail;
        for f in flags.iter().skip(before) {
            metrics::counter!("tracegate_flags_total", "flag" => f.as_str()).increment(1);
        }
    }
}
