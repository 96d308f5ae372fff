//! Test harness for the MQTT uplink: a real mosquitto on a free loopback
//! port (generated config, stop/restart, TLS), a registry-side subscriber
//! that collects what arrives, and helpers that write events through the
//! real store.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use tracegate::heartbeat::Heartbeats;
use tracegate::publish::{GatewayIdentity, MqttConfig, PublisherContext, PublisherStats};
use tracegate::store::{
    spawn_writer, EventDraft, FullPolicy, Store, StoreConfig, StoreReader, Watermark, WriteRequest,
    WriterHandle,
};

pub const GATEWAY: &str = "gw-test";
pub const SITE: &str = "dock-7";

/// Names the mosquitto binary to use instead of searching for one (a path
/// that does not exist makes the broker tests skip, which is how the
/// hermetic run is checked on a machine that has mosquitto).
pub const MOSQUITTO_ENV: &str = "TRACEGATE_MOSQUITTO";
/// Set to 1 (CI does) to make a missing mosquitto fail the broker tests
/// instead of skipping them.
pub const REQUIRE_MOSQUITTO_ENV: &str = "TRACEGATE_REQUIRE_MOSQUITTO";

/// Decides what a test that needs a peer outside this process (a real
/// broker, pcscd) does when `probe` says it is missing: print
/// `skipped: <reason>` and return false, so `cargo test` passes on a bare
/// machine; or, with `require_var=1`, fail loudly so CI cannot silently skip.
pub fn peer_available(require_var: &str, probe: Result<(), String>) -> bool {
    let Err(why) = probe else { return true };
    if std::env::var(require_var).as_deref() == Ok("1") {
        panic!("{require_var}=1 but {why}");
    }
    // Written to stderr directly: libtest captures `println!`/`eprintln!` of
    // passing tests, and a skip must show in a plain `cargo test` run.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    false
}

/// The mosquitto binary: `TRACEGATE_MOSQUITTO`, else the usual locations
/// (sbin is often not on a user's PATH), else PATH.
pub fn mosquitto_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(MOSQUITTO_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "mosquitto not found at {} ({MOSQUITTO_ENV})",
                p.display()
            ))
        };
    }
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
    {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return Ok(PathBuf::from(s));
        }
    }
    Err("mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)".into())
}

/// Whether the tests that need a real broker can run; call first and
/// return when false. See [`peer_available`].
pub fn mosquitto_available() -> bool {
    peer_available(REQUIRE_MOSQUITTO_ENV, mosquitto_bin().map(|_| ()))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// TLS material for a listener.
#[derive(Clone)]
pub struct ListenerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub require_certificate: bool,
}

