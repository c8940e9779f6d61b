//! Publishes live device state to the MQTT brokers tenants configure (`Broker` records),
//! in PlaceOS's topic scheme, and optionally takes commands from them.
//!
//! ```text
//!  StatusBus ──► core task ──► per broker: Pending (latest per topic, bounded)
//!  store feed ─┘  (topic index,            └─► feeder ──► rumqttc event loop ──► broker
//!                  config changes)                            │ commands (opt-in)
//!                                                             └─► allow-list ─► engine.exec
//! ```
//!
//! - The core follows the engine's status bus and never waits on a broker: a change is
//!   put in each of its tenant's brokers' queues and the core moves on. Drivers and
//!   WebSocket clients are therefore never slowed by a broker, however slow or absent.
//! - A broker's queue keeps the latest value per topic, bounded in topics and bytes
//!   (`[mqtt]` in `lintel.toml`). Every new session re-publishes the tenant's current
//!   state and metadata, so the broker ends up right after any outage or restart.
//! - The topic index follows the configuration: a module renamed, moved or removed has
//!   its old topics cleared (empty retained message) and its new ones filled.
//!
//! rumqttc stays inside `broker.rs` and `commands.rs`; `topics.rs` and `pending.rs` are
//! plain logic.

mod broker;
mod commands;
mod pending;
pub mod topics;

pub use broker::BrokerState;
pub use pending::Pending;

use broker::{BrokerShared, BrokerTask};
pub(crate) use commands::Inbound;
use lintel_engine::{Engine, StatusBus, StatusChange};
use lintel_model::{Broker, ControlSystem, DriverRecord, IdKind, Module, Zone};
use lintel_store::{Change, ListOptions, Store, StoreExt};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use topics::{StateBase, TenantTopics};
use zeroize::Zeroizing;

/// Process-wide limits (`[mqtt]` in `lintel.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Topics one broker's queue holds while it is slow or away.
    pub buffer_topics: usize,
    /// Bytes one broker's queue holds (topics, payloads and bookkeeping).
    pub buffer_bytes: usize,
    /// Larger status values are not published (and counted in
    /// `lintel_mqtt_oversize_total`).
    pub max_payload_bytes: usize,
    /// Larger command messages are refused with an answer; a packet over four times this
    /// ends the session (the broker is asked again after backoff).
    pub command_max_bytes: usize,
    /// Commands received and not yet looked at, per broker; more are dropped.
    pub command_queue: usize,
    /// Commands running at once, per broker; more are answered `busy`.
    pub command_inflight: usize,
    /// How long configuration changes are gathered before the topics are rebuilt.
    pub settle: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            buffer_topics: 100_000,
            buffer_bytes: 64 * 1024 * 1024,
            max_payload_bytes: 256 * 1024,
            command_max_bytes: 64 * 1024,
            command_queue: 64,
            command_inflight: 16,
            settle: Duration::from_millis(100),
        }
    }
}

/// Opens a broker's sealed password (the binary gives the keyring's).
pub trait PasswordOpener: Send + Sync {
    fn open(&self, broker: &Broker) -> Result<Zeroizing<String>, String>;
}

/// What the core shares with broker tasks.
pub(crate) struct Ctx {
    pub engine: Arc<Engine>,
    pub bus: Arc<StatusBus>,
    pub store: Arc<dyn Store>,
    pub cfg: MqttConfig,
    /// Tenant → its topics (replaced whole on every rebuild).
    pub index: RwLock<HashMap<Arc<str>, Arc<TenantTopics>>>,
}

/// Every configured broker's state by id, with its tenant (also brokers that could not
/// start: their state says why).
type Registry = Arc<RwLock<HashMap<String, (Arc<str>, Arc<BrokerShared>)>>>;

