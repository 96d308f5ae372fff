//! Retry backoff: the gateway uses the drivers' one, so every retry in the
//! process (readers, pcscd, the MQTT publisher, the store writer) doubles
//! with the same jitter and the same cap.

pub use tracegate_drivers::backoff::Backoff;
