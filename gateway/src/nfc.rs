//! Enrichment of NFC taps: GS1 Digital Link identity from the NDEF URI, and
//! NTAG 424 DNA SUN verification (sans-IO).
//!
//! The MAC is verified here, in the pipeline. Whether a verified tap is
//! `genuine` or `replayed` depends on the highest counter seen for its UID,
//! which lives in SQLite: the tap's draft carries a [`SunReplayCheck`] and
//! the store decides, and keeps the new counter, in the transaction that
//! commits the tap (so a replay is caught across restarts, and no SQLite
//! call runs on the pipeline task).

use tracegate_drivers::nfc::sun::{self, KeyFile, SunOutcome};
use tracegate_drivers::Tap;

use crate::config::Config;
use crate::event::{SunReplayCheck, SunResult, SunVerdict, TapEvent};
use crate::pipeline::TapEnricher;

#[derive(Debug, Default)]
pub struct TapVerifier {
    keys: KeyFile,
}

impl TapVerifier {
    pub fn new(config: &Config) -> Result<Self, crate::RunError> {
        let mut keys = KeyFile::default();
        for path in &config.sun_key_files {
            let file = KeyFile::load(path).map_err(|e| crate::RunError::Keys(e.to_string()))?;
            keys.products.extend(file.products);
        }
        Ok(Self { keys })
    }

    /// A verifier with the given keys.
    pub fn with_keys(keys: KeyFile) -> Self {
        Self { keys }
    }
}

/// The event's verdict for a verification outcome; `None` for a URL that
/// carries no SUN.
fn verdict(outcome: SunOutcome) -> Option<SunVerdict> {
    match outcome {
        SunOutcome::Genuine => Some(SunVerdict::Genuine),
        SunOutcome::InvalidMac => Some(SunVerdict::InvalidMac),
        SunOutcome::UnknownKey => Some(SunVerdict::UnknownKey),
        SunOutcome::Unsupported => Some(SunVerdict::Unsupported),
        SunOutcome::NotSun => None,
    }
}

impl TapEnricher for TapVerifier {
    fn enrich(&mut self, tap: &Tap, event: &mut TapEvent) -> Option<SunReplayCheck> {
        let uri = tap.ndef_uri.as_deref()?;
        if let Some(dl) = tracegate_gs1::digital_link::parse(uri) {
            let id = &mut event.identity;
            id.gtin = Some(dl.gtin);
            id.serial = dl.serial;
            id.lot = dl.lot;
            id.digital_link = Some(uri.to_owned());
        }
        if self.keys.products.is_empty() {
            return None;
        }
        let check = sun::verify(uri, &self.keys);
        let verdict = verdict(check.outcome)?;
        event.sun = Some(SunResult {
            verdict,
            counter: check.counter,
            product: check.product,
            uid: check.uid.clone(),
        });
        event.set_sun_verdict(verdict);
        if verdict == SunVerdict::Genuine {
            // Genuine so far: the store turns it into `replayed` if the
            // counter is not above the last one seen (and counts it then).
            return match (check.uid, check.counter) {
                (Some(uid), Some(counter)) => Some(SunReplayCheck { uid, counter }),
                _ => {
                    metrics::counter!("tracegate_nfc_sun_total", "verdict" => verdict.as_str())
                        .increment(1);
                    None
                }
            };
        }
        metrics::counter!("tracegate_nfc_sun_total", "verdict" => verdict.as_str()).increment(1);
        tracing::warn!(event = "nfc.sun_suspicious", reader = %tap.reader, uid = %hex::encode_upper(&tap.uid), verdict = verdict.as_str(), "NFC tap failed authenticity verification");
        None
    }
}
