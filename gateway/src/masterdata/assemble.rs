//! Reassembly of datasets from MQTT messages (sans-IO): topics in, verified
//! payloads out.
//!
//! Topics (docs/masterdata.md, "Transport"): a retained manifest frame on
//! `{prefix}/masterdata/{name}` (fleet), `{prefix}/{site}/masterdata/{name}`
//! (site) or `{prefix}/{site}/{gateway}/masterdata/{name}` (this gateway),
//! and each chunk retained on `{manifest topic}/{version}/{index}`. The
//! gateway subscribes to the three manifest filters; once a manifest
//! verifies it subscribes to that version's chunks, and unsubscribes when
//! the dataset is complete or refused.
//!
//! A disconnect loses nothing: chunks already checked stay here, the broker
//! re-sends the retained manifest at the next connection, the same version
//! resumes and only missing chunks are still needed. A newer manifest
//! replaces an unfinished older one (a restart with the new version).

use std::collections::HashMap;

use super::format::{
    check_chunks, check_payload, name_ok, verify_manifest, FormatError, TrustedKeys,
    VerifiedManifest,
};

/// Datasets being received at once; a further name waits for one to finish
/// (its manifest is refused and comes again with the next connection).
pub const MAX_PENDING: usize = 8;

/// The topic filters that carry this gateway's manifests.
pub fn manifest_filters(prefix: &str, site: &str, gateway: &str) -> [String; 3] {
    [
        format!("{prefix}/masterdata/+"),
        format!("{prefix}/{site}/masterdata/+"),
        format!("{prefix}/{site}/{gateway}/masterdata/+"),
    ]
}

/// The filter for the chunks of one version of a dataset.
pub fn chunk_filter(manifest_topic: &str, version: u64) -> String {
    format!("{manifest_topic}/{version}/+")
}

/// What a topic under one of this gateway's masterdata filters is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    Manifest {
        name: String,
    },
    Chunk {
        manifest_topic: String,
        name: String,
        version: u64,
        index: u64,
    },
}

/// Classifies `topic` (`None`: not one of this gateway's masterdata topics).
pub fn parse_topic(prefix: &str, site: &str, gateway: &str, topic: &str) -> Option<TopicKind> {
    let bases = [
        format!("{prefix}/masterdata/"),
        format!("{prefix}/{site}/masterdata/"),
        format!("{prefix}/{site}/{gateway}/masterdata/"),
    ];
    let rest = bases.iter().find_map(|b| topic.strip_prefix(b.as_str()))?;
    let mut parts = rest.split('/');
    let name = parts.next().filter(|n| name_ok(n))?.to_owned();
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some(TopicKind::Manifest { name }),
        (Some(v), Some(i), None) => {
            let version = v.parse().ok()?;
            let index = i.parse().ok()?;
            let manifest_topic = topic.rsplitn(3, '/').nth(2)?.to_owned();
            Some(TopicKind::Chunk {
                manifest_topic,
                name,
                version,
                index,
            })
        }
        _ => None,
    }
}

/// Why a dataset was refused; `Display` is the log line and the status text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("dataset {name}: version {version} is not above the active version {active} (rollback refused)")]
    Rollback {
        name: String,
        version: u64,
        active: u64,
    },
    #[error("dataset {name} on topic {topic} does not match the manifest (name {manifest_name})")]
    WrongTopic {
        name: String,
        manifest_name: String,
        topic: String,
    },
    #[error("dataset {name} version {version} is for {scope}, not this gateway")]
    WrongScope {
        name: String,
        version: u64,
        scope: String,
    },
    #[error("dataset {name}: {pending} other datasets are being received; try again later")]
    Busy { name: String, pending: usize },
    #[error("dataset {name} version {version}: {message}")]
    Records {
        name: String,
        version: u64,
        message: String,
    },
}

/// What to do after a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestAction {
    /// Same version as the active one (the retained copy at every connect).
    AlreadyActive,
    /// Subscribe to these chunks (QoS 1).
    Subscribe(String),
    /// A dataset without payload: complete at once.
    Complete(Box<Complete>),
}

