//! The technician's page at `/`: embedded assets (no CDN: the gateway may
//! have no internet), `/api/page` (what the configuration says: readers,
//! antennas, read points, store bound) and `/api/live`, a server-sent
//! event stream of raw reads collapsed per tag and per antenna
//! ([`live::LiveAggregator`]) and of recently committed events. Everything
//! else the page shows comes from `/status`, which it polls.
//!
//! Read-only: no route changes the gateway.
//!
//! Cost: nothing runs for the page while nobody follows `/api/live`. Each
//! viewer has one task; the pipeline feeds the [`ReadTap`] only while a
//! viewer subscribes, and recent events are read through the store's read
//! connection at most every [`FLUSH`] per viewer, only when new ones were
//! committed. At most `[ops] max_viewers` viewers; a viewer that falls
//! [`VIEWER_QUEUE`] messages behind (a stalled browser or network), or
//! whose read feed lags, is dropped, not buffered for.

pub mod live;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::door::signals::{Happening, Signals};
use crate::event::Flag;
use crate::read_tap::{ReadBatch, ReadTap, Watch};
use crate::store::{StoreReader, StoreStats};
use live::{LiveAggregator, Routes};

/// How often a viewer gets the collapsed reads and new events.
pub const FLUSH: Duration = Duration::from_millis(500);
/// Messages a viewer's connection may hold unsent before it is dropped:
/// 8 s of flushes.
pub const VIEWER_QUEUE: usize = 16;
/// Recent events the page shows (and reads when a viewer arrives).
pub const RECENT_EVENTS: usize = 50;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// The page runs only its own script and style, and talks only to its
/// own origin; nothing can frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A reader and its antennas as configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PageReader {
    pub name: String,
    pub kind: String,
    /// UHF antennas some read point uses, ascending.
    pub antennas: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PageReadPoint {
    pub name: String,
    pub reader: String,
    pub antennas: Vec<u8>,
}

/// What `/api/page` serves: the configuration as the page needs it. No
/// secret is in here (the broker URL has no credentials in it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PageInfo {
    pub readers: Vec<PageReader>,
    pub read_points: Vec<PageReadPoint>,
    pub store_max_bytes: Option<u64>,
    pub broker: Option<String>,
}

/// Where the page's live data comes from. The default has none (the
/// endpoint's own tests): the page then shows `/status` only.
#[derive(Debug, Clone, Default)]
pub struct PageSources {
    pub info: PageInfo,
    pub reads: Option<ReadTap>,
    /// The store's read connection and the writer's stats (for `last_seq`).
    pub events: Option<(StoreReader, watch::Receiver<StoreStats>)>,
    /// Read points with a stack light, and the light's rules.
    pub lights: Option<Arc<StackLights>>,
}

/// Which read points have a stack light, and the rule that colours it
/// ([`Signals::wanted`]: the one rule the GPIO task drives the light by).
/// The page adds `stack_light` to the events shown there: the colour the
/// event asked of the light. The committed event does not carry it.
#[derive(Debug)]
pub struct StackLights {
    read_points: Vec<String>,
    rule: Signals,
}

impl StackLights {
    /// `None` when no read point has a light.
    pub fn new(config: &Config) -> Option<Self> {
        let read_points: Vec<String> = config
            .read_points
            .iter()
            .filter(|rp| rp.door.as_ref().is_some_and(|d| d.signal.is_some()))
            .map(|rp| rp.name.clone())
            .collect();
        let ignore = config
            .gpio
            .as_ref()
            .map(|g| g.ignore_flags.clone())
            .unwrap_or_default();
        (!read_points.is_empty()).then(|| Self {
            read_points,
            rule: Signals::new(Vec::new(), 0, ignore),
        })
    }

    /// `payload` (an event's committed JSON) with `stack_light` added when
    /// the event is at a read point with a light and asks it for a colour;
    /// otherwise unchanged.
    fn decorate(&self, payload: &str) -> Option<String> {
        let mut ev: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(payload).ok()?;
        let rp = ev.get("read_point")?.as_str()?;
        if !self.read_points.iter().any(|n| n == rp) {
            return None;
        }
        let flags: Vec<Flag> = ev
            .get("flags")
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default();
        let level = self.rule.wanted(&Happening {
            light: 0,
            pass: ev.get("type").and_then(|t| t.as_str()) == Some("pass"),
            tag_count: ev
                .get("tag_count")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            flags: &flags,
        })?;
        ev.insert("stack_light".into(), level.as_str().into());
        serde_json::to_string(&ev).ok()
    }
}

