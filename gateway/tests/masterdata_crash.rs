//! SIGKILL during a master-data apply: the real `tracegate run` receives a
//! large dataset from mosquitto and is killed while the writer is staging
//! its chunks. Afterwards the store holds the old dataset or the new one,
//! each complete and verifying, never a mix; the next start deletes the
//! staged leftovers and enforces what is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::Mosquitto;
use tracegate::masterdata::format::{
    build, public_key_text, verify_manifest, Built, Scope, TrustedKeys,
};
use tracegate::masterdata::tool;
use tracegate::store::masterdata::{path_for, read_active};

fn dataset(key: &SigningKey, version: u64, lines: usize) -> Built {
    let mut payload = String::new();
    for i in 0..lines as u64 {
        payload += &format!(
            "{{\"t\":\"commissioned\",\"gtin\":\"09506000134352\",\"from\":{},\"to\":{}}}\n",
            i * 10,
            i * 10 + 4
        );
    }
    build(
        key,
        "serials",
        version,
        Scope::default(),
        "",
        payload.as_bytes(),
        64 * 1024,
    )
    .unwrap()
}

fn plan(b: &Built) -> Vec<(String, Vec<u8>)> {
    let topic = tool::manifest_topic("tracegate", &b.manifest);
    let mut p: Vec<(String, Vec<u8>)> = b
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{topic}/{}/{i}", b.manifest.version), c.clone()))
        .collect();
    p.push((topic, b.frame.clone()));
    p
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tracegate"))
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn staged(events_db: &Path, version: u64) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(path_for(events_db)) else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM chunks WHERE version = ?1",
        [version as i64],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_an_apply_leaves_the_old_or_the_new_dataset_never_a_mix() {
    if !support::mosquitto_available() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[31; 32]);
    let key_file = dir.path().join("registry.pub");
    std::fs::write(&key_file, public_key_text(&key.verifying_key())).unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "gw1"
site = "plant"
data_dir = "{}"

[[readers]]
name = "door"
kind = "sim"

[[read_points]]
name = "dock"
reader = "door"

[mqtt]
url = "{}"

[ops]
metrics_addr = "off"

[masterdata]
trusted_keys = ["{}"]
"#,
            dir.path().display(),
            broker.url(),
            key_file.display()
        ),
    )
    .unwrap();
    let events_db = dir.path().join("events.db");
    let trusted = TrustedKeys::new([key.verifying_key()]);
    let old = dataset(&key, 1, 1000);
    let new = dataset(&key, 2, 400_000);

    for round in 0..3 {
        let mut child = spawn(&config);
        if round == 0 {
            tool::publish(
                "127.0.0.1",
                broker.port,
                plan(&old),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            wait_for("version 1 applied", Duration::from_secs(30), || {
                read_active(&events_db).is_ok_and(|a| a.first().is_some_and(|d| d.version == 1))
            });
            tool::publish(
                "127.0.0.1",
                broker.port,
                plan(&new),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        }
        // Kill while version 2 is being staged (or right after it switched).
        let active_v2 =
            || read_active(&events_db).is_ok_and(|a| a.first().is_some_and(|d| d.version == 2));
        if round > 0 {
            // The new process first deletes what the killed one staged.
            wait_for("leftovers deleted", Duration::from_secs(30), || {
                staged(&events_db, 2) == 0 || active_v2()
            });
        }
        wait_for("staging of version 2", Duration::from_secs(60), || {
            staged(&events_db, 2) > 2 || active_v2()
        });
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();

        let active = read_active(&events_db).unwrap();
        assert_eq!(active.len(), 1, "round {round}");
        let d = &active[0];
        let want = if d.version == 1 { &old } else { &new };
        assert_eq!(
            d.manifest, want.frame,
            "round {round}: manifest of version {}",
            d.version
        );
        assert_eq!(
            d.chunks, want.chunks,
            "round {round}: chunks of version {} mixed",
            d.version
        );
        let v = verify_manifest(&d.manifest, &trusted, u64::MAX).unwrap();
        for (i, c) in d.chunks.iter().enumerate() {
            v.manifest.check_chunk(i as u64, c).unwrap();
        }
        if d.version == 2 {
            break;
        }
    }
    // A clean start deletes the leftovers and ends with version 2 applied
    // (the retained manifest is still there).
    let mut child = spawn(&config);
    wait_for("version 2 in force", Duration::from_secs(60), || {
        read_active(&events_db).is_ok_and(|a| a.first().is_some_and(|d| d.version == 2))
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait().unwrap();
    let conn = rusqlite::Connection::open(path_for(&events_db)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, new.chunks.len(), "staged leftovers kept");
}
