//! Secrets never reach the log: a password in the broker URL is refused
//! without being repeated, and the MQTT password file's content stays out
//! of a trace-level log of connections the broker refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracegate_hw_tests::{bin, peer_available, signal, wait_exit, wait_for, TempGateway};

const URL_PASSWORD: &str = "hunter2-in-the-url";
const FILE_PASSWORD: &str = "hunter2-in-the-file";

fn mosquitto() -> Option<&'static str> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let probe = found.ok_or_else(|| "mosquitto not installed".to_owned());
    peer_available("TRACEGATE_REQUIRE_MOSQUITTO", probe.map(|_| ())).then(|| found.unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tracegate run` with every log line, rumqttc's included.
fn spawn_tracing(gw: &TempGateway) -> Child {
    let log = std::fs::File::create(gw.dir.path().join("tracegate.log")).unwrap();
    Command::new(bin().unwrap())
        .args(["run", "--config"])
        .arg(&gw.config)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_password_in_the_broker_url_is_refused_without_being_repeated() {
    let gw = TempGateway::new(
        "gw-secret",
        &format!(
            "[[readers]]\nname = \"sim\"\nkind = \"sim\"\n\n[[read_points]]\nname = \"door\"\nreader = \"sim\"\n\n[mqtt]\nurl = \"mqtt://gw:{URL_PASSWORD}@127.0.0.1:1883\"\n"
        ),
    )
    .unwrap();
    let check = Command::new(bin().unwrap())
        .arg("check-config")
        .arg(&gw.config)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!check.status.success(), "{said}");
    assert!(said.contains("credentials in the URL"), "{said}");
    assert!(!said.contains(URL_PASSWORD), "{said}");

    let mut child = spawn_tracing(&gw);
    let status =
        wait_exit(&mut child, Duration::from_secs(20)).expect("run did not refuse the config");
    assert!(!status.success());
    let log = gw.log();
    assert!(log.contains("credentials in the URL"), "{log}");
    assert!(!log.contains(URL_PASSWORD), "{log}");
}

#[test]
fn the_mqtt_password_stays_out_of_a_trace_log_of_refused_connections() {
    let Some(mosquitto) = mosquitto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    // As root, mosquitto would drop to its own user unless told not to.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\n{}",
            if root { "user root\n" } else { "" }
        ),
    )
    .unwrap();
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("mosquitto did not start");

    let user_file = dir.path().join("user");
    let pass_file = dir.path().join("password");
    std::fs::write(&user_file, "gw-user\n").unwrap();
    std::fs::write(&pass_file, format!("{FILE_PASSWORD}\n")).unwrap();
    let gw = TempGateway::new(
        "gw-secret",
        &format!(
            "[[readers]]\nname = \"sim\"\nkind = \"sim\"\n\n[[read_points]]\nname = \"door\"\nreader = \"sim\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nusername_file = \"{}\"\npassword_file = \"{}\"\n",
            user_file.display(),
            pass_file.display()
        ),
    )
    .unwrap();
    let mut child = spawn_tracing(&gw);
    // Refused logins are retried: wait for two in the log.
    let refused = wait_for(Duration::from_secs(30), || {
        (gw.log().matches("NotAuthorized").count() >= 2).then_some(())
    });
    signal(&child, Signal::SIGTERM).unwrap();
    wait_exit(&mut child, Duration::from_secs(10)).expect("gateway did not stop");
    let _ = broker.kill();
    let _ = broker.wait();
    let log = gw.log();
    assert!(
        refused.is_some(),
        "the broker never refused the login: {log}"
    );
    assert!(!log.contains(FILE_PASSWORD), "password in the log");
}
