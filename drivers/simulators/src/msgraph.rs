//! A local server serving **Microsoft Graph v1.0's documented response shapes** for one
//! room mailbox's calendar, and an **OAuth 2.0 token endpoint**, over real HTTP: the test
//! peer of the `lintel-driver-msgraph` crate (see `docs/drivers/msgraph.md`). It is not
//! Microsoft Graph: it answers the subset the driver uses, in the shapes the Graph docs
//! give.
//!
//! [`MsGraphSimulator::serve`] binds `127.0.0.1:0` and returns the address (the module's
//! uri is `http://<addr>`, the engine's `oauth2.token_url` `http://<addr>/token`). Routes:
//!
//! - `POST /token` (also `/<tenant>/oauth2/v2.0/token`), form-encoded, RFC 6749 §4.4
//!   `grant_type=client_credentials` and §6 `refresh_token`: checks `client_id` and
//!   `client_secret` (and the refresh token), answers `{"token_type":"Bearer",
//!   "expires_in":N,"ext_expires_in":N,"access_token":"tok-N"}` or `400
//!   {"error":"invalid_client","error_description":"…"}` (Microsoft identity platform
//!   "OAuth 2.0 client credentials flow" shapes). `scope`, when given, must be
//!   `https://graph.microsoft.com/.default`. After
//!   [`MsGraphSimulator::rotate_refresh_tokens`] each refresh answer carries a new
//!   `refresh_token` (`rt-N`) and the one it replaces is refused from then on (the
//!   identity platform issues a new refresh token with each renewal; providers with reuse
//!   detection also revoke the old one, which this does).
//! - Every other request needs `Authorization: Bearer <a current token>`, else `401`
//!   with Graph's error body (`InvalidAuthenticationToken`), as "Microsoft Graph error
//!   responses and resource types" documents.
//! - `GET /{v1.0|beta}/users/{mailbox}/calendarView?startDateTime=…&endDateTime=…` ("List
//!   calendarView"): the events overlapping the window, sorted by start, `$select`
//!   honoured, `$top` pages (at most 1000, or the [`MsGraphSimulator::set_max_page`]
//!   cap) with an `@odata.nextLink` carrying a `$skiptoken` ("Paging Microsoft Graph
//!   data"); times are `dateTimeTimeZone` values with 7 fractional digits, in the zone
//!   `Prefer: outlook.timezone="…"` asks for (`Preference-Applied` echoes it). Without
//!   that header the simulator answers each event in **its own zone**
//!   (`originalStartTimeZone`, UTC when absent; see [`in_zone`]), stricter than Graph
//!   (which then answers UTC), so a driver that forgot the header reads wrong times.
//!   All-day events (`isAllDay`) are stored as floating midnight-to-midnight dates (local
//!   dates in the event's zone) and answered as such, labelled with the answer's zone, as
//!   Graph does. Zones known: UTC, `Pacific Standard Time` / `America/Los_Angeles` (US
//!   DST rules), `W. Europe Standard Time` / `Europe/Berlin` (EU rules), `Tokyo Standard
//!   Time` / `Asia/Tokyo`; another zone is answered as UTC.
//! - `POST …/events` ("Create event"): `201` with the event; the mailbox is its organizer;
//!   a repeated `transactionId` answers the event already created.
//! - `GET …/events/{id}` (`$select` honoured), `POST …/events/{id}/cancel` ("event:
//!   cancel", organizer only) and `POST …/events/{id}/decline` ("event: decline",
//!   attendee only): `202`; either removes the event from the calendar view.
//! - Errors: `{"error":{"code","message","innerError"}}`; an unknown mailbox is
//!   `404 ErrorInvalidUser`, an unknown event `404 ErrorItemNotFound`.
//!
//! Knobs for tests: [`MsGraphSimulator::add_event`], [`MsGraphSimulator::expire_tokens`],
//! [`MsGraphSimulator::fail_next`] (the API's next answer, with `Retry-After`),
//! [`MsGraphSimulator::delay_next`] (the API's next answer, late),
//! [`MsGraphSimulator::fail_tokens`] (the token endpoint), [`MsGraphSimulator::token_requests`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Events the calendar holds at most (`POST …/events` answers 507 beyond).
pub const MAX_EVENTS: usize = 5000;
/// The largest `$top` Graph accepts for `calendarView`.
pub const MAX_TOP: usize = 1000;
/// Graph's default page size for `calendarView` without `$top`.
pub const DEFAULT_TOP: usize = 10;
/// API requests [`MsGraphSimulator::requests`] remembers (the latest).
pub const MAX_REQUESTS_KEPT: usize = 512;

