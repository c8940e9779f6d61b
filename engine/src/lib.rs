//! The Lintel engine: runs every module's driver in its own WebAssembly sandbox, owns the
//! device transports, and keeps device state in memory.
//!
//! ```text
//!  device ──tcp/sim──▶ TransportTask ──Event──▶ ModuleActor (wasm sandbox) ──set-status──▶ StatusBus ──▶ API / subscribers
//!  API ──exec──▶ Engine ──Event::Exec──▶ ModuleActor ──send──▶ TransportTask ──▶ device
//! ```

mod actor;
mod error;
pub mod harness;
mod host;
mod links;
mod mqtt;
mod oauth;
mod queue;
mod runtime;
mod state;
mod timers;
mod tls;
mod transport;

pub use actor::{DRIVER_ERROR_KEY, HostEvent, HttpAnswer, ModuleSettings};
pub use error::{EngineError, Result};
use host::LogTap;
pub use host::{
    HttpCall, LogLevel, LogLine, MAX_RESULT_BYTES, MAX_STATUS_KEYS, MAX_STATUS_VALUE, ModuleTarget,
    OutputLimits, StatusTarget,
};
pub use queue::SendOptions;
pub use runtime::{
    Budget, DriverInfo, DriverRuntime, FunctionInfo, ParameterInfo, SUPPORTED_ABI, SandboxLimits,
    TransportKind, sha256_hex,
};
pub use state::{ModuleStatus, Snapshot, StatusBus, StatusChange};
pub use timers::{MAX_TIMERS, Schedule};
pub use transport::{Backoff, CONNECTION_ERROR_KEY, InProcessEndpoint, MAX_FRAME_BYTES, Target};

use actor::{Event, ModuleActor, SystemClock};
use lintel_model::{
    ControlSystem, DriverRecord, DriverRole, IdKind, Module, ModuleSlug, SandboxBudget, Settings,
    SettingsBody, Zone,
};
use lintel_store::{Actor, ListOptions, Store, StoreExt};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The `lintel:driver` WIT package version this engine implements.
pub const DRIVER_ABI: &str = "0.1.0";

/// The engine's access to the secret keyring: it opens sealed settings for drivers and
/// seals the refresh tokens it keeps for modules ([`lintel_model::RefreshToken`]). The
/// binary adapts the keyring to it, so the engine holds no key material and depends on
/// no crypto. An error says why, never what.
pub trait Sealer: Send + Sync {
    /// A sealed settings record's content.
    fn open_settings(&self, settings: &Settings) -> std::result::Result<serde_json::Value, String>;
    /// Seal `token` for the refresh-token record `record_id` of `tenant_id`.
    fn seal_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        token: &str,
    ) -> std::result::Result<lintel_model::SealedValue, String>;
    /// Open what [`seal_refresh_token`](Self::seal_refresh_token) sealed for that record.
    fn open_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        sealed: &lintel_model::SealedValue,
    ) -> std::result::Result<String, String>;
}

/// Engine settings (from the `[engine]` section of `lintel.toml`).
#[derive(Clone)]
pub struct EngineConfig {
    /// Opens settings sealed above level `none` (without it such settings stop the module
    /// with an error) and seals the refresh tokens kept for modules (without it they are
    /// kept in memory only).
    pub secrets: Option<Arc<dyn Sealer>>,
    pub data_dir: PathBuf,
    pub limits: SandboxLimits,
    /// How long an `exec` waits for the driver's answer.
    pub exec_timeout: Duration,
    /// Events waiting for one module (transport data, timers, execs).
    pub event_queue: usize,
    /// Rates and queue depth of what one module may produce.
    pub output: OutputLimits,
    /// Worker threads that run module actors (0: one per CPU core).
    pub workers: usize,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        EngineConfig {
            secrets: None,
            data_dir,
            limits: SandboxLimits::default(),
            exec_timeout: Duration::from_secs(5),
            event_queue: 256,
            output: OutputLimits::default(),
            workers: 0,
        }
    }
}

struct RunningModule {
    tenant_id: String,
    /// The stored config it runs (see [`ModuleConfig::fingerprint`]).
    fingerprint: Mutex<String>,
    /// What of its module record it was started from (`Module::runtime_key`): a change
    /// restarts it; other edits (name, notes) leave it running.
    module_key: String,
    info: RwLock<Arc<DriverInfo>>,
    component_hash: Mutex<String>,
    events: flume::Sender<Event>,
    cancel: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    last_error: Arc<Mutex<Option<String>>>,
    /// The settings its transport was opened with (see `TRANSPORT_SETTINGS`): a change
    /// reopens it.
    transport_settings: Value,
    /// Its log lines, for whoever debugs it.
    debug: tokio::sync::broadcast::Sender<LogLine>,
}

/// What happened to each running module when a driver was upgraded.
#[derive(Debug)]
pub struct UploadReport {
    pub driver: DriverRecord,
    pub info: Arc<DriverInfo>,
    /// Per running module of the driver: reloaded, or why it kept the old version.
    pub modules: Vec<(String, std::result::Result<(), String>)>,
}

impl UploadReport {
    /// The report as the API and `lintel driver upload` show it.
    pub fn summary(&self, tenant_id: &str, created: bool) -> Value {
        serde_json::json!({
            "tenant": tenant_id,
            "created": created,
            "driver": {
                "id": self.driver.id,
                "name": self.info.name,
                "version": self.info.version,
                "abi": self.info.abi,
                "hash": self.driver.component_hash,
            },
            "modules": module_outcomes(&self.modules),
        })
    }
}

/// Per module: `{module}` when it took the change, `{module, error}` when it did not.
pub fn module_outcomes(modules: &[(String, std::result::Result<(), String>)]) -> Vec<Value> {
    modules
        .iter()
        .map(|(id, r)| match r {
            Ok(()) => serde_json::json!({"module": id}),
            Err(e) => serde_json::json!({"module": id, "error": e}),
        })
        .collect()
}

/// The worker threads module actors run on, apart from the API's and transports' threads.
struct ModuleExecutor {
    rt: Option<tokio::runtime::Runtime>,
}

impl ModuleExecutor {
    fn new(workers: usize) -> Result<Self> {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            workers
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("lintel-module")
            .enable_all()
            .build()
            .map_err(internal)?;
        Ok(ModuleExecutor { rt: Some(rt) })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("present until drop").handle()
    }
}

