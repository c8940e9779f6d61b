//! Google Calendar room calendars (Google Calendar API v3 over the engine's HTTP
//! transport).
//!
//! The module's `uri` is `https://www.googleapis.com`; `calendar_id` names the room's
//! calendar (a resource calendar `c_…@resource.calendar.google.com`, or `primary`).
//! Bookings are read with "Events: list" (`singleEvents=true`, so every occurrence of a
//! recurring event has its own id; pages followed up to [`MAX_PAGES`]), created with
//! "Events: insert" and cancelled with "Events: delete" (the room organizes the event) or
//! by declining it for the room ("Events: patch" of the room's attendee entry). The
//! access token is the engine's: the module's `oauth2` setting. See
//! `docs/drivers/google-calendar.md`.

pub mod google;

use chrono_tz::Tz;
use google::{Event, clean, encode, rfc3339};
pub use lintel_calendar_kit::{
    Booking, BookingId, Email, MAX_BOOKINGS_STATUS_BYTES, MAX_IN_FLIGHT, MAX_LISTED,
    MAX_RANGE_SECS, MAX_RETRY_AFTER_SECS, MAX_UNIX, Period, Reason, Title, UnixTime, retry_after,
};
use lintel_calendar_kit::{ErrorReport, RetryWait, check_range, now_ms, now_s};
use lintel_driver_sdk::prelude::*;
use std::collections::BTreeMap;

/// Polling timer.
const POLL_TIMER: u32 = 1;
/// One-shot timer: sync again after a back-off (or the first sync).
const RETRY_TIMER: u32 = 2;
/// Delay of the first read after loading, in milliseconds.
pub const FIRST_SYNC_MS: u64 = 10;
/// The first wait after a rate limit or server error without `Retry-After`; it doubles
/// with each further failure, up to [`MAX_BACKOFF_SECS`].
pub const FIRST_BACKOFF_SECS: u64 = 10;
/// The longest exponential wait.
pub const MAX_BACKOFF_SECS: u64 = 640;
/// Bodies above this are not parsed (the engine refuses answers over 4 MiB anyway).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// `maxResults` of each "Events: list" page.
pub const PAGE_SIZE: usize = 250;
/// Pages followed per read; events beyond are not read (a warning says so).
pub const MAX_PAGES: u32 = 10;
/// Events a read holds at most ([`PAGE_SIZE`] × [`MAX_PAGES`]).
pub const MAX_EVENTS: usize = PAGE_SIZE * MAX_PAGES as usize;
/// Where the calendars are, under the module's uri.
pub const API_PREFIX: &str = "/calendar/v3/calendars/";
/// A function's chain of requests (a read's pages, the overlap check before an insert,
/// the read before a cancel) stops once this many milliseconds have passed since the call,
/// so that it answers before the engine's exec timeout (5 s by default) and writes
/// nothing after it.
pub const FUNCTION_DEADLINE_MS: u64 = 4_000;
/// The answer to a call whose request was made before the settings changed.
pub const SETTINGS_CHANGED: &str =
    "the settings changed while the request was in flight; try again";

/// The driver's settings. Credentials are not here: give the module the engine's `oauth2`
/// setting (a service account, or a refresh token), which adds the access token.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The room's calendar id (required): a resource calendar's id such as
    /// `c_1888abc…@resource.calendar.google.com` (Admin console, Buildings and resources),
    /// or `primary` (the calendar of the account the token is for).
    pub calendar_id: String,
    /// How often to read the bookings, in milliseconds (5000..=86400000).
    pub poll_every_ms: u64,
    /// How far ahead the `bookings` status looks, in hours (1..=744); it starts one hour
    /// in the past.
    pub lookahead_hours: u32,
    /// Let `create_booking` add a booking that overlaps existing ones.
    pub allow_overlap: bool,
    /// Timeout of each HTTP request, in milliseconds (500..=60000). Keep it under the
    /// engine's exec timeout (5 s by default) so functions answer with the real reason.
    pub request_timeout_ms: u32,
    /// IANA time zone for all-day dates when the calendar's answer gives no (known)
    /// `timeZone`, e.g. `Europe/London`.
    pub time_zone: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            calendar_id: String::new(),
            poll_every_ms: 60_000,
            lookahead_hours: 24,
            allow_overlap: false,
            request_timeout_ms: 3_000,
            time_zone: "UTC".into(),
        }
    }
}

impl From<&Event> for Booking {
    fn from(e: &Event) -> Self {
        Booking {
            id: e.id.clone(),
            title: e.title.clone(),
            start: e.start,
            end: e.end,
            organizer: e.organizer.clone(),
            attendees: e.attendees.clone(),
            all_day: e.all_day,
            private: e.private,
        }
    }
}

