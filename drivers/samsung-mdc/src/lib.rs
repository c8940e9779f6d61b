//! Samsung displays over MDC (Multiple Display Control), the binary protocol of Samsung's
//! professional displays on TCP port 1515 (MDC Protocol 2015 v13.7c). See
//! `docs/drivers/samsung-mdc.md`.
//!
//! The engine hands the driver raw reads (no framing key): [`protocol::Framer`] buffers
//! them into replies (split replies, several in one read, garbage skipped up to the next
//! `0xAA 0xFF`, at most [`protocol::MAX_FRAME`] bytes held). Every command waits for its
//! reply: an ACK for the same command completes it, a NAK fails it with the display's
//! error code, a reply with a bad checksum is dropped and the command resent.

pub mod protocol;

use lintel_driver_sdk::prelude::*;
use protocol::{BROADCAST_ID, Frame, Framer, Reply, cmd};
use std::collections::BTreeMap;

/// The polling timer.
const POLL_TIMER: u32 = 1;
/// The timer that drops a connection to a display speaking the secured protocol.
const SECURED_TIMER: u32 = 2;
/// How long a connection to a secured display is held before it is dropped (doubling on
/// each connection that finds it secured again), so reconnecting never loops fast.
const SECURED_HOLD_MS: u64 = 2_000;
/// The longest hold.
const SECURED_HOLD_MAX_MS: u64 = 60_000;
/// Priority of operator commands: ahead of queries.
const COMMAND_PRIORITY: u8 = 60;
/// Priority of polls and identity queries.
const QUERY_PRIORITY: u8 = 40;

/// The display's settings.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The display's MDC ID, as set in its menu (0..=254). 254 (0xFE) addresses every
    /// display on the line; some models do not answer it.
    pub display_id: u64,
    /// How often to poll the display's status (power, volume, mute, input) while
    /// connected, in milliseconds (500..=3600000).
    pub poll_every_ms: u64,
    /// How long to wait for the display's reply before resending a command, in
    /// milliseconds (100..=30000).
    pub reply_timeout_ms: u64,
    /// How many times to resend a command that got no reply or a corrupt one (0..=10).
    pub retries: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            display_id: 1,
            poll_every_ms: 10_000,
            reply_timeout_ms: 1_500,
            retries: 2,
        }
    }
}

/// A video input of the display (its MDC input source code is in `INPUTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub enum Input {
    #[serde(rename = "PC")]
    Pc,
    #[serde(rename = "DVI")]
    Dvi,
    #[serde(rename = "AV")]
    Av,
    Component,
    MagicInfo,
    #[serde(rename = "HDMI1")]
    Hdmi1,
    #[serde(rename = "HDMI1_PC")]
    Hdmi1Pc,
    #[serde(rename = "HDMI2")]
    Hdmi2,
    #[serde(rename = "HDMI2_PC")]
    Hdmi2Pc,
    DisplayPort,
    DisplayPort2,
    DisplayPort3,
    #[serde(rename = "HDMI3")]
    Hdmi3,
    #[serde(rename = "HDMI3_PC")]
    Hdmi3Pc,
    #[serde(rename = "HDMI4")]
    Hdmi4,
    #[serde(rename = "HDMI4_PC")]
    Hdmi4Pc,
    #[serde(rename = "HDBaseT")]
    HdBaseT,
}

/// Every input: its code and the name used in `switch_to` and the `input` status.
pub const INPUTS: [(Input, u8, &str); 17] = [
    (Input::Pc, 0x14, "PC"),
    (Input::Dvi, 0x18, "DVI"),
    (Input::Av, 0x0C, "AV"),
    (Input::Component, 0x08, "Component"),
    (Input::MagicInfo, 0x20, "MagicInfo"),
    (Input::Hdmi1, 0x21, "HDMI1"),
    (Input::Hdmi1Pc, 0x22, "HDMI1_PC"),
    (Input::Hdmi2, 0x23, "HDMI2"),
    (Input::Hdmi2Pc, 0x24, "HDMI2_PC"),
    (Input::DisplayPort, 0x25, "DisplayPort"),
    (Input::DisplayPort2, 0x26, "DisplayPort2"),
    (Input::DisplayPort3, 0x27, "DisplayPort3"),
    (Input::Hdmi3, 0x31, "HDMI3"),
    (Input::Hdmi3Pc, 0x32, "HDMI3_PC"),
    (Input::Hdmi4, 0x33, "HDMI4"),
    (Input::Hdmi4Pc, 0x34, "HDMI4_PC"),
    (Input::HdBaseT, 0x55, "HDBaseT"),
];

