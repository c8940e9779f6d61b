//! A room-booking panel speaking the "Lintel room panel API v1" over real HTTP (see
//! `docs/drivers/room-panel.md` and the `lintel-driver-room-panel` crate).
//!
//! [`PanelSimulator::serve`] binds `127.0.0.1:0` and returns the address; the panel then
//! answers:
//!
//! - `GET /api/v1/panel`: `{"model", "firmware", "power", "brightness", "light", "shown":
//!   {"state", "title", "subtitle"}}`
//! - `PUT /api/v1/panel/light` `{"color"}`, `PUT /api/v1/panel/shown` `{"state", "title",
//!   "subtitle"}`, `PUT /api/v1/panel/power` `{"on"}`, `PUT /api/v1/panel/brightness`
//!   `{"level"}`: `204 No Content`, or `400` with `{"error"}` for a bad body
//! - `GET /api/v1/panel/events?after=N`: `{"events": [{"seq", "kind", "at", "minutes"}],
//!   "next"}`, the (at most [`MAX_EVENTS_PER_ANSWER`]) button presses after `N`
//!
//! Test knobs: [`press`](PanelSimulator::press) a button, [`reboot`](PanelSimulator::reboot)
//! (state and event counter lost), [`require_api_key`](PanelSimulator::require_api_key),
//! [`busy`](PanelSimulator::busy) (503 with `Retry-After`), [`garbage`](PanelSimulator::garbage),
//! [`hang`](PanelSimulator::hang) and [`offline`](PanelSimulator::offline).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Button presses the panel remembers (older ones are forgotten).
pub const MAX_EVENTS_KEPT: usize = 100;
/// Button presses in one answer to `GET /api/v1/panel/events`.
pub const MAX_EVENTS_PER_ANSWER: usize = 50;
/// The largest request body the panel reads.
pub const MAX_REQUEST_BODY: usize = 16 * 1024;
/// The longest `title` or `subtitle` the panel shows, in characters.
pub const MAX_TEXT_CHARS: usize = 200;
/// Requests [`PanelSimulator::requests`] remembers.
const MAX_REQUESTS_KEPT: usize = 512;

/// What the panel shows on its screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// `free`, `pending`, `busy` or `offline`.
    pub state: String,
    pub title: String,
    pub subtitle: String,
}

/// A button press on the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelEvent {
    pub seq: u64,
    /// `check_in`, `end_meeting` or `book_now`.
    pub kind: String,
    /// Unix time, in seconds.
    pub at: u64,
    /// For `book_now`: how long a meeting.
    pub minutes: Option<u32>,
}

/// The panel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelState {
    pub model: String,
    pub firmware: String,
    /// Whether the screen is on.
    pub power: bool,
    pub brightness: u8,
    /// `green`, `red`, `amber` or `off`.
    pub light: String,
    pub shown: Shown,
    /// The latest button presses, oldest first.
    pub events: VecDeque<PanelEvent>,
    /// The seq of the latest press (0: none since boot).
    pub seq: u64,
}

impl Default for PanelState {
    /// A panel just booted: screen on, light off, nothing shown.
    fn default() -> Self {
        PanelState {
            model: "SimPanel 10".into(),
            firmware: "1.4.2".into(),
            power: true,
            brightness: 80,
            light: "off".into(),
            shown: Shown {
                state: "offline".into(),
                title: String::new(),
                subtitle: String::new(),
            },
            events: VecDeque::new(),
            seq: 0,
        }
    }
}

impl PanelState {
    fn to_json(&self) -> Value {
        json!({
            "model": self.model,
            "firmware": self.firmware,
            "power": self.power,
            "brightness": self.brightness,
            "light": self.light,
            "shown": {
                "state": self.shown.state,
                "title": self.shown.title,
                "subtitle": self.shown.subtitle,
            },
        })
    }
}

/// A request the panel received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `X-Api-Key` header, if any.
    pub api_key: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub body: String,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct Faults {
    api_key: Option<String>,
    busy: u32,
    retry_after_s: u32,
    garbage: bool,
}

struct Inner {
    state: Mutex<PanelState>,
    faults: Mutex<Faults>,
    requests: Mutex<VecDeque<SeenRequest>>,
    hang: watch::Sender<bool>,
    offline: watch::Sender<bool>,
}

/// A simulated room-booking panel; clones share the panel.
#[derive(Clone)]
pub struct PanelSimulator {
    inner: Arc<Inner>,
}

