//! PJLink class 1 and 2 projectors and displays (TCP port 4352, MD5 authentication).
//!
//! Protocol: JBMIA "PJLink Specifications" class 1 (version 1.04) and class 2 (version
//! 2.00). Lines end with `\r`. On connect the projector greets with `PJLINK 0` (no
//! authentication) or `PJLINK 1 <random>`; then the driver prefixes the first command of
//! the connection with the lowercase hex MD5 of `<random><password>` (the module's
//! `password` secret). A wrong password is answered `PJLINK ERRA`. Commands are
//! `%<class><CMD> <param>` and each is answered `%<class><CMD>=<answer>` where the answer
//! is a value, `OK` or `ERR1` (undefined command), `ERR2` (out of parameter), `ERR3`
//! (unavailable time, e.g. warming up) or `ERR4` (projector failure).
//!
//! Every command waits for its answer (one at a time, as the spec requires); exec
//! functions answer once the projector has. See `docs/drivers/pjlink.md` for the
//! functions, statuses, settings and error handling.

use lintel_driver_sdk::prelude::*;
use md5::{Digest, Md5};
use std::collections::{BTreeMap, BTreeSet};

/// Polls power (and every [`SLOW_POLL_EVERY`]th time errors and lamp hours).
const POLL_TIMER: u32 = 1;
/// Asks for the power state again while the projector warms up or cools down.
const TRANSITION_TIMER: u32 = 2;
/// The projector did not greet in time.
const GREETING_TIMER: u32 = 3;
/// Try a password again after the projector refused it.
const AUTH_RETRY_TIMER: u32 = 4;

/// The longest line accepted from the projector; longer ones are refused as garbage (the
/// spec's longest answer is 136 bytes).
pub const MAX_LINE: usize = 256;
/// Errors (ERST) and lamp hours (LAMP) are polled every this many power polls.
pub const SLOW_POLL_EVERY: u64 = 6;
/// How often the power state is asked again while warming up or cooling down.
pub const TRANSITION_POLL_MS: u64 = 2_000;
/// After this many commands in a row without an answer the connection is dropped (the
/// engine reconnects with backoff).
pub const MAX_UNANSWERED: u32 = 3;
/// Resends of an unanswered command (so a command is written at most 3 times). The
/// first (authenticated) command of a connection is never resent.
pub const RETRIES: u8 = 2;
/// The engine's default exec timeout: a function that has not answered by then fails with
/// the engine's generic timeout instead of the driver's reason. With the default
/// `answer_timeout_ms`, `answer_timeout_ms × (RETRIES + 1)` stays below it.
pub const ENGINE_EXEC_TIMEOUT_MS: u64 = 5_000;
/// The default `answer_timeout_ms` (× 3 sends = 4.5 s, under [`ENGINE_EXEC_TIMEOUT_MS`]).
pub const DEFAULT_ANSWER_TIMEOUT_MS: u32 = 1_500;
/// The first wait before trying a refused password again; it doubles up to
/// [`AUTH_RETRY_MAX_MS`].
pub const AUTH_RETRY_MS: u64 = 5_000;
/// The longest wait before trying a refused password again (below the 30 s after which
/// projectors close an idle connection).
pub const AUTH_RETRY_MAX_MS: u64 = 20_000;
/// At most this many inputs are read from `INST` (and named with `INNM`).
pub const MAX_INPUTS: usize = 64;

/// Which PJLink class to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub enum ClassSetting {
    /// Ask the projector (`CLSS ?`) and use class 2 commands when it reports class 2.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Class 1 only: class 2 functions are refused.
    #[serde(rename = "1")]
    Class1,
    /// Class 2, whatever the projector reports.
    #[serde(rename = "2")]
    Class2,
}

impl<'de> Deserialize<'de> for ClassSetting {
    /// "auto", "1" or "2" (the numbers 1 and 2 are taken too).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v
            .as_str()
            .map(str::to_owned)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
        {
            Some(s) if s == "auto" => Ok(ClassSetting::Auto),
            Some(s) if s == "1" => Ok(ClassSetting::Class1),
            Some(s) if s == "2" => Ok(ClassSetting::Class2),
            _ => Err(serde::de::Error::custom(format!(
                "class must be \"auto\", \"1\" or \"2\", got {v}"
            ))),
        }
    }
}

/// The PJLink module's settings. The password is the secret `password`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// How often to poll the power state while connected, in milliseconds
    /// (500..=3600000). Errors and lamp hours are polled every 6th time. Projectors
    /// close a connection after 30 s without a command: polling more often keeps it open.
    pub poll_every_ms: u64,
    /// PJLink class: "auto" (default: ask the projector with `CLSS ?`), "1" or "2".
    pub class: ClassSetting,
    /// How long to wait for each answer before sending the command again, in
    /// milliseconds (100..=30000); a command is sent at most 3 times. Keep it at most
    /// 1666 so that 3 sends fit in the engine's 5 s exec timeout and a function's failure
    /// reaches its caller with the driver's reason (a larger value is accepted with a
    /// warning).
    pub answer_timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_every_ms: 10_000,
            class: ClassSetting::Auto,
            answer_timeout_ms: DEFAULT_ANSWER_TIMEOUT_MS,
        }
    }
}

