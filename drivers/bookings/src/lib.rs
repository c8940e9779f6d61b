//! Room logic ("Bookings"): combines a room's calendar, occupancy sensor and booking panel,
//! as PlaceOS's `Place::Bookings` logic does.
//!
//! - follows the calendar module's `bookings` status and publishes the room's `status`
//!   (`free`, `pending`, `busy`, or `offline` without calendar data), `current_booking`,
//!   `next_booking`, `checked_in`, `occupied`, `free_until`, `released` and `last_error`;
//! - checks bookings in (`check_in`, a panel press, or detected presence) and auto-releases
//!   no-shows by calling the calendar's `cancel_booking`;
//! - books the room from the panel (`book_now`) and ends meetings early (`end_meeting`);
//! - drives the panel: `set_light` and `show` on every change.
//!
//! It has no device (`transport = "none"`): everything goes through other modules'
//! statuses and functions. Decisions are re-evaluated on a periodic timer and at exact
//! boundaries (a booking's pending start, start, release deadline and end).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::serde_json;
use std::collections::HashMap;

/// Periodic re-evaluation timer.
const EVALUATE_TIMER: u32 = 1;
/// One-shot timer at the next boundary (start, end, release deadline...).
const BOUNDARY_TIMER: u32 = 2;
/// How long after the module starts a calendar that has not reported yet is waited for
/// quietly (its first read is under way) before it is called unavailable.
const STARTUP_GRACE_S: i64 = 30;

/// At most this many bookings of the calendar's list are used (the rest is ignored, with
/// a warning).
pub const MAX_BOOKINGS: usize = 500;
/// At most this many bookings are remembered (check-ins, releases); oldest ends go first.
pub const MAX_REMEMBERED: usize = 1024;
/// A call to another module with no answer after this many seconds is given up.
pub const CALL_TIMEOUT_S: i64 = 30;
/// A failed auto-release is retried after this many seconds ...
pub const RELEASE_RETRY_S: i64 = 60;
/// ... at most this many attempts in all.
pub const MAX_RELEASE_ATTEMPTS: u8 = 5;
/// A booking made with `book_now` counts as listed for this many seconds, while the
/// calendar's `bookings` catches up.
pub const CREATED_GRACE_S: i64 = 120;
/// Longest title `book_now` accepts, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Latest start or end a booking may have: 9999-12-31T23:59:59Z (Unix s). Entries outside
/// `0..=MAX_TIME_S` are skipped, so all time arithmetic on bookings stays far from
/// overflowing.
pub const MAX_TIME_S: i64 = 253_402_300_799;

/// The module's settings: missing keys take their defaults.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The calendar module (e.g. `Calendar_1`): its `bookings` status lists the room's
    /// bookings; its `create_booking` and `cancel_booking` functions are called.
    pub calendar: String,
    /// The occupancy status to follow (`Module_N.key`, e.g. `Occupancy_1.presence`): a
    /// bool, or a number > 0 meaning occupied. `null` (or "") when the room has no sensor.
    pub occupancy: Option<String>,
    /// The booking panel module (e.g. `Panel_1`) to drive and whose `last_press` status
    /// is followed; `null` (or "") when the room has no panel.
    pub panel: Option<String>,
    /// Release a booking nobody checked in to this many minutes after its start (calls
    /// the calendar's `cancel_booking`); 0 never releases (0..=240).
    pub auto_release_minutes: u32,
    /// Check-in is allowed this many minutes before a booking starts (0..=120).
    pub check_in_early_minutes: u32,
    /// The room shows `pending` this many minutes before a booking starts (0..=120).
    pub pending_before_minutes: u32,
    /// Detected presence during a booking counts as a check-in (the room turns `busy`).
    pub presence_checks_in: bool,
    /// Detection counts as presence for auto-release: a booking is not released while
    /// the room is detected occupied, nor if presence was detected since its start.
    pub release_on_no_show_only_when_unoccupied: bool,
    /// Length of a `book_now` without minutes (5..=480).
    pub book_now_default_minutes: u32,
    /// What the panel and the status show instead of a private booking's title.
    pub title_private: String,
    /// How often to re-evaluate the room, in seconds (5..=300); boundaries (starts, ends,
    /// release deadlines) are also evaluated exactly on time.
    pub evaluate_every_seconds: u32,
    /// IANA time zone of the times shown on the panel (e.g. `Europe/London`). Drivers
    /// cannot read their system's time zone, so it is set here.
    pub time_zone: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            calendar: "Calendar_1".into(),
            occupancy: Some("Occupancy_1.presence".into()),
            panel: Some("Panel_1".into()),
            auto_release_minutes: 10,
            check_in_early_minutes: 5,
            pending_before_minutes: 0,
            presence_checks_in: true,
            release_on_no_show_only_when_unoccupied: true,
            book_now_default_minutes: 30,
            title_private: "Private meeting".into(),
            evaluate_every_seconds: 15,
            time_zone: "UTC".into(),
        }
    }
}

/// The settings, checked.
#[derive(Debug, Clone)]
struct Config {
    calendar: ModuleRef,
    calendar_name: String,
    occupancy: Option<(StatusRef, String)>,
    panel: Option<(ModuleRef, String)>,
    release_s: i64,
    release_minutes: u32,
    early_s: i64,
    pending_s: i64,
    presence_checks_in: bool,
    release_only_when_unoccupied: bool,
    book_now_default_minutes: u32,
    title_private: String,
    evaluate_every_ms: u64,
    tz: Tz,
}

fn in_range(key: &str, value: u32, min: u32, max: u32) -> Result<u32, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{key} must be {min}..={max}, got {value}"))
    }
}