/// What a query's events are for.
enum Want {
    /// The `bookings` status (a poll), then answer these `refresh` calls.
    Sync(Vec<CallId>),
    List(CallId),
    FreeBusy(CallId),
    /// The overlap check before an insert.
    Create(CallId, Box<Booking>),
}

enum Pending {
    Query {
        want: Want,
        start: i64,
        end: i64,
        /// Pages read so far.
        pages: u32,
        /// Their events.
        events: Vec<Event>,
        /// A function's deadline (unix ms; `None` for a sync).
        deadline: Option<u64>,
    },
    Insert {
        call: CallId,
        booking: Booking,
    },
    /// "Events: get" before a cancel: who organizes it, the room's attendee entry.
    Fetch {
        call: CallId,
        id: String,
        reason: Option<String>,
        /// The call's deadline (unix ms).
        deadline: u64,
    },
    Delete {
        call: CallId,
        id: String,
        reason: Option<String>,
    },
    Decline {
        call: CallId,
        id: String,
        reason: Option<String>,
    },
}

/// Which request an error answer is to: its text, and whether it is the calendar's
/// problem (`last_error`) or only the function's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// The events list (a sync or a function's read).
    Read,
    /// The insert of `create_booking`.
    Insert,
    /// A request of `cancel_booking` ("the event's read", "the delete", "the decline").
    Cancel(&'static str),
}

/// One module's state.
pub struct GoogleCalendar {
    calendar_id: String,
    poll_ms: u64,
    lookahead_s: i64,
    allow_overlap: bool,
    timeout_ms: u32,
    tz: Tz,
    /// Requests in flight, with the settings generation they were made in.
    pending: BTreeMap<u64, (u64, Pending)>,
    /// Counts settings loads: answers to requests of an earlier generation are dropped.
    generation: u64,
    /// A sync (of this generation) is in flight.
    syncing: bool,
    /// No requests before this unix ms (a rate limit or server error), and why.
    backoff: RetryWait,
    /// Rate limits and server errors in a row (the exponential back-off's exponent).
    failures: u32,
    /// The latest `last_error` published.
    last_error: ErrorReport,
    id_counter: u64,
}

impl Default for GoogleCalendar {
    fn default() -> Self {
        GoogleCalendar {
            calendar_id: String::new(),
            poll_ms: 60_000,
            lookahead_s: 24 * 3600,
            allow_overlap: false,
            timeout_ms: 3_000,
            tz: chrono_tz::UTC,
            pending: BTreeMap::new(),
            generation: 0,
            syncing: false,
            backoff: RetryWait::default(),
            failures: 0,
            last_error: ErrorReport::default(),
            id_counter: 0,
        }
    }
}

/// The exponential wait after `failures` rate limits or server errors in a row (1, 2, …).
pub fn backoff_secs(failures: u32) -> u64 {
    let n = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF_SECS << n).min(MAX_BACKOFF_SECS)
}

/// The busy periods of `events` within `[start, end)`, merged.
pub fn merge_busy(events: &[Event], start: i64, end: i64) -> Vec<Period> {
    lintel_calendar_kit::merge_busy(
        events
            .iter()
            .filter(|e| e.overlaps(start, end))
            .map(|e| (e.start, e.end)),
        start,
        end,
    )
}

/// Whether a function's `deadline` (unix ms) has passed.
fn past(deadline: u64) -> bool {
    now_ms() >= deadline
}

/// The deadline of a function called now.
fn deadline() -> u64 {
    now_ms() + FUNCTION_DEADLINE_MS
}

/// The id of a new event: Google accepts client ids of 5..=1024 characters `a-v0-9`
/// (base32hex), so `lintel` + 16 hex digits of an FNV-1a hash of the time, the counter,
/// the calendar, the times and the title, + the counter. A clash is refused by Google
/// (409) instead of overwriting.
pub fn event_id(
    now_ms: u64,
    counter: u64,
    calendar: &str,
    start: i64,
    end: i64,
    title: &str,
) -> String {
    let h = lintel_calendar_kit::new_id_hash(now_ms, counter, calendar, start, end, title);
    format!("lintel{h:016x}{counter}")
}

impl GoogleCalendar {
    fn events_path(&self) -> String {
        format!("{API_PREFIX}{}/events", encode(&self.calendar_id, b""))
    }

    fn event_path(&self, id: &str) -> String {
        format!("{}/{}", self.events_path(), encode(id, b""))
    }

    fn set_error(&mut self, error: Option<String>) {
        self.last_error.set(error);
    }

    fn full(&self) -> Option<String> {
        (self.pending.len() >= MAX_IN_FLIGHT).then(|| {
            format!("{MAX_IN_FLIGHT} requests are already waiting for the server; try later")
        })
    }

