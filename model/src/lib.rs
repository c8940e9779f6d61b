//! Lintel's domain model: the PlaceOS-shaped records that configure a building.
//!
//! This crate holds plain data and validation only. It imports no framework: the store,
//! engine and API crates depend on it, never the other way round.

mod ids;
mod records;

pub use ids::{IdKind, ModuleSlug, SlugError, new_id, now_unix};
pub use records::{
    ControlSystem, DriverRecord, DriverRole, Module, Record, Role, Tenant, User, ValidationError,
    Zone,
};