impl Input {
    /// The MDC input source code.
    pub fn code(self) -> u8 {
        INPUTS
            .iter()
            .find(|(i, _, _)| *i == self)
            .map_or(0, |(_, code, _)| *code)
    }
}

/// The status name of an input code: its name, or `0xNN` for a code outside [`INPUTS`].
pub fn input_name(code: u8) -> String {
    INPUTS.iter().find(|(_, c, _)| *c == code).map_or_else(
        || format!("0x{code:02X}"),
        |(_, _, name)| (*name).to_string(),
    )
}

/// A volume level, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub struct Level(#[schemars(range(min = 0, max = 100))] u8);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u8::try_from(n) {
            Ok(level) if level <= 100 => Ok(Level(level)),
            _ => Err(serde::de::Error::custom(format!(
                "volume must be an integer 0..=100, got {n}"
            ))),
        }
    }
}

/// What to do once a command is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing more (a poll, an identity query).
    Nothing,
    /// Answer the exec with `null`.
    Reply(CallId),
    /// Answer the exec with the display's status.
    ReplyStatus(CallId),
    /// Answer the exec with `null` and ask for the volume (after a volume step).
    ReplyAndQueryVolume(CallId),
}

/// A command waiting for its reply.
#[derive(Debug, Clone)]
struct Pending {
    cmd: u8,
    what: String,
    then: Then,
}

/// The display's last known state, for `query_status`'s answer.
#[derive(Debug, Default, Clone)]
struct Known {
    power: Option<bool>,
    volume: Option<u8>,
    mute: Option<bool>,
    input: Option<String>,
}

/// One value per module.
#[derive(Default)]
pub struct SamsungMdc {
    id: u8,
    poll_ms: u64,
    timeout_ms: u32,
    retries: u8,
    framer: Framer,
    /// Commands sent and not yet done, by id (at most the engine's queue depth).
    pending: BTreeMap<CommandId, Pending>,
    known: Known,
    /// The transport is connected (between `connected` and `disconnected`).
    connected: bool,
    /// The display asked for TLS and a PIN: nothing more is sent on this connection.
    secured: bool,
    /// Connections in a row that found the secured protocol (reset by any good reply).
    secured_strikes: u32,
    /// Why the driver last asked to resend a command (by command id), to explain its
    /// failure if every attempt goes the same way.
    retry_reason: Option<(CommandId, String)>,
}

fn set_status<T: Serialize + ?Sized>(key: &str, value: &T) {
    if let Err(e) = host::set_status(key, value) {
        host::warn(&format!("status `{key}` not published: {e}"));
    }
}

/// Record a device-level problem: the `last_error` status and a warning.
fn problem(message: &str) {
    host::warn(message);
    set_status("last_error", message);
}

impl SamsungMdc {
    /// Check `s` and take it (`on_load` and `on_update`); nothing changes on an error.
    fn configure(&mut self, s: Settings) -> Result<(), String> {
        let id = u8::try_from(s.display_id)
            .ok()
            .filter(|id| *id <= BROADCAST_ID)
            .ok_or_else(|| format!("display_id must be 0..=254, got {}", s.display_id))?;
        if !(500..=3_600_000).contains(&s.poll_every_ms) {
            return Err(format!(
                "poll_every_ms must be 500..=3600000, got {}",
                s.poll_every_ms
            ));
        }
        let timeout = u32::try_from(s.reply_timeout_ms)
            .ok()
            .filter(|t| (100..=30_000).contains(t))
            .ok_or_else(|| {
                format!(
                    "reply_timeout_ms must be 100..=30000, got {}",
                    s.reply_timeout_ms
                )
            })?;
        let retries = u8::try_from(s.retries)
            .ok()
            .filter(|r| *r <= 10)
            .ok_or_else(|| format!("retries must be 0..=10, got {}", s.retries))?;
        self.id = id;
        self.poll_ms = s.poll_every_ms;
        self.timeout_ms = timeout;
        self.retries = retries;
        Ok(())
    }