    /// Send a request; an immediate refusal by the engine (e.g. `oauth2: …`) is a transport
    /// problem.
    fn request(&mut self, req: HttpRequest, pending: Pending) -> Result<(), String> {
        if let Some(e) = self.full() {
            return Err(e);
        }
        match host::http_request(req.timeout_ms(self.timeout_ms)) {
            Ok(id) => {
                self.pending.insert(id, (self.generation, pending));
                Ok(())
            }
            Err(e) => Err(self.transport_problem(&e)),
        }
    }

    /// The "Events: list" request of `[start, end)`, from `page_token`.
    fn list_request(&self, start: i64, end: i64, page_token: Option<&str>) -> HttpRequest {
        let mut path = format!(
            "{}?timeMin={}&timeMax={}&singleEvents=true&orderBy=startTime&maxResults={PAGE_SIZE}",
            self.events_path(),
            encode(&rfc3339(start), b":"),
            encode(&rfc3339(end), b":"),
        );
        if let Some(t) = page_token {
            path.push_str("&pageToken=");
            path.push_str(&encode(t, b""));
        }
        HttpRequest::get(&path).header("Accept", "application/json")
    }

    /// Ask for the events overlapping `[start, end)`.
    fn query(
        &mut self,
        want: Want,
        start: i64,
        end: i64,
        deadline: Option<u64>,
    ) -> Result<(), (Want, String)> {
        if let Some(why) = self.backoff.active() {
            return Err((want, why));
        }
        if let Some(e) = self.full() {
            return Err((want, e));
        }
        let req = self.list_request(start, end, None);
        match host::http_request(req.timeout_ms(self.timeout_ms)) {
            Ok(id) => {
                self.pending.insert(
                    id,
                    (
                        self.generation,
                        Pending::Query {
                            want,
                            start,
                            end,
                            pages: 0,
                            events: Vec::new(),
                            deadline,
                        },
                    ),
                );
                Ok(())
            }
            Err(e) => {
                let e = self.transport_problem(&e);
                Err((want, e))
            }
        }
    }

    fn sync(&mut self, callers: Vec<CallId>) {
        if self.syncing {
            // Join the sync in flight (of these settings).
            let generation = self.generation;
            if let Some((
                _,
                Pending::Query {
                    want: Want::Sync(c),
                    ..
                },
            )) = self.pending.values_mut().find(|(g, p)| {
                *g == generation
                    && matches!(
                        p,
                        Pending::Query {
                            want: Want::Sync(_),
                            ..
                        }
                    )
            }) {
                c.extend(callers);
                return;
            }
        }
        let now = now_s();
        match self.query(
            Want::Sync(callers),
            now - 3_600,
            now + self.lookahead_s,
            None,
        ) {
            Ok(()) => self.syncing = true,
            Err((want, e)) => {
                host::debug(&format!("sync skipped: {e}"));
                self.fail_want(want, e);
            }
        }
    }

    /// The error text for a failed answer. Sets `last_error` for the calendar's problems
    /// (any failed read; authentication, access, rate limits, server errors), not for a
    /// function's refusal (a 400 to an insert, a usage limit on creating events, an
    /// event only its organizer may change); starts a back-off for rate limits and server
    /// errors.
    fn http_problem(&mut self, resp: &HttpResponse, ctx: Ctx) -> String {
        let code = resp.status;
        let (reason, message) = google::api_error(&resp.body).unwrap_or_default();
        let mut detail = format!("HTTP {code}");
        if !reason.is_empty() {
            detail.push(' ');
            detail.push_str(&reason);
        }
        if !message.is_empty() {
            detail.push_str(": ");
            detail.push_str(&message);
        }
        let what = match ctx {
            Ctx::Read => "the events list",
            Ctx::Insert => "the insert",
            Ctx::Cancel(what) => what,
        };
        let read = ctx == Ctx::Read;
        let rate_limited =
            code == 429 || (code == 403 && google::RATE_LIMIT_REASONS.contains(&reason.as_str()));
        let (msg, calendar_level) = if rate_limited || (500..=599).contains(&code) {
            let what = if rate_limited {
                "rate limited"
            } else {
                "server error"
            };
            self.failures = self.failures.saturating_add(1);
            let wait = resp
                .header("Retry-After")
                .and_then(|v| retry_after(v, now_s()))
                .unwrap_or_else(|| backoff_secs(self.failures));
            let why = format!("{what} ({detail})");
            let ms = self.backoff.start(wait, why.clone());
            let _ = host::schedule_in(RETRY_TIMER, ms);
            (format!("{why}; retrying in {} s", ms / 1000), true)
        } else {
            match (code, reason.as_str()) {
                // The account's limits on creating events and sending invitations: no
                // back-off (reads are not limited by it); Google lifts it after hours.
                (403, "quotaExceeded") => (
                    format!(
                        "Google Calendar usage limit reached ({detail}): the account of the module's oauth2 settings has created too many events or invitations; Google lifts the limit after some hours, try again later"
                    ),
                    read,
                ),
                (403, "forbiddenForServiceAccounts") => (
                    format!(
                        "Google refused to invite the organizer ({detail}): a service account cannot invite attendees without domain-wide delegation; set oauth2.subject (a Workspace user the service account acts for, with domain-wide delegation) or create the booking without an organizer"
                    ),
                    read,
                ),
                (403, "forbiddenForNonOrganizer") => (
                    format!(
                        "the room may not change this event ({detail}): only its organizer may"
                    ),
                    read,
                ),
                (401, _) => (
                    format!("authentication failed ({detail}): check the module's oauth2 settings"),
                    true,
                ),
                (403, _) => (
                    format!(
                        "access denied ({detail}): the calendar `{}` is not shared with the account of the module's oauth2 settings (its service account, or the subject it acts for), or the token lacks the scope https://www.googleapis.com/auth/calendar; check the module's oauth2 settings",
                        self.calendar_id
                    ),
                    true,
                ),
                (404, _) => (
                    format!(
                        "calendar not found ({detail}): check calendar_id `{}`",
                        self.calendar_id
                    ),
                    true,
                ),
                // A refused create or cancel is the function's failure.
                (400 | 409 | 410 | 412 | 422, _) if !read => {
                    (format!("the server refused {what} ({detail})"), false)
                }
                _ => (format!("unexpected answer to {what}: {detail}"), true),
            }
        };
        if calendar_level {
            self.set_error(Some(msg.clone()));
        }
        msg
    }

