//! The R2000 driver against the R2000 simulator over real pseudo-terminals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracegate_drivers::r2000::sim::{Faults, R2000Sim, R2000SimParams, SimTag};
use tracegate_drivers::r2000::{self, R2000Config, R2000Error, R2000Mode, R2000Region};
use tracegate_drivers::{Clock, ReaderState};

mod uhf_common;
use uhf_common::{collect_until, wait_for, Running};

fn epc(n: u8) -> Vec<u8> {
    // 0xA0 inside the EPC: the header byte must not confuse the decoder.
    vec![
        0xE2, 0x00, 0xA0, 0x16, 0x66, 0x13, 0x01, 0x21, 0x15, 0x50, 0xA0, n,
    ]
}

fn start(config: R2000Config) -> Running<R2000Error> {
    let name = config.name.clone();
    uhf_common::start(&name, "r2000", move |sink, health, cancel| async move {
        r2000::run(&config, sink, health, cancel).await
    })
}

fn config(port: &std::path::Path, antennas: &[u8]) -> R2000Config {
    let mut c = R2000Config::new("g1", port.to_str().unwrap());
    c.antennas = antennas.to_vec();
    c.response_timeout_ms = 1000;
    c.round_timeout_ms = 2000;
    c
}

#[tokio::test]
async fn real_time_reads_equal_the_epcs_sent_with_valid_checksums_despite_faults() {
    let tags = vec![
        SimTag::new(epc(1), 1, -55),
        SimTag::new(epc(2), 1, -60),
        SimTag::new(epc(3), 2, -65),
    ];
    let sim = R2000Sim::new(R2000SimParams {
        tags,
        round_time: Duration::from_millis(5),
        max_tag_frames: Some(60),
        faults: Faults {
            split_every: Some(3),
            garbage_every: Some(5),
            bad_crc_every: Some(7),
            ..Faults::default()
        },
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(config(&path, &[1, 2]));

    wait_for(
        || {
            let rep = sim.report();
            rep.sent_epcs.len() + rep.bad_crc_epcs.len() >= 60
        },
        "all tag frames",
    )
    .await;
    let want = sim.report().sent_epcs;
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= want.len()).await;
    let got: Vec<_> = reads.iter().map(|r| r.epc.clone()).collect();
    assert_eq!(got, want);
    for read in &reads {
        let expect_ant = if read.epc == epc(3) { 2 } else { 1 };
        assert_eq!(read.antenna, expect_ant);
        assert!(read.frequency_khz.unwrap() >= 865_000);
    }
    let rep = sim.report();
    assert_eq!(rep.bad_crc_epcs.len(), 60 / 7);
    let h = r.health.snapshot();
    assert_eq!(h.state, ReaderState::Running);
    assert!(h.crc_errors >= rep.bad_crc_epcs.len() as u64, "{h:?}");
    assert!(h.resyncs >= 1, "{h:?}");
    assert!(h.details.iter().any(|(k, v)| k == "firmware" && v == "1.9"));
    assert_eq!(h.reads, want.len() as u64);
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_missing_antenna_is_counted_in_health_and_the_others_keep_reading() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50), SimTag::new(epc(2), 2, -50)],
        missing_antennas: vec![2],
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(config(&path, &[1, 2]));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 3).await;
    wait_for(
        || r.health.snapshot().protocol_errors >= 2,
        "antenna errors",
    )
    .await;
    assert!(reads.iter().all(|x| x.antenna == 1 && x.epc == epc(1)));
    let h = r.health.snapshot();
    let detail = h.details.iter().find(|(k, _)| k == "antenna_2").unwrap();
    assert!(detail.1.contains("antenna missing"), "{detail:?}");
    assert_eq!(h.state, ReaderState::Running);
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn fast_switch_covers_four_ports_and_reports_a_missing_one() {
    let tags = (1..=4).map(|a| SimTag::new(epc(a), a, -50)).collect();
    let sim = R2000Sim::new(R2000SimParams {
        tags,
        missing_antennas: vec![3],
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path, &[1, 2, 3, 4]);
    c.mode = R2000Mode::FastSwitch;
    let mut r = start(c);
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 9).await;
    let mut ants: Vec<u8> = reads.iter().map(|x| x.antenna).collect();
    ants.sort();
    ants.dedup();
    assert_eq!(ants, vec![1, 2, 4]);
    for x in &reads {
        assert_eq!(x.epc, epc(x.antenna));
    }
    assert!(sim.report().commands.contains(&0x8A));
    assert!(!sim.report().commands.contains(&0x74));
    let h = r.health.snapshot();
    assert!(h.protocol_errors >= 1);
    assert!(h
        .details
        .iter()
        .any(|(k, v)| k == "antenna_3" && v.contains("missing")));
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn power_and_region_are_written_only_when_they_differ() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50)],
        power_dbm: 30,
        region: (1, 7, 59),
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();

    let mut c = config(&path, &[1]);
    c.read_power_dbm = Some(30);
    c.region = Some(R2000Region::Fcc);
    let mut r = start(c.clone());
    collect_until(&mut r.rx, &mut Vec::new(), |rs| !rs.is_empty()).await;
    r.stop().await;
    let rep = sim.report();
    assert_eq!(
        (rep.power_writes, rep.region_writes),
        (0, 0),
        "{:02X?}",
        rep.commands
    );

    c.read_power_dbm = Some(25);
    c.region = Some(R2000Region::Etsi);
    let mut r = start(c);
    collect_until(&mut r.rx, &mut Vec::new(), |rs| !rs.is_empty()).await;
    r.stop().await;
    let rep = sim.report();
    assert_eq!((rep.power_writes, rep.region_writes), (1, 1));
    cancel_sim.cancel();
}

