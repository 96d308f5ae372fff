//! The Mercury driver against the Mercury simulator over real pseudo-terminals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracegate_drivers::mercury::sim::{Faults, MercurySim, MercurySimParams, SimTag};
use tracegate_drivers::mercury::{self, MercuryConfig, MercuryError, MercuryMode};
use tracegate_drivers::{Clock, ReaderMsg, ReaderState};

mod uhf_common;
use uhf_common::{collect_until, wait_for, Running};

fn epc(n: u8) -> Vec<u8> {
    vec![
        0x30, 0x08, 0x33, 0xB2, 0xDD, 0xD9, 0x01, 0x40, 0x00, 0x00, 0xA0, n,
    ]
}

fn population(n: u8) -> Vec<SimTag> {
    (1..=n)
        .map(|i| SimTag::new(epc(i), 1 + (i % 2), -40 - i8::try_from(i).unwrap()))
        .collect()
}

fn start(config: MercuryConfig) -> Running<MercuryError> {
    let name = config.name.clone();
    uhf_common::start(&name, "mercury", move |sink, health, cancel| async move {
        mercury::run(&config, sink, health, cancel).await
    })
}

fn config(port: &std::path::Path) -> MercuryConfig {
    let mut c = MercuryConfig::new("m1", port.to_str().unwrap());
    c.antennas = vec![1, 2];
    c.response_timeout_ms = 1000;
    c.idle_timeout_ms = 2000;
    c
}

#[tokio::test]
async fn streamed_reads_equal_the_epcs_sent_with_valid_crc_despite_faults() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(4),
        cycle: Duration::from_millis(20),
        max_tag_frames: Some(60),
        faults: Faults {
            split_every: Some(3),
            garbage_every: Some(4),
            bad_crc_every: Some(7),
            ..Faults::default()
        },
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(config(&path));

    wait_for(
        || sim.report().sent_epcs.len() + sim.report().bad_crc_epcs.len() >= 60,
        "sim to send all tag frames",
    )
    .await;
    let want = sim.report().sent_epcs;
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= want.len()).await;

    let got: Vec<Vec<u8>> = reads.iter().map(|r| r.epc.clone()).collect();
    assert_eq!(
        got, want,
        "reads must be exactly the validly-sent EPCs, in order"
    );
    let report = sim.report();
    assert_eq!(report.bad_crc_epcs.len(), 60 / 7);
    assert!(report.garbage_bursts > 0 && report.split_frames > 0);

    let h = r.health.snapshot();
    assert_eq!(h.state, ReaderState::Running);
    assert_eq!(h.reads, want.len() as u64);
    assert!(h.crc_errors >= report.bad_crc_epcs.len() as u64, "{h:?}");
    assert!(h.resyncs >= 1, "garbage must be counted as resyncs: {h:?}");
    assert!(h
        .details
        .iter()
        .any(|(k, v)| k == "firmware" && v == "02.01.06.08"));
    // Metadata made it through.
    let first = &reads[0];
    assert!(first.rssi_dbm.is_some() && first.frequency_khz.is_some() && first.phase_deg.is_some());
    assert!(reads.iter().all(|r| r.antenna == 1 || r.antenna == 2));
    assert!(reads.iter().all(|r| r.pc == Some(0x3000)));

    r.stop().await;
    // The driver stopped continuous reading on its way out.
    let cmds = sim.report().commands;
    assert_eq!(cmds.first(), Some(&0x03));
    assert!(
        cmds.iter().filter(|&&c| c == 0x2F).count() >= 2,
        "start and stop: {cmds:02X?}"
    );
    cancel_sim.cancel();
}