    /// (Re)start the poll timer at `poll_ms` (a new schedule replaces the old one).
    fn schedule_poll(&self) {
        #[cfg(test)]
        tests::POLL_SCHEDULES.with(|p| p.borrow_mut().push(self.poll_ms));
        #[cfg(not(test))]
        if let Err(e) = host::schedule_every(POLL_TIMER, self.poll_ms) {
            host::warn(&format!("polling not scheduled: {e}"));
        }
    }

    /// Queue `cmd` with `data` for the display, waiting for its reply.
    fn send(
        &mut self,
        cmd: u8,
        data: &[u8],
        what: &str,
        then: Then,
        opts: SendOptions,
    ) -> Result<CommandId, String> {
        if self.secured {
            return Err(SECURED_MESSAGE.into());
        }
        let frame = protocol::encode(cmd, self.id, data);
        let opts = opts
            .wait()
            .timeout_ms(self.timeout_ms)
            .retries(self.retries);
        let id = host::send_with(&frame, opts)?;
        self.pending.insert(
            id,
            Pending {
                cmd,
                what: what.to_string(),
                then,
            },
        );
        Ok(id)
    }

    /// An operator command answered once the display acknowledges it.
    fn command(
        &mut self,
        call: CallId,
        cmd: u8,
        value: u8,
        what: &str,
        name: &str,
    ) -> Result<Answer<()>, String> {
        let opts = SendOptions::default().priority(COMMAND_PRIORITY).name(name);
        self.send(cmd, &[value], what, Then::Reply(call), opts)?;
        Ok(Answer::Later)
    }

    /// A query (no data), logged rather than failed when it cannot be sent.
    fn query(&mut self, cmd: u8, what: &str, name: &str) {
        let opts = SendOptions::default().priority(QUERY_PRIORITY).name(name);
        if let Err(e) = self.send(cmd, &[], what, Then::Nothing, opts) {
            host::debug(&format!("{what} not sent: {e}"));
        }
    }

    /// Apply an ACK's values to the statuses.
    fn apply(&mut self, reply: &Reply) {
        let v = &reply.values;
        match (reply.rcmd, v.as_slice()) {
            (cmd::STATUS, [power, volume, mute, input, ..]) => {
                self.set_power(*power);
                self.set_volume(*volume);
                self.set_mute(*mute);
                self.set_input(*input);
            }
            (cmd::POWER, [power, ..]) => self.set_power(*power),
            (cmd::VOLUME, [volume, ..]) => self.set_volume(*volume),
            (cmd::MUTE, [mute, ..]) => self.set_mute(*mute),
            (cmd::INPUT_SOURCE, [input, ..]) => self.set_input(*input),
            (cmd::SERIAL_NUMBER, _) => set_status("serial", &protocol::ascii(v)),
            (cmd::SOFTWARE_VERSION, _) => set_status("firmware", &protocol::ascii(v)),
            (cmd::MODEL_NAME, _) => set_status("model", &protocol::ascii(v)),
            (cmd::VOLUME_CHANGE, _) => {}
            (rcmd, values) => host::debug(&format!(
                "ignored reply to command 0x{rcmd:02X} with {} value(s)",
                values.len()
            )),
        }
    }

    fn set_power(&mut self, power: u8) {
        let on = power == 1;
        self.known.power = Some(on);
        set_status("power", &on);
    }

    fn set_volume(&mut self, volume: u8) {
        if volume > 100 {
            host::warn(&format!("ignored volume {volume} (outside 0..=100)"));
            return;
        }
        self.known.volume = Some(volume);
        set_status("volume", &volume);
    }

