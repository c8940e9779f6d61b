//! CalDAV room calendars (RFC 4791 over the engine's HTTP transport, iCalendar RFC 5545).
//!
//! The module's `uri` is the server (`http://host:port`), `calendar_path` the calendar
//! collection under it. Bookings are read with a calendar-query `REPORT` (the server filters
//! the time range and expands recurring events; a server answering 405/501 is read with a
//! `GET` of the whole collection instead), created with `PUT` + `If-None-Match: *` and
//! cancelled with `DELETE` + `If-Match` (the href and ETag from the REPORT answer); one
//! occurrence of a recurring series (id `<UID>#<YYYYMMDDTHHMMSSZ>`) is cancelled with an
//! `EXDATE` (GET, then PUT + `If-Match`); a series is never deleted. See
//! `docs/drivers/caldav.md`.

pub mod dav;
pub mod ical;

use chrono_tz::Tz;
use lintel_driver_sdk::prelude::*;
use std::collections::{BTreeMap, HashMap, VecDeque};

pub use lintel_calendar_kit::{
    Booking, BookingId, DEFAULT_429_WAIT_SECS, Email, MAX_BOOKINGS_STATUS_BYTES, MAX_IN_FLIGHT,
    MAX_LISTED, MAX_RANGE_SECS, MAX_RETRY_AFTER_SECS, MAX_UNIX, Period, Reason, Title, UnixTime,
    retry_after,
};
use lintel_calendar_kit::{ErrorReport, RetryWait, check_range, now_ms, now_s, segment};

/// Polling timer.
const POLL_TIMER: u32 = 1;
/// One-shot timer: sync again after a server's `Retry-After` (or a refused first sync).
const RETRY_TIMER: u32 = 2;
/// Delay of the first read after loading, in milliseconds.
pub const FIRST_SYNC_MS: u64 = 10;
/// Bodies above this are not parsed (the engine refuses answers over 4 MiB anyway).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Entries of the UID → calendar object map (rebuilt from each full sync).
pub const MAX_KNOWN: usize = 4_000;
/// The driver's own recent PUTs kept in that map across syncs.
pub const MAX_CREATED: usize = 64;

/// The driver's settings. Credentials are not here: give the module the engine's
/// `basic_auth` (or `bearer_token`) setting, which adds the `Authorization` header.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// Path of the calendar collection under the module's uri, e.g. `/room-101/calendar/`
    /// (required; a missing trailing `/` is added).
    pub calendar_path: String,
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
    /// IANA time zone for floating times and all-day dates, e.g. `Europe/London`.
    pub time_zone: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            calendar_path: String::new(),
            poll_every_ms: 60_000,
            lookahead_hours: 24,
            allow_overlap: false,
            request_timeout_ms: 3_000,
            time_zone: "UTC".into(),
        }
    }
}

impl From<&ical::Event> for Booking {
    fn from(e: &ical::Event) -> Self {
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
    /// The overlap check before a PUT.
    Create(CallId, Box<Booking>),
}

enum Pending {
    Query {
        want: Want,
        start: i64,
        end: i64,
        report: bool,
    },
    Put {
        call: CallId,
        booking: Booking,
        path: String,
    },
    /// GET of the event before its DELETE (for its ETag, and to refuse deleting a series),
    /// or before cancelling one occurrence (`occurrence`: its RECURRENCE-ID).
    Fetch {
        call: CallId,
        id: String,
        uid: String,
        occurrence: Option<i64>,
        path: String,
        reason: Option<String>,
    },
    /// PUT of a series with one occurrence excluded.
    Exclude {
        call: CallId,
        id: String,
        reason: Option<String>,
    },
    Delete {
        call: CallId,
        id: String,
        reason: Option<String>,
    },
}

/// Where a UID's calendar object is.
#[derive(Clone, Debug)]
struct Known {
    /// The object's path (relative to the uri).
    path: String,
    /// Its ETag, as the server gave it.
    etag: Option<String>,
    /// The object holds a recurring series (never deleted for one booking).
    series: bool,
    /// The full sync after which it was last seen.
    generation: u64,
}

/// The objects of a query's answer: (UID, where it is).
type Objects = Vec<(String, Known)>;

/// A strong ETag (a weak `W/"…"` one never matches `If-Match`).
fn strong(etag: Option<&str>) -> Option<&str> {
    etag.filter(|t| !t.trim_start().starts_with("W/"))
}

/// Remove iCalendar line folds (CRLF or LF, then a space or tab) at the byte level, also
/// their XML-escaped form (`&#13;` / `&#xD;` before the LF).
pub fn unfold_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let fold = [&b"\r\n"[..], b"\n", b"&#13;\n", b"&#xD;\n", b"&#xd;\n"]
            .iter()
            .find(|p| rest.starts_with(p) && matches!(rest.get(p.len()), Some(b' ' | b'\t')))
            .map(|p| p.len() + 1);
        match fold {
            Some(n) => i += n,
            None => {
                out.push(body[i]);
                i += 1;
            }
        }
    }
    out
}

