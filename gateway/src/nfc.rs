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
use crate::event::{IdentitySource, SunCovered, SunReplayCheck, SunResult, SunVerdict, TapEvent};
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
        SunOutcome::GenuineNoCounter => Some(SunVerdict::GenuineNoCounter),
        SunOutcome::UidMismatch => Some(SunVerdict::UidMismatch),
        SunOutcome::InvalidMac => Some(SunVerdict::InvalidMac),
        SunOutcome::UnknownKey => Some(SunVerdict::UnknownKey),
        SunOutcome::Unsupported => Some(SunVerdict::Unsupported),
        SunOutcome::NotSun => None,
    }
}

/// What a verified MAC covers, in the event's terms.
fn covered(covers: sun::Covers) -> Vec<SunCovered> {
    let mut out = Vec::with_capacity(3);
    if covers.uid {
        out.push(SunCovered::Uid);
    }
    if covers.counter {
        out.push(SunCovered::Counter);
    }
    if covers.url {
        out.push(SunCovered::Url);
    }
    out
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
            // Until a MAC that covers the URL says otherwise.
            id.source = Some(IdentitySource::Claimed);
        }
        if self.keys.products.is_empty() {
            return None;
        }
        // Verified and bound to the chip on the reader: a valid SUN of tag A
        // served by any other chip is `uid_mismatch`, never `genuine`.
        let check = sun::verify_tap(tap, &self.keys)?;
        let verdict = verdict(check.outcome)?;
        event.sun = Some(SunResult {
            verdict,
            counter: check.counter,
            product: check.product,
            uid: check.uid.clone(),
            covers: covered(check.covers),
        });
        event.set_sun_verdict(verdict);
        if verdict == SunVerdict::Genuine {
            // Genuine so far: the store turns it into `replayed` if the
            // counter is not above the last one seen (and counts it then).
            // `genuine` always carries a counter (without one the verdict is
            // `genuine_no_counter`).
            if let (Some(uid), Some(counter)) = (check.uid, check.counter) {
                return Some(SunReplayCheck { uid, counter });
            }
        }
        metrics::counter!("tracegate_nfc_sun_total", "verdict" => verdict.as_str()).increment(1);
        if !verdict.authentic() {
            tracing::warn!(event = "nfc.sun_suspicious", reader = %tap.reader, uid = %hex::encode_upper(&tap.uid), verdict = verdict.as_str(), "NFC tap failed authenticity verification");
        }
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
            file_read_diversification: None,
        }
    }

    fn enrich(uri: &str) -> (TapEvent, Option<SunReplayCheck>) {
        enrich_on(uri, &UID, "ntag424dna", keys())
    }

    fn enrich_on(
        uri: &str,
        uid: &[u8],
        tag_type: &str,
        product: SunKeys,
    ) -> (TapEvent, Option<SunReplayCheck>) {
        let tap = Tap {
            reader: Arc::from("nfc"),
            uid: uid.to_vec(),
            tag_type: tag_type.into(),
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
            products: vec![product],
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

    #[test]
    fn a_genuine_sun_covers_uid_and_counter_and_leaves_the_serial_claimed() {
        let (event, _) = enrich(&sun_url(BASE, &keys(), &UID, 41));
        let sun = event.sun.unwrap();
        assert_eq!(sun.covers, [SunCovered::Uid, SunCovered::Counter]);
        assert_eq!(event.identity.source, Some(IdentitySource::Claimed));
    }

    #[test]
    fn a_mac_over_the_url_authenticates_the_serial() {
        let sealed = SunKeys {
            mac_input: MacInput::Url,
            ..keys()
        };
        let (event, check) = enrich_on(
            &sun_url(BASE, &sealed, &UID, 3),
            &UID,
            "ntag424dna",
            sealed.clone(),
        );
        assert!(check.is_some());
        let sun = event.sun.unwrap();
        assert_eq!(
            sun.covers,
            [SunCovered::Uid, SunCovered::Counter, SunCovered::Url]
        );
        assert_eq!(event.identity.source, Some(IdentitySource::Authenticated));
        let other_serial = sun_url(BASE, &sealed, &UID, 4).replace("SER123", "SER124");
        let (event, check) = enrich_on(&other_serial, &UID, "ntag424dna", sealed);
        assert_eq!(check, None);
        assert_eq!(event.sun.map(|s| s.verdict), Some(SunVerdict::InvalidMac));
        assert_eq!(event.identity.source, Some(IdentitySource::Claimed));
    }

    #[test]
    fn a_valid_sun_on_another_chip_is_a_uid_mismatch_never_genuine() {
        let url = sun_url(BASE, &keys(), &UID, 41);
        let other_uid = [0x04, 0x99, 0x98, 0x97, 0x96, 0x95, 0x80];
        for (uid, tag_type) in [(&other_uid, "ntag424dna"), (&UID, "ntag215")] {
            let (event, check) = enrich_on(&url, uid, tag_type, keys());
            assert_eq!(check, None, "no counter is consumed by a copy");
            let sun = event.sun.unwrap();
            assert_eq!(sun.verdict, SunVerdict::UidMismatch, "{tag_type}");
            assert!(sun.covers.is_empty());
            assert_eq!(event.flags, vec![Flag::ForgedNfc]);
        }
    }

    #[test]
    fn a_genuine_mac_without_a_counter_says_no_replay_check_was_possible() {
        let url = tracegate_drivers::nfc::sun::sun_url_with(BASE, &keys(), &UID, None);
        let (event, check) = enrich(&url);
        assert_eq!(check, None);
        let sun = event.sun.unwrap();
        assert_eq!(sun.verdict, SunVerdict::GenuineNoCounter);
        assert_eq!(sun.covers, [SunCovered::Uid]);
        assert!(event.flags.is_empty());
    }
}
