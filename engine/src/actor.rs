//! `ModuleActor`: one thread per module that owns its sandbox and handles its events in
//! order — transport data, timers, exec requests — each call under a time budget.
//!
//! Actors run on their own OS threads (not tokio workers): guest calls are synchronous
//! CPU work, and WASI's blocking shims must not run inside an async context.

use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{Component, Linker};

use crate::error::EngineError;
use crate::runtime::bindings::lintel::driver::types::LogLevel;
use crate::runtime::{DriverRuntime, Instance, Sandbox};
use crate::state::ModuleStatus;
use crate::transport::MAX_FRAME_BYTES;

pub(crate) const MAX_STATUS_KEY: usize = 128;
pub(crate) const MAX_STATUS_VALUE: usize = 64 * 1024;
pub(crate) const MAX_STATUS_KEYS: usize = 1024;
pub(crate) const MAX_LOG_LINE: usize = 4096;
pub(crate) const MAX_TIMERS: usize = 64;
const MIN_TIMER_MS: u32 = 10;
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(crate) type ExecReply = oneshot::Sender<Result<String, EngineError>>;

pub(crate) enum Event {
    Connected,
    Disconnected,
    Received(Vec<u8>),
    Timer(u32),
    Exec {
        function: String,
        args: String,
        reply: ExecReply,
    },
    Stop,
}

/// The host imports as one module sees them.
pub(crate) struct ModuleHost {
    module_id: Arc<str>,
    outbound: Option<mpsc::Sender<Vec<u8>>>,
    connected: Arc<AtomicBool>,
    status: ModuleStatus,
    status_keys: usize,
    timers: Timers,
}

struct Timers {
    rt: tokio::runtime::Handle,
    events: flume::Sender<Event>,
    active: HashMap<u32, tokio::task::JoinHandle<()>>,
}

impl Timers {
    fn set(&mut self, id: u32, every: Option<Duration>, delay: Duration) -> Result<(), String> {
        if !self.active.contains_key(&id) && self.active.len() >= MAX_TIMERS {
            return Err(format!("at most {MAX_TIMERS} timers per module"));
        }
        let events = self.events.clone();
        let task = self.rt.spawn(async move {
            tokio::time::sleep(delay).await;
            loop {
                // A full queue skips this tick: timers coalesce rather than pile up.
                if let Err(flume::TrySendError::Disconnected(_)) = events.try_send(Event::Timer(id))
                {
                    return;
                }
                match every {
                    Some(period) => tokio::time::sleep(period).await,
                    None => return,
                }
            }
        });
        if let Some(old) = self.active.insert(id, task) {
            old.abort();
        }
        Ok(())
    }

    fn cancel(&mut self, id: u32) {
        if let Some(t) = self.active.remove(&id) {
            t.abort();
        }
    }