impl Default for PanelSimulator {
    fn default() -> Self {
        PanelSimulator::new()
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn no_content() -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn bad_request(why: &str) -> Answer {
    answer(StatusCode::BAD_REQUEST, json!({ "error": why }))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A `title`/`subtitle` field: a string of at most [`MAX_TEXT_CHARS`] characters.
fn text_field(body: &Value, key: &str) -> Result<String, String> {
    match body.get(key) {
        Some(Value::String(s)) if s.chars().count() <= MAX_TEXT_CHARS => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("`{key}` is over {MAX_TEXT_CHARS} characters")),
        _ => Err(format!("`{key}` must be a string")),
    }
}

impl PanelSimulator {
    /// A panel just booted (see [`PanelState::default`]), not yet serving.
    pub fn new() -> Self {
        PanelSimulator {
            inner: Arc::new(Inner {
                state: Mutex::new(PanelState::default()),
                faults: Mutex::new(Faults::default()),
                requests: Mutex::new(VecDeque::new()),
                hang: watch::channel(false).0,
                offline: watch::channel(false).0,
            }),
        }
    }

    /// Serve the API on a new loopback port (`127.0.0.1:0`) until the runtime stops;
    /// returns the address (the module's uri is `http://<addr>`).
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let sim = self.clone();
        crate::serve_loopback(move |stream| sim.clone().serve_connection(stream)).await
    }

    /// Serve one HTTP/1.1 connection until it closes or the panel goes offline.
    pub async fn serve_connection(self, stream: tokio::net::TcpStream) {
        let mut offline = self.inner.offline.subscribe();
        if *offline.borrow_and_update() {
            return; // dropped at once: the client sees the connection closed
        }
        let sim = self.clone();
        let service = service_fn(move |req| {
            let sim = sim.clone();
            async move { Ok::<_, Infallible>(sim.handle(req).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = conn => {}
            _ = offline.wait_for(|o| *o) => {}
        }
    }

    /// The panel's state now.
    pub fn state(&self) -> PanelState {
        self.inner.state.lock().clone()
    }

    /// Requests received so far (the latest [`MAX_REQUESTS_KEPT`]), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.inner.requests.lock().iter().cloned().collect()
    }

    /// Someone presses a button: `kind` is `check_in`, `end_meeting` or `book_now`
    /// (`minutes` for the latter). Returns the press's seq.
    pub fn press(&self, kind: &str, minutes: Option<u32>) -> u64 {
        let mut s = self.inner.state.lock();
        s.seq += 1;
        let event = PanelEvent {
            seq: s.seq,
            kind: kind.to_string(),
            at: unix_now(),
            minutes,
        };
        s.events.push_back(event);
        while s.events.len() > MAX_EVENTS_KEPT {
            s.events.pop_front();
        }
        s.seq
    }

    /// The panel restarts: its state returns to [`PanelState::default`] (light off,
    /// nothing shown) and its event counter to 0.
    pub fn reboot(&self) {
        let mut s = self.inner.state.lock();
        let (model, firmware) = (s.model.clone(), s.firmware.clone());
        *s = PanelState {
            model,
            firmware,
            ..PanelState::default()
        };
    }

    /// Answer `401` to requests without this `X-Api-Key` (`None`: no key needed).
    pub fn require_api_key(&self, key: Option<&str>) {
        self.inner.faults.lock().api_key = key.map(String::from);
    }

    /// Answer the next `times` requests with `503` and `Retry-After: retry_after_s`.
    pub fn busy(&self, times: u32, retry_after_s: u32) {
        let mut f = self.inner.faults.lock();
        f.busy = times;
        f.retry_after_s = retry_after_s;
    }

    /// Answer every request with `200` and a body that is not JSON (while `on`).
    pub fn garbage(&self, on: bool) {
        self.inner.faults.lock().garbage = on;
    }

    /// Hold every request without answering (while `on`): a frozen panel.
    pub fn hang(&self, on: bool) {
        self.inner.hang.send_replace(on);
    }

    /// Refuse every connection and close the open ones (while `on`): a panel that is
    /// switched off or off the network.
    pub fn offline(&self, on: bool) {
        self.inner.offline.send_replace(on);
    }

    fn record(&self, req: SeenRequest) {
        let mut r = self.inner.requests.lock();
        r.push_back(req);
        while r.len() > MAX_REQUESTS_KEPT {
            r.pop_front();
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let api_key = header("x-api-key");
        let authorization = header("authorization");
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": "body too large"}),
                );
            }
        };
        self.record(SeenRequest {
            method: method.to_string(),
            path: path.clone(),
            api_key: api_key.clone(),
            authorization,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: std::time::Instant::now(),
        });

        let mut hang = self.inner.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;

        {
            let mut f = self.inner.faults.lock();
            if let Some(want) = &f.api_key
                && api_key.as_deref() != Some(want.as_str())
            {
                return answer(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "missing or wrong X-Api-Key"}),
                );
            }
            if f.busy > 0 {
                f.busy -= 1;
                let mut r = answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "busy, try again later"}),
                );
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(f.retry_after_s),
                );
                return r;
            }
            if f.garbage {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    b"<html><body>Kiosk starting\xff\xfe{{",
                )));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/html"),
                );
                return r;
            }
        }

        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        match (route, &method) {
            ("/api/v1/panel", &Method::GET) => {
                answer(StatusCode::OK, self.inner.state.lock().to_json())
            }
            ("/api/v1/panel/light", &Method::PUT) => match json_body().get("color") {
                Some(Value::String(c))
                    if ["green", "red", "amber", "off"].contains(&c.as_str()) =>
                {
                    self.inner.state.lock().light = c.clone();
                    no_content()
                }
                _ => bad_request("`color` must be green, red, amber or off"),
            },
            ("/api/v1/panel/shown", &Method::PUT) => {
                let b = json_body();
                let state = match b.get("state") {
                    Some(Value::String(s))
                        if ["free", "pending", "busy", "offline"].contains(&s.as_str()) =>
                    {
                        s.clone()
                    }
                    _ => return bad_request("`state` must be free, pending, busy or offline"),
                };
                let (title, subtitle) = match (text_field(&b, "title"), text_field(&b, "subtitle"))
                {
                    (Ok(t), Ok(s)) => (t, s),
                    (Err(e), _) | (_, Err(e)) => return bad_request(&e),
                };
                self.inner.state.lock().shown = Shown {
                    state,
                    title,
                    subtitle,
                };
                no_content()
            }
            ("/api/v1/panel/power", &Method::PUT) => match json_body().get("on") {
                Some(Value::Bool(on)) => {
                    self.inner.state.lock().power = *on;
                    no_content()
                }
                _ => bad_request("`on` must be a boolean"),
            },
            ("/api/v1/panel/brightness", &Method::PUT) => {
                match json_body().get("level").and_then(Value::as_u64) {
                    Some(level) if level <= 100 => {
                        self.inner.state.lock().brightness = level as u8;
                        no_content()
                    }
                    _ => bad_request("`level` must be an integer 0-100"),
                }
            }
            ("/api/v1/panel/events", &Method::GET) => {
                let after = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("after="))
                    .map(|v| v.parse::<u64>());
                let after = match after {
                    None => 0,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => return bad_request("`after` must be an integer"),
                };
                let s = self.inner.state.lock();
                let events: Vec<&PanelEvent> = s
                    .events
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(MAX_EVENTS_PER_ANSWER)
                    .collect();
                let next = events.last().map(|e| e.seq).unwrap_or(s.seq);
                let events: Vec<Value> = events
                    .iter()
                    .map(
                        |e| json!({"seq": e.seq, "kind": e.kind, "at": e.at, "minutes": e.minutes}),
                    )
                    .collect();
                answer(StatusCode::OK, json!({"events": events, "next": next}))
            }
            (
                "/api/v1/panel"
                | "/api/v1/panel/light"
                | "/api/v1/panel/shown"
                | "/api/v1/panel/power"
                | "/api/v1/panel/brightness"
                | "/api/v1/panel/events",
                _,
            ) => answer(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ),
            _ => answer(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a fresh connection; the whole answer as text.
    async fn request(addr: SocketAddr, raw: String) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(path: &str, extra: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: panel\r\nConnection: close\r\n{extra}\r\n")
    }

    fn put(path: &str, body: &str) -> String {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: panel\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn panel_api() {
        let sim = PanelSimulator::new();
        let addr = sim.serve().await.unwrap();
        let r = request(addr, get("/api/v1/panel", "")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(r#""light":"off""#), "{r}");

        let r = request(addr, put("/api/v1/panel/light", r#"{"color":"red"}"#)).await;
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        assert_eq!(sim.state().light, "red");
        let r = request(addr, put("/api/v1/panel/light", r#"{"color":"blue"}"#)).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");

        sim.press("check_in", None);
        sim.press("book_now", Some(30));
        let r = request(addr, get("/api/v1/panel/events?after=1", "")).await;
        assert!(
            r.contains(r#""next":2"#) && r.contains(r#""minutes":30"#),
            "{r}"
        );
        assert!(!r.contains("check_in"), "{r}");

        sim.require_api_key(Some("k1"));
        let r = request(addr, get("/api/v1/panel", "")).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = request(addr, get("/api/v1/panel", "X-Api-Key: k1\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        sim.busy(1, 7);
        let r = request(addr, get("/api/v1/panel", "X-Api-Key: k1\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.to_ascii_lowercase().contains("retry-after: 7"), "{r}");

        sim.reboot();
        assert_eq!(sim.state().light, "off");
        assert_eq!(sim.state().seq, 0);
        let r = request(addr, get("/nope", "X-Api-Key: k1\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
}
