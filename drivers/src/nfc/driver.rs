//! The PC/SC event loop.
//!
//! PC/SC calls block, so the loop runs on a dedicated thread. It waits in
//! `SCardGetStatusChange` on the reader and on `\\?PnP?\Notification`
//! (reader hot-plug); shutdown unblocks it with `SCardCancel` on a clone of
//! the live context. One [`Tap`] is sent per placement: a card turning
//! PRESENT, or a new insertion seen through the reader's event counter when
//! a removal and re-insertion fell between two wake-ups.
//!
//! pcscd restarts: a blocked call returns `SCARD_E_COMM_ERROR`, later ones
//! `SCARD_E_NO_SERVICE`, and the old context never recovers, so the loop
//! establishes a new context with backoff.

use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pcsc::{Context, Disposition, Error as PErr, Protocols, ReaderState, Scope, ShareMode, State};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::card::{self, Transmit, TransmitError};
use super::sun;
use super::{PcscConfig, PcscError};
use crate::backoff::Backoff;
use crate::read::Tap;
use crate::{Clock, ReadSink, ReaderHealth, ReaderState as HealthState};

/// Upper bound of one wait, so a cancel racing with the start of a wait is
/// still seen promptly.
const WAIT_SLICE: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

type ContextSlot = Arc<Mutex<Option<Context>>>;

