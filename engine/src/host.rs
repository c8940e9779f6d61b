//! The host imports as one module sees them (`lintel:driver/host`). Every import is
//! validated here and never blocks: work that needs the outside world is recorded as an
//! [`Effect`] that the module actor (or the test harness) carries out after the call.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::queue::{CommandQueue, QueueAction, SendOptions};
use crate::runtime::bindings::lintel::driver::types as wit;
use crate::runtime::{TransportKind, bindings};
use crate::state::ModuleStatus;
use crate::timers::{Now, Schedule, Timers};
use crate::transport::MAX_FRAME_BYTES;

pub const MAX_STATUS_KEY: usize = 128;
pub const MAX_STATUS_VALUE: usize = 64 * 1024;
pub const MAX_STATUS_KEYS: usize = 1024;
pub const MAX_LOG_LINE: usize = 4096;
/// Open subscriptions, calls, HTTP requests and pending exec answers per module.
pub const MAX_OPEN_HANDLES: usize = 256;
/// Largest HTTP request body a driver may send.
pub const MAX_HTTP_BODY: usize = 1024 * 1024;

pub use wit::LogLevel;

/// A log line a driver wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A status value in some module of a system (`Display_1.power`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub system: Option<String>,
    pub module: String,
    pub index: u32,
    pub key: String,
}

/// A module in a system (`Display_1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleTarget {
    pub system: Option<String>,
    pub module: String,
    pub index: u32,
}

impl std::fmt::Display for ModuleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.system {
            write!(f, "{s}/")?;
        }
        write!(f, "{}_{}", self.module, self.index)
    }
}

/// An HTTP request a driver asked for, relative to its module's base `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// Work a call into the guest asked for, carried out after the call returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Write(Vec<u8>),
    Disconnect,
    /// A `wait` command finished without reaching the device (replaced, queue cleared).
    CommandDone(u64, Result<(), String>),
    Subscribe(u64, StatusTarget),
    Unsubscribe(u64),
    Call {
        id: u64,
        target: ModuleTarget,
        function: String,
        args: Vec<Value>,
    },
    Http(u64, HttpCall),
    MqttSubscribe(String),
    /// Look up a system (`None`: the module's own); the answer comes as a call result.
    LookupSystem(u64, Option<String>),
    Reply(u64, Result<Value, String>),
}

/// Where a module's log lines go besides `tracing`.
#[derive(Clone)]
pub enum LogTap {
    /// Every line, in order (the test harness collects them).
    Collect(flume::Sender<LogLine>),
    /// Whoever is debugging the module now (`Engine::debug`): nothing is built when nobody
    /// is, and a reader that falls behind the channel's bound misses lines (told by
    /// `Lagged`), never slowing the module.
    Debug(tokio::sync::broadcast::Sender<LogLine>),
}

impl LogTap {
    /// A device frame sent or received, as a debug line for whoever is debugging the
    /// module (as PlaceOS's debug shows a module's traffic); nothing is built when nobody
    /// is, and the test harness's collected lines are the driver's own only.
    pub(crate) fn traffic(&self, direction: &str, data: &[u8]) {
        if let LogTap::Debug(tx) = self
            && tx.receiver_count() > 0
        {
            let _ = tx.send(LogLine {
                level: LogLevel::Debug,
                message: format!("{direction}: {}", printable(data)),
            });
        }
    }

    fn send(&self, level: LogLevel, message: &str) {
        match self {
            LogTap::Collect(tx) => {
                let _ = tx.try_send(LogLine {
                    level,
                    message: message.to_string(),
                });
            }
            LogTap::Debug(tx) if tx.receiver_count() > 0 => {
                let _ = tx.send(LogLine {
                    level,
                    message: message.to_string(),
                });
            }
            LogTap::Debug(_) => {}
        }
    }
}

/// Bytes as text for a log line: printable ASCII as is, the rest escaped (`\r`, `\x02`),
/// cut after 256 bytes.
pub(crate) fn printable(data: &[u8]) -> String {
    const MAX: usize = 256;
    let mut out = String::with_capacity(data.len().min(MAX) + 16);
    for &b in data.iter().take(MAX) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if data.len() > MAX {
        out.push_str(&format!("… ({} bytes)", data.len()));
    }
    out
}

