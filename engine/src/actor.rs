//! `ModuleActor`: one async task per module that owns its sandbox (a wasmtime `Store`)
//! and handles its events in order — transport data, timers, exec requests, results of
//! earlier host work — each call into the guest under a time budget.
//!
//! Actors are tasks on the engine's module executor (a small pool of worker threads).
//! Guest calls are async: a call yields its thread at every epoch tick, so a module that
//! computes for long shares the pool instead of holding a thread, and is interrupted when
//! its budget is spent.

use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Component;

use crate::error::EngineError;
use crate::host::{
    Effect, HostConfig, HttpCall, LogLevel, LogTap, MAX_LOG_LINE, MAX_OPEN_HANDLES, ModuleHost,
    ModuleTarget, OutputLimits, StatusTarget, parse_result, truncate,
};
use crate::queue::{CommandQueue, Verdict};
use crate::runtime::bindings::lintel::driver::types as wit;
use crate::runtime::{Budget, DriverInfo, DriverRuntime, Instance, SandboxClocks, TransportKind};
use crate::state::ModuleStatus;
use crate::timers::Now;
use crate::transport::Outbound;

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Status key the engine sets when a module's sandbox crashed (and clears on restart).
pub const DRIVER_ERROR_KEY: &str = "driver_error";

pub(crate) type ExecReply = oneshot::Sender<Result<Value, EngineError>>;

/// An HTTP answer for a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The outcome of earlier host work, delivered to the driver's `on-event`.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    CommandDone(u64, Result<(), String>),
    Http(u64, Result<HttpAnswer, String>),
    StatusChanged(u64, Option<Value>),
    CallResult(u64, Result<Value, String>),
    MqttMessage(String, Vec<u8>),
}

/// Settings the engine itself uses to reach a module's device: kept from the driver (out
/// of its settings, refused by `secret`), whatever its metadata declares.
pub(crate) const ENGINE_CREDENTIALS: [&str; 4] = ["basic_auth", "bearer_token", "oauth2", "mqtt"];

/// A module's settings as its driver sees them: public settings and declared secrets
/// (plus the engine's own credentials, which the driver cannot read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleSettings {
    pub public: Value,
    pub secrets: HashMap<String, Value>,
    /// The zone its cron timers read in (its system's; UTC if none is set).
    pub time_zone: chrono_tz::Tz,
}

impl ModuleSettings {
    /// Split merged settings: the keys `info` declares as secrets leave the public object,
    /// and so do the engine's own credentials ([`ENGINE_CREDENTIALS`]), which no driver
    /// reads.
    pub fn split(mut merged: Value, info: &DriverInfo) -> Self {
        let mut secrets = HashMap::new();
        if let Some(o) = merged.as_object_mut() {
            for k in info
                .secrets
                .iter()
                .map(String::as_str)
                .chain(ENGINE_CREDENTIALS)
            {
                if let Some(v) = o.remove(k) {
                    secrets.insert(k.to_string(), v);
                }
            }
        }
        ModuleSettings {
            public: merged,
            secrets,
            time_zone: chrono_tz::UTC,
        }
    }
}

pub(crate) enum Event {
    Connected,
    Disconnected,
    /// A make-break connection closed after a quiet spell: like `Disconnected`, but the
    /// device is not reported offline (the next send connects again).
    Idle,
    /// Frames from the device, in order (those already read, batched by the transport).
    Received(Vec<Vec<u8>>),
    Exec {
        function: String,
        args: String,
        reply: ExecReply,
    },
    Host(HostEvent),
    /// Replace the driver with another version, keeping the transport and the queue; if
    /// the new version's `on-load` fails, keep the old one.
    Reload {
        component: Component,
        info: Arc<DriverInfo>,
        budget: Budget,
        settings: ModuleSettings,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// New settings for the running driver (`on-update`).
    Update {
        settings: ModuleSettings,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Answered once every earlier event has been handled (tests, the harness).
    Barrier(oneshot::Sender<()>),
}

/// Time as a module sees it. The engine uses real time; the test harness a virtual clock.
pub trait Clock: SandboxClocks + Send + Sync + 'static {
    fn now(&self) -> Now;
    /// Resolves when the monotonic clock reaches `mono_ms`.
    fn sleep_until(&self, mono_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The real clock.
pub struct SystemClock {
    base: tokio::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            base: tokio::time::Instant::now(),
        }
    }
}

impl SandboxClocks for SystemClock {
    fn wasi_clocks(&self, _: &mut wasmtime_wasi::WasiCtxBuilder) {}
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now {
            mono_ms: self.base.elapsed().as_millis() as u64,
            unix_ms,
        }
    }

