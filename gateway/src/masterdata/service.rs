//! The I/O around the sans-IO master-data pieces.
//!
//! - [`Downlink`]: what the MQTT publisher's I/O loop calls: the filters to
//!   subscribe at each connection, and each incoming message, which it
//!   turns into subscribe/unsubscribe requests and complete datasets.
//! - [`run`]: the task that applies complete datasets: parses the records
//!   (on a blocking thread), hands the chunks to the store writer (which
//!   stages and switches them, store/masterdata.rs), then swaps the new
//!   [`Active`] index in for the pipeline and commits a `masterdata_applied`
//!   event. A dataset refused at any step leaves the old one in force.
//! - [`Active`]: the datasets in force, one index each, consulted together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::assemble::{manifest_filters, parse_topic, ManifestAction, Rejection, TopicKind};
use super::format::{verify_manifest, PayloadDigest, TrustedKeys};
use super::index::{Checks, IndexBuilder, IndexCounts, MasterIndex, SerialRef, Subject};
use super::records::{parse_chunks, parse_gtin, ChunkParser};
use super::Assembler;
use crate::event::{Event, EventBody, Flag, MasterdataAppliedEvent, MasterdataDetail, UtcMs};
use crate::store::masterdata::{MasterdataJob, StoredDataset};
use crate::store::{EventDraft, WriteRequest};

/// One dataset in force.
#[derive(Debug)]
pub struct Dataset {
    pub name: String,
    pub version: u64,
    pub applied_utc_ms: i64,
    pub index: MasterIndex,
}

/// The datasets in force, consulted together: a serial is commissioned if
/// any dataset commissions it, blocked if any blocks it (strongest reason),
/// allowed in a market if any covering rule names it; NFC bindings and
/// expected shipments are taken from the first dataset (by name) that has
/// them.
#[derive(Debug, Default)]
pub struct Active {
    pub datasets: Vec<Arc<Dataset>>,
}

impl Active {
    /// The master-data checks for one event; pushes flags, returns details.
    pub fn check(
        &self,
        subject: &Subject,
        read_point: &str,
        checks: Checks,
        own_market: Option<&str>,
        flags: &mut Vec<Flag>,
    ) -> Option<MasterdataDetail> {
        if self.datasets.is_empty() {
            return None;
        }
        let mut detail = MasterdataDetail::default();
        let gtin = subject.gtin.and_then(parse_gtin);
        let serial = subject.serial.map(SerialRef::parse);
        if let (Some(g), Some(s)) = (gtin, serial) {
            if checks.unknown_serial
                && self.datasets.iter().any(|d| d.index.has_commissioned())
                && !self.datasets.iter().any(|d| d.index.is_commissioned(g, s))
            {
                flags.push(Flag::UnknownSerial);
            }
            if checks.blocked {
                if let Some(r) = self
                    .datasets
                    .iter()
                    .filter_map(|d| d.index.blocked_reason(g, s))
                    .max()
                {
                    flags.push(Flag::Blocked);
                    detail.blocked_reason = Some(r);
                }
            }
            if let (true, Some(m)) = (checks.wrong_market, own_market) {
                let answers: Vec<bool> = self
                    .datasets
                    .iter()
                    .filter_map(|d| d.index.market_allows(g, s, m))
                    .collect();
                if !answers.is_empty() && !answers.contains(&true) {
                    flags.push(Flag::WrongMarket);
                }
            }
        }
        let single = Checks {
            serial_mismatch: checks.serial_mismatch,
            not_expected: checks.not_expected,
            ..Checks::NONE
        };
        if subject.uid.is_some() && single.serial_mismatch {
            if let Some(d) = self
                .datasets
                .iter()
                .find(|d| subject.uid.and_then(|u| d.index.nfc_binding(u)).is_some())
            {
                let only = Checks {
                    serial_mismatch: true,
                    ..Checks::NONE
                };
                if let Some(x) = d.index.check(subject, read_point, only, None, flags) {
                    detail.bound_gtin = x.bound_gtin;
                    detail.bound_serial = x.bound_serial;
                }
            }
        }
        if single.not_expected {
            if let Some(d) = self
                .datasets
                .iter()
                .find(|d| d.index.expected(read_point).is_some())
            {
                let only = Checks {
                    not_expected: true,
                    ..Checks::NONE
                };
                d.index.check(subject, read_point, only, None, flags);
            }
        }
        (detail != MasterdataDetail::default()).then_some(detail)
    }