/// Simple token bucket over the module's millisecond clock.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: u32,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    pub fn new(per_second: u32) -> Self {
        Bucket {
            per_second,
            tokens: per_second as f64,
            last_ms: 0,
        }
    }

    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * self.per_second as f64).min(self.per_second as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Milliseconds until one token is available.
    pub fn wait_ms(&self) -> u64 {
        if self.tokens >= 1.0 || self.per_second == 0 {
            0
        } else {
            ((1.0 - self.tokens) * 1000.0 / self.per_second as f64).ceil() as u64
        }
    }
}

/// Per-module limits on what a driver may produce.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Status changes published per second (more are coalesced, latest value wins).
    pub status_per_second: u32,
    /// Log lines per second (more are counted and reported as suppressed).
    pub logs_per_second: u32,
    /// Commands waiting in the queue.
    pub queue_depth: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            status_per_second: 20_000,
            logs_per_second: 200,
            queue_depth: 64,
        }
    }
}

/// Everything a module's host imports read and write. Lives in the module's wasmtime
/// `Store`; the actor moves the queue to a new instance on hot reload (its timers start
/// over: the new version's `on-load` schedules its own).
pub struct ModuleHost {
    pub(crate) module_id: Arc<str>,
    pub(crate) transport: TransportKind,
    pub(crate) connected: bool,
    /// The current time, set before every call into the guest.
    pub(crate) now: Now,
    pub(crate) queue: CommandQueue,
    pub(crate) timers: Timers,
    makebreak: bool,
    pub(crate) status: Option<ModuleStatus>,
    /// Status set during this call, coalesced per key, published after it.
    pending_status: Vec<(String, Value)>,
    /// Where each pending key is in `pending_status` (foldhash: keyed per process, and
    /// several times faster than SipHash on short keys).
    pending_index: foldhash::HashMap<String, usize>,
    status_rate: Bucket,
    /// `lintel_status_changes_total`, looked up once.
    status_changes: metrics::Counter,
    /// While set (during `on-load`), status stays pending instead of being published.
    pub(crate) status_held: bool,
    pub(crate) settings: Arc<str>,
    pub(crate) secrets: Arc<HashMap<String, Value>>,
    pub(crate) declared_secrets: Arc<HashSet<String>>,
    pub(crate) effects: Vec<Effect>,
    next_handle: u64,
    /// Exec calls the driver said it would answer later.
    pub(crate) open_calls: HashSet<u64>,
    /// Open subscriptions (each holds a handle until `unsubscribe`).
    pub(crate) subscriptions: HashSet<u64>,
    /// MQTT topic filters subscribed to (at most `mqtt::MAX_SUBSCRIPTIONS`).
    mqtt_filters: HashSet<String>,
    open_handles: usize,
    log_rate: Bucket,
    pub(crate) logs_suppressed: u64,
    pub(crate) log_tap: Option<LogTap>,
}

/// What a module's host is built from.
pub struct HostConfig {
    pub module_id: Arc<str>,
    pub transport: TransportKind,
    pub status: Option<ModuleStatus>,
    pub settings: Value,
    pub secrets: HashMap<String, Value>,
    pub declared_secrets: HashSet<String>,
    pub limits: OutputLimits,
    pub log_tap: Option<LogTap>,
    /// The zone cron timers read in.
    pub time_zone: chrono_tz::Tz,
    /// Make-break transport: sends are queued while disconnected (they connect it).
    pub makebreak: bool,
}