/// A dataset whose every byte is checked against its signed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    pub manifest: VerifiedManifest,
    /// The chunks in order (kept as chunks: the store writes one per
    /// transaction).
    pub chunks: Vec<Vec<u8>>,
    /// The topic filter to unsubscribe from, when chunks were needed.
    pub unsubscribe: Option<String>,
}

impl Complete {
    pub fn payload(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

#[derive(Debug)]
struct Pending {
    manifest: VerifiedManifest,
    filter: String,
    chunks: Vec<Option<Vec<u8>>>,
    missing: usize,
}

/// The reassembly state: the active version per name and the datasets on
/// their way.
#[derive(Debug)]
pub struct Assembler {
    trusted: TrustedKeys,
    max_payload: u64,
    site: String,
    gateway: String,
    active: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
}

impl Assembler {
    pub fn new(trusted: TrustedKeys, max_payload: u64, site: &str, gateway: &str) -> Self {
        Self {
            trusted,
            max_payload,
            site: site.to_owned(),
            gateway: gateway.to_owned(),
            active: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Records the version in force for `name` (from the store at start, and
    /// after every apply).
    pub fn set_active(&mut self, name: &str, version: u64) {
        self.active.insert(name.to_owned(), version);
        if self
            .pending
            .get(name)
            .is_some_and(|p| p.manifest.manifest.version <= version)
        {
            self.pending.remove(name);
        }
    }

    /// Drops a dataset on its way (it will be received again).
    pub fn forget(&mut self, name: &str) {
        self.pending.remove(name);
    }

    pub fn active_version(&self, name: &str) -> Option<u64> {
        self.active.get(name).copied()
    }

    /// Chunk filters to subscribe to again after a reconnection.
    pub fn pending_filters(&self) -> Vec<String> {
        self.pending.values().map(|p| p.filter.clone()).collect()
    }

    /// Checks a manifest frame that arrived on `topic` (name taken from the
    /// topic). Verification (signature, digest, limits) comes first; then
    /// scope, rollback and resumption.
    pub fn on_manifest(
        &mut self,
        topic: &str,
        topic_name: &str,
        frame: &[u8],
    ) -> Result<ManifestAction, Rejection> {
        let v = verify_manifest(frame, &self.trusted, self.max_payload)?;
        let m = &v.manifest;
        if m.name != topic_name {
            return Err(Rejection::WrongTopic {
                name: topic_name.to_owned(),
                manifest_name: m.name.clone(),
                topic: topic.to_owned(),
            });
        }
        if !m.scope.covers(&self.site, &self.gateway) {
            return Err(Rejection::WrongScope {
                name: m.name.clone(),
                version: m.version,
                scope: m.scope.to_string(),
            });
        }
        let active = self.active.get(&m.name).copied().unwrap_or(0);
        if m.version == active {
            return Ok(ManifestAction::AlreadyActive);
        }
        let pending_version = self
            .pending
            .get(&m.name)
            .map(|p| p.manifest.manifest.version);
        if m.version < active || pending_version.is_some_and(|p| m.version < p) {
            return Err(Rejection::Rollback {
                name: m.name.clone(),
                version: m.version,
                active: active.max(pending_version.unwrap_or(0)),
            });
        }
        let filter = chunk_filter(topic, m.version);
        if let Some(p) = self.pending.get(&m.name) {
            if p.manifest.frame == v.frame {
                // Same dataset again (reconnection): resume.
                return Ok(ManifestAction::Subscribe(p.filter.clone()));
            }
        }
        if !self.pending.contains_key(&m.name) && self.pending.len() >= MAX_PENDING {
            return Err(Rejection::Busy {
                name: m.name.clone(),
                pending: self.pending.len(),
            });
        }
        let count = m.chunks.len();
        if count == 0 {
            self.pending.remove(&m.name);
            check_payload(m, &[])?;
            return Ok(ManifestAction::Complete(Box::new(Complete {
                manifest: v,
                chunks: Vec::new(),
                unsubscribe: None,
            })));
        }
        let name = m.name.clone();
        self.pending.insert(
            name,
            Pending {
                manifest: v,
                filter: filter.clone(),
                chunks: vec![None; count],
                missing: count,
            },
        );
        Ok(ManifestAction::Subscribe(filter))
    }

    /// Takes a chunk. `Ok(None)`: kept (or not wanted: no dataset of that
    /// name and version is on its way, e.g. an old retained chunk).
    /// A chunk that fails its digest refuses the whole dataset: its pending
    /// state is dropped and the caller unsubscribes from `filter`.
    pub fn on_chunk(
        &mut self,
        name: &str,
        version: u64,
        index: u64,
        data: &[u8],
    ) -> Result<Option<Complete>, (Rejection, String)> {
        let Some(p) = self.pending.get_mut(name) else {
            return Ok(None);
        };
        if p.manifest.manifest.version != version {
            return Ok(None);
        }
        if let Err(e) = p.manifest.manifest.check_chunk(index, data) {
            let filter = p.filter.clone();
            self.pending.remove(name);
            return Err((e.into(), filter));
        }
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| p.chunks.get_mut(i));
        if let Some(slot @ None) = slot {
            *slot = Some(data.to_vec());
            p.missing -= 1;
        }
        if p.missing > 0 {
            return Ok(None);
        }
        let Some(p) = self.pending.remove(name) else {
            return Ok(None);
        };
        let chunks: Vec<Vec<u8>> = p.chunks.into_iter().flatten().collect();
        let complete = Complete {
            manifest: p.manifest,
            chunks,
            unsubscribe: Some(p.filter.clone()),
        };
        if let Err(e) = check_chunks(&complete.manifest.manifest, &complete.chunks) {
            return Err((e.into(), p.filter));
        }
        Ok(Some(complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masterdata::format::{build, Built, Scope};
    use ed25519_dalek::SigningKey;

    const T: &str = "tg/plant/door1/masterdata/blocked";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn dataset(version: u64, payload: &[u8], scope: Scope) -> Built {
        build(&key(), "blocked", version, scope, "", payload, 1024).unwrap()
    }

    fn asm() -> Assembler {
        Assembler::new(
            TrustedKeys::new([key().verifying_key()]),
            1 << 20,
            "plant",
            "door1",
        )
    }

    fn feed(a: &mut Assembler, b: &Built, order: &[usize]) -> Option<Complete> {
        let mut done = None;
        for &i in order {
            if let Some(c) = a
                .on_chunk("blocked", b.manifest.version, i as u64, &b.chunks[i])
                .unwrap()
            {
                done = Some(c);
            }
        }
        done
    }

    #[test]
    fn topics_are_classified() {
        assert_eq!(
            parse_topic("tg", "plant", "door1", T),
            Some(TopicKind::Manifest {
                name: "blocked".into()
            })
        );
        assert_eq!(
            parse_topic("tg", "plant", "door1", "tg/masterdata/blocked/7/2"),
            Some(TopicKind::Chunk {
                manifest_topic: "tg/masterdata/blocked".into(),
                name: "blocked".into(),
                version: 7,
                index: 2
            })
        );
        assert_eq!(
            parse_topic("tg", "plant", "door1", "tg/plant/door2/masterdata/x"),
            None
        );
        assert_eq!(
            parse_topic("tg", "plant", "door1", "tg/masterdata/Bad"),
            None
        );
        assert_eq!(
            parse_topic("tg", "plant", "door1", "tg/masterdata/a/1/2/3"),
            None
        );
    }

    #[test]
    fn chunks_in_any_order_with_duplicates_complete_the_dataset() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let b = dataset(1, &payload, Scope::default());
        let mut a = asm();
        assert_eq!(
            a.on_manifest(T, "blocked", &b.frame),
            Ok(ManifestAction::Subscribe(format!("{T}/1/+")))
        );
        let c = feed(&mut a, &b, &[2, 0, 0, 2, 1]).unwrap();
        assert_eq!(c.payload(), payload);
        assert_eq!(c.unsubscribe.as_deref(), Some(&*format!("{T}/1/+")));
    }

    #[test]
    fn a_transfer_cut_by_a_disconnect_resumes_with_the_chunks_it_had() {
        let payload = vec![7u8; 3000];
        let b = dataset(2, &payload, Scope::default());
        let mut a = asm();
        a.on_manifest(T, "blocked", &b.frame).unwrap();
        assert!(feed(&mut a, &b, &[0]).is_none());
        // Reconnection: the retained manifest arrives again.
        assert_eq!(
            a.on_manifest(T, "blocked", &b.frame),
            Ok(ManifestAction::Subscribe(format!("{T}/2/+")))
        );
        assert_eq!(a.pending_filters(), vec![format!("{T}/2/+")]);
        assert!(feed(&mut a, &b, &[1, 2]).is_some());
    }

    #[test]
    fn rollback_equal_versions_and_foreign_scopes_are_handled() {
        let mut a = asm();
        a.set_active("blocked", 5);
        let old = dataset(4, b"x", Scope::default());
        assert!(matches!(
            a.on_manifest(T, "blocked", &old.frame),
            Err(Rejection::Rollback {
                version: 4,
                active: 5,
                ..
            })
        ));
        let same = dataset(5, b"x", Scope::default());
        assert_eq!(
            a.on_manifest(T, "blocked", &same.frame),
            Ok(ManifestAction::AlreadyActive)
        );
        let other = dataset(
            6,
            b"x",
            Scope {
                site: Some("plant".into()),
                gateway: Some("door2".into()),
            },
        );
        assert!(matches!(
            a.on_manifest(T, "blocked", &other.frame),
            Err(Rejection::WrongScope { .. })
        ));
        assert!(matches!(
            a.on_manifest(T, "other", &dataset(6, b"x", Scope::default()).frame),
            Err(Rejection::WrongTopic { .. })
        ));
    }

    #[test]
    fn a_bad_chunk_refuses_the_dataset_and_a_newer_manifest_restarts() {
        let b = dataset(3, &[1u8; 2500], Scope::default());
        let mut a = asm();
        a.on_manifest(T, "blocked", &b.frame).unwrap();
        let err = a.on_chunk("blocked", 3, 1, &b.chunks[1][..10]).unwrap_err();
        assert!(matches!(
            err.0,
            Rejection::Format(FormatError::ChunkLength { .. })
        ));
        assert!(a.pending_filters().is_empty());
        // Newer version replaces an unfinished one; chunks of the old are ignored.
        a.on_manifest(T, "blocked", &b.frame).unwrap();
        let newer = dataset(4, &[2u8; 10], Scope::default());
        a.on_manifest(T, "blocked", &newer.frame).unwrap();
        assert_eq!(a.on_chunk("blocked", 3, 0, &b.chunks[0]), Ok(None));
        assert!(a
            .on_chunk("blocked", 4, 0, &newer.chunks[0])
            .unwrap()
            .is_some());
    }

    #[test]
    fn an_empty_dataset_completes_from_its_manifest() {
        let b = dataset(1, b"", Scope::default());
        let mut a = asm();
        assert!(matches!(
            a.on_manifest(T, "blocked", &b.frame),
            Ok(ManifestAction::Complete(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn hostile_messages_never_panic(
            topic_tail in "[a-z0-9/]{0,20}",
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            version in 0u64..5, index in 0u64..5,
        ) {
            let mut a = asm();
            let _ = a.on_manifest(&format!("tg/masterdata/{topic_tail}"), "blocked", &data);
            let _ = a.on_chunk("blocked", version, index, &data);
            let _ = parse_topic("tg", "plant", "door1", &format!("tg/masterdata/{topic_tail}"));
        }
    }
}