    fn transport_problem(&mut self, e: &str) -> String {
        let msg = match e.strip_prefix("oauth2:") {
            Some(rest) => format!("cannot get an access token: {}", rest.trim()),
            None => format!("no answer from the calendar server: {e}"),
        };
        self.set_error(Some(msg.clone()));
        msg
    }

    /// A 2xx answer: the back-off's exponent starts again.
    fn answered(&mut self) {
        self.failures = 0;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_query(
        &mut self,
        want: Want,
        start: i64,
        end: i64,
        pages: u32,
        mut events: Vec<Event>,
        deadline: Option<u64>,
        result: Result<HttpResponse, String>,
    ) {
        let page = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(resp) if !resp.is_success() => Err(self.http_problem(&resp, Ctx::Read)),
            Ok(resp) if resp.body.len() > MAX_BODY_BYTES => Err(format!(
                "the answer is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                resp.body.len()
            )),
            Ok(resp) => {
                self.answered();
                google::parse_page(&resp.body, &self.tz)
                    .map_err(|e| format!("malformed answer: {e}"))
            }
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                self.set_error(Some(e.clone()));
                if matches!(want, Want::Sync(_)) {
                    self.syncing = false;
                }
                self.fail_want(want, e);
                return;
            }
        };
        for w in page.warnings.iter().take(3) {
            host::warn(w);
        }
        if !page.malformed.is_empty() {
            host::warn(&format!(
                "skipped {} malformed event(s): {}",
                page.malformed.len(),
                page.malformed
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        let pages = pages + 1;
        let room = MAX_EVENTS.saturating_sub(events.len());
        let more = page.events.len() > room;
        events.extend(page.events.into_iter().take(room));
        if let Some(token) = page.next_page_token {
            if pages < MAX_PAGES && events.len() < MAX_EVENTS {
                if deadline.is_some_and(past) {
                    let e = format!(
                        "the calendar answers slowly: {pages} page(s) of events read in over {} s, more to read; stopped{}: try again (or ask for a shorter range)",
                        FUNCTION_DEADLINE_MS / 1000,
                        if matches!(want, Want::Create(..)) {
                            ", nothing created"
                        } else {
                            ""
                        }
                    );
                    host::info(&e);
                    self.fail_want(want, e);
                    return;
                }
                let req = self.list_request(start, end, Some(&token));
                let sync = matches!(want, Want::Sync(_));
                let pending = Pending::Query {
                    want,
                    start,
                    end,
                    pages,
                    events,
                    deadline,
                };
                // The in-flight count is unchanged: this query's slot is reused.
                match host::http_request(req.timeout_ms(self.timeout_ms)) {
                    Ok(id) => {
                        self.pending.insert(id, (self.generation, pending));
                    }
                    Err(e) => {
                        let e = self.transport_problem(&e);
                        if sync {
                            self.syncing = false;
                        }
                        if let Pending::Query { want, .. } = pending {
                            self.fail_want(want, e);
                        }
                    }
                }
                return;
            }
            host::warn(&format!(
                "more events than the {MAX_PAGES} pages of {PAGE_SIZE} read (from {} to {}); the first {} are used",
                rfc3339(start),
                rfc3339(end),
                events.len()
            ));
        } else if more {
            host::warn(&format!(
                "more than {MAX_EVENTS} events from {} to {}; the first {MAX_EVENTS} are used",
                rfc3339(start),
                rfc3339(end)
            ));
        }
        self.set_error(None);
        // Zero-length events (`start == end`) block no time (and the room logic refuses
        // them): they are not bookings.
        events.retain(|e| e.end > e.start && e.overlaps(start, end));
        events.sort_by(|a, b| (a.start, a.end, &a.id).cmp(&(b.start, b.end, &b.id)));
        events.dedup_by(|a, b| a.id == b.id);
        let listed =
            || -> Vec<Booking> { events.iter().take(MAX_LISTED).map(Booking::from).collect() };
        match want {
            Want::Sync(callers) => {
                self.syncing = false;
                lintel_calendar_kit::publish_bookings(listed());
                let _ = host::set_status("last_sync", &now_s());
                for c in callers {
                    let _ = host::reply(c, Ok(Value::Null));
                }
            }
            Want::List(c) => {
                let _ = host::reply(c, Ok(json!(listed())));
            }
            Want::FreeBusy(c) => {
                let _ = host::reply(c, Ok(json!(merge_busy(&events, start, end))));
            }
            Want::Create(c, booking) => {
                if deadline.is_some_and(past) {
                    let e = format!(
                        "the calendar answers slowly: the overlap check took over {} s; not created: try again",
                        FUNCTION_DEADLINE_MS / 1000
                    );
                    host::info(&e);
                    let _ = host::reply(c, Err(e));
                } else if let Some(clash) = events.first() {
                    // A private event's title is not told.
                    let what = if clash.private {
                        "a private booking".to_owned()
                    } else {
                        format!("`{}`", clash.title)
                    };
                    let msg = format!(
                        "the room is already booked from {} to {} ({what}, id {}); set allow_overlap to allow overlapping bookings",
                        rfc3339(clash.start),
                        rfc3339(clash.end),
                        clash.id
                    );
                    host::info(&format!("create_booking refused: {msg}"));
                    let _ = host::reply(c, Err(msg));
                } else {
                    self.insert(c, *booking);
                }
            }
        }
    }

    /// The answer to a request made before the settings changed: it is about the earlier
    /// settings (perhaps another calendar), so it changes nothing here. A write that
    /// succeeded is answered as done (it happened); every other caller is told to try
    /// again.
    fn stale(&mut self, pending: Pending, result: Result<HttpResponse, String>) {
        host::debug("an answer to a request made before the settings changed: dropped");
        let written = matches!(&result, Ok(r) if r.is_success());
        match pending {
            Pending::Query { want, .. } => self.fail_want(want, SETTINGS_CHANGED.into()),
            Pending::Insert { call, booking } if written => {
                let _ = host::reply(call, Ok(json!(booking)));
            }
            Pending::Delete { call, .. } | Pending::Decline { call, .. } if written => {
                let _ = host::reply(call, Ok(Value::Null));
            }
            Pending::Insert { call, .. }
            | Pending::Fetch { call, .. }
            | Pending::Delete { call, .. }
            | Pending::Decline { call, .. } => {
                let _ = host::reply(call, Err(SETTINGS_CHANGED.into()));
            }
        }
    }

    /// Answer the calls waiting for a query with its error.
    fn fail_want(&mut self, want: Want, e: String) {
        match want {
            Want::Sync(callers) => {
                for c in callers {
                    let _ = host::reply(c, Err(e.clone()));
                }
            }
            Want::List(c) | Want::FreeBusy(c) | Want::Create(c, _) => {
                let _ = host::reply(c, Err(e));
            }
        }
    }

    /// "Events: insert" of a new booking.
    fn insert(&mut self, call: CallId, booking: Booking) {
        let mut body = json!({
            "id": booking.id,
            "summary": booking.title,
            "start": {"dateTime": rfc3339(booking.start)},
            "end": {"dateTime": rfc3339(booking.end)},
        });
        if let Some(o) = &booking.organizer {
            body["attendees"] = json!([{"email": o}]);
            body["description"] = json!(format!("Booked for {o} by Lintel."));
            body["extendedProperties"] = json!({"private": {google::ORGANIZER_PROPERTY: o}});
        }
        let path = format!("{}?sendUpdates=all", self.events_path());
        let req = HttpRequest::post(&path, Vec::new()).json(&body);
        if let Err(e) = self.request(req, Pending::Insert { call, booking }) {
            let _ = host::reply(call, Err(e));
        }
    }

    fn new_id(&mut self, start: i64, end: i64, title: &str) -> String {
        self.id_counter += 1;
        event_id(
            now_ms(),
            self.id_counter,
            &self.calendar_id,
            start,
            end,
            title,
        )
    }

    fn on_insert(&mut self, call: CallId, booking: Booking, result: Result<HttpResponse, String>) {
        let answer = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(r) if r.is_success() => {
                self.answered();
                // The event as Google stored it; the request's own booking if unreadable.
                let stored = r
                    .json::<Value>()
                    .ok()
                    .and_then(|v| google::parse_event(&v, &self.tz).ok().flatten())
                    .filter(|e| e.id == booking.id)
                    .map(|e| Booking::from(&e));
                let created = stored.unwrap_or(booking);
                host::info(&format!(
                    "created booking {} ({} to {}): {}",
                    created.id,
                    rfc3339(created.start),
                    rfc3339(created.end),
                    created.title
                ));
                self.sync(Vec::new());
                Ok(json!(created))
            }
            Ok(r) if r.status == 409 => Err(format!(
                "an event with id {} already exists (HTTP 409); not created",
                booking.id
            )),
            Ok(r) => Err(self.http_problem(&r, Ctx::Insert)),
        };
        let _ = host::reply(call, answer);
    }

    /// The event read before a cancel: delete it (the room organizes it) or decline it for
    /// the room.
    fn fetched(
        &mut self,
        call: CallId,
        id: String,
        reason: Option<String>,
        deadline: u64,
        r: &HttpResponse,
    ) {
        let event = match r.json::<Value>() {
            Ok(v) if v.get("id").and_then(Value::as_str).is_some() => v,
            _ => {
                // The function's failure, not the calendar's (`last_error` is untouched).
                let e = format!(
                    "malformed answer to the event's read: not an event (booking `{id}` not cancelled)"
                );
                let _ = host::reply(call, Err(e));
                return;
            }
        };
        if event.get("status").and_then(Value::as_str) == Some("cancelled") {
            host::info(&format!("booking {id} is already cancelled"));
            let _ = host::reply(call, Ok(Value::Null));
            return;
        }
        let etag = event.get("etag").and_then(Value::as_str).map(str::to_owned);
        let organized = event.pointer("/organizer/self").and_then(Value::as_bool) == Some(true);
        let own = match event.get("attendees") {
            Some(Value::Array(a)) => a
                .iter()
                .find(|a| a.get("self").and_then(Value::as_bool) == Some(true))
                .cloned(),
            _ => None,
        };
        if !organized
            && own
                .as_ref()
                .and_then(|o| o.get("responseStatus"))
                .and_then(Value::as_str)
                == Some("declined")
        {
            host::info(&format!("booking {id} is already declined for the room"));
            let _ = host::reply(call, Ok(Value::Null));
            return;
        }
        if past(deadline) {
            let e = format!(
                "the calendar answers slowly: reading booking `{id}` took over {} s; not cancelled: try again",
                FUNCTION_DEADLINE_MS / 1000
            );
            host::info(&e);
            let _ = host::reply(call, Err(e));
            return;
        }
        let path = format!("{}?sendUpdates=all", self.event_path(&id));
        let (req, pending) = match own {
            Some(mut entry) if !organized => {
                // Only the room's own entry: with `attendeesOmitted` the others are kept as
                // they are (an `attendees` array would replace theirs, and the read may
                // have left some out).
                entry["responseStatus"] = json!("declined");
                if let Some(r) = &reason {
                    entry["comment"] = json!(r);
                }
                let req = HttpRequest::patch(&path, Vec::new())
                    .json(&json!({ "attendeesOmitted": true, "attendees": [entry] }));
                (req, Pending::Decline { call, id, reason })
            }
            _ => {
                if !organized {
                    host::info(&format!(
                        "booking `{id}`: the room is neither its organizer nor an attendee; deleting it from the room's calendar"
                    ));
                }
                (
                    HttpRequest::delete(&path),
                    Pending::Delete { call, id, reason },
                )
            }
        };
        let req = match &etag {
            Some(t) => req.header("If-Match", t),
            None => req,
        };
        if let Err(e) = self.request(req, pending) {
            let _ = host::reply(call, Err(e));
        }
    }

    /// The answer to a DELETE or PATCH of a cancel.
    fn on_cancel(
        &mut self,
        call: CallId,
        id: String,
        reason: Option<String>,
        declined: bool,
        result: Result<HttpResponse, String>,
    ) {
        let answer = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(r) if r.is_success() => {
                self.answered();
                let how = if declined {
                    "declined booking {id} for the room (the organizer's event stays)"
                } else {
                    "cancelled booking {id}"
                };
                host::info(&format!(
                    "{}{}",
                    how.replace("{id}", &id),
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
                self.sync(Vec::new());
                Ok(Value::Null)
            }
            Ok(r) if r.status == 412 => {
                self.sync(Vec::new());
                Err(format!(
                    "booking `{id}` changed on the server since it was read (HTTP 412); not cancelled: try again"
                ))
            }
            Ok(r) if r.status == 410 => {
                // Deleted since it was read.
                host::info(&format!("booking {id} is already cancelled"));
                Ok(Value::Null)
            }
            Ok(r) if r.status == 404 => Err(format!("no booking with id `{id}` (HTTP 404)")),
            Ok(r) => Err(self.http_problem(
                &r,
                Ctx::Cancel(if declined {
                    "the decline"
                } else {
                    "the delete"
                }),
            )),
        };
        let _ = host::reply(call, answer);
    }
}

impl Driver for GoogleCalendar {
    type Settings = Settings;

    fn on_load(&mut self, s: Settings) -> Result<(), String> {
        let id = s.calendar_id.trim().to_owned();
        if id.is_empty() {
            return Err(
                "calendar_id is required, e.g. `c_1888…@resource.calendar.google.com` or `primary`"
                    .into(),
            );
        }
        if id.len() > 1024 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "calendar_id `{}` must be a calendar id without spaces or control characters (at most 1024 bytes)",
                clean(&id, 80)
            ));
        }
        if !(5_000..=86_400_000).contains(&s.poll_every_ms) {
            return Err(format!(
                "poll_every_ms must be 5000..=86400000, got {}",
                s.poll_every_ms
            ));
        }
        if !(1..=744).contains(&s.lookahead_hours) {
            return Err(format!(
                "lookahead_hours must be 1..=744, got {}",
                s.lookahead_hours
            ));
        }
        if !(500..=60_000).contains(&s.request_timeout_ms) {
            return Err(format!(
                "request_timeout_ms must be 500..=60000, got {}",
                s.request_timeout_ms
            ));
        }
        let tz = google::zone(&s.time_zone).ok_or_else(|| {
            format!(
                "time_zone `{}` is not an IANA time zone (e.g. `Europe/London`, `UTC`)",
                s.time_zone
            )
        })?;
        self.calendar_id = id;
        self.poll_ms = s.poll_every_ms;
        self.lookahead_s = i64::from(s.lookahead_hours) * 3_600;
        self.allow_overlap = s.allow_overlap;
        self.timeout_ms = s.request_timeout_ms;
        self.tz = tz;
        // Answers to requests made with the earlier settings (another calendar, perhaps)
        // are dropped; a sync of these settings starts afresh.
        self.generation += 1;
        self.syncing = false;
        host::schedule_every(POLL_TIMER, self.poll_ms)?;
        // The first read, once loaded; after a running back-off (on_update).
        let wait = self
            .backoff
            .remaining_ms()
            .map_or(FIRST_SYNC_MS, |ms| ms.max(FIRST_SYNC_MS));
        host::schedule_in(RETRY_TIMER, wait)?;
        Ok(())
    }

    fn on_timer(&mut self, id: u32) {
        match id {
            POLL_TIMER => self.sync(Vec::new()),
            RETRY_TIMER => {
                self.backoff.clear();
                self.sync(Vec::new());
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: HostEvent) {
        let HostEvent::HttpResponse { id, result } = event else {
            return;
        };
        let Some((generation, pending)) = self.pending.remove(&id) else {
            host::debug(&format!("an answer to unknown request {id}"));
            return;
        };
        if generation != self.generation {
            self.stale(pending, result);
            return;
        }
        match pending {
            Pending::Query {
                want,
                start,
                end,
                pages,
                events,
                deadline,
            } => self.on_query(want, start, end, pages, events, deadline, result),
            Pending::Insert { call, booking } => self.on_insert(call, booking, result),
            Pending::Fetch {
                call,
                id,
                reason,
                deadline,
            } => match result {
                Err(e) => {
                    let e = self.transport_problem(&e);
                    let _ = host::reply(call, Err(e));
                }
                Ok(r) if r.status == 404 || r.status == 410 => {
                    let _ = host::reply(
                        call,
                        Err(format!("no booking with id `{id}` (HTTP {})", r.status)),
                    );
                }
                Ok(r) if !r.is_success() => {
                    let e = self.http_problem(&r, Ctx::Cancel("the event's read"));
                    let _ = host::reply(call, Err(e));
                }
                Ok(r) => {
                    self.answered();
                    self.fetched(call, id, reason, deadline, &r)
                }
            },
            Pending::Delete { call, id, reason } => self.on_cancel(call, id, reason, false, result),
            Pending::Decline { call, id, reason } => self.on_cancel(call, id, reason, true, result),
        }
    }
}

#[driver(
    name = "Google Calendar Room Calendar",
    module_name = "Calendar",
    description = "A room's Google Calendar (Calendar API v3, Google Workspace): bookings, free/busy, create and cancel",
    transport = "http"
)]
impl GoogleCalendar {
    /// The bookings overlapping `start`..`end` (unix seconds, at most 366 days), sorted by
    /// start; cancelled, free (transparent) and room-declined events are left out.
    #[function]
    fn list_bookings(
        &mut self,
        call: CallId,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Answer<Vec<Booking>>, String> {
        check_range(start.0, end.0)?;
        self.query(Want::List(call), start.0, end.0, Some(deadline()))
            .map_err(|(_, e)| e)?;
        Ok(Answer::Later)
    }

    /// The busy periods within `start`..`end` (unix seconds), merged from the events
    /// (cancelled, free and room-declined events do not count), clipped to the range.
    #[function]
    fn free_busy(
        &mut self,
        call: CallId,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Answer<Vec<Period>>, String> {
        check_range(start.0, end.0)?;
        self.query(Want::FreeBusy(call), start.0, end.0, Some(deadline()))
            .map_err(|(_, e)| e)?;
        Ok(Answer::Later)
    }

    /// Book the room from `start` to `end` (unix seconds) with a title and, optionally,
    /// the organizer's e-mail (invited as an attendee). Refused when it overlaps a booking
    /// (unless the `allow_overlap` setting is on). Answers the created booking.
    #[function]
    fn create_booking(
        &mut self,
        call: CallId,
        start: UnixTime,
        end: UnixTime,
        title: Title,
        organizer: Option<Email>,
    ) -> Result<Answer<Booking>, String> {
        check_range(start.0, end.0)?;
        let title = title.clean()?;
        if title.chars().any(char::is_control) {
            return Err("title must not hold control characters".into());
        }
        let organizer = organizer.map(Email::address).transpose()?;
        let booking = Booking {
            id: self.new_id(start.0, end.0, &title),
            title,
            start: start.0,
            end: end.0,
            attendees: organizer.iter().cloned().collect(),
            organizer,
            all_day: false,
            private: false,
        };
        if self.allow_overlap {
            if let Some(why) = self.backoff.active() {
                return Err(why);
            }
            if let Some(e) = self.full() {
                return Err(e);
            }
            self.insert(call, booking);
        } else {
            self.query(
                Want::Create(call, Box::new(booking)),
                start.0,
                end.0,
                Some(deadline()),
            )
            .map_err(|(_, e)| e)?;
        }
        Ok(Answer::Later)
    }

    /// Cancel a booking by its id (as in the `bookings` status). An event the room's
    /// calendar organizes is deleted (its attendees are told); an event the room is
    /// invited to is declined for the room (the reason is the decline's comment), so the
    /// organizer's event stays but no longer blocks the room. One occurrence of a
    /// recurring event is cancelled alone. A change on the server since the event was
    /// read refuses the cancel (HTTP 412).
    #[function]
    fn cancel_booking(
        &mut self,
        call: CallId,
        id: BookingId,
        reason: Option<Reason>,
    ) -> Result<Answer<()>, String> {
        let id = id.0;
        if id.trim().is_empty() || id.chars().any(char::is_control) {
            return Err("id must be a non-empty event id without control characters".into());
        }
        if let Some(why) = self.backoff.active() {
            return Err(why);
        }
        let reason = reason.map(|r| r.0.chars().take(500).collect::<String>());
        let req = HttpRequest::get(&self.event_path(&id)).header("Accept", "application/json");
        self.request(
            req,
            Pending::Fetch {
                call,
                id,
                reason,
                deadline: deadline(),
            },
        )?;
        Ok(Answer::Later)
    }

    /// Read the bookings now (as a poll does); answers once the `bookings` status is
    /// updated, or with why it could not be.
    #[function]
    fn refresh(&mut self, call: CallId) -> Result<Answer<()>, String> {
        if let Some(why) = self.backoff.active() {
            return Err(why);
        }
        self.sync(vec![call]);
        Ok(Answer::Later)
    }
}

export_driver!(GoogleCalendar);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=9).map(backoff_secs).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 640, 640]);
        assert_eq!(backoff_secs(u32::MAX), MAX_BACKOFF_SECS);
    }

    #[test]
    fn event_ids_are_base32hex() {
        let id = event_id(1, 12, "c@x", 0, 1, "会議");
        assert!(id.len() >= 5 && id.len() <= 1024);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)),
            "{id}"
        );
        assert_ne!(id, event_id(1, 13, "c@x", 0, 1, "会議"));
    }
}
