use crate::ids::IdKind;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A validation failure that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field,
            message: message.into(),
        }
    }
}

/// What every stored record has: a prefixed id, an owning tenant, timestamps and a
/// version for optimistic concurrency.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: IdKind;
    fn id(&self) -> &str;
    /// The tenant that owns the record. A tenant owns itself.
    fn tenant_id(&self) -> &str;
    fn version(&self) -> u64;
    fn set_version(&mut self, version: u64);
    fn created_at(&self) -> i64;
    fn set_created_at(&mut self, at: i64);
    fn set_updated_at(&mut self, at: i64);
    /// Checks the record's own fields (not references to other records).
    fn validate(&self) -> Result<(), ValidationError>;
    /// Secondary-index entries `(index, value)`: the store can list records by them
    /// (modules by system, settings by parent, …).
    fn index_entries(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Text that `?q=` searches match (case-insensitively).
    fn search_text(&self) -> String {
        String::new()
    }
    /// The record as JSON with secret material replaced by `"<redacted>"`: what audit
    /// diffs and logs may show.
    fn redacted(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What replaces a secret in audit diffs and any other display.
pub const REDACTED: &str = "<redacted>";

const MAX_NAME: usize = 256;
const MAX_TEXT: usize = 16 * 1024;
const MAX_LIST: usize = 1024;

fn require_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    bounded(field, value, MAX_NAME)
}

/// An IANA time zone name (`Europe/London`); the engine reads cron timers in it. Empty
/// means none (as PlaceOS clients send it).
fn require_time_zone(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    bounded(field, value, MAX_NAME)?;
    value.parse::<chrono_tz::Tz>().map(drop).map_err(|_| {
        ValidationError::new(
            field,
            format!("`{value}` is not an IANA time zone (such as `Europe/London`)"),
        )
    })
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn require_id(field: &'static str, kind: IdKind, value: &str) -> Result<(), ValidationError> {
    if kind.is_valid_id(value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("`{value}` is not a {} id (`{}-…`)", kind, kind.prefix()),
        ))
    }
}

fn require_ids(
    field: &'static str,
    kind: IdKind,
    values: &[String],
) -> Result<(), ValidationError> {
    if values.len() > MAX_LIST {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_LIST} entries"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for v in values {
        require_id(field, kind, v)?;
        if !seen.insert(v) {
            return Err(ValidationError::new(
                field,
                format!("`{v}` is listed twice"),
            ));
        }
    }
    Ok(())
}

fn require_email(field: &'static str, value: &str) -> Result<(), ValidationError> {
    let ok = value.len() <= MAX_NAME
        && value
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be an email address"))
    }
}

fn require_object(field: &'static str, value: &Value) -> Result<(), ValidationError> {
    if value.is_object() {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be a JSON object"))
    }
}

fn require_tags(field: &'static str, tags: &[String]) -> Result<(), ValidationError> {
    if tags.len() > 64 {
        return Err(ValidationError::new(field, "at most 64 entries"));
    }
    for t in tags {
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ValidationError::new(
                field,
                format!("`{t}`: 1–64 letters, digits, `_`, `-` or `.`"),
            ));
        }
    }
    Ok(())
}

/// The kind a reference to another record must be one of.
fn require_any_id(
    field: &'static str,
    kinds: &[IdKind],
    value: &str,
) -> Result<(), ValidationError> {
    if kinds.iter().any(|k| k.is_valid_id(value)) {
        Ok(())
    } else {
        let names: Vec<String> = kinds.iter().map(|k| format!("{}-…", k.prefix())).collect();
        Err(ValidationError::new(
            field,
            format!("`{value}` must be one of: {}", names.join(", ")),
        ))
    }
}