/// A mosquitto process with its own directory, config and log.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain listener, persistence on (so a persistent subscriber session
    /// and its queued messages survive a stop/start), no queue limit.
    pub fn start() -> Mosquitto {
        Self::start_with(None)
    }

    /// Panics when mosquitto is missing: call [`mosquitto_available`] first.
    pub fn start_with(tls: Option<ListenerTls>) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             max_queued_messages 0\n\
             max_inflight_messages 20\n\
             log_dest file {}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\n",
            dir.path().display(),
            dir.path().display()
        );
        if running_as_root() {
            // Otherwise mosquitto drops to the `mosquitto` user and cannot
            // write its log and database in our private temp directory.
            conf.push_str("user root\n");
        }
        if let Some(t) = &tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                t.ca_file.display(),
                t.cert_file.display(),
                t.key_file.display(),
                t.require_certificate
            ));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            conf: conf_path,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let bin = mosquitto_bin().unwrap_or_else(|why| panic!("{why}"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mosquitto exited ({status}) on port {}; log:\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "mosquitto did not listen on {} in 10 s; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Graceful stop (SIGTERM: mosquitto saves sessions and queues).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the registry received.
#[derive(Default)]
pub struct Received {
    /// Every event id, in arrival order (duplicates included).
    pub ids: Vec<String>,
    pub unique: HashSet<String>,
    /// Overflow events (their JSON), deduplicated by id.
    pub overflows: HashMap<String, serde_json::Value>,
    pub batches: u64,
    /// Raw payloads of the first batches, for schema validation.
    pub sample_batches: Vec<serde_json::Value>,
    pub statuses: Vec<serde_json::Value>,
    pub healths: Vec<serde_json::Value>,
    /// Receive instant of each event id (first arrival).
    pub first_seen: HashMap<String, Instant>,
}

impl Received {
    pub fn duplicates(&self) -> usize {
        self.ids.len() - self.unique.len()
    }
}

/// A registry-side subscriber: persistent session (clean_session = false),
/// QoS 1, so nothing queued at the broker is lost across a broker restart.
pub struct Registry {
    pub got: Arc<Mutex<Received>>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registry {
    pub async fn start(addr: SocketAddr, filter: &str) -> Registry {
        let got = Arc::new(Mutex::new(Received::default()));
        let cancel = CancellationToken::new();
        let id = format!("registry-{}-{}", std::process::id(), rand::random::<u32>());
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(16 * 1024 * 1024, 64 * 1024);
        opts.set_inflight(100);
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (subscribed_tx, mut subscribed_rx) = mpsc::unbounded_channel::<()>();
        let g = got.clone();
        let c = cancel.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = c.cancelled() => return,
                    ev = el.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|e| panic!("non-JSON payload on {}: {e}", p.topic));
                        let mut r = g.lock().unwrap();
                        if p.topic.ends_with("/events") {
                            r.batches += 1;
                            let now = Instant::now();
                            if let Some(evs) = v["events"].as_array() {
                                for e in evs {
                                    let id = e["id"].as_str().unwrap_or_default().to_string();
                                    if e["type"] == "overflow" {
                                        r.overflows.insert(id.clone(), e.clone());
                                    }
                                    r.first_seen.entry(id.clone()).or_insert(now);
                                    r.unique.insert(id.clone());
                                    r.ids.push(id);
                                }
                            }
                            let has_overflow = v["events"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|e| e["type"] == "overflow"));
                            if r.sample_batches.len() < 50 || has_overflow {
                                r.sample_batches.push(v);
                            }
                        } else if p.topic.ends_with("/status") {
                            r.statuses.push(v);
                        } else if p.topic.ends_with("/health") {
                            r.healths.push(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx.recv())
            .await
            .expect("registry subscriber did not get a SUBACK in 10 s");
        Registry {
            got,
            cancel,
            task: Some(task),
        }
    }

    /// Waits until `cond` holds (checked every 20 ms) or panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Received) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let r = self.got.lock().unwrap();
                if cond(&r) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}: {} unique ids, {} duplicates, {} batches",
                        r.unique.len(),
                        r.duplicates(),
                        r.batches
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub fn store_config(dir: &Path, max_bytes: u64, policy: FullPolicy) -> StoreConfig {
    StoreConfig {
        path: dir.join("events.db"),
        max_bytes,
        full_policy: policy,
        commit_interval_ms: 5,
        commit_age_ms: 0,
        commit_max_events: 500,
        retention_secs: 7 * 24 * 3600,
    }
}

/// A realistic `arrived` event (docs/events.md).
pub fn draft(i: u64) -> EventDraft {
    use tracegate::event::{Direction, EventBody};
    let now = chrono::Utc::now().timestamp_millis();
    let epc = hex::decode(format!("3074257BF7194E40{:08X}", i as u32)).unwrap();
    let mut event =
        tracegate::event::Event::sample_arrival(GATEWAY, SITE, "dock-door-1", &epc, now);
    if let EventBody::Arrived(b) = &mut event.body {
        b.at.reader = "door-1".into();
        b.read_count = 3;
        b.peak_rssi_dbm = Some(-52);
        b.antennas = vec![1, 2];
        b.direction = Some(Direction::In);
    }
    EventDraft::new(event)
}

/// The store writer plus the channel the pipeline would feed.
///
/// The real group-commit writer (`spawn_writer`). With
/// `TRACEGATE_TEST_SIMPLE_WRITER=1`, a plain thread that commits each batch
/// with `Store::append` instead (to tell writer problems from publisher ones).
pub struct Writer {
    pub tx: Option<mpsc::Sender<WriteRequest>>,
    pub committed: watch::Receiver<u64>,
    /// Taken by [`Writer::watermark`] for the publisher's context.
    watermark: Option<Watermark>,
    handle: Option<std::thread::JoinHandle<()>>,
    writer: Option<WriterHandle>,
}

impl Writer {
    pub fn start(cfg: &StoreConfig) -> Writer {
        let mut store = Store::open(cfg, GATEWAY).expect("cannot open the test store");
        let (tx, mut rx) = mpsc::channel::<WriteRequest>(1024);
        if std::env::var("TRACEGATE_TEST_SIMPLE_WRITER").as_deref() != Ok("1") {
            let w = spawn_writer(store, rx, None, None).expect("cannot start the writer");
            return Writer {
                tx: Some(tx),
                committed: w.committed,
                watermark: Some(w.watermark),
                handle: None,
                writer: Some(w.handle),
            };
        }
        let stats = store.stats().unwrap();
        let (ctx, crx) = watch::channel(stats.last_seq);
        let (watermark, wm_rx) = Watermark::channel(stats.published_upto);
        let handle = std::thread::spawn(move || {
            let mark = |store: &mut Store| {
                let upto = *wm_rx.borrow();
                store.mark_published(upto).unwrap();
            };
            while let Some(first) = rx.blocking_recv() {
                // Group commit: everything already queued goes in one transaction.
                let mut drafts = first.drafts;
                while drafts.len() < 2_000 {
                    match rx.try_recv() {
                        Ok(more) => drafts.extend(more.drafts),
                        Err(_) => break,
                    }
                }
                let stored = store.append(drafts).expect("append failed");
                if let Some(last) = stored.last() {
                    ctx.send_replace(last.seq);
                }
                mark(&mut store);
            }
            mark(&mut store);
        });
        Writer {
            tx: Some(tx),
            committed: crx,
            watermark: Some(watermark),
            handle: Some(handle),
            writer: None,
        }
    }

    /// The outbox watermark, for one publisher; the writer stops only after
    /// it is dropped (with the publisher's context).
    pub fn watermark(&mut self) -> Watermark {
        self.watermark
            .take()
            .expect("one publisher per test writer")
    }

    /// Appends `count` events starting at draft number `from`, in requests of `per_request`.
    pub async fn append(&self, from: u64, count: u64, per_request: u64) {
        let tx = self.tx.as_ref().unwrap();
        let mut i = from;
        while i < from + count {
            let n = per_request.min(from + count - i);
            let drafts = (i..i + n).map(draft).collect();
            tx.send(WriteRequest { drafts, ack: None }).await.unwrap();
            i += n;
        }
    }

    /// Waits until at least `seq` is committed.
    pub async fn wait_committed(&mut self, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while *self.committed.borrow() < seq {
            assert!(
                Instant::now() < deadline,
                "store did not commit seq {seq} in 60 s"
            );
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.committed.changed()).await;
        }
    }

    pub fn stop(&mut self) {
        self.tx.take();
        self.watermark.take();
        if let Some(h) = self.handle.take() {
            h.join().expect("store writer failed");
        }
        if let Some(h) = self.writer.take() {
            h.join().expect("store writer failed");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        self.watermark.take();
    }
}

/// Every event id in the store (for set equality with what arrived).
pub fn store_ids(cfg: &StoreConfig) -> HashSet<String> {
    let store = Store::open_reader(cfg, GATEWAY).unwrap();
    let mut ids = HashSet::new();
    let mut after = 0;
    loop {
        let evs = store.events_after(after, 10_000, false).unwrap();
        let Some(last) = evs.last() else { break };
        after = last.seq;
        ids.extend(evs.into_iter().map(|e| e.id));
    }
    ids
}

/// Logs to stderr when RUST_LOG is set (debugging a failing test).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn identity() -> GatewayIdentity {
    GatewayIdentity {
        gateway_id: GATEWAY.into(),
        site: SITE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        config_hash: "sha256:test".into(),
        reader_names: vec!["door-1".into()],
    }
}

/// A publisher config for tests: fast reconnects, short intervals.
pub fn mqtt_config(url: &str) -> MqttConfig {
    let mut c = MqttConfig::with_url(url).unwrap();
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.keep_alive = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(2);
    c.health_interval = Duration::from_secs(1);
    c
}

/// A publisher context reading `store` through its own [`StoreReader`].
pub fn context(
    store: &StoreConfig,
    committed: watch::Receiver<u64>,
    watermark: Watermark,
) -> (PublisherContext, Arc<PublisherStats>) {
    let hbs = Heartbeats::new(tracegate_drivers::Clock::new());
    let stats = Arc::new(PublisherStats::default());
    let reader = Store::open_reader(store, GATEWAY).expect("cannot open the test store");
    let ctx = PublisherContext {
        identity: identity(),
        reader: StoreReader::spawn(reader).expect("cannot start the store reader"),
        watermark,
        committed,
        health: {
            let door = tracegate_drivers::ReaderHealth::new("door-1", "sim");
            Arc::new(move || tracegate::ops::Status {
                gateway: GATEWAY.into(),
                site: SITE.into(),
                version: "test".into(),
                config_hash: "test".into(),
                started_at: tracegate::event::UtcMs(0),
                uptime_secs: 0,
                readers: vec![door.snapshot()],
                store: None,
                publisher: None,
                health: None,
                heartbeats: Vec::new(),
                masterdata: None,
            })
        },
        heartbeat: hbs.register("publisher"),
        stats: stats.clone(),
        acks: None,
        downlink: None,
    };
    (ctx, stats)
}

/// Runs the publisher on the current runtime until the returned token is cancelled.
pub fn spawn_publisher(
    cfg: MqttConfig,
    ctx: PublisherContext,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tracegate::publish::PublishError>>,
) {
    init_tracing();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { tracegate::publish::run(&cfg, ctx, c).await });
    (cancel, task)
}

