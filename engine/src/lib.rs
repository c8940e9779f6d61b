//! The Lintel engine: runs every module's driver in its own WebAssembly sandbox, owns the
//! device transports, and keeps device state in memory.
//!
//! ```text
//!  device ──tcp/sim──▶ TransportTask ──Event──▶ ModuleActor (wasm sandbox) ──set-status──▶ StatusBus ──▶ API / subscribers
//!  API ──exec──▶ Engine ──Event::Exec──▶ ModuleActor ──send──▶ TransportTask ──▶ device
//! ```

mod actor;
mod error;
mod runtime;
mod state;
mod transport;

pub use error::{EngineError, Result};
pub use runtime::{
    DriverInfo, DriverRuntime, FunctionInfo, ParameterInfo, SandboxLimits, TransportKind,
    sha256_hex,
};
pub use state::{StatusBus, StatusChange};
pub use transport::{InProcessEndpoint, MAX_FRAME_BYTES, Target};

use actor::{Event, ModuleActor, ModuleHost};
use lintel_model::{ControlSystem, DriverRecord, Module, ModuleSlug, Settings, SettingsBody};
use lintel_store::{ListOptions, Store, StoreExt};
use parking_lot::{Mutex, RwLock};
use runtime::Sandbox;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Linker;

/// The `lintel:driver` WIT package version this engine implements.
pub const DRIVER_ABI: &str = "0.1.0";

/// Opens sealed settings for drivers (the binary adapts the secret keyring to it, so the
/// engine holds no key material and depends on no crypto). The error says why, never what.
pub trait SettingsOpener: Send + Sync {
    fn open(&self, settings: &Settings) -> std::result::Result<serde_json::Value, String>;
}

/// Engine settings (from the `[engine]` section of `lintel.toml`).
#[derive(Clone)]
pub struct EngineConfig {
    /// Opens settings sealed above level `none`; without it such settings stop the module
    /// with an error.
    pub secrets: Option<Arc<dyn SettingsOpener>>,
    pub data_dir: PathBuf,
    pub limits: SandboxLimits,
    /// How long an `exec` waits for the driver's answer.
    pub exec_timeout: Duration,
    /// Events waiting for one module (transport data, timers, execs).
    pub event_queue: usize,
    /// Bytes waiting to be written to one device.
    pub send_queue: usize,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        EngineConfig {
            secrets: None,
            data_dir,
            limits: SandboxLimits::default(),
            exec_timeout: Duration::from_secs(5),
            event_queue: 256,
            send_queue: 64,
        }
    }
}

struct RunningModule {
    tenant_id: String,
    /// The stored config it was started from (see [`ModuleConfig::fingerprint`]).
    fingerprint: String,
    info: Arc<DriverInfo>,
    events: flume::Sender<Event>,
    cancel: CancellationToken,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    last_error: Arc<Mutex<Option<String>>>,
}

/// What a module is started from: its record, its driver, its settings records (in
/// creation order, so later ones win).
struct ModuleConfig {
    module: Module,
    driver: DriverRecord,
    settings: Vec<Settings>,
}

impl ModuleConfig {
    /// Versions of everything the module was started from: equal fingerprints, same config.
    fn fingerprint(&self) -> String {
        let mut f = format!(
            "{}@{}/{}@{}",
            self.module.id, self.module.version, self.driver.id, self.driver.version
        );
        for s in &self.settings {
            f.push_str(&format!("/{}@{}", s.id, s.version));
        }
        f
    }
}