pub(super) async fn run(
    config: PcscConfig,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(), PcscError> {
    let slot: ContextSlot = Arc::default();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let mut driver = Driver {
        reader_name: Arc::from(config.name.as_str()),
        pattern: config.reader_pattern,
        sink,
        health: Arc::clone(&health),
        clock,
        cancel: cancel.clone(),
        slot: Arc::clone(&slot),
    };
    std::thread::Builder::new()
        .name(format!("pcsc-{}", config.name))
        .spawn(move || {
            let res = driver.run();
            match &res {
                Ok(()) => driver.health.set_state(HealthState::Stopped),
                // The supervisor restarts the driver; show why meanwhile.
                Err(e) => driver.health.record_failure(e),
            }
            let _ = tx.send(res);
        })
        .map_err(PcscError::Spawn)?;
    tokio::select! {
        res = &mut rx => return res.unwrap_or(Err(PcscError::ThreadDied)),
        () = cancel.cancelled() => {}
    }
    cancel_blocking_call(&slot);
    rx.await.unwrap_or(Err(PcscError::ThreadDied))
}

fn cancel_blocking_call(slot: &ContextSlot) {
    let guard = match slot.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(ctx) = guard.as_ref() {
        if let Err(e) = ctx.cancel() {
            debug!(error = %e, "SCardCancel failed (no call was blocked)");
        }
    }
}

struct Driver {
    reader_name: Arc<str>,
    pattern: Option<String>,
    sink: ReadSink,
    health: Arc<ReaderHealth>,
    clock: Clock,
    cancel: CancellationToken,
    slot: ContextSlot,
}

/// Why a context's session ended.
enum End {
    Cancelled,
    /// pcscd went away; establish a new context.
    ServiceLost(PErr),
    Fatal(PcscError),
}

fn service_lost(e: PErr) -> bool {
    matches!(
        e,
        PErr::NoService
            | PErr::ServiceStopped
            | PErr::CommError
            | PErr::InvalidHandle
            | PErr::InternalError
    )
}

fn card_gone(e: PErr) -> bool {
    matches!(
        e,
        PErr::RemovedCard
            | PErr::NoSmartcard
            | PErr::ResetCard
            | PErr::UnpoweredCard
            | PErr::UnresponsiveCard
            | PErr::UnsupportedCard
            | PErr::ReaderUnavailable
            | PErr::UnknownReader
            | PErr::SharingViolation
    )
}

impl Driver {
    fn run(&mut self) -> Result<(), PcscError> {
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let ctx = match Context::establish(Scope::User) {
                Ok(c) => c,
                Err(e) => {
                    let hint = if e == PErr::SecurityViolation {
                        "pcscd refused this user: add the polkit rule from docs/nfc.md"
                    } else {
                        "is pcscd running (systemctl status pcscd)?"
                    };
                    self.health
                        .record_failure(&format_args!("cannot connect to pcscd: {e}; {hint}"));
                    let delay = backoff.next_delay();
                    warn!(reader = %self.reader_name, error = %e, retry_in_ms = delay.as_millis() as u64, "pcscd unavailable");
                    if self.sleep(delay) {
                        return Ok(());
                    }
                    continue;
                }
            };
            self.set_context(Some(ctx.clone()));
            let end = self.session(&ctx, &mut backoff);
            self.set_context(None);
            match end {
                End::Cancelled => return Ok(()),
                End::Fatal(e) => return Err(e),
                End::ServiceLost(e) => {
                    self.health
                        .record_failure(&format_args!("lost pcscd: {e}; reconnecting"));
                    warn!(reader = %self.reader_name, error = %e, "lost pcscd, re-establishing the context");
                    if self.sleep(backoff.next_delay()) {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn set_context(&self, ctx: Option<Context>) {
        let mut g = match self.slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = ctx;
    }

    /// Sleeps up to `d`; `true` if cancelled meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let step = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero() {
            if self.cancel.is_cancelled() {
                return true;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        self.cancel.is_cancelled()
    }

    fn pick_reader(&self, readers: &[CString]) -> Option<CString> {
        readers
            .iter()
            .find(|r| match &self.pattern {
                Some(p) => r
                    .to_string_lossy()
                    .to_lowercase()
                    .contains(&p.to_lowercase()),
                None => true,
            })
            .cloned()
    }

    fn session(&mut self, ctx: &Context, backoff: &mut Backoff) -> End {
        let mut states = vec![ReaderState::new(
            pcsc::PNP_NOTIFICATION().to_owned(),
            State::UNAWARE,
        )];
        let mut reader: Option<CString> = None;
        let mut relist = true;
        let mut first_listing = true;
        let mut waiting_reported = false;
        // Whether a card is in the field, and the reader's event count when
        // it was read (insertions and removals each add one).
        let mut present = false;
        let mut read_at_count = 0u32;
        loop {
            if self.cancel.is_cancelled() {
                return End::Cancelled;
            }
            if relist {
                relist = false;
                let readers = match ctx.list_readers_owned() {
                    Ok(r) => r,
                    Err(e) if service_lost(e) => return End::ServiceLost(e),
                    Err(e) => {
                        return End::Fatal(PcscError::Pcsc {
                            op: "SCardListReaders",
                            source: e,
                        })
                    }
                };
                let picked = self.pick_reader(&readers);
                if picked != reader || first_listing {
                    first_listing = false;
                    present = false;
                    reader = picked;
                    // Keep the PnP entry's state: resetting it to UNAWARE would
                    // report the same change again at once.
                    states.truncate(1);
                    match &reader {
                        Some(r) => {
                            let shown = r.to_string_lossy().into_owned();
                            info!(reader = %self.reader_name, pcsc_reader = %shown, "using PC/SC reader");
                            self.health.set_detail("pcsc_reader", shown);
                            self.health.set_detail("card", "absent");
                            self.health.set_state(HealthState::Running);
                            backoff.reset();
                            waiting_reported = false;
                            states.push(ReaderState::new(r.clone(), State::UNAWARE));
                        }
                        None => {
                            let names: Vec<String> = readers
                                .iter()
                                .map(|r| r.to_string_lossy().into_owned())
                                .collect();
                            self.health.set_detail("pcsc_reader", "");
                            if !waiting_reported {
                                waiting_reported = true;
                                let pattern = self.pattern.as_deref().unwrap_or("(any)");
                                self.health.record_failure(&format_args!(
                                    "no PC/SC reader matching {pattern:?} (present: {names:?}); plug it in or fix reader_pattern"
                                ));
                                warn!(reader = %self.reader_name, pattern, present = ?names, "waiting for a matching PC/SC reader");
                            }
                        }
                    }
                }
            }
            let changed = ctx.get_status_change(WAIT_SLICE, &mut states);
            // A turn at least every WAIT_SLICE: the thread is alive.
            self.health.alive();
            match changed {
                Ok(()) => {}
                Err(PErr::Timeout) => continue,
                Err(PErr::Cancelled) => {
                    if self.cancel.is_cancelled() {
                        return End::Cancelled;
                    }
                    continue;
                }
                Err(e) if service_lost(e) => return End::ServiceLost(e),
                Err(PErr::UnknownReader | PErr::ReaderUnavailable) => {
                    // The reader went away under us: forget it and list again,
                    // pausing so a reader stuck in this state cannot spin the loop.
                    reader = None;
                    present = false;
                    states.truncate(1);
                    relist = true;
                    if self.sleep(Duration::from_millis(250)) {
                        return End::Cancelled;
                    }
                    continue;
                }
                Err(e) => {
                    return End::Fatal(PcscError::Pcsc {
                        op: "SCardGetStatusChange",
                        source: e,
                    })
                }
            }
            if states
                .first()
                .is_some_and(|pnp| pnp.event_state().contains(State::CHANGED))
            {
                debug!(reader = %self.reader_name, "PC/SC readers changed");
                relist = true;
            }
            if let Some(rs) = states.get(1) {
                let ev = rs.event_state();
                let count = rs.event_count();
                if ev.intersects(State::UNKNOWN | State::IGNORE) {
                    info!(reader = %self.reader_name, "PC/SC reader disappeared");
                    self.health
                        .record_failure(&"the PC/SC reader was unplugged");
                    reader = None;
                    states.truncate(1);
                    relist = true;
                    present = false;
                } else if ev.contains(State::PRESENT) && !ev.contains(State::MUTE) {
                    // 16-bit counter; 2 or more since the read = removed and put back.
                    let replaced = present && (count.wrapping_sub(read_at_count) & 0xFFFF) >= 2;
                    if !present || replaced {
                        present = true;
                        read_at_count = count;
                        self.health.set_detail("card", "present");
                        let atr = rs.atr().to_vec();
                        if let Some(r) = reader.clone() {
                            if let Err(end) = self.read_card(ctx, &r, &atr) {
                                return end;
                            }
                        }
                    }
                } else if ev.contains(State::EMPTY) && present {
                    debug!(reader = %self.reader_name, "tag removed");
                    present = false;
                    self.health.set_detail("card", "absent");
                }
            }
            for s in &mut states {
                s.sync_current_state();
            }
        }
    }

    /// Reads the card and sends its tap. `Err` ends the session.
    fn read_card(&mut self, ctx: &Context, reader: &CStr, atr: &[u8]) -> Result<(), End> {
        let host = self.clock.now();
        let mut card = match ctx.connect(reader, ShareMode::Shared, Protocols::ANY) {
            Ok(c) => c,
            Err(e) if service_lost(e) => return Err(End::ServiceLost(e)),
            Err(e) => {
                self.read_failed(&format_args!("connecting to the tag failed: {e}"));
                return Ok(());
            }
        };
        let atr = if atr.is_empty() {
            card.status2_owned()
                .map(|s| s.atr().to_vec())
                .unwrap_or_default()
        } else {
            atr.to_vec()
        };
        // One PC/SC transaction for the whole read: reading a tag is a
        // sequence of APDUs with state in the card (selected application and
        // file), and another client of pcscd sending its own in between
        // would cut the NDEF read short or splice two reads together.
        let (result, lost) = match card.transaction() {
            Ok(tx) => {
                let mut link = PcscLink {
                    card: &tx,
                    lost: None,
                };
                let result = card::read_tag(&atr, &mut link);
                (result, link.lost)
            }
            Err(e) if service_lost(e) => return Err(End::ServiceLost(e)),
            Err(e) => {
                self.read_failed(&format_args!("locking the tag for the read failed: {e}"));
                return Ok(());
            }
        };
        if let Err((_, e)) = card.disconnect(Disposition::LeaveCard) {
            debug!(error = %e, "SCardDisconnect failed");
        }
        if let Some(e) = lost {
            return Err(End::ServiceLost(e));
        }
        let info = match result {
            Ok(i) => i,
            Err(e) => {
                self.read_failed(&format_args!("reading the tag failed: {e}"));
                return Ok(());
            }
        };
        if let Some(why) = &info.ndef_error {
            self.health
                .protocol_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(reader = %self.reader_name, uid = %hex::encode_upper(&info.uid), error = %why, "tag NDEF unreadable; tap reported without it");
        }
        info!(
            reader = %self.reader_name,
            uid = %hex::encode_upper(&info.uid),
            tag_type = info.tag_type.as_str(),
            // SUN values are one-time credentials: never in a log.
            uri = %info.ndef_uri.as_deref().map(sun::redact_sun_url).unwrap_or_default(),
            nxp_signature_valid = ?info.nxp_signature_valid,
            "tag tapped"
        );
        self.health.count_reads(1, host.utc_ms);
        self.health
            .set_detail("last_tag_type", info.tag_type.as_str());
        if let Some(valid) = info.nxp_signature_valid {
            // Not in Tap (yet): a clone's UID is worth an operator's attention.
            let shown = if valid { "valid" } else { "invalid" };
            self.health.set_detail("last_nxp_signature", shown);
            if !valid {
                warn!(reader = %self.reader_name, uid = %hex::encode_upper(&info.uid), "NTAG21x without a valid NXP originality signature (clone or non-NXP part)");
            }
        }
        let tap = Tap {
            reader: Arc::clone(&self.reader_name),
            uid: info.uid,
            tag_type: info.tag_type.as_str().to_owned(),
            ndef_uri: info.ndef_uri,
            ndef_text: info.ndef_text,
            atr,
            host,
        };
        self.sink
            .blocking_tap(tap)
            .map_err(|_| End::Fatal(PcscError::PipelineClosed))
    }

    fn read_failed(&self, why: &dyn std::fmt::Display) {
        self.health
            .protocol_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(reader = %self.reader_name, error = %why, "tag not read; lift it and tap again");
    }
}

/// APDU transport over a connected PC/SC card; remembers a lost pcscd.
struct PcscLink<'a> {
    card: &'a pcsc::Card,
    lost: Option<PErr>,
}

impl Transmit for PcscLink<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransmitError> {
        let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
        match self.card.transmit(apdu, &mut buf) {
            Ok(r) => Ok(r.to_vec()),
            Err(e) => {
                if service_lost(e) {
                    self.lost = Some(e);
                }
                Err(TransmitError {
                    message: e.to_string(),
                    card_gone: card_gone(e) || service_lost(e),
                })
            }
        }
    }
}
