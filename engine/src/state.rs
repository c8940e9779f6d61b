//! In-memory device state: per module, key → JSON value, published only on change, each
//! change with a sequence number.
//!
//! Sequence numbers come from one counter for the whole bus, so they only grow for a
//! module, across its restarts too. A late subscriber takes [`StatusBus::follow`]: the
//! module's snapshot with the sequence number it reflects, and a receiver that has every
//! change after it (changes at or below the snapshot's number are already in it).

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Capacity of the change bus. A subscriber that falls this far behind is told it lagged
/// (and should re-read a snapshot); a publisher never waits.
const BUS_CAPACITY: usize = 4096;

/// One published change.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub module_id: Arc<str>,
    pub key: Arc<str>,
    /// The new value; `None` when the key is gone (its module stopped).
    pub value: Option<Arc<Value>>,
    /// Grows with every change (one counter for the bus: a module's changes, across its
    /// restarts too, carry increasing numbers).
    pub seq: u64,
}

#[derive(Default)]
struct ModuleValues {
    values: BTreeMap<Arc<str>, Arc<Value>>,
    /// The sequence number of the module's latest change.
    seq: u64,
}

/// A module's state at one point of its change sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub values: BTreeMap<String, Value>,
    /// The sequence number of the latest change the snapshot holds (0: none yet).
    pub seq: u64,
}

/// All modules' state, and the bus that carries their changes.
pub struct StatusBus {
    modules: RwLock<HashMap<Arc<str>, Arc<Mutex<ModuleValues>>>>,
    changes: broadcast::Sender<StatusChange>,
    seq: Arc<AtomicU64>,
}

impl Default for StatusBus {
    fn default() -> Self {
        let (changes, _) = broadcast::channel(BUS_CAPACITY);
        StatusBus {
            modules: RwLock::new(HashMap::new()),
            changes,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A module's handle for writing its own state.
#[derive(Clone)]
pub struct ModuleStatus {
    module_id: Arc<str>,
    values: Arc<Mutex<ModuleValues>>,
    changes: broadcast::Sender<StatusChange>,
    seq: Arc<AtomicU64>,
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
        // Taken under the module's lock: its changes are numbered in the order they apply.
        m.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let change = StatusChange {
            module_id: self.module_id.clone(),
            key,
            value: Some(value),
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

    /// Drop every key (what the module published may no longer be true); subscribers see
    /// each go (`value: None`).
    pub fn clear(&self) {
        publish_gone(
            &mut self.values.lock(),
            &self.module_id,
            &self.changes,
            &self.seq,
        );
    }
}

/// Empty a module's values, publishing each key as gone.
fn publish_gone(
    m: &mut ModuleValues,
    module_id: &Arc<str>,
    changes: &broadcast::Sender<StatusChange>,
    seq: &AtomicU64,
) {
    for key in std::mem::take(&mut m.values).into_keys() {
        m.seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = changes.send(StatusChange {
            module_id: module_id.clone(),
            key,
            value: None,
            seq: m.seq,
        });
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
            seq: self.seq.clone(),
        }
    }

    /// Drop a module's state (it stopped); subscribers see each of its keys go (`value:
    /// None`).
    pub fn remove(&self, module_id: &str) {
        let Some(m) = self.modules.write().remove(module_id) else {
            return;
        };
        publish_gone(&mut m.lock(), &module_id.into(), &self.changes, &self.seq);
    }

    /// Every key of a module, or `None` if the engine has no state for it.
    pub fn snapshot(&self, module_id: &str) -> Option<BTreeMap<String, Value>> {
        self.snapshot_seq(module_id).map(|s| s.values)
    }

    /// Every key of a module with the sequence number it reflects.
    pub fn snapshot_seq(&self, module_id: &str) -> Option<Snapshot> {
        let m = self.modules.read().get(module_id)?.clone();
        let m = m.lock();
        Some(Snapshot {
            values: m
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), (**v).clone()))
                .collect(),
            seq: m.seq,
        })
    }

    /// For a late subscriber: a receiver of every change from now on, and the module's
    /// snapshot. A received change of this module with `seq <= snapshot.seq` is already
    /// in the snapshot (skip it); none is missed between the two.
    pub fn follow(&self, module_id: &str) -> (broadcast::Receiver<StatusChange>, Option<Snapshot>) {
        // Subscribed first: a change published after the snapshot was read is received.
        let rx = self.changes.subscribe();
        (rx, self.snapshot_seq(module_id))
    }

    /// One key's value with the sequence number of the module's latest change (every
    /// change of the module numbered at or below it is reflected); `None` if the engine
    /// has no state for the module.
    pub fn get_seq(&self, module_id: &str, key: &str) -> Option<(Option<Arc<Value>>, u64)> {
        let m = self.modules.read().get(module_id)?.clone();
        let m = m.lock();
        Some((m.values.get(key).cloned(), m.seq))
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
        assert_eq!(b.value.as_deref(), Some(&json!(false)));
        assert_eq!(bus.snapshot("mod-a").unwrap()["power"], json!(false));
        assert!(bus.snapshot("mod-b").is_none());
    }

    /// A late subscriber gets the snapshot and every change after it, none twice; numbers
    /// keep growing across a restart; a stopped module's keys are published as gone.
    #[test]
    fn late_subscribers_follow_from_a_snapshot_and_removal_is_published() {
        let bus = StatusBus::default();
        let m = bus.module("mod-a");
        m.set("power", json!(true));
        m.set("input", json!("hdmi"));
        let other = bus.module("mod-b");
        other.set("x", json!(1));
        let (mut rx, snap) = bus.follow("mod-a");
        let snap = snap.unwrap();
        assert_eq!(snap.seq, 2);
        assert_eq!(snap.values["input"], json!("hdmi"));
        m.set("power", json!(false));
        let c = rx.try_recv().unwrap();
        assert!(c.seq > snap.seq);
        assert_eq!(c.value.as_deref(), Some(&json!(false)));
        assert_eq!(bus.snapshot_seq("mod-a").unwrap().seq, c.seq);

        bus.remove("mod-a");
        let mut gone: Vec<(String, Option<Value>, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.key.to_string(), c.value.map(|v| (*v).clone()), c.seq))
            .collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            gone.iter()
                .map(|(k, v, _)| (k.as_str(), v.clone()))
                .collect::<Vec<_>>(),
            [("input", None), ("power", None)]
        );
        assert!(gone.iter().all(|(_, _, seq)| *seq > c.seq));
        assert!(bus.snapshot("mod-a").is_none());

        // Restarted, the module starts empty and its numbers go on growing.
        let again = bus.module("mod-a");
        again.set("power", json!(true));
        let c2 = rx.try_recv().unwrap();
        assert!(gone.iter().all(|(_, _, seq)| c2.seq > *seq));
        assert_eq!(bus.snapshot("mod-b").unwrap()["x"], json!(1));
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
