//! Mutual TLS against mosquitto with `require_certificate true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;
use tracegate::publish::{probe_connect, ClientAuth, MqttConfig, PublishError};
use tracegate::store::FullPolicy;

fn tls_config(port: u16, pki: &Pki, cert: &std::path::Path, key: &std::path::Path) -> MqttConfig {
    let mut c = mqtt_config(&format!("mqtts://localhost:{port}"));
    c.ca_file = Some(pki.ca.clone());
    c.client_auth = Some(ClientAuth {
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
    });
    c
}

fn mtls_broker(pki: &Pki) -> Mosquitto {
    Mosquitto::start_with(Some(ListenerTls {
        ca_file: pki.ca.clone(),
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        require_certificate: true,
    }))
}

async fn probe(cfg: &MqttConfig) -> Result<(), PublishError> {
    tokio::time::timeout(Duration::from_secs(10), probe_connect(cfg, &identity()))
        .await
        .expect("connect attempt hung")
}

#[tokio::test]
async fn client_with_a_certificate_from_the_trusted_ca_connects() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = mtls_broker(&pki);
    probe(&tls_config(
        broker.port,
        &pki,
        &pki.client_cert,
        &pki.client_key,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = mtls_broker(&pki);
    let e = probe(&tls_config(
        broker.port,
        &pki,
        &pki.rogue_cert,
        &pki.rogue_key,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, PublishError::Connection(_)), "{e}");
}

#[tokio::test]
async fn client_without_a_certificate_is_refused_when_required() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = mtls_broker(&pki);
    let mut cfg = tls_config(broker.port, &pki, &pki.client_cert, &pki.client_key);
    cfg.client_auth = None;
    assert!(probe(&cfg).await.is_err());
}

#[tokio::test]
async fn plaintext_client_is_refused_by_a_tls_listener() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = mtls_broker(&pki);
    let cfg = mqtt_config(&format!("mqtt://127.0.0.1:{}", broker.port));
    assert!(probe(&cfg).await.is_err());
}

#[tokio::test]
async fn tls_client_does_not_fall_back_to_plaintext() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = Mosquitto::start();
    let cfg = tls_config(broker.port, &pki, &pki.client_cert, &pki.client_key);
    assert!(probe(&cfg).await.is_err());
}

#[tokio::test]
async fn broker_certificate_not_signed_by_the_configured_ca_is_refused() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let other = make_pki();
    let broker = mtls_broker(&pki);
    // Trust only the other PKI's CA.
    let mut cfg = tls_config(broker.port, &pki, &pki.client_cert, &pki.client_key);
    cfg.ca_file = Some(other.ca.clone());
    let e = probe(&cfg).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn unreadable_key_file_is_a_clear_config_error_without_its_content() {
    let pki = make_pki();
    std::fs::write(
        &pki.client_key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cfg = tls_config(1, &pki, &pki.client_cert, &pki.client_key);
    let e = probe(&cfg).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, PublishError::Tls(_)), "{text}");
    assert!(text.contains("client.key"), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_over_mutual_tls() {
    if !mosquitto_available() {
        return;
    }
    let pki = make_pki();
    let broker = mtls_broker(&pki);
    // The registry side also needs a client certificate here.
    let dir = tempfile::tempdir().unwrap();
    let store_cfg = store_config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut writer = Writer::start(&store_cfg);
    let (ctx, stats) = context(&store_cfg, writer.committed.clone(), writer.watermark());
    let cfg = tls_config(broker.port, &pki, &pki.client_cert, &pki.client_key);
    let (cancel, task) = spawn_publisher(cfg, ctx);
    writer.append(0, 2_000, 100).await;
    writer.wait_committed(2_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats
        .published_upto
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2_000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not acknowledged over TLS: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    writer.stop();
}