/// A body as text. A body that is not UTF-8 is unfolded first (a server may fold a line
/// inside a multi-byte character), then must be.
pub fn decode(body: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
    match std::str::from_utf8(body) {
        Ok(t) => Ok(std::borrow::Cow::Borrowed(t)),
        Err(_) => String::from_utf8(unfold_bytes(body))
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("not UTF-8 ({})", e.utf8_error())),
    }
}

/// One module's state.
pub struct CalDav {
    calendar_path: String,
    poll_ms: u64,
    lookahead_s: i64,
    allow_overlap: bool,
    timeout_ms: u32,
    tz: Tz,
    pending: BTreeMap<u64, Pending>,
    /// Whether to query with REPORT (cleared when the server answers it with 405 or 501).
    use_report: bool,
    /// A sync is in flight.
    syncing: bool,
    /// No requests before this unix ms (a server's `Retry-After`), and why.
    backoff: RetryWait,
    /// The latest `last_error` published.
    last_error: ErrorReport,
    /// Calendar objects by UID, from REPORT answers (rebuilt from each full sync).
    known: HashMap<String, Known>,
    /// The driver's own recent PUTs, kept in `known` across syncs.
    created: VecDeque<(String, Known)>,
    /// Full syncs done (ages the entries of `known`).
    generation: u64,
    uid_counter: u64,
}

impl Default for CalDav {
    fn default() -> Self {
        CalDav {
            calendar_path: String::new(),
            poll_ms: 60_000,
            lookahead_s: 24 * 3600,
            allow_overlap: false,
            timeout_ms: 3_000,
            tz: chrono_tz::UTC,
            pending: BTreeMap::new(),
            use_report: true,
            syncing: false,
            backoff: RetryWait::default(),
            last_error: ErrorReport::default(),
            known: HashMap::new(),
            created: VecDeque::new(),
            generation: 0,
            uid_counter: 0,
        }
    }
}

/// The busy periods of `events` within `[start, end)`, merged: cancelled and free events
/// do not count.
pub fn merge_busy(events: &[ical::Event], start: i64, end: i64) -> Vec<Period> {
    lintel_calendar_kit::merge_busy(
        events
            .iter()
            .filter(|e| e.busy() && e.overlaps(start, end))
            .map(|e| (e.start, e.end)),
        start,
        end,
    )
}

impl CalDav {
    fn set_error(&mut self, error: Option<String>) {
        self.last_error.set(error);
    }

    fn request(&mut self, req: HttpRequest, pending: Pending) -> Result<(), String> {
        if self.pending.len() >= MAX_IN_FLIGHT {
            return Err(format!(
                "{MAX_IN_FLIGHT} requests are already waiting for the server; try later"
            ));
        }
        let id = host::http_request(req.timeout_ms(self.timeout_ms))?;
        self.pending.insert(id, pending);
        Ok(())
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
        let path = self.calendar_path.clone();
        let req = if self.use_report {
            HttpRequest::new("REPORT", &path)
                .header("Depth", "1")
                .header("Content-Type", "application/xml; charset=utf-8")
                .body(dav::calendar_query(start, end))
        } else {
            HttpRequest::get(&path).header("Accept", "text/calendar")
        };
        match host::http_request(req.timeout_ms(self.timeout_ms)) {
            Ok(id) => {
                self.pending.insert(
                    id,
                    Pending::Query {
                        want,
                        start,
                        end,
                        report: self.use_report,
                    },
                );
                Ok(())
            }
            Err(e) => Err((want, e)),
        }
    }