/// A PJLink input code: the source type (1 RGB, 2 video, 3 digital, 4 storage, 5
/// network, 6 internal) and its number (1-9; class 2 also A-Z), e.g. "31" for digital 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct InputCode(#[schemars(regex(pattern = r"^[1-6][1-9A-Z]$"))] String);

impl<'de> Deserialize<'de> for InputCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if valid_input(&s) {
            Ok(InputCode(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "input must be a PJLink input code such as \"31\" (1-6 then 1-9 or A-Z), got {s:?}"
            )))
        }
    }
}

/// Which picture/sound to mute with `AVMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MuteTarget {
    Video,
    Audio,
    Both,
}

fn valid_input(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 2 && (b'1'..=b'6').contains(&b[0]) && matches!(b[1], b'1'..=b'9' | b'A'..=b'Z')
}

/// Where the connection is in the PJLink handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Session {
    /// Not connected.
    #[default]
    Down,
    /// Connected; waiting for `PJLINK 0` / `PJLINK 1 <random>`.
    Greeting,
    /// The password was refused earlier: waiting a while before trying it again.
    AuthWait(String),
    /// Commands may be sent.
    Ready,
    /// Authentication is impossible (no password) or was refused on this connection.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Set,
}

/// A command waiting for its answer.
#[derive(Debug)]
struct Pending {
    /// `%1POWR`
    header: String,
    param: String,
    kind: Kind,
    /// The exec call to answer, if a function sent it.
    call: Option<CallId>,
    /// The driver's own verdict on it (`Err` from an `ERRn` or a bad answer).
    outcome: Option<Result<(), String>>,
    /// The last junk received while waiting for it.
    problem: Option<String>,
    /// The connection's first command, carrying the authentication digest.
    login: bool,
}

impl Pending {
    fn cmd(&self) -> &str {
        &self.header[2..]
    }
    fn text(&self) -> String {
        format!("{} {}", self.header, self.param)
    }
}

/// One PJLink projector.
#[derive(Default)]
pub struct Pjlink {
    settings: Option<Settings>,
    /// The class commands are sent in: 1, or 2 once detected (or set).
    class: u8,
    session: Session,
    /// The MD5 prefix for the next (first) command of the connection.
    digest: Option<String>,
    /// The login command (the first, with the digest) is waiting for its answer: nothing
    /// else is sent until it has one.
    logging_in: bool,
    pending: BTreeMap<CommandId, Pending>,
    polls: u64,
    /// Commands in a row that got no answer.
    unanswered: u32,
    /// Password refusals in a row (reset by a successful login or new settings).
    auth_failures: u32,
    /// The last POWR answer digit.
    power: Option<u8>,
    video_mute: bool,
    audio_mute: bool,
    input_names: BTreeMap<String, String>,
    /// Queries the projector answered `ERR1` (not implemented, e.g. `LAMP` on a laser
    /// projector), as `%<class><CMD>`: not sent again on this connection.
    unsupported: BTreeSet<String>,
}

fn error_meaning(code: &str) -> Option<&'static str> {
    Some(match code {
        "ERR1" => "undefined command",
        "ERR2" => "out of parameter",
        "ERR3" => "unavailable time (e.g. warming up or cooling down)",
        "ERR4" => "projector/display failure",
        _ => return None,
    })
}

/// `line` with control characters escaped and cut to 64 characters, for logs.
fn quote(line: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(line).escape_debug().collect();
    if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        text
    }
}

/// MD5 of the random number and the password, as lowercase hex (PJLink authentication).
pub fn auth_digest(random: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(random.as_bytes());
    md5.update(password.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `%1POWR=1` → (`%1POWR`, `1`).
fn split_answer(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    if b.len() < 7 || b[0] != b'%' || !b[1].is_ascii_digit() || b[6] != b'=' {
        return None;
    }
    if !b[2..6]
        .iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return None;
    }
    Some((&line[..6], &line[7..]))
}

fn set_status<T: Serialize + ?Sized>(key: &str, value: &T) {
    if let Err(e) = host::set_status(key, value) {
        host::warn(&format!("status `{key}` not set: {e}"));
    }
}

fn power_name(digit: u8) -> &'static str {
    match digit {
        0 => "off",
        1 => "on",
        2 => "cooling",
        _ => "warming",
    }
}

fn health(digit: u8) -> Option<&'static str> {
    Some(match digit {
        b'0' => "ok",
        b'1' => "warning",
        b'2' => "error",
        _ => return None,
    })
}

