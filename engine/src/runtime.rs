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
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::error::{EngineError, Result};
use crate::transport::{Framing, MAX_FRAME_BYTES};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../drivers/sdk/wit",
        world: "driver",
    });
}

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
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 32 * 1024 * 1024,
            event_budget: Duration::from_millis(100),
            stderr_bytes: 16 * 1024,
        }
    }
}

/// A function a driver offers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub description: String,
    pub parameters: Vec<ParameterInfo>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParameterInfo {
    pub name: String,
    pub schema: Value,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    None,
    Tcp,
}

/// What a driver component declared about itself, validated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriverInfo {
    pub name: String,
    pub module_name: String,
    pub description: String,
    pub transport: TransportKind,
    #[serde(skip)]
    pub framing: Framing,
    pub default_settings: Value,
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
                "abi": crate::DRIVER_ABI,
                "transport": self.transport,
                "functions": self.functions,
            }),
            default_settings: Value::Object(Default::default()),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    pub fn function(&self, name: &str) -> Option<&FunctionInfo> {
        self.functions.iter().find(|f| f.name == name)
    }

    fn from_wit(m: wit::DriverMetadata) -> Result<Self> {
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
        let default_settings: Value = serde_json::from_str(&m.default_settings)
            .map_err(|e| bad(format!("default-settings is not JSON: {e}")))?;
        if !default_settings.is_object() {
            return Err(bad("default-settings must be a JSON object".into()));
        }
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
        };
        let mut functions = Vec::with_capacity(m.functions.len());
        for f in m.functions {
            if f.name.is_empty() || functions.iter().any(|g: &FunctionInfo| g.name == f.name) {
                return Err(bad(format!(
                    "function name `{}` is empty or repeated",
                    f.name
                )));
            }
            let mut parameters = Vec::with_capacity(f.parameters.len());
            for p in f.parameters {
                let schema: Value = serde_json::from_str(&p.schema).map_err(|e| {
                    bad(format!(
                        "schema of `{}.{}` is not JSON: {e}",
                        f.name, p.name
                    ))
                })?;
                if !schema.is_object() {
                    return Err(bad(format!(
                        "schema of `{}.{}` must be an object",
                        f.name, p.name
                    )));
                }
                parameters.push(ParameterInfo {
                    name: p.name,
                    schema,
                    required: p.required,
                });
            }
            functions.push(FunctionInfo {
                name: f.name,
                description: f.description,
                parameters,
            });
        }
        Ok(DriverInfo {
            name: m.name,
            module_name: m.module_name,
            description: m.description,
            transport: match m.transport {
                wit::TransportKind::None => TransportKind::None,
                wit::TransportKind::Tcp => TransportKind::Tcp,
            },
            framing,
            default_settings,
            functions,
        })
    }
}

/// Per-instance host state. `H` is the host-import implementation (the module actor's).
pub(crate) struct Sandbox<H> {
    pub host: H,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
}

impl<H: Send> WasiView for Sandbox<H> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<H> Sandbox<H> {
    /// What the guest wrote to stderr (e.g. a panic message), bounded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }
}

/// The host imports a module's sandbox implements.
pub(crate) trait HostImports: bindings::lintel::driver::host::Host + Send + 'static {}
impl<T: bindings::lintel::driver::host::Host + Send + 'static> HostImports for T {}

impl<H: HostImports> bindings::lintel::driver::types::Host for Sandbox<H> {}
impl<H: HostImports> bindings::lintel::driver::host::Host for Sandbox<H> {
    fn send(&mut self, data: Vec<u8>) -> std::result::Result<(), String> {
        self.host.send(data)
    }
    fn set_status(&mut self, key: String, value: String) -> std::result::Result<(), String> {
        self.host.set_status(key, value)
    }
    fn log(&mut self, level: wit::LogLevel, message: String) {
        self.host.log(level, message)
    }
    fn schedule_every(&mut self, id: u32, period_ms: u32) {
        self.host.schedule_every(id, period_ms)
    }
    fn schedule_in(&mut self, id: u32, delay_ms: u32) {
        self.host.schedule_in(id, delay_ms)
    }
    fn cancel_schedule(&mut self, id: u32) {
        self.host.cancel_schedule(id)
    }
}