    /// The index holding a read point's expected shipments (for pass
    /// verdicts, [`super::shipment::evaluate_pass`]).
    pub fn expected_index(&self, read_point: &str) -> Option<&MasterIndex> {
        self.datasets
            .iter()
            .map(|d| &d.index)
            .find(|i| i.expected(read_point).is_some())
    }

    pub fn versions(&self) -> Vec<ActiveVersion> {
        self.datasets
            .iter()
            .map(|d| ActiveVersion {
                name: d.name.clone(),
                version: d.version,
                applied: UtcMs(d.applied_utc_ms),
                counts: d.index.counts(),
            })
            .collect()
    }
}

/// A dataset in force, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveVersion {
    pub name: String,
    pub version: u64,
    pub applied: UtcMs,
    pub counts: IndexCounts,
}

/// Master data in status, `/status` and the health message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterdataStatus {
    pub active: Vec<ActiveVersion>,
    /// The last refusal (`masterdata_rejected`), if any since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejected: Option<Rejected>,
    pub rejected_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub status: RejectedStatus,
    pub at: UtcMs,
    pub reason: String,
}

/// Always `masterdata_rejected`: the status word the issue names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectedStatus {
    MasterdataRejected,
}

/// The master-data lines of `tracegate status`.
pub fn human_lines(md: &MasterdataStatus) -> String {
    let mut out = String::new();
    if md.active.is_empty() {
        out.push_str("master data: none in force\n");
    }
    for a in &md.active {
        out.push_str(&format!(
            "master data: {} version {} since {} ({} records)\n",
            a.name, a.version, a.applied, a.counts.records
        ));
    }
    if let Some(r) = &md.last_rejected {
        out.push_str(&format!(
            "  ! masterdata_rejected at {} ({} in all): {}\n",
            r.at, md.rejected_total, r.reason
        ));
    }
    out
}

/// What the pipeline and status read.
#[derive(Debug, Clone)]
pub struct Views {
    pub active: watch::Receiver<Arc<Active>>,
    pub status: watch::Receiver<MasterdataStatus>,
}

#[derive(Debug)]
struct Shared {
    assembler: Mutex<Assembler>,
    status: watch::Sender<MasterdataStatus>,
    prefix: String,
    site: String,
    gateway: String,
}

impl Shared {
    fn reject(&self, reason: &Rejection) {
        self.reject_text(reason.to_string());
    }

    /// `text` names the topic or dataset and why.
    fn reject_text(&self, text: String) {
        tracing::warn!(event = "masterdata_rejected", reason = %text, "master data refused; the datasets in force stay");
        self.status.send_modify(|s| {
            s.rejected_total += 1;
            s.last_rejected = Some(Rejected {
                status: RejectedStatus::MasterdataRejected,
                at: UtcMs(chrono::Utc::now().timestamp_millis()),
                reason: text,
            });
        });
    }

    fn with_assembler<T>(&self, f: impl FnOnce(&mut Assembler) -> T) -> T {
        let mut guard = match self.assembler.lock() {
            Ok(g) => g,
            // A panic while holding it cannot leave the assembler worse than
            // a lost message would; keep going.
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }
}

/// What the publisher does for a downlink message.
#[derive(Debug)]
pub enum DownlinkAction {
    Subscribe(String),
    Unsubscribe(String),
    /// A complete dataset: hand it on with [`Downlink::deliver`].
    Deliver(Box<super::Complete>),
}

/// The publisher's side of master data.
#[derive(Debug, Clone)]
pub struct Downlink {
    shared: Arc<Shared>,
    complete: mpsc::Sender<super::Complete>,
}

impl Downlink {
    /// Filters to subscribe (QoS 1) after every CONNACK: the manifests and
    /// the chunks of datasets still on their way.
    pub fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> =
            manifest_filters(&self.shared.prefix, &self.shared.site, &self.shared.gateway).into();
        f.extend(self.shared.with_assembler(|a| a.pending_filters()));
        f
    }