impl Pjlink {
    fn settings(&self) -> Settings {
        self.settings.clone().unwrap_or_default()
    }

    fn set_error(&self, message: &str) {
        host::warn(message);
        set_status("last_error", message);
    }

    fn clear_error(&self) {
        set_status("last_error", &Value::Null);
    }

    fn not_ready(&self) -> String {
        match self.session {
            Session::Down => "the projector is not connected".into(),
            Session::Greeting => {
                "the projector is connecting (waiting for its PJLINK greeting)".into()
            }
            Session::AuthWait(_) => format!(
                "the projector refused the password {} time(s): waiting before logging in again",
                self.auth_failures
            ),
            Session::Refused => {
                "authentication failed: check the module's `password` secret".into()
            }
            Session::Ready => String::new(),
        }
    }

    /// Queue `%<class><cmd> <param>\r`, waiting for its answer.
    fn queue(
        &mut self,
        class: u8,
        cmd: &str,
        param: &str,
        kind: Kind,
        call: Option<CallId>,
        name: Option<&str>,
    ) -> Result<CommandId, String> {
        if self.session != Session::Ready {
            return Err(self.not_ready());
        }
        if self.logging_in {
            return Err("the projector is connecting (waiting for its answer to the login)".into());
        }
        let header = format!("%{class}{cmd}");
        let digest = self.digest.take();
        let line = format!(
            "{}{header} {param}\r",
            digest.as_deref().unwrap_or_default()
        );
        let s = self.settings();
        // The authenticated first command is never resent: the same digest again would
        // be a replay (and a projector that missed it may have dropped the session).
        // Unanswered, it drops the connection so the next one gets a fresh random number.
        let retries = if digest.is_some() { 0 } else { RETRIES };
        let mut opts = SendOptions::default()
            .wait()
            .timeout_ms(s.answer_timeout_ms)
            .retries(retries)
            .priority(if kind == Kind::Set { 60 } else { 50 });
        // The authenticated first command must not be replaced by a newer one.
        if let Some(name) = name
            && digest.is_none()
        {
            opts = opts.name(name);
        }
        match host::send_with(line.as_bytes(), opts) {
            Ok(id) => {
                self.pending.insert(
                    id,
                    Pending {
                        header,
                        param: param.into(),
                        kind,
                        call,
                        outcome: None,
                        problem: None,
                        login: digest.is_some(),
                    },
                );
                Ok(id)
            }
            Err(e) => {
                self.digest = digest;
                Err(format!("`{header} {param}` not sent: {e}"))
            }
        }
    }

    /// A query (named so that a newer poll of the same thing replaces a queued one).
    fn query(&mut self, class: u8, cmd: &str, param: &str) {
        if self.unsupported.contains(&format!("%{class}{cmd}")) {
            return;
        }
        // Not the class: a class 2 query replaces the same class 1 query still queued
        // (`%2INST ?` replaces `%1INST ?` once the projector reports class 2).
        let name = format!("q:{cmd}{param}");
        if let Err(e) = self.queue(class, cmd, param, Kind::Query, None, Some(&name)) {
            host::debug(&format!("query skipped: {e}"));
        }
    }

    /// A function's command, answered when the projector answers.
    fn command(
        &mut self,
        call: CallId,
        class: u8,
        cmd: &str,
        param: &str,
    ) -> Result<Answer<()>, String> {
        self.queue(class, cmd, param, Kind::Set, Some(call), None)?;
        Ok(Answer::Later)
    }

    fn class2(&self, what: &str) -> Result<(), String> {
        if self.class >= 2 {
            Ok(())
        } else {
            Err(format!(
                "{what} needs PJLink class 2; this projector speaks class 1 (see the `class` setting)"
            ))
        }
    }

    fn class2_queries(&mut self) {
        for cmd in ["INST", "FREZ", "SNUM", "SVER"] {
            self.query(2, cmd, "?");
        }
    }

    /// Everything read on connect and by `refresh`: the class 1 queries, the input list
    /// (`%1INST ?` on class 1, `%2INST ?` on class 2) and the class 2 queries.
    fn read_everything(&mut self, with_class: bool) {
        if with_class {
            self.query(1, "CLSS", "?");
        }
        for cmd in [
            "POWR", "INPT", "AVMT", "ERST", "LAMP", "NAME", "INF1", "INF2", "INFO",
        ] {
            self.query(1, cmd, "?");
        }
        if self.class >= 2 {
            self.class2_queries();
        } else {
            self.query(1, "INST", "?");
        }
    }

