use crate::ids::IdKind;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

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
    fn set_updated_at(&mut self, at: i64);
    /// Checks the record's own fields (not references to other records).
    fn validate(&self) -> Result<(), ValidationError>;
}

fn require_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > 256 {
        return Err(ValidationError::new(field, "must be at most 256 bytes"));
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

macro_rules! record_common {
    ($ty:ty, $kind:expr, tenant = $tenant:ident, |$s:ident| $validate:block) => {
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
            fn set_updated_at(&mut self, at: i64) {
                self.updated_at = at;
            }
            fn validate(&$s) -> Result<(), ValidationError> {
                require_id("id", $kind, &$s.id)?;
                $validate
            }
        }
    };
}

/// A tenant (PlaceOS "authority"): one organisation, reached by its domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// The domain the tenant's users reach Lintel by; JWT `aud` names it.
    pub domain: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(Tenant, IdKind::Tenant, tenant = id, |self| {
    require_name("name", &self.name)?;
    require_name("domain", &self.domain)
});

/// A zone: a node of the building tree (org / region / building / level / area).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Zone {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// PlaceOS zone tags, e.g. `building`, `level`.
    #[serde(default)]
    pub tags: Vec<String>,
    pub parent_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(Zone, IdKind::Zone, tenant = tenant_id, |self| {
    require_name("name", &self.name)?;
    if let Some(parent) = &self.parent_id {
        require_id("parent_id", IdKind::Zone, parent)?;
    }
    Ok(())
});

/// A control system: usually one room, with an ordered list of modules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControlSystem {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub bookable: bool,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub zones: Vec<String>,
    /// Module ids in order: `Display_2` is the second module named `Display` here.
    #[serde(default)]
    pub modules: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(ControlSystem, IdKind::System, tenant = tenant_id, |self| {
    require_name("name", &self.name)?;
    for z in &self.zones {
        require_id("zones", IdKind::Zone, z)?;
    }
    for m in &self.modules {
        require_id("modules", IdKind::Module, m)?;
    }
    Ok(())
});

/// A module: one running instance of a driver, with where to reach its device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Module {
    pub id: String,
    pub tenant_id: String,
    pub driver_id: String,
    pub control_system_id: Option<String>,
    /// Overrides the driver's module name (`Display`) inside systems.
    #[serde(default)]
    pub custom_name: Option<String>,
    /// Device address: `tcp://host:port`, or `sim://name` for an in-process simulator.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default = "yes")]
    pub running: bool,
    #[serde(default)]
    pub notes: String,
    /// Module-level settings (JSON object), nearest-wins over driver defaults.
    #[serde(default = "empty_object")]
    pub settings: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
fn yes() -> bool {
    true
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
record_common!(Module, IdKind::Module, tenant = tenant_id, |self| {
    require_id("driver_id", IdKind::Driver, &self.driver_id)?;
    if let Some(sys) = &self.control_system_id {
        require_id("control_system_id", IdKind::System, sys)?;
    }
    if let Some(name) = &self.custom_name {
        require_name("custom_name", name)?;
    }
    if let Some(uri) = &self.uri
        && !(uri.starts_with("tcp://") || uri.starts_with("sim://"))
    {
        return Err(ValidationError::new(
            "uri",
            "must start with tcp:// or sim://",
        ));
    }
    if !self.settings.is_object() {
        return Err(ValidationError::new("settings", "must be a JSON object"));
    }
    Ok(())
});

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriverRole {
    Device,
    Service,
    Websocket,
    Logic,
}

/// A driver: a WASM component (stored by content hash) and what it declared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriverRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The name its modules take inside a system (`Display`).
    pub module_name: String,
    pub role: DriverRole,
    #[serde(default)]
    pub description: String,
    /// SHA-256 (hex) of the component bytes.
    pub component_hash: String,
    #[serde(default = "empty_object")]
    pub default_settings: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: u64,
}
record_common!(DriverRecord, IdKind::Driver, tenant = tenant_id, |self| {
    require_name("name", &self.name)?;
    require_name("module_name", &self.module_name)?;
    if self.component_hash.len() != 64
        || !self.component_hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ValidationError::new(
            "component_hash",
            "must be 64 hex characters (SHA-256)",
        ));
    }
    Ok(())
});

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Staff,
    Support,
    Admin,
    Sysadmin,
}

/// A person who signs in. The password hash is a PHC string (scrypt, parameters inline).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub password_hash: Option<String>,
    pub roles: Vec<Role>,
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
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
record_common!(User, IdKind::User, tenant = tenant_id, |self| {
    require_name("name", &self.name)?;
    if !self.email.contains('@') || self.email.len() > 256 {
        return Err(ValidationError::new("email", "must be an email address"));
    }
    Ok(())
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_id, now_unix};

    fn module() -> Module {
        Module {
            id: new_id(IdKind::Module),
            tenant_id: new_id(IdKind::Tenant),
            driver_id: new_id(IdKind::Driver),
            control_system_id: None,
            custom_name: None,
            uri: Some("tcp://10.0.0.5:4352".into()),
            running: true,
            notes: String::new(),
            settings: serde_json::json!({}),
            created_at: now_unix(),
            updated_at: now_unix(),
            version: 0,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(module().validate(), Ok(()));
        let mut m = module();
        m.driver_id = "sys-nope".into();
        assert_eq!(m.validate().unwrap_err().field, "driver_id");
        let mut m = module();
        m.uri = Some("file:///etc/passwd".into());
        assert_eq!(m.validate().unwrap_err().field, "uri");
        let mut m = module();
        m.settings = serde_json::json!([1]);
        assert_eq!(m.validate().unwrap_err().field, "settings");
    }

    #[test]
    fn user_debug_never_shows_the_password_hash() {
        let u = User {
            id: new_id(IdKind::User),
            tenant_id: new_id(IdKind::Tenant),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            password_hash: Some("$scrypt$secret-material".into()),
            roles: vec![Role::Admin],
            created_at: 0,
            updated_at: 0,
            version: 0,
        };
        let shown = format!("{u:?}");
        assert!(!shown.contains("secret-material"), "{shown}");
    }
}
