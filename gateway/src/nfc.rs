//! Enrichment of NFC taps: GS1 Digital Link identity from the NDEF URI, and
//! the NTAG 424 DNA SUN verdict with replay protection.
//!
//! Verdicts: `genuine` (the MAC verifies and the counter is above the last one
//! seen for the UID), `replayed` (a valid MAC whose counter is not above the
//! last seen: the URL was copied or replayed), `invalid_mac` (forged or
//! altered), `unknown_key` (SUN parameters no configured product fits), and
//! `not_sun` / `unsupported`. The highest counter per UID is kept in SQLite,
//! so a replay is caught across restarts.

use serde_json::{json, Map, Value};
use tracegate_drivers::nfc::sun::{self, KeyFile, SunOutcome};
use tracegate_drivers::Tap;

use crate::config::Config;
use crate::pipeline::TapEnricher;
use crate::store::Store;

#[derive(Debug)]
pub struct TapVerifier {
    keys: KeyFile,
    /// Replay counters; `None` when no keys are configured (nothing to verify).
    store: Option<Store>,
}

impl TapVerifier {
    pub fn new(config: &Config) -> Result<Self, crate::RunError> {
        let mut keys = KeyFile::default();
        for path in &config.sun_key_files {
            let file = KeyFile::load(path).map_err(|e| crate::RunError::Keys(e.to_string()))?;
            keys.products.extend(file.products);
        }
        let store = if keys.products.is_empty() {
            None
        } else {
            Some(Store::open_reader(&config.store, &config.gateway_id)?)
        };
        Ok(Self { keys, store })
    }

    /// A verifier with the given keys and replay store (tests).
    pub fn with_keys(keys: KeyFile, store: Option<Store>) -> Self {
        Self { keys, store }
    }

    fn replayed(&mut self, uid: &[u8], counter: u32) -> Result<bool, String> {
        let Some(store) = self.store.as_mut() else {
            return Ok(false);
        };
        let last = store.sun_counter(uid).map_err(|e| e.to_string())?;
        if sun::replay_verdict(counter, last) {
            return Ok(true);
        }
        store
            .set_sun_counter(uid, counter)
            .map_err(|e| e.to_string())?;
        Ok(false)
    }
}

impl TapEnricher for TapVerifier {
    fn enrich(&mut self, tap: &Tap, body: &mut Map<String, Value>) {
        let Some(uri) = tap.ndef_uri.as_deref() else {
            return;
        };
        if let Some(dl) = tracegate_gs1::digital_link::parse(uri) {
            if let Some(Value::Object(id)) = body.get_mut("identity") {
                id.insert("gtin".into(), json!(dl.gtin));
                if let Some(serial) = &dl.serial {
                    id.insert("serial".into(), json!(serial));
                }
                if let Some(lot) = &dl.lot {
                    id.insert("lot".into(), json!(lot));
                }
                id.insert("digital_link".into(), json!(uri));
            }
        }
        if self.keys.products.is_empty() {
            return;
        }
        let check = sun::verify(uri, &self.keys);
        if check.outcome == SunOutcome::NotSun {
            return;
        }
        let mut verdict = check.outcome.as_str().to_owned();
        if check.outcome == SunOutcome::Genuine {
            if let (Some(uid), Some(counter)) = (&check.uid, check.counter) {
                match self.replayed(uid, counter) {
                    Ok(true) => verdict = "replayed".into(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(event = "nfc.replay_store_failed", error = %e, "cannot check the SUN counter; reporting the tap as unverified");
                        verdict = "unverified".into();
                    }
                }
            }
        }
        let mut s = Map::new();
        s.insert("verdict".into(), json!(verdict));
        if let Some(c) = check.counter {
            s.insert("counter".into(), json!(c));
        }
        if let Some(p) = &check.product {
            s.insert("product".into(), json!(p));
        }
        if let Some(uid) = &check.uid {
            s.insert("uid".into(), json!(hex::encode_upper(uid)));
        }
        metrics::counter!("tracegate_nfc_sun_total", "verdict" => verdict.clone()).increment(1);
        if verdict != "genuine" {
            tracing::warn!(event = "nfc.sun_suspicious", reader = %tap.reader, uid = %hex::encode_upper(&tap.uid), %verdict, "NFC tap failed authenticity verification");
            let flags = body.entry("flags").or_insert_with(|| json!([]));
            if let Value::Array(list) = flags {
                list.push(json!(if verdict == "replayed" {
                    "replayed_nfc"
                } else {
                    "forged_nfc"
                }));
            }
        }
        body.insert("sun".into(), Value::Object(s));
    }
}