    /// The handshake is done: read everything, start polling.
    fn start_session(&mut self) {
        host::cancel_schedule(GREETING_TIMER);
        self.session = Session::Ready;
        self.unanswered = 0;
        // The first command carries the digest, so it is sent unnamed.
        let login = self.digest.is_some();
        if let Err(e) = self.queue(1, "CLSS", "?", Kind::Query, None, None) {
            host::warn(&format!("class query not sent: {e}"));
        }
        if login {
            // Nothing else is queued until the projector has answered the login: an
            // unanswered login drops the connection, and nothing unauthenticated is
            // written meanwhile.
            self.logging_in = true;
        } else {
            self.start_reading();
        }
    }

    /// Read everything and start polling (after the login, if any).
    fn start_reading(&mut self) {
        self.logging_in = false;
        self.read_everything(false);
        let poll = self.settings().poll_every_ms;
        if let Err(e) = host::schedule_every(POLL_TIMER, poll) {
            host::warn(&format!("polling not scheduled: {e}"));
        }
    }

    fn login(&mut self, random: &str) {
        let password = match host::secret("password") {
            Ok(Some(p)) if !p.is_empty() => p,
            Ok(_) => {
                self.session = Session::Refused;
                host::error(
                    "the projector requires a password and the module has no `password` secret",
                );
                set_status(
                    "last_error",
                    "authentication required: set the module's `password` secret",
                );
                return;
            }
            Err(e) => {
                self.session = Session::Refused;
                self.set_error(&format!("the `password` secret cannot be read: {e}"));
                return;
            }
        };
        self.digest = Some(auth_digest(random, &password));
        self.start_session();
    }

