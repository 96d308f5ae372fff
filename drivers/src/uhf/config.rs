//! Defaults and checks the Mercury and R2000 `[[readers]]` entries share.
//! Checks return the message; each protocol wraps it in its own `Config`
//! error so the text names the reader kind.

use tokio_serial::SerialStream;

pub(crate) fn default_baud() -> u32 {
    115_200
}

pub(crate) fn default_antennas() -> Vec<u8> {
    vec![1]
}

pub(crate) fn default_response_timeout_ms() -> u64 {
    2000
}

/// At least one antenna, each in `1..=max`.
pub(crate) fn check_antennas(antennas: &[u8], max: u8) -> Result<(), String> {
    if antennas.is_empty() {
        return Err("antennas is empty; list at least one port, e.g. antennas = [1]".into());
    }
    if let Some(a) = antennas.iter().find(|&&a| a == 0 || a > max) {
        return Err(format!("antenna {a} is out of range 1..={max}"));
    }
    Ok(())
}

/// A Gen2 session, when given, is 0–3.
pub(crate) fn check_session(session: Option<u8>) -> Result<(), String> {
    match session.filter(|&s| s > 3) {
        Some(s) => Err(format!("session {s} is out of range 0..=3")),
        None => Ok(()),
    }
}

/// Every timeout is positive.
pub(crate) fn check_timeouts(timeouts_ms: &[u64]) -> Result<(), String> {
    if timeouts_ms.contains(&0) {
        return Err("timeouts must be positive".into());
    }
    Ok(())
}

/// Opens the configured serial port, logging it; `open_error` builds the
/// protocol's error from the port and the cause.
pub(crate) fn open_port<E>(
    protocol: &'static str,
    name: &str,
    port: &str,
    baud: u32,
    open_error: impl FnOnce(String, tokio_serial::Error) -> E,
) -> Result<SerialStream, E> {
    let stream = crate::serial::open(port, baud).map_err(|e| open_error(port.to_owned(), e))?;
    tracing::info!(reader = %name, protocol, port = %port, baud, "serial port open");
    Ok(stream)
}
