//! A local server serving the **Google Calendar API v3's documented response shapes** for
//! room calendars, and an **OAuth 2.0 token endpoint**, over real HTTP: the test peer of
//! the `lintel-driver-google-calendar` crate (see `docs/drivers/google-calendar.md`). It is
//! not Google: it answers the subset the driver uses, in the shapes Google's reference
//! pages give.
//!
//! [`GoogleCalendarSimulator::serve`] binds `127.0.0.1:0` and returns the address (the
//! module's uri is `http://<addr>`, the engine's `oauth2.token_url` `http://<addr>/token`).
//! Routes:
//!
//! - `POST /token`, form-encoded ("Using OAuth 2.0 for Server to Server Applications",
//!   "Using OAuth 2.0 for Web Server Applications: Refreshing an access token"; RFC 6749
//!   §4.4 and §6, RFC 7523): `grant_type=client_credentials` (checks `client_id` and
//!   `client_secret`), `refresh_token` (also the refresh token given to
//!   [`GoogleCalendarSimulator::set_refresh_token`]) and
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer` (the assertion's claims `iss`, `scope`,
//!   `aud` are checked against [`GoogleCalendarSimulator::set_service_account`]; **its
//!   signature is not verified**). Answers `{"access_token":"tok-N","expires_in":N,
//!   "scope":…,"token_type":"Bearer"}` or `400 {"error":"invalid_client" |
//!   "invalid_grant","error_description":"…"}`.
//! - Every other request needs `Authorization: Bearer <a current token>`, else `401` with
//!   the API's error body (`authError`, `UNAUTHENTICATED`, as "Handle API errors" shows).
//! - `GET /calendar/v3/calendars/{calendarId}/events` ("Events: list"): `timeMin` (lower
//!   bound, exclusive, of an event's end) and `timeMax` (upper bound, exclusive, of its
//!   start) as RFC 3339, `singleEvents`, `orderBy=startTime` (400 without
//!   `singleEvents=true`, as documented), `maxResults` (default 250, at most 2500, or the
//!   [`GoogleCalendarSimulator::set_max_page`] cap), `pageToken` / `nextPageToken`,
//!   `showDeleted` (cancelled events are listed only with it). Answers
//!   `{"kind":"calendar#events","summary","timeZone","accessRole","items":[…]}`. Events
//!   are stored as given (already single occurrences: no recurrence expansion); all-day
//!   `date` events are matched against the range with ±14 h of slack (the simulator has
//!   no time-zone database; the driver filters exactly).
//! - `POST …/events` ("Events: insert"): a client `id` must be 5..=1024 characters of
//!   `a-v0-9` (400 otherwise), a taken one answers `409 duplicate`; the stored event (the
//!   room calendar is its organizer, `organizer.self`) with `kind`, `etag`, `status`.
//!   With [`GoogleCalendarSimulator::refuse_attendee_invites`], an insert with `attendees`
//!   answers `403 forbiddenForServiceAccounts` (a service account without domain-wide
//!   delegation).
//! - `GET …/events/{eventId}` ("Events: get"); `DELETE` ("Events: delete": `204`, the
//!   event becomes `cancelled`; `410 deleted` when it already is); `PATCH` ("Events:
//!   patch": top-level fields replaced; `attendees` replaces the list, or with
//!   `attendeesOmitted: true` updates only the entries given, matched by `email`). The
//!   room calendar is the caller: when it does not organize the event (`organizer.self`
//!   or its e-mail), a PATCH that changes another attendee's entry answers
//!   `403 forbidden`. `If-Match` with a stale etag answers `412 conditionNotMet`
//!   ("Version resources"/ETags).
//! - With [`GoogleCalendarSimulator::set_max_attendees`], events with more attendees are
//!   answered (get and list) with only the room's own entry and `attendeesOmitted: true`,
//!   as with the `maxAttendees` parameter.
//! - Errors: `{"error":{"code","message","errors":[{"domain","reason","message"}]}}`; an
//!   unknown calendar `404 notFound`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Events a calendar holds at most (an insert answers 403 `quotaExceeded` beyond).
pub const MAX_EVENTS: usize = 10_000;
/// The API path prefix.
pub const PREFIX: &str = "/calendar/v3/calendars/";
/// API requests [`GoogleCalendarSimulator::requests`] remembers (the latest).
pub const MAX_REQUESTS_KEPT: usize = 512;
/// Access tokens valid at once: issuing another retires the oldest.
pub const MAX_TOKENS_VALID: usize = 64;

/// One calendar: its zone and events by id.
#[derive(Debug, Clone)]
struct Calendar {
    time_zone: String,
    events: BTreeMap<String, Value>,
}

#[derive(Default)]
struct State {
    client_id: String,
    client_secret: String,
    refresh_token: Option<String>,
    service_account: Option<String>,
    calendars: BTreeMap<String, Calendar>,
    tokens: VecDeque<String>,
    issued: u64,
    token_requests: u64,
    expires_in: u64,
    token_failure: Option<(u16, Option<u64>, String)>,
    fail_next: VecDeque<(u16, Option<u64>, String)>,
    max_page: usize,
    max_attendees: Option<usize>,
    refuse_invites: bool,
    delay: Option<Duration>,
    etag: u64,
    requests: Vec<(String, String)>,
}

/// The simulated API and token endpoint; clones share the state.
#[derive(Clone)]
pub struct GoogleCalendarSimulator {
    state: Arc<Mutex<State>>,
}

type Answer = Response<Full<Bytes>>;

fn answer(code: u16, body: String) -> Answer {
    let empty = body.is_empty();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !empty {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json; charset=UTF-8"),
        );
    }
    r
}