#[tokio::test]
async fn start_up_sends_protocol_antennas_region_power_and_session() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(1),
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path);
    c.region = Some(mercury::MercuryRegion::Eu3);
    c.session = Some(1);
    let mut r = start(c);
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| !rs.is_empty()).await;
    let cmds = sim.report().commands;
    assert_eq!(
        &cmds[..9],
        &[0x03, 0x0C, 0x93, 0x91, 0x97, 0x92, 0x9B, 0x9A, 0x2F],
        "{cmds:02X?}"
    );
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_module_in_its_bootloader_is_booted_before_configuring() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(2),
        start_in_bootloader: true,
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(config(&path));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 2).await;
    let cmds = sim.report().commands;
    assert_eq!(&cmds[..3], &[0x03, 0x0C, 0x04], "{cmds:02X?}");
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_module_still_streaming_from_a_previous_run_is_stopped_first() {
    let sim = MercurySim::new(MercurySimParams {
        // A busy stream, so frames interleave with the start-up replies.
        tags: population(4),
        cycle: Duration::from_millis(1),
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    // A previous process started continuous reading and died.
    {
        use tokio::io::AsyncWriteExt;
        let rm = mercury::codec::ReadMultiple {
            search_flags: 0x1B,
            timeout_ms: 100,
            metadata: 0x01FF,
            embedded_read: None,
        };
        let mut port = tracegate_drivers::serial::open(path.to_str().unwrap(), 115_200).unwrap();
        port.write_all(&mercury::codec::cmd::start_continuous(&rm).encode().unwrap())
            .await
            .unwrap();
        wait_for(|| !sim.report().sent_epcs.is_empty(), "sim to stream").await;
    }
    let mut r = start(config(&path));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 4).await;
    // The old process's start, then ours; in between the driver must have
    // stopped the stream it found.
    let cmds = sim.report().commands;
    assert_eq!(cmds[0], 0x2F);
    let ours = cmds.iter().rposition(|&c| c == 0x2F).unwrap();
    assert!(
        cmds[1..ours].contains(&0x2F),
        "no stop before our start: {cmds:02X?}"
    );
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn tid_is_read_alongside_the_epc_when_configured() {
    let mut tags = population(2);
    tags[0].tid = Some(vec![
        0xE2, 0x80, 0x11, 0x05, 0x20, 0x00, 0x73, 0x12, 0x34, 0x56, 0x78, 0x9A,
    ]);
    tags[1].tid = Some(vec![
        0xE2, 0x80, 0x68, 0x94, 0x20, 0x00, 0x50, 0x0A, 0x00, 0x00, 0x00, 0x01,
    ]);
    let sim = MercurySim::new(MercurySimParams {
        tags: tags.clone(),
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path);
    c.read_tid = true;
    let mut r = start(c);
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 4).await;
    for read in &reads {
        let tag = tags.iter().find(|t| t.epc == read.epc).unwrap();
        assert_eq!(read.tid, tag.tid);
    }
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn tag_buffer_is_cleared_only_after_the_reads_are_committed() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(3),
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path);
    c.mode = MercuryMode::TagBuffer;
    c.search_ms = 30;
    let mut r = start(c);

    let msg = tokio::time::timeout(Duration::from_secs(10), r.rx.recv())
        .await
        .unwrap()
        .unwrap();
    let ReaderMsg::Reads {
        reads,
        ack: Some(ack),
    } = msg
    else {
        panic!("tag-buffer reads must carry a commit ack")
    };
    let mut got: Vec<_> = reads.iter().map(|r| r.epc.clone()).collect();
    got.sort();
    assert_eq!(got, (1..=3).map(epc).collect::<Vec<_>>());
    // Not committed yet: the module's buffer must still hold the tags.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rep = sim.report();
    assert_eq!((rep.buffer_clears, rep.buffer_len), (0, 3));
    assert!(!rep.commands.contains(&0x2A));

    ack.fire();
    wait_for(|| sim.report().buffer_clears == 1, "clear after commit").await;

    // Next batch: the pipeline fails to commit (ack dropped unfired).
    let msg = tokio::time::timeout(Duration::from_secs(10), r.rx.recv())
        .await
        .unwrap()
        .unwrap();
    let ReaderMsg::Reads { ack: Some(ack), .. } = msg else {
        panic!("expected acked reads")
    };
    drop(ack);
    let res = r.outcome(5).await;
    assert!(matches!(res, Err(MercuryError::NotCommitted)), "{res:?}");
    let rep = sim.report();
    assert_eq!(
        rep.buffer_clears, 1,
        "uncommitted reads must stay in the module"
    );
    assert_eq!(rep.buffer_len, 3);
    assert_eq!(r.health.reads.load(Ordering::Relaxed), 6);
    cancel_sim.cancel();
}

fn detail(h: &tracegate_drivers::ReaderHealth, key: &str) -> Option<String> {
    h.snapshot()
        .details
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// A sim whose tag-buffer replies carry one record each, so every fetch is
/// its own chunk.
fn one_record_sim(resend: bool) -> MercurySim {
    MercurySim::new(MercurySimParams {
        tags: population(3),
        resend,
        max_records_per_fetch: 1,
        ..MercurySimParams::default()
    })
}

fn tag_buffer_config(port: &std::path::Path) -> MercuryConfig {
    let mut c = config(port);
    c.mode = MercuryMode::TagBuffer;
    c.search_ms = 30;
    c
}

/// Takes the next reads message, which must carry a commit ack.
async fn next_acked(r: &mut Running<MercuryError>) -> (Vec<Vec<u8>>, tracegate_drivers::CommitAck) {
    let msg = tokio::time::timeout(Duration::from_secs(10), r.rx.recv())
        .await
        .unwrap()
        .unwrap();
    let ReaderMsg::Reads {
        reads,
        ack: Some(ack),
    } = msg
    else {
        panic!("tag-buffer reads must carry a commit ack")
    };
    (reads.into_iter().map(|r| r.epc).collect(), ack)
}

#[tokio::test]
async fn tag_buffer_commits_each_reply_before_fetching_the_next() {
    let sim = one_record_sim(true);
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(tag_buffer_config(&path));

    let (first, ack) = next_acked(&mut r).await;
    assert_eq!(first, vec![epc(1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rep = sim.report();
    assert_eq!(rep.fetches, 1, "no second fetch before the first commits");
    assert_eq!((rep.buffer_read_index, rep.buffer_len), (1, 3));
    ack.fire();
    let (second, ack) = next_acked(&mut r).await;
    assert_eq!(second, vec![epc(2)]);
    ack.fire();
    let (third, ack) = next_acked(&mut r).await;
    assert_eq!(third, vec![epc(3)]);
    ack.fire();
    wait_for(
        || sim.report().buffer_clears >= 1,
        "clear after the last commit",
    )
    .await;
    r.stop().await;
    cancel_sim.cancel();
}

/// Runs a driver until it has fetched one record and handed it over, then
/// kills it (the task is aborted, as a process dies: no clean-up) before
/// the commit. Returns the EPC it had fetched.
async fn crash_after_one_fetch(path: &std::path::Path) -> Vec<u8> {
    let mut r = start(tag_buffer_config(path));
    let (fetched, ack) = next_acked(&mut r).await;
    r.task.abort();
    let _ = r.task.await;
    drop(ack);
    assert_eq!(fetched.len(), 1);
    fetched.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_restart_gets_again_the_records_a_crashed_run_fetched_but_never_committed() {
    let sim = one_record_sim(true);
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let lost = crash_after_one_fetch(&path).await;
    // The module's read index moved past the record: a plain fetch would
    // never return it again.
    assert_eq!(sim.report().buffer_read_index, 1);

    let mut r = start(tag_buffer_config(&path));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| {
        (1..=3).all(|i| rs.iter().any(|r| r.epc == epc(i)))
    })
    .await;
    assert_eq!(reads[0].epc, lost, "the resent record comes first");
    assert_eq!(sim.report().resends, 1);
    assert_eq!(
        detail(&r.health, "tag_buffer_recovery").as_deref(),
        Some("resent 1 records")
    );
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn without_resend_a_crash_loses_at_most_the_one_reply_in_flight() {
    let sim = one_record_sim(false);
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let lost = crash_after_one_fetch(&path).await;
    assert_eq!(lost, epc(1));

    let mut r = start(tag_buffer_config(&path));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| {
        (2..=3).all(|i| rs.iter().any(|r| r.epc == epc(i)))
    })
    .await;
    // The records after the lost reply still come, then the buffer is
    // cleared, and the next search finds the tags still in the field.
    let first: Vec<_> = reads.iter().take(2).map(|r| r.epc.clone()).collect();
    assert_eq!(first, vec![epc(2), epc(3)]);
    let detail = detail(&r.health, "tag_buffer_recovery").unwrap_or_default();
    assert!(detail.starts_with("resend refused: 0x0105"), "{detail}");
    assert_eq!(sim.report().resends, 0);
    r.stop().await;
    cancel_sim.cancel();
}

#[tokio::test]
async fn a_stalled_module_makes_run_fail_with_a_timeout() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(2),
        cycle: Duration::from_millis(20),
        faults: Faults {
            stall: Some((4, Duration::from_secs(4))),
            ..Faults::default()
        },
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, _task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut c = config(&path);
    c.idle_timeout_ms = 700;
    let mut r = start(c);
    let res = r.outcome(10).await;
    assert!(matches!(res, Err(MercuryError::Timeout { .. })), "{res:?}");
    assert_eq!(sim.report().stalls, 1);
    cancel_sim.cancel();
}

#[tokio::test]
async fn unplug_fails_the_run_and_a_new_run_resumes_after_replug() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-ThingMagic_sim-if00-port0");
    let sim = MercurySim::new(MercurySimParams {
        tags: population(2),
        cycle: Duration::from_millis(20),
        ..MercurySimParams::default()
    });
    let mut port = sim.pluggable(&link);
    port.plug().unwrap();

    let mut r = start(config(&link));
    let mut reads = Vec::new();
    collect_until(&mut r.rx, &mut reads, |rs| rs.len() >= 4).await;

    port.unplug().await.unwrap();
    let res = r.outcome(5).await;
    assert!(
        matches!(res, Err(MercuryError::Io(_) | MercuryError::Disconnected)),
        "{res:?}"
    );
    r.health.record_failure(&res.unwrap_err());

    // While unplugged the path is gone: opening fails with a clear error.
    let again = start(config(&link));
    let res = again.task.await.unwrap();
    assert!(matches!(res, Err(MercuryError::Open { .. })), "{res:?}");
    assert!(res.unwrap_err().to_string().contains("by-id"));

    port.plug().unwrap();
    let mut r2 = start(config(&link));
    let before = sim.report().sent_epcs.len();
    let mut more = Vec::new();
    collect_until(&mut r2.rx, &mut more, |rs| rs.len() >= 4).await;
    assert!(sim.report().sent_epcs.len() > before);
    assert_eq!(sim.report().connections, 2);
    r2.stop().await;
    port.unplug().await.unwrap();
}

#[tokio::test]
async fn an_injected_unplug_mid_stream_is_reported_as_an_io_failure() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(3),
        cycle: Duration::from_millis(20),
        faults: Faults {
            unplug_after: Some(9),
            ..Faults::default()
        },
        ..MercurySimParams::default()
    });
    let cancel_sim = CancellationToken::new();
    let (path, sim_task) = sim.spawn_pty(cancel_sim.clone()).unwrap();
    let mut r = start(config(&path));
    sim_task.await.unwrap().unwrap();
    let res = r.outcome(5).await;
    assert!(
        matches!(res, Err(MercuryError::Io(_) | MercuryError::Disconnected)),
        "{res:?}"
    );
    // What arrived is what was sent, in order; bytes still in the pty when
    // it closed are lost, as on a real unplug.
    let mut reads = Vec::new();
    while let Ok(ReaderMsg::Reads { reads: rs, .. }) = r.rx.try_recv() {
        reads.extend(rs);
    }
    let got: Vec<_> = reads.into_iter().map(|r| r.epc).collect();
    let sent = sim.report().sent_epcs;
    assert_eq!(sent.len(), 9);
    assert!(
        !got.is_empty() && sent.starts_with(&got),
        "{got:02X?} vs {sent:02X?}"
    );
}

