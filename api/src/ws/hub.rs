//! The fan-out from device state to WebSocket sessions.
//!
//! One task per process follows the engine's [`StatusBus`] and owns the index of bindings:
//! a *topic* is one distinct `(tenant, sys, mod, index, name)` bound by any session, with
//! the module it resolves to and its subscribers. A change is looked up by `(module, key)`
//! and, for each topic on it, serialized once; the bytes are shared by every subscriber
//! (each session only puts its bind `id` in front when writing). Nothing is done per
//! session for keys it did not bind.
//!
//! Bindings follow the configuration: when a system, module or driver changes, the hub
//! resolves its topics again, and a topic whose module changed (a reordered system, a
//! renamed module, one added later — PlaceOS keeps such a binding waiting and so does
//! Lintel) is moved and its subscribers get the new module's value.

use super::frame::{self, Meta};
use super::outbox::{Outbox, TopicId};
use bytes::Bytes;
use lintel_engine::{Engine, EngineError, StatusBus, StatusChange};
use lintel_model::IdKind;
use lintel_store::Change;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};

/// A session's id in the hub.
pub(crate) type SessionId = u64;

/// Commands queued to the hub (bounded: a session waits for room).
const COMMAND_QUEUE: usize = 4096;
/// Changes taken from the bus per wake-up.
const CHANGE_BATCH: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicKey {
    pub tenant: Arc<str>,
    pub meta: Meta,
}

impl TopicKey {
    fn slug(&self) -> String {
        format!("{}_{}", self.meta.module, self.meta.index)
    }
}

pub(crate) enum Command {
    Open {
        session: SessionId,
        outbox: Arc<Outbox>,
    },
    /// Bind (the session checked access and resolved the module, `None` when the system
    /// has no such module yet). The hub answers: the bind's success, then the current
    /// value if there is one.
    Bind {
        session: SessionId,
        key: TopicKey,
        module: Option<Arc<str>>,
        id: i64,
    },
    Unbind {
        session: SessionId,
        key: TopicKey,
        id: i64,
    },
    Close {
        session: SessionId,
    },
    /// The topics of `(tenant, sys, slug)` now resolve to `module`.
    Remap {
        tenant: Arc<str>,
        sys: String,
        slug: String,
        module: Option<Arc<str>>,
    },
}

/// The handle sessions use.
pub struct Hub {
    commands: mpsc::Sender<Command>,
    next_session: AtomicU64,
}

impl Hub {
    /// Start the hub's task on the current runtime.
    pub fn start(engine: Arc<Engine>, config_changes: broadcast::Receiver<Change>) -> Arc<Hub> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let bus = engine.status_bus().clone();
        let changes = bus.subscribe();
        let state = State {
            bus,
            engine,
            remaps: tx.downgrade(),
            sessions: HashMap::new(),
            topic_ids: HashMap::new(),
            topics: HashMap::new(),
            by_module: HashMap::new(),
            by_system: HashMap::new(),
            next_topic: 1,
        };
        tokio::spawn(state.run(rx, changes, config_changes));
        Arc::new(Hub {
            commands: tx,
            next_session: AtomicU64::new(1),
        })
    }

    pub(crate) fn session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue a command; `false` if the hub has stopped.
    pub(crate) async fn send(&self, c: Command) -> bool {
        self.commands.send(c).await.is_ok()
    }
}

struct Subscriber {
    outbox: Arc<Outbox>,
    /// The id of the bind that made it (PlaceOS sends it in every notify).
    id: i64,
}

struct Topic {
    key: TopicKey,
    meta_tail: Vec<u8>,
    module: Option<Arc<str>>,
    /// Changes of the module numbered at or below this are already reflected.
    last_seq: u64,
    /// The latest value's notify tail (`None`: no value).
    current: Option<Bytes>,
    subscribers: HashMap<SessionId, Subscriber>,
}

impl Topic {
    /// Send every subscriber the current value (`null` when there is none).
    fn tell(&self, id: TopicId) {
        let tail = self
            .current
            .clone()
            .unwrap_or_else(|| frame::notify_tail(b"null", &self.meta_tail));
        for s in self.subscribers.values() {
            s.outbox.push_notify(id, s.id, tail.clone());
        }
    }
}

struct SessionEntry {
    outbox: Arc<Outbox>,
    topics: HashSet<TopicId>,
}

struct State {
    bus: Arc<StatusBus>,
    engine: Arc<Engine>,
    remaps: mpsc::WeakSender<Command>,
    sessions: HashMap<SessionId, SessionEntry>,
    topic_ids: HashMap<TopicKey, TopicId>,
    topics: HashMap<TopicId, Topic>,
    /// module id → status key → topics.
    by_module: HashMap<Arc<str>, HashMap<Arc<str>, Vec<TopicId>>>,
    /// (tenant, system) → topics.
    by_system: HashMap<(Arc<str>, String), HashSet<TopicId>>,
    next_topic: TopicId,
}