    fn sleep_until(&self, mono_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep_until(
            self.base + Duration::from_millis(mono_ms),
        ))
    }
}

/// How a module reaches beyond itself: other modules' status and functions, HTTP, MQTT.
/// Results come back as [`Event::Host`] on `events`. Dropping it cancels everything open.
pub trait ModuleLinks: Send + Sync + 'static {
    fn subscribe(&self, id: u64, target: StatusTarget, events: flume::Sender<Event>);
    fn unsubscribe(&self, id: u64);
    fn call(
        &self,
        id: u64,
        target: ModuleTarget,
        function: String,
        args: Vec<Value>,
        events: flume::Sender<Event>,
    );
    fn http(&self, id: u64, request: HttpCall, events: flume::Sender<Event>);
    fn mqtt_subscribe(&self, filter: String, events: flume::Sender<Event>);
    /// Answer `lookup-system` with a `CallResult` (the system as JSON).
    fn lookup_system(&self, id: u64, system: Option<String>, events: flume::Sender<Event>);
}

/// Everything a module actor needs to run.
pub(crate) struct ModuleActor {
    pub module_id: Arc<str>,
    pub runtime: Arc<DriverRuntime>,
    pub component: Component,
    pub info: Arc<DriverInfo>,
    pub budget: Budget,
    pub settings: ModuleSettings,
    pub limits: OutputLimits,
    pub events_tx: flume::Sender<Event>,
    pub events: flume::Receiver<Event>,
    pub outbound: Option<mpsc::Sender<Outbound>>,
    pub status: ModuleStatus,
    pub clock: Arc<dyn Clock>,
    pub links: Box<dyn ModuleLinks>,
    pub last_error: Arc<Mutex<Option<String>>>,
    pub log_tap: Option<LogTap>,
    pub cancel: CancellationToken,
    /// Make-break: the transport connects when a command is sent, so sends are accepted
    /// while disconnected.
    pub makebreak: bool,
}

/// Why a guest call did not return normally: the instance is no longer usable.
struct Trap(String);

/// The module's mutable state around its instance.
struct Running {
    connected: bool,
    pending_execs: HashMap<u64, ExecReply>,
    next_call: u64,
    /// Events the actor produced for the driver itself (e.g. a replaced command).
    internal: VecDeque<Event>,
    /// `lintel_module_events_total`, looked up once.
    events_total: metrics::Counter,
}

impl ModuleActor {
    fn host(&self, settings: &ModuleSettings) -> ModuleHost {
        ModuleHost::new(HostConfig {
            module_id: self.module_id.clone(),
            transport: self.info.transport,
            status: Some(self.status.clone()),
            settings: settings.public.clone(),
            secrets: settings.secrets.clone(),
            declared_secrets: self.info.secrets.iter().cloned().collect::<HashSet<_>>(),
            limits: self.limits.clone(),
            log_tap: self.log_tap.clone(),
            time_zone: settings.time_zone,
            makebreak: self.makebreak,
        })
    }

    /// A fresh instance of `component`, loaded with `settings` (and told it is connected).
    /// On failure, the queue the host carried is handed back (if it got that far).
    async fn new_instance(
        &self,
        component: &Component,
        budget: Budget,
        mut host: ModuleHost,
        run: &mut Running,
    ) -> Result<Instance, (String, Option<CommandQueue>)> {
        host.connected = run.connected;
        let mut inst = self
            .runtime
            .instantiate(component, host, budget, Some(self.clock.as_ref()))
            .await
            .map_err(|e| (e.to_string(), None))?;
        match self.load(&mut inst, run).await {
            Ok(()) => Ok(inst),
            Err(e) => {
                let queue =
                    std::mem::replace(&mut inst.store.data_mut().host.queue, CommandQueue::new(0));
                Err((e, Some(queue)))
            }
        }
    }