impl ModuleHost {
    pub fn new(cfg: HostConfig) -> Self {
        ModuleHost {
            module_id: cfg.module_id,
            transport: cfg.transport,
            connected: false,
            now: Now {
                mono_ms: 0,
                unix_ms: 0,
            },
            queue: CommandQueue::new(cfg.limits.queue_depth),
            timers: Timers::in_zone(cfg.time_zone),
            makebreak: cfg.makebreak,
            status: cfg.status,
            pending_status: Vec::new(),
            pending_index: foldhash::HashMap::default(),
            status_rate: Bucket::new(cfg.limits.status_per_second),
            status_changes: metrics::counter!("lintel_status_changes_total"),
            status_held: false,
            settings: cfg.settings.to_string().into(),
            secrets: Arc::new(cfg.secrets),
            declared_secrets: Arc::new(cfg.declared_secrets),
            effects: Vec::new(),
            next_handle: 1,
            open_calls: HashSet::new(),
            subscriptions: HashSet::new(),
            mqtt_filters: HashSet::new(),
            open_handles: 0,
            log_rate: Bucket::new(cfg.limits.logs_per_second),
            logs_suppressed: 0,
            log_tap: cfg.log_tap,
        }
    }

    /// A host for reading a component's metadata: no transport, nothing published.
    pub(crate) fn inert() -> Self {
        ModuleHost::new(HostConfig {
            module_id: "inspect".into(),
            transport: TransportKind::None,
            status: None,
            settings: Value::Object(Default::default()),
            secrets: HashMap::new(),
            declared_secrets: HashSet::new(),
            limits: OutputLimits::default(),
            log_tap: None,
            time_zone: chrono_tz::UTC,
            makebreak: false,
        })
    }

    fn handle(&mut self) -> Result<u64, String> {
        if self.open_handles >= MAX_OPEN_HANDLES {
            return Err(format!(
                "at most {MAX_OPEN_HANDLES} open subscriptions, calls and requests per module"
            ));
        }
        self.open_handles += 1;
        let id = self.next_handle;
        self.next_handle += 1;
        Ok(id)
    }

    /// A subscription, call or request finished (its handle is free again).
    pub(crate) fn release_handle(&mut self) {
        self.open_handles = self.open_handles.saturating_sub(1);
    }

    /// Publish the status this call set, within the module's rate; what is over the rate
    /// stays pending (coalesced by key) for [`flush_status`](Self::flush_status) later.
    /// Returns how many changes were published.
    pub(crate) fn flush_status(&mut self) -> usize {
        if self.status_held {
            return 0;
        }
        let Some(bus) = &self.status else {
            self.pending_status.clear();
            self.pending_index.clear();
            return 0;
        };
        let mut published = 0;
        let mut sent = 0;
        for (key, value) in &mut self.pending_status {
            if !self.status_rate.take(self.now.mono_ms) {
                break;
            }
            sent += 1;
            // Moved out: the entry is drained below.
            if bus.set(key, std::mem::take(value)) {
                published += 1;
            }
        }
        if published > 0 {
            self.status_changes.increment(published as u64);
        }
        self.pending_status.drain(..sent);
        self.pending_index.clear();
        for (i, (k, _)) in self.pending_status.iter().enumerate() {
            self.pending_index.insert(k.clone(), i);
        }
        published
    }

    /// Forget the status set since the last flush (an `on-load` that failed: its module
    /// does not run, or the running version stays).
    pub(crate) fn discard_status(&mut self) {
        self.pending_status.clear();
        self.pending_index.clear();
    }

    /// When pending status may next be published (monotonic ms), if any is pending.
    pub(crate) fn status_due(&self) -> Option<u64> {
        (!self.pending_status.is_empty())
            .then(|| self.now.mono_ms + self.status_rate.wait_ms().max(1))
    }

    pub(crate) fn queue_actions(&mut self, actions: Vec<QueueAction>) {
        for a in actions {
            self.effects.push(match a {
                QueueAction::Write(d) => Effect::Write(d),
                QueueAction::Done(id, r) => Effect::CommandDone(id, r),
            });
        }
    }

    fn write_log(&mut self, level: LogLevel, message: &str) {
        if !self.log_rate.take(self.now.mono_ms) {
            self.logs_suppressed += 1;
            return;
        }
        if self.logs_suppressed > 0 {
            let n = std::mem::take(&mut self.logs_suppressed);
            self.emit_log(
                LogLevel::Warn,
                &format!("{n} log line(s) suppressed (over the rate limit)"),
            );
        }
        self.emit_log(level, message);
    }

