//! The driver test harness: runs a driver component in-process, exactly as the engine
//! runs it (same sandbox, host imports, command queue and timers), against a scripted
//! device, with virtual time. No hardware, no network, no engine process.
//!
//! Driver authors use it through the `lintel-driver-harness` crate; see
//! `docs/driver-guide.md`.
//!
//! ```ignore
//! let mut h = Harness::builder(component).settings(json!({"poll_every_ms": 1000})).start()?;
//! h.expect(b"POWER?\r\n").respond(b"POWER=ON\r\n");
//! h.connect();
//! assert_eq!(h.status("power"), Some(json!(true)));
//! h.advance(Duration::from_secs(1)); // the poll timer fires in virtual time
//! ```

/// Time zones for [`HarnessBuilder::time_zone`] (`chrono_tz::Europe::London`).
pub use chrono_tz;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::actor::{Clock, Event, HostEvent, HttpAnswer, ModuleActor, ModuleLinks, ModuleSettings};
use crate::error::EngineError;
use crate::host::{HttpCall, LogLine, ModuleTarget, OutputLimits, StatusTarget};
use crate::runtime::{Budget, DriverInfo, DriverRuntime, SandboxClocks, SandboxLimits};
use crate::state::StatusBus;
use crate::timers::Now;
use crate::transport::{FrameDecoder, MAX_FRAME_BYTES, Outbound};

/// Where virtual time starts: 2026-01-01T00:00:00Z.
pub const VIRTUAL_EPOCH_UNIX_MS: u64 = 1_767_225_600_000;

/// A clock that moves only when the test says so.
struct VirtualClock {
    now: watch::Sender<u64>,
    start_unix_ms: u64,
    /// The deadline the module last waited for.
    next_wake: Mutex<Option<u64>>,
}

impl VirtualClock {
    fn mono(&self) -> u64 {
        *self.now.borrow()
    }
}

struct VirtualWall(Arc<VirtualClock>);
impl wasmtime_wasi::HostWallClock for VirtualWall {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.start_unix_ms + self.0.mono())
    }
}

struct VirtualMonotonic(Arc<VirtualClock>);
impl wasmtime_wasi::HostMonotonicClock for VirtualMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.mono() * 1_000_000
    }
}

struct SharedClock(Arc<VirtualClock>);

impl SandboxClocks for SharedClock {
    fn wasi_clocks(&self, builder: &mut wasmtime_wasi::WasiCtxBuilder) {
        builder
            .wall_clock(VirtualWall(self.0.clone()))
            .monotonic_clock(VirtualMonotonic(self.0.clone()));
    }
}

impl Clock for SharedClock {
    fn now(&self) -> Now {
        let mono_ms = self.0.mono();
        Now {
            mono_ms,
            unix_ms: self.0.start_unix_ms + mono_ms,
        }
    }