fn lower(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

macro_rules! record_common {
    ($ty:ty, $kind:expr, tenant = $tenant:ident, |$s:ident| $validate:block
     $(, index = |$i:ident| $index:block)?
     $(, search = |$q:ident| $search:block)?
     $(, redact = |$r:ident| $redact:block)?) => {
        impl Record for $ty {
            const KIND: IdKind = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn tenant_id(&self) -> &str {
                &self.$tenant
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn set_version(&mut self, version: u64) {
                self.version = version;
            }
            fn created_at(&self) -> i64 {
                self.created_at
            }
            fn set_created_at(&mut self, at: i64) {
                self.created_at = at;
            }
            fn set_updated_at(&mut self, at: i64) {
                self.updated_at = at;
            }
            fn validate(&$s) -> Result<(), ValidationError> {
                require_id("id", $kind, &$s.id)?;
                if $kind != IdKind::Tenant {
                    require_id("tenant_id", IdKind::Tenant, &$s.$tenant)?;
                }
                $validate
            }
            $(fn index_entries(&$i) -> Vec<(&'static str, String)> $index)?
            $(fn search_text(&$q) -> String $search)?
            $(fn redacted(&$r) -> Value $redact)?
        }
    };
}

/// A tenant (PlaceOS "authority"): one organisation, reached by its domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The domain the tenant's users reach Lintel by; JWT `aud` names it. Unique.
    pub domain: String,
    /// Free-form client configuration served by `/auth/authority` (`config`).
    pub config: Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    Tenant,
    IdKind::Tenant,
    tenant = id,
    |self| {
        require_name("name", &self.name)?;
        bounded("description", &self.description, MAX_TEXT)?;
        require_name("domain", &self.domain)?;
        if !self
            .domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        {
            return Err(ValidationError::new(
                "domain",
                "a host name (letters, digits, `.`, `-`, optional `:port`)",
            ));
        }
        if !self.config.is_null() {
            require_object("config", &self.config)?;
        }
        Ok(())
    },
    index = |self| { vec![("domain", self.domain.to_ascii_lowercase())] },
    search = |self| { lower(&[&self.name, &self.domain]) }
);

/// The zone tags PlaceOS gives meaning to (MQTT topics, building navigation).
pub const ZONE_TAGS: [&str; 5] = ["org", "region", "building", "level", "area"];

/// A zone: a node of the building tree (org / region / building / level / area).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Zone {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub description: String,
    /// Tags such as `building` or `level` (see [`ZONE_TAGS`]); others are allowed.
    pub tags: Vec<String>,
    pub parent_id: Option<String>,
    pub code: Option<String>,
    pub location: Option<String>,
    pub timezone: Option<String>,
    pub capacity: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    Zone,
    IdKind::Zone,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        if let Some(d) = &self.display_name {
            require_name("display_name", d)?;
        }
        bounded("description", &self.description, MAX_TEXT)?;
        require_tags("tags", &self.tags)?;
        if let Some(parent) = &self.parent_id {
            require_id("parent_id", IdKind::Zone, parent)?;
            if parent == &self.id {
                return Err(ValidationError::new(
                    "parent_id",
                    "a zone cannot be its own parent",
                ));
            }
        }
        for (field, v) in [("code", &self.code), ("location", &self.location)] {
            if let Some(v) = v {
                bounded(field, v, MAX_NAME)?;
            }
        }
        if let Some(tz) = &self.timezone {
            require_time_zone("timezone", tz)?;
        }
        Ok(())
    },
    index = |self| {
        let mut out: Vec<(&'static str, String)> =
            self.tags.iter().map(|t| ("tag", t.clone())).collect();
        if let Some(p) = &self.parent_id {
            out.push(("parent", p.clone()));
        }
        out
    },
    search = |self| {
        lower(&[
            &self.name,
            self.display_name.as_deref().unwrap_or(""),
            &self.description,
            self.code.as_deref().unwrap_or(""),
        ])
    }
);

/// A control system: usually one room, with an ordered list of modules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ControlSystem {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub description: String,
    /// The room's calendar address (bookings).
    pub email: Option<String>,
    pub capacity: u32,
    pub bookable: bool,
    /// What the room offers (`projector`, `vc`), for search and booking filters.
    pub features: Vec<String>,
    /// IANA time zone, e.g. `Europe/London`.
    pub timezone: Option<String>,
    pub support_url: Option<String>,
    /// Zone ids, most general first (org, building, level…).
    pub zones: Vec<String>,
    /// Module ids in order: `Display_2` is the second module named `Display` here.
    pub modules: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    ControlSystem,
    IdKind::System,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        if let Some(d) = &self.display_name {
            require_name("display_name", d)?;
        }
        bounded("description", &self.description, MAX_TEXT)?;
        if let Some(e) = &self.email {
            require_email("email", e)?;
        }
        require_tags("features", &self.features)?;
        if let Some(tz) = &self.timezone {
            require_time_zone("timezone", tz)?;
        }
        if let Some(u) = &self.support_url {
            bounded("support_url", u, 2048)?;
        }
        require_ids("zones", IdKind::Zone, &self.zones)?;
        require_ids("modules", IdKind::Module, &self.modules)
    },
    index = |self| {
        let mut out: Vec<(&'static str, String)> =
            self.zones.iter().map(|z| ("zone", z.clone())).collect();
        out.extend(self.modules.iter().map(|m| ("module", m.clone())));
        if let Some(e) = &self.email {
            out.push(("email", e.to_ascii_lowercase()));
        }
        out
    },
    search = |self| {
        let features = self.features.join(" ");
        lower(&[
            &self.name,
            self.display_name.as_deref().unwrap_or(""),
            &self.description,
            self.email.as_deref().unwrap_or(""),
            &features,
        ])
    }
);

/// URI schemes a module may name. The engine decides which it can reach.
pub const MODULE_URI_SCHEMES: [&str; 10] = [
    "tcp", "udp", "tls", "http", "https", "ws", "wss", "mqtt", "mqtts", "sim",
];

/// A module: one running instance of a driver, with where to reach its device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Module {
    pub id: String,
    pub tenant_id: String,
    pub driver_id: String,
    /// The system a logic module belongs to, or the first system a device is in.
    pub control_system_id: Option<String>,
    /// Overrides the driver's module name (`Display`) inside systems.
    pub custom_name: Option<String>,
    /// Device address for device drivers (with `port`).
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub tls: bool,
    pub udp: bool,
    /// Connect only while a command is pending (PlaceOS "makebreak").
    pub makebreak: bool,
    /// Service address: `https://…`, `wss://…`, `tcp://host:port`, or `sim://name` for an
    /// in-process simulator. Takes precedence over `ip`/`port`.
    pub uri: Option<String>,
    /// Whether the engine runs it (missing in a document means yes).
    pub running: bool,
    pub notes: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl Default for Module {
    fn default() -> Self {
        Module {
            id: String::new(),
            tenant_id: String::new(),
            driver_id: String::new(),
            control_system_id: None,
            custom_name: None,
            ip: None,
            port: None,
            tls: false,
            udp: false,
            makebreak: false,
            uri: None,
            running: true,
            notes: String::new(),
            created_at: 0,
            updated_at: 0,
            version: 0,
        }
    }
}
record_common!(
    Module,
    IdKind::Module,
    tenant = tenant_id,
    |self| {
        require_id("driver_id", IdKind::Driver, &self.driver_id)?;
        if let Some(sys) = &self.control_system_id {
            require_id("control_system_id", IdKind::System, sys)?;
        }
        if let Some(name) = &self.custom_name {
            require_name("custom_name", name)?;
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ValidationError::new(
                    "custom_name",
                    "letters, digits and `_` only (it addresses the module: `Name_1`)",
                ));
            }
        }
        if let Some(ip) = &self.ip {
            require_name("ip", ip)?;
            if ip.contains(['/', ' ', '@']) {
                return Err(ValidationError::new("ip", "a host name or IP address"));
            }
        }
        if self.port == Some(0) {
            return Err(ValidationError::new("port", "must be 1–65535"));
        }
        if self.tls && self.udp {
            return Err(ValidationError::new("tls", "TLS over UDP is not supported"));
        }
        if let Some(uri) = &self.uri {
            bounded("uri", uri, 2048)?;
            let scheme = uri.split_once("://").map(|(s, _)| s);
            if !scheme.is_some_and(|s| MODULE_URI_SCHEMES.contains(&s)) {
                return Err(ValidationError::new(
                    "uri",
                    format!(
                        "must start with one of {}://",
                        MODULE_URI_SCHEMES.join("://, ")
                    ),
                ));
            }
        }
        bounded("notes", &self.notes, MAX_TEXT)
    },
    index = |self| {
        let mut out = vec![("driver", self.driver_id.clone())];
        if let Some(s) = &self.control_system_id {
            out.push(("system", s.clone()));
        }
        out
    },
    search = |self| {
        lower(&[
            self.custom_name.as_deref().unwrap_or(""),
            self.ip.as_deref().unwrap_or(""),
            self.uri.as_deref().unwrap_or(""),
            &self.notes,
        ])
    }
);