/// `None` for null or blank.
fn optional(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Config {
    fn check(s: &Settings) -> Result<Config, String> {
        let calendar_name = s.calendar.trim().to_owned();
        if calendar_name.contains('.') {
            return Err(format!(
                "calendar must name a module (e.g. `Calendar_1`), not a status: `{calendar_name}`"
            ));
        }
        let calendar = ModuleRef::parse(&calendar_name).map_err(|e| format!("calendar: {e}"))?;
        let occupancy = match optional(&s.occupancy) {
            Some(o) => Some((
                StatusRef::parse(o).map_err(|e| format!("occupancy: {e}"))?,
                o.to_owned(),
            )),
            None => None,
        };
        let panel = match optional(&s.panel) {
            Some(p) if p.contains('.') => {
                return Err(format!(
                    "panel must name a module (e.g. `Panel_1`), not a status: `{p}`"
                ));
            }
            Some(p) => Some((
                ModuleRef::parse(p).map_err(|e| format!("panel: {e}"))?,
                p.to_owned(),
            )),
            None => None,
        };
        let release = in_range("auto_release_minutes", s.auto_release_minutes, 0, 240)?;
        let early = in_range("check_in_early_minutes", s.check_in_early_minutes, 0, 120)?;
        let pending = in_range("pending_before_minutes", s.pending_before_minutes, 0, 120)?;
        let book_now = in_range(
            "book_now_default_minutes",
            s.book_now_default_minutes,
            5,
            480,
        )?;
        let every = in_range("evaluate_every_seconds", s.evaluate_every_seconds, 5, 300)?;
        let title_private = s.title_private.trim().to_owned();
        if title_private.is_empty() || title_private.chars().count() > MAX_TITLE_CHARS {
            return Err(format!(
                "title_private must be 1..={MAX_TITLE_CHARS} characters, got {:?}",
                s.title_private
            ));
        }
        let tz: Tz = s.time_zone.trim().parse().map_err(|_| {
            format!(
                "time_zone `{}` is not an IANA time zone name (e.g. `Europe/London`, `UTC`)",
                s.time_zone
            )
        })?;
        Ok(Config {
            calendar_name: format!("{}_{}", calendar.module, calendar.index),
            calendar,
            occupancy,
            panel,
            release_s: i64::from(release) * 60,
            release_minutes: release,
            early_s: i64::from(early) * 60,
            pending_s: i64::from(pending) * 60,
            presence_checks_in: s.presence_checks_in,
            release_only_when_unoccupied: s.release_on_no_show_only_when_unoccupied,
            book_now_default_minutes: book_now,
            title_private,
            evaluate_every_ms: u64::from(every) * 1000,
            tz,
        })
    }
}

/// One booking as the calendar lists it. A booking is identified by its id *and* its
/// start: a calendar listing one id for several occurrences of a recurring series gives
/// distinct bookings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Booking {
    /// The calendar's id of the booking.
    pub id: String,
    /// Its title (private bookings show `title_private` instead).
    #[serde(default)]
    pub title: String,
    /// Start, Unix seconds.
    pub start: i64,
    /// End, Unix seconds.
    pub end: i64,
    /// Who booked it (`null` in status for private bookings).
    #[serde(default)]
    pub organizer: Option<String>,
    /// Who is invited (empty in status for private bookings).
    #[serde(default)]
    pub attendees: Vec<String>,
    /// Whether it is an all-day booking (never auto-released; the room is busy).
    #[serde(default)]
    pub all_day: bool,
    /// Whether it is private: its title, organizer and attendees are not published.
    #[serde(default)]
    pub private: bool,
}

/// What identifies a booking: its id and its start (occurrences of a recurring series may
/// share an id).
type Key = (String, i64);

fn key(b: &Booking) -> Key {
    (b.id.clone(), b.start)
}

/// Why `b` cannot be used: an empty id, times outside `0..=MAX_TIME_S`, an end not after
/// the start.
fn check_booking(b: &Booking) -> Result<(), String> {
    if b.id.trim().is_empty() {
        return Err("empty id".into());
    }
    for (name, t) in [("start", b.start), ("end", b.end)] {
        if !(0..=MAX_TIME_S).contains(&t) {
            return Err(format!(
                "{name} {t} is out of range (0..={MAX_TIME_S} Unix seconds)"
            ));
        }
    }
    if b.end <= b.start {
        return Err(format!("ends ({}) before it starts ({})", b.end, b.start));
    }
    Ok(())
}

/// The boundary timer's `Schedule::At` time (Unix ms) for a boundary at `t` (Unix s):
/// `None` when `t` is not after `now` or does not fit, so a timer is never set in the past
/// (it would fire at once, and again, in a loop).
pub fn boundary_ms(t: i64, now: i64) -> Option<u64> {
    if t <= now {
        return None;
    }
    u64::try_from(t).ok()?.checked_mul(1000)
}

/// How long `book_now` books the room, in minutes.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Minutes(#[schemars(range(min = 5, max = 480))] pub u32);

/// The calendar's `bookings` status parsed: the valid bookings, sorted by start, and one
/// line per entry left out. `Err` when the value is not a list at all.
pub fn parse_bookings(value: &Value) -> Result<(Vec<Booking>, Vec<String>), String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "`bookings` is not a JSON array (got {})",
            kind_of(value)
        ));
    };
    let mut out: Vec<Booking> = Vec::with_capacity(items.len().min(MAX_BOOKINGS));
    let mut problems = Vec::new();
    for (i, item) in items.iter().take(MAX_BOOKINGS).enumerate() {
        match serde_json::from_value::<Booking>(item.clone()) {
            Err(e) => problems.push(format!("entry {i}: {e}")),
            Ok(b) => match check_booking(&b) {
                Err(e) if b.id.trim().is_empty() => problems.push(format!("entry {i}: {e}")),
                Err(e) => problems.push(format!("entry {i} (`{}`): {e}", b.id)),
                // The same id at another start is another occurrence: a distinct booking.
                Ok(()) if out.iter().any(|o| o.id == b.id && o.start == b.start) => problems.push(
                    format!("entry {i}: duplicate of `{}` starting at {}", b.id, b.start),
                ),
                Ok(()) => out.push(b),
            },
        }
    }
    if items.len() > MAX_BOOKINGS {
        problems.push(format!(
            "only the first {MAX_BOOKINGS} of {} bookings are used",
            items.len()
        ));
    }
    sort(&mut out);
    Ok((out, problems))
}

fn sort(list: &mut [Booking]) {
    list.sort_by(|a, b| (a.start, a.end, &a.id).cmp(&(b.start, b.end, &b.id)));
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An occupancy status value: a bool, or a number > 0 meaning occupied. `Err` for
/// anything else; `Ok(None)` for null (the sensor reports nothing).
pub fn presence_value(value: Option<&Value>) -> Result<Option<bool>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => Ok(Some(n.as_f64().is_some_and(|f| f > 0.0))),
        Some(other) => Err(format!(
            "is {} (expected a bool or a number)",
            kind_of(other)
        )),
    }
}

/// A panel press (`last_press`). Two presses are the same only when every field is: a
/// panel restarting counts `seq` from 1 again, so `seq` alone does not tell a new press.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(crate = "lintel_driver_sdk::serde")]
struct Press {
    seq: u64,
    kind: String,
    /// When it was pressed (Unix s, the panel's clock).
    #[serde(default)]
    at: Option<u64>,
    #[serde(default)]
    minutes: Option<u32>,
}