impl Drop for ModuleExecutor {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a module is started from: its record, its driver, and the settings records that
/// apply to it, lowest precedence first: the driver's, its system's zones (last zone
/// first), its system's, its own (each level oldest first).
struct ModuleConfig {
    module: Module,
    driver: DriverRecord,
    settings: Vec<Settings>,
    /// IANA name of the zone its cron timers read in: its system's, else the first of the
    /// system's zones that has one.
    time_zone: Option<String>,
}

impl ModuleConfig {
    fn budget(&self) -> Budget {
        budget(&self.driver.sandbox)
    }

    /// Versions of everything the module was started from: equal fingerprints, same config.
    fn fingerprint(&self) -> String {
        let mut f = format!(
            "{}[{}]/{}@{}",
            self.module.id,
            self.module.runtime_key(),
            self.driver.id,
            self.driver.version
        );
        for s in &self.settings {
            f.push_str(&format!("/{}@{}", s.id, s.version));
        }
        if let Some(tz) = &self.time_zone {
            f.push_str(&format!("/tz={tz}"));
        }
        f
    }
}

fn budget(b: &SandboxBudget) -> Budget {
    Budget {
        memory_bytes: b.memory_mb.map(|m| m as usize * 1024 * 1024),
        event_budget: b.event_budget_ms.map(|m| Duration::from_millis(m.into())),
    }
}

/// Finds modules by name in a system and reaches running ones (shared with the links
/// through which logic modules subscribe to and call other modules).
pub(crate) struct Router {
    store: Arc<dyn Store>,
    status: Arc<StatusBus>,
    modules: RwLock<HashMap<String, Arc<RunningModule>>>,
    exec_timeout: Duration,
    /// `(tenant, system, slug)` → module id: the REST state routes resolve on every
    /// request. Emptied by any system, module or driver change.
    resolved: lintel_store::FeedCache<(String, String, String), String>,
}

/// How long a resolution made stale by another process's write may be served.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// The engine. Cheap to share behind an `Arc`.
pub struct Engine {
    cfg: EngineConfig,
    runtime: Arc<DriverRuntime>,
    router: Arc<Router>,
    store: Arc<dyn Store>,
    status: Arc<StatusBus>,
    endpoints: transport::Endpoints,
    /// In-process HTTP simulators: `sim://<name>` for an HTTP driver is this base URL.
    http_endpoints: Arc<parking_lot::RwLock<HashMap<String, String>>>,
    ready: AtomicBool,
    clock: Arc<SystemClock>,
    http: reqwest::Client,
    // Last: module tasks stop before the runtime they use goes away.
    executor: ModuleExecutor,
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl Engine {
    pub fn new(cfg: EngineConfig, store: Arc<dyn Store>) -> Result<Self> {
        let runtime = Arc::new(DriverRuntime::new(&cfg.data_dir, cfg.limits.clone())?);
        let status = Arc::new(StatusBus::default());
        let http = links::http_client_builder().build().map_err(internal)?;
        Ok(Engine {
            executor: ModuleExecutor::new(cfg.workers)?,
            router: Arc::new(Router::new(store.clone(), status.clone(), cfg.exec_timeout)),
            cfg,
            runtime,
            store,
            status,
            endpoints: Default::default(),
            http_endpoints: Default::default(),
            ready: AtomicBool::new(false),
            clock: Arc::new(SystemClock::default()),
            http,
        })
    }

    pub fn runtime(&self) -> &Arc<DriverRuntime> {
        &self.runtime
    }

    /// Make an in-process device reachable at `sim://<name>`.
    pub fn register_endpoint(&self, name: &str, endpoint: Arc<dyn InProcessEndpoint>) {
        self.endpoints.write().insert(name.to_string(), endpoint);
    }

    /// Make an in-process HTTP device (a simulator serving on a loopback port) reachable
    /// at `sim://<name>` by modules of HTTP drivers: requests go to `base_url`. The demo
    /// building's panels and calendars use it, so their records do not hold a port that
    /// changes with every start.
    pub fn register_http_endpoint(&self, name: &str, base_url: &str) {
        self.http_endpoints
            .write()
            .insert(name.to_string(), base_url.to_string());
    }

    /// The URL an HTTP module's `uri` (or its `oauth2.token_url`) stands for: itself, or
    /// for `sim://<name>[/<path>]` the registered in-process simulator's base URL (and the
    /// path).
    fn http_base(&self, uri: &str) -> std::result::Result<String, String> {
        let Some(rest) = uri.strip_prefix("sim://") else {
            return Ok(uri.to_string());
        };
        let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
        let base = self
            .http_endpoints
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no in-process HTTP device `{name}`"))?;
        Ok(match path {
            "" => base,
            path => format!("{}/{path}", base.trim_end_matches('/')),
        })
    }

    pub fn status_bus(&self) -> &Arc<StatusBus> {
        &self.status
    }

    /// Validate and precompile a driver component, and keep it in the Store (the source
    /// of truth for components; the data directory holds only a cache). Returns its hash
    /// and metadata.
    pub async fn install_component(
        &self,
        tenant_id: &str,
        bytes: Vec<u8>,
    ) -> Result<(String, Arc<DriverInfo>)> {
        let (hash, info) = self.runtime.install(&bytes).await?;
        self.store.put_blob(tenant_id, &hash, bytes).await?;
        Ok((hash, info))
    }

    /// Upload a driver component: validate and keep it, then create a driver record for it
    /// (`driver_id: None`) or upgrade an existing driver. Each running module of an
    /// upgraded driver is hot-reloaded keeping its connection and queued commands; a
    /// module whose new version fails `on-load` keeps running the old version, and the
    /// report says why.
    pub async fn upload_driver(
        &self,
        actor: &Actor,
        tenant_id: &str,
        bytes: Vec<u8>,
        driver_id: Option<&str>,
    ) -> Result<UploadReport> {
        let (hash, info) = self.install_component(tenant_id, bytes).await?;
        let driver = match driver_id {
            None => {
                let role = if info.transport == TransportKind::None {
                    DriverRole::Logic
                } else {
                    DriverRole::Device
                };
                self.store
                    .create(actor, info.to_record(tenant_id, hash, role))
                    .await?
            }
            Some(id) => {
                let mut d: DriverRecord = self.store.require(tenant_id, id).await?;
                let fresh = info.to_record(tenant_id, hash, d.role);
                d.name = fresh.name;
                d.module_name = fresh.module_name;
                d.description = fresh.description;
                d.component_hash = fresh.component_hash;
                d.metadata = fresh.metadata;
                self.store.update(actor, d).await?
            }
        };
        let mut modules = Vec::new();
        if driver_id.is_some() {
            for id in self.modules_of_driver(tenant_id, &driver.id).await? {
                if !self.router.modules.read().contains_key(&id) {
                    continue;
                }
                let r = self.sync_module(tenant_id, &id).await;
                modules.push((id, r));
            }
        }
        Ok(UploadReport {
            driver,
            info,
            modules,
        })
    }

    /// Restart every module of a driver this engine runs from its stored component and
    /// config (PlaceOS's `recompile`: the component is already compiled and cached).
    /// Returns each module's outcome; a module that fails to start says why.
    pub async fn reload_driver(
        &self,
        tenant_id: &str,
        driver_id: &str,
    ) -> Result<Vec<(String, std::result::Result<(), String>)>> {
        let _: DriverRecord = self.store.require(tenant_id, driver_id).await?;
        let mut out = Vec::new();
        for id in self.modules_of_driver(tenant_id, driver_id).await? {
            if !self.router.modules.read().contains_key(&id) {
                continue;
            }
            let r = self.start_module(tenant_id, &id).await;
            out.push((id, r.map_err(|e| e.to_string())));
        }
        Ok(out)
    }

    /// The settings records that apply to a module, nearest first (module, system, the
    /// system's zones in order, driver): the order in which they win.
    pub async fn module_settings(&self, tenant_id: &str, module_id: &str) -> Result<Vec<Settings>> {
        let mut settings = self.module_config(tenant_id, module_id).await?.settings;
        settings.reverse();
        Ok(settings)
    }

    /// The compiled component `hash`: from this engine's cache, or fetched from the Store
    /// (after a restore, or on an engine that has not run it before).
    async fn load_component(
        &self,
        tenant_id: &str,
        hash: &str,
    ) -> Result<(wasmtime::component::Component, Arc<DriverInfo>)> {
        let rt = self.runtime.clone();
        let fetched = if rt.has_local(hash) {
            None
        } else {
            let bytes = self.store.get_blob(tenant_id, hash).await?.ok_or_else(|| {
                EngineError::Internal(format!("driver component {hash} is not in the store"))
            })?;
            Some(bytes)
        };
        if let Some(bytes) = fetched {
            // `install` compiles, caches and inspects it: no second inspection.
            let (installed, info) = rt.install(&bytes).await?;
            if installed != hash {
                return Err(EngineError::Internal(format!(
                    "stored driver component {hash} does not match its hash"
                )));
            }
            return Ok((rt.component(hash)?, info));
        }
        let c = rt.component(hash)?;
        let info = rt.info(hash, &c).await?;
        Ok((c, info))
    }

    /// Start every module marked `running`, in every tenant, logic modules after the
    /// others. Marks the engine ready.
    pub async fn start_all(&self) -> Result<usize> {
        let mut wanted = Vec::new();
        for tenant in self.store.tenants().await? {
            let logic: std::collections::HashSet<String> = self
                .store
                .list_all::<DriverRecord>(&tenant.id, ListOptions::default())
                .await?
                .into_iter()
                .filter(|d| d.role == DriverRole::Logic)
                .map(|d| d.id)
                .collect();
            for module in self
                .store
                .list_all::<Module>(&tenant.id, ListOptions::default())
                .await?
            {
                if module.running {
                    let is_logic = logic.contains(&module.driver_id);
                    wanted.push((is_logic, tenant.id.clone(), module.id));
                }
            }
        }
        // Logic modules last (as in PlaceOS): the devices they follow are running by then.
        wanted.sort_by_key(|(is_logic, _, _)| *is_logic);
        if let Some(warning) = map_count_warning(wanted.len(), read_max_map_count()) {
            tracing::warn!("{warning}");
        }
        let mut started = 0;
        for (_, tenant, module) in &wanted {
            match self.start_module(tenant, module).await {
                Ok(()) => started += 1,
                Err(e) => tracing::error!(module = %module, error = %e, "module not started"),
            }
        }
        self.ready.store(true, Ordering::SeqCst);
        metrics::gauge!("lintel_modules_running").set(self.running_modules() as f64);
        Ok(started)
    }

    /// Follow configuration changes from the Store's change feed until `cancel`: a module
    /// that is changed restarts with its new config, one switched off or deleted stops,
    /// one restored starts; a changed driver or settings record restarts the modules it
    /// applies to. Subscribe (`store.changes()`) before [`start_all`](Self::start_all) so
    /// no change between the two is missed. A feed that lags re-reads everything.
    pub async fn follow_config(
        &self,
        mut feed: tokio::sync::broadcast::Receiver<lintel_store::Change>,
        cancel: CancellationToken,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                c = feed.recv() => c,
            };
            match next {
                Ok(change) => self.apply_change(&change).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "config change feed lagged; re-reading every module");
                    self.reconcile().await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn apply_change(&self, c: &lintel_store::Change) {
        use lintel_model::{AuditAction, IdKind};
        if c.action == AuditAction::Purged {
            return; // a tombstone going away changes nothing that runs
        }
        let affected: Result<Vec<String>> = async {
            Ok(match c.kind {
                IdKind::Module => vec![c.id.clone()],
                IdKind::Driver => self.modules_of_driver(&c.tenant_id, &c.id).await?,
                // Its zones (or their order) may have changed.
                IdKind::System => self.modules_of_system(&c.tenant_id, &c.id).await?,
                // Its time zone may have changed.
                IdKind::Zone => self.modules_of_zone(&c.tenant_id, &c.id).await?,
                IdKind::Settings => {
                    let Some((s, _)) = self
                        .store
                        .get_with_tombstone::<Settings>(&c.tenant_id, &c.id)
                        .await?
                    else {
                        return Ok(vec![]);
                    };
                    match IdKind::of_id(&s.parent_id) {
                        Some(IdKind::Module) => vec![s.parent_id],
                        Some(IdKind::Driver) => {
                            self.modules_of_driver(&c.tenant_id, &s.parent_id).await?
                        }
                        Some(IdKind::System) => {
                            self.modules_of_system(&c.tenant_id, &s.parent_id).await?
                        }
                        Some(IdKind::Zone) => {
                            self.modules_of_zone(&c.tenant_id, &s.parent_id).await?
                        }
                        _ => vec![],
                    }
                }
                _ => vec![],
            })
        }
        .await;
        match affected {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = self.sync_module(&c.tenant_id, &id).await {
                        tracing::warn!(module = %id, error = %e, "module config change not fully applied");
                    }
                }
            }
            Err(e) => {
                tracing::error!(kind = %c.kind, id = %c.id, error = %e, "cannot apply a config change")
            }
        }
    }