    pub(crate) fn emit_log(&self, level: LogLevel, message: &str) {
        let m = truncate(message, MAX_LOG_LINE);
        let id = &*self.module_id;
        match level {
            LogLevel::Trace => tracing::trace!(module = id, "{m}"),
            LogLevel::Debug => tracing::debug!(module = id, "{m}"),
            LogLevel::Info => tracing::info!(module = id, "{m}"),
            LogLevel::Warn => tracing::warn!(module = id, "{m}"),
            LogLevel::Error => tracing::error!(module = id, "{m}"),
        }
        if let Some(tap) = &self.log_tap {
            tap.send(level, m);
        }
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_STATUS_KEY || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1..={MAX_STATUS_KEY} bytes without control characters"
        ));
    }
    Ok(())
}

impl bindings::lintel::driver::types::Host for ModuleHost {}

impl bindings::lintel::driver::host::Host for ModuleHost {
    fn send(&mut self, data: Vec<u8>, options: wit::SendOptions) -> Result<u64, String> {
        match self.transport {
            TransportKind::None | TransportKind::Http => {
                return Err("this driver has no byte transport to send on".into());
            }
            TransportKind::Mqtt => {
                return Err(
                    "the mqtt transport only subscribes (mqtt-subscribe); it does not publish"
                        .into(),
                );
            }
            _ => {}
        }
        if data.len() > MAX_FRAME_BYTES {
            return Err(format!(
                "send of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
                data.len()
            ));
        }
        if !self.connected && !self.makebreak {
            return Err("not connected".into());
        }
        let opts = SendOptions {
            priority: options.priority,
            timeout_ms: options.timeout_ms,
            retries: options.retries,
            wait: options.wait,
            delay_ms: options.delay_ms,
            name: options.name,
        };
        let (id, replaced) = self.queue.push(data, opts)?;
        let mut out: Vec<QueueAction> = replaced.into_iter().collect();
        self.queue.pump(self.now.mono_ms, &mut out);
        self.queue_actions(out);
        Ok(id)
    }

    fn disconnect(&mut self) {
        if self.transport != TransportKind::None {
            self.effects.push(Effect::Disconnect);
        }
    }

    fn set_status(&mut self, key: String, value: String) -> Result<(), String> {
        check_name("status key", &key)?;
        if [
            "connected",
            crate::CONNECTION_ERROR_KEY,
            crate::DRIVER_ERROR_KEY,
        ]
        .contains(&key.as_str())
        {
            return Err(format!("`{key}` is set by the engine"));
        }
        if value.len() > MAX_STATUS_VALUE {
            return Err(format!(
                "status value of {} bytes exceeds the {MAX_STATUS_VALUE}-byte limit",
                value.len()
            ));
        }
        let v: Value =
            serde_json::from_str(&value).map_err(|e| format!("status `{key}` is not JSON: {e}"))?;
        if let Some(&i) = self.pending_index.get(&key) {
            self.pending_status[i].1 = v;
            return Ok(());
        }
        let known = self.status.as_ref().is_some_and(|s| s.has(&key));
        if !known {
            let keys = self.status.as_ref().map_or(0, |s| s.len()) + self.pending_status.len();
            if keys >= MAX_STATUS_KEYS {
                return Err(format!("at most {MAX_STATUS_KEYS} status keys per module"));
            }
        }
        self.pending_index
            .insert(key.clone(), self.pending_status.len());
        self.pending_status.push((key, v));
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.write_log(level, &message);
    }

    fn schedule(&mut self, id: u32, when: wit::Schedule) -> Result<(), String> {
        let when = match when {
            wit::Schedule::In(ms) => Schedule::In(ms),
            wit::Schedule::Every(ms) => Schedule::Every(ms),
            wit::Schedule::At(ms) => Schedule::At(ms),
            wit::Schedule::Cron(expr) => Schedule::Cron(expr),
        };
        self.timers.set(id, when, self.now)
    }

    fn cancel_schedule(&mut self, id: u32) {
        self.timers.cancel(id);
    }

    fn settings(&mut self) -> String {
        self.settings.to_string()
    }

