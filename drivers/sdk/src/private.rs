//! Support for the code that `#[driver]` and `export_driver!` generate. Not a public API:
//! it may change in any release.

use crate::Driver;
use crate::bindings::lintel::driver::types as wit;
use crate::types::{
    Answer, CallId, Framing, HostEvent, HttpResponse, Metadata, Transport, Verdict,
};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::any::Any;
use std::cell::RefCell;
use std::fmt::Display;

pub use wit_bindgen;

/// What `#[driver]` generates for a driver type.
pub trait Functions {
    /// Everything the driver declares, from the attribute, its settings type and its
    /// `#[function]` methods.
    fn metadata() -> Metadata;

    /// Run `function` with its positional arguments: `Ok(Some(result))`, `Ok(None)` when
    /// the function answers later (`Answer::Later`), or an error.
    fn dispatch(
        &mut self,
        call: CallId,
        function: &str,
        args: Vec<Value>,
    ) -> Result<Option<Value>, String>;
}

// ---- schemas -------------------------------------------------------------------------

/// The inline JSON Schema of `T`: no `$schema`, no generated `title`; `$defs` only when
/// `T` is recursive.
pub fn schema<T: ?Sized + JsonSchema>() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema = generator.subschema_for::<T>();
    let definitions = generator.take_definitions(true);
    let mut value = match schema.to_value() {
        Value::Bool(true) => Value::Object(Default::default()),
        Value::Bool(false) => serde_json::json!({ "not": {} }),
        other => other,
    };
    if !definitions.is_empty()
        && let Some(object) = value.as_object_mut()
    {
        object.insert("$defs".into(), Value::Object(definitions));
    }
    value
}

/// The default settings (serialized `Default`) and the settings' JSON Schema.
pub fn settings_metadata<S: Serialize + JsonSchema + Default>() -> (Value, Value) {
    let defaults = serde_json::to_value(S::default())
        .unwrap_or_else(|e| panic!("the driver's default settings do not serialize: {e}"));
    assert!(
        defaults.is_object(),
        "the driver's settings must serialize as a JSON object, not {defaults}"
    );
    (defaults, schema::<S>())
}

// ---- dispatch ------------------------------------------------------------------------

/// "unknown function `x`".
pub fn unknown_function(function: &str) -> String {
    format!("unknown function `{function}`")
}

/// Refuse more arguments than the function has parameters.
pub fn check_arity(function: &str, got: usize, max: usize) -> Result<(), String> {
    if got > max {
        let takes = match max {
            0 => "no arguments".to_owned(),
            1 => "at most 1 argument".to_owned(),
            n => format!("at most {n} arguments"),
        };
        Err(format!(
            "too many arguments: `{function}` takes {takes}, got {got}"
        ))
    } else {
        Ok(())
    }
}

/// The next positional argument, deserialized as `T`. A missing optional argument is
/// deserialized from `null` (so `Option<T>` gives `None`).
pub fn arg<T: DeserializeOwned>(
    args: &mut impl Iterator<Item = Value>,
    name: &str,
    required: bool,
) -> Result<T, String> {
    let value = match args.next() {
        Some(v) => v,
        None if required => return Err(format!("missing argument `{name}`")),
        None => Value::Null,
    };
    serde_json::from_value(value).map_err(|e| format!("argument `{name}`: {e}"))
}

fn to_json<R: Serialize>(r: R) -> Result<Value, String> {
    serde_json::to_value(r).map_err(|e| format!("result: {e}"))
}

/// A plain `R` (or `()`) result.
pub fn ret_value<R: Serialize>(r: R) -> Result<Option<Value>, String> {
    to_json(r).map(Some)
}

/// A `Result<R, E>` result.
pub fn ret_result<R: Serialize, E: Display>(r: Result<R, E>) -> Result<Option<Value>, String> {
    match r {
        Ok(v) => ret_value(v),
        Err(e) => Err(e.to_string()),
    }
}

/// An `Answer<R>` result.
pub fn ret_answer<R: Serialize>(r: Answer<R>) -> Result<Option<Value>, String> {
    match r {
        Answer::Now(v) => ret_value(v),
        Answer::Later => Ok(None),
    }
}

/// A `Result<Answer<R>, E>` result.
pub fn ret_result_answer<R: Serialize, E: Display>(
    r: Result<Answer<R>, E>,
) -> Result<Option<Value>, String> {
    match r {
        Ok(a) => ret_answer(a),
        Err(e) => Err(e.to_string()),
    }
}

// ---- the guest -----------------------------------------------------------------------

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Run `f` on the module's driver value, creating it on first use.
pub fn with<D: Driver, R>(f: impl FnOnce(&mut D) -> R) -> R {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let boxed = slot.get_or_insert_with(|| Box::new(D::default()));
        let driver = boxed
            .downcast_mut::<D>()
            .expect("one driver type per component");
        f(driver)
    })
}