    fn greeting(&mut self, rest: &str, waiting: Option<CommandId>) -> Verdict {
        if rest == "ERRA" {
            self.auth_failures = self.auth_failures.saturating_add(1);
            self.session = Session::Refused;
            self.digest = None;
            host::cancel_schedule(POLL_TIMER);
            let msg = "authentication failed: the projector refused the password (PJLINK ERRA)";
            host::error(msg);
            set_status("last_error", msg);
            // Drop the connection: what is queued fails (the waited command with this
            // reason). No verdict, so that nothing more is written first. The engine
            // reconnects and the next login waits a while.
            if let Some(p) = waiting.and_then(|id| self.pending.get_mut(&id)) {
                p.outcome = Some(Err(msg.into()));
            }
            host::disconnect();
            return Verdict::Ignore;
        }
        if self.session != Session::Greeting {
            host::debug(&format!("ignored a repeated greeting `PJLINK {rest}`"));
            return Verdict::Ignore;
        }
        host::cancel_schedule(GREETING_TIMER);
        match rest.split_once(' ') {
            None if rest == "0" => {
                self.digest = None;
                self.start_session();
            }
            Some(("1", random))
                if (1..=32).contains(&random.len())
                    && random.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                if self.auth_failures == 0 {
                    self.login(random);
                } else {
                    let wait =
                        (AUTH_RETRY_MS << (self.auth_failures - 1).min(8)).min(AUTH_RETRY_MAX_MS);
                    host::info(&format!(
                        "the password was refused {} time(s): trying again in {wait} ms",
                        self.auth_failures
                    ));
                    self.session = Session::AuthWait(random.to_string());
                    if let Err(e) = host::schedule_in(AUTH_RETRY_TIMER, wait) {
                        host::warn(&format!("login retry not scheduled: {e}"));
                    }
                }
            }
            _ => {
                self.set_error(&format!(
                    "malformed greeting `PJLINK {}`; reconnecting",
                    quote(rest.as_bytes())
                ));
                host::disconnect();
            }
        }
        Verdict::Ignore
    }

    /// Record the driver's verdict on the waited command and return it.
    fn verdict(&mut self, waiting: Option<CommandId>, outcome: Result<(), String>) -> Verdict {
        let Some(p) = waiting.and_then(|id| self.pending.get_mut(&id)) else {
            return Verdict::Ignore;
        };
        p.outcome = Some(outcome.clone());
        match outcome {
            Ok(()) => Verdict::Done,
            Err(e) => Verdict::Fail(e),
        }
    }

    /// Junk from the projector: resend the waited command (it counts against its retries).
    fn garbage(&mut self, line: &[u8], why: &str, waiting: Option<CommandId>) -> Verdict {
        let problem = format!("{why}: `{}`", quote(line));
        self.set_error(&problem);
        match waiting.and_then(|id| self.pending.get_mut(&id)) {
            Some(p) => {
                p.problem = Some(problem);
                Verdict::Retry
            }
            None => Verdict::Ignore,
        }
    }

    /// Apply a query's answer (`value`) to the statuses.
    fn apply(&mut self, cmd: &str, param: &str, value: &str) -> Result<(), String> {
        match cmd {
            "POWR" => {
                let digit = match value.as_bytes() {
                    [d @ b'0'..=b'3'] => d - b'0',
                    _ => return Err(format!("power state `{value}` is not 0..3")),
                };
                let was = self.power.replace(digit);
                set_status("power_state", power_name(digit));
                set_status("power", &matches!(digit, 1 | 3));
                if matches!(digit, 2 | 3) {
                    if let Err(e) = host::schedule_in(TRANSITION_TIMER, TRANSITION_POLL_MS) {
                        host::debug(&format!("transition poll not scheduled: {e}"));
                    }
                } else if digit == 1 && was.is_some_and(|w| w != 1) {
                    // Just on: what the picture shows may have changed meanwhile.
                    self.query(1, "INPT", "?");
                    self.query(1, "AVMT", "?");
                }
            }
            "INPT" => {
                if !valid_input(value) {
                    return Err(format!("input `{value}` is not a PJLink input code"));
                }
                set_status("input", value);
            }
            "AVMT" => {
                let (video, audio) = match value {
                    "11" => (true, false),
                    "21" => (false, true),
                    "31" => (true, true),
                    "10" | "20" | "30" => (false, false),
                    _ => return Err(format!("mute state `{value}` is not 10..31")),
                };
                self.publish_mutes(video, audio);
            }
            "ERST" => {
                let b = value.as_bytes();
                let names = ["fan", "lamp", "temperature", "cover", "filter", "other"];
                let parsed: Option<BTreeMap<&str, &str>> = (b.len() == 6)
                    .then(|| {
                        names
                            .iter()
                            .zip(b)
                            .map(|(n, d)| health(*d).map(|h| (*n, h)))
                            .collect()
                    })
                    .flatten();
                match parsed {
                    Some(map) => set_status("errors", &map),
                    None => return Err(format!("error status `{value}` is not 6 digits 0..2")),
                }
            }
            "LAMP" => {
                let parts: Vec<&str> = value.split(' ').collect();
                let mut lamps = Vec::new();
                if !parts.len().is_multiple_of(2) || parts.is_empty() || parts.len() > 16 {
                    return Err(format!("lamp answer `{value}` is not `hours on` pairs"));
                }
                for pair in parts.chunks(2) {
                    match (pair[0].parse::<u32>(), pair[1]) {
                        (Ok(hours), on @ ("0" | "1")) => {
                            lamps.push(json!({"hours": hours, "on": on == "1"}))
                        }
                        _ => return Err(format!("lamp answer `{value}` is not `hours on` pairs")),
                    }
                }
                set_status("lamp_hours", &lamps[0]["hours"]);
                set_status("lamps", &lamps);
            }
            "NAME" => set_status("name", value),
            "INF1" => set_status("manufacturer", value),
            "INF2" => set_status("model", value),
            "INFO" => set_status("info", value),
            "SNUM" => set_status("serial", value),
            "SVER" => set_status("firmware", value),
            "CLSS" => {
                let class = match value {
                    "1" => 1,
                    v if v.len() == 1 && v.as_bytes()[0].is_ascii_digit() => 2,
                    _ => return Err(format!("class `{value}` is not a digit")),
                };
                set_status("class", &value.parse::<u8>().unwrap_or(class));
                let setting = self.settings().class;
                if setting == ClassSetting::Auto && class >= 2 && self.class < 2 {
                    self.class = 2;
                    // (After a login, everything is read once it is done.)
                    if !self.logging_in {
                        self.class2_queries();
                    }
                } else if setting == ClassSetting::Class2 && class < 2 {
                    host::warn("the projector reports class 1 but the `class` setting is \"2\"");
                }
            }
            "INST" => {
                let codes: Vec<&str> = value.split(' ').filter(|c| !c.is_empty()).collect();
                if codes.len() > MAX_INPUTS || !codes.iter().all(|c| valid_input(c)) {
                    return Err(format!("input list `{value}` is not input codes"));
                }
                set_status("inputs", &codes);
                self.input_names.retain(|k, _| codes.contains(&k.as_str()));
                // Input names (INNM) are class 2.
                if self.class >= 2 {
                    for code in codes {
                        self.query(2, "INNM", &format!("?{code}"));
                    }
                }
            }
            "INNM" => {
                let Some(code) = param.strip_prefix('?').filter(|c| valid_input(c)) else {
                    return Err(format!("input name for `{param}`"));
                };
                self.input_names.insert(code.to_string(), value.to_string());
                set_status("input_names", &self.input_names);
            }
            "FREZ" => match value {
                "0" | "1" => set_status("freeze", &(value == "1")),
                _ => return Err(format!("freeze state `{value}` is not 0 or 1")),
            },
            other => return Err(format!("no status for `{other}`")),
        }
        Ok(())
    }

    fn publish_mutes(&mut self, video: bool, audio: bool) {
        self.video_mute = video;
        self.audio_mute = audio;
        set_status("video_mute", &video);
        set_status("audio_mute", &audio);
        set_status("mute", &(video && audio));
    }

    /// A command was accepted (`OK`): what it changed.
    fn accepted(&mut self, cmd: &str, param: &str) {
        match cmd {
            "POWR" => {
                // Warming up or cooling down now: ask.
                self.query(1, "POWR", "?");
            }
            "INPT" => set_status("input", param),
            "AVMT" => {
                let on = param.ends_with('1');
                let (mut video, mut audio) = (self.video_mute, self.audio_mute);
                if param.starts_with(['1', '3']) {
                    video = on;
                }
                if param.starts_with(['2', '3']) {
                    audio = on;
                }
                self.publish_mutes(video, audio);
            }
            "FREZ" => set_status("freeze", &(param == "1")),
            _ => {}
        }
    }

    fn answer(&mut self, id: CommandId, answer_header: &str, value: &str) -> Verdict {
        let waiting = Some(id);
        let Some(p) = self.pending.get(&id) else {
            return Verdict::Ignore;
        };
        let (cmd, param, kind, text) = (p.cmd().to_string(), p.param.clone(), p.kind, p.text());
        let header = p.header.clone();
        self.unanswered = 0;
        if self.auth_failures > 0 {
            host::info("logged in");
            self.auth_failures = 0;
        }
        if let Some(meaning) = error_meaning(value) {
            let msg = format!("`{text}` refused: {value} ({meaning})");
            if value == "ERR3" && kind == Kind::Query {
                host::info(&msg);
            } else if value == "ERR1" && kind == Kind::Query {
                host::info(&format!("{msg}: not asked again on this connection"));
                self.unsupported.insert(header.clone());
            } else {
                self.set_error(&msg);
            }
            return self.verdict(waiting, Err(msg));
        }
        let result = match kind {
            Kind::Set if value == "OK" => {
                self.accepted(&cmd, &param);
                Ok(())
            }
            Kind::Set => Err(format!(
                "`{text}`: unexpected answer `{answer_header}={}`",
                quote(value.as_bytes())
            )),
            Kind::Query => self
                .apply(&cmd, &param, value)
                .map_err(|e| format!("`{text}`: bad answer: {e}")),
        };
        match &result {
            Ok(()) => self.clear_error(),
            Err(e) => self.set_error(e),
        }
        self.verdict(waiting, result)
    }

    fn on_command_done(&mut self, id: CommandId, result: Result<(), String>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        // The login was answered (a value or an `ERRn`; `PJLINK ERRA` refuses the session
        // instead): now read everything.
        if p.login
            && self.session == Session::Ready
            && (result.is_ok() || matches!(p.outcome, Some(Err(_))))
        {
            self.start_reading();
        }
        let outcome = match (result, p.outcome.clone()) {
            (Ok(()), _) => Ok(Value::Null),
            (Err(_), Some(Err(own))) => Err(own),
            (Err(e), _) if e.starts_with("replaced by") => {
                host::debug(&format!("`{}` {e}", p.text()));
                Err(e)
            }
            (Err(e), _) if e.contains("disconnected") => {
                Err(format!("`{}` not answered: {e}", p.text()))
            }
            (Err(e), _) if p.login => {
                // Never resent (see `queue`): drop the connection, so that the next one
                // logs in with a fresh random number rather than the same digest.
                let msg = match &p.problem {
                    Some(problem) => format!(
                        "no valid answer to the login command `{}` ({problem}): {e}; reconnecting",
                        p.text()
                    ),
                    None => format!(
                        "no answer to the login command `{}`: {e}; reconnecting",
                        p.text()
                    ),
                };
                self.set_error(&msg);
                self.unanswered = 0;
                host::disconnect();
                Err(msg)
            }
            (Err(e), _) => {
                self.unanswered += 1;
                let msg = match &p.problem {
                    Some(problem) => format!("no valid answer to `{}` ({problem}): {e}", p.text()),
                    None => format!("no answer to `{}`: {e}", p.text()),
                };
                self.set_error(&msg);
                if self.unanswered >= MAX_UNANSWERED {
                    host::warn(&format!(
                        "{} commands in a row went unanswered: reconnecting",
                        self.unanswered
                    ));
                    self.unanswered = 0;
                    host::disconnect();
                }
                Err(msg)
            }
        };
        if let Some(call) = p.call
            && let Err(e) = host::reply(call, outcome)
        {
            host::debug(&format!("reply not delivered: {e}"));
        }
    }

    fn apply_settings(&mut self, settings: Settings) -> Result<(), String> {
        let poll = settings.poll_every_ms;
        if !(500..=3_600_000).contains(&poll) {
            return Err(format!("poll_every_ms must be 500..=3600000, got {poll}"));
        }
        let timeout = settings.answer_timeout_ms;
        if !(100..=30_000).contains(&timeout) {
            return Err(format!(
                "answer_timeout_ms must be 100..=30000, got {timeout}"
            ));
        }
        let worst = u64::from(timeout) * (u64::from(RETRIES) + 1);
        if worst >= ENGINE_EXEC_TIMEOUT_MS {
            host::warn(&format!(
                "answer_timeout_ms {timeout} × {} sends = {worst} ms reaches the engine's \
                 {ENGINE_EXEC_TIMEOUT_MS} ms exec timeout (by default): a function the \
                 projector does not answer fails with the engine's timeout instead of the \
                 driver's reason; keep answer_timeout_ms at most {}",
                RETRIES + 1,
                (ENGINE_EXEC_TIMEOUT_MS - 1) / (u64::from(RETRIES) + 1)
            ));
        }
        if self.session != Session::Ready || settings.class != self.settings().class {
            self.class = match settings.class {
                ClassSetting::Class2 => 2,
                _ => 1,
            };
        }
        self.settings = Some(settings);
        Ok(())
    }
}