impl Module {
    /// What a running module is started from: its driver, system, device address and
    /// make-break. A change to anything else (name, notes) needs no restart.
    pub fn runtime_key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.driver_id,
            self.control_system_id.as_deref().unwrap_or_default(),
            self.endpoint().unwrap_or_default(),
            self.makebreak
        )
    }

    /// The address the engine connects to: `uri` if set, else `ip`/`port` with the
    /// `tcp`/`udp`/`tls` scheme those flags select.
    pub fn endpoint(&self) -> Option<String> {
        if let Some(uri) = &self.uri {
            return Some(uri.clone());
        }
        let (ip, port) = (self.ip.as_ref()?, self.port?);
        let scheme = if self.udp {
            "udp"
        } else if self.tls {
            "tls"
        } else {
            "tcp"
        };
        Some(format!("{scheme}://{ip}:{port}"))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DriverRole {
    #[default]
    Device,
    Service,
    Websocket,
    Logic,
}

/// A driver: a WASM component (stored by content hash) and what it declared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DriverRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The name its modules take inside a system (`Display`).
    pub module_name: String,
    pub role: DriverRole,
    pub description: String,
    /// SHA-256 (hex) of the component bytes.
    pub component_hash: String,
    /// What the component declared: functions with their parameters, the driver ABI.
    pub metadata: Value,
    pub default_settings: Value,
    /// Per-driver sandbox limits; unset ones take the engine's (`[engine]` config).
    #[serde(skip_serializing_if = "SandboxBudget::is_unset")]
    pub sandbox: SandboxBudget,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}

/// Sandbox limits for one driver's modules, overriding the engine's defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct SandboxBudget {
    /// Linear memory a module may grow to, in MiB (1..=4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Wall-clock budget of one event, in milliseconds (10..=60000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_budget_ms: Option<u32>,
}

impl SandboxBudget {
    pub fn is_unset(&self) -> bool {
        *self == SandboxBudget::default()
    }
}

record_common!(
    DriverRecord,
    IdKind::Driver,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        require_name("module_name", &self.module_name)?;
        bounded("description", &self.description, MAX_TEXT)?;
        if self.component_hash.len() != 64
            || !self.component_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ValidationError::new(
                "component_hash",
                "must be 64 hex characters (SHA-256)",
            ));
        }
        if !self.metadata.is_null() {
            require_object("metadata", &self.metadata)?;
        }
        if self
            .sandbox
            .memory_mb
            .is_some_and(|m| !(1..=4096).contains(&m))
        {
            return Err(ValidationError::new(
                "sandbox.memory_mb",
                "must be 1..=4096",
            ));
        }
        if self
            .sandbox
            .event_budget_ms
            .is_some_and(|m| !(10..=60_000).contains(&m))
        {
            return Err(ValidationError::new(
                "sandbox.event_budget_ms",
                "must be 10..=60000",
            ));
        }
        require_object("default_settings", &self.default_settings)
    },
    index = |self| { vec![("component", self.component_hash.to_ascii_lowercase())] },
    search = |self| { lower(&[&self.name, &self.module_name, &self.description]) }
);

/// Who may read a settings document (PlaceOS encryption levels). Anything above `None`
/// is sealed at rest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EncryptionLevel {
    #[default]
    None,
    Support,
    Admin,
    /// Used by drivers only; never shown to anyone.
    NeverDisplay,
}

/// A secret sealed with AES-256-GCM by the keyring (`lintel-auth`), bound to its record
/// id and field as associated data. The store only ever sees this form.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SealedValue {
    /// Which keyring key sealed it.
    pub key_id: String,
    /// Base64 96-bit nonce.
    pub nonce: String,
    /// Base64 ciphertext with the GCM tag.
    pub ciphertext: String,
}
impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A settings document's content: plain JSON, or sealed when its level is above `None`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SettingsBody {
    Plain(Value),
    Sealed(SealedValue),
}
impl Default for SettingsBody {
    fn default() -> Self {
        SettingsBody::Plain(empty_object())
    }
}

/// Settings attached to a module, system, zone or driver. Merged nearest-wins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Settings {
    pub id: String,
    pub tenant_id: String,
    pub parent_id: String,
    pub encryption_level: EncryptionLevel,
    pub body: SettingsBody,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
/// The record kinds settings can be attached to.
pub const SETTINGS_PARENTS: [IdKind; 4] =
    [IdKind::Module, IdKind::System, IdKind::Zone, IdKind::Driver];
record_common!(
    Settings,
    IdKind::Settings,
    tenant = tenant_id,
    |self| {
        require_any_id("parent_id", &SETTINGS_PARENTS, &self.parent_id)?;
        match (&self.body, self.encryption_level) {
            (SettingsBody::Plain(v), EncryptionLevel::None) => require_object("body", v),
            (SettingsBody::Sealed(s), level) if level != EncryptionLevel::None => {
                if s.key_id.is_empty() || s.nonce.is_empty() || s.ciphertext.is_empty() {
                    return Err(ValidationError::new("body", "sealed value is incomplete"));
                }
                Ok(())
            }
            (SettingsBody::Plain(_), _) => Err(ValidationError::new(
                "body",
                "settings above encryption level `none` must be sealed",
            )),
            (SettingsBody::Sealed(_), _) => Err(ValidationError::new(
                "body",
                "settings at encryption level `none` must not be sealed",
            )),
        }
    },
    index = |self| { vec![("parent", self.parent_id.clone())] },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.encryption_level != EncryptionLevel::None {
            v["body"] = Value::String(REDACTED.into());
        }
        v
    }
);

#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default, Hash,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Staff,
    Support,
    Admin,
    Sysadmin,
}

/// A person who signs in. The password hash is a PHC string (scrypt, parameters inline).
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// Unique within the tenant (case-insensitive).
    pub email: String,
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub password_hash: Option<String>,
    pub roles: Vec<Role>,
    /// Identity-provider groups, mapped to roles at sign-in.
    pub groups: Vec<String>,
    pub department: Option<String>,
    /// Disabled users cannot sign in; their tokens stop working.
    pub disabled: bool,
    /// The single-sign-on identity this user is linked to: `<idp id>|<subject>`.
    pub sso_subject: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("email", &self.email)
            .field("roles", &self.roles)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}
record_common!(
    User,
    IdKind::User,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        require_email("email", &self.email)?;
        if let Some(h) = &self.password_hash
            && (!h.starts_with('$') || h.len() > 512)
        {
            return Err(ValidationError::new(
                "password_hash",
                "must be a PHC hash string",
            ));
        }
        if let Some(d) = &self.department {
            bounded("department", d, MAX_NAME)?;
        }
        if self.groups.len() > MAX_LIST {
            return Err(ValidationError::new(
                "groups",
                format!("at most {MAX_LIST} entries"),
            ));
        }
        for g in &self.groups {
            require_name("groups", g)?;
        }
        Ok(())
    },
    index = |self| {
        let mut v = vec![("email", self.email.to_ascii_lowercase())];
        if let Some(s) = &self.sso_subject {
            v.push(("sso_subject", s.clone()));
        }
        v
    },
    search = |self| {
        lower(&[
            &self.name,
            &self.email,
            self.department.as_deref().unwrap_or(""),
        ])
    },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.password_hash.is_some() {
            v["password_hash"] = Value::String(REDACTED.into());
        }
        v
    }
);