/// What is remembered about a booking (across calendar updates).
#[derive(Debug, Clone, Default)]
struct Memo {
    /// When the calendar first listed it (Unix s).
    first_seen: i64,
    /// Its end, to forget it after.
    end: i64,
    checked_in: bool,
    /// Presence was detected during it (since its start).
    presence: bool,
    /// Auto-released at this time.
    released_at: Option<i64>,
    /// Ended early with `end_meeting`.
    ended: bool,
    /// A `cancel_booking` for its release is in flight.
    releasing: bool,
    release_attempts: u8,
    retry_at: i64,
}

/// A call to another module waiting for its result.
#[derive(Debug)]
enum Pending {
    Release { key: Key, title: String },
    End { key: Key, reply: Option<CallId> },
    BookNow { reply: Option<CallId> },
    Panel { function: &'static str },
}

/// Where `last_error` came from: a later success of the same kind clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Bookings,
    Calendar,
    Occupancy,
    Panel,
}

/// What the panel shows.
#[derive(Debug, Clone, PartialEq)]
struct PanelView {
    light: &'static str,
    state: &'static str,
    title: String,
    subtitle: String,
}

/// The room logic's state: one per module.
#[derive(Default)]
pub struct Bookings {
    cfg: Option<Config>,
    calendar_sub: Option<u64>,
    occupancy_sub: Option<u64>,
    press_sub: Option<u64>,
    /// The calendar's bookings (`None`: no calendar data).
    bookings: Option<Vec<Booking>>,
    occupied: Option<bool>,
    /// What is remembered per booking, by (id, start).
    memos: HashMap<Key, Memo>,
    calls: HashMap<u64, (i64, Pending)>,
    /// `None` until the first `last_press` value after subscribing (the baseline); then
    /// the last press seen.
    last_press: Option<Option<Press>>,
    shown: Option<PanelView>,
    error: Option<(Source, String)>,
    last_panel_error: Option<String>,
    book_now_in_flight: bool,
    /// Ids the calendar lists for several bookings, sorted (logged when this changes).
    shared_ids: Vec<String>,
    /// Bookings made with `book_now` the calendar may not list yet, with when.
    created: Vec<(Booking, i64)>,
    /// When the module first loaded (unix s), and whether the calendar has listed its
    /// bookings since: until then, and for [`STARTUP_GRACE_S`], a calendar without
    /// bookings is waited for rather than reported.
    loaded_at: i64,
    calendar_seen: bool,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn local(tz: Tz, ts: i64) -> DateTime<Tz> {
    tz.from_utc_datetime(
        &DateTime::<Utc>::from_timestamp(ts, 0)
            .unwrap_or_default()
            .naive_utc(),
    )
}

/// `14:30` in `tz`.
pub fn clock_time(tz: Tz, ts: i64) -> String {
    local(tz, ts).format("%H:%M").to_string()
}

/// `13:00–14:00` (or `all day`).
fn time_range(tz: Tz, b: &Booking) -> String {
    if b.all_day {
        "all day".into()
    } else {
        format!("{}–{}", clock_time(tz, b.start), clock_time(tz, b.end))
    }
}

/// `14:30` today, `Fri 09:00` within a week, `12 Jan` later.
pub fn until_text(tz: Tz, now: i64, ts: i64) -> String {
    let (n, t) = (local(tz, now), local(tz, ts));
    let days = (t.date_naive() - n.date_naive()).num_days();
    match days {
        ..=0 => t.format("%H:%M").to_string(),
        1..=6 => t.format("%a %H:%M").to_string(),
        _ => t.format("%-d %b").to_string(),
    }
}

impl Bookings {
    fn cfg(&self) -> &Config {
        self.cfg.as_ref().expect("on_load ran")
    }

    /// The title shown for `b` (private bookings hidden, empty titles named).
    fn shown_title(&self, b: &Booking) -> String {
        if b.private {
            self.cfg().title_private.clone()
        } else if b.title.trim().is_empty() {
            "Booked".into()
        } else {
            b.title.clone()
        }
    }

    /// `b` as published in status and answers: a private booking's title is replaced by
    /// `title_private`, its organizer and attendees dropped.
    fn public(&self, b: &Booking) -> Booking {
        let mut p = b.clone();
        if b.private {
            p.title = self.cfg().title_private.clone();
            p.organizer = None;
            p.attendees = Vec::new();
        }
        p
    }

    fn memo(&self, b: &Booking) -> Option<&Memo> {
        self.memos.get(&key(b))
    }

    fn is_checked_in(&self, b: &Booking) -> bool {
        self.memo(b)
            .is_some_and(|m| m.checked_in || (self.cfg().presence_checks_in && m.presence))
    }

    /// Not released, not ended early, not over.
    fn is_live(&self, b: &Booking, now: i64) -> bool {
        b.end > now
            && self
                .memo(b)
                .is_none_or(|m| m.released_at.is_none() && !m.ended)
    }

    /// The calendar lists `b`'s id for another booking too (e.g. every occurrence of a
    /// recurring series under one id): `cancel_booking(id)` could cancel them all, so such
    /// a booking is never cancelled from here.
    fn id_is_shared(&self, b: &Booking) -> bool {
        self.shared_ids.binary_search(&b.id).is_ok()
    }

    /// The moment `b` is auto-released if nobody checks in, when it can be: not all-day,
    /// its id not shared, auto-release on, and listed before that moment.
    fn release_deadline(&self, b: &Booking) -> Option<i64> {
        let cfg = self.cfg();
        let deadline = b.start.saturating_add(cfg.release_s);
        (cfg.release_s > 0
            && !b.all_day
            && !self.id_is_shared(b)
            && self.memo(b).is_some_and(|m| m.first_seen < deadline))
        .then_some(deadline)
    }

    /// Whether `b`'s check-in window is open: it started, is within
    /// `check_in_early_minutes` of its start, or was checked in early.
    fn window_open(&self, b: &Booking, now: i64) -> bool {
        b.start.saturating_sub(self.cfg().early_s) <= now
    }

    fn live(&self, now: i64) -> Vec<&Booking> {
        match &self.bookings {
            Some(list) => list.iter().filter(|b| self.is_live(b, now)).collect(),
            None => Vec::new(),
        }
    }

