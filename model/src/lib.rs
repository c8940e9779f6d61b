//! Lintel's domain model: the PlaceOS-shaped records that configure a building.
//!
//! This crate holds plain data, validation and schema migrations only. It imports no
//! framework: the store, engine and API crates depend on it, never the other way round.

mod ids;
mod migrations;
mod records;

pub use ids::{IdKind, ModuleSlug, SlugError, new_id, new_time_ordered_id, now_unix, now_unix_ms};
pub use migrations::{Migrated, MigrationError, SCHEMA_VERSION, migrate};
pub use records::{
    ApiKey, AuditAction, AuditEntry, Broker, BrokerCommands, CommandRule, ControlSystem,
    DriverRecord, DriverRole, EncryptionLevel, IdentityProvider, MODULE_URI_SCHEMES, Metadata,
    Module, REDACTED, Record, RefreshToken, Role, RoleMapping, SESSION_USED_HASHES,
    SETTINGS_PARENTS, SandboxBudget, SealedValue, Session, Settings, SettingsBody, SigningKey,
    Tenant, Trigger, User, ValidationError, ZONE_TAGS, Zone, diff,
};
