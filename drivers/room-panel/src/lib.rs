//! Room-booking panels over HTTP/JSON (availability light, shown status, check-in).
//!
//! The panel (the tablet outside a meeting room, with an LED light bar) implements the
//! "Lintel room panel API v1", specified in `docs/drivers/room-panel.md`:
//!
//! - `GET /api/v1/panel`: model, firmware, screen power, brightness, light and what the
//!   screen shows; polled every `poll_every_ms`.
//! - `PUT /api/v1/panel/{light,shown,power,brightness}`: the four functions.
//! - `GET /api/v1/panel/events?after=<seq>`: button presses, polled every
//!   `events_every_ms` and published as the status `last_press`.
//!
//! The driver remembers the light and the shown status it was asked for and puts them
//! back when a poll shows the panel lost them (a reboot, a kiosk app restart).
//!
//! Requests carry `X-Api-Key` from the secret setting `api_key` (or the engine's
//! `bearer_token`/`basic_auth` module settings). Problems (refused credentials, a wrong
//! API, `429`/`503` with `Retry-After`, answers that are not the API's JSON, no answer)
//! are published in `last_error` and logged once each; none stops the polling.

use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::serde_json;

/// Timer: poll `GET /api/v1/panel`.
const POLL_TIMER: u32 = 1;
/// Timer: poll `GET /api/v1/panel/events`.
const EVENTS_TIMER: u32 = 2;
/// Timer: the first polls, shortly after loading.
const KICK_TIMER: u32 = 3;
/// Timer: the end of a back-off the panel asked for (`Retry-After`).
const BACKOFF_TIMER: u32 = 4;
/// Delay of the first polls after loading, in milliseconds.
const KICK_MS: u64 = 10;

/// The largest answer body the driver reads; a larger one is an error.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest `title` or `subtitle`, in characters.
pub const MAX_TEXT_CHARS: usize = 200;
/// Requests waiting for the panel at once; functions fail beyond this and polls wait.
pub const MAX_IN_FLIGHT: usize = 16;
/// Button presses handled from one answer to the events poll (the rest come next time).
pub const MAX_PRESSES_PER_POLL: usize = 100;
/// Back-off when a `429`/`503` has no usable `Retry-After`, in seconds.
pub const DEFAULT_RETRY_AFTER_S: u64 = 5;
/// The longest back-off honoured, in seconds (a larger `Retry-After` is cut to this).
pub const MAX_RETRY_AFTER_S: u64 = 300;
/// The longest `api_key`, in bytes.
pub const MAX_API_KEY: usize = 256;

/// The panel driver's settings. The secret `api_key` is set like any setting but kept
/// sealed and read with `host::secret`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// How often to read the panel's state (`GET /api/v1/panel`), in milliseconds
    /// (1000..=3600000).
    pub poll_every_ms: u64,
    /// How often to ask for button presses (`GET /api/v1/panel/events`), in milliseconds
    /// (200..=60000).
    pub events_every_ms: u64,
    /// How long to wait for the panel's answer to a request, in milliseconds
    /// (500..=60000). Keep it under the engine's exec timeout (5 s by default) so
    /// functions answer with the panel's reason rather than a timeout.
    pub request_timeout_ms: u32,
    /// Secret: the panel's API key, sent as the `X-Api-Key` header (unset: no header;
    /// the module's `bearer_token` or `basic_auth` settings may authenticate instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_every_ms: 10_000,
            events_every_ms: 1_000,
            request_timeout_ms: 4_000,
            api_key: None,
        }
    }
}

/// A colour of the panel's light bar.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "snake_case")]
pub enum Color {
    /// Free.
    Green,
    /// Busy.
    Red,
    /// Pending (booked, waiting for check-in).
    Amber,
    /// Light off.
    Off,
}

impl Color {
    fn name(self) -> &'static str {
        match self {
            Color::Green => "green",
            Color::Red => "red",
            Color::Amber => "amber",
            Color::Off => "off",
        }
    }
}

/// The room state the panel's screen shows.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "snake_case")]
pub enum ShownState {
    /// The room is free.
    Free,
    /// Booked, waiting for check-in.
    Pending,
    /// In use.
    Busy,
    /// Not bookable (out of service, out of hours).
    Offline,
}

