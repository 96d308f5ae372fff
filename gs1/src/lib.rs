//! GS1 identity: EPC Tag Data Standard decoding and encoding, TID, Digital Link, EPCIS 2.0.
