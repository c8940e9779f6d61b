//! What the engine benchmarks share: a fresh engine over a fresh store, drivers, modules.

use lintel_engine::{DriverInfo, Engine, EngineConfig};
use lintel_model::{ControlSystem, DriverRole, IdKind, Module, Tenant, new_id};
use lintel_store::{Actor, EmbeddedStore, Store, StoreExt};
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fresh engine over a fresh embedded store, with one tenant and one system.
pub struct Bed {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub tenant: String,
    pub system: String,
    _dir: tempfile::TempDir,
}

pub async fn bed(configure: impl FnOnce(&mut EngineConfig)) -> Result<Bed, BoxError> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
    let mut cfg = EngineConfig::new(dir.path().to_path_buf());
    configure(&mut cfg);
    let engine = Engine::new(cfg, store.clone())?;
    let actor = Actor::system();
    let tenant = store
        .create(
            &actor,
            Tenant {
                id: new_id(IdKind::Tenant),
                name: "Bench".into(),
                domain: "bench.example".into(),
                ..Default::default()
            },
        )
        .await?;
    let system = store
        .create(
            &actor,
            ControlSystem {
                id: new_id(IdKind::System),
                tenant_id: tenant.id.clone(),
                name: "Bench room".into(),
                capacity: 1,
                ..Default::default()
            },
        )
        .await?;
    Ok(Bed {
        engine,
        store,
        tenant: tenant.id,
        system: system.id,
        _dir: dir,
    })
}

/// Install `component` (compiling it into the engine's cache) and store its driver record.
pub async fn install(bed: &Bed, component: &[u8]) -> Result<String, BoxError> {
    let (hash, info): (String, Arc<DriverInfo>) = bed
        .engine
        .install_component(&bed.tenant, component.to_vec())
        .await?;
    let driver = bed
        .store
        .create(
            &Actor::system(),
            info.to_record(&bed.tenant, hash, DriverRole::Device),
        )
        .await?;
    Ok(driver.id)
}

pub fn module(bed: &Bed, driver_id: &str, uri: Option<&str>) -> Module {
    Module {
        id: new_id(IdKind::Module),
        tenant_id: bed.tenant.clone(),
        driver_id: driver_id.to_string(),
        control_system_id: Some(bed.system.clone()),
        uri: uri.map(String::from),
        ..Default::default()
    }
}
