//! A small read cache kept true by the store's change feed: what the hot read paths (the
//! REST state routes, API-key and user checks) look up on every request.
//!
//! Every lookup first drains the feed; a change to a watched kind, or a lagged feed,
//! empties the cache, so a write made through this process is seen by the next read. The
//! feed only carries this process's writes: entries also expire after `ttl`, which bounds
//! how long another process's write (a revoked key, an edited system) can go unseen.

use crate::Change;
use lintel_model::IdKind;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

pub struct FeedCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    kinds: &'static [IdKind],
    ttl: Duration,
    max: usize,
}

struct Inner<K, V> {
    feed: Receiver<Change>,
    entries: HashMap<K, (V, Instant)>,
    /// Counts the times the cache was emptied: a value read from the store before one of
    /// them is not kept.
    generation: u64,
}

impl<K: Eq + Hash, V: Clone> FeedCache<K, V> {
    /// A cache of at most `max` entries, emptied by changes to `kinds` on `feed` (take it
    /// from `Store::changes`), each entry kept at most `ttl`.
    pub fn new(
        feed: Receiver<Change>,
        kinds: &'static [IdKind],
        ttl: Duration,
        max: usize,
    ) -> Self {
        FeedCache {
            inner: Mutex::new(Inner {
                feed,
                entries: HashMap::new(),
                generation: 0,
            }),
            kinds,
            ttl,
            max,
        }
    }

    fn sync(&self, inner: &mut Inner<K, V>) {
        loop {
            match inner.feed.try_recv() {
                Ok(change) if !self.kinds.contains(&change.kind) => {}
                Ok(_) | Err(TryRecvError::Lagged(_)) => {
                    inner.entries.clear();
                    inner.generation += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    /// The cached value, or on a miss the ticket to [`insert`](Self::insert) what the
    /// caller then reads from the store.
    pub fn get(&self, key: &K) -> Result<V, u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.sync(&mut inner);
        match inner.entries.get(key) {
            Some((v, at)) if at.elapsed() < self.ttl => Ok(v.clone()),
            Some(_) => {
                inner.entries.remove(key);
                Err(inner.generation)
            }
            None => Err(inner.generation),
        }
    }

    /// Keep `value`, read from the store after `get` missed with `ticket`; dropped if a
    /// watched change arrived since (the value may predate it).
    pub fn insert(&self, key: K, value: V, ticket: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.sync(&mut inner);
        if inner.generation != ticket {
            return;
        }
        if inner.entries.len() >= self.max {
            inner.entries.clear();
        }
        inner.entries.insert(key, (value, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_model::AuditAction;
    use tokio::sync::broadcast;

    fn change(kind: IdKind) -> Change {
        Change {
            kind,
            tenant_id: "tenant-a".into(),
            id: "x".into(),
            version: 1,
            action: AuditAction::Updated,
        }
    }

    #[test]
    fn watched_changes_lag_and_age_empty_it() {
        let (tx, rx) = broadcast::channel(4);
        let c = FeedCache::new(rx, &[IdKind::System], Duration::from_secs(60), 10);
        let t = c.get(&"a").unwrap_err();
        c.insert("a", 1, t);
        assert_eq!(c.get(&"a"), Ok(1));
        tx.send(change(IdKind::Zone)).unwrap();
        assert_eq!(c.get(&"a"), Ok(1), "an unwatched kind leaves it");
        tx.send(change(IdKind::System)).unwrap();
        let t = c.get(&"a").expect_err("a watched kind empties it");
        c.insert("a", 2, t);
        for _ in 0..6 {
            tx.send(change(IdKind::Zone)).unwrap();
        }
        assert!(c.get(&"a").is_err(), "a lagged feed empties it");
        // A value read before a change, offered after it, is not kept.
        let t = c.get(&"b").unwrap_err();
        tx.send(change(IdKind::System)).unwrap();
        c.insert("b", 3, t);
        assert!(c.get(&"b").is_err(), "a value older than a change was kept");
        let short = FeedCache::new(tx.subscribe(), &[IdKind::System], Duration::ZERO, 10);
        short.insert("a", 1, 0);
        assert!(short.get(&"a").is_err(), "expired");
        let small = FeedCache::new(
            tx.subscribe(),
            &[IdKind::System],
            Duration::from_secs(60),
            2,
        );
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            small.insert(k, i, 0);
        }
        assert_eq!(
            (small.get(&"a").ok(), small.get(&"c").ok()),
            (None, Some(2)),
            "bounded"
        );
    }
}