/// An API key for BI tools and integrations: the secret is shown once and stored hashed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    /// The user the key acts for (audit actor), if any.
    pub user_id: Option<String>,
    pub role: Role,
    /// Narrower permissions than the role, e.g. `systems.read`. Empty = the whole role.
    pub scopes: Vec<String>,
    /// Hash of the secret (PHC string).
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub secret_hash: String,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}
record_common!(
    ApiKey,
    IdKind::ApiKey,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        bounded("description", &self.description, MAX_TEXT)?;
        if let Some(u) = &self.user_id {
            require_id("user_id", IdKind::User, u)?;
        }
        require_tags("scopes", &self.scopes)?;
        if !self.secret_hash.starts_with('$') || self.secret_hash.len() > 512 {
            return Err(ValidationError::new(
                "secret_hash",
                "must be a PHC hash string",
            ));
        }
        Ok(())
    },
    index = |self| {
        // `id` lets a presented key be found before its tenant is known.
        let mut v = vec![("id", self.id.clone())];
        v.extend(self.user_id.iter().map(|u| ("user", u.clone())));
        v
    },
    search = |self| { lower(&[&self.name, &self.description]) },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["secret_hash"] = Value::String(REDACTED.into());
        v
    }
);

/// A trigger: conditions over module state and schedules that run actions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Trigger {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    /// The system it watches; `None` for a template applied to systems later.
    pub control_system_id: Option<String>,
    pub enabled: bool,
    /// Conditions (state comparisons, schedules, webhooks): a JSON array.
    pub conditions: Value,
    /// Actions (function calls, emails): a JSON array.
    pub actions: Value,
    /// Minimum time between two firings.
    pub debounce_ms: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    Trigger,
    IdKind::Trigger,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        bounded("description", &self.description, MAX_TEXT)?;
        if let Some(sys) = &self.control_system_id {
            require_id("control_system_id", IdKind::System, sys)?;
        }
        for (field, v) in [("conditions", &self.conditions), ("actions", &self.actions)] {
            if !(v.is_array() || v.is_null()) {
                return Err(ValidationError::new(field, "must be a JSON array"));
            }
        }
        Ok(())
    },
    index = |self| {
        self.control_system_id
            .iter()
            .map(|s| ("system", s.clone()))
            .collect()
    },
    search = |self| { lower(&[&self.name, &self.description]) }
);

/// A free-form JSON document attached to any record (PlaceOS metadata: floor maps,
/// booking rules, app configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Metadata {
    pub id: String,
    pub tenant_id: String,
    pub parent_id: String,
    pub name: String,
    pub description: String,
    pub details: Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    Metadata,
    IdKind::Metadata,
    tenant = tenant_id,
    |self| {
        if IdKind::of_id(&self.parent_id).is_none() {
            return Err(ValidationError::new(
                "parent_id",
                "must be a record id (`sys-…`, `zone-…`, …)",
            ));
        }
        require_name("name", &self.name)?;
        bounded("description", &self.description, MAX_TEXT)
    },
    index = |self| {
        vec![
            ("parent", self.parent_id.clone()),
            ("name", self.name.clone()),
        ]
    },
    search = |self| { lower(&[&self.name, &self.description]) }
);

/// What happened to a record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    #[default]
    Created,
    Updated,
    Deleted,
    Restored,
    Purged,
    /// A successful sign-in (password or single sign-on); the record is the user.
    SignedIn,
    /// A refused sign-in; the record is the user, or `unknown`.
    SignInFailed,
    /// A session ended by its user (logout).
    SignedOut,
    /// A session revoked by Lintel (refresh-token reuse) or by an administrator.
    SessionRevoked,
    /// A command from outside (an MQTT command topic) ran, failed or was refused; the
    /// record is the module (or the broker when no module was found), the diff holds the
    /// function, arguments and outcome.
    Executed,
}
impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Created => "created",
            AuditAction::Updated => "updated",
            AuditAction::Deleted => "deleted",
            AuditAction::Restored => "restored",
            AuditAction::Purged => "purged",
            AuditAction::SignedIn => "signed_in",
            AuditAction::SignInFailed => "sign_in_failed",
            AuditAction::SignedOut => "signed_out",
            AuditAction::SessionRevoked => "session_revoked",
            AuditAction::Executed => "executed",
        }
    }
}

/// One configuration change: who, when, what, and a diff with secrets redacted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct AuditEntry {
    /// Time-ordered (`audit-<ms hex>…`), so id order is time order.
    pub id: String,
    pub tenant_id: String,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// `user-…`, `key-…`, or `system` for Lintel itself.
    pub actor: String,
    pub record_kind: String,
    pub record_id: String,
    /// The record's version after the change.
    pub record_version: u64,
    pub action: AuditAction,
    /// `{field: {"from": old, "to": new}}` over top-level fields, secrets redacted.
    pub diff: Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(
    AuditEntry,
    IdKind::Audit,
    tenant = tenant_id,
    |self| {
        require_name("actor", &self.actor)?;
        if IdKind::from_name(&self.record_kind).is_none() {
            return Err(ValidationError::new("record_kind", "unknown record kind"));
        }
        require_name("record_id", &self.record_id)
    },
    index = |self| {
        vec![
            ("record", self.record_id.clone()),
            ("actor", self.actor.clone()),
        ]
    }
);

/// A sign-in session: the family of rotating refresh tokens issued from one sign-in.
/// Presenting a refresh token that was already exchanged revokes the whole family.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Session {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    /// How the user signed in: `password` or `oidc:<idp id>`.
    pub method: String,
    /// SHA-256 (hex) of the current refresh token's secret.
    pub refresh_hash: String,
    /// SHA-256 (hex) of the refresh tokens already exchanged, newest last (bounded).
    pub used_hashes: Vec<String>,
    /// Absolute end of the session (Unix seconds): refresh stops working after it.
    pub expires_at: i64,
    pub last_used_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
/// How many exchanged refresh-token hashes a session remembers for reuse detection.
pub const SESSION_USED_HASHES: usize = 64;
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}
record_common!(
    Session,
    IdKind::Session,
    tenant = tenant_id,
    |self| {
        require_id("user_id", IdKind::User, &self.user_id)?;
        require_name("method", &self.method)?;
        if self.refresh_hash.len() != 64 {
            return Err(ValidationError::new(
                "refresh_hash",
                "must be a SHA-256 hex digest",
            ));
        }
        if self.used_hashes.len() > SESSION_USED_HASHES {
            return Err(ValidationError::new(
                "used_hashes",
                format!("at most {SESSION_USED_HASHES} entries"),
            ));
        }
        Ok(())
    },
    index = |self| { vec![("user", self.user_id.clone())] },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["refresh_hash"] = Value::String(REDACTED.into());
        v["used_hashes"] = Value::String(REDACTED.into());
        v
    }
);

