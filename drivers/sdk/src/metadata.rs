use crate::bindings::lintel::driver::types as wit;
use serde_json::Value;

/// The transport the engine opens for a module of this driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    None,
    Tcp,
}

/// How the engine cuts the device's byte stream into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    Raw,
    Delimiter(Vec<u8>),
    FixedLength(u32),
}

/// A function callable from the API, WebSocket and logic modules.
#[derive(Debug, Clone)]
pub struct Function {
    name: String,
    description: String,
    params: Vec<(String, Value, bool)>,
}

impl Function {
    pub fn new(name: &str, description: &str) -> Self {
        Function {
            name: name.into(),
            description: description.into(),
            params: Vec::new(),
        }
    }

    /// A required parameter with the JSON Schema of its value.
    pub fn param(mut self, name: &str, schema: Value) -> Self {
        self.params.push((name.into(), schema, true));
        self
    }

    /// An optional parameter (may be left off the end of the argument list).
    pub fn optional(mut self, name: &str, schema: Value) -> Self {
        self.params.push((name.into(), schema, false));
        self
    }
}

/// What a driver declares about itself.
#[derive(Debug, Clone)]
pub struct Metadata {
    name: String,
    module_name: String,
    description: String,
    transport: Transport,
    framing: Framing,
    default_settings: Value,
    functions: Vec<Function>,
}

impl Metadata {
    /// `name` is shown to operators; `module_name` is how modules appear in a system (`Display`).
    pub fn new(name: &str, module_name: &str) -> Self {
        Metadata {
            name: name.into(),
            module_name: module_name.into(),
            description: String::new(),
            transport: Transport::None,
            framing: Framing::Raw,
            default_settings: Value::Object(Default::default()),
            functions: Vec::new(),
        }
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = description.into();
        self
    }

    pub fn transport(mut self, transport: Transport, framing: Framing) -> Self {
        self.transport = transport;
        self.framing = framing;
        self
    }

    pub fn default_settings(mut self, settings: Value) -> Self {
        self.default_settings = settings;
        self
    }

    pub fn function(mut self, function: Function) -> Self {
        self.functions.push(function);
        self
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> wit::DriverMetadata {
        wit::DriverMetadata {
            name: self.name,
            module_name: self.module_name,
            description: self.description,
            transport: match self.transport {
                Transport::None => wit::TransportKind::None,
                Transport::Tcp => wit::TransportKind::Tcp,
            },
            framing: match self.framing {
                Framing::Raw => wit::Framing::Raw,
                Framing::Delimiter(d) => wit::Framing::Delimiter(d),
                Framing::FixedLength(n) => wit::Framing::FixedLength(n),
            },
            default_settings: self.default_settings.to_string(),
            functions: self
                .functions
                .into_iter()
                .map(|f| wit::Function {
                    name: f.name,
                    description: f.description,
                    parameters: f
                        .params
                        .into_iter()
                        .map(|(name, schema, required)| wit::Parameter {
                            name,
                            schema: schema.to_string(),
                            required,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