    /// `{prefix}/{site}/{gateway}/alerts`: flagged events, one per message.
    pub fn alerts_topic(&self) -> String {
        let s = &self.shared;
        format!("{}/{}/{}/alerts", s.prefix, s.site, s.gateway)
    }

    /// Whether `topic` is one of ours (the publisher passes on only those).
    pub fn wants(&self, topic: &str) -> bool {
        parse_topic(
            &self.shared.prefix,
            &self.shared.site,
            &self.shared.gateway,
            topic,
        )
        .is_some()
    }

    /// One incoming message. Never panics, whatever the bytes.
    pub fn on_message(&self, topic: &str, payload: &[u8]) -> Vec<DownlinkAction> {
        let s = &self.shared;
        let Some(kind) = parse_topic(&s.prefix, &s.site, &s.gateway, topic) else {
            return Vec::new();
        };
        match kind {
            TopicKind::Manifest { name } => {
                if payload.is_empty() {
                    // A retained message being deleted.
                    return Vec::new();
                }
                match s.with_assembler(|a| a.on_manifest(topic, &name, payload)) {
                    Ok(ManifestAction::AlreadyActive) => Vec::new(),
                    Ok(ManifestAction::Subscribe(f)) => vec![DownlinkAction::Subscribe(f)],
                    Ok(ManifestAction::Complete(c)) => vec![DownlinkAction::Deliver(c)],
                    Err(e) => {
                        s.reject_text(format!("{topic}: {e}"));
                        Vec::new()
                    }
                }
            }
            TopicKind::Chunk {
                name,
                version,
                index,
                ..
            } => {
                if payload.is_empty() {
                    return Vec::new();
                }
                match s.with_assembler(|a| a.on_chunk(&name, version, index, payload)) {
                    Ok(None) => Vec::new(),
                    Ok(Some(c)) => {
                        let mut out = Vec::new();
                        if let Some(f) = &c.unsubscribe {
                            out.push(DownlinkAction::Unsubscribe(f.clone()));
                        }
                        out.push(DownlinkAction::Deliver(Box::new(c)));
                        out
                    }
                    Err((e, filter)) => {
                        s.reject_text(format!("{topic}: {e}"));
                        vec![DownlinkAction::Unsubscribe(filter)]
                    }
                }
            }
        }
    }

    /// Hands a complete dataset to the applying task without waiting (the
    /// MQTT loop must keep polling). When [`COMPLETE_CHANNEL`] datasets
    /// already wait, this one is dropped with a warning: its retained
    /// manifest brings it again at the next connection.
    pub fn deliver(&self, c: super::Complete) {
        if let Err(e) = self.complete.try_send(c) {
            let c = e.into_inner();
            self.shared
                .with_assembler(|a| a.forget(&c.manifest.manifest.name));
            tracing::warn!(name = %c.manifest.manifest.name, version = c.manifest.manifest.version,
                "master data complete but the apply queue is full or stopped; it is received again at the next connection");
        }
    }
}

/// Complete datasets waiting to be applied (policy when full: drop, see
/// [`Downlink::deliver`]).
pub const COMPLETE_CHANNEL: usize = 4;

/// Everything [`start`] needs.
#[derive(Debug)]
pub struct Setup {
    pub trusted: TrustedKeys,
    pub max_payload: u64,
    pub prefix: String,
    pub site: String,
    pub gateway: String,
    /// What the store holds (re-verified here).
    pub stored: Vec<StoredDataset>,
}

/// The applying task's inputs.
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
    complete: mpsc::Receiver<super::Complete>,
    active_tx: watch::Sender<Arc<Active>>,
}

/// Where [`start_with`] reads the chunks of a stored dataset that `Setup`
/// gives without them: (name, version, index) → the chunk, `Ok(None)` when
/// missing.
pub type ChunkSource<'a> = dyn FnMut(&str, u64, usize) -> Result<Option<Vec<u8>>, String> + 'a;

