//! Microsoft Graph room calendars (Exchange Online / Microsoft 365), over the engine's
//! HTTP transport (Microsoft Graph REST API v1.0).
//!
//! The module's `uri` is the Graph service root (`https://graph.microsoft.com`), `mailbox`
//! the room's mailbox. Bookings are read with `calendarView` (the server expands recurring
//! events; `@odata.nextLink` pages are followed up to [`MAX_PAGES`]), created with
//! `POST …/events` (with a `transactionId`) and cancelled with `POST …/events/{id}/cancel`
//! when the room organizes the event, else declined with `POST …/events/{id}/decline`.
//! Authentication is the engine's: the module's `oauth2` setting (client credentials)
//! adds the bearer token to every request. See `docs/drivers/msgraph.md`.

pub mod graph;

use graph::{Event, local_stamp, utc_stamp};
pub use lintel_calendar_kit::{
    Booking, BookingId, DEFAULT_429_WAIT_SECS, Email, MAX_BOOKINGS_STATUS_BYTES, MAX_IN_FLIGHT,
    MAX_LISTED, MAX_RANGE_SECS, MAX_RETRY_AFTER_SECS, Period, Reason, Title, UnixTime, retry_after,
};
use lintel_calendar_kit::{ErrorReport, RetryWait, check_range, now_ms, now_s, segment};
use lintel_driver_sdk::prelude::*;
use std::collections::BTreeMap;

/// Polling timer.
const POLL_TIMER: u32 = 1;
/// One-shot timer: read again after a server's `Retry-After` (or the first read).
const RETRY_TIMER: u32 = 2;
/// Delay of the first read after loading, in milliseconds.
pub const FIRST_SYNC_MS: u64 = 10;
/// Bodies above this are not parsed (the engine refuses answers over 4 MiB anyway).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Events asked for per `calendarView` page (`$top`).
pub const PAGE_SIZE: usize = 100;
/// `calendarView` pages read per query at most (the rest is left out, with a warning).
pub const MAX_PAGES: u32 = 20;
/// Events kept per query at most.
pub const MAX_EVENTS: usize = 2_000;
/// A function's chain of requests (overlap check pages then POST, GET then cancel) is not
/// continued this many milliseconds after the call (the engine's exec timeout is 5 s).
pub const FUNCTION_DEADLINE_MS: u64 = 4_500;
/// The answer to a request made before the settings changed.
pub const SETTINGS_CHANGED: &str = "the settings changed while the server was asked; try again";
/// Properties asked for (`$select`).
pub const SELECT: &str =
    "id,subject,start,end,organizer,attendees,isAllDay,sensitivity,showAs,isCancelled,isOrganizer";

/// The driver's settings. Credentials are not here: give the module the engine's
/// `oauth2` setting (client credentials), which adds the bearer token to every request.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The room's mailbox: its SMTP address (`room-101@contoso.com`) or user id (required).
    pub mailbox: String,
    /// The Graph API version in request paths: `v1.0` or `beta`.
    pub api_version: String,
    /// How often to read the bookings, in milliseconds (5000..=86400000).
    pub poll_every_ms: u64,
    /// How far ahead the `bookings` status looks, in hours (1..=744); it starts one hour
    /// in the past.
    pub lookahead_hours: u32,
    /// Let `create_booking` add a booking that overlaps existing ones.
    pub allow_overlap: bool,
    /// Timeout of each HTTP request, in milliseconds (500..=60000). A function may chain
    /// requests (`create_booking`: up to 20 pages of its overlap check, then the POST;
    /// `cancel_booking`: a GET, then a POST): the engine's exec timeout (5 s by default)
    /// covers them all: keep this well below it. `create_booking` and `cancel_booking`
    /// stop their chain 4.5 s after the call, answering why.
    pub request_timeout_ms: u32,
    /// The room's IANA time zone (`Europe/Berlin`; default `UTC`): Graph gives all-day
    /// events as floating midnight-to-midnight dates, read as local dates in this zone.
    pub time_zone: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mailbox: String::new(),
            api_version: "v1.0".into(),
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

/// A booking to create.
pub struct NewBooking {
    title: String,
    start: i64,
    end: i64,
    organizer: Option<String>,
}

/// What a query's events are for.
enum Want {
    /// The `bookings` status (a poll), then answer these `refresh` calls.
    Sync(Vec<CallId>),
    List(CallId),
    FreeBusy(CallId),
    /// The overlap check before a POST; the function's deadline (unix ms).
    Create(CallId, Box<NewBooking>, u64),
}