impl Driver for Pjlink {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        self.apply_settings(settings)?;
        set_status("last_error", &Value::Null);
        Ok(())
    }

    fn on_update(&mut self, settings: Settings) -> Result<(), String> {
        self.apply_settings(settings)?;
        // The password may have changed: try it at once next time.
        self.auth_failures = 0;
        // (While logging in, polling starts once the login is answered.)
        if self.session == Session::Ready && !self.logging_in {
            let poll = self.settings().poll_every_ms;
            if let Err(e) = host::schedule_every(POLL_TIMER, poll) {
                host::warn(&format!("polling not rescheduled: {e}"));
            }
        }
        Ok(())
    }

    fn connected(&mut self) {
        self.session = Session::Greeting;
        self.digest = None;
        self.logging_in = false;
        self.polls = 0;
        self.power = None;
        self.unsupported.clear();
        self.class = match self.settings().class {
            ClassSetting::Class2 => 2,
            _ => 1,
        };
        let wait = u64::from(self.settings().answer_timeout_ms);
        if let Err(e) = host::schedule_in(GREETING_TIMER, wait) {
            host::warn(&format!("greeting timeout not scheduled: {e}"));
        }
    }

    fn disconnected(&mut self) {
        self.session = Session::Down;
        self.digest = None;
        self.logging_in = false;
        for t in [
            POLL_TIMER,
            TRANSITION_TIMER,
            GREETING_TIMER,
            AUTH_RETRY_TIMER,
        ] {
            host::cancel_schedule(t);
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            if let Some(call) = p.call {
                let why = match p.outcome {
                    Some(Err(own)) => own,
                    _ => format!("`{}` not answered: the projector disconnected", p.text()),
                };
                let _ = host::reply(call, Err(why));
            }
        }
    }

    fn received(&mut self, data: &[u8], waiting: Option<CommandId>) -> Verdict {
        if data.len() > MAX_LINE {
            return self.garbage(data, &format!("answer over {MAX_LINE} bytes"), waiting);
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return self.garbage(data, "answer is not text", waiting);
        };
        // Tolerate a `\n` after the `\r` (some devices end lines with `\r\n`).
        let line = text.trim_matches(['\n', ' ']);
        if line.is_empty() {
            return Verdict::Ignore;
        }
        if let Some(rest) = line.strip_prefix("PJLINK ") {
            return self.greeting(rest, waiting);
        }
        let Some((header, value)) = split_answer(line) else {
            return self.garbage(data, "unparseable answer", waiting);
        };
        match waiting {
            Some(id)
                if self
                    .pending
                    .get(&id)
                    .is_some_and(|p| p.cmd() == &header[2..]) =>
            {
                self.answer(id, header, value)
            }
            _ => {
                // Not the waited command's answer (late or unsolicited): keep its value.
                if error_meaning(value).is_none() && value != "OK" {
                    if let Err(e) = self.apply(&header[2..], "", value) {
                        host::debug(&format!("ignored `{}`: {e}", quote(data)));
                    }
                } else {
                    host::debug(&format!("ignored `{}`", quote(data)));
                }
                Verdict::Ignore
            }
        }
    }

    fn on_timer(&mut self, id: u32) {
        match id {
            POLL_TIMER => {
                self.polls += 1;
                self.query(1, "POWR", "?");
                if self.polls.is_multiple_of(SLOW_POLL_EVERY) {
                    self.query(1, "ERST", "?");
                    self.query(1, "LAMP", "?");
                }
            }
            TRANSITION_TIMER => self.query(1, "POWR", "?"),
            GREETING_TIMER if self.session == Session::Greeting => {
                self.set_error("no PJLINK greeting from the projector; reconnecting");
                host::disconnect();
            }
            AUTH_RETRY_TIMER => {
                if let Session::AuthWait(random) = std::mem::take(&mut self.session) {
                    self.login(&random);
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: HostEvent) {
        if let HostEvent::CommandDone { id, result } = event {
            self.on_command_done(id, result);
        }
    }
}

#[driver(
    name = "PJLink Projector",
    module_name = "Projector",
    description = "PJLink class 1 and 2 projectors and displays (TCP port 4352, MD5 authentication)",
    transport = "tcp",
    delimiter = "\r",
    secrets = ["password"]
)]
impl Pjlink {
    /// Switch the projector on (it warms up first: `power_state` "warming") or off
    /// (it cools down: "cooling"). The projector refuses (ERR3) while warming or cooling.
    #[function]
    fn power(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        self.command(call, 1, "POWR", if state { "1" } else { "0" })
    }