struct State {
    mailbox: String,
    client_id: String,
    client_secret: String,
    refresh_token: Option<String>,
    /// Answer refresh grants with a new refresh token, refusing the old one after.
    rotate: bool,
    /// Refresh grants answered.
    refreshes: u64,
    /// Events in the calendar view (full Graph event objects).
    events: Vec<Value>,
    /// What `cancel`/`decline` did: (event id, `cancel` or `decline`, request body).
    actions: Vec<(String, String, Value)>,
    /// Current tokens and when they expire.
    tokens: HashMap<String, Instant>,
    token_counter: u64,
    expires_in: u64,
    token_requests: usize,
    token_failure: Option<(u16, String)>,
    api_failures: VecDeque<(u16, Option<u64>, String)>,
    /// Waits before the next API answers (token requests not delayed).
    api_delays: VecDeque<Duration>,
    max_page: usize,
    requests: Vec<String>,
    id_counter: u64,
}

/// The simulated Graph service and token endpoint; clones share the state.
#[derive(Clone)]
pub struct MsGraphSimulator {
    state: Arc<Mutex<State>>,
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS` of unix seconds (UTC).
pub fn iso(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Unix seconds of `YYYY-MM-DDTHH:MM:SS[.fffffff][Z]` (read as UTC).
pub fn parse_iso(v: &str) -> Option<i64> {
    let v = v.trim().trim_end_matches('Z');
    let v = v.split('.').next()?;
    if v.len() != 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Seconds east of UTC of a known zone at `unix` (see the module docs); `None` for an
/// unknown zone.
pub fn zone_offset(zone: &str, unix: i64) -> Option<i64> {
    // The day (unix days) of the `n`th (1-based; 0 = last) Sunday of month `m` of `y`.
    let sunday = |y: i64, m: i64, n: i64| -> i64 {
        let first = days_from_civil(y, m, 1);
        let weekday = (first + 4).rem_euclid(7); // 0 = Sunday (1970-01-01 was a Thursday)
        let first_sunday = first + (7 - weekday) % 7;
        if n > 0 {
            first_sunday + 7 * (n - 1)
        } else {
            let next = if m == 12 {
                days_from_civil(y + 1, 1, 1)
            } else {
                days_from_civil(y, m + 1, 1)
            };
            let mut d = first_sunday;
            while d + 7 < next {
                d += 7;
            }
            d
        }
    };
    let year = {
        let days = unix.div_euclid(86_400);
        // The year of a day count (civil_from_days, year only).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        yoe + era * 400 + i64::from(mp >= 10)
    };
    match zone.trim() {
        "UTC" | "Etc/UTC" | "GMT" | "tzone://Microsoft/Utc" => Some(0),
        "Tokyo Standard Time" | "Asia/Tokyo" => Some(9 * 3600),
        "Pacific Standard Time" | "America/Los_Angeles" => {
            // 02:00 local on the second Sunday of March to 02:00 on the first of November.
            let from = sunday(year, 3, 2) * 86_400 + 10 * 3600;
            let to = sunday(year, 11, 1) * 86_400 + 9 * 3600;
            Some(if (from..to).contains(&unix) {
                -7 * 3600
            } else {
                -8 * 3600
            })
        }
        "W. Europe Standard Time" | "Europe/Berlin" => {
            // 01:00 UTC on the last Sunday of March to 01:00 UTC on the last of October.
            let from = sunday(year, 3, 0) * 86_400 + 3600;
            let to = sunday(year, 10, 0) * 86_400 + 3600;
            Some(if (from..to).contains(&unix) {
                2 * 3600
            } else {
                3600
            })
        }
        _ => None,
    }
}

/// `event` (see [`event`]) as created in `zone` (its `originalStartTimeZone` and
/// `originalEndTimeZone`): answered in it when the request has no `Prefer:
/// outlook.timezone`; an all-day event's dates are local dates in it.
pub fn in_zone(mut event: Value, zone: &str) -> Value {
    event["originalStartTimeZone"] = json!(zone);
    event["originalEndTimeZone"] = json!(zone);
    event
}

/// The event's own zone (`originalStartTimeZone`, UTC when absent or unknown).
fn own_zone(e: &Value) -> String {
    e.get("originalStartTimeZone")
        .and_then(Value::as_str)
        .filter(|z| zone_offset(z, 0).is_some())
        .unwrap_or("UTC")
        .to_string()
}

/// `e` with its `start`/`end` in `zone` (its own zone when `None`); all-day dates stay
/// floating, labelled with the zone.
fn in_answer_zone(e: &Value, zone: Option<&str>) -> Value {
    let zone = zone
        .filter(|z| zone_offset(z, 0).is_some())
        .map(str::to_string)
        .unwrap_or_else(|| own_zone(e));
    let mut out = e.clone();
    let all_day = e["isAllDay"] == json!(true);
    for k in ["start", "end"] {
        let Some(t) = e
            .get(k)
            .and_then(|v| parse_iso(v.get("dateTime")?.as_str()?))
        else {
            continue;
        };
        let local = if all_day {
            t
        } else {
            t + zone_offset(&zone, t).unwrap_or(0)
        };
        out[k] = json!({"dateTime": format!("{}.0000000", iso(local)), "timeZone": zone});
    }
    out
}

/// A Graph `dateTimeTimeZone` in UTC with 7 fractional digits.
pub fn date_time(unix: i64) -> Value {
    json!({"dateTime": format!("{}.0000000", iso(unix)), "timeZone": "UTC"})
}

/// An event as Graph lists it ("event resource type"), organized by `organizer`, busy,
/// not cancelled; change fields with `ev["showAs"] = json!("free")` etc. before adding.
pub fn event(id: &str, start: i64, end: i64, subject: &str, organizer: &str) -> Value {
    json!({
        "@odata.etag": format!("W/\"{id}-1\""),
        "id": id,
        "createdDateTime": "2026-01-01T00:00:00.0000000Z",
        "subject": subject,
        "bodyPreview": "",
        "start": date_time(start),
        "end": date_time(end),
        "isAllDay": false,
        "isCancelled": false,
        "isOrganizer": false,
        "sensitivity": "normal",
        "showAs": "busy",
        "type": "singleInstance",
        "responseStatus": {"response": "accepted", "time": "2026-01-01T00:00:00.0000000Z"},
        "organizer": {"emailAddress": {"name": organizer, "address": organizer}},
        "attendees": [],
    })
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` into pairs (decoded).
fn form(s: &str, plus_is_space: bool) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(k, plus_is_space),
                percent_decode(v, plus_is_space),
            )
        })
        .collect()
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b',' | b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Answer = Response<Full<Bytes>>;

fn reply(status: u16, headers: &[(&str, String)], body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

fn json_reply(status: u16, body: &Value) -> Answer {
    reply(
        status,
        &[(
            "Content-Type",
            "application/json; odata.metadata=minimal".into(),
        )],
        body.to_string(),
    )
}

/// Graph's error body ("Microsoft Graph error responses and resource types").
pub fn graph_error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message,
        "innerError": {"date": "2026-01-01T00:00:00", "request-id": "00000000-0000-0000-0000-000000000000",
                       "client-request-id": "00000000-0000-0000-0000-000000000000"}}})
}

fn graph_error(status: u16, code: &str, message: &str) -> Answer {
    json_reply(status, &graph_error_body(code, message))
}

/// The error code Graph uses for a status (for [`MsGraphSimulator::fail_next`] without a
/// body).
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "ErrorAccessDenied",
        404 => "ErrorItemNotFound",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "generalException",
    }
}

/// Start and end (unix seconds) of a stored event (an all-day event's dates are local
/// dates in its own zone).
fn span(e: &Value) -> Option<(i64, i64)> {
    let zone = own_zone(e);
    let all_day = e["isAllDay"] == json!(true);
    let t = |k: &str| {
        let t = parse_iso(e.get(k)?.get("dateTime")?.as_str()?)?;
        Some(if all_day {
            t - zone_offset(&zone, t).unwrap_or(0)
        } else {
            t
        })
    };
    Some((t("start")?, t("end")?))
}

/// Only the `$select`ed properties (plus `id` and `@odata.etag`).
fn selected(e: &Value, select: Option<&str>) -> Value {
    let Some(select) = select else {
        return e.clone();
    };
    let keep: Vec<&str> = select.split(',').map(str::trim).collect();
    let mut out = serde_json::Map::new();
    for (k, v) in e.as_object().into_iter().flatten() {
        if k == "id" || k == "@odata.etag" || keep.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

impl MsGraphSimulator {
    /// An empty calendar for `mailbox`, with a token endpoint accepting `client_id` /
    /// `client_secret` (tokens live an hour).
    pub fn new(mailbox: &str, client_id: &str, client_secret: &str) -> MsGraphSimulator {
        MsGraphSimulator {
            state: Arc::new(Mutex::new(State {
                mailbox: mailbox.to_string(),
                client_id: client_id.to_string(),
                client_secret: client_secret.to_string(),
                refresh_token: None,
                rotate: false,
                refreshes: 0,
                events: Vec::new(),
                actions: Vec::new(),
                tokens: HashMap::new(),
                token_counter: 0,
                expires_in: 3600,
                token_requests: 0,
                token_failure: None,
                api_failures: VecDeque::new(),
                api_delays: VecDeque::new(),
                max_page: MAX_TOP,
                requests: Vec::new(),
                id_counter: 0,
            })),
        }
    }

    /// Also accept `grant_type=refresh_token` with this refresh token.
    pub fn accept_refresh_token(&self, token: &str) {
        self.state.lock().refresh_token = Some(token.to_string());
    }

    /// Rotate refresh tokens: each refresh answer carries a new one (`rt-N`), which
    /// replaces the one accepted so far.
    pub fn rotate_refresh_tokens(&self) {
        self.state.lock().rotate = true;
    }

    /// The refresh token accepted now, and how many refresh grants were answered.
    pub fn refresh_token(&self) -> (Option<String>, u64) {
        let s = self.state.lock();
        (s.refresh_token.clone(), s.refreshes)
    }

    /// Add an event (see [`event`]); replaces one with the same id.
    pub fn add_event(&self, event: Value) {
        let mut s = self.state.lock();
        let id = event["id"].clone();
        s.events.retain(|e| e["id"] != id);
        s.events.push(event);
    }

    /// The events in the calendar view.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().events.clone()
    }

    /// The event with this id, if it is in the calendar view.
    pub fn event(&self, id: &str) -> Option<Value> {
        self.state
            .lock()
            .events
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
    }

    /// `cancel` / `decline` actions done: (event id, action, request body).
    pub fn actions(&self) -> Vec<(String, String, Value)> {
        self.state.lock().actions.clone()
    }

    /// Every token issued so far answers 401 from now on (the engine must fetch another).
    pub fn expire_tokens(&self) {
        self.state.lock().tokens.clear();
    }

    /// `expires_in` of the tokens issued from now on, in seconds.
    pub fn set_expires_in(&self, secs: u64) {
        self.state.lock().expires_in = secs;
    }

    /// The API's next answer (after the token check) is `status`, with `Retry-After` if
    /// given and `body` (Graph's error body for the status when empty). Queued.
    pub fn fail_next(&self, status: u16, retry_after: Option<u64>, body: &str) {
        self.state
            .lock()
            .api_failures
            .push_back((status, retry_after, body.to_string()));
    }

    /// The API's next request (not a token request) is answered only after `wait`. Queued.
    pub fn delay_next(&self, wait: Duration) {
        self.state.lock().api_delays.push_back(wait);
    }

    /// Make the token endpoint answer `status` with `body` (until called with `None`).
    pub fn fail_tokens(&self, failure: Option<(u16, &str)>) {
        self.state.lock().token_failure = failure.map(|(s, b)| (s, b.to_string()));
    }

    /// Token requests received so far (answered or not).
    pub fn token_requests(&self) -> usize {
        self.state.lock().token_requests
    }

    /// Answer at most `n` events per `calendarView` page, whatever `$top` asks.
    pub fn set_max_page(&self, n: usize) {
        self.state.lock().max_page = n.clamp(1, MAX_TOP);
    }

    /// The requests received (`METHOD path?query`), token requests included.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// Serve on a new loopback port (`127.0.0.1:0`) until the runtime stops; returns the
    /// address.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let sim = self.clone();
        crate::serve_loopback(move |stream| sim.clone().serve_connection(stream)).await
    }

    /// Serve one HTTP/1.1 connection.
    pub async fn serve_connection(self, stream: tokio::net::TcpStream) {
        let service = service_fn(move |req| {
            let sim = self.clone();
            async move { Ok::<_, Infallible>(sim.handle(req).await) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let auth = header("authorization");
        // `Prefer: outlook.timezone="…"`: the zone times are answered in.
        let prefer_zone = header("prefer").and_then(|p| {
            p.split(',').find_map(|part| {
                let v = part.trim().strip_prefix("outlook.timezone=")?;
                Some(v.trim_matches('"').to_string())
            })
        });
        let host = header("host").unwrap_or_else(|| "127.0.0.1".into());
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return graph_error(413, "RequestEntityTooLarge", "The request is too large.");
            }
        };
        let token_path = path == "/token" || path.ends_with("/oauth2/v2.0/token");
        let delay = if token_path {
            None
        } else {
            self.state.lock().api_delays.pop_front()
        };
        if let Some(wait) = delay {
            tokio::time::sleep(wait).await;
        }
        let mut s = self.state.lock();
        s.requests.push(if query.is_empty() {
            format!("{method} {path}")
        } else {
            format!("{method} {path}?{query}")
        });
        // Bounded: the demo building runs this simulator for as long as Lintel runs.
        if s.requests.len() > MAX_REQUESTS_KEPT {
            s.requests.remove(0);
        }
        if method == "POST" && (path == "/token" || path.ends_with("/oauth2/v2.0/token")) {
            return Self::token(&mut s, &String::from_utf8_lossy(&body));
        }
        // The bearer token.
        let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        let now = Instant::now();
        match token {
            None => {
                return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
            }
            Some(t) if s.tokens.get(t).is_none_or(|exp| *exp <= now) => {
                let mut r = graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static(
                        "Bearer realm=\"\", error=\"invalid_token\"",
                    ),
                );
                return r;
            }
            Some(_) => {}
        }
        if let Some((status, retry, body)) = s.api_failures.pop_front() {
            let mut headers = vec![("Content-Type", "application/json".to_string())];
            if let Some(r) = retry {
                headers.push(("Retry-After", r.to_string()));
            }
            let body = if body.is_empty() {
                graph_error_body(default_code(status), "Simulated failure.").to_string()
            } else {
                body
            };
            return reply(status, &headers, body);
        }
        // /{version}/users/{mailbox}/{rest}
        let mut parts = path.trim_start_matches('/').splitn(4, '/');
        let (version, users, mailbox, rest) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            percent_decode(parts.next().unwrap_or_default(), false),
            parts.next().unwrap_or_default().to_string(),
        );
        if !matches!(version, "v1.0" | "beta") || users != "users" {
            return graph_error(400, "BadRequest", "Resource not found for the segment.");
        }
        if !mailbox.eq_ignore_ascii_case(&s.mailbox) {
            return graph_error(
                404,
                "ErrorInvalidUser",
                &format!("The requested user '{mailbox}' is invalid."),
            );
        }
        let params = form(&query, false);
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let segs: Vec<String> = rest.split('/').map(|p| percent_decode(p, false)).collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["calendarView"] | ["calendarview"]) => {
                let (Some(start), Some(end)) = (
                    param("startDateTime").and_then(parse_iso),
                    param("endDateTime").and_then(parse_iso),
                ) else {
                    return graph_error(
                        400,
                        "ErrorInvalidParameter",
                        "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
                    );
                };
                let top = param("$top")
                    .and_then(|t| t.parse::<usize>().ok())
                    .unwrap_or(DEFAULT_TOP)
                    .clamp(1, MAX_TOP)
                    .min(s.max_page);
                let skip = param("$skiptoken")
                    .and_then(|t| t.strip_prefix("sk"))
                    .and_then(|t| t.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut matching: Vec<&Value> = s
                    .events
                    .iter()
                    .filter(|e| {
                        span(e)
                            .is_some_and(|(a, b)| a < end && (b > start || (a == b && a >= start)))
                    })
                    .collect();
                matching.sort_by_key(|e| span(e).map(|(a, _)| a));
                let select = param("$select");
                let value: Vec<Value> = matching
                    .iter()
                    .skip(skip)
                    .take(top)
                    .map(|e| selected(&in_answer_zone(e, prefer_zone.as_deref()), select))
                    .collect();
                let mut answer = json!({
                    "@odata.context": format!("http://{host}/{version}/$metadata#users('{}')/calendarView", encode(&s.mailbox)),
                    "value": value,
                });
                if skip + top < matching.len() {
                    let mut next = format!(
                        "http://{host}/{version}/users/{}/calendarView?startDateTime={}&endDateTime={}",
                        s.mailbox,
                        encode(param("startDateTime").unwrap_or_default()),
                        encode(param("endDateTime").unwrap_or_default())
                    );
                    if let Some(sel) = select {
                        next.push_str(&format!("&$select={}", encode(sel)));
                    }
                    next.push_str(&format!("&$top={top}&$skiptoken=sk{}", skip + top));
                    answer["@odata.nextLink"] = json!(next);
                }
                let mut r = json_reply(200, &answer);
                if let Some(z) = prefer_zone
                    .as_deref()
                    .filter(|z| zone_offset(z, 0).is_some())
                    && let Ok(v) =
                        hyper::header::HeaderValue::from_str(&format!("outlook.timezone=\"{z}\""))
                {
                    r.headers_mut().insert("Preference-Applied", v);
                }
                r
            }
            ("POST", ["events"]) => {
                let Ok(b) = serde_json::from_slice::<Value>(&body) else {
                    return graph_error(400, "BadRequest", "Unable to read JSON request payload.");
                };
                if let Some(tx) = b.get("transactionId").and_then(Value::as_str)
                    && let Some(e) = s.events.iter().find(|e| e["transactionId"] == tx)
                {
                    return json_reply(201, &in_answer_zone(e, prefer_zone.as_deref()));
                }
                let time = |k: &str| -> Option<i64> {
                    let v = b.get(k)?;
                    let tz = v.get("timeZone")?.as_str()?;
                    (tz == "UTC").then_some(())?;
                    parse_iso(v.get("dateTime")?.as_str()?)
                };
                let (Some(start), Some(end)) = (time("start"), time("end")) else {
                    return graph_error(
                        400,
                        "ErrorPropertyValidationFailure",
                        "At least one property failed validation (start/end in UTC).",
                    );
                };
                if end < start {
                    return graph_error(
                        400,
                        "ErrorInvalidRequest",
                        "The end time is before the start.",
                    );
                }
                if s.events.len() >= MAX_EVENTS {
                    return graph_error(507, "ErrorQuotaExceeded", "The mailbox is full.");
                }
                s.id_counter += 1;
                // Graph ids are URL-unsafe base64: `+`, `/` and `=` included.
                let id = format!("AAMkAGI2TG93AAA{}+sim/ev=", s.id_counter);
                let mailbox = s.mailbox.clone();
                let mut e = event(
                    &id,
                    start,
                    end,
                    b.get("subject").and_then(Value::as_str).unwrap_or_default(),
                    &mailbox,
                );
                e["isOrganizer"] = json!(true);
                e["responseStatus"] =
                    json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"});
                if let Some(v) = b.get("showAs") {
                    e["showAs"] = v.clone();
                }
                if let Some(a) = b.get("attendees").and_then(Value::as_array) {
                    e["attendees"] = json!(
                        a.iter()
                            .map(|a| {
                                let mut a = a.clone();
                                a["status"] =
                                    json!({"response": "none", "time": "0001-01-01T00:00:00Z"});
                                a
                            })
                            .collect::<Vec<_>>()
                    );
                }
                if let Some(tx) = b.get("transactionId") {
                    e["transactionId"] = tx.clone();
                }
                s.events.push(e.clone());
                json_reply(201, &in_answer_zone(&e, prefer_zone.as_deref()))
            }
            ("GET", ["events", id]) => match s.events.iter().find(|e| e["id"] == *id) {
                Some(e) => json_reply(
                    200,
                    &selected(&in_answer_zone(e, prefer_zone.as_deref()), param("$select")),
                ),
                None => graph_error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                ),
            },
            ("POST", ["events", id, action @ ("cancel" | "decline")]) => {
                let Some(i) = s.events.iter().position(|e| e["id"] == *id) else {
                    return graph_error(
                        404,
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    );
                };
                let organizer = s.events[i]["isOrganizer"] == json!(true);
                if *action == "cancel" && !organizer {
                    return graph_error(
                        400,
                        "ErrorInvalidRequest",
                        "Your request can't be completed. You need to be an organizer to cancel a meeting.",
                    );
                }
                if *action == "decline" && organizer {
                    return graph_error(
                        400,
                        "ErrorInvalidRequest",
                        "Your request can't be completed. You can't respond to a meeting you organized.",
                    );
                }
                let b = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                s.events.remove(i);
                s.actions.push((id.to_string(), action.to_string(), b));
                reply(202, &[], String::new())
            }
            _ => graph_error(
                400,
                "BadRequest",
                &format!("Unsupported request {method} {path}."),
            ),
        }
    }

    fn token(s: &mut State, body: &str) -> Answer {
        s.token_requests += 1;
        if let Some((status, body)) = &s.token_failure {
            return reply(
                *status,
                &[("Content-Type", "application/json".into())],
                body.clone(),
            );
        }
        let f = form(body, true);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let refused = |error: &str, desc: &str| {
            json_reply(
                400,
                &json!({"error": error, "error_description": desc, "error_codes": [7000215]}),
            )
        };
        if get("client_id") != Some(s.client_id.as_str())
            || get("client_secret") != Some(s.client_secret.as_str())
        {
            return refused(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        match get("grant_type") {
            Some("client_credentials") => {}
            Some("refresh_token") => {
                if s.refresh_token.is_none() || get("refresh_token") != s.refresh_token.as_deref() {
                    return refused(
                        "invalid_grant",
                        "AADSTS70000: The provided refresh token is invalid.",
                    );
                }
            }
            _ => {
                return refused(
                    "unsupported_grant_type",
                    "AADSTS70003: The grant type is not supported.",
                );
            }
        }
        if let Some(scope) = get("scope")
            && get("grant_type") == Some("client_credentials")
            && scope != "https://graph.microsoft.com/.default"
        {
            return refused(
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid.",
            );
        }
        s.token_counter += 1;
        let token = format!("tok-{}", s.token_counter);
        let now = Instant::now();
        s.tokens.retain(|_, expires| *expires > now);
        let expires = now + Duration::from_secs(s.expires_in);
        s.tokens.insert(token.clone(), expires);
        let mut answer = json!({"token_type": "Bearer", "expires_in": s.expires_in, "ext_expires_in": s.expires_in, "access_token": token});
        if get("grant_type") == Some("refresh_token") {
            s.refreshes += 1;
            if s.rotate {
                let next = format!("rt-{}", s.refreshes);
                answer["refresh_token"] = Value::String(next.clone());
                s.refresh_token = Some(next);
            }
        }
        json_reply(200, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in [0, 1_767_225_600, 4_102_444_799] {
            assert_eq!(parse_iso(&iso(t)), Some(t));
            assert_eq!(parse_iso(&format!("{}.0000000", iso(t))), Some(t));
            assert_eq!(parse_iso(&format!("{}Z", iso(t))), Some(t));
        }
        assert_eq!(percent_decode("a%2Bb%2F%3D+c", false), "a+b/=+c");
        assert_eq!(percent_decode("a+b%", true), "a b%");
    }

    #[test]
    fn events_are_answered_in_the_preferred_or_their_own_zone() {
        let t0 = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(zone_offset("Pacific Standard Time", t0), Some(-8 * 3600));
        assert_eq!(
            zone_offset("America/Los_Angeles", 1_782_900_000),
            Some(-7 * 3600)
        ); // July
        assert_eq!(zone_offset("Europe/Berlin", t0), Some(3600));
        // 2026-03-29T01:00Z: Berlin switches to CEST; 2026-10-25T01:00Z back.
        assert_eq!(zone_offset("Europe/Berlin", 1_774_746_000 - 1), Some(3600));
        assert_eq!(zone_offset("Europe/Berlin", 1_774_746_000), Some(7200));
        assert_eq!(zone_offset("Europe/Berlin", 1_792_890_000 - 1), Some(7200));
        assert_eq!(zone_offset("Europe/Berlin", 1_792_890_000), Some(3600));
        // 2026-03-08T10:00Z: Los Angeles switches to PDT.
        assert_eq!(
            zone_offset("Pacific Standard Time", 1_772_964_000 - 1),
            Some(-8 * 3600)
        );
        assert_eq!(
            zone_offset("Pacific Standard Time", 1_772_964_000),
            Some(-7 * 3600)
        );
        assert_eq!(zone_offset("Mars/Olympus", t0), None);

        let e = in_zone(
            event("p", t0 + 18 * 3600, t0 + 19 * 3600, "S", "a@x.com"),
            "Pacific Standard Time",
        );
        let own = in_answer_zone(&e, None);
        assert_eq!(
            own["start"],
            json!({"dateTime": "2026-01-01T10:00:00.0000000", "timeZone": "Pacific Standard Time"})
        );
        let utc = in_answer_zone(&e, Some("UTC"));
        assert_eq!(utc["start"], date_time(t0 + 18 * 3600));
        assert_eq!(span(&e), Some((t0 + 18 * 3600, t0 + 19 * 3600)));
        // All day: floating dates, local in the event's zone.
        let mut d = in_zone(
            event("d", t0, t0 + 86_400, "Offsite", "a@x.com"),
            "Europe/Berlin",
        );
        d["isAllDay"] = json!(true);
        assert_eq!(span(&d), Some((t0 - 3600, t0 + 86_400 - 3600)));
        assert_eq!(
            in_answer_zone(&d, Some("UTC"))["start"],
            json!({"dateTime": "2026-01-01T00:00:00.0000000", "timeZone": "UTC"})
        );
    }

    #[tokio::test]
    async fn tokens_paging_and_actions() {
        let sim = MsGraphSimulator::new("room@x.com", "app", "secret");
        let t0 = 1_767_225_600;
        for i in 0..5 {
            sim.add_event(event(
                &format!("e{i}"),
                t0 + i * 3600,
                t0 + i * 3600 + 1800,
                "S",
                "a@x.com",
            ));
        }
        let addr = sim.serve().await.unwrap();
        let ask = |method: &'static str, path: String, auth: Option<String>, body: String| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            if let Some(a) = auth {
                req.push_str(&format!("Authorization: Bearer {a}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let bad = ask(
            "POST",
            "/token".into(),
            None,
            "grant_type=client_credentials&client_id=app&client_secret=nope".into(),
        )
        .await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("invalid_client"),
            "{bad}"
        );
        let ok = ask("POST", "/token".into(), None, "grant_type=client_credentials&client_id=app&client_secret=secret&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default".into()).await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.contains("\"access_token\":\"tok-1\""),
            "{ok}"
        );
        assert_eq!(sim.token_requests(), 2);
        let refresh =
            "grant_type=refresh_token&client_id=app&client_secret=secret&refresh_token=rt-1";
        let no = ask("POST", "/token".into(), None, refresh.into()).await;
        assert!(no.contains("invalid_grant"), "{no}");
        sim.accept_refresh_token("rt-1");
        let yes = ask("POST", "/token".into(), None, refresh.into()).await;
        assert!(yes.contains("\"access_token\":\"tok-2\""), "{yes}");
        sim.fail_tokens(Some((429, "{\"error\":\"slow_down\"}")));
        let busy = ask("POST", "/token".into(), None, refresh.into()).await;
        assert!(busy.starts_with("HTTP/1.1 429"), "{busy}");
        sim.fail_tokens(None);

        let view = format!(
            "/v1.0/users/room@x.com/calendarView?startDateTime={}Z&endDateTime={}Z&$top=2&$select=id,subject",
            iso(t0),
            iso(t0 + 86_400)
        );
        let unauth = ask("GET", view.clone(), None, String::new()).await;
        assert!(
            unauth.starts_with("HTTP/1.1 401") && unauth.contains("InvalidAuthenticationToken")
        );
        let page = ask("GET", view.clone(), Some("tok-1".into()), String::new()).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("\"e0\"") && page.contains("\"e1\"") && !page.contains("\"e2\""));
        assert!(
            page.contains("$skiptoken=sk2") && !page.contains("isAllDay"),
            "{page}"
        );

        sim.fail_next(429, Some(3), "");
        let busy = ask("GET", view.clone(), Some("tok-1".into()), String::new()).await;
        assert!(
            busy.starts_with("HTTP/1.1 429") && busy.to_lowercase().contains("retry-after: 3"),
            "{busy}"
        );

        let wrong = ask(
            "GET",
            view.replace("room@x.com", "other@x.com"),
            Some("tok-1".into()),
            String::new(),
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 404") && wrong.contains("ErrorInvalidUser"));

        let created = ask(
            "POST",
            "/v1.0/users/room@x.com/events".into(),
            Some("tok-1".into()),
            json!({"subject": "N", "start": {"dateTime": iso(t0), "timeZone": "UTC"},
                   "end": {"dateTime": iso(t0 + 60), "timeZone": "UTC"}, "transactionId": "t1"})
            .to_string(),
        )
        .await;
        assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        let id = "AAMkAGI2TG93AAA1+sim/ev=";
        let enc = "AAMkAGI2TG93AAA1%2Bsim%2Fev%3D";
        let decline = ask(
            "POST",
            format!("/v1.0/users/room@x.com/events/{enc}/decline"),
            Some("tok-1".into()),
            "{}".into(),
        )
        .await;
        assert!(
            decline.starts_with("HTTP/1.1 400"),
            "the organizer cannot decline"
        );
        let cancel = ask(
            "POST",
            format!("/v1.0/users/room@x.com/events/{enc}/cancel"),
            Some("tok-1".into()),
            "{\"comment\":\"x\"}".into(),
        )
        .await;
        assert!(cancel.starts_with("HTTP/1.1 202"), "{cancel}");
        assert!(sim.event(id).is_none());
        assert_eq!(sim.actions()[0].0, id);

        sim.expire_tokens();
        let expired = ask("GET", view, Some("tok-1".into()), String::new()).await;
        assert!(expired.starts_with("HTTP/1.1 401"));
    }
}