#[tokio::test]
async fn the_driver_runs_over_any_byte_stream_not_only_a_serial_port() {
    let sim = MercurySim::new(MercurySimParams {
        tags: population(2),
        cycle: Duration::from_millis(10),
        ..MercurySimParams::default()
    });
    let config = MercuryConfig::new("m1", "in-memory");
    let reads = uhf_common::reads_over_duplex(
        "m1",
        "mercury",
        |module, cancel| async move { sim.serve(module, cancel).await },
        |host, sink, health, cancel| async move {
            mercury::run_on(host, &config, sink, health, Clock::new(), cancel).await
        },
        4,
    )
    .await;
    assert!(reads.iter().all(|r| &*r.reader == "m1"));
}

/// Sends one command to a simulator over an in-memory stream and returns
/// its reply.
async fn exchange(
    host: &mut tokio::io::DuplexStream,
    dec: &mut mercury::codec::Decoder<mercury::codec::Response>,
    c: mercury::codec::Command,
) -> mercury::codec::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    host.write_all(&c.encode().unwrap()).await.unwrap();
    let mut buf = [0u8; 512];
    loop {
        if let Some(mercury::codec::Event::Frame(r)) = dec.next_event() {
            assert_eq!(r.opcode, c.opcode);
            return r;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), host.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "simulator closed the stream");
        dec.push(&buf[..n]);
    }
}

