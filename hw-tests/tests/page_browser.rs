//! The technician's page in a real browser: the real binary on a simulated
//! portal (and, with pcscd, vsmartcard's virtual NFC reader), the system
//! Chromium driven over the DevTools protocol.
//!
//! Proves: the readers and their antennas appear; a tag the simulator puts
//! in the field shows in the live list within 2 s of its first read; a
//! forged NFC tap shows its verdict; the uplink to a real mosquitto shows
//! connected, a last PUBACK and the outbox drained, and once the broker
//! stops, disconnected with the outbox growing; the console stays free of
//! errors. A screenshot is saved as `target/page-test/page.png` for whoever
//! runs it. A second gateway carries a few hundred tags at once through two
//! dock doors: the live list collapses them per tag within its bound, and
//! the passes show with their tag counts, flags and stack-light colours.
//!
//! Skips ("skipped: ...") without Chromium unless
//! TRACEGATE_REQUIRE_CHROMIUM=1, skips the NFC part without pcscd unless
//! TRACEGATE_REQUIRE_PCSCD=1, and the broker part without mosquitto unless
//! TRACEGATE_REQUIRE_MOSQUITTO=1 (the test command sets all three).
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
use tracegate_hw_tests::broker::{mosquitto_available, Broker};
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

/// The page's address, from the gateway's log.
fn page_url(gw: &TempGateway) -> String {
    wait_for(Duration::from_secs(20), || {
        let log = gw.log();
        let at = log.find("serving the page at http://")?;
        let rest = &log[at + "serving the page at ".len()..];
        Some(rest.split_whitespace().next()?.to_owned())
    })
    .unwrap_or_else(|| panic!("no page address in the log:\n{}", gw.log()))
}

fn browser(chromium: PathBuf) -> Browser {
    Browser::new(LaunchOptions {
        path: Some(chromium),
        sandbox: false, // CI runs as root
        window_size: Some((1280, 1500)),
        idle_browser_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    })
    .unwrap()
}

/// A tab on `url`, and the console errors, exceptions and error log
/// entries it has had so far.
fn open_page(browser: &Browser, url: &str) -> (Arc<Tab>, Arc<Mutex<Vec<String>>>) {
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
    tab.navigate_to(url)
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    (tab, problems)
}