    /// Modules whose settings inherit from `system_id` (their `control_system_id`).
    async fn modules_of_system(&self, tenant_id: &str, system_id: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_all::<Module>(tenant_id, ListOptions::by("system", system_id))
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// Modules of every system in `zone_id` (their settings and time zone inherit from it).
    async fn modules_of_zone(&self, tenant_id: &str, zone_id: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for system in self
            .store
            .list_all::<ControlSystem>(tenant_id, ListOptions::by("zone", zone_id))
            .await?
        {
            out.extend(self.modules_of_system(tenant_id, &system.id).await?);
        }
        Ok(out)
    }

    async fn modules_of_driver(&self, tenant_id: &str, driver_id: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_all::<Module>(tenant_id, ListOptions::by("driver", driver_id))
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    async fn module_config(&self, tenant_id: &str, module_id: &str) -> Result<ModuleConfig> {
        let module: Module = self
            .store
            .get(tenant_id, module_id)
            .await?
            .ok_or_else(|| EngineError::ModuleNotFound(module_id.to_string()))?;
        let driver: DriverRecord = self.store.require(tenant_id, &module.driver_id).await?;
        // Lowest precedence first: driver < zones (the system's first zone wins) < system
        // < module.
        let mut settings = self.settings_of(tenant_id, &driver.id).await?;
        let mut time_zone = None;
        if let Some(system_id) = &module.control_system_id
            && let Some(system) = self
                .store
                .get::<ControlSystem>(tenant_id, system_id)
                .await?
        {
            for zone in system.zones.iter().rev() {
                settings.extend(self.settings_of(tenant_id, zone).await?);
            }
            settings.extend(self.settings_of(tenant_id, &system.id).await?);
            time_zone = system.timezone.clone().filter(|tz| !tz.is_empty());
            for zone in &system.zones {
                if time_zone.is_some() {
                    break;
                }
                time_zone = self
                    .store
                    .get::<Zone>(tenant_id, zone)
                    .await?
                    .and_then(|z| z.timezone)
                    .filter(|tz| !tz.is_empty());
            }
        }
        settings.extend(self.settings_of(tenant_id, &module.id).await?);
        Ok(ModuleConfig {
            module,
            driver,
            settings,
            time_zone,
        })
    }

    /// The settings records of one parent, oldest first (later ones win).
    async fn settings_of(&self, tenant_id: &str, parent_id: &str) -> Result<Vec<Settings>> {
        let mut settings = self
            .store
            .list_all::<Settings>(tenant_id, ListOptions::by("parent", parent_id))
            .await?;
        settings.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(settings)
    }

    /// Make one module match its stored config with as little disruption as possible:
    /// nothing if nothing changed; new settings → `on-update`; a new driver version → hot
    /// reload (keeping the connection); a changed module record → restart; switched off or
    /// deleted → stop. `Err` says why a change was not applied (the module keeps running
    /// what it ran, e.g. a new version that failed `on-load`).
    async fn sync_module(
        &self,
        tenant_id: &str,
        module_id: &str,
    ) -> std::result::Result<(), String> {
        let m = self
            .store
            .get::<Module>(tenant_id, module_id)
            .await
            .map_err(|e| format!("cannot read the module: {e}"))?;
        if !m.is_some_and(|m| m.running) {
            if self.router.modules.read().contains_key(module_id) {
                tracing::info!(module = %module_id, "module stopped: switched off or deleted");
            }
            self.stop_module(module_id).await;
            return Ok(());
        }
        let running = self.router.modules.read().get(module_id).cloned();
        if let Some(running) = running {
            let cfg = self
                .module_config(tenant_id, module_id)
                .await
                .map_err(|e| e.to_string())?;
            if *running.fingerprint.lock() == cfg.fingerprint() {
                return Ok(());
            }
            if running.module_key == cfg.module.runtime_key() {
                match self.reload_in_place(&running, cfg).await {
                    Ok(r) => return r,
                    Err(why) => tracing::info!(module = %module_id, %why, "restarting the module"),
                }
            }
        }
        self.start_module(tenant_id, module_id)
            .await
            .map_err(|e| e.to_string())
    }

    /// Apply new settings or a new driver version to a running module without restarting
    /// it. The outer `Err` means it cannot be done in place (restart instead); the inner
    /// result is the module's answer.
    async fn reload_in_place(
        &self,
        running: &RunningModule,
        cfg: ModuleConfig,
    ) -> std::result::Result<std::result::Result<(), String>, String> {
        let tenant_id = &running.tenant_id;
        let fingerprint = cfg.fingerprint();
        let budget = cfg.budget();
        let same_driver = *running.component_hash.lock() == cfg.driver.component_hash;
        let (component, info) = self
            .load_component(tenant_id, &cfg.driver.component_hash)
            .await
            .map_err(|e| e.to_string())?;
        let old = running.info.read().clone();
        if info.transport != old.transport || info.framing != old.framing {
            return Err("the new version needs a different transport".into());
        }
        let settings = self
            .merged_settings(&info, &cfg)
            .map_err(|e| e.to_string())?;
        if transport_settings(&settings) != running.transport_settings {
            return Err("the transport settings changed: the connection is reopened".into());
        }
        let (reply, answer) = oneshot::channel();
        let ev = if same_driver {
            Event::Update { settings, reply }
        } else {
            Event::Reload {
                component,
                info: info.clone(),
                budget,
                settings,
                reply,
            }
        };
        running
            .events
            .send_async(ev)
            .await
            .map_err(|_| "the module stopped".to_string())?;
        let outcome = tokio::time::timeout(self.cfg.exec_timeout * 4, answer)
            .await
            .map_err(|_| "the module did not answer the reload in time".to_string())?
            .map_err(|_| "the module stopped".to_string())?;
        // A module waiting to restart after a crash cannot take it in place: restart it
        // with the new config instead.
        if let Err(e) = &outcome
            && e.starts_with("module is restarting")
        {
            return Err(e.clone());
        }
        // Applied or refused, this config has been tried: do not retry it on every change.
        *running.fingerprint.lock() = fingerprint;
        match &outcome {
            Ok(()) => {
                if !same_driver {
                    tracing::info!(module = %cfg.module.id, from = %old.version, to = %info.version, "driver hot-reloaded");
                    *running.info.write() = info;
                    *running.component_hash.lock() = cfg.driver.component_hash.clone();
                }
            }
            Err(e) => {
                let what = if same_driver {
                    "new settings were refused".to_string()
                } else {
                    format!(
                        "driver version {} failed to load; still running {}",
                        info.version, old.version
                    )
                };
                tracing::warn!(module = %cfg.module.id, error = %e, "{what}");
                *running.last_error.lock() = Some(format!("{what}: {e}"));
            }
        }
        Ok(outcome)
    }

    /// Settings, nearest wins: component defaults < driver record < driver settings < zones
    /// (in the system's order, first wins) < system < module. Top-level keys replace the
    /// whole value below them (as in PlaceOS). Sealed values
    /// (every level, `never_display` included) are opened only here, inside the engine.
    fn merged_settings(&self, info: &DriverInfo, cfg: &ModuleConfig) -> Result<ModuleSettings> {
        let mut settings = info.default_settings.clone();
        merge(&mut settings, &cfg.driver.default_settings);
        for s in &cfg.settings {
            match &s.body {
                SettingsBody::Plain(v) => merge(&mut settings, v),
                SettingsBody::Sealed(_) => {
                    let opened = self
                        .cfg
                        .secrets
                        .as_ref()
                        .ok_or_else(|| "no secret keyring".to_string())
                        .and_then(|o| o.open_settings(s))
                        .map_err(|why| {
                            EngineError::Internal(format!(
                                "module {}: sealed settings {} cannot be opened: {why}",
                                cfg.module.id, s.id
                            ))
                        })?;
                    merge(&mut settings, &opened);
                }
            }
        }
        let mut settings = ModuleSettings::split(settings, info);
        if let Some(tz) = &cfg.time_zone {
            match tz.parse::<chrono_tz::Tz>() {
                Ok(tz) => settings.time_zone = tz,
                Err(_) => tracing::warn!(
                    module = %cfg.module.id,
                    time_zone = %tz,
                    "not an IANA time zone; cron timers read in UTC"
                ),
            }
        }
        Ok(settings)
    }

    /// Bring every module in line with the Store (after a lagging change feed).
    async fn reconcile(&self) {
        let wanted: Result<Vec<(String, String)>> = async {
            let mut out = Vec::new();
            for t in self.store.tenants().await? {
                for m in self
                    .store
                    .list_all::<Module>(&t.id, ListOptions::default())
                    .await?
                {
                    out.push((t.id.clone(), m.id));
                }
            }
            Ok(out)
        }
        .await;
        let wanted = match wanted {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the modules");
                return;
            }
        };
        let known: std::collections::HashSet<&String> = wanted.iter().map(|(_, m)| m).collect();
        let gone: Vec<String> = self
            .router
            .modules
            .read()
            .keys()
            .filter(|id| !known.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.stop_module(&id).await;
        }
        for (tenant, id) in &wanted {
            // Only what changed: `sync_module` compares fingerprints.
            if let Err(e) = self.sync_module(tenant, id).await {
                tracing::warn!(module = %id, error = %e, "module not brought in line");
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn running_modules(&self) -> usize {
        self.router.modules.read().len()
    }

    /// Start (or restart) one module from its stored config.
    pub async fn start_module(&self, tenant_id: &str, module_id: &str) -> Result<()> {
        let cfg = self.module_config(tenant_id, module_id).await?;
        let fingerprint = cfg.fingerprint();
        self.stop_module(module_id).await;

        let (component, info) = self
            .load_component(tenant_id, &cfg.driver.component_hash)
            .await?;
        let settings = self.merged_settings(&info, &cfg)?;
        let transport_settings = transport_settings(&settings);
        let module = &cfg.module;

        let module_id: Arc<str> = module.id.as_str().into();
        let status = self.status.module(&module.id);
        let (events_tx, events_rx) = flume::bounded(self.cfg.event_queue);
        let cancel = CancellationToken::new();
        let endpoint = module.endpoint();
        let need = |what: &str| {
            EngineError::Internal(format!("module {} needs a device uri ({what})", module.id))
        };
        let mut http_device = None;
        let mut mqtt = None;
        let mut makebreak = false;
        let refused = |e: String| EngineError::Internal(format!("module {}: {e}", module.id));
        let outbound = match info.transport {
            TransportKind::None => None,
            TransportKind::Tcp
            | TransportKind::Tls
            | TransportKind::Udp
            | TransportKind::Websocket => {
                let uri = endpoint
                    .as_deref()
                    .ok_or_else(|| need("tcp://, tls://, udp://host:port or ws(s)://"))?;
                // The module's address picks the transport, as PlaceOS's `tls` and `udp`
                // module flags do; a driver that declares TLS upgrades `tcp://` to it.
                let target = match (Target::parse(uri), &info.transport) {
                    (Ok(Target::Tcp { host, port }), TransportKind::Tls) => {
                        Target::Tls { host, port }
                    }
                    (Ok(t), _) => t,
                    (Err(e), _) => {
                        return Err(EngineError::Internal(format!("module {}: {e}", module.id)));
                    }
                };
                let tls = match target {
                    Target::Tls { .. } | Target::WebSocket { secure: true, .. } => Some(
                        tls::TlsClient::from_settings(&settings.public).map_err(|e| {
                            EngineError::Internal(format!("module {}: {e}", module.id))
                        })?,
                    ),
                    _ => None,
                };
                // Make-break applies to byte streams (as in PlaceOS).
                makebreak = module.makebreak
                    && matches!(
                        target,
                        Target::Tcp { .. } | Target::Tls { .. } | Target::InProcess(_)
                    );
                let (tx, rx) = mpsc::channel(self.cfg.output.queue_depth.max(1));
                let task = transport::TransportTask {
                    module_id: module_id.clone(),
                    target,
                    framing: info.framing.clone(),
                    endpoints: self.endpoints.clone(),
                    events: events_tx.clone(),
                    outbound: rx,
                    status: status.clone(),
                    cancel: cancel.clone(),
                    tls,
                    makebreak: makebreak.then(|| makebreak_idle(&settings.public)),
                };
                // Beside the module actors: a frame reaches its actor without a thread
                // switch.
                self.executor.handle().spawn(task.run());
                Some(tx)
            }
            TransportKind::Http => {
                let uri = endpoint
                    .as_deref()
                    .ok_or_else(|| need("http(s)://host[:port]"))?;
                let uri = self.http_base(uri).map_err(refused)?;
                // The token endpoint may be an in-process simulator too (the demo's
                // calendars), so the records never hold a port.
                let mut device_settings = std::borrow::Cow::Borrowed(&settings);
                let sim_token_url = settings
                    .secrets
                    .get("oauth2")
                    .and_then(|o| o.get("token_url"))
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|u| u.starts_with("sim://"));
                if let Some(url) = sim_token_url {
                    let resolved = self
                        .http_base(url)
                        .map_err(|e| refused(format!("setting `oauth2.token_url`: {e}")))?;
                    if let Some(Value::Object(o)) =
                        device_settings.to_mut().secrets.get_mut("oauth2")
                    {
                        o.insert("token_url".into(), Value::String(resolved));
                    }
                }
                let device =
                    links::HttpDevice::new(&uri, &device_settings, &self.http, status.clone())
                        .map_err(refused)?;
                // A simulator forgets its tokens when it stops: a rotated refresh token is
                // kept only for a real provider.
                if let (Some(oauth), Some(sealer)) = (&device.oauth, &self.cfg.secrets)
                    && sim_token_url.is_none()
                {
                    oauth.keep_tokens_in(oauth::TokenStore {
                        store: self.store.clone(),
                        sealer: sealer.clone(),
                        tenant_id: tenant_id.to_string(),
                        module_id: module_id.to_string(),
                    });
                }
                http_device = Some(device);
                None
            }
            TransportKind::Mqtt => {
                let uri = endpoint
                    .as_deref()
                    .ok_or_else(|| need("mqtt(s)://host[:port]"))?;
                let broker = mqtt::Broker::parse(uri).map_err(refused)?;
                let tls = if broker.secure {
                    Some(tls::TlsClient::from_settings(&settings.public).map_err(refused)?)
                } else {
                    None
                };
                let options = mqtt::options(
                    &module.id,
                    &broker,
                    transport_setting(&settings, "mqtt"),
                    tls.as_ref(),
                )
                .map_err(refused)?;
                let (task, subscriptions) = mqtt::MqttTask::new(
                    module_id.clone(),
                    broker,
                    options,
                    events_tx.clone(),
                    status.clone(),
                    cancel.clone(),
                );
                self.executor.handle().spawn(task.run());
                mqtt = Some(subscriptions);
                None
            }
        };
        let last_error = Arc::new(Mutex::new(None));
        let (debug, _) = tokio::sync::broadcast::channel(DEBUG_LINES);
        let links = links::EngineLinks::new(
            self.router.clone(),
            tenant_id.to_string(),
            module.control_system_id.clone(),
            http_device,
            mqtt,
            cancel.child_token(),
        );
        let actor = ModuleActor {
            module_id: module_id.clone(),
            runtime: self.runtime.clone(),
            component,
            info: info.clone(),
            budget: cfg.budget(),
            settings,
            limits: self.cfg.output.clone(),
            events_tx: events_tx.clone(),
            events: events_rx,
            outbound,
            status,
            clock: self.clock.clone(),
            links: Box::new(links),
            last_error: last_error.clone(),
            log_tap: Some(LogTap::Debug(debug.clone())),
            cancel: cancel.clone(),
            makebreak,
        };
        let task = self.executor.handle().spawn(actor.run());
        self.router.modules.write().insert(
            module.id.clone(),
            Arc::new(RunningModule {
                tenant_id: tenant_id.to_string(),
                fingerprint: Mutex::new(fingerprint),
                module_key: module.runtime_key(),
                info: RwLock::new(info),
                component_hash: Mutex::new(cfg.driver.component_hash.clone()),
                events: events_tx,
                cancel,
                task: Mutex::new(Some(task)),
                last_error,
                transport_settings,
                debug,
            }),
        );
        metrics::gauge!("lintel_modules_running").set(self.running_modules() as f64);
        tracing::info!(module = %module.id, driver = %cfg.driver.name, "module started");
        Ok(())
    }

    /// Stop a module: its transport closes, its sandbox is dropped, its state is removed.
    pub async fn stop_module(&self, module_id: &str) {
        let Some(m) = self.router.modules.write().remove(module_id) else {
            return;
        };
        m.cancel.cancel();
        let task = m.task.lock().take();
        drop(m);
        if let Some(t) = task {
            let _ = t.await;
        }
        self.status.remove(module_id);
        metrics::gauge!("lintel_modules_running").set(self.running_modules() as f64);
    }

    /// Stop every module (graceful shutdown).
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let ids: Vec<String> = self.router.modules.read().keys().cloned().collect();
        for id in ids {
            self.stop_module(&id).await;
        }
    }

    fn running(&self, tenant_id: &str, module_id: &str) -> Result<Arc<RunningModule>> {
        self.router.running(tenant_id, module_id)
    }

    /// A system and its modules in order, with their names and indexes.
    pub async fn system_modules(
        &self,
        tenant_id: &str,
        system_id: &str,
    ) -> Result<(ControlSystem, Vec<SystemModule>)> {
        self.router.system_modules(tenant_id, system_id).await
    }

    /// The module `slug` (`Display_1`) in system `system_id`, within the tenant.
    pub async fn resolve(&self, tenant_id: &str, system_id: &str, slug: &str) -> Result<String> {
        self.router.resolve(tenant_id, system_id, slug).await
    }

    /// All of a module's state.
    pub fn state(&self, tenant_id: &str, module_id: &str) -> Result<BTreeMap<String, Value>> {
        self.running(tenant_id, module_id)?;
        self.status
            .snapshot(module_id)
            .ok_or_else(|| EngineError::ModuleNotRunning(module_id.to_string()))
    }

    /// One status key of a module (`None` if the driver never set it).
    pub fn state_key(&self, tenant_id: &str, module_id: &str, key: &str) -> Result<Option<Value>> {
        self.running(tenant_id, module_id)?;
        Ok(self.status.get(module_id, key).map(|v| (*v).clone()))
    }

    /// Whether a module's device can be reached now (PlaceOS's module `ping`): a TCP
    /// connection to its address's host and port, within 2 s (ICMP needs privileges an
    /// engine should not hold). A UDP device is only resolved (a datagram probe would be
    /// traffic the device did not ask for); an in-process device is reachable when its
    /// simulator is registered. A module with no address is an error.
    pub async fn ping(&self, tenant_id: &str, module_id: &str) -> Result<Ping> {
        let module: Module = self
            .store
            .get(tenant_id, module_id)
            .await?
            .ok_or_else(|| EngineError::ModuleNotFound(module_id.to_string()))?;
        let uri = module.endpoint().ok_or_else(|| {
            EngineError::Invalid(format!("module {module_id} has no device address to ping"))
        })?;
        let bad = |e: String| EngineError::Invalid(format!("module {module_id}: {e}"));
        let (host, port, udp) = match Target::parse(&uri) {
            Ok(Target::InProcess(name)) => {
                let found = self.endpoints.read().contains_key(&name)
                    || self.http_endpoints.read().contains_key(&name);
                return Ok(Ping {
                    host: format!("sim://{name}"),
                    pingable: found,
                    warning: None,
                    exception: (!found).then(|| format!("no in-process device `{name}`")),
                });
            }
            Ok(Target::Tcp { host, port } | Target::Tls { host, port }) => (host, port, false),
            Ok(Target::Udp { host, port }) => (host, port, true),
            Ok(Target::WebSocket { host, port, .. }) => (host, port, false),
            Err(e) => match (mqtt::Broker::parse(&uri), links::base_url(&uri)) {
                (Ok(b), _) => (b.host, b.port, false),
                (_, Ok(url)) => (
                    url.host_str()
                        .unwrap_or_default()
                        .trim_matches(['[', ']'])
                        .to_string(),
                    url.port_or_known_default().unwrap_or(80),
                    false,
                ),
                _ => return Err(bad(e)),
            },
        };
        let probe = async {
            if udp {
                tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("resolving {host}: {e}"))
            } else {
                tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect to {host}:{port}: {e}"))
            }
        };
        let outcome = tokio::time::timeout(PING_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {host}:{port} within 2 s")));
        Ok(Ping {
            host,
            pingable: outcome.is_ok(),
            warning: udp.then(|| "a UDP device is only resolved, not probed".to_string()),
            exception: outcome.err(),
        })
    }

    /// Follow a module's log lines (PlaceOS `debug`): every line its driver logs from now
    /// on, and the engine's own lines about it (a write its stopped transport could not
    /// take). A reader more than `DEBUG_LINES` behind is told it lagged. The stream goes on
    /// through the sandbox restarting a crashed driver, and ends when the module is stopped
    /// or started anew (a config change that restarts it): debug it again to follow the new
    /// run.
    pub fn debug(
        &self,
        tenant_id: &str,
        module_id: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<LogLine>> {
        Ok(self.running(tenant_id, module_id)?.debug.subscribe())
    }

    pub fn driver_info(&self, tenant_id: &str, module_id: &str) -> Result<Arc<DriverInfo>> {
        Ok(self.running(tenant_id, module_id)?.info.read().clone())
    }

    /// Why the module's sandbox is not running, or its last refused change.
    pub fn module_error(&self, tenant_id: &str, module_id: &str) -> Result<Option<String>> {
        Ok(self
            .running(tenant_id, module_id)?
            .last_error
            .lock()
            .clone())
    }

    /// Call `function` on a module with positional JSON arguments.
    pub async fn exec(
        &self,
        tenant_id: &str,
        module_id: &str,
        function: &str,
        args: Vec<Value>,
    ) -> Result<Value> {
        self.router.exec(tenant_id, module_id, function, args).await
    }

    /// Wait until the module has handled every event queued before this call.
    pub async fn settle(&self, tenant_id: &str, module_id: &str) -> Result<()> {
        let m = self.running(tenant_id, module_id)?;
        let (done, wait) = oneshot::channel();
        m.events
            .send_async(Event::Barrier(done))
            .await
            .map_err(|_| EngineError::ModuleNotRunning(module_id.to_string()))?;
        wait.await
            .map_err(|_| EngineError::ModuleNotRunning(module_id.to_string()))
    }

    /// Whether the store answers.
    pub async fn store_ok(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

/// The TLS transport for an MQTT broker Lintel publishes to: the public web roots plus
/// `ca` (PEM certificates, for a site CA or a self-signed broker); the broker's host name
/// is checked. An error says what is wrong with `ca`.
pub fn mqtt_tls_transport(ca: Option<&str>) -> Result<rumqttc::Transport, String> {
    let settings = serde_json::json!({ "tls": { "ca": ca } });
    let tls = tls::TlsClient::from_settings(&settings)
        .map_err(|e| e.replace("setting `tls.ca`", "`ca_certificate`"))?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls.config),
    ))
}

/// Shallow merge of JSON objects: keys of `over` replace those of `base`.
fn merge(base: &mut Value, over: &Value) {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

impl Router {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        status: Arc<StatusBus>,
        exec_timeout: Duration,
    ) -> Self {
        Router {
            resolved: lintel_store::FeedCache::new(
                store.changes(),
                &[IdKind::System, IdKind::Module, IdKind::Driver],
                RESOLVE_TTL,
                100_000,
            ),
            store,
            status,
            modules: RwLock::new(HashMap::new()),
            exec_timeout,
        }
    }

    fn running(&self, tenant_id: &str, module_id: &str) -> Result<Arc<RunningModule>> {
        match self.modules.read().get(module_id) {
            Some(m) if m.tenant_id == tenant_id => Ok(m.clone()),
            // Another tenant's module is indistinguishable from a missing one.
            _ => Err(EngineError::ModuleNotRunning(module_id.to_string())),
        }
    }

    /// The module `slug` (`Display_1`) in system `system_id`, within the tenant.
    pub(crate) async fn resolve(
        &self,
        tenant_id: &str,
        system_id: &str,
        slug: &str,
    ) -> Result<String> {
        let key = (tenant_id.to_owned(), system_id.to_owned(), slug.to_owned());
        let ticket = match self.resolved.get(&key) {
            Ok(id) => return Ok(id),
            Err(ticket) => ticket,
        };
        let slug =
            ModuleSlug::parse(slug).map_err(|e| EngineError::ModuleNotFound(e.to_string()))?;
        let (_, modules) = self.system_modules(tenant_id, system_id).await?;
        let id = modules
            .into_iter()
            .find(|m| m.module == slug.name && m.index == slug.index)
            .map(|m| m.id)
            .ok_or_else(|| EngineError::ModuleNotFound(format!("{slug} in {system_id}")))?;
        self.resolved.insert(key, id.clone(), ticket);
        Ok(id)
    }

    /// A system and its modules in order, each with its name and index in the system
    /// (`Display`, 2 for the second display). Modules whose record or driver is gone are
    /// left out.
    pub(crate) async fn system_modules(
        &self,
        tenant_id: &str,
        system_id: &str,
    ) -> Result<(ControlSystem, Vec<SystemModule>)> {
        let system: ControlSystem = self
            .store
            .get(tenant_id, system_id)
            .await?
            .ok_or_else(|| EngineError::SystemNotFound(system_id.to_string()))?;
        let mut drivers: HashMap<String, DriverRecord> = HashMap::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut out = Vec::with_capacity(system.modules.len());
        for module_id in &system.modules {
            let Some(module) = self.store.get::<Module>(tenant_id, module_id).await? else {
                continue;
            };
            if !drivers.contains_key(&module.driver_id) {
                match self
                    .store
                    .get::<DriverRecord>(tenant_id, &module.driver_id)
                    .await?
                {
                    Some(d) => drivers.insert(module.driver_id.clone(), d),
                    None => continue,
                };
            }
            let driver = &drivers[&module.driver_id];
            let name = module
                .custom_name
                .clone()
                .unwrap_or_else(|| driver.module_name.clone());
            let index = seen.entry(name.clone()).or_default();
            *index += 1;
            out.push(SystemModule {
                index: *index,
                running: self.modules.read().contains_key(&module.id),
                module: name,
                id: module.id,
                driver: driver.name.clone(),
            });
        }
        Ok((system, out))
    }

    pub(crate) async fn exec(
        &self,
        tenant_id: &str,
        module_id: &str,
        function: &str,
        args: Vec<Value>,
    ) -> Result<Value> {
        let m = self.running(tenant_id, module_id)?;
        let info = m.info.read().clone();
        let f = info
            .function(function)
            .ok_or_else(|| EngineError::FunctionNotFound {
                module: module_id.to_string(),
                function: function.to_string(),
            })?;
        check_arguments(f, &args)?;
        let (reply, answer) = oneshot::channel();
        let ev = Event::Exec {
            function: function.to_string(),
            args: Value::Array(args).to_string(),
            reply,
        };
        m.events.try_send(ev).map_err(|e| match e {
            flume::TrySendError::Full(_) => EngineError::Busy,
            flume::TrySendError::Disconnected(_) => {
                EngineError::ModuleNotRunning(module_id.to_string())
            }
        })?;
        let timeout = self.exec_timeout;
        tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| EngineError::Timeout(timeout.as_millis() as u64))?
            .map_err(|_| EngineError::ModuleNotRunning(module_id.to_string()))?
    }
}

/// Check the arguments against the function's parameters: count, then each argument
/// against its parameter's JSON Schema.
pub(crate) fn check_arguments(f: &FunctionInfo, args: &[Value]) -> Result<()> {
    let bad = |message: String| EngineError::BadArguments {
        function: f.name.clone(),
        message,
    };
    if args.len() > f.parameters.len() {
        return Err(bad(format!(
            "takes at most {} argument(s), got {}",
            f.parameters.len(),
            args.len()
        )));
    }
    for (i, p) in f.parameters.iter().enumerate() {
        let Some(arg) = args.get(i) else {
            if p.required {
                return Err(bad(format!("missing required parameter `{}`", p.name)));
            }
            continue;
        };
        if arg.is_null() && !p.required {
            continue; // an optional parameter left out in the middle
        }
        p.check
            .check(arg)
            .map_err(|e| bad(format!("parameter `{}`: {e}", p.name)))?;
    }
    Ok(())
}

/// The settings a module's connection is opened with: a change to any of them reopens it
/// (a restart) rather than reaching the driver's `on-update`. Read from the public
/// settings or, where the driver declares one a secret, from its secrets.
fn transport_settings(settings: &ModuleSettings) -> Value {
    Value::Array(
        TRANSPORT_SETTINGS
            .iter()
            .map(|k| {
                transport_setting(settings, k)
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect(),
    )
}

/// A module as its system lists it: `Display_2` is `{module: "Display", index: 2}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SystemModule {
    pub module: String,
    pub index: u32,
    pub id: String,
    /// Its driver's name.
    pub driver: String,
    /// Whether this engine runs it now.
    pub running: bool,
}

/// How long a module ping waits for the device.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of [`Engine::ping`] (PlaceOS's shape: `host`, `pingable`, `warning`,
/// `exception`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ping {
    pub host: String,
    pub pingable: bool,
    pub warning: Option<String>,
    pub exception: Option<String>,
}

/// Log lines a module's debug stream holds for a slow reader.
const DEBUG_LINES: usize = 256;

const TRANSPORT_SETTINGS: [&str; 6] = [
    "tls",
    "makebreak_idle_ms",
    "mqtt",
    "basic_auth",
    "bearer_token",
    "oauth2",
];

fn transport_setting<'a>(settings: &'a ModuleSettings, key: &str) -> Option<&'a Value> {
    settings
        .public
        .get(key)
        .or_else(|| settings.secrets.get(key))
}

