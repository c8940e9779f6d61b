//! The `#[driver]` attribute and the guest glue, natively: metadata, dispatch and its
//! errors. (The `host` imports exist only in the engine's sandbox, so nothing here calls
//! them.)

use lintel_driver_sdk::__private::{self, Functions};
use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::{Function, Metadata, Parameter};

/// Settings of the test driver.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
struct Settings {
    /// Poll period in milliseconds.
    poll_ms: u32,
    label: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_ms: 1000,
            label: "lab".into(),
        }
    }
}

/// A percentage.
#[derive(Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
struct Percent(#[schemars(range(min = 0, max = 100))] u8);

#[derive(Deserialize, JsonSchema, Serialize, Debug, PartialEq)]
#[serde(crate = "lintel_driver_sdk::serde")]
enum Input {
    Hdmi1,
    Hdmi2,
}

#[derive(Serialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
struct Reading {
    level: u8,
    on: bool,
}

#[derive(Default)]
struct Tester {
    settings_poll: u32,
    level: u8,
    pending: Option<CallId>,
    last_input: Option<Input>,
}

impl Driver for Tester {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        if settings.poll_ms == 0 {
            return Err("poll_ms must be positive".into());
        }
        self.settings_poll = settings.poll_ms;
        Ok(())
    }
}

#[driver(
    name = "Test Driver",
    module_name = "Tester",
    description = "A driver for the SDK's tests",
    version = "3.1.4",
    transport = "tcp",
    delimiter = "\r\n",
    secrets = ["password", "token"]
)]
impl Tester {
    /// Switch it
    /// on or off.
    #[function]
    fn power(&mut self, state: bool) -> Result<(), String> {
        if state {
            Ok(())
        } else {
            Err("refused: off".into())
        }
    }

    /// Set the level.
    #[function]
    fn set_level(&mut self, level: u8) {
        self.level = level;
    }

    /// The reading.
    #[function(name = "reading")]
    fn current_reading(&mut self) -> Reading {
        Reading {
            level: self.level,
            on: true,
        }
    }

    /// Scale a percentage, optionally by a factor.
    #[function]
    fn scale(&mut self, percent: Percent, factor: Option<f64>) -> f64 {
        f64::from(percent.0) * factor.unwrap_or(1.0)
    }

    #[function]
    fn input(&mut self, input: Input) -> Result<String, std::fmt::Error> {
        let s = format!("{input:?}");
        self.last_input = Some(input);
        Ok(s)
    }

    /// Answer later.
    #[function]
    fn later(&mut self, call: CallId, now: bool) -> Answer<u32> {
        if now {
            Answer::Now(7)
        } else {
            self.pending = Some(call);
            Answer::Later
        }
    }

    #[function]
    fn maybe_later(&mut self, call: CallId) -> Result<Answer<String>, String> {
        self.pending = Some(call);
        Ok(Answer::Later)
    }

    #[function]
    fn words(&mut self, words: Vec<String>, sep: Option<String>) -> String {
        words.join(&sep.unwrap_or_else(|| " ".into()))
    }

    /// Not exported.
    fn helper(&self) -> u8 {
        self.level
    }
}

lintel_driver_sdk::export_driver!(Tester);

fn function<'a>(m: &'a Metadata, name: &str) -> &'a Function {
    m.functions
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no function `{name}`"))
}

fn exec(d: &mut Tester, function: &str, args: Value) -> Result<Option<Value>, String> {
    let Value::Array(args) = args else {
        panic!("args")
    };
    d.dispatch(42, function, args)
}

#[test]
fn metadata_from_the_attribute() {
    let m = Tester::metadata();
    assert_eq!(m.name, "Test Driver");
    assert_eq!(m.module_name, "Tester");
    assert_eq!(m.description, "A driver for the SDK's tests");
    assert_eq!(m.version, "3.1.4");
    assert_eq!(m.transport, Transport::Tcp);
    assert_eq!(m.framing, Framing::Delimiter(b"\r\n".to_vec()));
    assert_eq!(m.secrets, ["password", "token"]);
    let names: Vec<_> = m.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "power",
            "set_level",
            "reading",
            "scale",
            "input",
            "later",
            "maybe_later",
            "words"
        ]
    );
}