/// The event JSON Schema, compiled.
pub fn events_schema() -> jsonschema::Validator {
    let text = include_str!("../../../docs/events.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).unwrap();
    jsonschema::validator_for(&schema).expect("docs/events.schema.json is not a valid schema")
}

pub fn assert_valid(v: &jsonschema::Validator, doc: &serde_json::Value) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "payload does not match docs/events.schema.json: {errors:?}\n{doc}"
    );
}

/// Generated PKI for the TLS tests.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from a different CA.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

pub fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        (cert, Issuer::new(p, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(if server {
            vec!["localhost".to_string()]
        } else {
            vec![]
        })
        .unwrap();
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::V4(
                    Ipv4Addr::LOCALHOST,
                )));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (ca_cert, ca_issuer) = ca("tracegate test CA");
    let (_rogue_ca, rogue_issuer) = ca("rogue CA");
    let (sc, sk) = leaf(&ca_issuer, "localhost", true);
    let (cc, ck) = leaf(&ca_issuer, GATEWAY, false);
    let (rc, rk) = leaf(&rogue_issuer, GATEWAY, false);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", sc),
        server_key: write("server.key", sk),
        client_cert: write("client.pem", cc),
        client_key: write("client.key", ck),
        rogue_cert: write("rogue.pem", rc),
        rogue_key: write("rogue.key", rk),
        dir,
    }
}