enum Pending {
    /// A `calendarView` page (`pages` read so far, this one included).
    Query {
        want: Want,
        start: i64,
        end: i64,
        events: Vec<Event>,
        skipped: Vec<String>,
        pages: u32,
    },
    Create {
        call: CallId,
        booking: NewBooking,
    },
    /// GET of the event before cancelling it (who organizes it); the function's
    /// deadline (unix ms).
    Fetch {
        call: CallId,
        id: String,
        reason: Option<String>,
        deadline: u64,
    },
    Cancel {
        call: CallId,
        id: String,
        reason: Option<String>,
        decline: bool,
    },
}

/// Which request an error answer is to (for its text).
#[derive(Clone, Copy)]
enum Ctx<'a> {
    View,
    Create,
    Event(&'a str),
}

/// One module's state.
pub struct MsGraph {
    mailbox: String,
    /// `/<api_version>/users/<mailbox>`.
    user_path: String,
    poll_ms: u64,
    lookahead_s: i64,
    allow_overlap: bool,
    timeout_ms: u32,
    /// Requests in flight: what each is for, and the settings generation it was made in.
    pending: BTreeMap<u64, (u64, Pending)>,
    /// Bumped by every (re)load: answers to requests of an older generation are dropped.
    generation: u64,
    /// A sync is in flight.
    syncing: bool,
    /// The room's zone (all-day dates).
    tz: chrono_tz::Tz,
    /// No requests before this unix ms (a server's `Retry-After`), and why.
    backoff: RetryWait,
    /// The latest `last_error` published.
    last_error: ErrorReport,
    tx_counter: u64,
}

impl Default for MsGraph {
    fn default() -> Self {
        MsGraph {
            mailbox: String::new(),
            user_path: String::new(),
            poll_ms: 60_000,
            lookahead_s: 24 * 3600,
            allow_overlap: false,
            timeout_ms: 3_000,
            pending: BTreeMap::new(),
            generation: 0,
            syncing: false,
            tz: chrono_tz::UTC,
            backoff: RetryWait::default(),
            last_error: ErrorReport::default(),
            tx_counter: 0,
        }
    }
}

/// The busy periods of `events` within `[start, end)`, merged: cancelled and free events
/// do not count.
pub fn merge_busy(events: &[Event], start: i64, end: i64) -> Vec<Period> {
    lintel_calendar_kit::merge_busy(
        events
            .iter()
            .filter(|e| e.busy() && e.overlaps(start, end))
            .map(|e| (e.start, e.end)),
        start,
        end,
    )
}

/// The `transactionId` of a new booking (Graph recognises a repeated POST with the same
/// id; the driver never re-sends one, and every call gets a new id): an FNV-1a hash of the time (unix ms), a per-module counter, the mailbox, the times and
/// the title, then the counter.
pub fn transaction_id(
    now_ms: u64,
    counter: u64,
    mailbox: &str,
    start: i64,
    end: i64,
    title: &str,
) -> String {
    let h = lintel_calendar_kit::new_id_hash(now_ms, counter, mailbox, start, end, title);
    format!("lintel-{h:016x}-{counter}")
}

/// The JSON body of a new event (Graph "Create event").
pub fn new_event_body(
    title: &str,
    start: i64,
    end: i64,
    organizer: Option<&str>,
    transaction_id: &str,
) -> Value {
    let mut body = json!({
        "subject": title,
        "start": {"dateTime": local_stamp(start), "timeZone": "UTC"},
        "end": {"dateTime": local_stamp(end), "timeZone": "UTC"},
        "showAs": "busy",
        "transactionId": transaction_id,
    });
    if let Some(o) = organizer {
        body["attendees"] = json!([{"emailAddress": {"address": o}, "type": "required"}]);
    }
    body
}

impl MsGraph {
    fn set_error(&mut self, error: Option<String>) {
        self.last_error.set(error);
    }

    fn request(&mut self, req: HttpRequest, pending: Pending) -> Result<(), String> {
        if self.pending.len() >= MAX_IN_FLIGHT {
            return Err(format!(
                "{MAX_IN_FLIGHT} requests are already waiting for the server; try later"
            ));
        }
        let req = req
            .header("Accept", "application/json")
            .timeout_ms(self.timeout_ms);
        let id = host::http_request(req).map_err(|e| self.refused(e))?;
        self.pending.insert(id, (self.generation, pending));
        Ok(())
    }

