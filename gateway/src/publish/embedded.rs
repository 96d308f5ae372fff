//! An in-process MQTT broker and a printing subscriber for `tracegate demo`,
//! so the demo shows the whole path (store -> publisher -> broker ->
//! registry) without a server installed. Feature `demo-broker` (default on).
//!
//! The broker is rumqttd 0.20 (MQTT 3.1.1, QoS 1, retained messages, last
//! will; in-memory only, which is all a demo needs). It has no shutdown API:
//! it runs on its own threads until the process exits.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use super::PublishError;

/// The running broker; dropping it does not stop the broker.
#[derive(Debug)]
pub struct BrokerHandle {
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

/// Starts rumqttd on a free loopback port and waits until it accepts
/// connections. Returns the address to put in `mqtt.url` as
/// `mqtt://{addr}`.
pub fn start_broker() -> Result<(SocketAddr, BrokerHandle), PublishError> {
    use std::collections::HashMap;

    let err = |what: &str, e: &dyn std::fmt::Display| {
        PublishError::Connection(format!("embedded broker: {what}: {e}"))
    };
    // rumqttd cannot report the port it bound, so pick a free one first.
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| err("no free port", &e))?;
    let addr = probe.local_addr().map_err(|e| err("no free port", &e))?;
    drop(probe);

    let server = rumqttd::ServerSettings {
        name: "demo-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            // Above the publisher's largest packet (batch_max_bytes * 2 + 64 KiB).
            max_payload_size: 4 * 1024 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut v4 = HashMap::new();
    v4.insert("1".to_string(), server);
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Default::default()
    };
    let thread = std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| err("cannot start its thread", &e))?;
    // Wait until the listener is up (it binds on its own thread).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(err("did not start listening", &addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok((
        addr,
        BrokerHandle {
            addr,
            _thread: thread,
        },
    ))
}

/// Subscribes to `topic_filter` on the broker at `addr` (QoS 1) and calls
/// `on_message(topic, payload)` for each message until `cancel` fires.
/// Reconnects (and resubscribes) if the broker goes away.
pub async fn subscribe<F>(
    addr: SocketAddr,
    topic_filter: &str,
    cancel: CancellationToken,
    mut on_message: F,
) -> Result<(), PublishError>
where
    F: FnMut(&str, &[u8]) + Send,
{
    let id = format!("tracegate-demo-registry-{}", std::process::id());
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(8 * 1024 * 1024, 64 * 1024);
    let (client, mut el) = AsyncClient::new(opts, 16);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    client
                        .try_subscribe(topic_filter, QoS::AtLeastOnce)
                        .map_err(|e| PublishError::Connection(format!("subscribe: {e}")))?;
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => on_message(&p.topic, &p.payload),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "demo subscriber reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// What the registry receives, one line per event (or per status/health
/// message), on stdout.
pub async fn subscribe_and_print(
    addr: SocketAddr,
    topic_filter: &str,
    cancel: CancellationToken,
) -> Result<(), PublishError> {
    subscribe(addr, topic_filter, cancel, |topic, payload| {
        for line in describe_message(topic, payload) {
            println!("{line}");
        }
    })
    .await
}

/// Human-readable lines for one received message.
pub fn describe_message(topic: &str, payload: &[u8]) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => {
            return vec![format!(
                "registry <- {topic}: {} bytes (not JSON)",
                payload.len()
            )]
        }
    };
    match v.get("events").and_then(|e| e.as_array()) {
        Some(events) => events
            .iter()
            .map(|e| {
                let s = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
                let identity = e
                    .get("identity")
                    .and_then(|i| {
                        i.get("pure_identity")
                            .or_else(|| i.get("epc"))
                            .or_else(|| i.get("uid"))
                    })
                    .and_then(|x| x.as_str())
                    .unwrap_or("-")
                    .to_string();
                format!(
                    "registry <- {} {} {} at {} ({})",
                    s("type"),
                    identity,
                    s("read_point"),
                    s("time"),
                    s("id")
                )
            })
            .collect(),
        None => vec![format!("registry <- {topic}: {v}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lists_each_event_of_a_batch() {
        let payload = br#"{"schema":"tracegate.events/1","events":[
            {"id":"g:s:1","type":"arrived","read_point":"dock","time":"2026-01-01T00:00:00.000Z",
             "identity":{"epc":"3034","pure_identity":"urn:epc:id:sgtin:1.2.3"}},
            {"id":"g:s:2","type":"tap","identity":{"uid":"04AABB"}}]}"#;
        let lines = describe_message("t/events", payload);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("arrived urn:epc:id:sgtin:1.2.3 dock"));
        assert!(lines[1].contains("tap 04AABB"));
        assert!(describe_message("t", b"\xff")[0].contains("not JSON"));
    }
}
