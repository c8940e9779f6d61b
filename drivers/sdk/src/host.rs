//! What a driver may ask of the engine. No call blocks: slow work (a `wait` command, an
//! HTTP request, a call into another module, a subscription) returns an id at once and
//! its outcome arrives later as a [`HostEvent`](crate::HostEvent) in
//! [`Driver::on_event`](crate::Driver::on_event).
//!
//! These functions exist only inside the engine's sandbox: in a native build (unit tests)
//! calling one panics.

use crate::bindings::lintel::driver::host as raw;
use crate::bindings::lintel::driver::types as wit;
use crate::types::{
    CallId, CommandId, HttpRequest, LogLevel, ModuleRef, Schedule, SendOptions, StatusRef,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Queue bytes for the module's transport with the default [`SendOptions`] (fire and
/// forget). Fails when the driver has no byte transport, is disconnected, or the queue is
/// full.
pub fn send(data: &[u8]) -> Result<CommandId, String> {
    send_with(data, SendOptions::default())
}

/// Queue bytes with options: priority, a name that replaces an older queued command,
/// `wait` for the answer (then the outcome arrives as
/// [`HostEvent::CommandDone`](crate::HostEvent::CommandDone)).
pub fn send_with(data: &[u8], options: SendOptions) -> Result<CommandId, String> {
    let options = wit::SendOptions {
        priority: options.priority,
        timeout_ms: options.timeout_ms,
        retries: options.retries,
        wait: options.wait,
        delay_ms: options.delay_ms,
        name: options.name,
    };
    raw::send(data, &options)
}

/// Drop the transport connection; the engine reconnects with backoff.
pub fn disconnect() {
    raw::disconnect()
}

/// Publish a status value. Unchanged values are not re-published by the engine.
pub fn set_status<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), String> {
    let json = serde_json::to_string(value).map_err(|e| format!("status `{key}`: {e}"))?;
    raw::set_status(key, &json)
}

/// A line in the module's log.
pub fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Trace => wit::LogLevel::Trace,
        LogLevel::Debug => wit::LogLevel::Debug,
        LogLevel::Info => wit::LogLevel::Info,
        LogLevel::Warn => wit::LogLevel::Warn,
        LogLevel::Error => wit::LogLevel::Error,
    };
    raw::log(level, message)
}

/// A trace line in the module's log.
pub fn trace(message: &str) {
    log(LogLevel::Trace, message)
}

/// A debug line in the module's log.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message)
}

/// An info line in the module's log.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// A warning in the module's log.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// An error line in the module's log.
pub fn error(message: &str) {
    log(LogLevel::Error, message)
}

/// Fire [`Driver::on_timer`](crate::Driver::on_timer) with `id` by `when`; replaces any
/// schedule with the same id.
pub fn schedule(id: u32, when: Schedule) -> Result<(), String> {
    let when = match when {
        Schedule::In(ms) => wit::Schedule::In(ms),
        Schedule::Every(ms) => wit::Schedule::Every(ms),
        Schedule::At(unix_ms) => wit::Schedule::At(unix_ms),
        Schedule::Cron(expr) => wit::Schedule::Cron(expr),
    };
    raw::schedule(id, &when)
}

/// Fire `on_timer(id)` every `period_ms` (at least 10).
pub fn schedule_every(id: u32, period_ms: u64) -> Result<(), String> {
    schedule(id, Schedule::Every(period_ms))
}

/// Fire `on_timer(id)` once, after `delay_ms`.
pub fn schedule_in(id: u32, delay_ms: u64) -> Result<(), String> {
    schedule(id, Schedule::In(delay_ms))
}

/// Stop the timer `id` (nothing happens when there is none).
pub fn cancel_schedule(id: u32) {
    raw::cancel_schedule(id)
}

/// The module's current merged settings (without its secrets), parsed.
pub fn settings<T: DeserializeOwned>() -> Result<T, String> {
    serde_json::from_str(&raw::settings()).map_err(|e| format!("settings: {e}"))
}

/// A secret setting the driver declared in `#[driver(secrets = [...])]`; `None` when
/// unset. Undeclared keys are refused.
pub fn secret(key: &str) -> Result<Option<String>, String> {
    raw::secret(key)
}

/// Follow a status value of another module; changes arrive as
/// [`HostEvent::StatusChanged`](crate::HostEvent::StatusChanged) with the returned id,
/// starting with the current value.
pub fn subscribe(target: StatusRef) -> Result<u64, String> {
    raw::subscribe(&wit::StatusRef {
        system: target.system,
        module: target.module,
        index: target.index,
        key: target.key,
    })
}

/// Stop following a status (by the id [`subscribe`] returned).
pub fn unsubscribe(id: u64) {
    raw::unsubscribe(id)
}

/// Call a function of another module; the outcome arrives as
/// [`HostEvent::CallResult`](crate::HostEvent::CallResult) with the returned id.
pub fn call(target: ModuleRef, function: &str, args: &[Value]) -> Result<u64, String> {
    let args = serde_json::to_string(args).map_err(|e| format!("arguments: {e}"))?;
    raw::call(
        &wit::ModuleRef {
            system: target.system,
            module: target.module,
            index: target.index,
        },
        function,
        &args,
    )
}

/// Look up a system (the module's own with `None`): its name, zones and modules. The
/// answer arrives as [`HostEvent::CallResult`](crate::HostEvent::CallResult) with the
/// returned id; parse it with [`SystemInfo::from_value`](crate::SystemInfo::from_value).
pub fn lookup_system(system_id: Option<&str>) -> Result<u64, String> {
    raw::lookup_system(system_id)
}

/// An HTTP request to the module's base `uri` (http transport only); the answer arrives
/// as [`HostEvent::HttpResponse`](crate::HostEvent::HttpResponse) with the returned id.
pub fn http_request(request: HttpRequest) -> Result<u64, String> {
    if let Some(e) = request.error {
        return Err(e);
    }
    raw::http_request(&wit::HttpRequest {
        method: request.method,
        path: request.path,
        headers: request.headers,
        body: request.body,
        timeout_ms: request.timeout_ms,
    })
}

/// Subscribe to an MQTT topic filter on the module's broker (mqtt transport only).
pub fn mqtt_subscribe(topic_filter: &str) -> Result<(), String> {
    raw::mqtt_subscribe(topic_filter)
}

/// Answer an `exec` whose function returned [`Answer::Later`](crate::Answer::Later).
pub fn reply(call: CallId, result: Result<Value, String>) -> Result<(), String> {
    match result {
        Ok(v) => {
            let json = serde_json::to_string(&v).map_err(|e| format!("result: {e}"))?;
            raw::reply(call, Ok(&json))
        }
        Err(e) => raw::reply(call, Err(&e)),
    }
}