    async fn load(&self, inst: &mut Instance, run: &mut Running) -> Result<(), String> {
        let settings = inst.store.data().host.settings.to_string();
        // What `on-load` publishes counts only if it succeeds: a failing new version must
        // not overwrite the state of the version that keeps running.
        inst.store.data_mut().host.status_held = true;
        let loaded = self
            .guest_call(inst, run, async |g, s| g.call_on_load(s, &settings).await)
            .await;
        let host = &mut inst.store.data_mut().host;
        host.status_held = false;
        match loaded {
            Ok(Ok(())) => {
                host.flush_status();
            }
            Ok(Err(e)) => {
                host.discard_status();
                return Err(format!("on-load refused the settings: {e}"));
            }
            Err(t) => {
                host.discard_status();
                return Err(t.0);
            }
        }
        if run.connected {
            self.guest_call(inst, run, async |g, s| g.call_connected(s).await)
                .await
                .map_err(|t| t.0)?;
        }
        Ok(())
    }

    pub async fn run(mut self) {
        let mut run = Running {
            connected: false,
            pending_execs: HashMap::new(),
            next_call: 1,
            internal: VecDeque::new(),
            events_total: metrics::counter!("lintel_module_events_total"),
        };
        let mut instance: Option<Instance> = None;
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut retry_at: Option<u64> = None;
        loop {
            if instance.is_none() && retry_at.is_none_or(|t| self.clock.now().mono_ms >= t) {
                let host = self.host(&self.settings);
                // Boxed here and below: instantiation's future is most of the actor's
                // size, and an idle module should not carry it.
                match Box::pin(self.new_instance(&self.component, self.budget, host, &mut run))
                    .await
                {
                    Ok(i) => {
                        instance = Some(i);
                        retry_at = None;
                        // A crash reported `connected=false`; the transport may be up.
                        if self.info.transport != TransportKind::None {
                            self.status.set("connected", Value::Bool(run.connected));
                        }
                        if self.last_error.lock().take().is_some() {
                            self.status.set(DRIVER_ERROR_KEY, Value::Null);
                        }
                    }
                    Err((e, _)) => {
                        tracing::error!(module = %self.module_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "module failed to start");
                        self.report_down(&e);
                        retry_at = Some(self.clock.now().mono_ms + backoff.as_millis() as u64);
                        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    }
                }
            }
            let ev = if let Some(ev) = run.internal.pop_front() {
                ev
            } else {
                let deadline = match &instance {
                    Some(i) => {
                        let h = &i.store.data().host;
                        [h.timers.next_due(), h.queue.next_deadline(), h.status_due()]
                            .into_iter()
                            .flatten()
                            .min()
                    }
                    None => retry_at,
                };
                // The fast path: an event is waiting and nothing is due (no futures to set
                // up and tear down for each of a flood of events).
                let due = deadline.is_some_and(|d| self.clock.now().mono_ms >= d);
                let ready = if due || self.cancel.is_cancelled() {
                    None
                } else {
                    self.events.try_recv().ok()
                };
                if let Some(ev) = ready {
                    ev
                } else {
                    let sleep = deadline.map(|d| self.clock.sleep_until(d));
                    // Commands held back while the transport was full go out when it has
                    // room again.
                    let stalled = instance
                        .as_ref()
                        .is_some_and(|i| i.store.data().host.queue.stalled());
                    let room = async {
                        match &self.outbound {
                            Some(out) if stalled => drop(out.reserve().await),
                            _ => std::future::pending().await,
                        }
                    };
                    let wake = async {
                        match sleep {
                            Some(sleep) => tokio::select! { _ = sleep => {}, _ = room => {} },
                            None => room.await,
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => break,
                        _ = wake, if deadline.is_some() || stalled => {
                            if let Some(inst) = instance.as_mut()
                                && let Err(t) = Box::pin(self.tick(inst, &mut run)).await
                            {
                                self.crashed(&mut instance, &mut run, t, None, &mut backoff, &mut retry_at);
                            }
                            continue;
                        }
                        ev = self.events.recv_async() => match ev {
                            Ok(ev) => ev,
                            Err(_) => break,
                        },
                    }
                }
            };
            // A module with a steady stream of events still lets the other modules on its
            // worker thread run: tokio's cooperative budget makes it yield now and then.
            tokio::task::consume_budget().await;
            match ev {
                Event::Barrier(done) => {
                    let _ = done.send(());
                    continue;
                }
                Event::Connected | Event::Disconnected => {
                    run.connected = matches!(ev, Event::Connected);
                    self.status.set("connected", Value::Bool(run.connected));
                }
                Event::Idle => run.connected = false,
                _ => {}
            }
            let Some(inst) = instance.as_mut() else {
                self.while_down(ev);
                continue;
            };
            if !matches!(ev, Event::Received(_)) {
                // Frames are counted one by one as they are handled.
                run.events_total.increment(1);
            }
            let mut crashed_exec: Option<ExecReply> = None;
            let outcome = Box::pin(self.handle(inst, &mut run, ev, &mut crashed_exec)).await;
            match outcome {
                Err(t) => {
                    self.crashed(
                        &mut instance,
                        &mut run,
                        t,
                        crashed_exec,
                        &mut backoff,
                        &mut retry_at,
                    );
                }
                Ok(()) => backoff = RESTART_BACKOFF_MIN,
            }
        }
        for (_, reply) in run.pending_execs.drain() {
            let _ = reply.send(Err(EngineError::ModuleNotRunning(
                self.module_id.to_string(),
            )));
        }
        // Dropping the instance drops its timers; dropping the links cancels their work.
        drop(instance);
        tracing::debug!(module = %self.module_id, "module actor stopped");
    }

    /// Events that arrive while the sandbox is down (waiting to restart).
    fn while_down(&mut self, ev: Event) {
        let why = || self.last_error.lock().clone().unwrap_or_default();
        match ev {
            Event::Exec { reply, .. } => {
                let _ = reply.send(Err(EngineError::Driver(format!(
                    "module is restarting: {}",
                    why()
                ))));
            }
            Event::Reload { reply, .. } | Event::Update { reply, .. } => {
                let _ = reply.send(Err(format!("module is restarting: {}", why())));
            }
            _ => {}
        }
    }

    fn report_down(&self, report: &str) {
        *self.last_error.lock() = Some(report.to_string());
        self.status
            .set(DRIVER_ERROR_KEY, Value::String(report.to_string()));
    }

    /// A trap: drop the instance, clear its state, report, restart with backoff.
    fn crashed(
        &self,
        instance: &mut Option<Instance>,
        run: &mut Running,
        Trap(reason): Trap,
        crashed_exec: Option<ExecReply>,
        backoff: &mut Duration,
        retry_at: &mut Option<u64>,
    ) {
        let stderr = instance
            .as_ref()
            .map(|i| i.store.data().stderr())
            .unwrap_or_default();
        let stderr = truncate(stderr.trim(), MAX_LOG_LINE);
        metrics::counter!("lintel_module_traps_total").increment(1);
        tracing::error!(module = %self.module_id, %reason, guest_stderr = %stderr, restart_in_ms = backoff.as_millis() as u64, "module trapped; restarting it");
        let report = if stderr.is_empty() {
            reason
        } else {
            format!("{reason}; guest stderr: {stderr}")
        };
        // Its state is cleared: what it published may no longer be true.
        self.status.clear();
        self.status.set("connected", Value::Bool(false));
        self.report_down(&report);
        *instance = None;
        *retry_at = Some(self.clock.now().mono_ms + backoff.as_millis() as u64);
        *backoff = (*backoff * 2).min(RESTART_BACKOFF_MAX);
        let fail = |r: ExecReply| {
            let _ = r.send(Err(EngineError::Driver(format!(
                "the driver crashed: {report}"
            ))));
        };
        if let Some(reply) = crashed_exec {
            fail(reply);
        }
        for (_, reply) in run.pending_execs.drain() {
            fail(reply);
        }
        run.internal.clear();
    }

    async fn handle(
        &mut self,
        inst: &mut Instance,
        run: &mut Running,
        ev: Event,
        crashed_exec: &mut Option<ExecReply>,
    ) -> Result<(), Trap> {
        run.pending_execs.retain(|_, r| !r.is_closed());
        match ev {
            Event::Connected => {
                self.guest_call(inst, run, async |g, s| g.call_connected(s).await)
                    .await
            }
            Event::Disconnected | Event::Idle => {
                let mut out = Vec::new();
                inst.store
                    .data_mut()
                    .host
                    .queue
                    .clear("the device disconnected", &mut out);
                inst.store.data_mut().host.queue_actions(out);
                self.apply_effects(inst, run);
                self.guest_call(inst, run, async |g, s| g.call_disconnected(s).await)
                    .await
            }
            Event::Received(frames) => {
                let mut frames = frames.into_iter();
                while let Some(data) = frames.next() {
                    if let Some(tap) = &self.log_tap {
                        tap.traffic("received", &data);
                    }
                    self.received(inst, run, data).await?;
                    // What the frame caused (a finished command) reaches the driver before
                    // the frames after it.
                    if !run.internal.is_empty() {
                        let rest: Vec<_> = frames.collect();
                        if !rest.is_empty() {
                            run.internal.push_back(Event::Received(rest));
                        }
                        break;
                    }
                }
                Ok(())
            }
            Event::Exec {
                function,
                args,
                reply,
            } => {
                let call = run.next_call;
                run.next_call += 1;
                let r = self
                    .guest_call(inst, run, async |g, s| {
                        g.call_exec(s, call, &function, &args).await
                    })
                    .await;
                match r {
                    Ok(Ok(Some(json))) => {
                        let _ = reply.send(parse_result(&json).map_err(EngineError::Driver));
                    }
                    Ok(Ok(None)) => {
                        if run.pending_execs.len() >= MAX_OPEN_HANDLES {
                            let _ = reply.send(Err(EngineError::Driver(format!(
                                "at most {MAX_OPEN_HANDLES} exec calls may wait for an answer"
                            ))));
                        } else {
                            inst.store.data_mut().host.open_calls.insert(call);
                            run.pending_execs.insert(call, reply);
                        }
                    }
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(EngineError::Driver(e)));
                    }
                    Err(t) => {
                        *crashed_exec = Some(reply);
                        return Err(t);
                    }
                }
                Ok(())
            }
            Event::Host(ev) => {
                if !matches!(
                    ev,
                    HostEvent::MqttMessage(..) | HostEvent::StatusChanged(..)
                ) {
                    inst.store.data_mut().host.release_handle();
                }
                let ev = to_wit(ev);
                self.guest_call(inst, run, async |g, s| g.call_on_event(s, &ev).await)
                    .await
            }
            Event::Update { settings, reply } => {
                let host = &mut inst.store.data_mut().host;
                let json: Arc<str> = settings.public.to_string().into();
                let old_settings = std::mem::replace(&mut host.settings, json.clone());
                let old_secrets =
                    std::mem::replace(&mut host.secrets, Arc::new(settings.secrets.clone()));
                let r = self
                    .guest_call(inst, run, async |g, s| g.call_on_update(s, &json).await)
                    .await?;
                if r.is_ok() {
                    inst.store
                        .data_mut()
                        .host
                        .timers
                        .set_zone(settings.time_zone);
                    self.settings = settings;
                } else {
                    let host = &mut inst.store.data_mut().host;
                    host.settings = old_settings;
                    host.secrets = old_secrets;
                }
                let _ = reply.send(r.map_err(|e| format!("on-update refused the settings: {e}")));
                Ok(())
            }
            Event::Reload {
                component,
                info,
                budget,
                settings,
                reply,
            } => {
                let r = self
                    .reload(inst, run, component, info, budget, settings)
                    .await;
                let _ = reply.send(r);
                Ok(())
            }
            Event::Barrier(_) => Ok(()),
        }
    }

    /// One frame from the device; its verdict settles the command waiting for an answer.
    async fn received(
        &mut self,
        inst: &mut Instance,
        run: &mut Running,
        data: Vec<u8>,
    ) -> Result<(), Trap> {
        run.events_total.increment(1);
        let waiting = inst.store.data().host.queue.waiting();
        let verdict = self
            .guest_call(inst, run, async |g, s| {
                g.call_received(s, &data, waiting).await
            })
            .await?;
        if waiting.is_some() {
            let verdict = match verdict {
                wit::Verdict::Ignore => Verdict::Ignore,
                wit::Verdict::Done => Verdict::Done,
                wit::Verdict::Retry => Verdict::Retry,
                wit::Verdict::Fail(why) => Verdict::Fail(why),
            };
            let host = &mut inst.store.data_mut().host;
            let mut out = Vec::new();
            host.queue
                .verdict(verdict, self.clock.now().mono_ms, &mut out);
            host.queue_actions(out);
            self.apply_effects(inst, run);
        }
        Ok(())
    }

    /// Hot reload: a new instance of the new version takes over the queue and the
    /// connection; if it fails to load, the old instance keeps running untouched.
    async fn reload(
        &mut self,
        inst: &mut Instance,
        run: &mut Running,
        component: Component,
        info: Arc<DriverInfo>,
        budget: Budget,
        settings: ModuleSettings,
    ) -> Result<(), String> {
        let old_info = std::mem::replace(&mut self.info, info);
        let mut host = self.host(&settings);
        // The queue moves to the new version (commands it accepts stay queued).
        std::mem::swap(&mut host.queue, &mut inst.store.data_mut().host.queue);
        host.queue.set_capacity(self.limits.queue_depth);
        match Box::pin(self.new_instance(&component, budget, host, run)).await {
            Ok(mut new) => {
                for (_, reply) in run.pending_execs.drain() {
                    let _ = reply.send(Err(EngineError::Driver(
                        "the driver was replaced by a new version before answering".into(),
                    )));
                }
                std::mem::swap(inst, &mut new);
                self.component = component;
                self.budget = budget;
                self.settings = settings;
                tracing::info!(module = %self.module_id, from = %old_info.version, to = %self.info.version, "driver reloaded");
                Ok(())
            }
            Err((e, queue)) => {
                // Roll back: the old instance gets its queue back and goes on.
                self.info = old_info;
                if let Some(queue) = queue {
                    inst.store.data_mut().host.queue = queue;
                }
                tracing::warn!(module = %self.module_id, error = %e, "new driver version failed to load; kept the running version");
                Err(e)
            }
        }
    }

    /// Time passed: fire due timers, time out commands, publish held-back status.
    async fn tick(&mut self, inst: &mut Instance, run: &mut Running) -> Result<(), Trap> {
        let now = self.clock.now();
        let room = self.write_room();
        let host = &mut inst.store.data_mut().host;
        host.now = now;
        host.queue.set_room(room);
        let mut out = Vec::new();
        host.queue.tick(now.mono_ms, &mut out);
        host.queue_actions(out);
        let due = host.timers.take_due(now);
        self.apply_effects(inst, run);
        for id in due {
            run.events_total.increment(1);
            self.guest_call(inst, run, async |g, s| g.call_on_timer(s, id).await)
                .await?;
        }
        Ok(())
    }

    /// Writes the transport can take now (unbounded without one: sends are refused then).
    fn write_room(&self) -> usize {
        self.outbound.as_ref().map_or(usize::MAX, |o| o.capacity())
    }

    /// Call into the guest under the per-event budget, then carry out what it asked for.
    async fn guest_call<T>(
        &self,
        inst: &mut Instance,
        run: &mut Running,
        f: impl AsyncFnOnce(
            &Guest,
            &mut wasmtime::Store<crate::runtime::Sandbox>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, Trap> {
        {
            let room = self.write_room();
            let host = &mut inst.store.data_mut().host;
            host.now = self.clock.now();
            host.connected = run.connected;
            host.queue.set_room(room);
        }
        inst.arm();
        let guest = inst.guest().clone();
        let r = f(&guest, &mut inst.store).await.map_err(trap_reason);
        self.apply_effects(inst, run);
        r
    }

    /// Carry out the effects of the last call and publish its status.
    fn apply_effects(&self, inst: &mut Instance, run: &mut Running) {
        let host = &mut inst.store.data_mut().host;
        host.flush_status();
        if host.effects.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut host.effects);
        for effect in effects {
            match effect {
                Effect::Write(data) => {
                    let Some(out) = &self.outbound else { continue };
                    if let Some(tap) = &self.log_tap {
                        tap.traffic("sent", &data);
                    }
                    if let Err(e) = out.try_send(Outbound::Write(data)) {
                        let why = match e {
                            mpsc::error::TrySendError::Full(_) => "the device is not keeping up",
                            mpsc::error::TrySendError::Closed(_) => "the transport stopped",
                        };
                        host.emit_log(LogLevel::Warn, &format!("command dropped: {why}"));
                    }
                }
                Effect::Disconnect => {
                    if let Some(out) = &self.outbound {
                        let _ = out.try_send(Outbound::Disconnect);
                    }
                }
                Effect::CommandDone(id, r) => run
                    .internal
                    .push_back(Event::Host(HostEvent::CommandDone(id, r))),
                Effect::Subscribe(id, target) => {
                    self.links.subscribe(id, target, self.events_tx.clone())
                }
                Effect::Unsubscribe(id) => {
                    self.links.unsubscribe(id);
                    if host.subscriptions.remove(&id) {
                        host.release_handle();
                    }
                }
                Effect::Call {
                    id,
                    target,
                    function,
                    args,
                } => self
                    .links
                    .call(id, target, function, args, self.events_tx.clone()),
                Effect::Http(id, req) => self.links.http(id, req, self.events_tx.clone()),
                Effect::LookupSystem(id, system) => {
                    self.links.lookup_system(id, system, self.events_tx.clone())
                }
                Effect::MqttSubscribe(filter) => {
                    self.links.mqtt_subscribe(filter, self.events_tx.clone())
                }
                Effect::Reply(call, result) => {
                    if let Some(reply) = run.pending_execs.remove(&call) {
                        let _ = reply.send(result.map_err(EngineError::Driver));
                    }
                }
            }
        }
    }
}