    /// Select an input by its PJLink code: "11".."19" RGB, "21".. video, "31".. digital,
    /// "41".. storage, "51".. network, "61".. internal (class 2 also allows A-Z as the
    /// second character, e.g. "3A"). The status `inputs` lists the projector's codes.
    #[function]
    fn input(&mut self, call: CallId, input: InputCode) -> Result<Answer<()>, String> {
        if self.class < 2 && !matches!(input.0.as_bytes()[1], b'1'..=b'9') {
            return Err(format!("input {:?} needs PJLink class 2", input.0));
        }
        let class = if self.class >= 2 { 2 } else { 1 };
        self.command(call, class, "INPT", &input.0)
    }

    /// Mute or unmute both picture and sound (AVMT 31/30).
    #[function]
    fn mute(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        self.mute_av(call, MuteTarget::Both, state)
    }

    /// Mute or unmute the picture only (AVMT 11/10).
    #[function]
    fn video_mute(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        self.mute_av(call, MuteTarget::Video, state)
    }

    /// Mute or unmute the sound only (AVMT 21/20).
    #[function]
    fn audio_mute(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        self.mute_av(call, MuteTarget::Audio, state)
    }

    /// One step up of the speaker volume (class 2 `SVOL 1`). PJLink has no absolute
    /// volume and does not report it.
    #[function]
    fn volume_up(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.class2("volume_up")?;
        self.command(call, 2, "SVOL", "1")
    }