    /// The booking the room is in: the first (by start) that started, is within
    /// `pending_before`, or was checked in early; a timed booking before an all-day one.
    fn current(&self, now: i64) -> Option<&Booking> {
        let cfg = self.cfg();
        let mut under_way = self.live(now).into_iter().filter(|b| {
            let lead = if self.is_checked_in(b) {
                cfg.pending_s.max(cfg.early_s)
            } else {
                cfg.pending_s
            };
            b.start.saturating_sub(lead) <= now
        });
        let first = under_way.next()?;
        if !first.all_day {
            return Some(first);
        }
        under_way.find(|b| !b.all_day).or(Some(first))
    }

    /// The next booking after `current`: all-day bookings already under way are not
    /// "next".
    fn next(&self, now: i64, current: Option<&Booking>) -> Option<&Booking> {
        self.live(now)
            .into_iter()
            .find(|b| current.is_none_or(|c| key(c) != key(b)) && !(b.all_day && b.start <= now))
    }

    /// Whether the calendar is still being waited for after the module started.
    fn starting_up(&self) -> bool {
        !self.calendar_seen && now_s().saturating_sub(self.loaded_at) < STARTUP_GRACE_S
    }

    fn set_error(&mut self, source: Source, text: String) {
        let _ = host::set_status("last_error", &text);
        self.error = Some((source, text));
    }

    fn clear_error(&mut self, source: Source) {
        if self.error.as_ref().is_some_and(|(s, _)| *s == source) {
            self.error = None;
            let _ = host::set_status("last_error", &Value::Null);
        }
    }

    fn call(
        &mut self,
        target: ModuleRef,
        function: &'static str,
        args: &[Value],
        p: Pending,
    ) -> Result<(), String> {
        let id = host::call(target, function, args)?;
        self.calls.insert(id, (now_s(), p));
        Ok(())
    }

    fn subscribe(&mut self) -> Result<(), String> {
        for id in [
            self.calendar_sub.take(),
            self.occupancy_sub.take(),
            self.press_sub.take(),
        ]
        .into_iter()
        .flatten()
        {
            host::unsubscribe(id);
        }
        let cfg = self.cfg().clone();
        self.last_press = None;
        let cal = StatusRef {
            system: None,
            module: cfg.calendar.module.clone(),
            index: cfg.calendar.index,
            key: "bookings".into(),
        };
        self.calendar_sub = Some(host::subscribe(cal).map_err(|e| format!("calendar: {e}"))?);
        if let Some((occ, _)) = &cfg.occupancy {
            self.occupancy_sub =
                Some(host::subscribe(occ.clone()).map_err(|e| format!("occupancy: {e}"))?);
        }
        if let Some((panel, _)) = &cfg.panel {
            let press = StatusRef {
                system: panel.system.clone(),
                module: panel.module.clone(),
                index: panel.index,
                key: "last_press".into(),
            };
            self.press_sub = Some(host::subscribe(press).map_err(|e| format!("panel: {e}"))?);
        }
        Ok(())
    }