#[test]
fn settings_defaults_and_schema() {
    let m = Tester::metadata();
    assert_eq!(m.default_settings, json!({"poll_ms": 1000, "label": "lab"}));
    let schema = &m.settings_schema;
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["poll_ms"]["type"], "integer");
    assert_eq!(schema["properties"]["poll_ms"]["default"], 1000);
    assert_eq!(
        schema["properties"]["poll_ms"]["description"],
        "Poll period in milliseconds."
    );
    assert_eq!(schema["properties"]["label"]["type"], "string");
    assert!(schema.get("$schema").is_none(), "{schema}");
}

#[test]
fn function_metadata() {
    let m = Tester::metadata();
    assert_eq!(
        *function(&m, "power"),
        Function {
            name: "power".into(),
            description: "Switch it on or off.".into(),
            parameters: vec![Parameter {
                name: "state".into(),
                schema: json!({"type": "boolean"}),
                required: true,
            }],
            returns: json!({"type": "null"}),
        }
    );
    let set_level = function(&m, "set_level");
    assert_eq!(set_level.description, "Set the level.");
    assert_eq!(
        set_level.parameters[0].schema,
        json!({"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255})
    );
    assert_eq!(set_level.returns, json!({"type": "null"}));

    let reading = function(&m, "reading");
    assert_eq!(reading.description, "The reading.");
    assert!(reading.parameters.is_empty());
    assert_eq!(reading.returns["type"], "object");
    assert_eq!(
        reading.returns["properties"]["on"],
        json!({"type": "boolean"})
    );
    assert_eq!(reading.returns["required"], json!(["level", "on"]));
    assert!(
        reading.returns.get("title").is_none(),
        "{}",
        reading.returns
    );

    let scale = function(&m, "scale");
    assert_eq!(scale.parameters.len(), 2);
    assert_eq!(scale.parameters[0].name, "percent");
    assert!(scale.parameters[0].required);
    assert_eq!(scale.parameters[0].schema["minimum"], 0);
    assert_eq!(scale.parameters[0].schema["maximum"], 100);
    assert_eq!(scale.parameters[0].schema["description"], "A percentage.");
    assert_eq!(scale.parameters[1].name, "factor");
    assert!(!scale.parameters[1].required);
    assert_eq!(
        scale.parameters[1].schema,
        json!({"type": "number", "format": "double"})
    );
    assert_eq!(scale.returns, json!({"type": "number", "format": "double"}));

    let input = function(&m, "input");
    assert_eq!(input.description, "");
    assert_eq!(
        input.parameters[0].schema,
        json!({"type": "string", "enum": ["Hdmi1", "Hdmi2"]})
    );
    assert_eq!(input.returns, json!({"type": "string"}));

    // A `CallId` first parameter is not an exec parameter; `Answer<R>` returns R.
    let later = function(&m, "later");
    assert_eq!(later.parameters.len(), 1);
    assert_eq!(later.parameters[0].name, "now");
    assert_eq!(later.returns["type"], "integer");
    let maybe_later = function(&m, "maybe_later");
    assert!(maybe_later.parameters.is_empty());
    assert_eq!(maybe_later.returns, json!({"type": "string"}));

    let words = function(&m, "words");
    assert_eq!(
        words.parameters[0].schema,
        json!({"type": "array", "items": {"type": "string"}})
    );
}

#[test]
fn dispatch_runs_functions() {
    let mut d = Tester::default();
    assert_eq!(exec(&mut d, "power", json!([true])), Ok(Some(Value::Null)));
    assert_eq!(
        exec(&mut d, "power", json!([false])),
        Err("refused: off".into())
    );
    assert_eq!(exec(&mut d, "set_level", json!([9])), Ok(Some(Value::Null)));
    assert_eq!(d.helper(), 9);
    assert_eq!(
        exec(&mut d, "reading", json!([])),
        Ok(Some(json!({"level": 9, "on": true})))
    );
    assert_eq!(exec(&mut d, "scale", json!([50])), Ok(Some(json!(50.0))));
    assert_eq!(
        exec(&mut d, "scale", json!([50, 0.5])),
        Ok(Some(json!(25.0)))
    );
    assert_eq!(
        exec(&mut d, "scale", json!([50, null])),
        Ok(Some(json!(50.0)))
    );
    assert_eq!(
        exec(&mut d, "input", json!(["Hdmi2"])),
        Ok(Some(json!("Hdmi2")))
    );
    assert_eq!(d.last_input, Some(Input::Hdmi2));
    assert_eq!(
        exec(&mut d, "words", json!([["a", "b"], "-"])),
        Ok(Some(json!("a-b")))
    );
}

#[test]
fn answer_later_is_none() {
    let mut d = Tester::default();
    assert_eq!(exec(&mut d, "later", json!([true])), Ok(Some(json!(7))));
    assert_eq!(d.pending, None);
    assert_eq!(exec(&mut d, "later", json!([false])), Ok(None));
    assert_eq!(d.pending, Some(42));
    d.pending = None;
    assert_eq!(exec(&mut d, "maybe_later", json!([])), Ok(None));
    assert_eq!(d.pending, Some(42));
}

#[test]
fn dispatch_errors() {
    let mut d = Tester::default();
    assert_eq!(
        exec(&mut d, "set_level", json!(["x"])),
        Err("argument `level`: invalid type: string \"x\", expected u8".into())
    );
    assert_eq!(
        exec(&mut d, "set_level", json!([300])),
        Err("argument `level`: invalid value: integer `300`, expected u8".into())
    );
    assert_eq!(
        exec(&mut d, "set_level", json!([null])),
        Err("argument `level`: invalid type: null, expected u8".into())
    );
    assert_eq!(
        exec(&mut d, "set_level", json!([])),
        Err("missing argument `level`".into())
    );
    assert_eq!(
        exec(&mut d, "set_level", json!([1, 2])),
        Err("too many arguments: `set_level` takes at most 1 argument, got 2".into())
    );
    assert_eq!(
        exec(&mut d, "reading", json!([1])),
        Err("too many arguments: `reading` takes no arguments, got 1".into())
    );
    assert_eq!(
        exec(&mut d, "scale", json!([1, 2, 3])),
        Err("too many arguments: `scale` takes at most 2 arguments, got 3".into())
    );
    assert_eq!(
        exec(&mut d, "scale", json!([1, "fast"])),
        Err("argument `factor`: invalid type: string \"fast\", expected f64".into())
    );
    let e = exec(&mut d, "input", json!(["VGA"])).unwrap_err();
    assert!(
        e.starts_with("argument `input`: unknown variant `VGA`"),
        "{e}"
    );
    assert_eq!(
        exec(&mut d, "explode", json!([])),
        Err("unknown function `explode`".into())
    );
    // The helper is not a function.
    assert_eq!(
        exec(&mut d, "helper", json!([])),
        Err("unknown function `helper`".into())
    );
}

#[test]
fn guest_glue_parses_settings_and_args() {
    // The export functions, as the engine calls them (no host import involved).
    assert_eq!(__private::on_load::<Tester>(r#"{"poll_ms": 250}"#), Ok(()));
    assert_eq!(__private::with::<Tester, _>(|d| d.settings_poll), 250);
    assert_eq!(
        __private::on_update::<Tester>(r#"{"poll_ms": 0}"#),
        Err("poll_ms must be positive".into())
    );
    let e = __private::on_load::<Tester>(r#"{"poll_ms": "soon"}"#).unwrap_err();
    assert!(
        e.starts_with("settings: invalid type: string \"soon\", expected u32"),
        "{e}"
    );
    assert_eq!(
        __private::on_load::<Tester>("[]"),
        Err("settings: expected a JSON object".into())
    );
    assert_eq!(
        __private::exec::<Tester>(1, "reading", "[]"),
        Ok(Some(r#"{"level":0,"on":true}"#.into()))
    );
    assert_eq!(__private::exec::<Tester>(2, "later", "[false]"), Ok(None));
    let e = __private::exec::<Tester>(3, "reading", "[tru").unwrap_err();
    assert!(e.starts_with("arguments must be a JSON array"), "{e}");
    let e = __private::exec::<Tester>(3, "reading", r#"{"a": 1}"#).unwrap_err();
    assert!(e.starts_with("arguments must be a JSON array"), "{e}");

    let wit = __private::metadata::<Tester>();
    assert_eq!(wit.version, "3.1.4");
    assert_eq!(wit.functions.len(), 8);
    assert_eq!(
        wit.functions[0].parameters[0].schema,
        r#"{"type":"boolean"}"#
    );
    assert_eq!(wit.functions[0].returns, r#"{"type":"null"}"#);
}

#[test]
fn events_convert() {
    use lintel_driver_sdk::bindings::lintel::driver::types as wit;
    assert_eq!(
        __private::event_from_wit(wit::HostEvent::StatusChanged((4, Some("true".into())))),
        HostEvent::StatusChanged {
            id: 4,
            value: Some(json!(true))
        }
    );
    assert_eq!(
        __private::event_from_wit(wit::HostEvent::StatusChanged((4, None))),
        HostEvent::StatusChanged { id: 4, value: None }
    );
    assert_eq!(
        __private::event_from_wit(wit::HostEvent::CallResult((5, Ok("not json".into())))),
        HostEvent::CallResult {
            id: 5,
            result: Ok(json!("not json"))
        }
    );
    assert_eq!(
        __private::event_from_wit(wit::HostEvent::CommandDone((6, Err("timeout".into())))),
        HostEvent::CommandDone {
            id: 6,
            result: Err("timeout".into())
        }
    );
    let HostEvent::HttpResponse { id, result: Ok(r) } =
        __private::event_from_wit(wit::HostEvent::HttpResponse((
            7,
            Ok(wit::HttpResponse {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"a":1}"#.to_vec(),
            }),
        )))
    else {
        panic!("not an http response")
    };
    assert_eq!(id, 7);
    assert!(r.is_success());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json::<Value>(), Ok(json!({"a": 1})));
}

/// A driver with nothing declared: `NoSettings`, raw framing, no transport, the crate's
/// version.
#[derive(Default)]
struct Bare;

impl Driver for Bare {
    type Settings = NoSettings;
}

#[driver(name = "Bare", module_name = "Bare")]
impl Bare {}

#[test]
fn defaults_of_the_attribute() {
    let m = Bare::metadata();
    assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(m.transport, Transport::None);
    assert_eq!(m.framing, Framing::Raw);
    assert_eq!(m.description, "");
    assert!(m.secrets.is_empty() && m.functions.is_empty());
    assert_eq!(m.default_settings, json!({}));
    assert_eq!(m.settings_schema, json!({"type": "object"}));
    // NoSettings accepts any object.
    assert_eq!(
        __private::parse_settings::<NoSettings>(r#"{"anything": [1, 2]}"#),
        Ok(NoSettings {})
    );
}

#[derive(Default)]
struct Framed;
impl Driver for Framed {
    type Settings = NoSettings;
}
#[driver(name = "F", module_name = "F", transport = "udp", length_prefix = 2)]
impl Framed {}

#[derive(Default)]
struct Fixed;
impl Driver for Fixed {
    type Settings = NoSettings;
}
#[driver(name = "X", module_name = "X", transport = "mqtt", fixed_length = 8, version = VERSION)]
impl Fixed {}
const VERSION: &str = "0.0.9";

#[test]
fn framing_keys() {
    assert_eq!(Framed::metadata().framing, Framing::LengthPrefixed(2));
    assert_eq!(Framed::metadata().transport, Transport::Udp);
    assert_eq!(Fixed::metadata().framing, Framing::FixedLength(8));
    assert_eq!(Fixed::metadata().transport, Transport::Mqtt);
    assert_eq!(Fixed::metadata().version, "0.0.9");
}

#[test]
fn refs_parse() {
    assert_eq!(
        StatusRef::parse("Display_1.power"),
        Ok(StatusRef::new("Display", 1, "power"))
    );
    assert_eq!(
        StatusRef::parse("Video_Switcher_12.input.main"),
        Ok(StatusRef::new("Video_Switcher", 12, "input.main"))
    );
    assert_eq!(
        StatusRef::parse("Display.power"),
        Ok(StatusRef::new("Display", 1, "power"))
    );
    assert_eq!(
        StatusRef::new("Display", 2, "power")
            .in_system("sys-1")
            .system,
        Some("sys-1".into())
    );
    assert!(StatusRef::parse("Display_1").is_err());
    assert!(StatusRef::parse("Display_1.").is_err());
    assert!(StatusRef::parse("Display_0.power").is_err());
    assert!(StatusRef::parse("_1.power").is_err());
    assert_eq!(
        ModuleRef::parse("Display_3"),
        Ok(ModuleRef::new("Display", 3))
    );
    assert_eq!(ModuleRef::parse("Lights"), Ok(ModuleRef::new("Lights", 1)));
    assert!(ModuleRef::parse("").is_err());
}

#[test]
fn builders() {
    let o = SendOptions::default();
    assert_eq!(
        (
            o.priority,
            o.timeout_ms,
            o.retries,
            o.wait,
            o.delay_ms,
            o.name
        ),
        (50, 5000, 3, false, 0, None)
    );
    let o = SendOptions::default()
        .priority(90)
        .timeout_ms(200)
        .retries(1)
        .wait()
        .delay_ms(20)
        .name("power");
    assert_eq!(
        (
            o.priority,
            o.timeout_ms,
            o.retries,
            o.wait,
            o.delay_ms,
            o.name
        ),
        (90, 200, 1, true, 20, Some("power".into()))
    );
    let r = HttpRequest::get("/state")
        .header("Accept", "text/plain")
        .timeout_ms(5);
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), r.timeout_ms),
        ("GET", "/state", 5)
    );
    assert_eq!(
        r.headers,
        [("Accept".to_string(), "text/plain".to_string())]
    );
    let r = HttpRequest::post("/x", "raw").json(&json!([1]));
    assert_eq!(r.body, b"[1]");
    assert_eq!(
        r.headers,
        [("Content-Type".to_string(), "application/json".to_string())]
    );
}

#[test]
fn system_lookups_answer_count_all_and_get() {
    use lintel_driver_sdk::SystemInfo;
    let info = SystemInfo::from_value(json!({
        "id": "sys-1", "name": "Room 1", "zones": ["zone-b"],
        "modules": [
            {"module": "Display", "index": 1, "id": "mod-a", "driver": "D", "running": true},
            {"module": "Camera", "index": 1, "id": "mod-b", "driver": "C", "running": false},
            {"module": "Display", "index": 2, "id": "mod-c", "driver": "D", "running": true}
        ]
    }))
    .unwrap();
    assert_eq!(info.count("Display"), 2);
    assert_eq!(
        info.all("Display")
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["mod-a", "mod-c"]
    );
    assert_eq!(info.get("Display", 2).unwrap().id, "mod-c");
    assert!(info.get("Display", 3).is_none());
    let r = info.get("Camera", 1).unwrap().to_ref("sys-1");
    assert_eq!(
        (r.system.as_deref(), r.module.as_str(), r.index),
        (Some("sys-1"), "Camera", 1)
    );
    assert!(
        SystemInfo::from_value(json!({"id": 1}))
            .unwrap_err()
            .contains("system lookup answer")
    );
}