/// A screen brightness, 0..=100.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Level(#[schemars(range(min = 0, max = 100))] pub u8);

/// What the panel's screen shows: the status `shown` and the body of `PUT
/// /api/v1/panel/shown`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Shown {
    pub state: ShownState,
    pub title: String,
    pub subtitle: String,
}

/// A button on the panel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde", rename_all = "snake_case")]
pub enum PressKind {
    /// Someone checked in to the current booking.
    CheckIn,
    /// Someone ended the current meeting.
    EndMeeting,
    /// Someone booked the room now (`minutes` long).
    BookNow,
}

/// A button press: the status `last_press`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Press {
    pub seq: u64,
    pub kind: PressKind,
    /// Unix time of the press, in seconds (the panel's clock).
    pub at: u64,
    /// For `book_now`: the meeting's length in minutes (`null` otherwise).
    #[serde(default)]
    pub minutes: Option<u32>,
}

/// The answer to `GET /api/v1/panel`.
#[derive(Deserialize)]
#[serde(crate = "lintel_driver_sdk::serde")]
struct PanelAnswer {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    firmware: Option<String>,
    power: bool,
    brightness: u8,
    light: Color,
    shown: Shown,
}

/// The answer to `GET /api/v1/panel/events`.
#[derive(Deserialize)]
#[serde(crate = "lintel_driver_sdk::serde")]
struct EventsAnswer {
    events: Vec<Value>,
    next: u64,
}

/// A change the driver asks of the panel.
#[derive(Clone, Debug)]
enum Put {
    Light(Color),
    Shown(Shown),
    Power(bool),
    Brightness(u8),
}

impl Put {
    fn source(&self) -> &'static str {
        match self {
            Put::Light(_) => "light",
            Put::Shown(_) => "shown",
            Put::Power(_) => "power",
            Put::Brightness(_) => "brightness",
        }
    }

    fn path(&self) -> String {
        format!("/api/v1/panel/{}", self.source())
    }

    fn body(&self) -> Value {
        match self {
            Put::Light(c) => json!({ "color": c }),
            Put::Shown(s) => json!(s),
            Put::Power(on) => json!({ "on": on }),
            Put::Brightness(level) => json!({ "level": level }),
        }
    }
}

/// A request waiting for the panel's answer.
#[derive(Debug)]
enum Pending {
    /// `GET /api/v1/panel`, sent at this light/shown epoch.
    Panel { epoch: u64 },
    /// `GET /api/v1/panel/events?after=<after>`; `sync` skips the presses (the first
    /// poll: they predate the driver).
    Events { after: u64, sync: bool },
    /// A `PUT`, for an exec (`call`) or putting wanted state back (`None`).
    Put { what: Put, call: Option<CallId> },
}

impl Pending {
    fn source(&self) -> &'static str {
        match self {
            Pending::Panel { .. } => "panel",
            Pending::Events { .. } => "events",
            Pending::Put { what, .. } => what.source(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pending::Panel { .. } => "GET /api/v1/panel".into(),
            Pending::Events { after, .. } => format!("GET /api/v1/panel/events?after={after}"),
            Pending::Put { what, .. } => format!("PUT {}", what.path()),
        }
    }
}

#[derive(Default)]
pub struct RoomPanel {
    poll_ms: u64,
    events_ms: u64,
    timeout_ms: u32,
    api_key: Option<String>,
    /// Requests waiting for an answer, by request id (at most [`MAX_IN_FLIGHT`]).
    pending: Vec<(u64, Pending)>,
    /// The light and shown status asked for, put back when the panel loses them.
    wanted_light: Option<Color>,
    wanted_shown: Option<Shown>,
    /// Bumped whenever a light/shown `PUT` is sent or answered: a panel poll sent at
    /// an older epoch may predate it, and its light/shown are not trusted.
    epoch: u64,
    /// The seq of the latest press handled (`None` before the first events poll).
    cursor: Option<u64>,
    /// Set while honouring the panel's `Retry-After`: no requests until it ends.
    backoff: Option<String>,
    /// Current problems by source (`panel`, `events`, `light`...), oldest first; the
    /// latest is `last_error`.
    problems: Vec<(&'static str, String)>,
}

fn publish<T: Serialize + ?Sized>(key: &str, value: &T) {
    if let Err(e) = host::set_status(key, value) {
        host::error(&format!("status `{key}` not published: {e}"));
    }
}

/// The `Retry-After` to honour, in seconds: delta-seconds clamped to
/// 1..=[`MAX_RETRY_AFTER_S`]; [`DEFAULT_RETRY_AFTER_S`] when missing or an HTTP date.
pub fn retry_after_s(header: Option<&str>) -> u64 {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.clamp(1, MAX_RETRY_AFTER_S))
        .unwrap_or(DEFAULT_RETRY_AFTER_S)
}

