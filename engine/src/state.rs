//! In-memory device state: per module, key → JSON value, published only on change.

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Capacity of the change bus. A subscriber that falls this far behind is told it lagged
/// (and should re-read a snapshot); a publisher never waits.
const BUS_CAPACITY: usize = 4096;

/// One published change.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub module_id: Arc<str>,
    pub key: Arc<str>,
    pub value: Arc<Value>,
    /// Per-module sequence number, +1 for every change.
    pub seq: u64,
}

#[derive(Default)]
struct ModuleValues {
    values: BTreeMap<Arc<str>, Arc<Value>>,
    seq: u64,
}

/// All modules' state, and the bus that carries their changes.
pub struct StatusBus {
    modules: RwLock<HashMap<Arc<str>, Arc<Mutex<ModuleValues>>>>,
    changes: broadcast::Sender<StatusChange>,
}

impl Default for StatusBus {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(BUS_CAPACITY);
        StatusBus {
            modules: RwLock::new(HashMap::new()),
            changes,
        }
    }
}

/// A module's handle for writing its own state.
#[derive(Clone)]
pub struct ModuleStatus {
    module_id: Arc<str>,
    values: Arc<Mutex<ModuleValues>>,
    changes: broadcast::Sender<StatusChange>,
}

impl ModuleStatus {
    /// Set `key`; returns whether the value changed (and so was published).
    pub fn set(&self, key: &str, value: Value) -> bool {
        let mut m = self.values.lock();
        let key: Arc<str> = match m.values.get_key_value(key) {
            Some((_, v)) if **v == value => return false,
            Some((k, _)) => k.clone(),
            None => key.into(),
        };
        let value = Arc::new(value);
        m.values.insert(key.clone(), value.clone());
        m.seq += 1;
        let change = StatusChange {
            module_id: self.module_id.clone(),
            key,
            value,
            seq: m.seq,
        };
        drop(m);
        // No subscriber is fine.
        let _ = self.changes.send(change);
        true
    }

    /// Whether `key` has a value now.
    pub fn has(&self, key: &str) -> bool {
        self.values.lock().values.contains_key(key)
    }

    /// How many keys the module has.
    pub fn len(&self) -> usize {
        self.values.lock().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.values.lock().values.clear();
    }
}

impl StatusBus {
    /// The writer for `module_id`, creating its (empty) state.
    pub fn module(&self, module_id: &str) -> ModuleStatus {
        let values = self
            .modules
            .write()
            .entry(module_id.into())
            .or_default()
            .clone();
        ModuleStatus {
            module_id: module_id.into(),
            values,
            changes: self.changes.clone(),
        }
    }

    pub fn remove(&self, module_id: &str) {
        self.modules.write().remove(module_id);
    }

    /// Every key of a module, or `None` if the engine has no state for it.
    pub fn snapshot(&self, module_id: &str) -> Option<BTreeMap<String, Value>> {
        let m = self.modules.read().get(module_id)?.clone();
        let m = m.lock();
        Some(
            m.values
                .iter()
                .map(|(k, v)| (k.to_string(), (**v).clone()))
                .collect(),
        )
    }

    pub fn get(&self, module_id: &str, key: &str) -> Option<Arc<Value>> {
        let m = self.modules.read().get(module_id)?.clone();
        m.lock().values.get(key).cloned()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changes_are_published_with_increasing_sequence() {
        let bus = StatusBus::default();
        let mut rx = bus.subscribe();
        let m = bus.module("mod-a");
        assert!(m.set("power", json!(true)));
        assert!(!m.set("power", json!(true)));
        assert!(m.set("power", json!(false)));
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(*b.value, json!(false));
        assert_eq!(bus.snapshot("mod-a").unwrap()["power"], json!(false));
        assert!(bus.snapshot("mod-b").is_none());
    }

    #[test]
    fn a_subscriber_that_never_reads_does_not_block_or_grow_memory() {
        let bus = StatusBus::default();
        let mut rx = bus.subscribe();
        let m = bus.module("mod-a");
        for i in 0..(BUS_CAPACITY * 3) {
            m.set("n", json!(i));
        }
        // The slow subscriber learns it lagged; the bus kept only its bounded window.
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