type Guest = crate::runtime::bindings::exports::lintel::driver::guest::Guest;

fn to_wit(ev: HostEvent) -> wit::HostEvent {
    match ev {
        HostEvent::CommandDone(id, r) => wit::HostEvent::CommandDone((id, r)),
        HostEvent::Http(id, r) => wit::HostEvent::HttpResponse((
            id,
            r.map(|a| wit::HttpResponse {
                status: a.status,
                headers: a.headers,
                body: a.body,
            }),
        )),
        HostEvent::StatusChanged(id, v) => {
            wit::HostEvent::StatusChanged((id, v.map(|v| v.to_string())))
        }
        HostEvent::CallResult(id, r) => wit::HostEvent::CallResult((id, r.map(|v| v.to_string()))),
        HostEvent::MqttMessage(topic, payload) => wit::HostEvent::MqttMessage((topic, payload)),
    }
}

/// One line saying why a guest call trapped (deadline, memory limit, panic).
fn trap_reason(e: wasmtime::Error) -> Trap {
    // The wasm backtrace is for developers; operators get the cause in one line.
    tracing::debug!(error = format!("{e:?}"), "guest trap details");
    Trap(match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "ran past its time budget (interrupted)".into(),
        Some(trap) => trap.to_string(),
        None => match e.root_cause().to_string() {
            c if c.contains("growing memory") => format!("exceeded its memory limit ({c})"),
            c => c,
        },
    })
}