    /// The `calendarView` request of `[start, end)`.
    fn view_path(&self, start: i64, end: i64) -> String {
        format!(
            "{}/calendarView?startDateTime={}&endDateTime={}&$select={SELECT}&$orderby=start/dateTime&$top={PAGE_SIZE}",
            self.user_path,
            utc_stamp(start),
            utc_stamp(end)
        )
    }

    fn view_request(path: &str) -> HttpRequest {
        HttpRequest::get(path).header("Prefer", "outlook.timezone=\"UTC\"")
    }

    /// Ask the server for the events overlapping `[start, end)`.
    fn query(&mut self, want: Want, start: i64, end: i64) -> Result<(), (Want, String)> {
        if let Some(why) = self.backoff.active() {
            return Err((want, why));
        }
        if self.pending.len() >= MAX_IN_FLIGHT {
            return Err((
                want,
                format!("{MAX_IN_FLIGHT} requests are already waiting for the server; try later"),
            ));
        }
        let req = Self::view_request(&self.view_path(start, end))
            .header("Accept", "application/json")
            .timeout_ms(self.timeout_ms);
        match host::http_request(req) {
            Ok(id) => {
                self.pending.insert(
                    id,
                    (
                        self.generation,
                        Pending::Query {
                            want,
                            start,
                            end,
                            events: Vec::new(),
                            skipped: Vec::new(),
                            pages: 1,
                        },
                    ),
                );
                Ok(())
            }
            Err(e) => Err((want, self.refused(e))),
        }
    }

    /// A request the engine refused at once: a token problem is reported as such.
    fn refused(&mut self, e: String) -> String {
        if e.starts_with("oauth2:") {
            self.transport_problem(&e)
        } else {
            e
        }
    }

