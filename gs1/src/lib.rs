//! GS1 identity for tracegate: EPC Tag Data Standard 1.13 decoding and encoding,
//! TID decoding, GS1 Digital Link, EPC patterns and EPCIS 2.0 documents with CBV 2.0
//! event hash IDs.
//!
//! The crate is sans-IO: every function takes bytes or strings and returns values.
//! Decoding never fails on tag data: anything that is not a valid TDS 1.13 EPC
//! becomes an EPC Raw URI (`urn:epc:raw:...`, TDS §12.1/§15.2.2), so no read is lost.

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