    fn set_mute(&mut self, mute: u8) {
        let on = mute == 1;
        self.known.mute = Some(on);
        set_status("mute", &on);
    }

    fn set_input(&mut self, code: u8) {
        let name = input_name(code);
        set_status("input", &name);
        self.known.input = Some(name);
    }

    /// One reply with a good checksum; its verdict for the waiting command.
    fn reply(&mut self, reply: Reply, waiting: Option<&Pending>) -> Verdict {
        self.secured_strikes = 0;
        if reply.id != self.id && self.id != BROADCAST_ID {
            host::debug(&format!(
                "ignored a reply from display {} (this module talks to display {})",
                reply.id, self.id
            ));
            return Verdict::Ignore;
        }
        let answers = waiting.is_some_and(|p| p.cmd == reply.rcmd);
        if reply.ack {
            self.apply(&reply);
            if answers {
                set_status("last_error", &Value::Null);
                return Verdict::Done;
            }
            return Verdict::Ignore;
        }
        let code = reply.values.first().copied();
        let what = waiting.filter(|_| answers).map_or_else(
            || format!("command 0x{:02X}", reply.rcmd),
            |p| p.what.clone(),
        );
        let reason = match code {
            Some(code) => format!("the display refused {what} (NAK, error code 0x{code:02X})"),
            None => format!("the display refused {what} (NAK)"),
        };
        problem(&reason);
        if answers {
            Verdict::Fail(reason)
        } else {
            Verdict::Ignore
        }
    }
}

/// The engine's reason for commands failed by a disconnect.
const DISCONNECTED: &str = "the device disconnected";

const SECURED_MESSAGE: &str = "the display requires MDC's secured protocol (TLS with a PIN), \
which this driver does not speak: turn off \"Secured Protocol\" in the display's MDC menu";

impl Driver for SamsungMdc {
    type Settings = Settings;

    fn on_load(&mut self, s: Settings) -> Result<(), String> {
        self.configure(s)
    }

    /// New settings while running: checked like `on_load` (refused ones change nothing);
    /// a new `poll_every_ms` reschedules polling at once when connected. The other
    /// settings apply to the next command sent.
    fn on_update(&mut self, s: Settings) -> Result<(), String> {
        let poll_was = self.poll_ms;
        self.configure(s)?;
        if self.connected && !self.secured && self.poll_ms != poll_was {
            self.schedule_poll();
        }
        Ok(())
    }

    fn connected(&mut self) {
        self.framer.clear();
        self.connected = true;
        self.secured = false;
        self.query(cmd::STATUS, "the status query", "poll");
        self.query(cmd::MODEL_NAME, "the model name query", "model");
        self.query(cmd::SERIAL_NUMBER, "the serial number query", "serial");
        self.query(
            cmd::SOFTWARE_VERSION,
            "the software version query",
            "firmware",
        );
        self.schedule_poll();
    }

    fn disconnected(&mut self) {
        self.connected = false;
        host::cancel_schedule(POLL_TIMER);
        host::cancel_schedule(SECURED_TIMER);
        self.framer.clear();
    }