/// The publisher: one per process.
pub struct Publisher {
    ctx: Arc<Ctx>,
    brokers: Registry,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Publisher {
    /// Start on the current runtime: load the brokers of every tenant, and follow the
    /// status bus and the configuration from now on.
    pub fn start(
        engine: Arc<Engine>,
        store: Arc<dyn Store>,
        opener: Arc<dyn PasswordOpener>,
        cfg: MqttConfig,
    ) -> Arc<Publisher> {
        let bus = engine.status_bus().clone();
        // Subscribed before anything is read, so nothing in between is missed.
        let changes = bus.subscribe();
        let feed = store.changes();
        let ctx = Arc::new(Ctx {
            engine,
            bus,
            store,
            cfg,
            index: RwLock::new(HashMap::new()),
        });
        let brokers = Arc::new(RwLock::new(HashMap::new()));
        let stop = CancellationToken::new();
        let core = Core {
            ctx: ctx.clone(),
            opener,
            registry: brokers.clone(),
            tenants: HashMap::new(),
            by_module: HashMap::new(),
            keys: HashMap::new(),
            dirty: HashSet::new(),
            brokers_dirty: HashSet::new(),
            deadline: None,
            warned_oversize: None,
            warned_lag: None,
            load_all: true,
        };
        let task = tokio::spawn(core.run(changes, feed, stop.clone()));
        Arc::new(Publisher {
            ctx,
            brokers,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Say `offline` to every broker and disconnect (bounded: a few seconds).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// A broker's connection state, if it is configured and enabled.
    pub fn broker_state(&self, tenant_id: &str, broker_id: &str) -> Option<BrokerState> {
        let brokers = self.brokers.read();
        let (tenant, shared) = brokers.get(broker_id)?;
        (&**tenant == tenant_id).then(|| shared.snapshot())
    }

    /// How many enabled brokers are not connected now (readiness shows it as degraded).
    pub fn disconnected(&self) -> usize {
        self.brokers
            .read()
            .values()
            .filter(|(_, b)| !b.state.lock().connected)
            .count()
    }

    /// Enabled brokers.
    pub fn brokers(&self) -> usize {
        self.brokers.read().len()
    }

    /// Topics waiting in every broker's queue (the tests' memory check).
    pub fn pending(&self) -> (usize, usize) {
        self.brokers.read().values().fold((0, 0), |(n, b), (_, s)| {
            let p = s.pending.lock();
            (n + p.len(), b + p.bytes())
        })
    }

    /// The tenant's topics as last built (for tests and diagnostics).
    pub fn topics(&self, tenant_id: &str) -> Option<Arc<TenantTopics>> {
        self.ctx.index.read().get(tenant_id).cloned()
    }
}

struct TenantRun {
    /// Running broker connections with the record version they run.
    brokers: HashMap<String, (u64, Option<BrokerTask>, Arc<BrokerShared>)>,
}

impl TenantRun {
    fn shared(&self) -> impl Iterator<Item = &Arc<BrokerShared>> {
        self.brokers.values().map(|(_, _, s)| s)
    }
}

/// The core task's state.
struct Core {
    ctx: Arc<Ctx>,
    opener: Arc<dyn PasswordOpener>,
    registry: Registry,
    tenants: HashMap<Arc<str>, TenantRun>,
    /// Module → (tenant, topic bases) of every published module.
    by_module: HashMap<Arc<str>, (Arc<str>, Vec<StateBase>)>,
    /// Keys published per module: what to clear when a module's topics go away.
    keys: HashMap<Arc<str>, HashSet<Arc<str>>>,
    dirty: HashSet<Arc<str>>,
    brokers_dirty: HashSet<Arc<str>>,
    deadline: Option<tokio::time::Instant>,
    warned_oversize: Option<Instant>,
    warned_lag: Option<Instant>,
    /// The brokers of every tenant are still to be read.
    load_all: bool,
}

/// Changes taken from the bus per wake-up.
const CHANGE_BATCH: usize = 512;
/// How soon a configuration read that failed is tried again.
const RETRY: Duration = Duration::from_secs(5);

impl Core {
    async fn run(
        mut self,
        mut changes: tokio::sync::broadcast::Receiver<StatusChange>,
        mut feed: tokio::sync::broadcast::Receiver<Change>,
        stop: CancellationToken,
    ) {
        self.apply().await;
        loop {
            let sleep = async {
                match self.deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                r = changes.recv() => match r {
                    Ok(c) => {
                        self.on_change(c);
                        for _ in 0..CHANGE_BATCH {
                            match changes.try_recv() {
                                Ok(c) => self.on_change(c),
                                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                                    self.lagged(n);
                                    changes = changes.resubscribe();
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        self.lagged(n);
                        // From the newest change on: the re-publication covers the rest.
                        // (Reading on from the oldest kept change would lag again at
                        // once while the writers outrun the bus.)
                        changes = changes.resubscribe();
                    }
                    Err(RecvError::Closed) => break,
                },
                r = feed.recv() => match r {
                    Ok(c) => self.on_config(c),
                    Err(RecvError::Lagged(_)) => {
                        let all: Vec<Arc<str>> = self.tenants.keys().cloned().collect();
                        for t in all {
                            self.mark(t.clone(), true);
                        }
                    }
                    Err(RecvError::Closed) => {}
                },
                _ = sleep => self.apply().await,
            }
        }
        // Every broker: `offline`, DISCONNECT.
        let tasks: Vec<BrokerTask> = self
            .tenants
            .drain()
            .flat_map(|(_, t)| t.brokers.into_values().filter_map(|(_, task, _)| task))
            .collect();
        futures_join(tasks.into_iter().map(BrokerTask::close)).await;
        self.registry.write().clear();
    }

    /// Values may have been missed: every broker re-publishes everything.
    fn lagged(&mut self, n: u64) {
        metrics::counter!("lintel_mqtt_lagged_total").increment(1);
        if self
            .warned_lag
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.warned_lag = Some(Instant::now());
            tracing::warn!(
                missed = n,
                "the MQTT publisher fell behind the status bus; re-publishing current state (said at most once a minute; see lintel_mqtt_lagged_total)"
            );
        }
        for t in self.tenants.values() {
            for b in t.shared() {
                b.resync.store(true, std::sync::atomic::Ordering::Relaxed);
                b.wake.notify_one();
            }
        }
    }

    fn on_change(&mut self, c: StatusChange) {
        let Some((tenant, bases)) = self.by_module.get(&c.module_id) else {
            return;
        };
        let Some(run) = self.tenants.get(tenant) else {
            return;
        };
        let value = match &c.value {
            Some(v) => serde_json::to_string(&**v).unwrap_or_else(|_| "null".into()),
            None => "null".into(),
        };
        let payload = topics::payload(lintel_model::now_unix(), &value);
        if payload.len() > self.ctx.cfg.max_payload_bytes {
            metrics::counter!("lintel_mqtt_oversize_total").increment(1);
            if self
                .warned_oversize
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            {
                self.warned_oversize = Some(Instant::now());
                tracing::warn!(module = %c.module_id, key = %c.key, bytes = payload.len(), limit = self.ctx.cfg.max_payload_bytes, "status value too large to publish over MQTT; skipped (mqtt.max_payload_bytes)");
            }
            return;
        }
        for b in run.shared() {
            for base in bases {
                b.put(
                    &topics::state_topic(&b.prefix, base, &c.key),
                    payload.clone(),
                );
            }
        }
        let keys = self.keys.entry(c.module_id.clone()).or_default();
        if !keys.contains(&c.key) {
            keys.insert(c.key.clone());
        }
    }

    fn on_config(&mut self, c: Change) {
        let tenant: Arc<str> = Arc::from(c.tenant_id.as_str());
        match c.kind {
            IdKind::Broker => self.mark(tenant, false),
            IdKind::System | IdKind::Zone | IdKind::Module | IdKind::Driver
                if self.tenants.contains_key(&tenant) =>
            {
                self.mark(tenant, true)
            }
            _ => {}
        }
    }

    fn mark(&mut self, tenant: Arc<str>, topics: bool) {
        if topics {
            self.dirty.insert(tenant);
        } else {
            self.brokers_dirty.insert(tenant);
        }
        self.deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + self.ctx.cfg.settle);
    }

    /// Apply gathered configuration changes: brokers first, then topics. What fails (the
    /// store is unreachable) is tried again after [`RETRY`].
    async fn apply(&mut self) {
        self.deadline = None;
        let mut failed = false;
        if self.load_all {
            // Every tenant with a broker (at start, and until it succeeds).
            match self
                .ctx
                .store
                .list_all_scoped::<Broker>(None, ListOptions::default())
                .await
            {
                Ok(all) => {
                    self.load_all = false;
                    for b in all {
                        self.brokers_dirty.insert(Arc::from(b.tenant_id.as_str()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_s = RETRY.as_secs(), "cannot read the MQTT brokers");
                    failed = true;
                }
            }
        }
        for tenant in std::mem::take(&mut self.brokers_dirty) {
            if let Err(e) = self.load_brokers(&tenant).await {
                tracing::error!(tenant = %tenant, error = %e, retry_in_s = RETRY.as_secs(), "cannot read the tenant's MQTT brokers");
                self.mark(tenant, false);
                failed = true;
            }
        }
        for tenant in std::mem::take(&mut self.dirty) {
            if !self.tenants.contains_key(&tenant) {
                continue;
            }
            if let Err(e) = self.rebuild(&tenant).await {
                tracing::error!(tenant = %tenant, error = %e, retry_in_s = RETRY.as_secs(), "cannot rebuild the MQTT topics");
                self.mark(tenant, true);
                failed = true;
            }
        }
        if failed {
            self.deadline = Some(tokio::time::Instant::now() + RETRY);
        }
    }

    /// Start, restart or stop the tenant's broker connections to match its records.
    async fn load_brokers(&mut self, tenant: &Arc<str>) -> Result<(), lintel_store::StoreError> {
        let records: Vec<Broker> = self
            .ctx
            .store
            .list_all(tenant, ListOptions::default())
            .await?;
        let wanted: HashMap<String, Broker> = records
            .into_iter()
            .filter(|b| b.enabled)
            .map(|b| (b.id.clone(), b))
            .collect();
        if !self.tenants.contains_key(tenant) {
            if wanted.is_empty() {
                return Ok(());
            }
            // Topics before connections: a session's first re-publication reads them.
            self.tenants.insert(
                tenant.clone(),
                TenantRun {
                    brokers: HashMap::new(),
                },
            );
            if let Err(e) = self.rebuild(tenant).await {
                self.tenants.remove(tenant);
                return Err(e);
            }
        }
        let run = self
            .tenants
            .get_mut(tenant)
            .expect("the tenant's entry was made above");
        // Stop what is gone or changed.
        let stale: Vec<String> = run
            .brokers
            .iter()
            .filter(|(id, (v, _, _))| wanted.get(*id).is_none_or(|b| b.version != *v))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, task, _)) = run.brokers.remove(&id) {
                self.registry.write().remove(&id);
                if let Some(t) = task {
                    t.close().await;
                }
                tracing::info!(broker = %id, "MQTT broker connection stopped (changed, disabled or deleted)");
            }
        }
        for (id, b) in wanted {
            if run.brokers.contains_key(&id) {
                continue;
            }
            let cfg = &self.ctx.cfg;
            let shared = Arc::new(BrokerShared::new(&b, cfg.buffer_topics, cfg.buffer_bytes));
            let password = match &b.password {
                Some(_) => match self.opener.open(&b) {
                    Ok(p) => Ok(Some(p)),
                    Err(e) => Err(format!("cannot open the broker's password: {e}")),
                },
                None => Ok(None),
            };
            let task = password
                .and_then(|p| broker::options(&b, p, cfg.command_max_bytes, cfg.max_payload_bytes))
                .map(|o| {
                    BrokerTask::start(self.ctx.clone(), tenant.clone(), &b, o, shared.clone())
                });
            let task = match task {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(broker = %b.id, name = %b.name, error = %e, "MQTT broker not started");
                    shared.state.lock().error = Some(e);
                    None
                }
            };
            self.registry
                .write()
                .insert(id.clone(), (tenant.clone(), shared.clone()));
            run.brokers.insert(id, (b.version, task, shared));
        }
        if run.brokers.is_empty() {
            self.tenants.remove(tenant);
            self.ctx.index.write().remove(tenant);
            self.by_module.retain(|m, (t, _)| {
                let keep = t != tenant;
                if !keep {
                    self.keys.remove(m);
                }
                keep
            });
        }
        Ok(())
    }

    /// Rebuild the tenant's topics; clear topics that went away, fill those that came.
    async fn rebuild(&mut self, tenant: &Arc<str>) -> Result<(), lintel_store::StoreError> {
        let store = &self.ctx.store;
        let opts = ListOptions::default;
        let systems: Vec<ControlSystem> = store.list_all(tenant, opts()).await?;
        let zones: Vec<Zone> = store.list_all(tenant, opts()).await?;
        let modules: Vec<Module> = store.list_all(tenant, opts()).await?;
        let drivers: Vec<DriverRecord> = store.list_all(tenant, opts()).await?;
        let new = Arc::new(TenantTopics::build(&systems, &zones, &modules, &drivers));
        let old = self
            .ctx
            .index
            .write()
            .insert(tenant.clone(), new.clone())
            .unwrap_or_default();
        let Some(run) = self.tenants.get(tenant) else {
            return Ok(());
        };
        let now = lintel_model::now_unix();
        let brokers: Vec<&Arc<BrokerShared>> = run.shared().collect();
        // Topics gone: cleared (an empty retained message removes what the broker holds).
        for (module, bases) in &old.modules {
            let kept = new.modules.get(module);
            for base in bases {
                if kept.is_some_and(|k| k.contains(base)) {
                    continue;
                }
                for key in self.keys.get(module).into_iter().flatten() {
                    for b in &brokers {
                        b.put(
                            &topics::state_topic(&b.prefix, base, key),
                            bytes::Bytes::new(),
                        );
                    }
                }
            }
            if kept.is_none() {
                self.by_module.remove(module);
                self.keys.remove(module);
            }
        }
        // Topics new: filled with the module's current values.
        for (module, bases) in &new.modules {
            let before = old.modules.get(module);
            let added: Vec<&StateBase> = bases
                .iter()
                .filter(|b| before.is_none_or(|o| !o.contains(b)))
                .collect();
            self.by_module
                .insert(module.clone(), (tenant.clone(), bases.clone()));
            if added.is_empty() {
                continue;
            }
            let Some(snapshot) = self.ctx.bus.snapshot(module) else {
                continue;
            };
            for (key, value) in &snapshot {
                let p = topics::payload(now, &value.to_string());
                for b in &brokers {
                    for base in &added {
                        b.put(&topics::state_topic(&b.prefix, base, key), p.clone());
                    }
                }
                self.keys
                    .entry(module.clone())
                    .or_default()
                    .insert(Arc::from(key.as_str()));
            }
        }
        // Metadata: changed or new records, and `null` for those gone (as PlaceOS).
        for (id, v) in &new.metadata {
            if old.metadata.get(id) != Some(v) {
                let p = topics::payload(now, &v.to_string());
                for b in &brokers {
                    b.put(&topics::metadata_topic(&b.prefix, id), p.clone());
                }
            }
        }
        for id in old
            .metadata
            .keys()
            .filter(|id| !new.metadata.contains_key(*id))
        {
            for b in &brokers {
                b.put(
                    &topics::metadata_topic(&b.prefix, id),
                    topics::payload(now, "null"),
                );
            }
        }
        Ok(())
    }
}

/// Run futures to completion together.
async fn futures_join<F>(futs: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