    /// One step down of the speaker volume (class 2 `SVOL 0`).
    #[function]
    fn volume_down(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.class2("volume_down")?;
        self.command(call, 2, "SVOL", "0")
    }

    /// One step up of the microphone volume (class 2 `MVOL 1`).
    #[function]
    fn mic_volume_up(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.class2("mic_volume_up")?;
        self.command(call, 2, "MVOL", "1")
    }

    /// One step down of the microphone volume (class 2 `MVOL 0`).
    #[function]
    fn mic_volume_down(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.class2("mic_volume_down")?;
        self.command(call, 2, "MVOL", "0")
    }

    /// Freeze or unfreeze the picture (class 2 `FREZ`).
    #[function]
    fn freeze(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        self.class2("freeze")?;
        self.command(call, 2, "FREZ", if state { "1" } else { "0" })
    }

    /// Read everything again: class, power, input, mutes, errors, lamps, names and (class
    /// 2) inputs, freeze, serial number and software version. Answers at once; the
    /// statuses follow.
    #[function]
    fn refresh(&mut self) -> Result<(), String> {
        if self.session != Session::Ready {
            return Err(self.not_ready());
        }
        if self.logging_in {
            return Err("the projector is connecting (waiting for its answer to the login)".into());
        }
        self.read_everything(true);
        Ok(())
    }
}

impl Pjlink {
    fn mute_av(
        &mut self,
        call: CallId,
        target: MuteTarget,
        state: bool,
    ) -> Result<Answer<()>, String> {
        let kind = match target {
            MuteTarget::Video => '1',
            MuteTarget::Audio => '2',
            MuteTarget::Both => '3',
        };
        let param = format!("{kind}{}", u8::from(state));
        self.command(call, 1, "AVMT", &param)
    }
}

export_driver!(Pjlink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_the_specs_example() {
        assert_eq!(
            auth_digest("498e4a67", "JBMIAProjectorLink"),
            "5d8409bc1c3fa39749434aa3a5c38682"
        );
    }

    #[test]
    fn answers_split() {
        assert_eq!(split_answer("%1POWR=1"), Some(("%1POWR", "1")));
        assert_eq!(split_answer("%2INNM=HDMI 1"), Some(("%2INNM", "HDMI 1")));
        assert_eq!(split_answer("%1POWR 1"), None);
        assert_eq!(split_answer("%1pOWR=1"), None);
        assert_eq!(split_answer("POWR=1"), None);
        assert_eq!(split_answer("%1POW"), None);
    }

    #[test]
    fn input_codes() {
        for ok in ["11", "31", "5A", "6Z", "19"] {
            assert!(valid_input(ok), "{ok}");
        }
        for bad in ["", "1", "10", "71", "3a", "311", "01", "é1"] {
            assert!(!valid_input(bad), "{bad}");
        }
    }
}