/// Verifies and indexes the stored datasets (blocking: call it off the async
/// runtime), and returns the downlink, the views and the service.
pub fn start(setup: Setup) -> (Downlink, Views, Service) {
    start_with(setup, &mut |_, _, _| Ok(None))
}

/// [`start`], reading the chunks of datasets stored without them from
/// `source`, one at a time.
pub fn start_with(setup: Setup, source: &mut ChunkSource<'_>) -> (Downlink, Views, Service) {
    let mut assembler = Assembler::new(
        setup.trusted.clone(),
        setup.max_payload,
        &setup.site,
        &setup.gateway,
    );
    let mut datasets = Vec::new();
    for d in setup.stored {
        match reverify(&d, &setup.trusted, setup.max_payload, source) {
            Ok(index) => {
                assembler.set_active(&d.name, d.version);
                datasets.push(Arc::new(Dataset {
                    name: d.name,
                    version: d.version,
                    applied_utc_ms: d.applied_utc_ms,
                    index,
                }));
            }
            Err(e) => {
                // Keeps the version as a floor so an older copy cannot come
                // back, but enforces nothing from a dataset that fails now.
                assembler.set_active(&d.name, d.version);
                tracing::error!(event = "masterdata_rejected", name = %d.name, version = d.version, reason = %e,
                    "stored master data no longer verifies (key removed from trusted_keys, or the file was altered); not enforced");
            }
        }
    }
    // Re-verifying freed every chunk and the builders' buffers.
    crate::allocator::release_freed();
    let active = Active { datasets };
    let status = MasterdataStatus {
        active: active.versions(),
        ..MasterdataStatus::default()
    };
    for (v, d) in status.active.iter().zip(&active.datasets) {
        tracing::info!(event = "masterdata.loaded", name = %v.name, version = v.version, records = v.counts.records,
            index_bytes = d.index.heap_bytes(), "master data in force");
    }
    let (status_tx, status_rx) = watch::channel(status);
    let (active_tx, active_rx) = watch::channel(Arc::new(active));
    let shared = Arc::new(Shared {
        assembler: Mutex::new(assembler),
        status: status_tx,
        prefix: setup.prefix,
        site: setup.site,
        gateway: setup.gateway,
    });
    let (complete_tx, complete_rx) = mpsc::channel(COMPLETE_CHANNEL);
    (
        Downlink {
            shared: shared.clone(),
            complete: complete_tx,
        },
        Views {
            active: active_rx,
            status: status_rx,
        },
        Service {
            shared,
            complete: complete_rx,
            active_tx,
        },
    )
}

/// Checks a stored dataset as if it had just arrived, one chunk at a time:
/// the manifest's signature, each chunk's length and digest before that
/// chunk is parsed, then the whole payload's digest. Holds one chunk (from
/// `d.chunks`, or read from `source`) at a time, never the payload.
fn reverify(
    d: &StoredDataset,
    trusted: &TrustedKeys,
    max: u64,
    source: &mut ChunkSource<'_>,
) -> Result<MasterIndex, Rejection> {
    let v = verify_manifest(&d.manifest, trusted, max)?;
    let records = |message: String| Rejection::Records {
        name: d.name.clone(),
        version: d.version,
        message,
    };
    let count = v.manifest.chunks.len();
    if d.chunks.len() > count {
        return Err(records(format!(
            "{} chunks stored, the manifest has {count}",
            d.chunks.len()
        )));
    }
    let mut digest = PayloadDigest::default();
    let mut parser = ChunkParser::default();
    let mut b = IndexBuilder::default();
    let mut add = |r: super::records::Record| b.add(r);
    for i in 0..count {
        let loaded;
        let chunk = match d.chunks.get(i) {
            Some(c) => c.as_slice(),
            None => {
                loaded = source(&d.name, d.version, i)
                    .map_err(records)?
                    .ok_or_else(|| records(format!("chunk {i} is not stored")))?;
                loaded.as_slice()
            }
        };
        v.manifest.check_chunk(i as u64, chunk)?;
        digest.update(chunk);
        parser
            .feed(chunk, &mut add)
            .map_err(|e| records(e.to_string()))?;
    }
    digest.check(&v.manifest)?;
    parser
        .finish(&mut add)
        .map_err(|e| records(e.to_string()))?;
    Ok(b.finish())
}

