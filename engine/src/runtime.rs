//! The wasmtime side: one `wasmtime::Engine`, the `lintel:driver` bindings, the component
//! cache (in memory, and precompiled artifacts on disk), and driver metadata.

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::error::{EngineError, Result};
use crate::host::ModuleHost;
use crate::transport::{Framing, MAX_FRAME_BYTES};

pub(crate) mod bindings {
    // Guest calls are async so a long call yields its worker thread at every epoch tick
    // (time slicing between modules); host imports are plain functions (they never block).
    wasmtime::component::bindgen!({
        path: "../drivers/sdk/wit",
        world: "driver",
        exports: { default: async },
    });
}

/// The `lintel:driver` package versions this engine runs (same major.minor, any patch).
pub const SUPPORTED_ABI: &str = "0.1";

use bindings::lintel::driver::types as wit;

/// The interval of the epoch ticker: guest time budgets are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every module's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory a module may grow to.
    pub memory_bytes: usize,
    /// Wall-clock budget for one event (a call into the guest).
    pub event_budget: Duration,
    /// Bytes of a driver's stderr kept (panic messages), per instance.
    pub stderr_bytes: usize,
    /// Module instances the pooling allocator reserves room for (0: allocate on demand).
    pub max_modules: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 32 * 1024 * 1024,
            event_budget: Duration::from_millis(100),
            stderr_bytes: 16 * 1024,
            max_modules: 0,
        }
    }
}

/// Per-driver overrides of the sandbox limits (from the driver record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub memory_bytes: Option<usize>,
    pub event_budget: Option<Duration>,
}

/// A function a driver offers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub description: String,
    pub parameters: Vec<ParameterInfo>,
    /// JSON Schema of the result.
    pub returns: Value,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParameterInfo {
    pub name: String,
    pub schema: Value,
    pub required: bool,
    #[serde(skip)]
    pub(crate) check: SchemaCheck,
}

/// A compiled JSON Schema that arguments are checked against before reaching the driver.
#[derive(Clone)]
pub(crate) struct SchemaCheck(Arc<jsonschema::Validator>);

impl std::fmt::Debug for SchemaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaCheck")
    }
}

impl PartialEq for SchemaCheck {
    fn eq(&self, _: &Self) -> bool {
        true // derived from `schema`, which is compared
    }
}

impl SchemaCheck {
    fn compile(schema: &Value) -> std::result::Result<Self, String> {
        jsonschema::meta::validate(schema).map_err(|e| e.to_string())?;
        jsonschema::validator_for(schema)
            .map(|v| SchemaCheck(Arc::new(v)))
            .map_err(|e| e.to_string())
    }