/// One instantiated driver in its own wasmtime `Store`.
pub(crate) struct Instance<H: HostImports> {
    pub store: Store<Sandbox<H>>,
    pub driver: bindings::Driver,
    budget_ticks: u64,
}

impl<H: HostImports> Instance<H> {
    /// Arm the per-event time budget; call before every call into the guest.
    pub fn arm(&mut self) {
        self.store.set_epoch_deadline(self.budget_ticks);
    }
    pub fn guest(&self) -> &bindings::exports::lintel::driver::guest::Guest {
        self.driver.lintel_driver_guest()
    }
}

/// The shared wasmtime engine and component cache.
pub struct DriverRuntime {
    engine: Engine,
    linker_noop: Linker<Sandbox<NoHost>>,
    components: Mutex<HashMap<String, Component>>,
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

/// Host imports that do nothing: used to read a component's metadata at install time.
pub(crate) struct NoHost;
impl bindings::lintel::driver::host::Host for NoHost {
    fn send(&mut self, _: Vec<u8>) -> std::result::Result<(), String> {
        Err("no transport while inspecting a driver".into())
    }
    fn set_status(&mut self, _: String, _: String) -> std::result::Result<(), String> {
        Ok(())
    }
    fn log(&mut self, _: wit::LogLevel, _: String) {}
    fn schedule_every(&mut self, _: u32, _: u32) {}
    fn schedule_in(&mut self, _: u32, _: u32) {}
    fn cancel_schedule(&mut self, _: u32) {}
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
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Measured 3–5× faster calls without it; drivers do not use component-model async.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(internal)?;

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
        let linker_noop = Self::linker::<NoHost>(&engine)?;
        Ok(DriverRuntime {
            engine,
            linker_noop,
            components: Mutex::new(HashMap::new()),
            blob_dir,
            cache_dir,
            compat,
            limits,
            _ticker: EpochTicker { stop },
        })
    }

    pub(crate) fn linker<H: HostImports>(engine: &Engine) -> Result<Linker<Sandbox<H>>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(internal)?;
        bindings::Driver::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(internal)?;
        Ok(linker)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Validate a component, store it by content hash and precompile it. Returns its hash
    /// and declared metadata. Installing the same bytes twice is a no-op.
    pub fn install(&self, bytes: &[u8]) -> Result<(String, DriverInfo)> {
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
        let info = self.inspect(&component)?;
        let blob = self.blob_dir.join(format!("{hash}.wasm"));
        if !blob.exists() {
            write_atomically(&blob, bytes)?;
        }
        Ok((hash, info))
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

    /// A new sandboxed instance of `component` with host imports `host`.
    pub(crate) fn instantiate<H: HostImports>(
        &self,
        linker: &Linker<Sandbox<H>>,
        component: &Component,
        host: H,
    ) -> Result<Instance<H>> {
        let stderr = MemoryOutputPipe::new(self.limits.stderr_bytes);
        // No preopened directories, no environment, no network: ambient authority is nil.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(16)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            Sandbox {
                host,
                wasi,
                table: ResourceTable::new(),
                limits,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let budget_ticks =
            (self.limits.event_budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(budget_ticks);
        let driver = bindings::Driver::instantiate(&mut store, component, linker).map_err(|e| {
            EngineError::InvalidDriver(format!(
                "does not instantiate (wrong world version?): {e:#}"
            ))
        })?;
        Ok(Instance {
            store,
            driver,
            budget_ticks,
        })
    }

    /// Read and validate a component's metadata in a throwaway sandbox.
    pub fn inspect(&self, component: &Component) -> Result<DriverInfo> {
        let mut inst = self.instantiate(&self.linker_noop, component, NoHost)?;
        inst.arm();
        let guest = inst.guest().clone();
        let meta = guest
            .call_metadata(&mut inst.store)
            .map_err(|e| EngineError::InvalidDriver(format!("metadata() failed: {e:#}")))?;
        DriverInfo::from_wit(meta)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| internal(format!("cannot write {}: {e}", path.display())))
}