fn value_json(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        // Serializing a JSON value cannot fail.
        Some(v) => serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()),
        None => b"null".to_vec(),
    }
}

impl State {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut changes: broadcast::Receiver<StatusChange>,
        mut config: broadcast::Receiver<Change>,
    ) {
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.apply(c),
                    None => return,
                },
                c = changes.recv() => match c {
                    Ok(c) => {
                        self.change(&c);
                        for _ in 1..CHANGE_BATCH {
                            match changes.try_recv() {
                                Ok(c) => self.change(&c),
                                Err(broadcast::error::TryRecvError::Lagged(n)) => self.resync(n),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.resync(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                c = config.recv() => match c {
                    Ok(c) => self.config_changed(Some(&c)),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.config_changed(None),
                    // The store is gone (shutting down): go on serving state.
                    Err(broadcast::error::RecvError::Closed) => config = broadcast::channel(1).1,
                },
            }
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Open { session, outbox } => {
                self.sessions.insert(
                    session,
                    SessionEntry {
                        outbox,
                        topics: HashSet::new(),
                    },
                );
                metrics::gauge!("lintel_ws_sessions").set(self.sessions.len() as f64);
            }
            Command::Bind {
                session,
                key,
                module,
                id,
            } => self.bind(session, key, module, id),
            Command::Unbind { session, key, id } => {
                if let Some(&topic) = self.topic_ids.get(&key) {
                    self.unsubscribe(session, topic);
                }
                if let Some(s) = self.sessions.get(&session) {
                    s.outbox.push_reply(frame::success(id));
                }
            }
            Command::Close { session } => {
                if let Some(s) = self.sessions.remove(&session) {
                    for topic in s.topics {
                        self.leave(session, topic);
                    }
                }
                metrics::gauge!("lintel_ws_sessions").set(self.sessions.len() as f64);
            }
            Command::Remap {
                tenant,
                sys,
                slug,
                module,
            } => {
                let ids: Vec<TopicId> = self
                    .by_system
                    .get(&(tenant, sys))
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|t| self.topics.get(t).is_some_and(|t| t.key.slug() == slug))
                    .collect();
                for t in ids {
                    self.remap(t, module.clone(), true);
                }
            }
        }
    }

    fn bind(&mut self, session: SessionId, key: TopicKey, module: Option<Arc<str>>, id: i64) {
        let Some(outbox) = self.sessions.get(&session).map(|s| s.outbox.clone()) else {
            return;
        };
        let reply = frame::bound(id, &key.meta);
        let topic = match self.topic_ids.get(&key) {
            Some(&t) => {
                // The session's fresh resolution is at least as new as the topic's.
                if self.topics[&t].module != module {
                    self.remap(t, module, true);
                }
                t
            }
            None => self.create(key, module),
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        outbox.push_reply(reply);
        // Binding the same key again only answers (as PlaceOS does).
        if s.topics.insert(topic) {
            let t = self.topics.get_mut(&topic).expect("topic just found");
            t.subscribers.insert(
                session,
                Subscriber {
                    outbox: outbox.clone(),
                    id,
                },
            );
            if let Some(current) = &t.current {
                outbox.push_notify(topic, id, current.clone());
            }
        }
    }

    fn create(&mut self, key: TopicKey, module: Option<Arc<str>>) -> TopicId {
        let id = self.next_topic;
        self.next_topic += 1;
        let mut t = Topic {
            meta_tail: frame::meta_tail(&key.meta),
            key: key.clone(),
            module: None,
            last_seq: 0,
            current: None,
            subscribers: HashMap::new(),
        };
        self.by_system
            .entry((key.tenant.clone(), key.meta.sys.clone()))
            .or_default()
            .insert(id);
        if let Some(m) = &module {
            self.index(id, m, &key.meta.name);
            self.read(&mut t, m);
        }
        t.module = module;
        self.topic_ids.insert(key, id);
        self.topics.insert(id, t);
        metrics::gauge!("lintel_ws_topics").set(self.topics.len() as f64);
        id
    }

    /// Read a topic's current value from the bus.
    fn read(&self, t: &mut Topic, module: &str) {
        let (value, seq) = self
            .bus
            .get_seq(module, &t.key.meta.name)
            .unwrap_or((None, 0));
        t.last_seq = seq;
        t.current = value.map(|v| frame::notify_tail(&value_json(Some(&v)), &t.meta_tail));
    }

    fn index(&mut self, topic: TopicId, module: &Arc<str>, name: &str) {
        self.by_module
            .entry(module.clone())
            .or_default()
            .entry(name.into())
            .or_default()
            .push(topic);
    }

    fn unindex(&mut self, topic: TopicId, module: &str, name: &str) {
        if let Some(keys) = self.by_module.get_mut(module) {
            if let Some(ids) = keys.get_mut(name) {
                ids.retain(|t| *t != topic);
                if ids.is_empty() {
                    keys.remove(name);
                }
            }
            if keys.is_empty() {
                self.by_module.remove(module);
            }
        }
    }

    /// Point a topic at another module (or none); with `tell`, subscribers get the new
    /// value when it differs.
    fn remap(&mut self, topic: TopicId, module: Option<Arc<str>>, tell: bool) {
        let Some(mut t) = self.topics.remove(&topic) else {
            return;
        };
        if t.module == module {
            self.topics.insert(topic, t);
            return;
        }
        if let Some(old) = t.module.take() {
            self.unindex(topic, &old, &t.key.meta.name);
        }
        let before = t.current.take();
        match &module {
            Some(m) => {
                self.index(topic, m, &t.key.meta.name);
                self.read(&mut t, m);
            }
            None => t.last_seq = 0,
        }
        t.module = module;
        if tell && before != t.current {
            t.tell(topic);
        }
        self.topics.insert(topic, t);
    }

    fn unsubscribe(&mut self, session: SessionId, topic: TopicId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.topics.remove(&topic) {
            s.outbox.forget(topic);
            self.leave(session, topic);
        }
    }

    /// Take a session off a topic, dropping the topic when nobody is left.
    fn leave(&mut self, session: SessionId, topic: TopicId) {
        let Some(t) = self.topics.get_mut(&topic) else {
            return;
        };
        t.subscribers.remove(&session);
        if !t.subscribers.is_empty() {
            return;
        }
        let Some(t) = self.topics.remove(&topic) else {
            return;
        };
        self.topic_ids.remove(&t.key);
        if let Some(m) = &t.module {
            self.unindex(topic, m, &t.key.meta.name);
        }
        let sys = (t.key.tenant.clone(), t.key.meta.sys.clone());
        if let Some(set) = self.by_system.get_mut(&sys) {
            set.remove(&topic);
            if set.is_empty() {
                self.by_system.remove(&sys);
            }
        }
        metrics::gauge!("lintel_ws_topics").set(self.topics.len() as f64);
    }

    fn change(&mut self, c: &StatusChange) {
        let Some(ids) = self
            .by_module
            .get(&*c.module_id)
            .and_then(|keys| keys.get(&*c.key))
        else {
            return;
        };
        let json = value_json(c.value.as_deref());
        let mut delivered = 0u64;
        for id in ids {
            let Some(t) = self.topics.get_mut(id) else {
                continue;
            };
            if c.seq <= t.last_seq {
                continue;
            }
            t.last_seq = c.seq;
            let tail = frame::notify_tail(&json, &t.meta_tail);
            t.current = c.value.is_some().then(|| tail.clone());
            for s in t.subscribers.values() {
                s.outbox.push_notify(*id, s.id, tail.clone());
            }
            delivered += t.subscribers.len() as u64;
        }
        metrics::counter!("lintel_ws_notifications_total").increment(delivered);
    }

    /// The hub fell behind the bus and missed changes: bring every topic to its module's
    /// current value.
    fn resync(&mut self, missed: u64) {
        tracing::warn!(
            missed,
            "WebSocket fan-out fell behind the status bus; resending current values"
        );
        metrics::counter!("lintel_ws_resyncs_total").increment(1);
        let ids: Vec<TopicId> = self.topics.keys().copied().collect();
        for id in ids {
            let Some(mut t) = self.topics.remove(&id) else {
                continue;
            };
            if let Some(m) = t.module.clone() {
                let before = t.current.clone();
                self.read(&mut t, &m);
                if before != t.current {
                    t.tell(id);
                }
            }
            self.topics.insert(id, t);
        }
    }

    /// A system, module or driver changed (or the feed lagged: `None`): resolve the
    /// affected topics again, off the hub's task.
    fn config_changed(&mut self, change: Option<&Change>) {
        let mut groups: HashSet<(Arc<str>, String, String)> = HashSet::new();
        for ((tenant, sys), ids) in &self.by_system {
            let affected = match change {
                None => true,
                Some(c) if c.kind == IdKind::System => *c.tenant_id == **tenant && &c.id == sys,
                Some(c) if matches!(c.kind, IdKind::Module | IdKind::Driver) => {
                    *c.tenant_id == **tenant
                }
                Some(_) => false,
            };
            if affected {
                for id in ids {
                    if let Some(t) = self.topics.get(id) {
                        groups.insert((tenant.clone(), sys.clone(), t.key.slug()));
                    }
                }
            }
        }
        if groups.is_empty() {
            return;
        }
        let (engine, remaps) = (self.engine.clone(), self.remaps.clone());
        tokio::spawn(async move {
            for (tenant, sys, slug) in groups {
                let module = match engine.resolve(&tenant, &sys, &slug).await {
                    Ok(m) => Some(Arc::from(m)),
                    Err(EngineError::SystemNotFound(_) | EngineError::ModuleNotFound(_)) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, %sys, %slug, "cannot resolve a WebSocket binding again; it keeps its module");
                        continue;
                    }
                };
                let Some(tx) = remaps.upgrade() else {
                    return;
                };
                let _ = tx
                    .send(Command::Remap {
                        tenant,
                        sys,
                        slug,
                        module,
                    })
                    .await;
            }
        });
    }
}
