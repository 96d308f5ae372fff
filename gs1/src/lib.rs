//! GS1 identity for tracegate: EPC Tag Data Standard 1.13 decoding and encoding,
//! TID decoding, GS1 Digital Link, EPC patterns and EPCIS 2.0 documents with CBV 2.0
//! event hash IDs.
//!
//! The crate is sans-IO: every function takes bytes or strings and returns values.
//! Decoding never fails on tag data: anything that is not a valid TDS 1.13 EPC (or a
//! TDS 2.x SGTIN+/DSGTIN+) becomes an EPC Raw URI (`urn:epc:raw:...`, TDS
//! §12.1/§15.2.2), so no read is lost.
//!
//! Entry points:
//! * [`decode_epc`] / [`decode_epc_hex`] / [`decode_gen2`] → [`Decoded`] (`Display` for
//!   a human listing, [`Decoded::to_json`] for machines);
//! * [`encode_tag_uri`], [`encode_sgtin96`], [`encode_sscc96`];
//! * [`decode_tid`] / [`decode_tid_hex`] → [`TidInfo`];
//! * [`EpcPattern`] for read-point filters;
//! * [`digital_link::parse`] for NFC NDEF URIs;
//! * [`epcis::EpcisDocument`] / [`epcis::ObjectEvent`] for `payload_format = "epcis2"`,
//!   with [`epcis::event_hash`] for CBV 2.0 event IDs.
//!
//! ```
//! let d = tracegate_gs1::decode_epc_hex("3074257BF7194E4000001A85").unwrap();
//! assert_eq!(d.pure_identity_uri, "urn:epc:id:sgtin:0614141.812345.6789");
//! assert_eq!(d.element_string.as_deref(), Some("(01)80614141123458(21)6789"));
//! ```

mod bits;
pub mod check;
pub mod digital_link;
mod epc;
pub mod epcis;
mod escape;
pub mod pattern;
pub mod tid;

pub use check::{gs1_check_digit, gs1_check_digit_valid};
pub use epc::encode::{encode_sgtin96, encode_sscc96, encode_tag_uri, EncodeError};
pub use epc::identity::{pure_uri_to_digital_link, pure_uri_to_element_string};
pub use epc::{decode_epc, decode_epc_hex, decode_gen2, Decoded, HexError};
pub use escape::{dl_escape, urn_escape, urn_unescape};
pub use pattern::{EpcPattern, PatternError};
pub use tid::{decode_tid, decode_tid_hex, TidInfo};