    fn sync(&mut self, callers: Vec<CallId>) {
        if self.syncing {
            // Join the sync in flight.
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
        match self.query(Want::Sync(callers), now - 3_600, now + self.lookahead_s) {
            Ok(()) => self.syncing = true,
            Err((want, e)) => {
                host::debug(&format!("sync skipped: {e}"));
                self.fail_want(want, e);
            }
        }
    }

    /// The error text for a failed answer; sets `last_error` (except for a booking that
    /// does not exist or a refused function call) and starts a `Retry-After` wait.
    fn http_problem(&mut self, resp: &HttpResponse, ctx: Ctx) -> String {
        let code = resp.status;
        let (gcode, gmessage) = graph::error_of(&resp.body);
        let tag = gcode
            .as_deref()
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let detail = gmessage.map(|m| format!(": {m}")).unwrap_or_default();
        let what = match ctx {
            Ctx::View => "the calendar view".to_owned(),
            Ctx::Create => "the new event".to_owned(),
            Ctx::Event(id) => format!("booking `{id}`"),
        };
        // A Graph code saying so, or a bare 404 (no Graph code at all); a 400 without a
        // Graph code is not taken for a wrong id.
        let item_missing = match gcode.as_deref() {
            Some("ErrorItemNotFound" | "ErrorInvalidIdMalformed") => true,
            None => code == 404,
            Some(_) => false,
        };
        let (msg, device_level) = match code {
            401 => (
                format!(
                    "authentication failed (HTTP 401{tag}): check the module's oauth2 settings"
                ),
                true,
            ),
            403 => (
                format!(
                    "access denied (HTTP 403{tag}) to mailbox `{}`: the app needs the Calendars.ReadWrite application permission, and an application access policy may exclude this mailbox; check the module's oauth2 settings",
                    self.mailbox
                ),
                true,
            ),
            404 | 400 if item_missing && let Ctx::Event(id) = ctx => (
                format!("no booking with id `{id}` (HTTP {code}{tag})"),
                false,
            ),
            404 => (
                format!(
                    "mailbox not found (HTTP 404{tag}): check mailbox `{}`",
                    self.mailbox
                ),
                true,
            ),
            429 | 500..=599 => {
                let (why, wait) = self.backoff.after(code, &tag, resp.header("Retry-After"));
                if let Some(ms) = wait {
                    let _ = host::schedule_in(RETRY_TIMER, ms);
                }
                (why, true)
            }
            // A refused create or cancel is the function's failure; a refused view is the
            // calendar's problem.
            400 | 409 | 422 => (
                format!("the server refused {what} (HTTP {code}{tag}){detail}"),
                matches!(ctx, Ctx::View),
            ),
            _ => (
                format!("unexpected answer to {what}: HTTP {code}{tag}{detail}"),
                true,
            ),
        };
        if device_level {
            self.set_error(Some(msg.clone()));
        }
        msg
    }

    /// The error text for a request without an answer (sets `last_error`).
    fn transport_problem(&mut self, e: &str) -> String {
        let msg = match e.strip_prefix("oauth2:") {
            Some(why) => format!("cannot get an access token: {}", why.trim_start()),
            None => format!("no answer from Microsoft Graph: {e}"),
        };
        self.set_error(Some(msg.clone()));
        msg
    }

    #[allow(clippy::too_many_arguments)]
    fn on_query(
        &mut self,
        want: Want,
        start: i64,
        end: i64,
        mut events: Vec<Event>,
        mut skipped: Vec<String>,
        pages: u32,
        result: Result<HttpResponse, String>,
    ) {
        if matches!(want, Want::Sync(_)) {
            self.syncing = false;
        }
        let page = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(resp) if !resp.is_success() => Err(self.http_problem(&resp, Ctx::View)),
            Ok(resp) if resp.status != 200 => {
                let e = format!(
                    "unexpected answer to the calendar view: HTTP {}",
                    resp.status
                );
                self.set_error(Some(e.clone()));
                Err(e)
            }
            Ok(resp) if resp.body.len() > MAX_BODY_BYTES => {
                let e = format!(
                    "the answer is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                    resp.body.len()
                );
                self.set_error(Some(e.clone()));
                Err(e)
            }
            Ok(resp) => graph::parse_page(&resp.body, &self.tz, &self.mailbox).inspect_err(|e| {
                self.set_error(Some(e.clone()));
            }),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                self.fail_want(want, e);
                return;
            }
        };
        for e in page.events {
            if events.len() < MAX_EVENTS {
                events.push(e);
            }
        }
        skipped.extend(page.skipped.into_iter().take(MAX_EVENTS));
        if let Some(next) = page.next {
            if pages < MAX_PAGES && events.len() < MAX_EVENTS {
                if let Want::Create(_, _, deadline) = &want
                    && now_ms() >= *deadline
                {
                    let e = format!(
                        "the overlap check read {pages} pages without finishing within {} s of the call; nothing booked (try again, or a shorter request_timeout_ms)",
                        FUNCTION_DEADLINE_MS as f64 / 1000.0
                    );
                    self.fail_want(want, e);
                    return;
                }
                let sync = matches!(want, Want::Sync(_));
                let req = Self::view_request(&next)
                    .header("Accept", "application/json")
                    .timeout_ms(self.timeout_ms);
                match host::http_request(req) {
                    Ok(id) => {
                        self.pending.insert(
                            id,
                            (
                                self.generation,
                                Pending::Query {
                                    want,
                                    start,
                                    end,
                                    events,
                                    skipped,
                                    pages: pages + 1,
                                },
                            ),
                        );
                        self.syncing |= sync;
                    }
                    Err(e) => self.fail_want(want, format!("next page not requested: {e}")),
                }
                return;
            }
            let limit = if pages >= MAX_PAGES {
                format!("more than {MAX_PAGES} pages of {PAGE_SIZE}")
            } else {
                format!("more than {MAX_EVENTS} events")
            };
            host::warn(&format!(
                "the calendar view has {limit} ({} events read in {pages} pages); the rest is left out (at most {MAX_PAGES} pages, {MAX_EVENTS} events)",
                events.len()
            ));
        }
        if !skipped.is_empty() {
            host::warn(&format!(
                "skipped {} malformed event(s): {}",
                skipped.len(),
                skipped
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        self.set_error(None);
        // Zero-length events (start == end) book no time: left out everywhere.
        events.retain(|e| e.overlaps(start, end));
        events.sort_by(|a, b| (a.start, a.end, &a.id).cmp(&(b.start, b.end, &b.id)));
        // Several pages may list an event twice (a calendar changing while paged).
        events.dedup_by(|a, b| a.id == b.id);
        // Bookings are the events blocking the room: cancelled events and those shown as
        // free or working elsewhere are left out.
        let listed = || -> Vec<Booking> {
            events
                .iter()
                .filter(|e| e.busy())
                .take(MAX_LISTED)
                .map(Booking::from)
                .collect()
        };
        match want {
            Want::Sync(callers) => {
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
            Want::Create(c, booking, deadline) => {
                if let Some(clash) = events.iter().find(|e| e.busy()) {
                    // A private event's title is not told.
                    let what = if clash.private {
                        "a private booking".to_owned()
                    } else {
                        format!("`{}`", clash.title)
                    };
                    let msg = format!(
                        "the room is already booked from {} to {} ({what}, id {}); set allow_overlap to allow overlapping bookings",
                        utc_stamp(clash.start),
                        utc_stamp(clash.end),
                        clash.id
                    );
                    host::info(&format!("create_booking refused: {msg}"));
                    let _ = host::reply(c, Err(msg));
                } else if now_ms() >= deadline {
                    let _ = host::reply(c, Err(Self::too_late("the overlap check")));
                } else {
                    self.post(c, *booking);
                }
            }
        }
    }

    /// A request made before the settings changed: its callers get an error now.
    fn drop_pending(&mut self, pending: Pending) {
        match pending {
            Pending::Query { want, .. } => self.fail_want(want, SETTINGS_CHANGED.into()),
            Pending::Fetch { call, .. } => {
                let _ = host::reply(call, Err(SETTINGS_CHANGED.into()));
            }
            Pending::Create { call, .. } => {
                let _ = host::reply(
                    call,
                    Err(format!(
                        "{SETTINGS_CHANGED}; the booking may exist: refresh to see it"
                    )),
                );
            }
            Pending::Cancel { call, .. } => {
                let _ = host::reply(
                    call,
                    Err(format!(
                        "{SETTINGS_CHANGED}; the booking may be cancelled: refresh to see it"
                    )),
                );
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
            Want::List(c) | Want::FreeBusy(c) | Want::Create(c, ..) => {
                let _ = host::reply(c, Err(e));
            }
        }
    }

    fn post(&mut self, call: CallId, booking: NewBooking) {
        self.tx_counter += 1;
        let tx = transaction_id(
            now_ms(),
            self.tx_counter,
            &self.mailbox,
            booking.start,
            booking.end,
            &booking.title,
        );
        let body = new_event_body(
            &booking.title,
            booking.start,
            booking.end,
            booking.organizer.as_deref(),
            &tx,
        );
        let req = HttpRequest::post(&format!("{}/events", self.user_path), "").json(&body);
        if let Err(e) = self.request(req, Pending::Create { call, booking }) {
            let _ = host::reply(call, Err(e));
        }
    }

    fn on_created(
        &mut self,
        call: CallId,
        booking: NewBooking,
        result: Result<HttpResponse, String>,
    ) {
        // Read the bookings again after a create, and after a success answer that is not
        // an event (the booking may exist).
        let mut reread = false;
        let answer = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(r) if !r.is_success() => Err(self.http_problem(&r, Ctx::Create)),
            Ok(r) => {
                reread = true;
                let event = r
                    .json::<Value>()
                    .map_err(|e| e.to_string())
                    .and_then(|v| graph::parse_event(&v, &self.tz, &self.mailbox));
                match event {
                    Ok(e) => {
                        host::info(&format!(
                            "created booking {} ({} to {}): {}",
                            e.id,
                            utc_stamp(e.start),
                            utc_stamp(e.end),
                            e.title
                        ));
                        Ok(json!(Booking::from(&e)))
                    }
                    Err(e) => {
                        host::warn(&format!(
                            "the server answered HTTP {} to the new event `{}` but not with an event: {e}",
                            r.status, booking.title
                        ));
                        Err(format!(
                            "the server answered HTTP {} but not with an event ({e}); the booking may exist: refresh to see it",
                            r.status
                        ))
                    }
                }
            }
        };
        if reread {
            self.sync(Vec::new());
        }
        let _ = host::reply(call, answer);
    }

    fn event_path(&self, id: &str) -> String {
        format!("{}/events/{}", self.user_path, segment(id))
    }

    /// A function's chain stopped at its deadline.
    fn too_late(done: &str) -> String {
        format!(
            "{done} took until {} s after the call, too close to the engine's exec timeout; nothing changed, try again",
            FUNCTION_DEADLINE_MS as f64 / 1000.0
        )
    }

    fn on_fetched(
        &mut self,
        call: CallId,
        id: String,
        reason: Option<String>,
        deadline: u64,
        result: Result<HttpResponse, String>,
    ) {
        let r = match result {
            Err(e) => {
                let e = self.transport_problem(&e);
                let _ = host::reply(call, Err(e));
                return;
            }
            Ok(r) if !r.is_success() => {
                let e = self.http_problem(&r, Ctx::Event(&id));
                let _ = host::reply(call, Err(e));
                return;
            }
            Ok(r) => r,
        };
        let v = match r.json::<Value>() {
            Ok(v) if v.get("id").and_then(Value::as_str).is_some() => v,
            Ok(_) => {
                let e = format!(
                    "malformed answer: the event `{id}` read back has no id; not cancelled"
                );
                let _ = host::reply(call, Err(e));
                return;
            }
            Err(e) => {
                let e = format!("malformed answer: {e}; booking `{id}` not cancelled");
                let _ = host::reply(call, Err(e));
                return;
            }
        };
        if v.get("isCancelled").and_then(Value::as_bool) == Some(true) {
            host::info(&format!("booking {id} is already cancelled"));
            let _ = host::reply(call, Ok(Value::Null));
            return;
        }
        if now_ms() >= deadline {
            let _ = host::reply(call, Err(Self::too_late("reading the booking")));
            return;
        }
        let decline = v.get("isOrganizer").and_then(Value::as_bool) != Some(true);
        let path = format!(
            "{}/{}",
            self.event_path(&id),
            if decline { "decline" } else { "cancel" }
        );
        let mut body = json!({});
        if let Some(r) = &reason {
            body["comment"] = json!(r);
        }
        if decline {
            body["sendResponse"] = json!(true);
        }
        let req = HttpRequest::post(&path, "").json(&body);
        if let Err(e) = self.request(
            req,
            Pending::Cancel {
                call,
                id,
                reason,
                decline,
            },
        ) {
            let _ = host::reply(call, Err(e));
        }
    }

    fn on_cancelled(
        &mut self,
        call: CallId,
        id: String,
        reason: Option<String>,
        decline: bool,
        result: Result<HttpResponse, String>,
    ) {
        let answer = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(r) if !r.is_success() => Err(self.http_problem(&r, Ctx::Event(&id))),
            Ok(_) => {
                let how = if decline {
                    "declined booking"
                } else {
                    "cancelled booking"
                };
                host::info(&format!(
                    "{how} {id}{}{}",
                    if decline {
                        " (the room is not its organizer)"
                    } else {
                        ""
                    },
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ));
                self.sync(Vec::new());
                Ok(Value::Null)
            }
        };
        let _ = host::reply(call, answer);
    }
}

impl Driver for MsGraph {
    type Settings = Settings;

    fn on_load(&mut self, s: Settings) -> Result<(), String> {
        let mailbox = s.mailbox.trim().to_owned();
        if mailbox.is_empty() {
            return Err(
                "mailbox is required: the room's SMTP address or user id, e.g. `room-101@contoso.com`"
                    .into(),
            );
        }
        if mailbox.len() > 320
            || mailbox
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%'))
        {
            return Err(format!(
                "mailbox `{}` must be an SMTP address or user id (at most 320 bytes, no spaces, `/`, `?`, `#` or `%`)",
                mailbox.chars().take(80).collect::<String>()
            ));
        }
        let version = s.api_version.trim();
        if !matches!(version, "v1.0" | "beta") {
            return Err(format!(
                "api_version must be `v1.0` or `beta`, got `{}`",
                version.chars().take(40).collect::<String>()
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
        let tz = graph::zone(&s.time_zone).ok_or_else(|| {
            format!(
                "time_zone `{}` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)",
                s.time_zone.chars().take(60).collect::<String>()
            )
        })?;
        // Requests made under the old settings: their answers are dropped, their callers
        // told now.
        self.generation += 1;
        self.syncing = false;
        for (_, (_, pending)) in std::mem::take(&mut self.pending) {
            self.drop_pending(pending);
        }
        self.tz = tz;
        self.user_path = format!("/{version}/users/{}", segment(&mailbox));
        self.mailbox = mailbox;
        self.poll_ms = s.poll_every_ms;
        self.lookahead_s = i64::from(s.lookahead_hours) * 3_600;
        self.allow_overlap = s.allow_overlap;
        self.timeout_ms = s.request_timeout_ms;
        host::schedule_every(POLL_TIMER, self.poll_ms)?;
        // The first read, once loaded; after a running `Retry-After` wait (on_update).
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
            host::debug(&format!(
                "an answer to request {id}, unknown or made before the settings changed: dropped"
            ));
            return;
        };
        if generation != self.generation {
            host::debug(&format!(
                "an answer to request {id}, made before the settings changed: dropped"
            ));
            return;
        }
        match pending {
            Pending::Query {
                want,
                start,
                end,
                events,
                skipped,
                pages,
            } => self.on_query(want, start, end, events, skipped, pages, result),
            Pending::Create { call, booking } => self.on_created(call, booking, result),
            Pending::Fetch {
                call,
                id,
                reason,
                deadline,
            } => self.on_fetched(call, id, reason, deadline, result),
            Pending::Cancel {
                call,
                id,
                reason,
                decline,
            } => self.on_cancelled(call, id, reason, decline, result),
        }
    }
}

#[driver(
    name = "Microsoft Graph Room Calendar",
    module_name = "Calendar",
    description = "A room mailbox's calendar in Microsoft 365 / Exchange Online over Microsoft Graph: bookings, free/busy, create and cancel",
    transport = "http"
)]
impl MsGraph {
    /// The bookings overlapping `start`..`end` (unix seconds, at most 366 days), sorted by
    /// start; cancelled events and events shown as free or working elsewhere are left out.
    #[function]
    fn list_bookings(
        &mut self,
        call: CallId,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Answer<Vec<Booking>>, String> {
        check_range(start.0, end.0)?;
        self.query(Want::List(call), start.0, end.0)
            .map_err(|(_, e)| e)?;
        Ok(Answer::Later)
    }

    /// The busy periods within `start`..`end` (unix seconds), merged from the events
    /// (cancelled events and events shown as free or working elsewhere do not count),
    /// clipped to the range.
    #[function]
    fn free_busy(
        &mut self,
        call: CallId,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Answer<Vec<Period>>, String> {
        check_range(start.0, end.0)?;
        self.query(Want::FreeBusy(call), start.0, end.0)
            .map_err(|(_, e)| e)?;
        Ok(Answer::Later)
    }

    /// Book the room from `start` to `end` (unix seconds) with a title and, optionally,
    /// the organizer's e-mail (added as a required attendee: Graph makes the room's
    /// mailbox the organizer). Refused when it overlaps a booking (unless the
    /// `allow_overlap` setting is on). Answers the created booking.
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
        let organizer = organizer.map(Email::address).transpose()?;
        let booking = NewBooking {
            title,
            start: start.0,
            end: end.0,
            organizer,
        };
        if self.allow_overlap {
            if let Some(why) = self.backoff.active() {
                return Err(why);
            }
            self.post(call, booking);
        } else {
            let deadline = now_ms() + FUNCTION_DEADLINE_MS;
            self.query(
                Want::Create(call, Box::new(booking), deadline),
                start.0,
                end.0,
            )
            .map_err(|(_, e)| e)?;
        }
        Ok(Answer::Later)
    }

    /// Cancel a booking by its id. The event is read first: when the room's mailbox
    /// organizes it, it is cancelled (attendees get a cancellation); otherwise the room
    /// declines it (the organizer gets the decline). The optional reason is the message's
    /// comment.
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
        let req = HttpRequest::get(&format!(
            "{}?$select=id,subject,isOrganizer,isCancelled",
            self.event_path(&id)
        ));
        let deadline = now_ms() + FUNCTION_DEADLINE_MS;
        self.request(
            req,
            Pending::Fetch {
                call,
                id,
                reason,
                deadline,
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

export_driver!(MsGraph);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_events_carry_utc_times_and_the_organizer_as_attendee() {
        let b = new_event_body(
            "Stand-up",
            1_767_258_000,
            1_767_259_800,
            Some("a@x.com"),
            "t",
        );
        assert_eq!(
            b,
            json!({"subject": "Stand-up",
                   "start": {"dateTime": "2026-01-01T09:00:00", "timeZone": "UTC"},
                   "end": {"dateTime": "2026-01-01T09:30:00", "timeZone": "UTC"},
                   "showAs": "busy", "transactionId": "t",
                   "attendees": [{"emailAddress": {"address": "a@x.com"}, "type": "required"}]})
        );
        assert!(
            new_event_body("x", 0, 1, None, "t")
                .get("attendees")
                .is_none()
        );
    }
}