/// At most `max` characters of `text` (for quoting a device's answer in an error).
fn snippet(text: &str, max: usize) -> String {
    let mut s: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        s.push('…');
    }
    s
}

/// Why the panel refused a request, from its status code and `{"error"}` body.
fn refusal(resp: &HttpResponse, what: &str) -> String {
    let reason = match resp.json::<Value>() {
        Ok(v) => v
            .get("error")
            .and_then(Value::as_str)
            .map(|e| snippet(e, 200)),
        Err(_) => None,
    };
    match reason {
        Some(r) => format!("the panel answered HTTP {} to {what}: {r}", resp.status),
        None => format!("the panel answered HTTP {} to {what}", resp.status),
    }
}

/// Check a title/subtitle.
fn text(name: &str, value: &str) -> Result<(), String> {
    let n = value.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(format!(
            "`{name}` is {n} characters; at most {MAX_TEXT_CHARS}"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{name}` must not contain control characters"));
    }
    Ok(())
}

impl RoomPanel {
    /// Record a problem of `source` (`last_error`, and a warning when it is new).
    fn problem(&mut self, source: &'static str, message: String) {
        let same = self
            .problems
            .iter()
            .any(|(s, m)| *s == source && *m == message);
        self.problems.retain(|(s, _)| *s != source);
        if !same {
            host::warn(&message);
        }
        publish("last_error", &message);
        self.problems.push((source, message));
    }

    /// `source` works again.
    fn solved(&mut self, source: &'static str) {
        self.solved_where(|s| s == source);
    }

    /// The sources `which` selects work again.
    fn solved_where(&mut self, which: impl Fn(&str) -> bool) {
        let before = self.problems.len();
        self.problems.retain(|(s, m)| {
            let gone = which(s);
            if gone {
                host::info(&format!(
                    "the panel answers as expected again ({s}; was: {m})"
                ));
            }
            !gone
        });
        if self.problems.len() != before {
            publish("last_error", &self.problems.last().map(|(_, m)| m.as_str()));
        }
    }

    fn request(&mut self, req: HttpRequest, what: Pending) -> Result<u64, String> {
        if self.pending.len() >= MAX_IN_FLIGHT {
            return Err(format!(
                "{MAX_IN_FLIGHT} requests are already waiting for the panel"
            ));
        }
        let mut req = req
            .timeout_ms(self.timeout_ms)
            .header("Accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("X-Api-Key", key);
        }
        let id = host::http_request(req)?;
        self.pending.push((id, what));
        Ok(id)
    }

    fn waiting(&self, f: impl Fn(&Pending) -> bool) -> bool {
        self.pending.iter().any(|(_, p)| f(p))
    }

    fn poll_panel(&mut self) {
        if self.backoff.is_some() || self.waiting(|p| matches!(p, Pending::Panel { .. })) {
            return;
        }
        let epoch = self.epoch;
        if let Err(e) = self.request(HttpRequest::get("/api/v1/panel"), Pending::Panel { epoch }) {
            host::debug(&format!("panel poll skipped: {e}"));
        }
    }

    fn poll_events(&mut self) {
        if self.backoff.is_some() || self.waiting(|p| matches!(p, Pending::Events { .. })) {
            return;
        }
        let (after, sync) = match self.cursor {
            Some(c) => (c, false),
            None => (0, true),
        };
        let path = format!("/api/v1/panel/events?after={after}");
        if let Err(e) = self.request(HttpRequest::get(&path), Pending::Events { after, sync }) {
            host::debug(&format!("events poll skipped: {e}"));
        }
    }

    /// Send a change; `call` is answered when the panel answers.
    fn put(&mut self, what: Put, call: Option<CallId>) -> Result<(), String> {
        if let Some(why) = &self.backoff {
            return Err(why.clone());
        }
        let req = HttpRequest::put(&what.path(), "").json(&what.body());
        if matches!(what, Put::Light(_) | Put::Shown(_)) {
            self.epoch += 1;
        }
        self.request(req, Pending::Put { what, call }).map(drop)
    }

    /// An exec's change: sent now, answered when the panel answers.
    fn exec_put(&mut self, call: CallId, what: Put) -> Result<Answer<()>, String> {
        let kept = matches!(what, Put::Light(_) | Put::Shown(_));
        match self.put(what, Some(call)) {
            Ok(()) => Ok(Answer::Later),
            Err(e) if kept => Err(format!("{e}; it is applied when the panel answers again")),
            Err(e) => Err(e),
        }
    }

    fn back_off(&mut self, resp: &HttpResponse, what: &str) {
        let secs = retry_after_s(resp.header("Retry-After"));
        let why = format!(
            "the panel is busy (HTTP {} to {what}): waiting {secs} s as it asked",
            resp.status
        );
        if let Err(e) = host::schedule_in(BACKOFF_TIMER, secs * 1000) {
            host::error(&format!("back-off not scheduled: {e}"));
            return;
        }
        self.backoff = Some(why);
    }

    fn on_answer(&mut self, pending: Pending, result: Result<HttpResponse, String>) {
        let source = pending.source();
        let what = pending.describe();
        let outcome = match result {
            Err(e) => Err(format!("no answer from the panel to {what}: {e}")),
            Ok(resp) if resp.is_success() => {
                if resp.body.len() > MAX_BODY {
                    Err(format!(
                        "the panel's answer to {what} is {} bytes; at most {MAX_BODY} are read",
                        resp.body.len()
                    ))
                } else {
                    Ok(resp)
                }
            }
            Ok(resp) => Err(match resp.status {
                401 | 403 => format!(
                    "the panel refused the credentials (HTTP {}) to {what}: check the `api_key` setting (or `bearer_token`/`basic_auth`)",
                    resp.status
                ),
                404 => format!(
                    "the panel answered HTTP 404 to {what}: it does not implement the Lintel room panel API v1 at this address (check the module uri)"
                ),
                429 | 503 => {
                    self.back_off(&resp, &what);
                    self.backoff
                        .clone()
                        .unwrap_or_else(|| refusal(&resp, &what))
                }
                _ => refusal(&resp, &what),
            }),
        };
        let resp = match outcome {
            Ok(resp) => resp,
            Err(message) => {
                if let Pending::Put { what: put, call } = &pending {
                    if matches!(put, Put::Light(_) | Put::Shown(_)) {
                        self.epoch += 1;
                    }
                    if let Some(call) = call {
                        let kept = if matches!(put, Put::Light(_) | Put::Shown(_)) {
                            "; it is applied when the panel takes it"
                        } else {
                            ""
                        };
                        let _ = host::reply(*call, Err(format!("{message}{kept}")));
                    }
                }
                self.problem(source, message);
                return;
            }
        };
        match pending {
            Pending::Panel { epoch } => self.on_panel(&resp, epoch, &what),
            Pending::Events { after, sync } => self.on_events(&resp, after, sync, &what),
            Pending::Put { what: put, call } => {
                match &put {
                    Put::Light(c) => {
                        self.epoch += 1;
                        publish("light", c);
                    }
                    Put::Shown(s) => {
                        self.epoch += 1;
                        publish("shown", s);
                    }
                    Put::Power(on) => publish("power", on),
                    Put::Brightness(level) => publish("brightness", level),
                }
                self.solved(source);
                if let Some(call) = call {
                    let _ = host::reply(call, Ok(Value::Null));
                }
            }
        }
    }

    fn on_panel(&mut self, resp: &HttpResponse, epoch: u64, what: &str) {
        let panel: PanelAnswer = match resp.json() {
            Ok(p) => p,
            Err(e) => {
                let body = snippet(&resp.text(), 80);
                return self.problem(
                    "panel",
                    format!("the panel's answer to {what} is not the API's JSON ({e}): `{body}`"),
                );
            }
        };
        if panel.brightness > 100 {
            return self.problem(
                "panel",
                format!(
                    "the panel's answer to {what} has brightness {}; at most 100",
                    panel.brightness
                ),
            );
        }
        // A good poll ends the panel's problems, including failed changes (their execs
        // were answered with the reason; a lost light or shown status is put back below,
        // and reported again if the panel still refuses it). The events poll reports
        // its own.
        self.solved_where(|s| s != "events");
        publish("power", &panel.power);
        publish("brightness", &panel.brightness);
        if let Some(model) = &panel.model {
            publish("model", model);
        }
        if let Some(firmware) = &panel.firmware {
            publish("firmware", firmware);
        }
        if epoch != self.epoch {
            // A light/shown change was sent or answered since this poll left: its light
            // and shown may be older than that change.
            return;
        }
        publish("light", &panel.light);
        publish("shown", &panel.shown);
        let applying = |p: &Pending, light: bool| match p {
            Pending::Put { what, .. } => matches!(
                (what, light),
                (Put::Light(_), true) | (Put::Shown(_), false)
            ),
            _ => false,
        };
        if let Some(want) = self.wanted_light
            && want != panel.light
            && !self.waiting(|p| applying(p, true))
        {
            host::info(&format!(
                "the panel's light is {}, not {} (restarted?): putting it back",
                panel.light.name(),
                want.name()
            ));
            if let Err(e) = self.put(Put::Light(want), None) {
                host::warn(&format!("light not put back: {e}"));
            }
        }
        if let Some(want) = self.wanted_shown.clone()
            && want != panel.shown
            && !self.waiting(|p| applying(p, false))
        {
            host::info(
                "the panel does not show the wanted room status (restarted?): putting it back",
            );
            if let Err(e) = self.put(Put::Shown(want), None) {
                host::warn(&format!("shown status not put back: {e}"));
            }
        }
    }

    fn on_events(&mut self, resp: &HttpResponse, after: u64, sync: bool, what: &str) {
        let answer: EventsAnswer = match resp.json() {
            Ok(a) => a,
            Err(e) => {
                let body = snippet(&resp.text(), 80);
                return self.problem(
                    "events",
                    format!("the panel's answer to {what} is not the API's JSON ({e}): `{body}`"),
                );
            }
        };
        self.solved("events");
        if sync {
            if !answer.events.is_empty() {
                host::debug(&format!(
                    "{} button presses made before the driver started are not reported",
                    answer.events.len()
                ));
            }
            self.cursor = Some(answer.next);
            return;
        }
        if answer.next < after {
            host::info(&format!(
                "the panel's press counter went back from {after} to {} (restarted): reading its presses from the start",
                answer.next
            ));
            self.cursor = Some(0);
            self.poll_events();
            return;
        }
        let mut cursor = after;
        let mut handled = 0;
        for raw in &answer.events {
            if handled == MAX_PRESSES_PER_POLL {
                break;
            }
            handled += 1;
            let seq = raw.get("seq").and_then(Value::as_u64);
            match serde_json::from_value::<Press>(raw.clone()) {
                Ok(press) if press.seq > cursor => {
                    host::info(&format!(
                        "button press {} (seq {})",
                        serde_json::to_string(&press.kind).unwrap_or_default(),
                        press.seq
                    ));
                    cursor = press.seq;
                    publish("last_press", &press);
                }
                Ok(press) => host::debug(&format!("press {} already handled", press.seq)),
                Err(e) => {
                    host::warn(&format!(
                        "a button press the panel reported is not understood ({e}): `{}`",
                        snippet(&raw.to_string(), 120)
                    ));
                    if let Some(seq) = seq.filter(|s| *s > cursor) {
                        cursor = seq;
                    }
                }
            }
        }
        if handled == answer.events.len() {
            cursor = cursor.max(answer.next);
        }
        self.cursor = Some(cursor);
    }
}

impl Driver for RoomPanel {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        if !(1_000..=3_600_000).contains(&settings.poll_every_ms) {
            return Err(format!(
                "poll_every_ms must be 1000..=3600000, got {}",
                settings.poll_every_ms
            ));
        }
        if !(200..=60_000).contains(&settings.events_every_ms) {
            return Err(format!(
                "events_every_ms must be 200..=60000, got {}",
                settings.events_every_ms
            ));
        }
        if !(500..=60_000).contains(&settings.request_timeout_ms) {
            return Err(format!(
                "request_timeout_ms must be 500..=60000, got {}",
                settings.request_timeout_ms
            ));
        }
        let api_key = host::secret("api_key")?;
        if let Some(key) = &api_key
            && (key.is_empty()
                || key.len() > MAX_API_KEY
                || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            // Never quote the key.
            return Err(format!(
                "api_key must be 1..={MAX_API_KEY} visible ASCII characters without spaces"
            ));
        }
        self.api_key = api_key;
        self.poll_ms = settings.poll_every_ms;
        self.events_ms = settings.events_every_ms;
        self.timeout_ms = settings.request_timeout_ms;
        host::schedule_every(POLL_TIMER, self.poll_ms)?;
        host::schedule_every(EVENTS_TIMER, self.events_ms)?;
        host::schedule_in(KICK_TIMER, KICK_MS)?;
        Ok(())
    }

    fn connected(&mut self) {
        // The panel answers (again): read it now, which puts back what it lost.
        self.poll_panel();
        self.poll_events();
    }

    fn disconnected(&mut self) {
        host::debug("the panel stopped answering");
    }

    fn on_timer(&mut self, id: u32) {
        match id {
            POLL_TIMER => self.poll_panel(),
            EVENTS_TIMER => self.poll_events(),
            KICK_TIMER => {
                self.poll_panel();
                self.poll_events();
            }
            BACKOFF_TIMER => {
                self.backoff = None;
                host::info("back-off over: asking the panel again");
                self.poll_panel();
                self.poll_events();
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: HostEvent) {
        let HostEvent::HttpResponse { id, result } = event else {
            return;
        };
        let Some(i) = self.pending.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, pending) = self.pending.remove(i);
        self.on_answer(pending, result);
    }
}

#[driver(
    name = "Room Panel",
    module_name = "Panel",
    description = "Room-booking panel (Lintel room panel API v1 over HTTP/JSON): availability light, shown room status, screen power and brightness, button presses",
    transport = "http",
    secrets = ["api_key"]
)]
impl RoomPanel {
    /// Set the availability light (green free, red busy, amber pending, off). The panel
    /// keeps it; the driver puts it back if the panel loses it (restart).
    #[function]
    fn set_light(&mut self, call: CallId, color: Color) -> Result<Answer<()>, String> {
        self.wanted_light = Some(color);
        self.exec_put(call, Put::Light(color))
    }

    /// Show the room's state with a title and a subtitle (each at most 200 characters),
    /// e.g. `busy`, "Board meeting", "until 15:00". Put back if the panel loses it.
    #[function]
    fn show(
        &mut self,
        call: CallId,
        state: ShownState,
        title: String,
        subtitle: String,
    ) -> Result<Answer<()>, String> {
        text("title", &title)?;
        text("subtitle", &subtitle)?;
        let shown = Shown {
            state,
            title,
            subtitle,
        };
        self.wanted_shown = Some(shown.clone());
        self.exec_put(call, Put::Shown(shown))
    }

    /// Switch the panel's screen on or off.
    #[function]
    fn power(&mut self, call: CallId, on: bool) -> Result<Answer<()>, String> {
        self.exec_put(call, Put::Power(on))
    }

    /// Set the screen brightness, 0..=100.
    #[function]
    fn brightness(&mut self, call: CallId, level: Level) -> Result<Answer<()>, String> {
        if level.0 > 100 {
            return Err(format!("level must be 0..=100, got {}", level.0));
        }
        self.exec_put(call, Put::Brightness(level.0))
    }
}

export_driver!(RoomPanel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after_s(Some("7")), 7);
        assert_eq!(retry_after_s(Some(" 0 ")), 1);
        assert_eq!(retry_after_s(Some("99999")), MAX_RETRY_AFTER_S);
        assert_eq!(
            retry_after_s(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER_S
        );
        assert_eq!(retry_after_s(None), DEFAULT_RETRY_AFTER_S);
    }

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet("abcdef", 3), "abc…");
        assert_eq!(snippet("abc", 3), "abc");
    }
}