    fn on_bookings(&mut self, value: Option<Value>) {
        let name = self.cfg().calendar_name.clone();
        match value {
            None | Some(Value::Null) if self.starting_up() => {
                host::debug(&format!(
                    "waiting for {name}.bookings (the calendar's first read is under way)"
                ));
                self.bookings = None;
            }
            None | Some(Value::Null) => {
                if self.bookings.is_some() || self.error.is_none() {
                    host::warn(&format!(
                        "{name}.bookings is unavailable (module missing or not reporting): the room shows offline"
                    ));
                }
                self.bookings = None;
                self.set_error(
                    Source::Bookings,
                    format!("{name}.bookings is unavailable (module missing or not reporting)"),
                );
            }
            Some(v) => match parse_bookings(&v) {
                Err(e) => {
                    host::warn(&format!("{name}.{e}: kept the last good list"));
                    self.set_error(Source::Bookings, format!("{name}.{e}"));
                }
                Ok((mut list, problems)) => {
                    let now = now_s();
                    // A booking made here and now listed (by id, perhaps with its times
                    // normalised by the calendar) keeps its check-in.
                    for (b, _) in &self.created {
                        let checked_in = self.memos.get(&key(b)).is_some_and(|m| m.checked_in);
                        for o in list.iter().filter(|o| o.id == b.id && o.start != b.start) {
                            if checked_in {
                                let m = self.memos.entry(key(o)).or_insert_with(|| Memo {
                                    first_seen: now,
                                    ..Memo::default()
                                });
                                m.checked_in = true;
                                m.end = o.end;
                            }
                        }
                    }
                    self.created.retain(|(b, at)| {
                        now - at < CREATED_GRACE_S && !list.iter().any(|o| o.id == b.id)
                    });
                    if !self.created.is_empty() {
                        list.extend(self.created.iter().map(|(b, _)| b.clone()));
                        sort(&mut list);
                    }
                    let mut counts: HashMap<&str, usize> = HashMap::new();
                    for b in &list {
                        *counts.entry(b.id.as_str()).or_default() += 1;
                    }
                    let mut shared: Vec<String> = counts
                        .into_iter()
                        .filter(|(_, n)| *n > 1)
                        .map(|(id, _)| id.to_owned())
                        .collect();
                    shared.sort();
                    if shared != self.shared_ids && !shared.is_empty() {
                        host::warn(&format!(
                            "{name}.bookings lists the same id for several bookings (e.g. the occurrences of a recurring series): {}; they are followed as distinct bookings but never cancelled from here (no auto-release, no end_meeting), as cancelling the id could cancel them all",
                            shared
                                .iter()
                                .take(10)
                                .map(|id| format!("`{id}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    self.shared_ids = shared;
                    self.bookings = Some(list);
                    self.calendar_seen = true;
                    if problems.is_empty() {
                        self.clear_error(Source::Bookings);
                    } else {
                        let text = format!(
                            "{name}.bookings: skipped {} bad entr{}: {}",
                            problems.len(),
                            if problems.len() == 1 { "y" } else { "ies" },
                            problems.join("; ")
                        );
                        host::warn(&text);
                        self.set_error(Source::Bookings, truncate(&text, 1000));
                    }
                }
            },
        }
        self.evaluate();
    }

    fn on_occupancy(&mut self, value: Option<Value>) {
        let name = self
            .cfg()
            .occupancy
            .as_ref()
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        match presence_value(value.as_ref()) {
            Ok(v) => {
                self.occupied = v;
                self.clear_error(Source::Occupancy);
            }
            Err(e) => {
                host::warn(&format!("{name} {e}: occupancy unknown"));
                self.occupied = None;
                self.set_error(Source::Occupancy, format!("{name} {e}"));
            }
        }
        self.evaluate();
    }

    fn on_press(&mut self, value: Option<Value>) {
        let press = match value {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<Press>(v) {
                Ok(p) => Some(p),
                Err(e) => {
                    host::warn(&format!("ignored a panel press that is not one: {e}"));
                    return;
                }
            },
        };
        let Some(last) = self.last_press.replace(press.clone()) else {
            return; // the value seen when subscribing: a press from before
        };
        // The same press published again is not a new one; any difference (seq, time,
        // kind) is, so a panel whose counter restarted is still followed.
        let Some(press) = press.filter(|p| last.as_ref() != Some(p)) else {
            return;
        };
        let outcome = match press.kind.as_str() {
            "check_in" => self
                .check_in_now()
                .map(|b| format!("checked in to `{}`", b.id)),
            "end_meeting" => self.end_now(None).map(|()| "ending the meeting".into()),
            "book_now" => self
                .book_now_start(press.minutes, None, None)
                .map(|()| "booking the room".into()),
            other => Err(format!("unknown press kind `{other}`")),
        };
        match outcome {
            Ok(done) => host::info(&format!("panel press {}: {done}", press.seq)),
            Err(e) => host::info(&format!(
                "panel press {} ({}) refused: {e}",
                press.seq, press.kind
            )),
        }
    }

    fn on_call_result(&mut self, id: u64, result: Result<Value, String>) {
        let Some((_, pending)) = self.calls.remove(&id) else {
            return;
        };
        let cal = self.cfg().calendar_name.clone();
        match pending {
            Pending::Release { key, title } => {
                let now = now_s();
                let minutes = self.cfg().release_minutes;
                let id = key.0.clone();
                let m = self.memos.entry(key).or_default();
                m.releasing = false;
                match result {
                    Ok(_) => {
                        m.released_at = Some(now);
                        host::info(&format!(
                            "auto-released booking `{id}` ({title}): no check-in within {minutes} minutes"
                        ));
                        let _ = host::set_status(
                            "released",
                            &json!({"id": id, "title": title, "at": now}),
                        );
                        self.clear_error(Source::Calendar);
                    }
                    Err(e) => {
                        m.release_attempts += 1;
                        m.retry_at = now + RELEASE_RETRY_S;
                        let attempts = m.release_attempts;
                        let text = if attempts >= MAX_RELEASE_ATTEMPTS {
                            format!(
                                "auto-release of `{id}` failed: {cal}.cancel_booking: {e} (gave up after {attempts} attempts)"
                            )
                        } else {
                            format!(
                                "auto-release of `{id}` failed: {cal}.cancel_booking: {e} (retry in {RELEASE_RETRY_S} s)"
                            )
                        };
                        host::warn(&text);
                        self.set_error(Source::Calendar, text);
                    }
                }
                self.evaluate();
            }
            Pending::End { key, reply } => {
                let id = key.0.clone();
                let answer = match result {
                    Ok(_) => {
                        self.memos.entry(key).or_default().ended = true;
                        host::info(&format!(
                            "ended booking `{id}` early (cancelled in the calendar)"
                        ));
                        self.clear_error(Source::Calendar);
                        Ok(Value::Null)
                    }
                    Err(e) => {
                        let text = format!("ending `{id}` failed: {cal}.cancel_booking: {e}");
                        host::warn(&text);
                        self.set_error(Source::Calendar, text.clone());
                        Err(text)
                    }
                };
                if let Some(call) = reply {
                    let _ = host::reply(call, answer);
                }
                self.evaluate();
            }
            Pending::BookNow { reply } => {
                self.book_now_in_flight = false;
                let answer = match result {
                    Ok(v) => {
                        self.clear_error(Source::Calendar);
                        match serde_json::from_value::<Booking>(v.clone())
                            .map_err(|e| e.to_string())
                            .and_then(|b| check_booking(&b).map(|()| b))
                        {
                            Ok(b) => {
                                host::info(&format!(
                                    "booked the room from {} to {} (`{}`)",
                                    b.start, b.end, b.id
                                ));
                                let now = now_s();
                                let m = self.memos.entry(key(&b)).or_default();
                                m.checked_in = true; // booked from the room: someone is there
                                if m.first_seen == 0 {
                                    m.first_seen = now;
                                }
                                m.end = b.end;
                                let public = self.public(&b);
                                if self.created.len() >= 8 {
                                    self.created.remove(0);
                                }
                                self.created.push((b.clone(), now));
                                if let Some(list) = &mut self.bookings
                                    && !list.iter().any(|o| o.id == b.id)
                                {
                                    list.push(b);
                                    sort(list);
                                }
                                Ok(serde_json::to_value(public).unwrap_or(v))
                            }
                            Err(e) => {
                                host::warn(&format!(
                                    "{cal}.create_booking answered something that is not a booking ({e}); it could not be checked in"
                                ));
                                Ok(v)
                            }
                        }
                    }
                    Err(e) => {
                        let text = format!("book_now failed: {cal}.create_booking: {e}");
                        host::warn(&text);
                        self.set_error(Source::Calendar, text.clone());
                        Err(text)
                    }
                };
                if let Some(call) = reply {
                    let _ = host::reply(call, answer);
                }
                self.evaluate();
            }
            Pending::Panel { function } => match result {
                Ok(_) => {
                    self.last_panel_error = None;
                    self.clear_error(Source::Panel);
                }
                Err(e) => {
                    // Shown again at the next evaluation.
                    self.shown = None;
                    let name = self
                        .cfg()
                        .panel
                        .as_ref()
                        .map(|(_, n)| n.clone())
                        .unwrap_or_default();
                    let text = format!("{name}.{function} failed: {e}");
                    if self.last_panel_error.as_deref() != Some(text.as_str()) {
                        host::warn(&format!("{text} (retried at the next evaluation)"));
                        self.last_panel_error = Some(text.clone());
                    }
                    self.set_error(Source::Panel, text);
                }
            },
        }
    }

    /// The booking a check-in is for: among the live bookings whose check-in window is
    /// open, one not checked in yet before one that is, a timed one before an all-day one,
    /// then the latest start (back to back, the next meeting's window opening while the
    /// previous one runs: the next one).
    fn check_in_target(&self, now: i64) -> Option<&Booking> {
        self.live(now)
            .into_iter()
            .filter(|b| self.window_open(b, now))
            .max_by_key(|b| (!self.is_checked_in(b), !b.all_day, b.start))
    }

    /// Check in to the current booking or one starting within the early window.
    fn check_in_now(&mut self) -> Result<Booking, String> {
        let now = now_s();
        let early = self.cfg().early_s;
        if self.bookings.is_none() {
            return Err("no calendar data: cannot check in".into());
        }
        let target = self.check_in_target(now).cloned();
        let Some(b) = target else {
            let tz = self.cfg().tz;
            return Err(match self.live(now).first() {
                Some(n) => format!(
                    "no booking to check in to: the next one starts at {}; check-in opens {} minutes before",
                    until_text(tz, now, n.start),
                    early / 60
                ),
                None => {
                    "no booking to check in to: the room has no current or upcoming booking".into()
                }
            });
        };
        let m = self.memos.entry(key(&b)).or_insert_with(|| Memo {
            first_seen: now,
            ..Memo::default()
        });
        m.end = b.end;
        if !m.checked_in {
            m.checked_in = true;
            host::info(&format!(
                "checked in to booking `{}` starting at {}",
                b.id, b.start
            ));
        }
        self.evaluate();
        Ok(self.public(&b))
    }

    /// Start ending the current booking: cancel it in the calendar.
    fn end_now(&mut self, reply: Option<CallId>) -> Result<(), String> {
        let now = now_s();
        let Some(b) = self.current(now).filter(|b| b.start <= now).cloned() else {
            return Err("no meeting in progress to end".into());
        };
        if b.all_day {
            // E.g. "Room closed": cancelling it would delete it from the calendar.
            return Err(format!(
                "`{}` is an all-day booking: it cannot be ended from the room",
                self.shown_title(&b)
            ));
        }
        if self.id_is_shared(&b) {
            return Err(format!(
                "`{}` cannot be ended from the room: the calendar lists its id `{}` for several bookings, and cancelling it could cancel them all",
                self.shown_title(&b),
                b.id
            ));
        }
        let k = key(&b);
        if self
            .calls
            .values()
            .any(|(_, p)| matches!(p, Pending::End { key, .. } if *key == k))
        {
            return Err(format!("booking `{}` is already being ended", b.id));
        }
        let cal = self.cfg().calendar.clone();
        self.call(
            cal,
            "cancel_booking",
            &[json!(b.id), json!("Ended early from the room")],
            Pending::End { key: k, reply },
        )
    }

    /// Start booking the room from now for `minutes`.
    fn book_now_start(
        &mut self,
        minutes: Option<u32>,
        title: Option<String>,
        reply: Option<CallId>,
    ) -> Result<(), String> {
        let now = now_s();
        let cfg = self.cfg().clone();
        let minutes = minutes.unwrap_or(cfg.book_now_default_minutes);
        if !(5..=480).contains(&minutes) {
            return Err(format!("minutes must be 5..=480, got {minutes}"));
        }
        let title = title
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "Ad-hoc booking".into());
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(format!(
                "title must be at most {MAX_TITLE_CHARS} characters"
            ));
        }
        if self.bookings.is_none() {
            return Err("no calendar data: cannot book the room".into());
        }
        if self.book_now_in_flight {
            return Err("a booking is already being created".into());
        }
        let end = now + i64::from(minutes) * 60;
        if let Some(c) = self.current(now) {
            return Err(format!(
                "the room is not free: `{}` until {}",
                self.shown_title(c),
                clock_time(cfg.tz, c.end)
            ));
        }
        if let Some(clash) = self.live(now).into_iter().find(|b| b.start < end) {
            let free_min = (clash.start - now).max(0) / 60;
            return Err(format!(
                "the room is not free for {minutes} minutes: `{}` starts at {} (free for {free_min} minutes)",
                self.shown_title(clash),
                until_text(cfg.tz, now, clash.start)
            ));
        }
        self.call(
            cfg.calendar.clone(),
            "create_booking",
            &[json!(now), json!(end), json!(title), Value::Null],
            Pending::BookNow { reply },
        )?;
        self.book_now_in_flight = true;
        Ok(())
    }

    /// Give up calls with no answer for too long (answers waiting on them fail).
    fn expire_calls(&mut self, now: i64) {
        let stale: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, (at, _))| now - at >= CALL_TIMEOUT_S)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.on_call_result(id, Err(format!("no answer within {CALL_TIMEOUT_S} s")));
        }
    }