/// Parses the chunks where they lie (never joined: a 100 MB dataset is not
/// held twice) into the index.
fn index_of<C: AsRef<[u8]>>(
    name: &str,
    version: u64,
    chunks: &[C],
) -> Result<MasterIndex, Rejection> {
    let mut b = IndexBuilder::default();
    parse_chunks(chunks, |r| b.add(r)).map_err(|e| Rejection::Records {
        name: name.to_owned(),
        version,
        message: e.to_string(),
    })?;
    Ok(b.finish())
}

/// What the gateway wires at start (see [`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    pub downlink: Downlink,
    pub views: Views,
    pub service: Service,
    pub jobs: mpsc::Sender<MasterdataJob>,
}

/// On the thread that opened the store, before the writer starts: loads
/// the trusted keys and the stored datasets, re-verifies them, and sets up
/// the writer's job channel.
pub fn prepare(
    store: &mut crate::store::Store,
    cfg: &super::config::MasterdataConfig,
    prefix: &str,
    site: &str,
    gateway: &str,
) -> Result<Prepared, String> {
    let trusted = super::config::load_trusted_keys(cfg).map_err(|e| e.join("; "))?;
    // Heads only: each chunk is read while it is checked and parsed.
    let stored = store.masterdata_heads().map_err(|e| e.to_string())?;
    let jobs = store.masterdata_channel();
    let (downlink, views, service) = start_with(
        Setup {
            trusted,
            max_payload: cfg.max_dataset_bytes,
            prefix: prefix.to_owned(),
            site: site.to_owned(),
            gateway: gateway.to_owned(),
            stored,
        },
        &mut |name, version, idx| {
            store
                .masterdata_chunk(name, version, idx)
                .map_err(|e| e.to_string())
        },
    );
    Ok(Prepared {
        downlink,
        views,
        service,
        jobs,
    })
}

