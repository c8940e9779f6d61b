//! What waits to be published to one broker: latest value per topic, first-come order,
//! bounded in topics and bytes.
//!
//! A new value for a topic already waiting replaces it where it stands (a subscriber never
//! gets an older value after a newer one, and a topic flapping while the broker is away
//! costs one entry). A topic that does not fit is dropped and counted: the next session
//! re-publishes every current value anyway (see `broker.rs`), so what a drop can lose is
//! only a topic being cleared.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The queue. Not thread-safe by itself (the publisher wraps it in a mutex).
#[derive(Debug)]
pub struct Pending {
    order: VecDeque<Arc<str>>,
    values: HashMap<Arc<str>, Bytes>,
    bytes: usize,
    max_topics: usize,
    max_bytes: usize,
    /// Topics refused for want of room since the last [`Pending::take_dropped`].
    dropped: u64,
}

/// The bytes a waiting entry is counted for: topic, payload and bookkeeping.
fn cost(topic: &str, payload: &Bytes) -> usize {
    topic.len() + payload.len() + 64
}

impl Pending {
    pub fn new(max_topics: usize, max_bytes: usize) -> Pending {
        Pending {
            order: VecDeque::new(),
            values: HashMap::new(),
            bytes: 0,
            max_topics,
            max_bytes,
            dropped: 0,
        }
    }

    /// Queue `payload` for `topic`; `false` if it was dropped (no room for a new topic).
    pub fn put(&mut self, topic: &str, payload: Bytes) -> bool {
        if let Some(v) = self.values.get_mut(topic) {
            let old = cost(topic, v);
            let new = cost(topic, &payload);
            if self.bytes - old + new > self.max_bytes && new > old {
                self.dropped += 1;
                return false;
            }
            self.bytes = self.bytes - old + new;
            *v = payload;
            return true;
        }
        let c = cost(topic, &payload);
        if self.values.len() >= self.max_topics || self.bytes + c > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        let topic: Arc<str> = Arc::from(topic);
        self.order.push_back(topic.clone());
        self.values.insert(topic, payload);
        self.bytes += c;
        true
    }

    /// The oldest waiting topic and its latest value.
    pub fn pop(&mut self) -> Option<(Arc<str>, Bytes)> {
        let topic = self.order.pop_front()?;
        let payload = self
            .values
            .remove(&topic)
            .expect("every queued topic has a value");
        self.bytes -= cost(&topic, &payload);
        Some((topic, payload))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Bytes held (topics, payloads and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many topics were dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn latest_value_per_topic_in_first_come_order() {
        let mut p = Pending::new(10, 1 << 20);
        assert!(p.put("a", b("1")));
        assert!(p.put("b", b("1")));
        assert!(p.put("a", b("2")));
        assert_eq!(p.len(), 2);
        assert_eq!(p.pop(), Some((Arc::from("a"), b("2"))));
        assert_eq!(p.pop(), Some((Arc::from("b"), b("1"))));
        assert_eq!(p.pop(), None);
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn bounded_in_topics_and_bytes_and_drops_are_counted() {
        let mut p = Pending::new(3, 1 << 20);
        for t in ["a", "b", "c", "d", "e"] {
            p.put(t, b("x"));
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.take_dropped(), 2);
        assert_eq!(p.take_dropped(), 0);
        // Updates of waiting topics still land.
        assert!(p.put("a", b("y")));

        let mut p = Pending::new(1000, 300);
        assert!(p.put("a", Bytes::from(vec![b'x'; 100])));
        assert!(!p.put("b", Bytes::from(vec![b'x'; 200])));
        assert!(p.bytes() <= 300);
        // A bigger value for a waiting topic that would not fit is refused; a smaller one
        // is taken.
        assert!(!p.put("a", Bytes::from(vec![b'x'; 400])));
        assert!(p.put("a", b("small")));
        assert_eq!(p.pop().unwrap().1, b("small"));
    }
}
