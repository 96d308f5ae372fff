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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracegate_drivers::nfc::sun::{sun_url, AesKey, MacInput, SunKeys};
    use tracegate_drivers::HostTime;

    use super::*;
    use crate::event::{Flag, ReadContext};

    const UID: [u8; 7] = [0x04, 0x21, 0x22, 0x23, 0x24, 0x25, 0x80];
    const BASE: &str = "https://id.example.org/01/09506000134352/21/SER123";

    fn keys() -> SunKeys {
        SunKeys {
            product: "widget".into(),
            url_prefix: Some("https://id.example.org/".into()),
            meta_read: AesKey::from_hex("000102030405060708090A0B0C0D0E0F").unwrap(),
            file_read: AesKey::from_hex("F0E0D0C0B0A090807060504030201000").unwrap(),
            mac_input: MacInput::Auto,
        }
    }

    fn enrich(uri: &str) -> (TapEvent, Option<SunReplayCheck>) {
        let tap = Tap {
            reader: Arc::from("nfc"),
            uid: UID.to_vec(),
            tag_type: "ntag424dna".into(),
            ndef_uri: Some(uri.to_owned()),
            ndef_text: None,
            atr: vec![0x3b],
            host: HostTime {
                mono_ms: 0,
                utc_ms: 0,
                clock_synced: true,
            },
        };
        let mut event = TapEvent::new(
            ReadContext {
                site: "s".into(),
                read_point: "desk".into(),
                reader: "nfc".into(),
                clock_synced: true,
            },
            &tap,
        );
        let mut verifier = TapVerifier::with_keys(KeyFile {
            products: vec![keys()],
        });
        let check = verifier.enrich(&tap, &mut event);
        (event, check)
    }

    #[test]
    fn a_valid_sun_is_genuine_so_far_and_leaves_the_replay_check_to_the_store() {
        let (event, check) = enrich(&sun_url(BASE, &keys(), &UID, 41));
        assert_eq!(
            check,
            Some(SunReplayCheck {
                uid: UID.to_vec(),
                counter: 41
            })
        );
        let sun = event.sun.unwrap();
        assert_eq!((sun.verdict, sun.counter), (SunVerdict::Genuine, Some(41)));
        assert!(event.flags.is_empty());
        assert_eq!(event.identity.gtin.as_deref(), Some("09506000134352"));
        assert_eq!(event.identity.serial.as_deref(), Some("SER123"));
    }

    #[test]
    fn an_altered_sun_is_forged_with_no_replay_check() {
        let url = sun_url(BASE, &keys(), &UID, 41);
        // Flip the last hex digit of the MAC.
        let flipped = match url.chars().last() {
            Some('0') => "1",
            _ => "0",
        };
        let forged = format!("{}{flipped}", &url[..url.len() - 1]);
        let (event, check) = enrich(&forged);
        assert_eq!(check, None);
        assert_eq!(event.sun.map(|s| s.verdict), Some(SunVerdict::InvalidMac));
        assert_eq!(event.flags, vec![Flag::ForgedNfc]);
    }

    #[test]
    fn a_plain_digital_link_gets_an_identity_and_no_sun() {
        let (event, check) = enrich(BASE);
        assert_eq!(check, None);
        assert!(event.sun.is_none());
        assert_eq!(event.identity.digital_link.as_deref(), Some(BASE));
    }
}