/// Applies complete datasets until `cancel` fires or the downlink is gone:
/// parse → store (staged, then switched in one transaction) → swap the
/// index → event. Holds a sender of the writer's channel, so it must stop
/// (on `cancel`) before the writer can drain.
pub async fn run(
    mut svc: Service,
    jobs: mpsc::Sender<MasterdataJob>,
    events: mpsc::Sender<WriteRequest>,
    gateway_id: String,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let c = tokio::select! {
            () = cancel.cancelled() => return,
            c = svc.complete.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let m = c.manifest.manifest.clone();
        let (name, version) = (m.name.clone(), m.version);
        // The chunks go to the blocking thread and come back for the store.
        let chunks = c.chunks;
        let parsed = tokio::task::spawn_blocking({
            let name = name.clone();
            move || {
                let index = index_of(&name, version, &chunks);
                // The builder's transient buffers are freed by now.
                crate::allocator::release_freed();
                (index, chunks)
            }
        })
        .await;
        let (index, chunks) = match parsed {
            Ok((Ok(i), chunks)) => (i, chunks),
            Ok((Err(e), _)) => {
                svc.shared.reject(&e);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "master data parsing stopped");
                continue;
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = MasterdataJob {
            name: name.clone(),
            version,
            manifest: c.manifest.frame,
            chunks,
            reply: reply_tx,
        };
        if jobs.send(job).await.is_err() {
            tracing::warn!("the store writer has stopped; master data not applied");
            return;
        }
        let reply = tokio::select! {
            () = cancel.cancelled() => return,
            r = reply_rx => r,
        };
        let report = match reply {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                svc.shared.reject(&Rejection::Records {
                    name: name.clone(),
                    version,
                    message: format!("not stored: {e}"),
                });
                continue;
            }
            Err(_) => return,
        };
        let counts = index.counts();
        let index_bytes = index.heap_bytes();
        let previous = svc
            .active_tx
            .borrow()
            .datasets
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.version);
        // The new Active shares the other datasets with the old one.
        let mut map: BTreeMap<String, Arc<Dataset>> = svc
            .active_tx
            .borrow()
            .datasets
            .iter()
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        map.insert(
            name.clone(),
            Arc::new(Dataset {
                name: name.clone(),
                version,
                applied_utc_ms: report.applied_utc_ms,
                index,
            }),
        );
        let active = Active {
            datasets: map.into_values().collect(),
        };
        let versions = active.versions();
        svc.active_tx.send_replace(Arc::new(active));
        svc.shared.with_assembler(|a| a.set_active(&name, version));
        svc.shared.status.send_modify(|s| s.active = versions);
        // The store has freed the chunks and the old index is going: purge
        // off the tokio workers (a forced collect walks the arenas).
        drop(tokio::task::spawn_blocking(crate::allocator::release_freed));
        tracing::info!(
            event = "masterdata_applied",
            name = %name,
            version,
            previous = previous.unwrap_or(0),
            records = counts.records,
            index_bytes,
            apply_ms = report.took.as_millis() as u64,
            transactions = report.transactions,
            "master data applied"
        );
        let body = EventBody::MasterdataApplied(MasterdataAppliedEvent {
            site: svc.shared.site.clone(),
            name,
            version,
            previous_version: previous,
            scope: m.scope.to_string(),
            records: counts.records,
            apply_ms: report.took.as_millis() as u64,
        });
        let event = Event::new(gateway_id.clone(), UtcMs(report.applied_utc_ms), body);
        let req = WriteRequest {
            drafts: vec![EventDraft::new(event)],
            ack: None,
        };
        if events.send(req).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masterdata::format::{build, Scope};
    use ed25519_dalek::SigningKey;

    const G: &str = "09506000134352";

    fn dataset(name: &str, payload: &str) -> Arc<Dataset> {
        Arc::new(Dataset {
            name: name.into(),
            version: 1,
            applied_utc_ms: 0,
            index: index_of(name, 1, &[payload.as_bytes()]).unwrap(),
        })
    }

    fn item(serial: &str) -> Subject<'_> {
        Subject {
            gtin: Some(G),
            serial: Some(serial),
            ..Subject::default()
        }
    }

    #[test]
    fn datasets_in_force_are_consulted_together() {
        let active = Active {
            datasets: vec![
                dataset("a", &format!("{{\"t\":\"commissioned\",\"gtin\":\"{G}\",\"from\":1,\"to\":10}}\n{{\"t\":\"blocked\",\"gtin\":\"{G}\",\"serial\":\"3\",\"reason\":\"other\"}}\n")),
                dataset("b", &format!("{{\"t\":\"commissioned\",\"gtin\":\"{G}\",\"from\":20,\"to\":30}}\n{{\"t\":\"blocked\",\"gtin\":\"{G}\",\"serial\":\"3\",\"reason\":\"stolen\"}}\n{{\"t\":\"market\",\"gtin\":\"{G}\",\"markets\":[\"US\"]}}\n")),
            ],
        };
        let check = |s: &str, market| {
            let mut flags = Vec::new();
            let d = active.check(&item(s), "dock", Checks::ALL, market, &mut flags);
            (flags, d.and_then(|d| d.blocked_reason))
        };
        assert_eq!(check("25", None), (vec![], None));
        assert_eq!(check("15", None), (vec![Flag::UnknownSerial], None));
        assert_eq!(
            check("3", None),
            (vec![Flag::Blocked], Some(crate::event::BlockReason::Stolen))
        );
        assert_eq!(check("25", Some("DE")).0, vec![Flag::WrongMarket]);
        assert_eq!(check("25", Some("US")).0, vec![]);
        let empty = Active::default();
        let mut flags = Vec::new();
        assert!(
            empty
                .check(&item("1"), "dock", Checks::ALL, None, &mut flags)
                .is_none()
                && flags.is_empty()
        );
    }

    /// At start the store gives heads only and each chunk on request: a
    /// dataset read that way is checked chunk by chunk and enforced; one
    /// with a chunk altered or missing on disk is not.
    #[test]
    fn stored_datasets_are_reverified_one_chunk_at_a_time() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut payload = String::new();
        for i in 0..200u64 {
            payload += &format!(
                "{{\"t\":\"blocked\",\"gtin\":\"{G}\",\"serial\":\"{}\",\"reason\":\"stolen\"}}\n",
                i * 3
            );
        }
        let b = build(
            &key,
            "recalls",
            4,
            Scope::default(),
            "",
            payload.as_bytes(),
            1024,
        )
        .unwrap();
        assert!(b.chunks.len() > 5, "lines cut by chunk boundaries");
        let head = StoredDataset {
            name: "recalls".into(),
            version: 4,
            manifest: b.frame.clone(),
            chunks: Vec::new(),
            applied_utc_ms: 1,
        };
        let setup = || Setup {
            trusted: TrustedKeys::new([key.verifying_key()]),
            max_payload: 1 << 20,
            prefix: "tg".into(),
            site: "s".into(),
            gateway: "g".into(),
            stored: vec![head.clone()],
        };
        let mut asked = Vec::new();
        let (_, views, _) = start_with(setup(), &mut |name, version, i| {
            asked.push((name.to_owned(), version, i));
            Ok(b.chunks.get(i).cloned())
        });
        assert_eq!(asked.len(), b.chunks.len());
        let active = views.active.borrow().clone();
        assert_eq!(active.datasets.len(), 1);
        let mut flags = Vec::new();
        active.check(&item("597"), "dock", Checks::ALL, None, &mut flags);
        assert_eq!(flags, vec![Flag::Blocked]);

        let (_, views, _) = start_with(setup(), &mut |_, _, i| {
            let mut c = b.chunks.get(i).cloned();
            if i == 3 {
                if let Some(c) = c.as_mut() {
                    c[10] ^= 1;
                }
            }
            Ok(c)
        });
        assert!(views.active.borrow().datasets.is_empty(), "altered chunk");
        let (_, views, _) = start_with(setup(), &mut |_, _, i| {
            Ok(b.chunks.get(i).cloned().filter(|_| i != 2))
        });
        assert!(views.active.borrow().datasets.is_empty(), "missing chunk");
    }

    #[test]
    fn a_refused_message_is_logged_in_status_and_changes_nothing() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let (downlink, views, _svc) = start(Setup {
            trusted: TrustedKeys::new([key.verifying_key()]),
            max_payload: 1 << 20,
            prefix: "tg".into(),
            site: "s".into(),
            gateway: "g".into(),
            stored: Vec::new(),
        });
        assert_eq!(
            downlink.filters(),
            vec![
                "tg/masterdata/+",
                "tg/s/masterdata/+",
                "tg/s/g/masterdata/+"
            ]
        );
        assert!(downlink
            .on_message("tg/s/g/masterdata/x", b"garbage")
            .is_empty());
        assert!(downlink.on_message("tg/s/g/other", b"garbage").is_empty());
        let st = views.status.borrow().clone();
        assert_eq!(st.rejected_total, 1);
        assert_eq!(
            st.last_rejected.as_ref().unwrap().reason,
            "tg/s/g/masterdata/x: manifest frame of 7 bytes is too short"
        );
        assert!(human_lines(&st).contains("masterdata_rejected"));
        assert!(views.active.borrow().datasets.is_empty());
        // A valid dataset: subscribe to its chunks, then deliver it.
        let b = build(
            &key,
            "x",
            1,
            Scope::default(),
            "",
            b"{\"t\":\"nfc\",\"uid\":\"04010203\",\"gtin\":\"09506000134352\",\"serial\":\"1\"}\n",
            1024,
        )
        .unwrap();
        let actions = downlink.on_message("tg/masterdata/x", &b.frame);
        assert!(
            matches!(&actions[..], [DownlinkAction::Subscribe(f)] if f == "tg/masterdata/x/1/+")
        );
        let actions = downlink.on_message("tg/masterdata/x/1/0", &b.chunks[0]);
        assert!(matches!(
            &actions[..],
            [DownlinkAction::Unsubscribe(_), DownlinkAction::Deliver(_)]
        ));
    }
}
