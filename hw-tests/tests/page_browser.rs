//! The technician's page in a real browser: the real binary on a simulated
//! portal (and, with pcscd, vsmartcard's virtual NFC reader), the system
//! Chromium driven over the DevTools protocol.
//!
//! Proves: the readers and their antennas appear; a tag the simulator puts
//! in the field shows in the live list within 2 s of its first read; a
//! forged NFC tap shows its verdict; the console stays free of errors. A
//! screenshot is saved as `target/page-test/page.png` for whoever runs it.
//!
//! Skips ("skipped: ...") without Chromium unless
//! TRACEGATE_REQUIRE_CHROMIUM=1, and skips the NFC part without pcscd
//! unless TRACEGATE_REQUIRE_PCSCD=1 (the test command sets both).
//! `TRACEGATE_CHROMIUM` (or `CHROME`) names another browser binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headless_chrome::browser::tab::Tab;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions};
use nix::sys::signal::Signal;
use serde_json::Value;
use tracegate_drivers::nfc::emu::{Ntag424, SunBehaviour};
use tracegate_drivers::nfc::sun::KeyFile;
use tracegate_hw_tests::{
    pcscd_available, peer_available, place_card, signal, wait_exit, wait_for, TempGateway,
    VPCD_READER,
};

const DL: &str = "https://id.example.org/01/09506000134352/21/SER123";

fn key_file(meta: &str, file: &str) -> String {
    format!(
        "[[product]]\nname = \"widget\"\nurl_prefix = \"https://id.example.org/\"\n\
         meta_read_key = \"{meta}\"\nfile_read_key = \"{file}\"\n"
    )
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("TRACEGATE_CHROMIUM")
        .or_else(|| std::env::var_os("CHROME"))
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let probe = if path.is_file() {
        Ok(())
    } else {
        Err(format!(
            "no Chromium at {} (apt-get install chromium, or set TRACEGATE_CHROMIUM)",
            path.display()
        ))
    };
    peer_available("TRACEGATE_REQUIRE_CHROMIUM", probe).then_some(path)
}

/// `target/` of this build (the test executable is in target/<profile>/deps).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Evaluates `expr` in the page; its value as JSON.
fn eval(tab: &Tab, expr: &str) -> Value {
    tab.evaluate(expr, true)
        .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"))
        .value
        .unwrap_or(Value::Null)
}

/// Polls `expr` in the page until it is truthy; its last value.
fn wait_js(tab: &Tab, expr: &str, timeout: Duration) -> Option<Value> {
    wait_for(timeout, || {
        let v = eval(tab, expr);
        let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != 0 && v != "";
        truthy.then_some(v)
    })
}