/// Which identity-provider group grants which role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RoleMapping {
    pub group: String,
    pub role: Role,
}

/// An OpenID Connect identity provider a tenant's users sign in with (Entra ID, Google,
/// Okta, Keycloak, …). The client secret is sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct IdentityProvider {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The issuer URL; its `/.well-known/openid-configuration` is discovered.
    pub issuer: String,
    pub client_id: String,
    /// Sealed with the keyring (field `client_secret`); `None` for a public client. Over
    /// the API: written as a string (sealed), `null` to clear; read back as `true` when set.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub client_secret: Option<SealedValue>,
    /// Scopes requested besides `openid`.
    pub scopes: Vec<String>,
    /// The ID-token claim that lists the user's groups.
    pub groups_claim: String,
    /// Groups → roles; a user gets every role one of their groups maps to.
    pub role_mappings: Vec<RoleMapping>,
    /// The role of a user none of whose groups is mapped; `None` refuses them.
    pub default_role: Option<Role>,
    /// Microsoft Entra ID: the directory (`tid` claim) ids accepted. Empty = any.
    pub allowed_tids: Vec<String>,
    /// Google Workspace: the hosted domains (`hd` claim) accepted. Empty = any.
    pub allowed_hosted_domains: Vec<String>,
    /// Create a user on first sign-in (else only existing users, matched by email).
    pub create_users: bool,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl Default for IdentityProvider {
    fn default() -> Self {
        IdentityProvider {
            id: String::new(),
            tenant_id: String::new(),
            name: String::new(),
            issuer: String::new(),
            client_id: String::new(),
            client_secret: None,
            scopes: vec!["email".into(), "profile".into()],
            groups_claim: "groups".into(),
            role_mappings: Vec::new(),
            default_role: Some(Role::Staff),
            allowed_tids: Vec::new(),
            allowed_hosted_domains: Vec::new(),
            create_users: true,
            enabled: true,
            created_at: 0,
            updated_at: 0,
            version: 0,
        }
    }
}
/// Whether `url` is an issuer Lintel will talk to: https, or http on a loopback host.
fn require_issuer(field: &'static str, url: &str) -> Result<(), ValidationError> {
    bounded(field, url, 2048)?;
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| {
            url.strip_prefix(p)
                .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
        });
    if url.starts_with("https://") && url.len() > "https://".len() || loopback {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be an https:// URL (http:// only on a loopback address)",
        ))
    }
}
record_common!(
    IdentityProvider,
    IdKind::IdentityProvider,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        require_issuer("issuer", &self.issuer)?;
        require_name("client_id", &self.client_id)?;
        require_tags("scopes", &self.scopes)?;
        require_name("groups_claim", &self.groups_claim)?;
        if self.role_mappings.len() > MAX_LIST {
            return Err(ValidationError::new(
                "role_mappings",
                format!("at most {MAX_LIST} entries"),
            ));
        }
        for m in &self.role_mappings {
            require_name("role_mappings", &m.group)?;
            if m.role == Role::Sysadmin {
                return Err(ValidationError::new(
                    "role_mappings",
                    "sysadmin is never granted by a group; assign it to the user",
                ));
            }
        }
        if self.default_role == Some(Role::Sysadmin) {
            return Err(ValidationError::new("default_role", "must not be sysadmin"));
        }
        for (field, list) in [
            ("allowed_tids", &self.allowed_tids),
            ("allowed_hosted_domains", &self.allowed_hosted_domains),
        ] {
            if list.len() > 64 {
                return Err(ValidationError::new(field, "at most 64 entries"));
            }
            for v in list {
                require_name(field, v)?;
            }
        }
        if let Some(s) = &self.client_secret
            && (s.key_id.is_empty() || s.nonce.is_empty() || s.ciphertext.is_empty())
        {
            return Err(ValidationError::new(
                "client_secret",
                "sealed value is incomplete",
            ));
        }
        Ok(())
    },
    search = |self| { lower(&[&self.name, &self.issuer]) },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.client_secret.is_some() {
            v["client_secret"] = Value::String(REDACTED.into());
        }
        v
    }
);

/// Who may run a function over a broker's command topic: each field is an exact value or
/// `*`. `module` is a name (`Display`, any index) or a name with its index (`Display_2`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CommandRule {
    /// A system id (`sys-…`) of the broker's tenant, or `*`.
    pub system: String,
    pub module: String,
    pub function: String,
}

impl CommandRule {
    /// Whether the rule lets `function` run on the `index`th `module` of `system`.
    pub fn allows(&self, system: &str, module: &str, index: u32, function: &str) -> bool {
        let module_ok = self.module == "*"
            || self.module == module
            || self.module == format!("{module}_{index}");
        (self.system == "*" || self.system == system)
            && module_ok
            && (self.function == "*" || self.function == function)
    }
}

/// Inbound commands over MQTT: off unless enabled, and then only what a rule allows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct BrokerCommands {
    pub enabled: bool,
    pub allow: Vec<CommandRule>,
    /// Commands taken per second (more wait, up to a burst of the same number; beyond
    /// that they are refused).
    pub per_second: u32,
}
impl Default for BrokerCommands {
    fn default() -> Self {
        BrokerCommands {
            enabled: false,
            allow: Vec::new(),
            per_second: 10,
        }
    }
}

/// An MQTT broker a tenant's live state is published to (PlaceOS `brokers`). The password
/// is sealed (field `password`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Broker {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    /// Host name or IP address.
    pub host: String,
    /// 1883 by default, 8883 with `tls`.
    pub port: Option<u16>,
    pub tls: bool,
    /// Certificates (PEM) trusted besides the public web roots, for a broker with a site
    /// CA or a self-signed certificate. The broker's host name is always checked.
    pub ca_certificate: Option<String>,
    pub username: Option<String>,
    /// Sealed with the keyring; `None` when none. Over the API: written as a string
    /// (sealed), `null` to clear; read back as `true` when set.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub password: Option<SealedValue>,
    /// MQTT client id; `lintel-<broker id>` by default.
    pub client_id: Option<String>,
    pub keep_alive_secs: u16,
    /// 0 (at most once, as PlaceOS) or 1 (at least once).
    pub qos: u8,
    /// The first topic level (`placeos` as PlaceOS).
    pub topic_prefix: String,
    pub commands: BrokerCommands,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl Default for Broker {
    fn default() -> Self {
        Broker {
            id: String::new(),
            tenant_id: String::new(),
            name: String::new(),
            description: String::new(),
            host: String::new(),
            port: None,
            tls: false,
            ca_certificate: None,
            username: None,
            password: None,
            client_id: None,
            keep_alive_secs: 30,
            qos: 0,
            topic_prefix: "placeos".into(),
            commands: BrokerCommands::default(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            version: 0,
        }
    }
}
impl Broker {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 8883 } else { 1883 })
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("lintel-{}", self.id))
    }
}