    /// Work out the room's state now: releases, statuses, panel, next boundary.
    fn evaluate(&mut self) {
        if self.cfg.is_none() {
            return;
        }
        let now = now_s();
        self.expire_calls(now);
        let cfg = self.cfg().clone();
        if self.bookings.is_none() && !self.calendar_seen && !self.starting_up() {
            // Still nothing from the calendar once the start-up wait is over.
            self.calendar_seen = true; // report once; later losses report themselves
            self.on_bookings(None);
        }

        // Remember what the calendar lists, and presence during bookings.
        if let Some(list) = &self.bookings {
            for b in list {
                let m = self.memos.entry(key(b)).or_insert_with(|| Memo {
                    first_seen: now,
                    ..Memo::default()
                });
                m.end = b.end;
                if self.occupied == Some(true) && b.start <= now && now < b.end && !m.presence {
                    m.presence = true;
                    host::debug(&format!(
                        "presence detected during booking `{}` starting at {}",
                        b.id, b.start
                    ));
                }
            }
        }

        // Auto-release no-shows (never all-day bookings, nor one whose id is shared).
        if cfg.release_s > 0 {
            let due: Vec<Booking> = self
                .live(now)
                .into_iter()
                .filter(|b| {
                    let m = self.memo(b);
                    self.release_deadline(b).is_some_and(|d| d <= now)
                        && !self.is_checked_in(b)
                        && m.is_some_and(|m| {
                            !m.releasing
                                && m.release_attempts < MAX_RELEASE_ATTEMPTS
                                && m.retry_at <= now
                                && !(cfg.release_only_when_unoccupied && m.presence)
                        })
                        && !(cfg.release_only_when_unoccupied && self.occupied == Some(true))
                })
                .cloned()
                .collect();
            for b in due {
                let reason = format!(
                    "Auto-released: no check-in within {} minutes",
                    cfg.release_minutes
                );
                let title = self.shown_title(&b);
                let sent = self.call(
                    cfg.calendar.clone(),
                    "cancel_booking",
                    &[json!(b.id), json!(reason)],
                    Pending::Release {
                        key: key(&b),
                        title,
                    },
                );
                let m = self.memos.entry(key(&b)).or_default();
                match sent {
                    Ok(()) => m.releasing = true,
                    Err(e) => {
                        m.release_attempts += 1;
                        m.retry_at = now + RELEASE_RETRY_S;
                        let text = format!("auto-release of `{}` not sent: {e}", b.id);
                        host::warn(&text);
                        self.set_error(Source::Calendar, text);
                    }
                }
            }
        }

        self.publish(now);
        self.schedule_boundary(now);
        self.forget_old(now);
    }