#[tokio::test]
async fn the_simulated_tag_buffer_keeps_a_read_index_like_the_module() {
    use mercury::codec::{cmd, parse_tag_buffer, status, BufferIndices, Decoder, ReadMultiple};
    let sim = one_record_sim(true);
    let indices = |r: &mercury::codec::Response| BufferIndices::parse(&r.data).unwrap();
    let epcs = |r: &mercury::codec::Response| -> Vec<Vec<u8>> {
        parse_tag_buffer(&r.data)
            .unwrap()
            .into_iter()
            .map(|t| t.epc)
            .collect()
    };
    let search = cmd::read_multiple(&ReadMultiple {
        search_flags: 0x0013,
        timeout_ms: 10,
        metadata: 0x0057,
        embedded_read: None,
    });
    let cancel = CancellationToken::new();
    let (mut host, module) = tokio::io::duplex(4096);
    {
        let sim = sim.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { sim.serve(module, cancel).await });
    }
    let mut dec = Decoder::new();
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer_indices()).await;
    assert_eq!(indices(&r), BufferIndices { read: 0, write: 0 });
    exchange(&mut host, &mut dec, search.clone()).await;
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer(0x0057)).await;
    assert_eq!(epcs(&r), vec![epc(1)]);
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer_indices()).await;
    assert_eq!(indices(&r), BufferIndices { read: 1, write: 3 });

    // A new connection (the host restarted) finds the same buffer and index.
    drop(host);
    let (mut host, module) = tokio::io::duplex(4096);
    {
        let sim = sim.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { sim.serve(module, cancel).await });
    }
    let mut dec = Decoder::new();
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer_indices()).await;
    assert_eq!(indices(&r), BufferIndices { read: 1, write: 3 });
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer_resend(0x0057)).await;
    assert_eq!(epcs(&r), vec![epc(1)], "resend repeats the previous fetch");
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer(0x0057)).await;
    assert_eq!(epcs(&r), vec![epc(2)]);
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer(0x0057)).await;
    assert_eq!(epcs(&r), vec![epc(3)]);
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer(0x0057)).await;
    assert_eq!(r.status, status::NO_TAGS_FOUND);
    exchange(&mut host, &mut dec, cmd::clear_tag_buffer()).await;
    let r = exchange(&mut host, &mut dec, cmd::get_tag_buffer_indices()).await;
    assert_eq!(indices(&r), BufferIndices { read: 0, write: 0 });
    let rep = sim.report();
    assert_eq!((rep.fetches, rep.resends, rep.buffer_clears), (4, 1, 1));
    cancel.cancel();
}