    fn received(&mut self, data: &[u8], waiting: Option<CommandId>) -> Verdict {
        let waiting_id = waiting;
        let waiting = waiting.and_then(|id| self.pending.get(&id).cloned());
        let mut verdict = Verdict::Ignore;
        let mut retry_reason = None;
        // A run of frames with bad checksums (after one, the framer scans again from the
        // next byte, so junk full of `0xAA 0xFF` can make many) is reported once.
        let mut bad_run: Option<(usize, u8, u8)> = None;
        let report_bad_run = |run: &mut Option<(usize, u8, u8)>, reason: &mut Option<String>| {
            if let Some((n, got, want)) = run.take() {
                let why = if n == 1 {
                    format!(
                        "dropped a reply with a bad checksum (0x{got:02X}, expected 0x{want:02X})"
                    )
                } else {
                    format!(
                        "dropped {n} replies with a bad checksum (the last 0x{got:02X}, \
                         expected 0x{want:02X})"
                    )
                };
                problem(&why);
                *reason = Some(why);
            }
        };
        for frame in self.framer.push(data) {
            if !matches!(frame, Frame::BadChecksum { .. }) {
                report_bad_run(&mut bad_run, &mut retry_reason);
            }
            let v = match frame {
                Frame::Reply(reply) => self.reply(reply, waiting.as_ref()),
                Frame::BadChecksum { got, want } => {
                    let n = bad_run.map_or(0, |(n, _, _)| n);
                    bad_run = Some((n + 1, got, want));
                    Verdict::Retry
                }
                Frame::Malformed(why) => {
                    let why = format!("dropped a malformed reply: {why}");
                    problem(&why);
                    retry_reason = Some(why);
                    Verdict::Retry
                }
                Frame::Garbage(n) => {
                    problem(&format!(
                        "skipped {n} byte(s) that start no MDC reply (expected 0xAA 0xFF)"
                    ));
                    Verdict::Ignore
                }
                Frame::Secured => {
                    // Nothing on this connection can succeed: hold it quietly, then drop
                    // it (the engine reconnects, so the display is used again once its
                    // secured protocol is turned off). The hold doubles on each
                    // connection that finds it again.
                    if !self.secured {
                        self.secured = true;
                        host::cancel_schedule(POLL_TIMER);
                        let hold = SECURED_HOLD_MS
                            .saturating_mul(1 << self.secured_strikes.min(10))
                            .min(SECURED_HOLD_MAX_MS);
                        self.secured_strikes = self.secured_strikes.saturating_add(1);
                        host::error(&format!("{SECURED_MESSAGE} (reconnecting in {hold} ms)"));
                        set_status("last_error", SECURED_MESSAGE);
                        if let Err(e) = host::schedule_in(SECURED_TIMER, hold) {
                            host::warn(&format!("cannot schedule the disconnect: {e}"));
                            host::disconnect();
                        }
                    }
                    Verdict::Ignore
                }
            };
            // An answer (done or failed) wins over a request to resend.
            verdict = match (&verdict, v) {
                (Verdict::Done | Verdict::Fail(_), _) => verdict,
                (_, Verdict::Ignore) => verdict,
                (_, v) => v,
            };
        }
        report_bad_run(&mut bad_run, &mut retry_reason);
        match (waiting_id, &verdict) {
            (None, _) => Verdict::Ignore,
            (Some(id), Verdict::Retry) => {
                self.retry_reason = retry_reason.map(|why| (id, why));
                verdict
            }
            _ => verdict,
        }
    }

    fn on_timer(&mut self, id: u32) {
        match id {
            POLL_TIMER => self.query(cmd::STATUS, "the status query", "poll"),
            SECURED_TIMER if self.secured => {
                host::info("dropping the connection to the secured display");
                host::disconnect();
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: HostEvent) {
        let HostEvent::CommandDone { id, result } = event else {
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let retry_reason = match self.retry_reason.take() {
            Some((cmd_id, why)) if cmd_id == id => Some(why),
            other => {
                self.retry_reason = other;
                None
            }
        };
        let result = result.map_err(|e| {
            if self.secured {
                // Already explained in `last_error`.
                return SECURED_MESSAGE.to_string();
            }
            if e.starts_with("replaced by") {
                host::debug(&format!("{}: {e}", p.what));
                return e;
            }
            if e.starts_with("the display refused") {
                return e; // already in `last_error`
            }
            if e == DISCONNECTED {
                // A connection problem: `connected`/`connection_error` tell it.
                host::info(&format!("{} dropped: {e}", p.what));
                return format!("{} failed: {e}", p.what);
            }
            // The command timed out or every reply was corrupt: a partial reply left
            // behind would swallow the next one.
            self.framer.clear();
            let why = match (retry_reason, e.starts_with("the driver asked to retry")) {
                (Some(reason), true) => format!("{} failed: {reason} ({e})", p.what),
                _ => format!("{} failed: {e}", p.what),
            };
            problem(&why);
            why
        });
        let call = match p.then {
            Then::Nothing => return,
            Then::Reply(call) => {
                let _ = host::reply(call, result.map(|()| Value::Null));
                return;
            }
            Then::ReplyAndQueryVolume(call) => {
                let ok = result.is_ok();
                let _ = host::reply(call, result.map(|()| Value::Null));
                if ok {
                    self.query(cmd::VOLUME, "the volume query", "volume?");
                }
                return;
            }
            Then::ReplyStatus(call) => call,
        };
        let k = &self.known;
        let answer = result.map(
            |()| json!({"power": k.power, "volume": k.volume, "mute": k.mute, "input": k.input}),
        );
        let _ = host::reply(call, answer);
    }
}

#[driver(
    name = "Samsung MDC",
    module_name = "Display",
    description = "Samsung professional displays over MDC (binary protocol, TCP port 1515)",
    transport = "tcp"
)]
impl SamsungMdc {
    /// Switch the display on or off; answers once the display acknowledges.
    #[function]
    fn power(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        let what = if state { "power on" } else { "power off" };
        self.command(call, cmd::POWER, u8::from(state), what, "power")
    }