/// Topic text Lintel writes itself (a prefix, a name): no MQTT wildcards, no NUL, no empty
/// or outer `/` levels.
fn require_topic_part(
    field: &'static str,
    value: &str,
    slash: bool,
) -> Result<(), ValidationError> {
    bounded(field, value, 128)?;
    let bad = value.is_empty()
        || value.contains(['+', '#', '\0'])
        || (!slash && value.contains('/'))
        || value.split('/').any(str::is_empty);
    if bad {
        return Err(ValidationError::new(
            field,
            if slash {
                "1–128 bytes of topic levels separated by `/`, without `+`, `#` or empty levels"
            } else {
                "1–128 bytes without `/`, `+` or `#`"
            },
        ));
    }
    Ok(())
}

record_common!(
    Broker,
    IdKind::Broker,
    tenant = tenant_id,
    |self| {
        require_name("name", &self.name)?;
        bounded("description", &self.description, MAX_TEXT)?;
        require_name("host", &self.host)?;
        if !self
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        {
            return Err(ValidationError::new(
                "host",
                "a host name or IP address (no scheme, port or path)",
            ));
        }
        if self.port == Some(0) {
            return Err(ValidationError::new("port", "must be 1–65535"));
        }
        if let Some(ca) = &self.ca_certificate {
            bounded("ca_certificate", ca, 64 * 1024)?;
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ValidationError::new(
                    "ca_certificate",
                    "must be PEM certificates (-----BEGIN CERTIFICATE-----)",
                ));
            }
            if !self.tls {
                return Err(ValidationError::new("ca_certificate", "needs `tls: true`"));
            }
        }
        if let Some(u) = &self.username {
            require_name("username", u)?;
        }
        match &self.password {
            Some(_) if self.username.is_none() => {
                return Err(ValidationError::new("password", "needs a `username`"));
            }
            Some(s) if s.key_id.is_empty() || s.nonce.is_empty() || s.ciphertext.is_empty() => {
                return Err(ValidationError::new(
                    "password",
                    "sealed value is incomplete",
                ));
            }
            _ => {}
        }
        if let Some(c) = &self.client_id {
            require_topic_part("client_id", c, false)?;
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            return Err(ValidationError::new("keep_alive_secs", "must be 5–3600"));
        }
        if self.qos > 1 {
            return Err(ValidationError::new("qos", "must be 0 or 1"));
        }
        require_topic_part("topic_prefix", &self.topic_prefix, true)?;
        let c = &self.commands;
        if !(1..=1000).contains(&c.per_second) {
            return Err(ValidationError::new(
                "commands.per_second",
                "must be 1–1000",
            ));
        }
        if c.allow.len() > 256 {
            return Err(ValidationError::new("commands.allow", "at most 256 rules"));
        }
        for r in &c.allow {
            if r.system != "*" {
                require_id("commands.allow.system", IdKind::System, &r.system)?;
            }
            require_topic_part("commands.allow.module", &r.module, false)?;
            require_topic_part("commands.allow.function", &r.function, false)?;
        }
        if c.enabled && c.allow.is_empty() {
            return Err(ValidationError::new(
                "commands.allow",
                "enabled commands need at least one rule",
            ));
        }
        Ok(())
    },
    search = |self| { lower(&[&self.name, &self.host, &self.description]) },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if self.password.is_some() {
            v["password"] = Value::String(REDACTED.into());
        }
        v
    }
);

/// A tenant's access-token signing key (Ed25519). The private half is sealed; the public
/// half is published in the tenant's JWKS. The id is the JWT `kid`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct SigningKey {
    pub id: String,
    pub tenant_id: String,
    /// JOSE algorithm: `EdDSA`.
    pub algorithm: String,
    /// The raw public key, base64url without padding.
    pub public_key: String,
    /// The PKCS#8 private key, sealed (field `private_key`).
    pub private_key: SealedValue,
    /// When (Unix seconds) the key stops verifying; set when a newer key replaces it.
    pub retire_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}
record_common!(
    SigningKey,
    IdKind::SigningKey,
    tenant = tenant_id,
    |self| {
        if self.algorithm != "EdDSA" {
            return Err(ValidationError::new("algorithm", "must be EdDSA"));
        }
        require_name("public_key", &self.public_key)?;
        if self.private_key.key_id.is_empty() || self.private_key.ciphertext.is_empty() {
            return Err(ValidationError::new("private_key", "must be sealed"));
        }
        Ok(())
    },
    // `id` (the JWT `kid`) finds a key before its tenant is known.
    index = |self| { vec![("id", self.id.clone())] },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["private_key"] = Value::String(REDACTED.into());
        v
    }
);

/// The refresh token an OAuth 2.0 provider issued to a module in place of the one in its
/// `oauth2` setting (providers that rotate refresh tokens answer each renewal with a new
/// one). The engine keeps it here, sealed (field `refresh_token`), so a restarted module
/// goes on with the latest token rather than one the provider may have retired. One per
/// module: the id is the module's with prefix `rtoken` ([`RefreshToken::id_for`]).
/// Engine bookkeeping: not audited, not served by the API; purged with its module.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct RefreshToken {
    pub id: String,
    pub tenant_id: String,
    pub module_id: String,
    /// SHA-256 (hex) of the credentials it descends from (token URL, client id and the
    /// configured refresh token): once an administrator stores new ones, this token is
    /// ignored.
    pub configured: String,
    /// The latest refresh token, sealed.
    pub refresh_token: SealedValue,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
impl RefreshToken {
    /// The record of module `module_id` (`mod-x` → `rtoken-x`); `None` for a malformed id.
    pub fn id_for(module_id: &str) -> Option<String> {
        IdKind::Module.is_valid_id(module_id).then(|| {
            format!(
                "{}{}",
                IdKind::RefreshToken.prefix(),
                &module_id[IdKind::Module.prefix().len()..]
            )
        })
    }
}
impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("id", &self.id)
            .field("module_id", &self.module_id)
            .finish_non_exhaustive()
    }
}
record_common!(
    RefreshToken,
    IdKind::RefreshToken,
    tenant = tenant_id,
    |self| {
        require_id("module_id", IdKind::Module, &self.module_id)?;
        if RefreshToken::id_for(&self.module_id).as_deref() != Some(self.id.as_str()) {
            return Err(ValidationError::new(
                "id",
                "must be the module id with prefix `rtoken` instead of `mod`",
            ));
        }
        if self.configured.len() != 64 || !self.configured.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "configured",
                "must be a SHA-256 hex digest",
            ));
        }
        if self.refresh_token.key_id.is_empty() || self.refresh_token.ciphertext.is_empty() {
            return Err(ValidationError::new("refresh_token", "must be sealed"));
        }
        Ok(())
    },
    redact = |self| {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["refresh_token"] = Value::String(REDACTED.into());
        v
    }
);