    fn sync(&mut self, callers: Vec<CallId>) {
        if self.syncing {
            // Join the sync in flight.
            if let Some(Pending::Query {
                want: Want::Sync(c),
                ..
            }) = self.pending.values_mut().find(|p| {
                matches!(
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
                if let Want::Sync(callers) = want {
                    for c in callers {
                        let _ = host::reply(c, Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The error text for a failed answer (sets `last_error`, starts a backoff).
    fn http_problem(&mut self, resp: &HttpResponse, what: &str) -> String {
        let code = resp.status;
        let msg = match code {
            401 | 403 => format!(
                "authentication failed (HTTP {code}): check the module's basic_auth credentials"
            ),
            404 => format!(
                "calendar not found (HTTP 404): check calendar_path `{}`",
                self.calendar_path
            ),
            429 | 500..=599 => {
                let (why, wait) = self.backoff.after(code, "", resp.header("Retry-After"));
                if let Some(ms) = wait {
                    let _ = host::schedule_in(RETRY_TIMER, ms);
                }
                why
            }
            _ => format!("unexpected answer to {what}: HTTP {code}"),
        };
        self.set_error(Some(msg.clone()));
        msg
    }

    fn transport_problem(&mut self, e: &str) -> String {
        let msg = format!("no answer from the calendar server: {e}");
        self.set_error(Some(msg.clone()));
        msg
    }

    /// Events of a query's answer, and where their objects are (REPORT answers): `Err` for
    /// an answer that is not one.
    fn read_events(
        &mut self,
        resp: &HttpResponse,
        report: bool,
    ) -> Result<(Vec<ical::Event>, Objects), String> {
        if resp.body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "the answer is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
                resp.body.len()
            ));
        }
        let text = decode(&resp.body).map_err(|e| format!("malformed answer: {e}"))?;
        let text = text.as_ref();
        let mut parsed = ical::Parsed::default();
        let mut objects = Vec::new();
        if report {
            if resp.status != 207 {
                return Err(format!("unexpected answer to REPORT: HTTP {}", resp.status));
            }
            let items = dav::multistatus(text).map_err(|e| format!("malformed answer: {e}"))?;
            for item in items {
                let Some(data) = &item.calendar_data else {
                    continue;
                };
                match ical::parse(data, &self.tz) {
                    Ok(p) => {
                        let path = match item.href.rsplit('/').find(|s| !s.is_empty()) {
                            Some(last) => format!("{}{last}", self.calendar_path),
                            None => continue,
                        };
                        let series = p.events.iter().any(|e| e.recurring || e.id != e.uid);
                        for e in &p.events {
                            if objects.len() < MAX_KNOWN {
                                objects.push((
                                    e.uid.clone(),
                                    Known {
                                        path: path.clone(),
                                        etag: item.etag.clone(),
                                        series,
                                        generation: 0,
                                    },
                                ));
                            }
                        }
                        parsed.events.extend(p.events);
                        parsed.skipped.extend(p.skipped);
                        parsed.warnings.extend(p.warnings);
                    }
                    Err(e) => parsed.skipped.push(format!("{}: {e}", item.href)),
                }
            }
        } else {
            parsed = ical::parse(text, &self.tz).map_err(|e| format!("malformed calendar: {e}"))?;
        }
        for w in parsed.warnings.iter().take(5) {
            host::warn(w);
        }
        if !parsed.skipped.is_empty() {
            host::warn(&format!(
                "skipped {} malformed event(s): {}",
                parsed.skipped.len(),
                parsed
                    .skipped
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        Ok((parsed.events, objects))
    }

    /// Learn where the objects of a query's answer are. A full sync rebuilds the map: its
    /// objects, the driver's own recent PUTs, and what other queries (`list_bookings`,
    /// `free_busy`, the overlap check) saw since the previous full sync; anything older
    /// is dropped. Other queries add at most [`MAX_KNOWN`] entries (the map holds at most
    /// twice that plus [`MAX_CREATED`]).
    fn learn(&mut self, objects: Objects, full: bool) {
        if full {
            self.generation += 1;
            // Entries of other queries since the last full sync carry this generation.
            let generation = self.generation;
            self.known.retain(|_, k| k.generation >= generation);
            for (uid, mut k) in objects {
                k.generation = generation;
                self.known.insert(uid, k);
            }
            for (uid, k) in &self.created {
                self.known.insert(uid.clone(), k.clone());
            }
            return;
        }
        for (uid, mut k) in objects {
            if self.known.len() < MAX_KNOWN || self.known.contains_key(&uid) {
                // Kept by the next full sync, dropped by the one after.
                k.generation = self.generation + 1;
                self.known.insert(uid, k);
            }
        }
    }

    /// Forget a UID (its object was deleted).
    fn forget(&mut self, uid: &str) {
        self.known.remove(uid);
        self.created.retain(|(u, _)| u != uid);
    }

    fn on_query(
        &mut self,
        want: Want,
        start: i64,
        end: i64,
        report: bool,
        result: Result<HttpResponse, String>,
    ) {
        if matches!(want, Want::Sync(_)) {
            self.syncing = false;
        }
        // A server without REPORT: read the collection with GET from now on.
        if report
            && let Ok(r) = &result
            && matches!(r.status, 405 | 501)
        {
            host::warn(&format!(
                "the server refused REPORT (HTTP {}); reading the whole calendar with GET instead",
                r.status
            ));
            self.use_report = false;
            let sync = matches!(want, Want::Sync(_));
            match self.query(want, start, end) {
                Ok(()) => self.syncing |= sync,
                Err((want, e)) => self.fail_want(want, e),
            }
            return;
        }
        let events = match result {
            Err(e) => Err(self.transport_problem(&e)),
            Ok(resp) if !resp.is_success() => Err(self.http_problem(&resp, "the calendar query")),
            Ok(resp) => match self.read_events(&resp, report) {
                Ok(events) => Ok(events),
                Err(e) => {
                    self.set_error(Some(e.clone()));
                    Err(e)
                }
            },
        };
        let mut events = match events {
            Ok((events, objects)) => {
                self.set_error(None);
                self.learn(objects, matches!(want, Want::Sync(_)));
                events
            }
            Err(e) => {
                self.fail_want(want, e);
                return;
            }
        };
        events.retain(|e| e.overlaps(start, end));
        events.sort_by(|a, b| (a.start, a.end, &a.id).cmp(&(b.start, b.end, &b.id)));
        // Bookings are the events blocking the room: cancelled and transparent (free)
        // events are left out.
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
            Want::Create(c, booking) => {
                if let Some(clash) = events.iter().find(|e| e.busy()) {
                    // A private event's title is not told.
                    let what = if clash.private {
                        "a private booking".to_owned()
                    } else {
                        format!("`{}`", clash.title)
                    };
                    let msg = format!(
                        "the room is already booked from {} to {} ({what}, id {}); set allow_overlap to allow overlapping bookings",
                        ical::utc_stamp(clash.start),
                        ical::utc_stamp(clash.end),
                        clash.id
                    );
                    host::info(&format!("create_booking refused: {msg}"));
                    let _ = host::reply(c, Err(msg));
                } else {
                    self.put(c, *booking);
                }
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

    /// Publish the `bookings` status, keeping it under the engine's size cap.
    fn put(&mut self, call: CallId, booking: Booking) {
        let path = format!("{}{}.ics", self.calendar_path, segment(&booking.id));
        let body = ical::new_event(
            &booking.id,
            now_s(),
            booking.start,
            booking.end,
            &booking.title,
            booking.organizer.as_deref(),
        );
        let req = HttpRequest::put(&path, body)
            .header("If-None-Match", "*")
            .header("Content-Type", "text/calendar; charset=utf-8");
        if let Err(e) = self.request(
            req,
            Pending::Put {
                call,
                booking,
                path: path.clone(),
            },
        ) {
            let _ = host::reply(call, Err(e));
        }
    }

    /// The object read before a cancel: delete it (a single event), or exclude one
    /// occurrence from its series; never delete a series.
    #[allow(clippy::too_many_arguments)]
    fn fetched(
        &mut self,
        call: CallId,
        id: String,
        uid: String,
        occurrence: Option<i64>,
        path: String,
        reason: Option<String>,
        r: &HttpResponse,
    ) {
        let text = decode(&r.body).ok();
        let text = text.as_deref().unwrap_or("");
        let holds =
            ical::parse(text, &self.tz).is_ok_and(|p| p.events.iter().any(|e| e.uid == uid));
        if !holds {
            let _ = host::reply(
                call,
                Err(format!(
                    "{path} does not hold booking `{id}`; not cancelled"
                )),
            );
            return;
        }
        let etag = r.header("ETag").map(str::to_owned);
        let Some(rid) = occurrence else {
            if ical::is_series(text, &uid) {
                let _ = host::reply(
                    call,
                    Err(format!(
                        "booking `{id}` is a recurring series; cancel one occurrence by its id `{id}#<YYYYMMDDTHHMMSSZ>` (as in the bookings status): the series is not deleted"
                    )),
                );
                return;
            }
            self.delete(call, id, path, etag, reason);
            return;
        };
        let body = match ical::cancel_occurrence(text, &uid, rid, &self.tz) {
            Ok(b) => b,
            Err(e) => {
                let _ = host::reply(call, Err(format!("booking `{id}`: {e}; not cancelled")));
                return;
            }
        };
        let mut req =
            HttpRequest::put(&path, body).header("Content-Type", "text/calendar; charset=utf-8");
        match strong(etag.as_deref()) {
            Some(t) => req = req.header("If-Match", t),
            None => host::warn(&format!(
                "the server gave no strong ETag for `{path}` ({}): writing the series without If-Match",
                etag.as_deref().unwrap_or("none")
            )),
        }
        if let Err(e) = self.request(req, Pending::Exclude { call, id, reason }) {
            let _ = host::reply(call, Err(e));
        }
    }

    fn new_uid(&mut self, start: i64, end: i64, title: &str) -> String {
        self.uid_counter += 1;
        booking_uid(
            now_ms(),
            self.uid_counter,
            &self.calendar_path,
            start,
            end,
            title,
        )
    }

    fn delete(
        &mut self,
        call: CallId,
        id: String,
        path: String,
        etag: Option<String>,
        reason: Option<String>,
    ) {
        let mut req = HttpRequest::delete(&path);
        match strong(etag.as_deref()) {
            Some(t) => req = req.header("If-Match", t),
            None => host::warn(&format!(
                "the server gave no strong ETag for `{path}` ({}): deleting without If-Match",
                etag.as_deref().unwrap_or("none")
            )),
        }
        if let Err(e) = self.request(req, Pending::Delete { call, id, reason }) {
            let _ = host::reply(call, Err(e));
        }
    }
}

/// The UID of a new booking: an FNV-1a hash of the time (unix ms), a per-module counter,
/// the calendar, the times and the title, then the counter: unique in practice, and the
/// PUT's `If-None-Match: *` refuses the rare clash instead of overwriting.
pub fn booking_uid(
    now_ms: u64,
    counter: u64,
    calendar: &str,
    start: i64,
    end: i64,
    title: &str,
) -> String {
    let h = lintel_calendar_kit::new_id_hash(now_ms, counter, calendar, start, end, title);
    format!("{h:016x}-{counter}@lintel")
}

impl Driver for CalDav {
    type Settings = Settings;

    fn on_load(&mut self, s: Settings) -> Result<(), String> {
        let mut path = s.calendar_path.trim().to_owned();
        if path.is_empty() {
            return Err("calendar_path is required, e.g. `/room-101/calendar/`".into());
        }
        if !path.starts_with('/') || path.starts_with("//") || path.contains(['?', '#', ' ']) {
            return Err(format!(
                "calendar_path `{path}` must be a path starting with a single `/`, without `?`, `#` or spaces"
            ));
        }
        if !path.ends_with('/') {
            path.push('/');
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
        let tz: Tz = s.time_zone.parse().map_err(|_| {
            format!(
                "time_zone `{}` is not an IANA time zone (e.g. `Europe/London`, `UTC`)",
                s.time_zone
            )
        })?;
        self.calendar_path = path;
        self.poll_ms = s.poll_every_ms;
        self.lookahead_s = i64::from(s.lookahead_hours) * 3_600;
        self.allow_overlap = s.allow_overlap;
        self.timeout_ms = s.request_timeout_ms;
        self.tz = tz;
        self.known.clear();
        self.created.clear();
        // New settings may name another server or calendar: try REPORT again.
        self.use_report = true;
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
        let Some(pending) = self.pending.remove(&id) else {
            host::debug(&format!("an answer to unknown request {id}"));
            return;
        };
        match pending {
            Pending::Query {
                want,
                start,
                end,
                report,
            } => self.on_query(want, start, end, report, result),
            Pending::Put {
                call,
                booking,
                path,
            } => {
                let answer = match result {
                    Err(e) => Err(self.transport_problem(&e)),
                    Ok(r) if r.is_success() => {
                        host::info(&format!(
                            "created booking {} ({} to {}): {}",
                            booking.id,
                            ical::utc_stamp(booking.start),
                            ical::utc_stamp(booking.end),
                            booking.title
                        ));
                        let known = Known {
                            path,
                            etag: r.header("ETag").map(str::to_owned),
                            series: false,
                            generation: self.generation,
                        };
                        self.known.insert(booking.id.clone(), known.clone());
                        self.created.retain(|(u, _)| *u != booking.id);
                        self.created.push_back((booking.id.clone(), known));
                        while self.created.len() > MAX_CREATED {
                            self.created.pop_front();
                        }
                        self.sync(Vec::new());
                        Ok(json!(booking))
                    }
                    Ok(r) if r.status == 412 => Err(format!(
                        "an event with UID {} already exists (HTTP 412); not created",
                        booking.id
                    )),
                    Ok(r) => Err(self.http_problem(&r, "PUT")),
                };
                let _ = host::reply(call, answer);
            }
            Pending::Fetch {
                call,
                id,
                uid,
                occurrence,
                path,
                reason,
            } => match result {
                Err(e) => {
                    let e = self.transport_problem(&e);
                    let _ = host::reply(call, Err(e));
                }
                Ok(r) if r.status == 404 || r.status == 410 => {
                    let _ = host::reply(
                        call,
                        Err(format!(
                            "no booking with id `{id}` (HTTP {} for {path})",
                            r.status
                        )),
                    );
                }
                Ok(r) if !r.is_success() => {
                    let e = self.http_problem(&r, "GET of the event");
                    let _ = host::reply(call, Err(e));
                }
                Ok(r) => self.fetched(call, id, uid, occurrence, path, reason, &r),
            },
            Pending::Exclude { call, id, reason } => {
                let answer = match result {
                    Err(e) => Err(self.transport_problem(&e)),
                    Ok(r) if r.is_success() => {
                        host::info(&format!(
                            "cancelled occurrence {id} (the series stays){}",
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
                    Ok(r) => Err(self.http_problem(&r, "PUT of the series")),
                };
                let _ = host::reply(call, answer);
            }
            Pending::Delete { call, id, reason } => {
                let answer = match result {
                    Err(e) => Err(self.transport_problem(&e)),
                    Ok(r) if r.is_success() => {
                        host::info(&format!(
                            "cancelled booking {id}{}",
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ));
                        self.forget(&id);
                        self.sync(Vec::new());
                        Ok(Value::Null)
                    }
                    Ok(r) if r.status == 412 => {
                        self.forget(&id);
                        self.sync(Vec::new());
                        Err(format!(
                            "booking `{id}` changed on the server since it was read (HTTP 412); not cancelled: try again"
                        ))
                    }
                    Ok(r) if r.status == 404 || r.status == 410 => {
                        self.forget(&id);
                        Err(format!("no booking with id `{id}` (HTTP {})", r.status))
                    }
                    Ok(r) => Err(self.http_problem(&r, "DELETE")),
                };
                let _ = host::reply(call, answer);
            }
        }
    }
}

#[driver(
    name = "CalDAV Room Calendar",
    module_name = "Calendar",
    description = "A room's calendar on a CalDAV server (RFC 4791): bookings, free/busy, create and cancel",
    transport = "http"
)]
impl CalDav {
    /// The bookings overlapping `start`..`end` (unix seconds, at most 366 days), sorted by
    /// start; cancelled events are left out.
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
    /// (cancelled and transparent events do not count), clipped to the range.
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
    /// the organizer's e-mail. Refused when it overlaps a booking (unless the
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
        let booking = Booking {
            id: self.new_uid(start.0, end.0, &title),
            title,
            start: start.0,
            end: end.0,
            organizer,
            attendees: Vec::new(),
            all_day: false,
            private: false,
        };
        if self.allow_overlap {
            if let Some(why) = self.backoff.active() {
                return Err(why);
            }
            self.put(call, booking);
        } else {
            self.query(Want::Create(call, Box::new(booking)), start.0, end.0)
                .map_err(|(_, e)| e)?;
        }
        Ok(Answer::Later)
    }

    /// Cancel a booking by its id. A single event is deleted from the calendar (DELETE with
    /// If-Match, so a booking changed meanwhile is not deleted); one occurrence of a
    /// recurring series (id `<UID>#<YYYYMMDDTHHMMSSZ>`) is excluded from its series
    /// (EXDATE, PUT with If-Match). A whole series is never deleted. The optional reason is
    /// logged.
    #[function]
    fn cancel_booking(
        &mut self,
        call: CallId,
        id: BookingId,
        reason: Option<Reason>,
    ) -> Result<Answer<()>, String> {
        let id = id.0;
        if id.trim().is_empty() || id.chars().any(char::is_control) {
            return Err("id must be a non-empty UID without control characters".into());
        }
        if let Some(why) = self.backoff.active() {
            return Err(why);
        }
        let reason = reason.map(|r| r.0.chars().take(500).collect::<String>());
        let (uid, occurrence) = match ical::split_occurrence_id(&id) {
            Some((uid, rid)) => (uid.to_owned(), Some(rid)),
            None => (id.clone(), None),
        };
        let known = self.known.get(&uid).cloned();
        // A single event with a strong ETag: DELETE at once. Otherwise read the object
        // first (for a strong ETag, to see it is not a series, or to edit the series).
        if occurrence.is_none()
            && let Some(k) = &known
            && !k.series
            && strong(k.etag.as_deref()).is_some()
        {
            self.delete(call, id, k.path.clone(), k.etag.clone(), reason);
            return Ok(Answer::Later);
        }
        let path = known
            .map(|k| k.path)
            .unwrap_or_else(|| format!("{}{}.ics", self.calendar_path, segment(&uid)));
        let req = HttpRequest::get(&path).header("Accept", "text/calendar");
        self.request(
            req,
            Pending::Fetch {
                call,
                id,
                uid,
                occurrence,
                path,
                reason,
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

export_driver!(CalDav);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fold_inside_a_character_is_unfolded_before_decoding() {
        // `会` is E4 BC 9A: a server folded between its bytes (CRLF+space, LF+tab, and the
        // XML-escaped CR of a REPORT body).
        let mut body = b"SUMMARY:\xE4\xBC\r\n \x9A;\xE4\n\t\xBC\x9A;\xE4\xBC&#13;\n \x9A".to_vec();
        body.extend_from_slice(b"\r\nX:a\r\n b");
        assert_eq!(decode(&body).unwrap(), "SUMMARY:会;会;会\r\nX:ab");
        // Valid UTF-8 is left as it is; a body still not UTF-8 is refused.
        assert_eq!(decode(b"A\r\n B").unwrap(), "A\r\n B");
        assert!(decode(b"\xFF\r\n x").unwrap_err().starts_with("not UTF-8"));
        assert_eq!(unfold_bytes(b"a\r\n\tb\nc\n"), b"ab\nc\n");
    }

    #[test]
    fn only_strong_etags_are_used() {
        assert_eq!(strong(Some("\"x\"")), Some("\"x\""));
        assert_eq!(strong(Some("W/\"x\"")), None);
        assert_eq!(strong(None), None);
    }
}