    /// Select the video input; answers once the display acknowledges.
    #[function]
    fn switch_to(&mut self, call: CallId, input: Input) -> Result<Answer<()>, String> {
        let what = format!("input {}", input_name(input.code()));
        self.command(call, cmd::INPUT_SOURCE, input.code(), &what, "input")
    }

    /// Set the volume (0..=100); answers once the display acknowledges.
    #[function]
    fn volume(&mut self, call: CallId, level: Level) -> Result<Answer<()>, String> {
        let what = format!("volume {}", level.0);
        self.command(call, cmd::VOLUME, level.0, &what, "volume")
    }

    /// Raise the volume by one step; the `volume` status follows.
    #[function]
    fn volume_up(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.volume_step(call, 0, "volume up")
    }

    /// Lower the volume by one step; the `volume` status follows.
    #[function]
    fn volume_down(&mut self, call: CallId) -> Result<Answer<()>, String> {
        self.volume_step(call, 1, "volume down")
    }

    /// Mute or unmute the audio; answers once the display acknowledges.
    #[function]
    fn mute(&mut self, call: CallId, state: bool) -> Result<Answer<()>, String> {
        let what = if state { "mute on" } else { "mute off" };
        self.command(call, cmd::MUTE, u8::from(state), what, "mute")
    }

    /// Ask the display for its status now; answers with power, volume, mute and input.
    #[function]
    fn query_status(&mut self, call: CallId) -> Result<Answer<BTreeMap<String, Value>>, String> {
        let opts = SendOptions::default().priority(COMMAND_PRIORITY);
        self.send(
            cmd::STATUS,
            &[],
            "the status query",
            Then::ReplyStatus(call),
            opts,
        )?;
        Ok(Answer::Later)
    }
}

impl SamsungMdc {
    fn volume_step(&mut self, call: CallId, step: u8, what: &str) -> Result<Answer<()>, String> {
        let opts = SendOptions::default().priority(COMMAND_PRIORITY);
        self.send(
            cmd::VOLUME_CHANGE,
            &[step],
            what,
            Then::ReplyAndQueryVolume(call),
            opts,
        )?;
        Ok(Answer::Later)
    }
}

export_driver!(SamsungMdc);

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_driver_sdk::__private::{self, Functions};
    use std::cell::RefCell;