impl PageSources {
    pub fn new(
        config: &Config,
        reads: ReadTap,
        events: Option<(StoreReader, watch::Receiver<StoreStats>)>,
    ) -> Self {
        let read_points: Vec<PageReadPoint> = config
            .read_points
            .iter()
            .map(|rp| PageReadPoint {
                name: rp.name.clone(),
                reader: rp.reader.clone(),
                antennas: rp.antennas.clone(),
            })
            .collect();
        let readers = config
            .readers
            .iter()
            .map(|r| {
                let mut antennas: Vec<u8> = read_points
                    .iter()
                    .filter(|rp| rp.reader == r.name())
                    .flat_map(|rp| rp.antennas.iter().copied())
                    .collect();
                antennas.sort_unstable();
                antennas.dedup();
                PageReader {
                    name: r.name().to_owned(),
                    kind: r.kind().to_owned(),
                    antennas,
                }
            })
            .collect();
        Self {
            info: PageInfo {
                readers,
                read_points,
                store_max_bytes: Some(config.store.max_bytes),
                broker: config.mqtt.as_ref().map(|m| m.broker.to_string()),
            },
            reads: Some(reads),
            events,
            lights: StackLights::new(config).map(Arc::new),
        }
    }

    fn routes(&self) -> Routes {
        let mut routes = Routes::new();
        for rp in &self.info.read_points {
            for &a in &rp.antennas {
                routes
                    .entry((Arc::from(rp.reader.as_str()), a))
                    .or_default()
                    .push(rp.name.clone());
            }
        }
        routes
    }
}

/// The page's share of the HTTP endpoint's state.
#[derive(Debug, Clone)]
pub(crate) struct PageState {
    sources: PageSources,
    viewers: Arc<Semaphore>,
    max_viewers: usize,
    cancel: CancellationToken,
}

impl PageState {
    pub(crate) fn new(sources: PageSources, max_viewers: usize, cancel: CancellationToken) -> Self {
        Self {
            sources,
            viewers: Arc::new(Semaphore::new(max_viewers)),
            max_viewers,
            cancel,
        }
    }
}

/// The page's routes, merged into the endpoint's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(state: PageState) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/page", get(api_page))
        .route("/api/live", get(api_live))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Serialize)]
struct ApiPage<'a> {
    #[serde(flatten)]
    info: &'a PageInfo,
    clock_synced: bool,
    max_viewers: usize,
    viewers: usize,
    flush_ms: u64,
}

async fn api_page(State(st): State<PageState>) -> Response {
    axum::Json(ApiPage {
        info: &st.sources.info,
        clock_synced: tracegate_drivers::clock::clock_synchronised(),
        max_viewers: st.max_viewers,
        viewers: st.max_viewers - st.viewers.available_permits(),
        flush_ms: FLUSH.as_millis() as u64,
    })
    .into_response()
}