    fn secret(&mut self, key: String) -> Result<Option<String>, String> {
        if crate::actor::ENGINE_CREDENTIALS.contains(&key.as_str()) {
            return Err(format!(
                "`{key}` is the engine's own credential setting: drivers never read it"
            ));
        }
        if !self.declared_secrets.contains(&key) {
            return Err(format!(
                "`{key}` is not a secret this driver declared in its metadata"
            ));
        }
        Ok(self.secrets.get(&key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
    }

    fn subscribe(&mut self, target: wit::StatusRef) -> Result<u64, String> {
        check_name("module name", &target.module)?;
        check_name("status key", &target.key)?;
        if target.index == 0 {
            return Err("module index starts at 1".into());
        }
        let id = self.handle()?;
        self.subscriptions.insert(id);
        self.effects.push(Effect::Subscribe(
            id,
            StatusTarget {
                system: target.system,
                module: target.module,
                index: target.index,
                key: target.key,
            },
        ));
        Ok(id)
    }

    fn unsubscribe(&mut self, id: u64) {
        self.effects.push(Effect::Unsubscribe(id));
    }

    fn call(
        &mut self,
        target: wit::ModuleRef,
        function: String,
        args: String,
    ) -> Result<u64, String> {
        check_name("module name", &target.module)?;
        check_name("function name", &function)?;
        if target.index == 0 {
            return Err("module index starts at 1".into());
        }
        if args.len() > MAX_STATUS_VALUE {
            return Err(format!(
                "call arguments exceed the {MAX_STATUS_VALUE}-byte limit"
            ));
        }
        let args: Vec<Value> = serde_json::from_str(&args)
            .map_err(|e| format!("call arguments must be a JSON array: {e}"))?;
        let id = self.handle()?;
        self.effects.push(Effect::Call {
            id,
            target: ModuleTarget {
                system: target.system,
                module: target.module,
                index: target.index,
            },
            function,
            args,
        });
        Ok(id)
    }

    fn lookup_system(&mut self, system: Option<String>) -> Result<u64, String> {
        if let Some(s) = &system {
            check_name("system id", s)?;
        }
        let id = self.handle()?;
        self.effects.push(Effect::LookupSystem(id, system));
        Ok(id)
    }

    fn http_request(&mut self, request: wit::HttpRequest) -> Result<u64, String> {
        if self.transport != TransportKind::Http {
            return Err("http-request needs a driver with the http transport".into());
        }
        // HTTP's methods, and WebDAV's read methods for CalDAV/CardDAV servers.
        const METHODS: [&str; 9] = [
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND", "REPORT",
        ];
        if !METHODS.contains(&request.method.as_str()) {
            return Err(format!("HTTP method `{}` is not supported", request.method));
        }
        if !request.path.starts_with('/') || request.path.starts_with("//") {
            return Err(format!(
                "path `{}` must start with a single `/` (relative to the module's uri)",
                truncate(&request.path, 200)
            ));
        }
        if request.body.len() > MAX_HTTP_BODY {
            return Err(format!("request body exceeds {MAX_HTTP_BODY} bytes"));
        }
        let id = self.handle()?;
        self.effects.push(Effect::Http(
            id,
            HttpCall {
                method: request.method,
                path: request.path,
                headers: request.headers,
                body: request.body,
                timeout_ms: request.timeout_ms,
            },
        ));
        Ok(id)
    }

    fn mqtt_subscribe(&mut self, topic_filter: String) -> Result<(), String> {
        if self.transport != TransportKind::Mqtt {
            return Err("mqtt-subscribe needs a driver with the mqtt transport".into());
        }
        if topic_filter.is_empty() || topic_filter.len() > 1024 {
            return Err("topic filter must be 1..=1024 bytes".into());
        }
        if !rumqttc::valid_filter(&topic_filter) {
            return Err(format!(
                "`{topic_filter}` is not a valid MQTT topic filter (`+` and `#` stand alone in a level, `#` only last)"
            ));
        }
        if !self.mqtt_filters.contains(&topic_filter) {
            if self.mqtt_filters.len() >= crate::mqtt::MAX_SUBSCRIPTIONS {
                return Err(format!(
                    "a module may subscribe to at most {} topic filters",
                    crate::mqtt::MAX_SUBSCRIPTIONS
                ));
            }
            self.mqtt_filters.insert(topic_filter.clone());
        }
        self.effects.push(Effect::MqttSubscribe(topic_filter));
        Ok(())
    }

    fn reply(&mut self, call: u64, result: Result<String, String>) -> Result<(), String> {
        if !self.open_calls.remove(&call) {
            return Err(format!("no exec call {call} is waiting for an answer"));
        }
        let result = match result {
            Ok(json) => Ok(parse_result(&json)?),
            Err(e) => Err(e),
        };
        self.effects.push(Effect::Reply(call, result));
        Ok(())
    }
}

/// Largest exec result a driver may return.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// An exec result from the driver: valid JSON within the size limit.
pub fn parse_result(json: &str) -> Result<Value, String> {
    if json.len() > MAX_RESULT_BYTES {
        return Err(format!(
            "the driver returned {} bytes, over the {MAX_RESULT_BYTES}-byte result limit",
            json.len()
        ));
    }
    serde_json::from_str(json).map_err(|e| format!("the driver returned invalid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::lintel::driver::host::Host;
    use crate::state::StatusBus;

    fn host(bus: &StatusBus, transport: TransportKind, connected: bool) -> ModuleHost {
        let mut h = ModuleHost::new(HostConfig {
            module_id: "mod-a".into(),
            transport,
            status: Some(bus.module("mod-a")),
            settings: serde_json::json!({}),
            secrets: HashMap::from([("password".to_string(), serde_json::json!("hunter2"))]),
            declared_secrets: HashSet::from(["password".to_string()]),
            limits: OutputLimits {
                queue_depth: 1,
                ..Default::default()
            },
            log_tap: None,
            time_zone: chrono_tz::UTC,
            makebreak: false,
        });
        h.connected = connected;
        h
    }

    fn send_opts() -> wit::SendOptions {
        wit::SendOptions {
            priority: 50,
            timeout_ms: 5000,
            retries: 3,
            wait: true,
            delay_ms: 0,
            name: None,
        }
    }

    /// A driver reads its declared secrets, never the engine's credentials, even when it
    /// declares them.
    #[test]
    fn secret_refuses_the_engines_credentials() {
        let bus = StatusBus::default();
        let mut h = host(&bus, TransportKind::Http, false);
        let secrets = Arc::make_mut(&mut h.secrets);
        let declared = Arc::make_mut(&mut h.declared_secrets);
        for key in crate::actor::ENGINE_CREDENTIALS {
            secrets.insert(key.to_string(), serde_json::json!({"password": "s3cret"}));
            declared.insert(key.to_string());
        }
        assert_eq!(h.secret("password".into()), Ok(Some("hunter2".into())));
        for key in crate::actor::ENGINE_CREDENTIALS {
            let e = h.secret(key.into()).unwrap_err();
            assert_eq!(
                e,
                format!("`{key}` is the engine's own credential setting: drivers never read it")
            );
        }
        assert!(
            h.secret("other".into())
                .unwrap_err()
                .contains("not a secret")
        );
    }

    #[test]
    fn traffic_reads_as_text_with_the_rest_escaped() {
        assert_eq!(printable(b"POWER ON\r\n"), "POWER ON\\r\\n");
        assert_eq!(printable(&[0x02, b'a', 0xff, b'\\']), "\\x02a\\xff\\\\");
        let long = printable(&[b'x'; 300]);
        assert!(
            long.starts_with(&"x".repeat(256)) && long.ends_with("(300 bytes)"),
            "{long}"
        );
    }

    #[test]
    fn the_status_key_cap_applies_to_new_keys_only() {
        let bus = StatusBus::default();
        let mut h = host(&bus, TransportKind::None, false);
        for i in 0..MAX_STATUS_KEYS {
            h.set_status(format!("k{i}"), "1".into()).unwrap();
        }
        let e = h.set_status("one-more".into(), "1".into()).unwrap_err();
        assert!(e.contains("at most 1024"), "{e}");
        h.set_status("k0".into(), "2".into()).unwrap();
        h.flush_status();
        let e = h.set_status("one-more".into(), "1".into()).unwrap_err();
        assert!(e.contains("at most 1024"), "{e}");
        assert_eq!(*bus.get("mod-a", "k0").unwrap(), serde_json::json!(2));
        assert!(bus.get("mod-a", "one-more").is_none());
    }

    #[test]
    fn a_status_flood_in_one_call_is_coalesced_per_key() {
        let bus = StatusBus::default();
        let mut rx = bus.subscribe();
        let mut h = host(&bus, TransportKind::None, false);
        for i in 0..100_000 {
            h.set_status("n".into(), i.to_string()).unwrap();
        }
        assert_eq!(h.flush_status(), 1);
        assert_eq!(
            rx.try_recv().unwrap().value.as_deref(),
            Some(&serde_json::json!(99_999))
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn bad_driver_output_is_refused_with_a_reason() {
        let bus = StatusBus::default();
        let mut h = host(&bus, TransportKind::None, false);
        let cases = [
            (String::new(), "1".to_string(), "status key"),
            ("k".repeat(MAX_STATUS_KEY + 1), "1".into(), "status key"),
            ("a\nb".into(), "1".into(), "control"),
            ("connected".into(), "true".into(), "set by the engine"),
            ("x".into(), "{not json".into(), "not JSON"),
            (
                "x".into(),
                format!("\"{}\"", "y".repeat(MAX_STATUS_VALUE)),
                "limit",
            ),
        ];
        for (key, value, why) in cases {
            let e = h.set_status(key.clone(), value).unwrap_err();
            assert!(e.contains(why), "{key:?}: {e}");
        }
        h.flush_status();
        assert!(bus.snapshot("mod-a").unwrap().is_empty());
        let e = h.send(b"x".to_vec(), send_opts()).unwrap_err();
        assert!(e.contains("no byte transport"), "{e}");
        let e = h
            .http_request(wit::HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                headers: vec![],
                body: vec![],
                timeout_ms: 0,
            })
            .unwrap_err();
        assert!(e.contains("http transport"), "{e}");
        assert!(
            h.reply(7, Ok("1".into()))
                .unwrap_err()
                .contains("no exec call 7")
        );
        assert!(parse_result("{nope").unwrap_err().contains("invalid JSON"));
        let huge = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES));
        assert!(parse_result(&huge).unwrap_err().contains("result limit"));

        let mut h = host(&bus, TransportKind::Tcp, false);
        assert_eq!(
            h.send(b"x".to_vec(), send_opts()).unwrap_err(),
            "not connected"
        );
        h.connected = true;
        let e = h
            .send(vec![0; MAX_FRAME_BYTES + 1], send_opts())
            .unwrap_err();
        assert!(e.contains("limit"), "{e}");
        h.send(b"x".to_vec(), send_opts()).unwrap();
        assert_eq!(h.effects, vec![Effect::Write(b"x".to_vec())]);
        let e = h.send(b"y".to_vec(), send_opts()).unwrap_err();
        assert!(e.contains("command queue full"), "{e}");
    }

    #[test]
    fn only_declared_secrets_are_readable() {
        let bus = StatusBus::default();
        let mut h = host(&bus, TransportKind::None, false);
        assert_eq!(
            h.secret("password".into()).unwrap().as_deref(),
            Some("hunter2")
        );
        let e = h.secret("api_key".into()).unwrap_err();
        assert!(e.contains("not a secret this driver declared"), "{e}");
        assert!(!h.settings().contains("hunter2"));
    }

    #[test]
    fn log_floods_are_rate_limited_and_counted() {
        let bus = StatusBus::default();
        let (tap, lines) = flume::unbounded();
        let mut h = host(&bus, TransportKind::None, false);
        h.log_tap = Some(LogTap::Collect(tap));
        for i in 0..10_000 {
            h.log(LogLevel::Info, format!("line {i}"));
        }
        assert_eq!(lines.len(), 200);
        assert_eq!(h.logs_suppressed, 9_800);
        h.now.mono_ms = 1_000;
        h.log(LogLevel::Info, "after".into());
        let tail: Vec<_> = lines.drain().skip(200).map(|l| l.message).collect();
        assert_eq!(
            tail,
            vec!["9800 log line(s) suppressed (over the rate limit)", "after"]
        );
    }

    #[test]
    fn truncation_respects_utf8() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