    thread_local! {
        /// The periods `schedule_poll` was asked for (natively there is no host).
        pub(super) static POLL_SCHEDULES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    fn settings(json: Value) -> Settings {
        lintel_driver_sdk::serde_json::from_value(json).unwrap()
    }

    #[test]
    fn on_update_revalidates_and_reschedules_polling_when_connected() {
        POLL_SCHEDULES.with(|p| p.borrow_mut().clear());
        let mut d = SamsungMdc::default();
        d.on_load(settings(json!({}))).unwrap();
        assert_eq!(d.poll_ms, 10_000);
        // Refused: nothing changes.
        let e = d
            .on_update(settings(json!({"poll_every_ms": 10})))
            .unwrap_err();
        assert_eq!(e, "poll_every_ms must be 500..=3600000, got 10");
        let e = d
            .on_update(settings(json!({"poll_every_ms": 2000, "retries": 11})))
            .unwrap_err();
        assert!(e.contains("retries"), "{e}");
        assert_eq!((d.poll_ms, d.retries), (10_000, 2));
        // Not connected: taken, the timer is scheduled on connect.
        d.on_update(settings(json!({"poll_every_ms": 3000})))
            .unwrap();
        assert_eq!(d.poll_ms, 3000);
        assert!(POLL_SCHEDULES.with(|p| p.borrow().is_empty()));
        // Connected: rescheduled at once with the new period.
        d.connected = true;
        d.on_update(settings(
            json!({"poll_every_ms": 2000, "reply_timeout_ms": 800}),
        ))
        .unwrap();
        assert_eq!(POLL_SCHEDULES.with(|p| p.borrow().clone()), [2000]);
        assert_eq!(d.timeout_ms, 800);
        // The same period: nothing to do.
        d.on_update(settings(json!({"poll_every_ms": 2000})))
            .unwrap();
        assert_eq!(POLL_SCHEDULES.with(|p| p.borrow().len()), 1);
        // A secured display is not polled.
        d.secured = true;
        d.on_update(settings(json!({"poll_every_ms": 5000})))
            .unwrap();
        assert_eq!(POLL_SCHEDULES.with(|p| p.borrow().len()), 1);
    }

    #[test]
    fn metadata() {
        let m = SamsungMdc::metadata();
        assert_eq!(m.framing, Framing::Raw);
        assert_eq!(
            m.default_settings,
            json!({"display_id": 1, "poll_every_ms": 10000, "reply_timeout_ms": 1500, "retries": 2})
        );
        let names: Vec<_> = m.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "power",
                "switch_to",
                "volume",
                "volume_up",
                "volume_down",
                "mute",
                "query_status"
            ]
        );
        for f in &m.functions {
            assert!(!f.description.is_empty(), "{} is undocumented", f.name);
        }
        let input = &m.functions[1].parameters[0].schema;
        let names: Vec<_> = INPUTS.iter().map(|(_, _, n)| json!(n)).collect();
        assert_eq!(input["enum"], json!(names));
        let level = &m.functions[2].parameters[0].schema;
        assert_eq!(
            (&level["minimum"], &level["maximum"]),
            (&json!(0), &json!(100))
        );
    }

    #[test]
    fn input_table_matches_serde() {
        for (input, code, name) in INPUTS {
            assert_eq!(json!(input), json!(name));
            assert_eq!(input.code(), code);
            assert_eq!(input_name(code), name);
        }
        assert_eq!(input_name(0x99), "0x99");
    }

    #[test]
    fn settings_refused() {
        for (settings, e) in [
            (
                r#"{"display_id": 255}"#,
                "display_id must be 0..=254, got 255",
            ),
            (
                r#"{"poll_every_ms": 5}"#,
                "poll_every_ms must be 500..=3600000, got 5",
            ),
            (
                r#"{"reply_timeout_ms": 99}"#,
                "reply_timeout_ms must be 100..=30000, got 99",
            ),
            (r#"{"retries": 11}"#, "retries must be 0..=10, got 11"),
        ] {
            assert_eq!(__private::on_load::<SamsungMdc>(settings), Err(e.into()));
        }
        assert_eq!(
            __private::on_load::<SamsungMdc>(r#"{"display_id": 254}"#),
            Ok(())
        );
        let mut d = SamsungMdc::default();
        for bad in [json!(101), json!(-1)] {
            let e = d.dispatch(1, "volume", vec![bad]).unwrap_err();
            assert!(e.contains("0..=100"), "{e}");
        }
        let e = d.dispatch(1, "switch_to", vec![json!("VGA")]).unwrap_err();
        assert!(e.contains("HDMI1"), "{e}");
    }
}