#[test]
fn the_page_shows_readers_live_tags_and_verdicts_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let nfc = pcscd_available();

    let keys_dir = tempfile::tempdir().unwrap();
    let keys_path = keys_dir.path().join("keys.toml");
    std::fs::write(
        &keys_path,
        key_file(
            "000102030405060708090A0B0C0D0E0F",
            "F0E0D0C0B0A090807060504030201000",
        ),
    )
    .unwrap();
    let mut body = String::from(
        r#"[[readers]]
name = "portal"
kind = "sim"
antennas = [1, 2]
read_rate = 150
arrival_interval_ms = 1500
dwell_ms = 3000
seed = 7

[[read_points]]
name = "door-7"
reader = "portal"
direction = { outside = 1, inside = 2 }

[dedup]
key = "epc"
min_reads = 2
arrival_window_ms = 1000
departure_timeout_ms = 1500

[ops]
metrics_addr = "127.0.0.1:0"
"#,
    );
    if nfc {
        body.push_str(&format!(
            "\n[[readers]]\nname = \"counter\"\nkind = \"pcsc\"\nreader_pattern = \"{VPCD_READER}\"\n\n\
             [[read_points]]\nname = \"service-desk\"\nreader = \"counter\"\n\n\
             [nfc]\nsun_key_files = [\"{}\"]\n",
            keys_path.display()
        ));
    }
    let gw = TempGateway::new("page-gw", &body).unwrap();
    let mut child = gw.spawn().unwrap();
    let url = wait_for(Duration::from_secs(20), || {
        let log = gw.log();
        let at = log.find("serving the page at http://")?;
        let rest = &log[at + "serving the page at ".len()..];
        Some(rest.split_whitespace().next()?.to_owned())
    })
    .unwrap_or_else(|| panic!("no page address in the log:\n{}", gw.log()));

    let browser = Browser::new(LaunchOptions {
        path: Some(chromium),
        sandbox: false, // CI runs as root
        window_size: Some((1280, 1500)),
        idle_browser_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    })
    .unwrap();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(20));
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let problems = problems.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let problem = match event {
                Event::RuntimeExceptionThrown(e) => {
                    Some(format!("exception: {:?}", e.params.exception_details))
                }
                Event::RuntimeConsoleAPICalled(e) => {
                    let kind = format!("{:?}", e.params.Type);
                    (kind == "Error" || kind == "Assert")
                        .then(|| format!("console.{kind}: {:?}", e.params.args))
                }
                Event::LogEntryAdded(e) => {
                    let level = format!("{:?}", e.params.entry.level);
                    (level == "Error").then(|| format!("log: {}", e.params.entry.text))
                }
                _ => None,
            };
            if let Some(p) = problem {
                problems.lock().unwrap().push(p);
            }
        }))
        .unwrap();
    }
    tab.enable_runtime().unwrap().enable_log().unwrap();
    tab.navigate_to(&url)
        .unwrap()
        .wait_until_navigated()
        .unwrap();

    // Readers and antennas, from the configuration and the status poll.
    for sel in [
        r#".reader[data-reader="portal"] .antenna[data-antenna="1"]"#,
        r#".reader[data-reader="portal"] .antenna[data-antenna="2"]"#,
    ] {
        tab.wait_for_element_with_custom_timeout(sel, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{sel}: {e}"));
    }
    wait_js(
        &tab,
        r#"(document.querySelector('.reader[data-reader="portal"] .pill')||{}).textContent === 'running'"#,
        Duration::from_secs(10),
    )
    .expect("the portal reader shows as running");
    wait_js(
        &tab,
        "document.getElementById('live').textContent === 'live'",
        Duration::from_secs(10),
    )
    .expect("the live stream connected");

    // A tag the simulator puts in the field after the page went live: its
    // arrival's first read, and when its row first showed in the browser
    // (same machine, same clock). Times are ISO-8601 UTC with three
    // decimals on both sides, so they compare as strings.
    let live_since = eval(&tab, "new Date().toISOString()")
        .as_str()
        .unwrap()
        .to_owned();
    let arrived = wait_for(Duration::from_secs(20), || {
        gw.events(&[]).ok()?.into_iter().find(|e| {
            e["type"] == "arrived"
                && e["read_point"] == "door-7"
                && e["first_seen"]
                    .as_str()
                    .is_some_and(|t| t > live_since.as_str())
        })
    })
    .unwrap_or_else(|| panic!("no arrival; log:\n{}", gw.log()));
    let epc = arrived["identity"]["epc"].as_str().unwrap().to_owned();
    let first_seen = arrived["first_seen"].as_str().unwrap().to_owned();
    let delay = wait_js(
        &tab,
        &format!(
            r#"(() => {{ const r = document.querySelector('#tags tr[data-epc="{epc}"]');
                return r ? Number(r.dataset.firstShown) - Date.parse('{first_seen}') : null; }})()"#
        ),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| {
        panic!(
            "tag {epc} never showed in the live list: {}",
            eval(&tab, "document.getElementById('tags').innerText")
        )
    });
    let delay_ms = delay.as_f64().unwrap();
    eprintln!("tag {epc} showed {delay_ms} ms after its first read");
    assert!(
        delay_ms <= 2000.0,
        "tag {epc} showed {delay_ms} ms after its first read"
    );
    // Its row says where and how well it was read.
    let row = eval(
        &tab,
        &format!(r#"document.querySelector('#tags tr[data-epc="{epc}"]').innerText"#),
    );
    assert!(row.as_str().unwrap().contains("door-7"), "{row}");
    // Antennas chart their read rate.
    wait_js(
        &tab,
        r#"[...document.querySelectorAll('.antenna')].some(a => !/^0\.0 reads/.test(a.querySelector('.label span').textContent))"#,
        Duration::from_secs(5),
    )
    .expect("an antenna shows a read rate");
    // The arrival shows among the recent events.
    wait_js(
        &tab,
        r#"document.querySelector('#events li[data-type="arrived"]') !== null"#,
        Duration::from_secs(5),
    )
    .expect("the arrival shows in recent events");

    // A forged NTAG 424 DNA: the right URL, keys the gateway does not know.
    if nfc {
        let forger = KeyFile::from_toml(
            &key_file(
                "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
                "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE",
            ),
            "forger",
        )
        .unwrap()
        .products
        .remove(0);
        let card = Ntag424::new(
            [0x04, 0x51, 0x52, 0x53, 0x54, 0x55, 0x80],
            forger,
            DL,
            3,
            SunBehaviour::Genuine,
        );
        let (_, taps) = place_card(&gw, card, 1).unwrap();
        let verdict = taps[0]["sun"]["verdict"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        assert_ne!(verdict, "genuine", "{:#}", taps[0]);
        wait_js(
            &tab,
            &format!(
                r#"[...document.querySelectorAll('#events li[data-type="tap"] .badge.bad')].some(b => b.textContent === '{verdict}')
                   && [...document.querySelectorAll('#events li[data-type="tap"] .badge.flag')].some(b => b.textContent === 'forged_nfc')"#
            ),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("the tap's verdict {verdict} never showed"));
        // The tag's URL shows without its SUN values (a replayable secret).
        let text = eval(&tab, "document.body.innerText");
        let text = text.as_str().unwrap();
        assert!(
            text.contains("id.example.org/01/09506000134352/21/SER123"),
            "{text}"
        );
        assert!(
            !text.contains("picc_data") && !text.contains("cmac="),
            "{text}"
        );
    }

    // An event kind this page was written before (a pass through a gate
    // with its tag count and stack-light colour, a new flag) still shows
    // every field, flag and colour.
    let pass = eval(
        &tab,
        r#"(() => { const li = tracegatePage.renderEvent({seq: 1e9, type: 'pass', time: new Date().toISOString(),
              read_point: 'door-7', tag_count: 12, expected_count: 14, stack_light: 'red', flags: ['short_count'],
              check: {verdict: 'mismatch'}});
            return JSON.stringify([li.innerText, li.querySelectorAll('.swatch.c-red').length,
                    li.querySelectorAll('.badge.flag').length, li.querySelectorAll('.badge.bad').length]); })()"#,
    );
    // Objects come back by reference over CDP: the page sends JSON text.
    let pass: Value = serde_json::from_str(pass.as_str().unwrap()).unwrap();
    let text = pass[0].as_str().unwrap();
    for needle in [
        "pass",
        "door-7",
        "tag_count: 12",
        "expected_count: 14",
        "stack_light: red",
        "short_count",
        "mismatch",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text:?}");
    }
    assert_eq!(
        (pass[1].clone(), pass[2].clone(), pass[3].clone()),
        (1.into(), 1.into(), 1.into()),
        "{pass}"
    );

    // Pausing freezes the list (the button says so).
    eval(&tab, "document.getElementById('pause').click()");
    assert_eq!(
        eval(
            &tab,
            "document.getElementById('pause').classList.contains('on')"
        ),
        Value::Bool(true)
    );
    eval(&tab, "document.getElementById('pause').click()");

    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    let shots = target_dir().join("page-test");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("page.png"), &png).unwrap();
    eprintln!("screenshot: {}", shots.join("page.png").display());

    // On a phone: nothing wider than the screen (the tag table scrolls
    // inside its card).
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width: 390,
        height: 844,
        device_scale_factor: 2.0,
        mobile: true,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
    wait_js(
        &tab,
        "window.innerWidth === 390 && document.documentElement.scrollWidth <= window.innerWidth",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| {
        panic!(
            "the page is wider than a phone: {}",
            eval(&tab, "document.documentElement.scrollWidth")
        )
    });
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(shots.join("page-phone.png"), &png).unwrap();

    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "the console has errors: {problems:#?}");

    drop(tab);
    drop(browser);
    signal(&child, Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(15)).is_some());
}