async fn api_live(State(st): State<PageState>) -> Response {
    let Ok(permit) = st.viewers.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            format!(
                "{} viewers already follow this gateway ([ops] max_viewers); try again later\n",
                st.max_viewers
            ),
        )
            .into_response();
    };
    let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
    tokio::spawn(viewer(st.sources.clone(), tx, permit, st.cancel.clone()));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn next_batch(w: &mut Option<Watch>) -> Result<ReadBatch, broadcast::error::RecvError> {
    match w {
        Some(w) => w.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues `data` for the browser; false when the viewer is gone or too far
/// behind (then it is dropped).
fn push(tx: &mpsc::Sender<SseEvent>, kind: &str, data: String) -> bool {
    tx.try_send(SseEvent::default().event(kind).data(data))
        .is_ok()
}

/// One viewer of `/api/live`, until it leaves, falls behind or the
/// endpoint stops. Holds its viewer slot (`_permit`) and, through `watch`,
/// keeps the read tap fed.
async fn viewer(
    src: PageSources,
    tx: mpsc::Sender<SseEvent>,
    _permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let start = tokio::time::Instant::now();
    let mono_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut agg = LiveAggregator::new(src.routes(), 0);
    let mut watch = src.reads.as_ref().map(ReadTap::subscribe);
    // Events above this seq have not been sent yet.
    let mut sent_upto = src.events.as_ref().map_or(0, |(_, s)| {
        s.borrow().last_seq.saturating_sub(RECENT_EVENTS as u64)
    });
    let mut flush = tokio::time::interval(FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            () = cancel.cancelled() => break "the endpoint stops",
            () = tx.closed() => break "the browser left",
            batch = next_batch(&mut watch) => match batch {
                Ok(b) => agg.add(&b),
                Err(broadcast::error::RecvError::Lagged(_)) => break "its read feed lagged",
                // The pipeline has stopped: no more reads, events may still come.
                Err(broadcast::error::RecvError::Closed) => watch = None,
            },
            _ = flush.tick() => {
                let update = agg.flush(mono_ms());
                let Ok(json) = serde_json::to_string(&update) else { break "a serialisation bug" };
                if !push(&tx, "reads", json) {
                    break "it fell behind";
                }
                if let Some((reader, stats)) = &src.events {
                    let last = stats.borrow().last_seq;
                    if last > sent_upto {
                        // Only the newest RECENT_EVENTS matter to the page.
                        let after = sent_upto.max(last.saturating_sub(RECENT_EVENTS as u64));
                        match reader.read_after(after, RECENT_EVENTS).await {
                            Ok(events) if !events.is_empty() => {
                                sent_upto = events.last().map_or(last, |e| e.seq);
                                // Payloads are the committed JSON: joined, not re-parsed,
                                // except where a stack light adds its colour.
                                let decorated: Vec<Option<String>> = events
                                    .iter()
                                    .map(|e| src.lights.as_ref().and_then(|l| l.decorate(&e.payload)))
                                    .collect();
                                let payloads: Vec<&str> = events
                                    .iter()
                                    .zip(&decorated)
                                    .map(|(e, d)| d.as_deref().unwrap_or(&e.payload))
                                    .collect();
                                if !push(&tx, "events", format!("[{}]", payloads.join(","))) {
                                    break "it fell behind";
                                }
                            }
                            Ok(_) => sent_upto = last,
                            Err(e) => tracing::debug!(error = %e, "page: recent events unavailable"),
                        }
                    }
                }
            }
        }
    };
    tracing::debug!(reason, "page viewer left");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_at_a_lit_read_point_show_the_colour_they_asked_of_the_light() {
        let lights = StackLights {
            read_points: vec!["dock-1".into()],
            rule: Signals::new(Vec::new(), 0, vec![Flag::OverScanned]),
        };
        let colour = |json: &str| {
            lights.decorate(json).map(|d| {
                let v: serde_json::Value = serde_json::from_str(&d).unwrap();
                v["stack_light"].as_str().unwrap().to_owned()
            })
        };
        let pass = r#"{"seq":1,"type":"pass","read_point":"dock-1","tag_count":8"#;
        assert_eq!(colour(&format!("{pass}}}")).as_deref(), Some("green"));
        assert_eq!(
            colour(&format!(r#"{pass},"flags":["unexpected"]}}"#)).as_deref(),
            Some("red")
        );
        // An ignored flag does not turn it red; a pass with no tags does.
        assert_eq!(
            colour(&format!(r#"{pass},"flags":["over_scanned"]}}"#)).as_deref(),
            Some("green")
        );
        assert_eq!(
            colour(r#"{"type":"pass","read_point":"dock-1","tag_count":0}"#).as_deref(),
            Some("red")
        );
        assert_eq!(
            colour(r#"{"type":"arrived","read_point":"dock-1","flags":["unknown"]}"#).as_deref(),
            Some("red")
        );
        // Unflagged tag events ask nothing; other read points have no light.
        assert_eq!(colour(r#"{"type":"arrived","read_point":"dock-1"}"#), None);
        assert_eq!(
            colour(r#"{"type":"pass","read_point":"dock-2","tag_count":3}"#),
            None
        );
    }

    // Real time: about VIEWER_QUEUE flushes (8 s).
    #[tokio::test]
    async fn a_viewer_whose_browser_stops_reading_is_dropped_and_frees_its_slot() {
        let tap = ReadTap::new();
        let src = PageSources {
            reads: Some(tap.clone()),
            ..PageSources::default()
        };
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        // The browser's side stays open but is never read.
        let (tx, _unread) = mpsc::channel(VIEWER_QUEUE);
        let task = tokio::spawn(viewer(src, tx, permit, CancellationToken::new()));
        tokio::task::yield_now().await;
        assert!(tap.is_watched());
        assert_eq!(slots.available_permits(), 0);
        // One message per flush: the queue is full after VIEWER_QUEUE of them.
        tokio::time::timeout(FLUSH * (VIEWER_QUEUE as u32 + 4), task)
            .await
            .expect("the stalled viewer was dropped")
            .unwrap();
        assert!(!tap.is_watched(), "no feed once the viewer is gone");
        assert_eq!(slots.available_permits(), 1, "its slot is free again");
    }
}