/// JS: the text of the uplink card's `name` field.
fn field(name: &str) -> String {
    format!(r#"(document.querySelector('#uplink dd[data-field="{name}"]')||{{}}).textContent"#)
}

/// JS: whether the uplink card's `name` field reads `text`.
fn is_field(name: &str, text: &str) -> String {
    format!("{} === '{text}'", field(name))
}

/// The uplink card as text, for failure messages.
fn uplink(tab: &Tab) -> String {
    eval(tab, "document.getElementById('uplink').innerText")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_page_shows_readers_live_tags_and_verdicts_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let nfc = pcscd_available();
    let mut broker = mosquitto_available().then(|| Broker::start().unwrap());

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
    if let Some(b) = &broker {
        body.push_str(&format!("\n[mqtt]\nurl = \"{}\"\n", b.url()));
    }
    let gw = TempGateway::new("page-gw", &body).unwrap();
    let mut child = gw.spawn().unwrap();
    let url = page_url(&gw);
    let browser = browser(chromium);
    let (tab, problems) = open_page(&browser, &url);

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

    // The gateway card: version, config hash and clock as /status and
    // /api/page say.
    let about = eval(
        &tab,
        r#"(async () => {
            const s = await (await fetch('status')).json();
            const p = await (await fetch('api/page')).json();
            const f = (k) => document.querySelector(`#about dd[data-field="${k}"]`).textContent;
            return JSON.stringify([f('Version') === s.version, f('Config') === s.config_hash,
                f('Clock') === (p.clock_synced ? 'synchronised' : 'NOT synchronised (timestamps flagged)'),
                f('Version'), f('Config'), f('Clock')]); })()"#,
    );
    let about: Value = serde_json::from_str(about.as_str().unwrap()).unwrap();
    assert_eq!(
        (&about[0], &about[1], &about[2]),
        (&Value::Bool(true), &Value::Bool(true), &Value::Bool(true)),
        "{about}"
    );

    // The uplink to a real broker, as the page shows it.
    if broker.is_some() {
        wait_js(
            &tab,
            &is_field("Connection", "connected"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("the uplink never showed connected: {}", uplink(&tab)));
        wait_js(
            &tab,
            &format!("/ ago \\(/.test({})", field("Last PUBACK")),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no last PUBACK shown: {}", uplink(&tab)));
        // Events keep coming; between them the outbox drains completely.
        wait_js(
            &tab,
            &is_field("Outbox depth", "0"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("the outbox never drained: {}", uplink(&tab)));
        let up = uplink(&tab);
        let broker_url = broker.as_ref().map(Broker::url).unwrap();
        assert_eq!(
            eval(&tab, &field("Broker")),
            Value::from(broker_url),
            "{up}"
        );
        assert_eq!(
            eval(&tab, &field("Overflow drops")),
            Value::from("0"),
            "{up}"
        );
        // The store's size against its bound, as text and a meter.
        assert!(
            eval(
                &tab,
                &format!("/ of [0-9.]+ [KMG]iB$/.test({})", field("Store size"))
            ) == Value::Bool(true)
                && eval(&tab, "document.querySelector('#uplink meter') !== null")
                    == Value::Bool(true),
            "{up}"
        );
    }

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

    // The broker goes away: the page says so, and the outbox grows.
    if let Some(b) = broker.as_mut() {
        b.stop();
        wait_js(
            &tab,
            &is_field("Connection", "disconnected"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("the uplink never showed disconnected: {}", uplink(&tab)));
        let depth = |tab: &Tab| -> u64 {
            eval(tab, &field("Outbox depth"))
                .as_str()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        };
        let first = wait_for(Duration::from_secs(20), || {
            Some(depth(&tab)).filter(|d| *d > 0)
        })
        .unwrap_or_else(|| panic!("the outbox stayed empty: {}", uplink(&tab)));
        wait_for(Duration::from_secs(20), || {
            (depth(&tab) > first).then_some(())
        })
        .unwrap_or_else(|| panic!("the outbox did not grow from {first}: {}", uplink(&tab)));
        wait_js(
            &tab,
            &format!("/^[0-9.]+ s$/.test({})", field("Oldest pending")),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no oldest pending age: {}", uplink(&tab)));
        eprintln!("broker stopped; uplink:\n{}", uplink(&tab));
    }

    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "the console has errors: {problems:#?}");

    drop(tab);
    drop(browser);
    signal(&child, Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(15)).is_some());
}

/// Two dock doors with photo-eyes and stack lights (the `sim` GPIO
/// backend): `dock-1` takes pallets of 400 tags, `dock-2` small cartons of
/// a product it does not expect (`unexpected`, so its light turns red).
fn two_doors() -> String {
    let door = |n: u32, reader: &str, line: u32| {
        format!(
            r#"
[[read_points]]
name = "dock-{n}"
reader = "{reader}"
direction = {{ outside = 1, inside = 2 }}
{expect}

[read_points.window]
beams = {{ outside = "eye-out-{n}", inside = "eye-in-{n}" }}
beam_clear_hold_ms = 100
linger_ms = 300
tag_events = false

[read_points.signal]
green = ["green-{n}"]
green_ms = 500
red = ["red-{n}"]

[gpio.inputs.eye-out-{n}]
line = {line}
active_low = true
sim_follows = "{reader}"
sim_beam = "outside"

[gpio.inputs.eye-in-{n}]
line = {}
active_low = true
sim_follows = "{reader}"
sim_beam = "inside"

[gpio.outputs.green-{n}]
line = {}
[gpio.outputs.red-{n}]
line = {}
"#,
            line + 1,
            line + 2,
            line + 3,
            expect = if n == 2 {
                r#"expect_patterns = ["urn:epc:idpat:sgtin:0614141.999999.*"]"#
            } else {
                ""
            },
        )
    };
    format!(
        r#"
[[readers]]
name = "dock"
kind = "sim"
read_rate = 3000
pallet_size = 400
arrival_interval_ms = 7000
dwell_ms = 4000
seed = 11

[[readers]]
name = "dock2"
kind = "sim"
read_rate = 300
pallet_size = 5
arrival_interval_ms = 3000
dwell_ms = 1200
seed = 12

[gpio]
backend = "sim"
chip = "pinctrl-rp1"
lamp_test_ms = 200
{}{}
[ops]
metrics_addr = "127.0.0.1:0"
"#,
        door(1, "dock", 4),
        door(2, "dock2", 12),
    )
}

#[test]
fn hundreds_of_tags_collapse_per_tag_within_the_list_bound_and_passes_show_their_light() {
    let Some(chromium) = chromium() else { return };
    let gw = TempGateway::new("page-many", &two_doors()).unwrap();
    let mut child = gw.spawn().unwrap();
    let url = page_url(&gw);
    let browser = browser(chromium);
    let (tab, problems) = open_page(&browser, &url);
    // Long tasks (over 50 ms) the page runs from here on.
    eval(
        &tab,
        "window.longTasks = []; new PerformanceObserver((l) => l.getEntries().forEach((e) => \
         window.longTasks.push(e.duration))).observe({type: 'longtask', buffered: true}); true",
    );
    wait_js(
        &tab,
        "document.getElementById('live').textContent === 'live'",
        Duration::from_secs(10),
    )
    .expect("the live stream connected");

    // 400 tags in the field at once: the list fills to its bound (300) and
    // no further, one row per tag, each row many reads.
    let rows = "document.querySelectorAll('#tags tbody tr')";
    wait_js(
        &tab,
        &format!("{rows}.length === 300"),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|| {
        panic!(
            "the list never held 300 tags: {}",
            eval(&tab, &format!("{rows}.length"))
        )
    });
    for _ in 0..6 {
        let shape = eval(
            &tab,
            &format!(
                r#"JSON.stringify((() => {{ const r = [...{rows}];
                   return [r.length, new Set(r.map((x) => x.dataset.epc)).size,
                           r.map((x) => Number(x.cells[4].textContent)).reduce((a, b) => a + b, 0),
                           document.getElementById('tag-count').textContent]; }})())"#
            ),
        );
        let shape: Value = serde_json::from_str(shape.as_str().unwrap()).unwrap();
        let (len, distinct, reads) = (
            shape[0].as_u64().unwrap(),
            shape[1].as_u64().unwrap(),
            shape[2].as_u64().unwrap(),
        );
        assert!(len <= 300, "the list exceeds its bound: {shape}");
        assert_eq!(len, distinct, "a tag shows in two rows: {shape}");
        if len > 0 {
            assert!(reads > len, "reads are not collapsed per tag: {shape}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let rows_text = eval(&tab, "document.getElementById('tags').innerText");
    assert!(
        rows_text.as_str().unwrap().contains("dock-1"),
        "{rows_text}"
    );

    // The pallet's pass: its tag count and a green light; a carton of the
    // wrong product at the other door: its flag and a red light.
    let pass = |door: &str, colour: &str| {
        format!(
            r#"[...document.querySelectorAll('#events li[data-type="pass"]')].find((li) =>
                 li.innerText.includes('{door}') && li.querySelector('.swatch.c-{colour}'))"#
        )
    };
    let green = wait_js(
        &tab,
        &format!("({}||{{}}).innerText", pass("dock-1", "green")),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|| {
        panic!(
            "no green pass at dock-1: {}\nevents: {:?}",
            eval(&tab, "document.getElementById('events').innerText"),
            gw.events(&[]).map(|e| e.len())
        )
    });
    let green = green.as_str().unwrap();
    assert!(green.contains("tag_count: 400"), "{green}");
    assert!(green.contains("stack_light: green"), "{green}");
    assert!(green.contains("tags: 400"), "{green}");
    let red = wait_js(
        &tab,
        &format!("({}||{{}}).innerText", pass("dock-2", "red")),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|| {
        panic!(
            "no red pass at dock-2: {}",
            eval(&tab, "document.getElementById('events').innerText")
        )
    });
    let red = red.as_str().unwrap();
    assert!(red.contains("tag_count: 5"), "{red}");
    assert!(red.contains("stack_light: red"), "{red}");
    assert_eq!(
        eval(
            &tab,
            &format!(
                "[...{}.querySelectorAll('.badge.flag')].map((b) => b.textContent).join()",
                pass("dock-2", "red")
            )
        ),
        Value::from("unexpected"),
        "{red}"
    );

    // Still live and responsive after all that.
    assert_eq!(
        eval(&tab, "document.getElementById('live').textContent"),
        Value::from("live"),
        "the live stream dropped"
    );
    let long = eval(&tab, "JSON.stringify(window.longTasks)");
    let long: Vec<f64> = serde_json::from_str(long.as_str().unwrap()).unwrap();
    let worst = long.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{} long tasks (> 50 ms) while 400 tags were in the field, the longest {worst:.0} ms",
        long.len()
    );
    // Generous: a frozen page, not a slow machine, fails this.
    assert!(worst < 2000.0, "the page froze for {worst} ms: {long:?}");
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "the console has errors: {problems:#?}");

    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    let shots = target_dir().join("page-test");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("page-many.png"), &png).unwrap();

    drop(tab);
    drop(browser);
    signal(&child, Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(15)).is_some());
}

/// A newcomer runs `tracegate demo` and opens the address it prints: the
/// page answers there while the demo runs.
#[test]
fn the_demo_prints_the_address_of_its_page_and_the_page_answers_there() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut demo = std::process::Command::new(tracegate_hw_tests::bin().unwrap())
        .args(["demo", "--duration", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = BufReader::new(demo.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap() == 0 {
            panic!("the demo ended without printing the page's address:\n{said}");
        }
        said.push_str(&line);
        if let Some(rest) = line.split("open the page at http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    // Keep draining the demo's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(r#"<script src="app.js">"#), "{page}");
    signal(&demo, Signal::SIGINT).unwrap();
    assert!(wait_exit(&mut demo, Duration::from_secs(15)).is_some());
}