    fn publish(&mut self, now: i64) {
        let cfg = self.cfg().clone();
        let offline = self.bookings.is_none();
        let current = self.current(now).cloned();
        let next = self.next(now, current.as_ref()).cloned();
        let checked_in = current.as_ref().is_some_and(|c| self.is_checked_in(c));
        // An all-day booking (e.g. "Room closed") needs no check-in: the room is busy.
        let busy = checked_in || current.as_ref().is_some_and(|c| c.all_day);
        let status = match (&current, offline) {
            (_, true) => "offline",
            (None, false) => "free",
            (Some(_), false) if busy => "busy",
            (Some(_), false) => "pending",
        };
        let free_until = match (status, &next) {
            ("free", Some(n)) => json!(n.start),
            _ => Value::Null,
        };
        let public = |b: &Option<Booking>| match b {
            Some(b) => serde_json::to_value(self.public(b)).unwrap_or(Value::Null),
            None => Value::Null,
        };
        let results = [
            host::set_status("status", status),
            host::set_status("current_booking", &public(&current)),
            host::set_status("next_booking", &public(&next)),
            host::set_status("checked_in", &checked_in),
            host::set_status(
                "occupied",
                &if cfg.occupancy.is_some() {
                    json!(self.occupied)
                } else {
                    Value::Null
                },
            ),
            host::set_status("free_until", &free_until),
        ];
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            host::error(&format!("status not published: {e}"));
        }

        // The panel.
        let Some((panel, _)) = cfg.panel.clone() else {
            return;
        };
        let tz = cfg.tz;
        let view = match (status, &current) {
            _ if offline => PanelView {
                light: "off",
                state: "offline",
                title: "Unavailable".into(),
                subtitle: "No calendar information".into(),
            },
            (_, None) => PanelView {
                light: "green",
                state: "free",
                title: match &next {
                    Some(n) => format!("Free until {}", until_text(tz, now, n.start)),
                    None => "Free".into(),
                },
                subtitle: match &next {
                    Some(n) => format!("Next: {} · {}", self.shown_title(n), time_range(tz, n)),
                    None => "No upcoming bookings".into(),
                },
            },
            (_, Some(c)) => {
                let title = format!("{} · {}", self.shown_title(c), time_range(tz, c));
                if busy {
                    PanelView {
                        light: "red",
                        state: "busy",
                        title,
                        subtitle: match &next {
                            Some(n) if n.start <= c.end => {
                                format!("Next: {} · {}", self.shown_title(n), time_range(tz, n))
                            }
                            _ => format!("Free from {}", until_text(tz, now, c.end)),
                        },
                    }
                } else {
                    PanelView {
                        light: "amber",
                        state: "pending",
                        title,
                        subtitle: match self.release_deadline(c) {
                            Some(deadline) => format!("Check in by {}", clock_time(tz, deadline)),
                            None => "Check in to start".into(),
                        },
                    }
                }
            }
        };
        let before = self.shown.replace(view.clone());
        let light_changed = before.as_ref().is_none_or(|b| b.light != view.light);
        if light_changed
            && let Err(e) = self.call(
                panel.clone(),
                "set_light",
                &[json!(view.light)],
                Pending::Panel {
                    function: "set_light",
                },
            )
        {
            host::warn(&format!("panel set_light not sent: {e}"));
            self.shown = None;
        }
        if before.as_ref() != Some(&view)
            && let Err(e) = self.call(
                panel,
                "show",
                &[json!(view.state), json!(view.title), json!(view.subtitle)],
                Pending::Panel { function: "show" },
            )
        {
            host::warn(&format!("panel show not sent: {e}"));
            self.shown = None;
        }
    }