    fn sleep_until(&self, mono_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        *self.0.next_wake.lock() = Some(mono_ms);
        let mut rx = self.0.now.subscribe();
        Box::pin(async move {
            while *rx.borrow_and_update() < mono_ms {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// Answers to what the driver asks of other modules and of HTTP servers.
#[derive(Default)]
struct Script {
    calls: HashMap<(String, String), Result<Value, String>>,
    calls_made: Vec<(String, String, Vec<Value>)>,
    remote_status: HashMap<String, Value>,
    subscriptions: Vec<(u64, String, flume::Sender<Event>)>,
    http: VecDeque<(String, String, Result<HttpAnswer, String>)>,
    http_made: Vec<HttpCall>,
    mqtt_filters: Vec<String>,
    mqtt_events: Option<flume::Sender<Event>>,
    /// `lookup-system` answers by system id ("" for the module's own).
    systems: HashMap<String, Result<Value, String>>,
}

#[derive(Clone, Default)]
struct ScriptedLinks(Arc<Mutex<Script>>);

fn status_path(module: &str, index: u32, key: &str) -> String {
    format!("{module}_{index}.{key}")
}

impl ModuleLinks for ScriptedLinks {
    fn subscribe(&self, id: u64, target: StatusTarget, events: flume::Sender<Event>) {
        let path = status_path(&target.module, target.index, &target.key);
        let mut s = self.0.lock();
        let now = s.remote_status.get(&path).cloned();
        let _ = events.try_send(Event::Host(HostEvent::StatusChanged(id, now)));
        s.subscriptions.push((id, path, events));
    }

    fn unsubscribe(&self, id: u64) {
        self.0.lock().subscriptions.retain(|(s, _, _)| *s != id);
    }

    fn call(
        &self,
        id: u64,
        target: ModuleTarget,
        function: String,
        args: Vec<Value>,
        events: flume::Sender<Event>,
    ) {
        let slug = format!("{}_{}", target.module, target.index);
        let mut s = self.0.lock();
        let answer = s
            .calls
            .get(&(slug.clone(), function.clone()))
            .cloned()
            .unwrap_or_else(|| Err(format!("the test scripted no answer for {slug}.{function}")));
        s.calls_made.push((slug, function, args));
        let _ = events.try_send(Event::Host(HostEvent::CallResult(id, answer)));
    }

    fn http(&self, id: u64, request: HttpCall, events: flume::Sender<Event>) {
        let mut s = self.0.lock();
        let pos = s
            .http
            .iter()
            .position(|(m, p, _)| *m == request.method && *p == request.path);
        let answer = match pos.and_then(|i| s.http.remove(i)) {
            Some((_, _, a)) => a,
            None => Err(format!(
                "the test scripted no answer for {} {}",
                request.method, request.path
            )),
        };
        s.http_made.push(request);
        let _ = events.try_send(Event::Host(HostEvent::Http(id, answer)));
    }

    fn lookup_system(&self, id: u64, system: Option<String>, events: flume::Sender<Event>) {
        let s = self.0.lock();
        let key = system.unwrap_or_default();
        let answer = s.systems.get(&key).cloned().unwrap_or_else(|| {
            Err(match key.as_str() {
                "" => "the test scripted no answer for the module's own system".to_string(),
                other => format!("the test scripted no answer for system {other}"),
            })
        });
        let _ = events.try_send(Event::Host(HostEvent::CallResult(id, answer)));
    }

    fn mqtt_subscribe(&self, filter: String, events: flume::Sender<Event>) {
        let mut s = self.0.lock();
        if !s.mqtt_filters.contains(&filter) {
            s.mqtt_filters.push(filter);
        }
        s.mqtt_events = Some(events);
    }
}

/// One scripted exchange: when the driver writes `expect`, the device answers `respond`.
struct Exchange {
    expect: Vec<u8>,
    respond: Vec<u8>,
}

/// Builds a [`Harness`].
pub struct HarnessBuilder {
    component: Vec<u8>,
    settings: Value,
    limits: SandboxLimits,
    output: OutputLimits,
    time_zone: chrono_tz::Tz,
}

impl HarnessBuilder {
    /// Settings merged over the driver's defaults (like a module's settings).
    pub fn settings(mut self, settings: Value) -> Self {
        self.settings = settings;
        self
    }

    /// Sandbox limits (memory, per-event time budget) for the driver.
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Output limits (status and log rates, command queue depth).
    pub fn output(mut self, output: OutputLimits) -> Self {
        self.output = output;
        self
    }

    /// The time zone cron timers read in (a module takes its system's; UTC by default).
    pub fn time_zone(mut self, zone: chrono_tz::Tz) -> Self {
        self.time_zone = zone;
        self
    }

    /// Load the driver and run its `on-load`. Fails with the driver's or the sandbox's
    /// reason (invalid component, settings refused, trap).
    pub fn start(self) -> Result<Harness, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (runtime, dir) = harness_runtime(self.limits)?;
        let hash = crate::runtime::sha256_hex(&self.component);
        let (hash, info) = if runtime.has_local(&hash) {
            // Compiled by an earlier test: load it (its metadata and world version are
            // checked again below, as at install).
            let component = runtime.component(&hash).map_err(|e| e.to_string())?;
            let info = rt
                .block_on(runtime.info(&hash, &component))
                .map_err(|e| e.to_string())?;
            (hash, info)
        } else {
            rt.block_on(runtime.install(&self.component))
                .map_err(|e| e.to_string())?
        };
        let component = runtime.component(&hash).map_err(|e| e.to_string())?;
        let mut merged = info.default_settings.clone();
        if let (Some(m), Some(o)) = (merged.as_object_mut(), self.settings.as_object()) {
            for (k, v) in o {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut settings = ModuleSettings::split(merged, &info);
        settings.time_zone = self.time_zone;
        let time_zone = self.time_zone;

        let (now, _) = watch::channel(0u64);
        let clock = Arc::new(VirtualClock {
            now,
            start_unix_ms: VIRTUAL_EPOCH_UNIX_MS,
            next_wake: Mutex::new(None),
        });
        let status = Arc::new(StatusBus::default());
        let module_id: Arc<str> = "mod-harness".into();
        let (events_tx, events_rx) = flume::bounded(1024);
        let (out_tx, out_rx) = mpsc::channel(MAX_OUTBOUND);
        let (log_tx, log_rx) = flume::bounded(100_000);
        let links = ScriptedLinks::default();
        let last_error = Arc::new(Mutex::new(None));
        let cancel = CancellationToken::new();
        let framing = info.framing.clone();
        let actor = ModuleActor {
            module_id: module_id.clone(),
            runtime,
            component,
            info: info.clone(),
            budget: Budget::default(),
            settings,
            limits: self.output,
            events_tx: events_tx.clone(),
            events: events_rx,
            outbound: Some(out_tx),
            status: status.module(&module_id),
            clock: Arc::new(SharedClock(clock.clone())),
            links: Box::new(links.clone()),
            last_error: last_error.clone(),
            log_tap: Some(crate::host::LogTap::Collect(log_tx)),
            cancel: cancel.clone(),
            makebreak: false,
        };
        let task = rt.spawn(actor.run());
        let mut h = Harness {
            rt,
            _dir: dir,
            clock,
            info,
            time_zone,
            events: events_tx,
            outbound: out_rx,
            status,
            module_id,
            logs: log_rx,
            log_lines: Vec::new(),
            links,
            last_error,
            cancel,
            task: Some(task),
            script: VecDeque::new(),
            unexpected: Vec::new(),
            written: Vec::new(),
            decoder: FrameDecoder::new(framing, MAX_FRAME_BYTES),
            device_buf: bytes::BytesMut::new(),
            connected: false,
        };
        h.settle();
        match h.error() {
            Some(e) => Err(e),
            None => Ok(h),
        }
    }
}

const MAX_OUTBOUND: usize = 1024;

/// The driver runtime a harness uses. Its components and their precompiled forms are kept
/// in `lintel-harness-cache` next to the test binary's directory (inside the cargo target
/// directory; `LINTEL_HARNESS_CACHE` names another), so a component compiles once, not
/// once per test — nextest runs every test in its own process. Falls back to a temporary
/// directory of its own when that cannot be used.
fn harness_runtime(
    limits: SandboxLimits,
) -> Result<(Arc<DriverRuntime>, Option<tempfile::TempDir>), String> {
    let shared = std::env::var_os("LINTEL_HARNESS_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("lintel-harness-cache"))
        });
    if let Some(dir) = shared
        && let Ok(runtime) = DriverRuntime::new(&dir, limits.clone())
    {
        return Ok((Arc::new(runtime), None));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runtime = DriverRuntime::new(dir.path(), limits).map_err(|e| e.to_string())?;
    Ok((Arc::new(runtime), Some(dir)))
}

/// A driver running in-process against a scripted device, in virtual time.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    _dir: Option<tempfile::TempDir>,
    clock: Arc<VirtualClock>,
    info: Arc<DriverInfo>,
    time_zone: chrono_tz::Tz,
    events: flume::Sender<Event>,
    outbound: mpsc::Receiver<Outbound>,
    status: Arc<StatusBus>,
    module_id: Arc<str>,
    logs: flume::Receiver<LogLine>,
    log_lines: Vec<LogLine>,
    links: ScriptedLinks,
    last_error: Arc<Mutex<Option<String>>>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    script: VecDeque<Exchange>,
    unexpected: Vec<Vec<u8>>,
    written: Vec<Vec<u8>>,
    decoder: FrameDecoder,
    device_buf: bytes::BytesMut,
    connected: bool,
}

/// Scripting one device exchange: `h.expect(b"POWER?\r\n").respond(b"POWER=ON\r\n")`.
pub struct Expect<'h> {
    harness: &'h mut Harness,
    expect: Vec<u8>,
}

impl Expect<'_> {
    /// The device's answer to the expected bytes (may be empty: no answer).
    pub fn respond(self, bytes: &[u8]) {
        self.harness.script.push_back(Exchange {
            expect: self.expect,
            respond: bytes.to_vec(),
        });
    }

    /// The device takes the bytes and answers nothing.
    pub fn silently(self) {
        self.respond(b"");
    }
}

impl Harness {
    /// Load `component` (a `wasm32-wasip2` driver component's bytes).
    pub fn builder(component: impl Into<Vec<u8>>) -> HarnessBuilder {
        HarnessBuilder {
            component: component.into(),
            settings: Value::Object(Default::default()),
            limits: SandboxLimits::default(),
            output: OutputLimits::default(),
            time_zone: chrono_tz::UTC,
        }
    }

    /// What the driver declared about itself.
    pub fn info(&self) -> &DriverInfo {
        &self.info
    }

    /// Script the device: when the driver next writes exactly `bytes` (in script order).
    pub fn expect(&mut self, bytes: &[u8]) -> Expect<'_> {
        Expect {
            harness: self,
            expect: bytes.to_vec(),
        }
    }

    /// The transport connects: the driver's `connected` runs.
    pub fn connect(&mut self) {
        self.connected = true;
        self.send(Event::Connected);
    }

    /// The device goes away: queued commands are dropped and `disconnected` runs.
    pub fn disconnect(&mut self) {
        self.connected = false;
        self.device_buf.clear();
        self.send(Event::Disconnected);
    }

    /// The device sends `bytes` unprompted (framed as the driver declared).
    pub fn device_sends(&mut self, bytes: &[u8]) {
        self.feed(bytes);
        self.settle();
    }

    /// Call a function as the API would: the arguments (a JSON array; a single value is
    /// one argument; `null` is none) are checked against the function's schemas first.
    /// `Err` carries that refusal, the driver's, a crash, or "no answer yet" for an exec
    /// the driver answers later.
    pub fn exec(&mut self, function: &str, args: Value) -> Result<Value, String> {
        let mut pending = self.exec_later(function, args)?;
        self.settle();
        pending.result()
    }

    /// New settings while the driver runs, as when an operator edits them: merged over
    /// the driver's defaults as at start, then its `on-update`. `Err` with the driver's
    /// reason when it refuses them (it keeps running with the old ones).
    pub fn update_settings(&mut self, settings: Value) -> Result<(), String> {
        let mut merged = self.info.default_settings.clone();
        if let (Some(m), Some(o)) = (merged.as_object_mut(), settings.as_object()) {
            for (k, v) in o {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut settings = ModuleSettings::split(merged, &self.info);
        settings.time_zone = self.time_zone;
        let (reply, answer) = oneshot::channel();
        self.send(Event::Update { settings, reply });
        self.settle();
        self.rt
            .block_on(answer)
            .map_err(|_| "the driver stopped".to_string())?
    }

    /// Start a call whose answer comes later (after device traffic or virtual time).
    pub fn exec_later(&mut self, function: &str, args: Value) -> Result<PendingExec, String> {
        let args = match args {
            Value::Array(a) => a,
            Value::Null => vec![],
            one => vec![one],
        };
        let f = self.info.function(function).ok_or_else(|| {
            EngineError::FunctionNotFound {
                module: "the driver".into(),
                function: function.into(),
            }
            .to_string()
        })?;
        crate::check_arguments(f, &args).map_err(|e| e.to_string())?;
        let args = Value::Array(args);
        let (reply, answer) = oneshot::channel();
        self.send(Event::Exec {
            function: function.to_string(),
            args: args.to_string(),
            reply,
        });
        Ok(PendingExec { answer })
    }

    /// Move virtual time forward, firing timers and command timeouts in order.
    pub fn advance(&mut self, by: Duration) {
        let target = self.clock.mono() + by.as_millis() as u64;
        loop {
            // The module's next deadline (refreshed every time it waits again).
            let next = *self.clock.next_wake.lock();
            match next {
                Some(t) if t <= target && t > self.clock.mono() => {
                    self.clock.now.send_replace(t);
                    self.settle();
                }
                _ => break,
            }
        }
        self.clock.now.send_replace(target);
        self.settle();
    }

    /// Milliseconds of virtual time since the harness started.
    pub fn now_ms(&self) -> u64 {
        self.clock.mono()
    }

    /// A status value the driver published (`None` if never set).
    pub fn status(&self, key: &str) -> Option<Value> {
        self.status.get(&self.module_id, key).map(|v| (*v).clone())
    }

    /// Every status value.
    pub fn statuses(&self) -> std::collections::BTreeMap<String, Value> {
        self.status.snapshot(&self.module_id).unwrap_or_default()
    }

    /// Every log line so far.
    pub fn logs(&mut self) -> &[LogLine] {
        self.log_lines.extend(self.logs.drain());
        &self.log_lines
    }

    /// Every write the driver made to the device, in order.
    pub fn written(&self) -> &[Vec<u8>] {
        &self.written
    }

    /// Writes that did not match the script.
    pub fn unexpected(&self) -> &[Vec<u8>] {
        &self.unexpected
    }

    /// Panics unless every scripted exchange happened and nothing unexpected was written.
    #[track_caller]
    pub fn assert_script_done(&self) {
        let left: Vec<String> = self
            .script
            .iter()
            .map(|e| String::from_utf8_lossy(&e.expect).into_owned())
            .collect();
        let extra: Vec<String> = self
            .unexpected
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(
            left.is_empty() && extra.is_empty(),
            "device script not met: still expected {left:?}; unexpected writes {extra:?}"
        );
    }

    /// Why the sandbox is down (a trap or a refused `on-load`), if it is.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Answer calls the driver makes to `module_slug.function` (e.g. `Display_1`, `power`).
    pub fn answer_call(
        &mut self,
        module_slug: &str,
        function: &str,
        answer: Result<Value, String>,
    ) {
        self.links
            .0
            .lock()
            .calls
            .insert((module_slug.into(), function.into()), answer);
    }

    /// Calls the driver made: (module slug, function, arguments).
    pub fn calls(&self) -> Vec<(String, String, Vec<Value>)> {
        self.links.0.lock().calls_made.clone()
    }

    /// Set another module's status (`Display_1.power`); subscribers are told.
    pub fn set_remote_status(&mut self, path: &str, value: Value) {
        {
            let mut s = self.links.0.lock();
            s.remote_status.insert(path.into(), value.clone());
            for (id, p, events) in &s.subscriptions {
                if p == path {
                    let _ = events.try_send(Event::Host(HostEvent::StatusChanged(
                        *id,
                        Some(value.clone()),
                    )));
                }
            }
        }
        self.settle();
    }

    /// Answer the driver's next `method path` HTTP request with `answer`.
    pub fn answer_http(&mut self, method: &str, path: &str, answer: Result<HttpAnswer, String>) {
        self.links
            .0
            .lock()
            .http
            .push_back((method.into(), path.into(), answer));
    }

    /// Answer the driver's `lookup-system` of `system` (`None`: its own) with `answer`
    /// (the JSON the engine gives: `{"id", "name", "zones", "modules": [{"module",
    /// "index", "id", "driver", "running"}]}`).
    pub fn answer_lookup(&mut self, system: Option<&str>, answer: Result<Value, String>) {
        self.links
            .0
            .lock()
            .systems
            .insert(system.unwrap_or_default().to_string(), answer);
    }

    /// HTTP requests the driver made.
    pub fn http_requests(&self) -> Vec<HttpCall> {
        self.links.0.lock().http_made.clone()
    }

    /// The broker delivers a message on `topic`: the driver's `on-event(mqtt-message)`
    /// runs if one of its topic filters matches (as a broker would decide). Returns
    /// whether it was delivered.
    pub fn mqtt_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        let events = {
            let s = self.links.0.lock();
            if !s.mqtt_filters.iter().any(|f| rumqttc::matches(topic, f)) {
                return false;
            }
            s.mqtt_events.clone()
        };
        let Some(events) = events else {
            return false;
        };
        let ev = Event::Host(HostEvent::MqttMessage(topic.into(), payload.to_vec()));
        if self.rt.block_on(events.send_async(ev)).is_err() {
            return false;
        }
        self.settle();
        true
    }

    /// The MQTT topic filters the driver subscribed to, in order.
    pub fn mqtt_subscriptions(&self) -> Vec<String> {
        self.links.0.lock().mqtt_filters.clone()
    }

    fn send(&mut self, ev: Event) {
        let events = self.events.clone();
        if self.rt.block_on(events.send_async(ev)).is_err() {
            return;
        }
        self.settle();
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.device_buf.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.device_buf) {
                Ok(Some(frame)) => {
                    let events = self.events.clone();
                    let _ = self
                        .rt
                        .block_on(events.send_async(Event::Received(vec![frame])));
                }
                Ok(None) => return,
                Err(e) => {
                    // As the engine does: a framing error drops the connection.
                    self.log_lines.push(LogLine {
                        level: crate::host::LogLevel::Warn,
                        message: format!("device stream error: {e}; disconnected"),
                    });
                    self.device_buf.clear();
                    self.connected = false;
                    let events = self.events.clone();
                    let _ = self.rt.block_on(events.send_async(Event::Disconnected));
                    return;
                }
            }
        }
    }

    /// Run until the driver and the scripted device have nothing left to do.
    fn settle(&mut self) {
        loop {
            let (done, wait) = oneshot::channel();
            let events = self.events.clone();
            let barrier = self.rt.block_on(async move {
                events.send_async(Event::Barrier(done)).await.ok()?;
                wait.await.ok()
            });
            if barrier.is_none() {
                return; // the actor stopped
            }
            let mut wrote = false;
            while let Ok(out) = self.outbound.try_recv() {
                wrote = true;
                match out {
                    Outbound::Write(bytes) => self.device_write(bytes),
                    Outbound::Disconnect => {
                        if self.connected {
                            self.connected = false;
                            self.device_buf.clear();
                            let events = self.events.clone();
                            let _ = self.rt.block_on(events.send_async(Event::Disconnected));
                        }
                    }
                }
            }
            if !wrote {
                return;
            }
        }
    }

    fn device_write(&mut self, bytes: Vec<u8>) {
        self.written.push(bytes.clone());
        if !self.connected {
            self.unexpected.push(bytes);
            return;
        }
        if self.script.front().is_some_and(|e| e.expect == bytes) {
            let e = self.script.pop_front().expect("checked");
            if !e.respond.is_empty() {
                self.feed(&e.respond);
            }
        } else {
            self.unexpected.push(bytes);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = self.rt.block_on(task);
        }
    }
}

/// An exec whose answer may come later.
pub struct PendingExec {
    answer: oneshot::Receiver<Result<Value, EngineError>>,
}

impl PendingExec {
    /// The answer, if the driver has given it (call after `settle`-ing actions such as
    /// [`Harness::device_sends`] or [`Harness::advance`]).
    pub fn result(&mut self) -> Result<Value, String> {
        match self.answer.try_recv() {
            Ok(r) => r.map_err(|e| match e {
                EngineError::Driver(m) => m,
                other => other.to_string(),
            }),
            Err(oneshot::error::TryRecvError::Empty) => {
                Err("no answer yet (the driver answers later)".into())
            }
            Err(oneshot::error::TryRecvError::Closed) => Err("the module stopped".into()),
        }
    }
}