/// The engine. Cheap to share behind an `Arc`.
pub struct Engine {
    cfg: EngineConfig,
    runtime: Arc<DriverRuntime>,
    linker: Arc<Linker<Sandbox<ModuleHost>>>,
    store: Arc<dyn Store>,
    status: Arc<StatusBus>,
    modules: RwLock<HashMap<String, Arc<RunningModule>>>,
    endpoints: transport::Endpoints,
    ready: AtomicBool,
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl Engine {
    pub fn new(cfg: EngineConfig, store: Arc<dyn Store>) -> Result<Self> {
        let runtime = Arc::new(DriverRuntime::new(&cfg.data_dir, cfg.limits.clone())?);
        let linker = Arc::new(DriverRuntime::linker::<ModuleHost>(runtime.engine())?);
        Ok(Engine {
            cfg,
            runtime,
            linker,
            store,
            status: Arc::new(StatusBus::default()),
            modules: RwLock::new(HashMap::new()),
            endpoints: Default::default(),
            ready: AtomicBool::new(false),
        })
    }

    /// Make an in-process device reachable at `sim://<name>`.
    pub fn register_endpoint(&self, name: &str, endpoint: Arc<dyn InProcessEndpoint>) {
        self.endpoints.write().insert(name.to_string(), endpoint);
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
    ) -> Result<(String, DriverInfo)> {
        let rt = self.runtime.clone();
        let (bytes, (hash, info)) = tokio::task::spawn_blocking(move || {
            let installed = rt.install(&bytes)?;
            Ok::<_, EngineError>((bytes, installed))
        })
        .await
        .map_err(internal)??;
        self.store.put_blob(tenant_id, &hash, bytes).await?;
        Ok((hash, info))
    }

    /// The compiled component `hash`: from this engine's cache, or fetched from the Store
    /// (after a restore, or on an engine that has not run it before).
    async fn load_component(
        &self,
        tenant_id: &str,
        hash: &str,
    ) -> Result<(wasmtime::component::Component, DriverInfo)> {
        let rt = self.runtime.clone();
        let fetched = if rt.has_local(hash) {
            None
        } else {
            let bytes = self.store.get_blob(tenant_id, hash).await?.ok_or_else(|| {
                EngineError::Internal(format!("driver component {hash} is not in the store"))
            })?;
            Some(bytes)
        };
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            if let Some(bytes) = fetched {
                // `install` compiles, caches and inspects it: no second inspection.
                let (installed, info) = rt.install(&bytes)?;
                if installed != hash {
                    return Err(EngineError::Internal(format!(
                        "stored driver component {hash} does not match its hash"
                    )));
                }
                return Ok((rt.component(&hash)?, info));
            }
            let c = rt.component(&hash)?;
            let info = rt.inspect(&c)?;
            Ok::<_, EngineError>((c, info))
        })
        .await
        .map_err(internal)?
    }

    /// Start every module marked `running`, in every tenant. Marks the engine ready.
    pub async fn start_all(&self) -> Result<usize> {
        let mut started = 0;
        for tenant in self.store.tenants().await? {
            for module in self
                .store
                .list_all::<Module>(&tenant.id, ListOptions::default())
                .await?
            {
                if !module.running {
                    continue;
                }
                match self.start_module(&tenant.id, &module.id).await {
                    Ok(()) => started += 1,
                    Err(e) => {
                        tracing::error!(module = %module.id, error = %e, "module not started")
                    }
                }
            }
        }
        self.ready.store(true, Ordering::SeqCst);
        metrics::gauge!("lintel_modules_running").set(self.modules.read().len() as f64);
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
                    self.sync_module(&c.tenant_id, &id).await;
                }
            }
            Err(e) => {
                tracing::error!(kind = %c.kind, id = %c.id, error = %e, "cannot apply a config change")
            }
        }
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
        let mut settings = self
            .store
            .list_all::<Settings>(tenant_id, ListOptions::by("parent", &module.id))
            .await?;
        settings.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(ModuleConfig {
            module,
            driver,
            settings,
        })
    }

    /// Make one module match its stored config: (re)start it or stop it.
    async fn sync_module(&self, tenant_id: &str, module_id: &str) {
        match self.store.get::<Module>(tenant_id, module_id).await {
            Ok(Some(m)) if m.running => {
                if let Err(e) = self.start_module(tenant_id, module_id).await {
                    tracing::error!(module = %module_id, error = %e, "module not restarted after a config change");
                }
            }
            Ok(_) => {
                if self.modules.read().contains_key(module_id) {
                    tracing::info!(module = %module_id, "module stopped: switched off or deleted");
                }
                self.stop_module(module_id).await;
            }
            Err(e) => {
                tracing::error!(module = %module_id, error = %e, "cannot read a changed module")
            }
        }
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
            // Only what changed: a lagging feed must not restart every module.
            let current = self.modules.read().get(id).map(|m| m.fingerprint.clone());
            if let Some(current) = current
                && let Ok(cfg) = self.module_config(tenant, id).await
                && cfg.module.running
                && cfg.fingerprint() == current
            {
                continue;
            }
            self.sync_module(tenant, id).await;
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn running_modules(&self) -> usize {
        self.modules.read().len()
    }

    /// Start (or restart) one module from its stored config.
    pub async fn start_module(&self, tenant_id: &str, module_id: &str) -> Result<()> {
        let cfg = self.module_config(tenant_id, module_id).await?;
        let fingerprint = cfg.fingerprint();
        let ModuleConfig {
            module,
            driver,
            settings: module_settings,
        } = cfg;
        self.stop_module(module_id).await;

        let (component, info) = self
            .load_component(tenant_id, &driver.component_hash)
            .await?;
        let info = Arc::new(info);

        // Settings, nearest wins: component defaults < driver record < module.
        let mut settings = info.default_settings.clone();
        merge(&mut settings, &driver.default_settings);
        for s in &module_settings {
            match &s.body {
                SettingsBody::Plain(v) => merge(&mut settings, v),
                // Sealed values (every level, `never_display` included) reach the driver
                // only here, inside the engine.
                SettingsBody::Sealed(_) => {
                    let opened = self
                        .cfg
                        .secrets
                        .as_ref()
                        .ok_or_else(|| "no secret keyring".to_string())
                        .and_then(|o| o.open(s))
                        .map_err(|why| {
                            EngineError::Internal(format!(
                                "module {}: sealed settings {} cannot be opened: {why}",
                                module.id, s.id
                            ))
                        })?;
                    merge(&mut settings, &opened);
                }
            }
        }

        let module_id: Arc<str> = module.id.as_str().into();
        let status = self.status.module(&module.id);
        let (events_tx, events_rx) = flume::bounded(self.cfg.event_queue);
        let cancel = CancellationToken::new();
        let connected = Arc::new(AtomicBool::new(false));
        let endpoint = module.endpoint();
        let outbound = match (info.transport, endpoint.as_deref()) {
            (TransportKind::None, _) => None,
            (TransportKind::Tcp, None) => {
                return Err(EngineError::Internal(format!(
                    "module {} needs a device uri (tcp://host:port)",
                    module.id
                )));
            }
            (TransportKind::Tcp, Some(uri)) => {
                let target = Target::parse(uri).map_err(EngineError::Internal)?;
                let (tx, rx) = mpsc::channel(self.cfg.send_queue);
                let task = transport::TransportTask {
                    module_id: module_id.clone(),
                    target,
                    framing: info.framing.clone(),
                    endpoints: self.endpoints.clone(),
                    events: events_tx.clone(),
                    outbound: rx,
                    connected: connected.clone(),
                    status: status.clone(),
                    cancel: cancel.clone(),
                };
                tokio::spawn(task.run());
                Some(tx)
            }
        };
        let last_error = Arc::new(Mutex::new(None));
        let actor = ModuleActor {
            module_id: module_id.clone(),
            runtime: self.runtime.clone(),
            linker: self.linker.clone(),
            component,
            settings,
            events_tx: events_tx.clone(),
            events: events_rx,
            outbound,
            connected,
            status,
            rt: tokio::runtime::Handle::current(),
            last_error: last_error.clone(),
        };
        let thread = actor.spawn().map_err(internal)?;
        self.modules.write().insert(
            module.id.clone(),
            Arc::new(RunningModule {
                tenant_id: tenant_id.to_string(),
                fingerprint,
                info,
                events: events_tx,
                cancel,
                thread: Mutex::new(Some(thread)),
                last_error,
            }),
        );
        metrics::gauge!("lintel_modules_running").set(self.modules.read().len() as f64);
        tracing::info!(module = %module.id, driver = %driver.name, "module started");
        Ok(())
    }

    /// Stop a module: its transport closes, its sandbox is dropped, its state is removed.
    pub async fn stop_module(&self, module_id: &str) {
        let Some(m) = self.modules.write().remove(module_id) else {
            return;
        };
        m.cancel.cancel();
        // A full queue must not keep the actor alive: it also exits when all senders drop.
        let _ = m.events.try_send(Event::Stop);
        let thread = m.thread.lock().take();
        drop(m);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.status.remove(module_id);
        metrics::gauge!("lintel_modules_running").set(self.modules.read().len() as f64);
    }

    /// Stop every module (graceful shutdown).
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let ids: Vec<String> = self.modules.read().keys().cloned().collect();
        for id in ids {
            self.stop_module(&id).await;
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
    pub async fn resolve(&self, tenant_id: &str, system_id: &str, slug: &str) -> Result<String> {
        let slug =
            ModuleSlug::parse(slug).map_err(|e| EngineError::ModuleNotFound(e.to_string()))?;
        let system: ControlSystem = self
            .store
            .get(tenant_id, system_id)
            .await?
            .ok_or_else(|| EngineError::SystemNotFound(system_id.to_string()))?;
        let mut seen = 0;
        for module_id in &system.modules {
            let Some(module) = self.store.get::<Module>(tenant_id, module_id).await? else {
                continue;
            };
            let name = match &module.custom_name {
                Some(n) => n.clone(),
                None => match self
                    .store
                    .get::<DriverRecord>(tenant_id, &module.driver_id)
                    .await?
                {
                    Some(d) => d.module_name,
                    None => continue,
                },
            };
            if name == slug.name {
                seen += 1;
                if seen == slug.index {
                    return Ok(module.id);
                }
            }
        }
        Err(EngineError::ModuleNotFound(format!(
            "{slug} in {system_id}"
        )))
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

    pub fn driver_info(&self, tenant_id: &str, module_id: &str) -> Result<Arc<DriverInfo>> {
        Ok(self.running(tenant_id, module_id)?.info.clone())
    }

    /// Why the module's sandbox is not running, if it is not.
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
        let m = self.running(tenant_id, module_id)?;
        let f = m
            .info
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
        let timeout = self.cfg.exec_timeout;
        let json = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| EngineError::Timeout(timeout.as_millis() as u64))?
            .map_err(|_| EngineError::ModuleNotRunning(module_id.to_string()))??;
        serde_json::from_str(&json)
            .map_err(|e| EngineError::Driver(format!("the driver returned invalid JSON: {e}")))
    }

    /// Whether the store answers.
    pub async fn store_ok(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

/// Shallow merge of JSON objects: keys of `over` replace those of `base`.
fn merge(base: &mut Value, over: &Value) {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// Check argument count and each argument's JSON type against the function's schema.
fn check_arguments(f: &FunctionInfo, args: &[Value]) -> Result<()> {
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
        if let Some(ty) = p.schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "boolean" => arg.is_boolean(),
                "integer" => arg.is_i64() || arg.is_u64(),
                "number" => arg.is_number(),
                "string" => arg.is_string(),
                "array" => arg.is_array(),
                "object" => arg.is_object(),
                "null" => arg.is_null(),
                _ => true,
            };
            if !ok {
                return Err(bad(format!("parameter `{}` must be of type {ty}", p.name)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