#[tokio::test]
async fn an_eight_port_reader_reports_antennas_above_four() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(6), 6, -48), SimTag::new(epc(8), 8, -70)],
        ports: 8,
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path, &[6, 8]);
    c.ports = 8;
    let mut r = start(c);
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 4).await;
    for x in &reads {
        assert_eq!(x.epc, epc(x.antenna));
        assert_eq!(x.rssi_dbm, Some(if x.antenna == 6 { -48 } else { -70 }));
    }
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_configured_session_uses_the_session_inventory_command() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50)],
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path, &[1]);
    c.session = Some(1);
    let mut r = start(c);
    collect_until(&mut r.rx, &mut Vec::new(), |rs| rs.len() >= 2).await;
    let cmds = sim.report().commands;
    assert!(cmds.contains(&0x8B) && !cmds.contains(&0x89), "{cmds:02X?}");
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_stalled_reader_makes_run_fail_with_a_timeout() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50)],
        faults: Faults {
            stall: Some((3, Duration::from_secs(4))),
            ..Faults::default()
        },
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path, &[1]);
    c.round_timeout_ms = 700;
    let mut r = start(c);
    let res = r.outcome(10).await;
    assert!(matches!(res, Err(R2000Error::Timeout { .. })), "{res:?}");
    cancel_sim.cancel();
}

#[tokio::test]
async fn unplug_fails_the_run_and_a_new_run_resumes_after_replug() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-1a86_USB_Serial-if00-port0");
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50)],
        ..R2000SimParams::default()
    });
    let mut port = sim.pluggable(&link);
    port.plug().unwrap();
    let mut r = start(config(&link, &[1]));
    collect_until(&mut r.rx, &mut Vec::new(), |rs| rs.len() >= 2).await;
    port.unplug().await.unwrap();
    let res = r.outcome(5).await;
    assert!(
        matches!(res, Err(R2000Error::Io(_) | R2000Error::Disconnected)),
        "{res:?}"
    );

    let res = start(config(&link, &[1])).task.await.unwrap();
    assert!(matches!(res, Err(R2000Error::Open { .. })), "{res:?}");

    port.plug().unwrap();
    let mut r2 = start(config(&link, &[1]));
    collect_until(&mut r2.rx, &mut Vec::new(), |rs| rs.len() >= 2).await;
    assert_eq!(sim.report().connections, 2);
    r2.stop().await;
    port.unplug().await.unwrap();
}

#[tokio::test]
async fn a_wrong_fixed_address_times_out_with_a_hint() {
    let sim = R2000Sim::new(R2000SimParams {
        address: 0x05,
        ..R2000SimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _t) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path, &[1]);
    c.address = 0x01;
    c.response_timeout_ms = 300;
    let res = start(c).task.await.unwrap();
    let err = res.unwrap_err();
    assert!(matches!(err, R2000Error::Timeout { .. }));
    assert!(err.to_string().contains("address"));
    cancel_sim.cancel();
}

#[tokio::test]
async fn the_driver_runs_over_any_byte_stream_not_only_a_serial_port() {
    let sim = R2000Sim::new(R2000SimParams {
        tags: vec![SimTag::new(epc(1), 1, -50)],
        ..R2000SimParams::default()
    });
    let config = R2000Config::new("g1", "in-memory");
    let reads = uhf_common::reads_over_duplex(
        "g1",
        "r2000",
        |reader, cancel| async move { sim.serve(reader, cancel).await },
        |host, sink, health, cancel| async move {
            r2000::run_on(host, &config, sink, health, Clock::new(), cancel).await
        },
        2,
    )
    .await;
    assert!(reads.iter().all(|r| r.epc == epc(1)));
}