fn json_answer(code: u16, v: &Value) -> Answer {
    answer(code, v.to_string())
}

/// A Google API error body ("Handle API errors").
pub fn error_body(code: u16, reason: &str, message: &str) -> String {
    let domain = if reason.contains("imit") || reason.contains("quota") {
        "usageLimits"
    } else {
        "global"
    };
    json!({"error": {"code": code, "message": message,
        "errors": [{"domain": domain, "reason": reason, "message": message}]}})
    .to_string()
}

fn error(code: u16, reason: &str, message: &str) -> Answer {
    answer(code, error_body(code, reason, message))
}

fn unauthorized() -> Answer {
    json_answer(
        401,
        &json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                        "location": "Authorization", "locationType": "header"}],
            "status": "UNAUTHENTICATED"}}),
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as RFC 3339 in UTC (`2026-01-01T09:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
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
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `YYYY-MM-DD` as unix seconds of its UTC midnight.
pub fn parse_date(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        v[0..4].parse::<i64>().ok()?,
        v[5..7].parse::<i64>().ok()?,
        v[8..10].parse::<i64>().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400)
}

/// RFC 3339 (`2026-01-01T09:00:00Z`, `…+01:00`, fractions allowed) as unix seconds.
pub fn parse_rfc3339(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.len() < 20 || v.as_bytes()[10] != b'T' && v.as_bytes()[10] != b't' {
        return None;
    }
    let day = parse_date(&v[..10])?;
    let t = &v[11..];
    let (hh, mm, ss) = (
        t.get(0..2)?.parse::<i64>().ok()?,
        t.get(3..5)?.parse::<i64>().ok()?,
        t.get(6..8)?.parse::<i64>().ok()?,
    );
    if t.as_bytes().get(2) != Some(&b':') || t.as_bytes().get(5) != Some(&b':') {
        return None;
    }
    let mut rest = &t[8..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (
                rest.get(1..3)?.parse::<i64>().ok()?,
                rest.get(4..6)?.parse::<i64>().ok()?,
            );
            if rest.len() != 6 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(day + hh * 3600 + mm * 60 + ss - offset)
}

/// The span of an event's `start`/`end` in unix seconds, and whether it is all-day.
fn span(event: &Value) -> Option<(i64, i64, bool)> {
    let when = |k: &str| -> Option<(i64, bool)> {
        let v = event.get(k)?;
        if let Some(t) = v.get("dateTime").and_then(Value::as_str) {
            return Some((parse_rfc3339(t)?, false));
        }
        Some((parse_date(v.get("date")?.as_str()?)?, true))
    };
    let (s, all_day) = when("start")?;
    let (e, _) = when("end")?;
    Some((s, e, all_day))
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The claims of a JWT (its middle part, base64url), unverified.
fn jwt_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    serde_json::from_slice(&out).ok()
}

/// Whether an attendee entry is the calendar's own.
fn is_calendar(entry: &Value, calendar: &str) -> bool {
    entry
        .get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| e.eq_ignore_ascii_case(calendar))
}

/// `ev` as answered with `max` attendees at most: beyond, only the calendar's own entry and
/// `attendeesOmitted: true`.
fn with_max_attendees(ev: &Value, calendar: &str, max: Option<usize>) -> Value {
    let mut ev = ev.clone();
    let Some(max) = max else {
        return ev;
    };
    if let Some(Value::Array(a)) = ev.get("attendees")
        && a.len() > max
    {
        let own: Vec<Value> = a
            .iter()
            .filter(|e| is_calendar(e, calendar))
            .cloned()
            .collect();
        ev["attendees"] = Value::Array(own);
        ev["attendeesOmitted"] = json!(true);
    }
    ev
}

/// The attendees after a PATCH's `attendees` (`new`) by `calendar`: `Err` when it may not
/// make the change (it does not organize the event and changes another's entry).
fn patched_attendees(
    current: &[Value],
    new: &[Value],
    omitted: bool,
    organizer: bool,
    calendar: &str,
) -> Result<Vec<Value>, ()> {
    let same_email = |a: &Value, b: &Value| match (
        a.get("email").and_then(Value::as_str),
        b.get("email").and_then(Value::as_str),
    ) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => false,
    };
    if !omitted {
        if !organizer {
            let others = |l: &[Value]| -> Vec<Value> {
                l.iter()
                    .filter(|e| !is_calendar(e, calendar))
                    .cloned()
                    .collect()
            };
            if others(current) != others(new) {
                return Err(());
            }
        }
        return Ok(new.to_vec());
    }
    let mut out = current.to_vec();
    for entry in new {
        if !organizer && !is_calendar(entry, calendar) {
            return Err(());
        }
        match out.iter_mut().find(|e| same_email(e, entry)) {
            Some(old) => {
                if let (Some(o), Some(n)) = (old.as_object_mut(), entry.as_object()) {
                    for (k, v) in n {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
            None if organizer => out.push(entry.clone()),
            None => return Err(()),
        }
    }
    Ok(out)
}

fn valid_client_id(id: &str) -> bool {
    (5..=1024).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

impl GoogleCalendarSimulator {
    /// A server whose token endpoint accepts this OAuth client, with no calendars.
    pub fn new(client_id: &str, client_secret: &str) -> GoogleCalendarSimulator {
        GoogleCalendarSimulator {
            state: Arc::new(Mutex::new(State {
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                expires_in: 3599,
                max_page: 2500,
                ..State::default()
            })),
        }
    }

    /// Add (or empty) a calendar with this id and IANA `timeZone`.
    pub fn add_calendar(&self, id: &str, time_zone: &str) {
        self.state.lock().calendars.insert(
            id.into(),
            Calendar {
                time_zone: time_zone.into(),
                events: BTreeMap::new(),
            },
        );
    }

    /// Store an event in a calendar (it must have an `id`, `start` and `end`); `kind`,
    /// `etag` and `status` are added when missing. Panics for an unknown calendar.
    pub fn add_event(&self, calendar: &str, mut event: Value) {
        let mut s = self.state.lock();
        s.etag += 1;
        let etag = format!("\"{}\"", 3_181_161_784_712_000u64 + s.etag);
        let obj = event.as_object_mut().expect("an event object");
        obj.entry("kind").or_insert(json!("calendar#event"));
        obj.insert("etag".into(), json!(etag));
        obj.entry("status").or_insert(json!("confirmed"));
        let id = obj["id"].as_str().expect("an event id").to_string();
        s.calendars
            .get_mut(calendar)
            .expect("a calendar added with add_calendar")
            .events
            .insert(id, event);
    }

    /// An event as stored.
    pub fn event(&self, calendar: &str, id: &str) -> Option<Value> {
        self.state
            .lock()
            .calendars
            .get(calendar)?
            .events
            .get(id)
            .cloned()
    }

    /// All events of a calendar (cancelled ones too), by id.
    pub fn events(&self, calendar: &str) -> Vec<Value> {
        self.state
            .lock()
            .calendars
            .get(calendar)
            .map(|c| c.events.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Accept `grant_type=refresh_token` with this refresh token.
    pub fn set_refresh_token(&self, token: &str) {
        self.state.lock().refresh_token = Some(token.into());
    }

    /// Accept JWT-bearer assertions issued by this service account e-mail.
    pub fn set_service_account(&self, client_email: &str) {
        self.state.lock().service_account = Some(client_email.into());
    }

    /// `expires_in` of the tokens issued from now on (default 3599).
    pub fn set_expires_in(&self, secs: u64) {
        self.state.lock().expires_in = secs;
    }

    /// Every token issued so far now answers 401 (the engine must fetch a new one).
    pub fn expire_tokens(&self) {
        self.state.lock().tokens.clear();
    }

    /// Token requests answered so far (successful or not).
    pub fn token_requests(&self) -> u64 {
        self.state.lock().token_requests
    }

    /// Make the token endpoint answer `status` (with `Retry-After` and `body`) until
    /// cleared with `None`.
    pub fn fail_token_endpoint(&self, failure: Option<(u16, Option<u64>, &str)>) {
        self.state.lock().token_failure = failure.map(|(c, r, b)| (c, r, b.to_string()));
    }

    /// Answer the next API request (after its token is checked) with `status`, a
    /// `Retry-After` of `retry_after` seconds if given, and `body`. Several calls queue.
    pub fn fail_next(&self, status: u16, retry_after: Option<u64>, body: &str) {
        self.state
            .lock()
            .fail_next
            .push_back((status, retry_after, body.to_string()));
    }

    /// The largest page of an events list (below `maxResults`).
    pub fn set_max_page(&self, n: usize) {
        self.state.lock().max_page = n.max(1);
    }

    /// Answer events with more than `n` attendees with only the room's own entry and
    /// `attendeesOmitted: true` (`None`: all attendees).
    pub fn set_max_attendees(&self, n: Option<usize>) {
        self.state.lock().max_attendees = n;
    }

    /// Refuse inserts with `attendees` as Google does for a service account without
    /// domain-wide delegation (`403 forbiddenForServiceAccounts`).
    pub fn refuse_attendee_invites(&self, refuse: bool) {
        self.state.lock().refuse_invites = refuse;
    }

    /// Hold every API answer this long (a silent server: the driver's timeout fires).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state.lock().delay = delay;
    }

    /// The API requests served: (method, path with query), token requests left out.
    pub fn requests(&self) -> Vec<(String, String)> {
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
        let query = req.uri().query().unwrap_or("").to_string();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let auth = header("authorization");
        let if_match = header("if-match");
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => return error(413, "uploadTooLarge", "Request Entity Too Large"),
        };
        if path == "/token" {
            return if method == "POST" {
                self.token(&body)
            } else {
                error(405, "methodNotAllowed", "Method Not Allowed")
            };
        }
        let delay = {
            let mut s = self.state.lock();
            s.requests.push((
                method.clone(),
                if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{query}")
                },
            ));
            // Bounded: the demo building runs this simulator for as long as Lintel runs.
            if s.requests.len() > MAX_REQUESTS_KEPT {
                s.requests.remove(0);
            }
            s.delay
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut s = self.state.lock();
        let token = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !s.tokens.iter().any(|t| t == token) {
            return unauthorized();
        }
        if let Some((code, retry_after, body)) = s.fail_next.pop_front() {
            let mut r = answer(code, body);
            if let Some(secs) = retry_after {
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(secs),
                );
            }
            return r;
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return error(404, "notFound", "Not Found");
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let calendar = percent_decode(parts[0], false);
        if !s.calendars.contains_key(&calendar) {
            return error(404, "notFound", "Not Found");
        }
        match (method.as_str(), &parts[1..]) {
            ("GET", ["events"]) => s.list(&calendar, &query),
            ("POST", ["events"]) => s.insert(&calendar, &body),
            (m, ["events", id]) => {
                let id = percent_decode(id, false);
                s.one(m, &calendar, &id, if_match.as_deref(), &body)
            }
            _ => error(404, "notFound", "Not Found"),
        }
    }

    fn token(&self, body: &str) -> Answer {
        let mut s = self.state.lock();
        s.token_requests += 1;
        if let Some((code, retry_after, body)) = s.token_failure.clone() {
            let mut r = answer(code, body);
            if let Some(secs) = retry_after {
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(secs),
                );
            }
            return r;
        }
        let f = form(body);
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let refused = |error: &str, description: &str| {
            json_answer(
                400,
                &json!({"error": error, "error_description": description}),
            )
        };
        let client_ok = get("client_id") == s.client_id && get("client_secret") == s.client_secret;
        match get("grant_type") {
            "client_credentials" if !client_ok => {
                return refused("invalid_client", "The OAuth client was not found.");
            }
            "client_credentials" => {}
            "refresh_token" if !client_ok => {
                return refused("invalid_client", "Unauthorized");
            }
            "refresh_token" => {
                if s.refresh_token.as_deref() != Some(get("refresh_token")) {
                    return refused("invalid_grant", "Bad Request");
                }
            }
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                let claims = jwt_claims(get("assertion")).unwrap_or(Value::Null);
                let iss = claims.get("iss").and_then(Value::as_str);
                if s.service_account.is_none() || iss != s.service_account.as_deref() {
                    return refused("invalid_grant", "Invalid JWT Signature.");
                }
                if claims.get("scope").and_then(Value::as_str).is_none() {
                    return refused(
                        "invalid_scope",
                        "Invalid OAuth scope or ID token audience provided.",
                    );
                }
            }
            "" => return refused("invalid_request", "Missing required parameter: grant_type"),
            _ => return refused("unsupported_grant_type", "Invalid grant_type: "),
        }
        s.issued += 1;
        let token = format!("tok-{}", s.issued);
        // The latest tokens only (an older one is refused as expired would be).
        if s.tokens.len() >= MAX_TOKENS_VALID {
            s.tokens.pop_front();
        }
        s.tokens.push_back(token.clone());
        json_answer(
            200,
            &json!({"access_token": token, "expires_in": s.expires_in,
                    "scope": "https://www.googleapis.com/auth/calendar", "token_type": "Bearer"}),
        )
    }
}

impl State {
    fn list(&mut self, calendar: &str, query: &str) -> Answer {
        let q = form(query);
        let get = |k: &str| q.get(k).map(String::as_str);
        let single = get("singleEvents") == Some("true");
        if get("orderBy") == Some("startTime") && !single {
            return error(
                400,
                "badRequest",
                "The requested ordering is not available for the particular query.",
            );
        }
        let bound = |k: &str| match get(k) {
            None => Some(None),
            Some(v) => parse_rfc3339(v).map(Some),
        };
        let (Some(min), Some(max)) = (bound("timeMin"), bound("timeMax")) else {
            return error(400, "badRequest", "Bad Request");
        };
        let max_results = match get("maxResults").map(str::parse::<usize>) {
            None => 250,
            Some(Ok(n)) if n >= 1 => n.min(2500),
            Some(_) => return error(400, "invalid", "Invalid value for: maxResults"),
        };
        let per_page = max_results.min(self.max_page);
        let offset = match get("pageToken") {
            None => 0,
            Some(t) => match t.strip_prefix("pg:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => n,
                None => return error(400, "invalid", "Invalid page token value."),
            },
        };
        let show_deleted = get("showDeleted") == Some("true");
        let cal = &self.calendars[calendar];
        let slack = 14 * 3600;
        let mut items: Vec<(i64, &Value)> = cal
            .events
            .values()
            .filter(|e| {
                show_deleted || e.get("status").and_then(Value::as_str) != Some("cancelled")
            })
            .filter_map(|e| {
                let (s, end, all_day) = span(e)?;
                let (s, end) = if all_day {
                    (s - slack, end + slack)
                } else {
                    (s, end)
                };
                let after_min = min.is_none_or(|m| end > m);
                let before_max = max.is_none_or(|m| s < m);
                (after_min && before_max).then_some((s, e))
            })
            .collect();
        items.sort_by_key(|(s, _)| *s);
        let total = items.len();
        let page: Vec<Value> = items
            .into_iter()
            .skip(offset)
            .take(per_page)
            .map(|(_, e)| with_max_attendees(e, calendar, self.max_attendees))
            .collect();
        let mut out = json!({
            "kind": "calendar#events",
            "etag": format!("\"p{}\"", self.etag),
            "summary": calendar,
            "updated": "2026-01-01T00:00:00.000Z",
            "timeZone": cal.time_zone,
            "accessRole": "writer",
            "defaultReminders": [],
            "items": page,
        });
        if offset + per_page < total {
            out["nextPageToken"] = json!(format!("pg:{}", offset + per_page));
        }
        json_answer(200, &out)
    }

    fn insert(&mut self, calendar: &str, body: &str) -> Answer {
        let Ok(Value::Object(mut ev)) = serde_json::from_str::<Value>(body) else {
            return error(400, "parseError", "Parse Error");
        };
        let id = match ev.get("id") {
            None => {
                self.etag += 1;
                format!("sim{:016x}", self.etag)
            }
            Some(Value::String(id)) if valid_client_id(id) => id.clone(),
            Some(_) => return error(400, "invalid", "Invalid resource id value."),
        };
        let cal = &self.calendars[calendar];
        if cal.events.contains_key(&id) {
            return error(409, "duplicate", "The requested identifier already exists.");
        }
        if cal.events.len() >= MAX_EVENTS {
            return error(403, "quotaExceeded", "Calendar usage limits exceeded.");
        }
        if self.refuse_invites
            && ev
                .get("attendees")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        {
            return error(
                403,
                "forbiddenForServiceAccounts",
                "Service accounts cannot invite attendees without Domain-Wide Delegation of Authority.",
            );
        }
        let value = Value::Object(ev.clone());
        let Some((s, e, _)) = span(&value) else {
            return error(400, "required", "Missing end time.");
        };
        if e < s {
            return error(400, "timeRangeEmpty", "The specified time range is empty.");
        }
        self.etag += 1;
        ev.insert("id".into(), json!(id));
        ev.insert("kind".into(), json!("calendar#event"));
        ev.insert(
            "etag".into(),
            json!(format!("\"{}\"", 3_181_161_784_712_000u64 + self.etag)),
        );
        ev.entry("status").or_insert(json!("confirmed"));
        ev.insert(
            "organizer".into(),
            json!({"email": calendar, "displayName": calendar, "self": true}),
        );
        ev.insert(
            "creator".into(),
            json!({"email": "lintel@project.iam.gserviceaccount.com"}),
        );
        let ev = Value::Object(ev);
        self.calendars
            .get_mut(calendar)
            .expect("checked")
            .events
            .insert(id, ev.clone());
        json_answer(200, &ev)
    }

    fn one(
        &mut self,
        method: &str,
        calendar: &str,
        id: &str,
        if_match: Option<&str>,
        body: &str,
    ) -> Answer {
        self.etag += 1;
        let next_etag = format!("\"{}\"", 3_181_161_784_712_000u64 + self.etag);
        let cal = self.calendars.get_mut(calendar).expect("checked");
        let Some(ev) = cal.events.get_mut(id) else {
            return error(404, "notFound", "Not Found");
        };
        let stale = if_match.is_some_and(|m| Some(m) != ev.get("etag").and_then(Value::as_str));
        match method {
            "GET" => json_answer(200, &with_max_attendees(ev, calendar, self.max_attendees)),
            "DELETE" | "PATCH" if stale => error(412, "conditionNotMet", "Precondition Failed"),
            "DELETE" => {
                if ev.get("status").and_then(Value::as_str) == Some("cancelled") {
                    return error(410, "deleted", "Resource has been deleted");
                }
                ev["status"] = json!("cancelled");
                ev["etag"] = json!(next_etag);
                answer(204, String::new())
            }
            "PATCH" => {
                let Ok(Value::Object(patch)) = serde_json::from_str::<Value>(body) else {
                    return error(400, "parseError", "Parse Error");
                };
                let organizer = ev.get("organizer").is_some_and(|o| {
                    o.get("self") == Some(&json!(true)) || is_calendar(o, calendar)
                });
                let omitted = patch.get("attendeesOmitted") == Some(&json!(true));
                let attendees = match patch.get("attendees") {
                    None => None,
                    Some(Value::Array(new)) => {
                        let current = match ev.get("attendees") {
                            Some(Value::Array(a)) => a.clone(),
                            _ => Vec::new(),
                        };
                        match patched_attendees(&current, new, omitted, organizer, calendar) {
                            Ok(a) => Some(a),
                            Err(()) => {
                                return error(
                                    403,
                                    "forbidden",
                                    "Only the organizer of the event can change other attendees.",
                                );
                            }
                        }
                    }
                    Some(_) => return error(400, "invalid", "Invalid attendees value."),
                };
                for (k, v) in patch {
                    if !matches!(
                        k.as_str(),
                        "id" | "etag"
                            | "kind"
                            | "organizer"
                            | "creator"
                            | "attendees"
                            | "attendeesOmitted"
                    ) {
                        ev[k.as_str()] = v;
                    }
                }
                if let Some(a) = attendees {
                    ev["attendees"] = Value::Array(a);
                }
                ev["etag"] = json!(next_etag);
                json_answer(200, ev)
            }
            _ => error(405, "methodNotAllowed", "Method Not Allowed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in [0, 1_767_225_600, 1_767_225_600 + 86_399, 951_782_400] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(
            parse_rfc3339("2026-01-01T09:00:00.000+01:00"),
            Some(1_767_225_600 + 8 * 3600)
        );
        assert_eq!(parse_rfc3339("2026-01-01T09:00:00"), None);
        assert_eq!(parse_date("2026-01-02"), Some(1_767_225_600 + 86_400));
        assert_eq!(percent_decode("a%40b+c%2", true), "a@b c%2");
        assert_eq!(
            jwt_claims("e30.eyJpc3MiOiJzYUB4In0.sig"),
            Some(json!({"iss": "sa@x"}))
        );
    }

    #[test]
    fn patches_by_a_non_organizer_change_only_its_own_entry() {
        let cal = "room@x";
        let current = vec![
            json!({"email": "ann@x", "organizer": true, "responseStatus": "accepted"}),
            json!({"email": cal, "self": true, "responseStatus": "accepted"}),
        ];
        let own = json!({"email": "ROOM@x", "responseStatus": "declined", "comment": "c"});
        // attendeesOmitted: only the given entry is updated, the others kept.
        let got =
            patched_attendees(&current, std::slice::from_ref(&own), true, false, cal).unwrap();
        assert_eq!(got[0], current[0]);
        assert_eq!(got[1]["responseStatus"], json!("declined"));
        assert_eq!(got[1]["self"], json!(true));
        // Without it the list is replaced: dropping Ann is refused for a non-organizer.
        assert!(
            patched_attendees(&current, std::slice::from_ref(&own), false, false, cal).is_err()
        );
        // Another's entry is refused either way; an organizer may.
        let ann = json!({"email": "ann@x", "responseStatus": "declined"});
        assert!(patched_attendees(&current, std::slice::from_ref(&ann), true, false, cal).is_err());
        assert!(patched_attendees(&current, std::slice::from_ref(&ann), true, true, cal).is_ok());
        assert_eq!(
            patched_attendees(&current, std::slice::from_ref(&own), false, true, cal).unwrap(),
            vec![own.clone()]
        );
        // maxAttendees: only the room's entry, attendeesOmitted.
        let ev = json!({"id": "e", "attendees": current});
        let short = with_max_attendees(&ev, cal, Some(1));
        assert_eq!(short["attendees"], json!([current[1]]));
        assert_eq!(short["attendeesOmitted"], json!(true));
        assert_eq!(with_max_attendees(&ev, cal, Some(2)), ev);
    }

    #[tokio::test]
    async fn serves_tokens_and_the_events_list() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sim = GoogleCalendarSimulator::new("cid", "secret");
        sim.add_calendar("room@x", "Europe/London");
        for i in 0..3 {
            sim.add_event(
                "room@x",
                json!({"id": format!("e{i}"), "summary": "S",
                       "start": {"dateTime": rfc3339(1_767_225_600 + i * 3600)},
                       "end": {"dateTime": rfc3339(1_767_225_600 + i * 3600 + 1800)}}),
            );
        }
        sim.set_max_page(2);
        let addr = sim.serve().await.unwrap();
        let ask = |method: &'static str, path: String, headers: String, body: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let bad = ask(
            "POST",
            "/token".into(),
            String::new(),
            "grant_type=client_credentials&client_id=cid&client_secret=no".into(),
        )
        .await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("invalid_client"),
            "{bad}"
        );
        let ok = ask(
            "POST",
            "/token".into(),
            String::new(),
            "grant_type=client_credentials&client_id=cid&client_secret=secret".into(),
        )
        .await;
        assert!(ok.contains("\"access_token\":\"tok-1\""), "{ok}");
        let list = "/calendar/v3/calendars/room%40x/events?timeMin=2026-01-01T00:00:00Z&timeMax=2026-01-02T00:00:00Z&singleEvents=true&orderBy=startTime";
        let no_auth = ask("GET", list.into(), String::new(), String::new()).await;
        assert!(no_auth.starts_with("HTTP/1.1 401") && no_auth.contains("authError"));
        let auth = "Authorization: Bearer tok-1\r\n".to_string();
        let page1 = ask("GET", list.into(), auth.clone(), String::new()).await;
        assert!(
            page1.contains("\"nextPageToken\":\"pg:2\"") && page1.contains("\"e1\""),
            "{page1}"
        );
        let page2 = ask(
            "GET",
            format!("{list}&pageToken=pg%3A2"),
            auth.clone(),
            String::new(),
        )
        .await;
        assert!(
            page2.contains("\"e2\"") && !page2.contains("nextPageToken"),
            "{page2}"
        );
        let missing = ask(
            "GET",
            "/calendar/v3/calendars/other/events".into(),
            auth.clone(),
            String::new(),
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404") && missing.contains("notFound"));
        sim.expire_tokens();
        let expired = ask("GET", list.into(), auth, String::new()).await;
        assert!(expired.starts_with("HTTP/1.1 401"));
        assert_eq!(sim.token_requests(), 2);
    }
}