/// How long a make-break connection stays open without traffic: the module's
/// `makebreak_idle_ms` setting (at least 100 ms), else 10 s.
fn makebreak_idle(settings: &Value) -> Duration {
    let ms = settings
        .get("makebreak_idle_ms")
        .and_then(Value::as_u64)
        .unwrap_or(10_000)
        .max(100);
    Duration::from_millis(ms)
}

/// Kernel memory mappings a running module takes (its linear memory, copy-on-write image
/// and fiber stack, each split by guard pages), with both allocators: measured ~6.2–7.0
/// per module by the P4 benchmark. Rounded up.
const MAPS_PER_MODULE: usize = 7;
/// Mappings the process takes before any module (binary, libraries, heap, threads).
const MAPS_BASE: usize = 4_096;

/// `vm.max_map_count`, where the OS has one (Linux).
fn read_max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What to tell the operator when `modules` would exceed the kernel's mapping limit
/// (modules past it fail to start with "Cannot allocate memory").
fn map_count_warning(modules: usize, max_map_count: Option<usize>) -> Option<String> {
    let max = max_map_count?;
    let needed = modules * MAPS_PER_MODULE + MAPS_BASE;
    (needed > max).then(|| {
        let fits = max.saturating_sub(MAPS_BASE) / MAPS_PER_MODULE;
        let suggest = needed.next_power_of_two().max(262_144);
        format!(
            "{modules} modules need about {needed} kernel memory mappings but vm.max_map_count \
             is {max}: modules past about {fits} will fail to start (\"Cannot allocate \
             memory\"). Raise it, e.g. `sysctl -w vm.max_map_count={suggest}` (see \
             docs/architecture.md, \"The driver sandbox\")"
        )
    })
}

#[cfg(test)]
mod tests;