/// Parse a settings object into the driver's settings type.
pub fn parse_settings<S: DeserializeOwned>(settings: &str) -> Result<S, String> {
    let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
    if !v.is_object() {
        return Err("settings: expected a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| format!("settings: {e}"))
}

/// Parse a JSON array of arguments.
pub fn parse_args(args: &str) -> Result<Vec<Value>, String> {
    serde_json::from_str(args).map_err(|e| format!("arguments must be a JSON array: {e}"))
}

/// The `metadata` export.
pub fn metadata<D: Functions>() -> wit::DriverMetadata {
    metadata_to_wit(D::metadata())
}

/// The SDK's metadata as the WIT record.
pub fn metadata_to_wit(m: Metadata) -> wit::DriverMetadata {
    wit::DriverMetadata {
        name: m.name,
        module_name: m.module_name,
        description: m.description,
        version: m.version,
        transport: match m.transport {
            Transport::None => wit::TransportKind::None,
            Transport::Tcp => wit::TransportKind::Tcp,
            Transport::Udp => wit::TransportKind::Udp,
            Transport::Tls => wit::TransportKind::Tls,
            Transport::Http => wit::TransportKind::Http,
            Transport::Websocket => wit::TransportKind::Websocket,
            Transport::Mqtt => wit::TransportKind::Mqtt,
        },
        framing: match m.framing {
            Framing::Raw => wit::Framing::Raw,
            Framing::Delimiter(d) => wit::Framing::Delimiter(d),
            Framing::FixedLength(n) => wit::Framing::FixedLength(n),
            Framing::LengthPrefixed(n) => wit::Framing::LengthPrefixed(n),
        },
        default_settings: m.default_settings.to_string(),
        settings_schema: m.settings_schema.to_string(),
        secrets: m.secrets,
        functions: m
            .functions
            .into_iter()
            .map(|f| wit::Function {
                name: f.name,
                description: f.description,
                parameters: f
                    .parameters
                    .into_iter()
                    .map(|p| wit::Parameter {
                        name: p.name,
                        schema: p.schema.to_string(),
                        required: p.required,
                    })
                    .collect(),
                returns: f.returns.to_string(),
            })
            .collect(),
    }
}

/// The `on-load` export.
pub fn on_load<D: Driver>(settings: &str) -> Result<(), String> {
    let settings = parse_settings::<D::Settings>(settings)?;
    with::<D, _>(|d| d.on_load(settings))
}

/// The `on-update` export.
pub fn on_update<D: Driver>(settings: &str) -> Result<(), String> {
    let settings = parse_settings::<D::Settings>(settings)?;
    with::<D, _>(|d| d.on_update(settings))
}

/// The `received` export.
pub fn received<D: Driver>(data: &[u8], waiting: Option<u64>) -> wit::Verdict {
    verdict_to_wit(with::<D, _>(|d| d.received(data, waiting)))
}

/// The SDK's verdict as the WIT variant.
pub fn verdict_to_wit(v: Verdict) -> wit::Verdict {
    match v {
        Verdict::Ignore => wit::Verdict::Ignore,
        Verdict::Done => wit::Verdict::Done,
        Verdict::Retry => wit::Verdict::Retry,
        Verdict::Fail(reason) => wit::Verdict::Fail(reason),
    }
}

/// The `exec` export: parse the arguments, dispatch, serialize the result.
pub fn exec<D: Driver + Functions>(
    call: CallId,
    function: &str,
    args: &str,
) -> Result<Option<String>, String> {
    let args = parse_args(args)?;
    let result = with::<D, _>(|d| d.dispatch(call, function, args))?;
    Ok(result.map(|v| v.to_string()))
}

/// The `on-event` export.
pub fn on_event<D: Driver>(event: wit::HostEvent) {
    let event = event_from_wit(event);
    with::<D, _>(|d| d.on_event(event))
}

fn json_or_string(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The WIT host event as the SDK's.
pub fn event_from_wit(event: wit::HostEvent) -> HostEvent {
    match event {
        wit::HostEvent::CommandDone((id, result)) => HostEvent::CommandDone { id, result },
        wit::HostEvent::HttpResponse((id, result)) => HostEvent::HttpResponse {
            id,
            result: result.map(|r| HttpResponse {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
        },
        wit::HostEvent::StatusChanged((id, value)) => HostEvent::StatusChanged {
            id,
            value: value.map(json_or_string),
        },
        wit::HostEvent::CallResult((id, result)) => HostEvent::CallResult {
            id,
            result: result.map(json_or_string),
        },
        wit::HostEvent::MqttMessage((topic, payload)) => HostEvent::MqttMessage { topic, payload },
    }
}