    /// `on_timer(BOUNDARY_TIMER)` at the next moment something changes.
    fn schedule_boundary(&mut self, now: i64) {
        let cfg = self.cfg().clone();
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| {
            if t > now && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for b in self.live(now) {
            consider(b.start.saturating_sub(cfg.pending_s));
            consider(b.start.saturating_sub(cfg.early_s));
            consider(b.start);
            if let Some(deadline) = self.release_deadline(b) {
                consider(deadline);
            }
            consider(b.end);
            if let Some(m) = self.memo(b) {
                consider(m.retry_at);
            }
        }
        // Only ever in the future (`consider` keeps times after now; `boundary_ms` checks
        // again and refuses what does not fit): a timer in the past would fire at once and
        // be set again, in a loop.
        match next.and_then(|t| boundary_ms(t, now)) {
            Some(ms) => {
                if let Err(e) = host::schedule(BOUNDARY_TIMER, Schedule::At(ms)) {
                    host::warn(&format!("boundary timer not set: {e}"));
                }
            }
            None => host::cancel_schedule(BOUNDARY_TIMER),
        }
    }

    /// Forget bookings that ended over an hour ago and are no longer listed; keep at most
    /// [`MAX_REMEMBERED`].
    fn forget_old(&mut self, now: i64) {
        let listed: std::collections::HashSet<Key> =
            self.bookings.iter().flatten().map(key).collect();
        self.memos
            .retain(|k, m| listed.contains(k) || m.end > now - 3600 || m.releasing);
        if self.memos.len() > MAX_REMEMBERED {
            let mut ends: Vec<(i64, Key)> =
                self.memos.iter().map(|(k, m)| (m.end, k.clone())).collect();
            ends.sort();
            let drop = self.memos.len() - MAX_REMEMBERED;
            for (_, k) in ends.into_iter().take(drop) {
                self.memos.remove(&k);
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Driver for Bookings {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        let cfg = Config::check(&settings)?;
        if self.loaded_at == 0 {
            self.loaded_at = now_s();
        }
        let every = cfg.evaluate_every_ms;
        let has_occupancy = cfg.occupancy.is_some();
        self.cfg = Some(cfg);
        self.shown = None; // draw the panel again
        if !has_occupancy {
            self.occupied = None;
        }
        self.subscribe()?;
        host::schedule_every(EVALUATE_TIMER, every)
            .map_err(|e| format!("evaluation timer: {e}"))?;
        if self.error.is_none() {
            let _ = host::set_status("last_error", &Value::Null);
        }
        let _ = host::set_status("released", &Value::Null);
        Ok(())
    }

    fn on_update(&mut self, settings: Settings) -> Result<(), String> {
        let cfg = Config::check(&settings)?;
        let every = cfg.evaluate_every_ms;
        let has_occupancy = cfg.occupancy.is_some();
        self.cfg = Some(cfg);
        self.shown = None;
        if !has_occupancy {
            self.occupied = None;
        }
        self.subscribe()?;
        host::schedule_every(EVALUATE_TIMER, every)
            .map_err(|e| format!("evaluation timer: {e}"))?;
        self.evaluate();
        Ok(())
    }

    fn on_timer(&mut self, _id: u32) {
        self.evaluate();
    }

    fn on_event(&mut self, event: HostEvent) {
        match event {
            HostEvent::StatusChanged { id, value } => {
                if Some(id) == self.calendar_sub {
                    self.on_bookings(value);
                } else if Some(id) == self.occupancy_sub {
                    self.on_occupancy(value);
                } else if Some(id) == self.press_sub {
                    self.on_press(value);
                }
            }
            HostEvent::CallResult { id, result } => self.on_call_result(id, result),
            _ => {}
        }
    }
}

#[driver(
    name = "Room Bookings",
    module_name = "Bookings",
    description = "Room logic: combines the room's calendar, occupancy sensor and booking panel (free/pending/busy, check-in, auto-release of no-shows, book now)",
    transport = "none"
)]
impl Bookings {
    /// Check in to the current booking, or to one starting within `check_in_early_minutes`:
    /// the room shows busy and the booking is not auto-released. Answers the booking;
    /// fails when there is no such booking.
    #[function]
    fn check_in(&mut self) -> Result<Booking, String> {
        self.check_in_now()
    }

    /// End the meeting in progress now: the booking is cancelled in the calendar
    /// (`cancel_booking` with reason "Ended early from the room"; the calendar interface
    /// cannot shorten a booking) and the room shows free. Fails when no meeting is in
    /// progress or the calendar refuses.
    #[function]
    fn end_meeting(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.end_now(Some(call))?;
        Ok(Answer::Later)
    }

    /// Book the room from now for `minutes` (default `book_now_default_minutes`) with
    /// `title` (default "Ad-hoc booking") through the calendar's `create_booking`; the new
    /// booking is checked in. Fails when the room is not free for that long. Answers the
    /// created booking.
    #[function]
    fn book_now(
        &mut self,
        call: CallId,
        minutes: Option<Minutes>,
        title: Option<String>,
    ) -> Result<Answer<Booking>, String> {
        self.book_now_start(minutes.map(|m| m.0), title, Some(call))?;
        Ok(Answer::Later)
    }

    /// Follow the calendar, occupancy and panel again (their current values are read
    /// anew), re-evaluate the room and redraw the panel.
    #[function]
    fn refresh(&mut self) -> Result<(), String> {
        self.shown = None;
        self.subscribe()?;
        self.evaluate();
        Ok(())
    }
}

export_driver!(Bookings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookings_parse_skipping_bad_entries() {
        let v = json!([
            {"id": "b", "title": "B", "start": 200, "end": 300},
            {"id": "a", "title": "A", "start": 100, "end": 200, "private": true},
            {"id": "x", "start": "soon", "end": 300},
            {"id": "", "start": 1, "end": 2},
            {"id": "y", "start": 300, "end": 300},
            {"id": "a", "start": 100, "end": 150},
            42,
            {"id": "neg", "start": -1, "end": 2},
            {"id": "late", "start": 1, "end": MAX_TIME_S + 1},
            // Another occurrence of `b`: a distinct booking.
            {"id": "b", "title": "B", "start": 400, "end": 500},
        ]);
        let (list, problems) = parse_bookings(&v).unwrap();
        assert_eq!(
            list.iter()
                .map(|b| (b.id.as_str(), b.start))
                .collect::<Vec<_>>(),
            [("a", 100), ("b", 200), ("b", 400)]
        );
        assert_eq!(problems.len(), 7, "{problems:?}");
        assert!(problems[0].starts_with("entry 2:"), "{problems:?}");
        assert_eq!(problems[1], "entry 3: empty id");
        assert_eq!(problems[3], "entry 5: duplicate of `a` starting at 100");
        assert!(
            problems[5].starts_with("entry 7 (`neg`): start -1 is out of range"),
            "{problems:?}"
        );
        assert!(
            problems[6].starts_with("entry 8 (`late`): end 253402300800 is out of range"),
            "{problems:?}"
        );
        assert!(
            parse_bookings(&json!({"id": 1}))
                .unwrap_err()
                .contains("an object")
        );
    }

    #[test]
    fn bookings_are_capped() {
        let many: Vec<Value> = (0..MAX_BOOKINGS + 3)
            .map(|i| json!({"id": i.to_string(), "start": i, "end": i + 1}))
            .collect();
        let (list, problems) = parse_bookings(&Value::Array(many)).unwrap();
        assert_eq!(list.len(), MAX_BOOKINGS);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn boundary_timers_are_never_in_the_past_nor_overflow() {
        assert_eq!(boundary_ms(101, 100), Some(101_000));
        assert_eq!(boundary_ms(100, 100), None);
        assert_eq!(boundary_ms(99, 100), None);
        assert_eq!(boundary_ms(-5, -10), None, "before 1970");
        assert_eq!(boundary_ms(i64::MAX, 100), None, "does not fit in ms");
        assert_eq!(
            boundary_ms(MAX_TIME_S + 240 * 60, 0),
            Some((MAX_TIME_S as u64 + 240 * 60) * 1000)
        );
    }

    #[test]
    fn presence_values() {
        assert_eq!(presence_value(Some(&json!(true))), Ok(Some(true)));
        assert_eq!(presence_value(Some(&json!(0))), Ok(Some(false)));
        assert_eq!(presence_value(Some(&json!(2.5))), Ok(Some(true)));
        assert_eq!(presence_value(None), Ok(None));
        assert!(presence_value(Some(&json!("yes"))).is_err());
    }

    #[test]
    fn local_times() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // 2026-01-01T13:30Z is 14:30 in Paris (UTC+1).
        let t = 1_767_225_600 + 13 * 3600 + 1800;
        assert_eq!(clock_time(tz, t), "14:30");
        assert_eq!(until_text(tz, t - 3600, t), "14:30");
        assert_eq!(until_text(tz, t - 86_400, t), "Thu 14:30");
        assert_eq!(until_text(tz, t - 10 * 86_400, t), "1 Jan");
    }
}