    /// Why `value` does not match, if it does not (the first few reasons).
    pub(crate) fn check(&self, value: &Value) -> std::result::Result<(), String> {
        let errors: Vec<String> = self
            .0
            .iter_errors(value)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The transport a driver needs (the WIT `transport-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    None,
    Tcp,
    Udp,
    Tls,
    Http,
    Websocket,
    Mqtt,
}

/// What a driver component declared about itself, validated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriverInfo {
    pub name: String,
    pub module_name: String,
    pub description: String,
    /// The driver's own version (its crate version unless it says otherwise).
    pub version: String,
    /// The `lintel:driver` package version the component was built against.
    pub abi: String,
    pub transport: TransportKind,
    #[serde(skip)]
    pub framing: Framing,
    pub default_settings: Value,
    pub settings_schema: Value,
    pub secrets: Vec<String>,
    pub functions: Vec<FunctionInfo>,
}

impl DriverInfo {
    /// The stored record for this driver, installed with content hash `component_hash`.
    pub fn to_record(
        &self,
        tenant_id: &str,
        component_hash: String,
        role: lintel_model::DriverRole,
    ) -> lintel_model::DriverRecord {
        let now = lintel_model::now_unix();
        lintel_model::DriverRecord {
            id: lintel_model::new_id(lintel_model::IdKind::Driver),
            tenant_id: tenant_id.into(),
            name: self.name.clone(),
            module_name: self.module_name.clone(),
            role,
            description: self.description.clone(),
            component_hash,
            metadata: serde_json::json!({
                "abi": self.abi,
                "version": self.version,
                "transport": self.transport,
                "settings_schema": self.settings_schema,
                "secrets": self.secrets,
                "functions": self.functions,
            }),
            default_settings: Value::Object(Default::default()),
            sandbox: Default::default(),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    pub fn function(&self, name: &str) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.name == name)
    }

    fn from_wit(m: wit::DriverMetadata, abi: String) -> Result<Self> {
        let bad = |msg: String| EngineError::InvalidDriver(msg);
        if m.name.trim().is_empty() || m.module_name.trim().is_empty() {
            return Err(bad("metadata needs a name and a module-name".into()));
        }
        if !m
            .module_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || m.module_name.ends_with(|c: char| c.is_ascii_digit())
        {
            return Err(bad(format!(
                "module-name `{}` must be letters, digits and `_`, not ending in a digit",
                m.module_name
            )));
        }
        let json = |what: &str, text: &str| -> Result<Value> {
            let v: Value =
                serde_json::from_str(text).map_err(|e| bad(format!("{what} is not JSON: {e}")))?;
            if !v.is_object() {
                return Err(bad(format!("{what} must be a JSON object")));
            }
            Ok(v)
        };
        let schema = |what: &str, text: &str| -> Result<(Value, SchemaCheck)> {
            let v = json(what, text)?;
            let check = SchemaCheck::compile(&v)
                .map_err(|e| bad(format!("{what} is not a valid JSON Schema: {e}")))?;
            Ok((v, check))
        };
        let default_settings = json("default-settings", &m.default_settings)?;
        let (settings_schema, settings_check) = schema("settings-schema", &m.settings_schema)?;
        settings_check.check(&default_settings).map_err(|e| {
            bad(format!(
                "default-settings do not match the settings-schema: {e}"
            ))
        })?;
        let framing = match m.framing {
            wit::Framing::Raw => Framing::Raw,
            wit::Framing::Delimiter(d) if !d.is_empty() && d.len() <= 16 => Framing::Delimiter(d),
            wit::Framing::Delimiter(_) => return Err(bad("delimiter must be 1..=16 bytes".into())),
            wit::Framing::FixedLength(n) if n > 0 && n as usize <= MAX_FRAME_BYTES => {
                Framing::FixedLength(n as usize)
            }
            wit::Framing::FixedLength(n) => {
                return Err(bad(format!(
                    "fixed-length {n} must be 1..={MAX_FRAME_BYTES}"
                )));
            }
            wit::Framing::LengthPrefixed(n @ (1 | 2 | 4)) => Framing::LengthPrefixed(n),
            wit::Framing::LengthPrefixed(n) => {
                return Err(bad(format!(
                    "length-prefixed header of {n} bytes must be 1, 2 or 4"
                )));
            }
        };
        let mut functions = Vec::with_capacity(m.functions.len());
        for f in m.functions {
            if f.name.is_empty() || functions.iter().any(|g: &FunctionInfo| g.name == f.name) {
                return Err(bad(format!(
                    "function name `{}` is empty or repeated",
                    f.name
                )));
            }
            let mut parameters: Vec<ParameterInfo> = Vec::with_capacity(f.parameters.len());
            for p in f.parameters {
                if parameters.iter().any(|q| q.name == p.name) {
                    return Err(bad(format!(
                        "parameter `{}.{}` is repeated",
                        f.name, p.name
                    )));
                }
                if p.required && parameters.last().is_some_and(|q| !q.required) {
                    return Err(bad(format!(
                        "required parameter `{}.{}` follows an optional one",
                        f.name, p.name
                    )));
                }
                let (schema, check) =
                    schema(&format!("schema of `{}.{}`", f.name, p.name), &p.schema)?;
                parameters.push(ParameterInfo {
                    name: p.name,
                    schema,
                    required: p.required,
                    check,
                });
            }
            let (returns, _) = schema(&format!("result schema of `{}`", f.name), &f.returns)?;
            functions.push(FunctionInfo {
                name: f.name,
                description: f.description,
                parameters,
                returns,
            });
        }
        let mut secrets = m.secrets;
        secrets.sort();
        secrets.dedup();
        Ok(DriverInfo {
            name: m.name,
            module_name: m.module_name,
            description: m.description,
            version: m.version,
            abi,
            transport: match m.transport {
                wit::TransportKind::None => TransportKind::None,
                wit::TransportKind::Tcp => TransportKind::Tcp,
                wit::TransportKind::Udp => TransportKind::Udp,
                wit::TransportKind::Tls => TransportKind::Tls,
                wit::TransportKind::Http => TransportKind::Http,
                wit::TransportKind::Websocket => TransportKind::Websocket,
                wit::TransportKind::Mqtt => TransportKind::Mqtt,
            },
            framing,
            default_settings,
            settings_schema,
            secrets,
            functions,
        })
    }
}

/// Per-instance host state: the module's host imports and its WASI context.
pub(crate) struct Sandbox {
    pub host: ModuleHost,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
    /// Epoch ticks spent in the current call, and the most it may spend.
    ticks_used: u64,
    budget_ticks: u64,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Sandbox {
    /// What the guest wrote to stderr (e.g. a panic message), bounded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }
}

/// One instantiated driver in its own wasmtime `Store`.
pub(crate) struct Instance {
    pub store: Store<Sandbox>,
    pub driver: bindings::Driver,
}

impl Instance {
    /// Arm the per-event time budget; call before every call into the guest. The call
    /// yields its thread at every epoch tick and is interrupted when the budget is spent.
    pub fn arm(&mut self) {
        self.store.data_mut().ticks_used = 0;
        self.store.set_epoch_deadline(1);
    }
    pub fn guest(&self) -> &bindings::exports::lintel::driver::guest::Guest {
        self.driver.lintel_driver_guest()
    }
}

/// The wall and monotonic clocks a sandbox's WASI context reads.
pub trait SandboxClocks: Send + Sync {
    fn wasi_clocks(&self, builder: &mut wasmtime_wasi::WasiCtxBuilder);
}

/// The shared wasmtime engine and component cache.
pub struct DriverRuntime {
    engine: Engine,
    linker: Linker<Sandbox>,
    components: Mutex<HashMap<String, Component>>,
    /// What each component declared, read once per hash and shared by every module of the
    /// driver.
    infos: Mutex<HashMap<String, Arc<DriverInfo>>>,
    blob_dir: PathBuf,
    cache_dir: PathBuf,
    compat: String,
    limits: SandboxLimits,
    _ticker: EpochTicker,
}

struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}
impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl DriverRuntime {
    /// `data_dir` holds `drivers/<sha256>.wasm` (components) and `cache/` (precompiled).
    pub fn new(data_dir: &Path, limits: SandboxLimits) -> Result<Self> {
        let engine = Engine::new(&wasmtime_config(&limits)).map_err(internal)?;

        let blob_dir = data_dir.join("drivers");
        let cache_dir = data_dir.join("cache");
        for d in [&blob_dir, &cache_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| internal(format!("cannot create {}: {e}", d.display())))?;
        }
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = format!("{:016x}", h.finish());

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lintel-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(internal)?;
        }
        let linker = Self::make_linker(&engine)?;
        Ok(DriverRuntime {
            engine,
            linker,
            components: Mutex::new(HashMap::new()),
            infos: Mutex::new(HashMap::new()),
            blob_dir,
            cache_dir,
            compat,
            limits,
            _ticker: EpochTicker { stop },
        })
    }

    fn make_linker(engine: &Engine) -> Result<Linker<Sandbox>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(internal)?;
        bindings::Driver::add_to_linker::<_, HasSelf<_>>(&mut linker, |s: &mut Sandbox| {
            &mut s.host
        })
        .map_err(internal)?;
        Ok(linker)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Validate a component (a component, a supported world version, metadata that
    /// parses, valid schemas), store it by content hash and precompile it. Returns its hash
    /// and declared metadata. Installing the same bytes twice is a no-op.
    pub async fn install(&self, bytes: &[u8]) -> Result<(String, Arc<DriverInfo>)> {
        let (hash, component) = self.compile_checked(bytes)?;
        let info = Arc::new(self.inspect(&component).await?);
        self.infos.lock().insert(hash.clone(), info.clone());
        let blob = self.blob_dir.join(format!("{hash}.wasm"));
        if !blob.exists() {
            write_atomically(&blob, bytes)?;
        }
        Ok((hash, info))
    }

    /// The CPU-heavy part of [`install`](Self::install): checks and compilation.
    pub fn compile_checked(&self, bytes: &[u8]) -> Result<(String, Component)> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(EngineError::InvalidDriver(
                "not a WebAssembly binary".into(),
            ));
        }
        if bytes[4..8] != [0x0d, 0x00, 0x01, 0x00] {
            return Err(EngineError::InvalidDriver(
                "a core WebAssembly module, not a component: build for wasm32-wasip2".into(),
            ));
        }
        let hash = sha256_hex(bytes);
        let component = self.compile(&hash, bytes)?;
        self.abi_version(&component)?;
        Ok((hash, component))
    }

    /// The `lintel:driver` version a component was built against, if this engine runs it.
    pub(crate) fn abi_version(&self, component: &Component) -> Result<String> {
        let ty = component.component_type();
        let guest = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .find_map(|name| name.strip_prefix("lintel:driver/guest@").map(String::from));
        let Some(version) = guest else {
            return Err(EngineError::InvalidDriver(
                "the component does not export `lintel:driver/guest`: is it built with the Lintel driver SDK?".into(),
            ));
        };
        let supported = version
            .strip_prefix(SUPPORTED_ABI)
            .is_some_and(|rest| rest.starts_with('.'));
        if !supported {
            return Err(EngineError::InvalidDriver(format!(
                "built against lintel:driver@{version}; this engine runs lintel:driver@{SUPPORTED_ABI}.x: rebuild the driver with a matching SDK"
            )));
        }
        Ok(version)
    }

    /// Whether this engine can load `hash` without the Store (in memory, precompiled, or
    /// its component file in the data directory).
    pub fn has_local(&self, hash: &str) -> bool {
        self.components.lock().contains_key(hash)
            || self.cache_path(hash).exists()
            || self.blob_dir.join(format!("{hash}.wasm")).exists()
    }

    /// The compiled component for `hash`: from memory, the on-disk cache, or the stored blob.
    pub fn component(&self, hash: &str) -> Result<Component> {
        if let Some(c) = self.components.lock().get(hash) {
            return Ok(c.clone());
        }
        let cwasm = self.cache_path(hash);
        if cwasm.exists() {
            // SAFETY: the file is written only by `compile` below, from bytes this same
            // engine configuration produced; its name carries the engine's compatibility
            // hash. A file that fails to load is recompiled.
            match unsafe { Component::deserialize_file(&self.engine, &cwasm) } {
                Ok(c) => {
                    self.components.lock().insert(hash.to_string(), c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "precompiled driver unusable; recompiling")
                }
            }
        }
        let blob = self.blob_dir.join(format!("{hash}.wasm"));
        let bytes = std::fs::read(&blob).map_err(|e| {
            internal(format!(
                "driver component {hash} missing ({}): {e}",
                blob.display()
            ))
        })?;
        if sha256_hex(&bytes) != hash {
            return Err(internal(format!(
                "driver component {hash} is corrupt on disk"
            )));
        }
        self.compile(hash, &bytes)
    }

    fn cache_path(&self, hash: &str) -> PathBuf {
        self.cache_dir.join(format!("{hash}-{}.cwasm", self.compat))
    }

    fn compile(&self, hash: &str, bytes: &[u8]) -> Result<Component> {
        let started = std::time::Instant::now();
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| EngineError::InvalidDriver(format!("does not compile: {e:#}")))?;
        write_atomically(&self.cache_path(hash), &artifact)?;
        // SAFETY: `artifact` was produced just now by this engine.
        let c = unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(internal)?;
        tracing::debug!(%hash, ms = started.elapsed().as_millis() as u64, "driver compiled");
        self.components.lock().insert(hash.to_string(), c.clone());
        Ok(c)
    }

    /// A new sandboxed instance of `component` with host imports `host`, under `budget`.
    pub(crate) async fn instantiate(
        &self,
        component: &Component,
        host: ModuleHost,
        budget: Budget,
        clocks: Option<&dyn SandboxClocks>,
    ) -> Result<Instance> {
        let stderr = MemoryOutputPipe::new(self.limits.stderr_bytes);
        // No preopened directories, no environment, no network: ambient authority is nil.
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(c) = clocks {
            c.wasi_clocks(&mut wasi);
        }
        let wasi = wasi.build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(budget.memory_bytes.unwrap_or(self.limits.memory_bytes))
            .instances(16)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let budget_ticks = (budget
            .event_budget
            .unwrap_or(self.limits.event_budget)
            .as_millis()
            / EPOCH_TICK.as_millis())
        .max(1) as u64;
        let mut store = Store::new(
            &self.engine,
            Sandbox {
                host,
                wasi,
                table: ResourceTable::new(),
                limits,
                stderr,
                ticks_used: 0,
                budget_ticks,
            },
        );
        store.limiter(|s| &mut s.limits);
        // Every tick: yield the worker thread to other modules; past the budget: trap.
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            s.ticks_used += 1;
            if s.ticks_used >= s.budget_ticks {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(budget_ticks);
        let driver = bindings::Driver::instantiate_async(&mut store, component, &self.linker)
            .await
            .map_err(|e| {
                let why = format!("{e:#}");
                if why.contains("maximum concurrent limit") {
                    EngineError::Internal(format!(
                        "no room for another module instance: raise engine.max_modules (now {}): {why}",
                        self.limits.max_modules
                    ))
                } else {
                    EngineError::InvalidDriver(format!("does not instantiate: {why}"))
                }
            })?;
        Ok(Instance { store, driver })
    }

    /// The metadata of component `hash` (read in a throwaway sandbox the first time).
    pub async fn info(&self, hash: &str, component: &Component) -> Result<Arc<DriverInfo>> {
        if let Some(info) = self.infos.lock().get(hash) {
            return Ok(info.clone());
        }
        let info = Arc::new(self.inspect(component).await?);
        self.infos.lock().insert(hash.to_string(), info.clone());
        Ok(info)
    }

    /// Read and validate a component's metadata in a throwaway sandbox.
    pub async fn inspect(&self, component: &Component) -> Result<DriverInfo> {
        let abi = self.abi_version(component)?;
        let mut inst = self
            .instantiate(component, ModuleHost::inert(), Budget::default(), None)
            .await?;
        inst.arm();
        let guest = inst.guest().clone();
        let meta = guest
            .call_metadata(&mut inst.store)
            .await
            .map_err(|e| EngineError::InvalidDriver(format!("metadata() failed: {e:#}")))?;
        DriverInfo::from_wit(meta, abi)
    }
}

/// The wasmtime configuration every driver runs under.
fn wasmtime_config(limits: &SandboxLimits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Measured 3–5× faster calls without it; drivers do not use component-model async.
    config.concurrency_support(false);
    if limits.max_modules > 0 {
        // Sizes measured on Lintel's drivers (see docs/architecture.md, "The driver
        // sandbox"): 3 core instances, 2 tables (≥117 elements), 1 memory per component.
        let n = limits.max_modules;
        // Headroom for metadata inspection and for restarts overlapping a stop.
        let slots = n.saturating_add(n / 16).saturating_add(16);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_memories(slots)
            // Every live Store keeps its last fiber stack: one per module, not per call.
            .total_stacks(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_tables(slots.saturating_mul(2))
            .max_core_instances_per_component(8)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(2_000)
            .max_memory_size(limits.memory_bytes)
            .max_core_instance_size(64 << 10)
            .max_component_instance_size(128 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        // Reserve only the cap per memory (no guard): thousands of slots fit the address
        // space. Copy-on-write images cost two kernel mappings per instance but keep the
        // pages a module never writes shared: ~67 instead of ~95 KiB of physical memory
        // per idle module (the P4 benchmark).
        config.memory_reservation(limits.memory_bytes as u64);
        config.memory_guard_size(0);
        config.memory_init_cow(true);
    }
    config
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    // Unique per process and call: harnesses in parallel tests (threads or processes)
    // may write the same component at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| internal(format!("cannot write {}: {e}", path.display())))
}