    fn cancel_all(&mut self) {
        for (_, t) in self.active.drain() {
            t.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

impl ModuleHost {
    fn log_line(&self, level: LogLevel, message: &str) {
        let m = truncate(message, MAX_LOG_LINE);
        let id = &*self.module_id;
        match level {
            LogLevel::Trace => tracing::trace!(module = id, "{m}"),
            LogLevel::Debug => tracing::debug!(module = id, "{m}"),
            LogLevel::Info => tracing::info!(module = id, "{m}"),
            LogLevel::Warn => tracing::warn!(module = id, "{m}"),
            LogLevel::Error => tracing::error!(module = id, "{m}"),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl crate::runtime::bindings::lintel::driver::host::Host for ModuleHost {
    fn send(&mut self, data: Vec<u8>) -> Result<(), String> {
        let Some(out) = &self.outbound else {
            return Err("this driver has no transport".into());
        };
        if data.len() > MAX_FRAME_BYTES {
            return Err(format!(
                "send of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
                data.len()
            ));
        }
        if !self.connected.load(Ordering::SeqCst) {
            return Err("not connected".into());
        }
        out.try_send(data).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "send queue full".to_string(),
            mpsc::error::TrySendError::Closed(_) => "transport stopped".to_string(),
        })
    }

    fn set_status(&mut self, key: String, value: String) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_STATUS_KEY || key.chars().any(char::is_control) {
            return Err(format!(
                "status key must be 1..={MAX_STATUS_KEY} bytes without control characters"
            ));
        }
        if key == "connected" {
            return Err("`connected` is set by the engine from the transport".into());
        }
        if value.len() > MAX_STATUS_VALUE {
            return Err(format!(
                "status value of {} bytes exceeds the {MAX_STATUS_VALUE}-byte limit",
                value.len()
            ));
        }
        let v: Value =
            serde_json::from_str(&value).map_err(|e| format!("status `{key}` is not JSON: {e}"))?;
        // The key cap applies to new keys only: existing keys can always be updated.
        let existed = self.status.has(&key);
        if !existed && self.status_keys >= MAX_STATUS_KEYS {
            return Err(format!("at most {MAX_STATUS_KEYS} status keys per module"));
        }
        if !existed {
            self.status_keys += 1;
        }
        if self.status.set(&key, v) {
            metrics::counter!("lintel_status_changes_total").increment(1);
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.log_line(level, &message);
    }

    fn schedule_every(&mut self, id: u32, period_ms: u32) {
        let period = Duration::from_millis(period_ms.max(MIN_TIMER_MS) as u64);
        if let Err(e) = self.timers.set(id, Some(period), period) {
            self.log_line(LogLevel::Warn, &e);
        }
    }

    fn schedule_in(&mut self, id: u32, delay_ms: u32) {
        if let Err(e) = self
            .timers
            .set(id, None, Duration::from_millis(delay_ms as u64))
        {
            self.log_line(LogLevel::Warn, &e);
        }
    }

    fn cancel_schedule(&mut self, id: u32) {
        self.timers.cancel(id);
    }
}

/// Everything a module actor needs to run.
pub(crate) struct ModuleActor {
    pub module_id: Arc<str>,
    pub runtime: Arc<DriverRuntime>,
    pub linker: Arc<Linker<Sandbox<ModuleHost>>>,
    pub component: Component,
    pub settings: Value,
    pub events_tx: flume::Sender<Event>,
    pub events: flume::Receiver<Event>,
    pub outbound: Option<mpsc::Sender<Vec<u8>>>,
    pub connected: Arc<AtomicBool>,
    pub status: ModuleStatus,
    pub rt: tokio::runtime::Handle,
    pub last_error: Arc<Mutex<Option<String>>>,
}

/// Why a guest call did not return normally: the instance is no longer usable.
struct Trap(String);

impl ModuleActor {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("module-{}", self.module_id))
            .spawn(move || self.run())
    }

    fn new_instance(&self) -> Result<Instance<ModuleHost>, String> {
        let host = ModuleHost {
            module_id: self.module_id.clone(),
            outbound: self.outbound.clone(),
            connected: self.connected.clone(),
            status: self.status.clone(),
            status_keys: 0,
            timers: Timers {
                rt: self.rt.clone(),
                events: self.events_tx.clone(),
                active: HashMap::new(),
            },
        };
        let mut inst = self
            .runtime
            .instantiate(&self.linker, &self.component, host)
            .map_err(|e| e.to_string())?;
        let settings = self.settings.to_string();
        let loaded = call(&mut inst, |g, s| g.call_on_load(s, &settings)).map_err(|t| t.0)?;
        loaded.map_err(|e| format!("on-load refused the settings: {e}"))?;
        // After a restart the transport may still be up: tell the new instance, and put
        // back the `connected` status that the crash cleared.
        if self.connected.load(Ordering::SeqCst) {
            self.status.set("connected", Value::Bool(true));
            call(&mut inst, |g, s| g.call_connected(s)).map_err(|t| t.0)?;
        }
        Ok(inst)
    }

    fn run(self) {
        let mut instance: Option<Instance<ModuleHost>> = None;
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut retry_at: Option<Instant> = None;
        loop {
            if instance.is_none() && retry_at.is_none_or(|t| Instant::now() >= t) {
                match self.new_instance() {
                    Ok(i) => {
                        instance = Some(i);
                        retry_at = None;
                        *self.last_error.lock() = None;
                    }
                    Err(e) => {
                        tracing::error!(module = %self.module_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "module failed to start");
                        *self.last_error.lock() = Some(e);
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    }
                }
            }
            let ev = match retry_at {
                Some(t) => match self
                    .events
                    .recv_timeout(t.saturating_duration_since(Instant::now()))
                {
                    Ok(ev) => ev,
                    Err(flume::RecvTimeoutError::Timeout) => continue,
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                },
                None => match self.events.recv() {
                    Ok(ev) => ev,
                    Err(_) => break,
                },
            };
            if matches!(ev, Event::Stop) {
                break;
            }
            let Some(inst) = instance.as_mut() else {
                if let Event::Exec { reply, .. } = ev {
                    let why = self.last_error.lock().clone().unwrap_or_default();
                    let _ = reply.send(Err(EngineError::Driver(format!(
                        "module is restarting: {why}"
                    ))));
                }
                continue;
            };
            metrics::counter!("lintel_module_events_total").increment(1);
            // An exec whose call traps is answered only after the crash is contained, so
            // the caller never sees the crashed instance's state.
            let mut crashed_exec: Option<ExecReply> = None;
            let outcome = match ev {
                Event::Connected => call(inst, |g, s| g.call_connected(s)),
                Event::Disconnected => {
                    inst.store.data_mut().host.timers.cancel_all();
                    call(inst, |g, s| g.call_disconnected(s))
                }
                Event::Received(data) => call(inst, |g, s| g.call_received(s, &data)),
                Event::Timer(id) => call(inst, |g, s| g.call_on_timer(s, id)),
                Event::Exec {
                    function,
                    args,
                    reply,
                } => match call(inst, |g, s| g.call_exec(s, &function, &args)) {
                    Ok(r) => {
                        let _ = reply.send(r.map_err(EngineError::Driver));
                        Ok(())
                    }
                    Err(t) => {
                        crashed_exec = Some(reply);
                        Err(t)
                    }
                },
                Event::Stop => unreachable!("handled above"),
            };
            if let Err(Trap(reason)) = outcome {
                let stderr = inst.store.data().stderr();
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
                *self.last_error.lock() = Some(report.clone());
                instance = None;
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                if let Some(reply) = crashed_exec {
                    let _ = reply.send(Err(EngineError::Driver(format!(
                        "the driver crashed: {report}"
                    ))));
                }
            } else {
                backoff = RESTART_BACKOFF_MIN;
            }
        }
        // Dropping the instance drops its timers.
        drop(instance);
        tracing::debug!(module = %self.module_id, "module actor stopped");
    }
}

type Guest = crate::runtime::bindings::exports::lintel::driver::guest::Guest;

/// Call into the guest under the per-event time budget. A trap (deadline, memory limit,
/// panic) comes back as `Trap` and poisons the instance.
fn call<T>(
    inst: &mut Instance<ModuleHost>,
    f: impl FnOnce(&Guest, &mut wasmtime::Store<Sandbox<ModuleHost>>) -> wasmtime::Result<T>,
) -> Result<T, Trap> {
    inst.arm();
    let guest = inst.driver.lintel_driver_guest();
    f(guest, &mut inst.store).map_err(|e| {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::lintel::driver::host::Host;
    use crate::state::StatusBus;

    fn host(
        bus: &StatusBus,
        outbound: Option<mpsc::Sender<Vec<u8>>>,
        connected: bool,
    ) -> ModuleHost {
        let (events, _) = flume::bounded(4);
        ModuleHost {
            module_id: "mod-a".into(),
            outbound,
            connected: Arc::new(AtomicBool::new(connected)),
            status: bus.module("mod-a"),
            status_keys: 0,
            timers: Timers {
                rt: tokio::runtime::Handle::current(),
                events,
                active: HashMap::new(),
            },
        }
    }

    #[tokio::test]
    async fn the_status_key_cap_applies_to_new_keys_only() {
        let bus = StatusBus::default();
        let mut h = host(&bus, None, false);
        for i in 0..MAX_STATUS_KEYS {
            h.set_status(format!("k{i}"), "1".into()).unwrap();
        }
        let e = h.set_status("one-more".into(), "1".into()).unwrap_err();
        assert!(e.contains("at most 1024"), "{e}");
        // Existing keys still update.
        h.set_status("k0".into(), "2".into()).unwrap();
        assert_eq!(*bus.get("mod-a", "k0").unwrap(), serde_json::json!(2));
        assert!(bus.get("mod-a", "one-more").is_none());
    }

    #[tokio::test]
    async fn bad_driver_output_is_refused_with_a_reason() {
        let bus = StatusBus::default();
        let mut h = host(&bus, None, false);
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
        assert!(bus.snapshot("mod-a").unwrap().is_empty());
        assert!(h.send(b"x".to_vec()).unwrap_err().contains("no transport"));

        let (tx, _rx) = mpsc::channel(1);
        let mut h = host(&bus, Some(tx), false);
        assert_eq!(h.send(b"x".to_vec()).unwrap_err(), "not connected");
        h.connected.store(true, Ordering::SeqCst);
        let e = h.send(vec![0; MAX_FRAME_BYTES + 1]).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        h.send(b"x".to_vec()).unwrap();
        assert_eq!(h.send(b"y".to_vec()).unwrap_err(), "send queue full");
    }

    #[test]
    fn truncation_respects_utf8() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