/// The top-level fields that differ between two redacted records, as
/// `{field: {"from": old, "to": new}}`. Bookkeeping fields (`version`, `updated_at`) are
/// left out. `before = None` (created) lists every field with `from: null`.
pub fn diff(before: Option<&Value>, after: Option<&Value>) -> Value {
    let empty = serde_json::Map::new();
    let obj = |v: Option<&Value>| v.and_then(Value::as_object).unwrap_or(&empty).clone();
    let (b, a) = (obj(before), obj(after));
    let mut out = serde_json::Map::new();
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    for k in keys {
        if k == "version" || k == "updated_at" {
            continue;
        }
        let (from, to) = (b.get(k), a.get(k));
        if from != to {
            out.insert(
                k.clone(),
                serde_json::json!({"from": from.cloned().unwrap_or(Value::Null), "to": to.cloned().unwrap_or(Value::Null)}),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_id, now_unix};
    use serde_json::json;

    fn module() -> Module {
        Module {
            id: new_id(IdKind::Module),
            tenant_id: new_id(IdKind::Tenant),
            driver_id: new_id(IdKind::Driver),
            uri: Some("tcp://10.0.0.5:4352".into()),
            running: true,
            created_at: now_unix(),
            updated_at: now_unix(),
            ..Default::default()
        }
    }

    /// Time zones are IANA names; anything else is refused naming the field.
    #[test]
    fn time_zones_must_be_iana_names() {
        let system = |tz: &str| ControlSystem {
            id: new_id(IdKind::System),
            tenant_id: new_id(IdKind::Tenant),
            name: "Room".into(),
            timezone: Some(tz.into()),
            ..Default::default()
        };
        let zone = |tz: &str| Zone {
            id: new_id(IdKind::Zone),
            tenant_id: new_id(IdKind::Tenant),
            name: "Level 3".into(),
            timezone: Some(tz.into()),
            ..Default::default()
        };
        for tz in ["Europe/London", "Australia/Sydney", "UTC", ""] {
            assert_eq!(system(tz).validate(), Ok(()), "{tz}");
            assert_eq!(zone(tz).validate(), Ok(()), "{tz}");
        }
        for tz in ["Mars/Olympus", "+05:00", " Europe/London"] {
            let e = system(tz).validate().unwrap_err();
            assert_eq!(e.field, "timezone", "{tz}");
            assert!(e.to_string().contains("IANA time zone"), "{e}");
            assert_eq!(zone(tz).validate().unwrap_err().field, "timezone");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(module().validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut Module)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("driver_id", Box::new(|m| m.driver_id = "sys-nope".into())),
            (
                "uri",
                Box::new(|m| m.uri = Some("file:///etc/passwd".into())),
            ),
            ("port", Box::new(|m| m.port = Some(0))),
            ("tls", Box::new(|m| (m.tls, m.udp) = (true, true))),
            (
                "custom_name",
                Box::new(|m| m.custom_name = Some("Bad Name".into())),
            ),
            ("tenant_id", Box::new(|m| m.tenant_id = "zone-x".into())),
            ("notes", Box::new(|m| m.notes = "x".repeat(MAX_TEXT + 1))),
            ("ip", Box::new(|m| m.ip = Some("a/b".into()))),
        ];
        for (field, mutate) in cases {
            let mut m = module();
            mutate(&mut m);
            assert_eq!(m.validate().unwrap_err().field, field);
        }
        let sys = ControlSystem {
            id: new_id(IdKind::System),
            tenant_id: new_id(IdKind::Tenant),
            name: "Room".into(),
            zones: vec!["zone-a".into(), "zone-a".into()],
            ..Default::default()
        };
        assert_eq!(sys.validate().unwrap_err().field, "zones");
        let zone = Zone {
            id: "zone-a".into(),
            tenant_id: new_id(IdKind::Tenant),
            name: "L1".into(),
            parent_id: Some("zone-a".into()),
            ..Default::default()
        };
        assert_eq!(zone.validate().unwrap_err().field, "parent_id");
    }

    #[test]
    fn module_endpoint_prefers_the_uri_then_ip_and_flags() {
        let mut m = module();
        assert_eq!(m.endpoint().as_deref(), Some("tcp://10.0.0.5:4352"));
        m.uri = None;
        assert_eq!(m.endpoint(), None);
        (m.ip, m.port, m.tls) = (Some("panel.local".into()), Some(443), true);
        assert_eq!(m.endpoint().as_deref(), Some("tls://panel.local:443"));
    }

    #[test]
    fn settings_levels_and_sealing_must_agree() {
        let mut s = Settings {
            id: new_id(IdKind::Settings),
            tenant_id: new_id(IdKind::Tenant),
            parent_id: new_id(IdKind::Module),
            ..Default::default()
        };
        assert_eq!(s.validate(), Ok(()));
        s.encryption_level = EncryptionLevel::Admin;
        assert_eq!(s.validate().unwrap_err().field, "body");
        s.body = SettingsBody::Sealed(SealedValue {
            key_id: "k1".into(),
            nonce: "bm9uY2U=".into(),
            ciphertext: "c2VjcmV0".into(),
        });
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.redacted()["body"], json!(REDACTED));
        s.parent_id = new_id(IdKind::User);
        assert_eq!(s.validate().unwrap_err().field, "parent_id");
    }

    #[test]
    fn secrets_never_show_in_debug_or_redacted_form() {
        let u = User {
            id: new_id(IdKind::User),
            tenant_id: new_id(IdKind::Tenant),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            password_hash: Some("$scrypt$secret-material".into()),
            roles: vec![Role::Admin],
            ..Default::default()
        };
        assert!(!format!("{u:?}").contains("secret-material"));
        assert!(!u.redacted().to_string().contains("secret-material"));
        let k = ApiKey {
            id: new_id(IdKind::ApiKey),
            tenant_id: u.tenant_id.clone(),
            name: "BI".into(),
            secret_hash: "$scrypt$key-material".into(),
            ..Default::default()
        };
        assert_eq!(k.validate(), Ok(()));
        assert!(!format!("{k:?}").contains("key-material"));
        assert!(!k.redacted().to_string().contains("key-material"));
        let sealed = SealedValue {
            key_id: "k1".into(),
            nonce: "n".into(),
            ciphertext: "cipher-material".into(),
        };
        assert!(!format!("{sealed:?}").contains("cipher-material"));
    }

    fn broker() -> Broker {
        Broker {
            id: new_id(IdKind::Broker),
            tenant_id: new_id(IdKind::Tenant),
            name: "Site broker".into(),
            host: "broker.example.com".into(),
            ..Default::default()
        }
    }

    fn sealed() -> SealedValue {
        SealedValue {
            key_id: "k1".into(),
            nonce: "bm9uY2U=".into(),
            ciphertext: "c2VjcmV0".into(),
        }
    }

    fn rule(system: &str, module: &str, function: &str) -> CommandRule {
        CommandRule {
            system: system.into(),
            module: module.into(),
            function: function.into(),
        }
    }

    #[test]
    fn broker_defaults_are_valid_and_as_placeos() {
        let b = broker();
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(
            (b.port(), b.qos, b.topic_prefix.as_str()),
            (1883, 0, "placeos")
        );
        assert!(b.enabled && !b.commands.enabled, "{b:?}");
        assert_eq!(b.client_id(), format!("lintel-{}", b.id));
        let tls = Broker {
            tls: true,
            ..broker()
        };
        assert_eq!(tls.port(), 8883);
        for host in ["10.0.0.5", "::1", "mqtt-1.site.local"] {
            let b = Broker {
                host: host.into(),
                ..broker()
            };
            assert_eq!(b.validate(), Ok(()), "{host}");
        }
        // With a username, a sealed password, TLS, a CA, commands and their rules.
        let full = Broker {
            tls: true,
            ca_certificate: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
            username: Some("lintel".into()),
            password: Some(sealed()),
            qos: 1,
            topic_prefix: "site/placeos".into(),
            commands: BrokerCommands {
                enabled: true,
                allow: vec![rule("*", "Display", "power")],
                per_second: 5,
            },
            ..broker()
        };
        assert_eq!(full.validate(), Ok(()));
        assert_eq!(full.redacted()["password"], json!(REDACTED));
        assert!(!full.redacted().to_string().contains("c2VjcmV0"));
    }

    /// Each bad broker is refused naming the field.
    #[test]
    fn broker_validation_names_the_field() {
        type Mutation = Box<dyn Fn(&mut Broker)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|b| b.name.clear())),
            ("host", Box::new(|b| b.host.clear())),
            (
                "host",
                Box::new(|b| b.host = "mqtt://broker.example.com".into()),
            ),
            ("host", Box::new(|b| b.host = "broker/path".into())),
            ("host", Box::new(|b| b.host = "broker example".into())),
            ("port", Box::new(|b| b.port = Some(0))),
            ("qos", Box::new(|b| b.qos = 2)),
            ("keep_alive_secs", Box::new(|b| b.keep_alive_secs = 0)),
            ("password", Box::new(|b| b.password = Some(sealed()))),
            (
                "password",
                Box::new(|b| {
                    b.username = Some("lintel".into());
                    b.password = Some(SealedValue::default());
                }),
            ),
            (
                "ca_certificate",
                Box::new(|b| {
                    b.tls = true;
                    b.ca_certificate = Some("not a certificate".into());
                }),
            ),
            (
                "ca_certificate",
                Box::new(|b| {
                    b.ca_certificate = Some("-----BEGIN CERTIFICATE-----\n".into());
                }),
            ),
            (
                "topic_prefix",
                Box::new(|b| b.topic_prefix = "a/+/b".into()),
            ),
            ("topic_prefix", Box::new(|b| b.topic_prefix = "a/#".into())),
            (
                "topic_prefix",
                Box::new(|b| b.topic_prefix = "/placeos".into()),
            ),
            (
                "topic_prefix",
                Box::new(|b| b.topic_prefix = "placeos/".into()),
            ),
            ("topic_prefix", Box::new(|b| b.topic_prefix = "a//b".into())),
            ("topic_prefix", Box::new(|b| b.topic_prefix.clear())),
            ("client_id", Box::new(|b| b.client_id = Some("a/b".into()))),
            ("client_id", Box::new(|b| b.client_id = Some("a#".into()))),
            ("commands.allow", Box::new(|b| b.commands.enabled = true)),
            (
                "commands.per_second",
                Box::new(|b| b.commands.per_second = 0),
            ),
            (
                "commands.allow.system",
                Box::new(|b| b.commands.allow = vec![rule("zone-x", "*", "*")]),
            ),
            (
                "commands.allow.module",
                Box::new(|b| b.commands.allow = vec![rule("*", "Display/1", "*")]),
            ),
            (
                "commands.allow.function",
                Box::new(|b| b.commands.allow = vec![rule("*", "*", "+")]),
            ),
        ];
        for (field, mutate) in cases {
            let mut b = broker();
            mutate(&mut b);
            let e = b
                .validate()
                .expect_err(&format!("{field} should be refused: {b:?}"));
            assert_eq!(e.field, field, "{e}");
        }
        // Rules may be listed while commands are off.
        let mut b = broker();
        b.commands.allow = vec![rule("*", "*", "*")];
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn command_rules_match_names_indexes_and_wildcards() {
        let any = rule("*", "*", "*");
        assert!(any.allows("sys-a", "Display", 1, "power"));
        assert!(any.allows("sys-b", "Camera", 7, "zoom"));
        // A bare name: that module at any index.
        let display = rule("sys-a", "Display", "power");
        assert!(display.allows("sys-a", "Display", 1, "power"));
        assert!(display.allows("sys-a", "Display", 2, "power"));
        assert!(
            !display.allows("sys-b", "Display", 1, "power"),
            "another system"
        );
        assert!(
            !display.allows("sys-a", "Display", 1, "volume"),
            "another function"
        );
        assert!(
            !display.allows("sys-a", "Displays", 1, "power"),
            "another module"
        );
        // A name with its index: that one only.
        let second = rule("*", "Display_2", "*");
        assert!(second.allows("sys-a", "Display", 2, "power"));
        assert!(second.allows("sys-b", "Display", 2, "input"));
        assert!(!second.allows("sys-a", "Display", 1, "power"));
        assert!(!second.allows("sys-a", "Display", 22, "power"));
    }

    #[test]
    fn diff_lists_changed_fields_only() {
        let a = json!({"name": "A", "capacity": 4, "version": 1, "updated_at": 1});
        let b = json!({"name": "B", "capacity": 4, "version": 2, "updated_at": 2});
        assert_eq!(
            diff(Some(&a), Some(&b)),
            json!({"name": {"from": "A", "to": "B"}})
        );
        assert_eq!(
            diff(None, Some(&json!({"name": "A"}))),
            json!({"name": {"from": null, "to": "A"}})
        );
    }

    #[test]
    fn older_documents_with_missing_fields_still_decode() {
        let m: Module = serde_json::from_value(json!({
            "id": "mod-a", "tenant_id": "authority-a", "driver_id": "driver-a"
        }))
        .unwrap();
        assert!(m.running, "modules run unless told otherwise");
    }
}
