//! Run a driver in the real engine against a **real device** (or a real test peer: a
//! Modbus server, a CalDAV server, a simulator on a TCP port): real sockets, real time.
//!
//! Where [`Harness`](crate::Harness) scripts the device in virtual time, [`LiveEngine`]
//! is the step after: an in-process engine with an embedded store in a temporary
//! directory, one tenant and one system, to which a test adds modules of any component
//! with a `uri`.
//!
//! ```no_run
//! use lintel_driver_harness::{driver_component, json, live::LiveEngine};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn reads_a_real_device() {
//!     let live = LiveEngine::start().await;
//!     let m = live
//!         .add_module(&driver_component!(), Some("tcp://127.0.0.1:4352"), json!({}))
//!         .await;
//!     live.wait_for(&m, "connected", json!(true)).await;
//!     live.exec(&m, "power", json!([true])).await.unwrap();
//!     live.wait_for(&m, "power", json!(true)).await;
//! }
//! # fn main() {}
//! ```

use lintel_engine::{Engine, EngineConfig, InProcessEndpoint};
use lintel_model::{
    ControlSystem, DriverRole, IdKind, Module, Settings, SettingsBody, Tenant, new_id,
};
use lintel_store::{Actor, EmbeddedStore, Store, StoreExt};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long [`LiveEngine::wait_for`] and [`LiveEngine::wait_until`] wait by default.
pub const WAIT: Duration = Duration::from_secs(15);

/// An in-process engine with one tenant and one system ("Room"); see the module docs.
pub struct LiveEngine {
    _dir: tempfile::TempDir,
    engine: Engine,
    store: Arc<dyn Store>,
    tenant: String,
    system: String,
    /// Driver records by component hash: one per component, as an upload makes.
    drivers: Mutex<HashMap<String, String>>,
}

impl LiveEngine {
    /// A fresh engine, store, tenant and empty system.
    pub async fn start() -> LiveEngine {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(dir.path()).expect("the embedded store opens"));
        let engine = Engine::new(EngineConfig::new(dir.path().to_path_buf()), store.clone())
            .expect("the engine starts");
        let actor = Actor::system();
        let tenant = store
            .create(
                &actor,
                Tenant {
                    id: new_id(IdKind::Tenant),
                    name: "Live".into(),
                    domain: "live.example".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("the tenant is created");
        let system = store
            .create(
                &actor,
                ControlSystem {
                    id: new_id(IdKind::System),
                    tenant_id: tenant.id.clone(),
                    name: "Room".into(),
                    capacity: 8,
                    ..Default::default()
                },
            )
            .await
            .expect("the system is created");
        LiveEngine {
            _dir: dir,
            engine,
            store,
            tenant: tenant.id,
            system: system.id,
            drivers: Mutex::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    /// Make `sim://<name>` reach an in-process device (see `lintel-simulators`).
    pub fn register_endpoint(&self, name: &str, endpoint: Arc<dyn InProcessEndpoint>) {
        self.engine.register_endpoint(name, endpoint);
    }

    /// Install `component` (once per component), add a module of it at `uri` with
    /// `settings` (keys the driver declares secret are handled as secrets) as the
    /// system's next module, and start it. Returns the module's id.
    pub async fn add_module(&self, component: &[u8], uri: Option<&str>, settings: Value) -> String {
        let actor = Actor::system();
        let driver_id = {
            let mut drivers = self.drivers.lock().await;
            let (hash, info) = self
                .engine
                .install_component(&self.tenant, component.to_vec())
                .await
                .expect("the component installs");
            match drivers.get(&hash) {
                Some(id) => id.clone(),
                None => {
                    let record = info.to_record(&self.tenant, hash.clone(), DriverRole::Device);
                    let driver = self
                        .store
                        .create(&actor, record)
                        .await
                        .expect("the driver record is created");
                    drivers.insert(hash, driver.id.clone());
                    driver.id
                }
            }
        };
        let module = self
            .store
            .create(
                &actor,
                Module {
                    id: new_id(IdKind::Module),
                    tenant_id: self.tenant.clone(),
                    driver_id,
                    control_system_id: Some(self.system.clone()),
                    uri: uri.map(String::from),
                    running: true,
                    ..Default::default()
                },
            )
            .await
            .expect("the module is created");
        if settings.as_object().is_some_and(|o| !o.is_empty()) {
            self.store
                .create(
                    &actor,
                    Settings {
                        id: new_id(IdKind::Settings),
                        tenant_id: self.tenant.clone(),
                        parent_id: module.id.clone(),
                        body: SettingsBody::Plain(settings),
                        ..Default::default()
                    },
                )
                .await
                .expect("the settings are created");
        }
        let mut system: ControlSystem = self
            .store
            .get(&self.tenant, &self.system)
            .await
            .expect("the store answers")
            .expect("the system exists");
        system.modules.push(module.id.clone());
        self.store
            .update(&actor, system)
            .await
            .expect("the system is updated");
        self.engine
            .start_module(&self.tenant, &module.id)
            .await
            .expect("the module starts");
        module.id
    }

    /// Call `function` on a module with a JSON array of arguments, as the API would.
    pub async fn exec(&self, module: &str, function: &str, args: Value) -> Result<Value, String> {
        let args = match args {
            Value::Array(a) => a,
            other => panic!("exec arguments must be a JSON array, got {other}"),
        };
        self.engine
            .exec(&self.tenant, module, function, args)
            .await
            .map_err(|e| e.to_string())
    }

    /// A status key of a module, if set.
    pub fn status(&self, module: &str, key: &str) -> Option<Value> {
        self.engine
            .state_key(&self.tenant, module, key)
            .ok()
            .flatten()
    }

    /// Every status key of a module.
    pub fn state(&self, module: &str) -> BTreeMap<String, Value> {
        self.engine.state(&self.tenant, module).unwrap_or_default()
    }

    /// Why the module's sandbox is down, if it is.
    pub fn error(&self, module: &str) -> Option<String> {
        self.engine
            .module_error(&self.tenant, module)
            .ok()
            .flatten()
    }

    /// Wait (up to [`WAIT`]) until `key` equals `want`; panics naming the key and the
    /// module's state.
    pub async fn wait_for(&self, module: &str, key: &str, want: Value) {
        self.wait_until(module, key, |v| (v == Some(&want)).then_some(()))
            .await
    }

    /// Wait (up to [`WAIT`]) until `accept` returns `Some` for the key's value (`None`
    /// while unset); returns what it returned. Panics naming the key and the state.
    pub async fn wait_until<T>(
        &self,
        module: &str,
        key: &str,
        accept: impl Fn(Option<&Value>) -> Option<T>,
    ) -> T {
        self.wait_until_within(WAIT, module, key, accept).await
    }

    /// [`wait_until`](Self::wait_until) with another deadline.
    pub async fn wait_until_within<T>(
        &self,
        within: Duration,
        module: &str,
        key: &str,
        accept: impl Fn(Option<&Value>) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(t) = accept(self.status(module, key).as_ref()) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{key}` of module {module} did not reach the awaited value within {within:?}; state: {:?}; error: {:?}",
                self.state(module),
                self.error(module)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the module has handled every event queued before this call.
    pub async fn settle(&self, module: &str) {
        self.engine
            .settle(&self.tenant, module)
            .await
            .expect("the module runs");
    }

    /// Stop every module.
    pub async fn shutdown(self) {
        self.engine.shutdown().await;
    }
}
