//! A WebSocket session's outbound queue: bounded, and coalescing under pressure.
//!
//! Frames arrive already serialized (a notification's bytes are shared by every session
//! bound to it) and leave in order. While the queue holds fewer than `frames` entries and
//! `bytes` bytes, every value is queued; once it is full, a new value of a binding that
//! already has one waiting replaces it in place (the client sees the latest value, never
//! an older one after a newer one), debug lines are dropped (and counted), and replies are
//! still queued. The queue can therefore exceed `frames` by at most one entry per binding
//! plus the replies; past twice its byte budget the session is closed.
//!
//! How long the queue has been full is the session's lag: the session closes a client
//! that stays behind longer than its configured time.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tokio::sync::Notify;

/// A binding's id in the hub (one per distinct `sys`/`mod`/`index`/`name`).
pub(crate) type TopicId = u64;

/// Bounds of one session's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    /// Frames queued before values coalesce.
    pub frames: usize,
    /// Bytes queued before values coalesce; past twice this the session is closed.
    pub bytes: usize,
}

/// Why the queue refused a frame: the session must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overflow(pub String);

/// A frame waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A whole text frame (a reply, a debug line).
    Text(Bytes),
    /// A notification: the session's bind `id`, then the tail shared by every session
    /// bound to the same key (see [`super::frame::write_notify`]).
    Notify { id: i64, tail: Bytes },
    /// A frame already encoded (a ping, a pong).
    Raw(Bytes),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Text(b) | Outgoing::Raw(b) => b.len(),
            Outgoing::Notify { tail, .. } => tail.len() + 26,
        }
    }
}

struct Entry {
    topic: Option<TopicId>,
    frame: Outgoing,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Absolute position of `entries[0]` (positions never repeat).
    head: u64,
    /// Each binding's latest queued notification, by absolute position.
    latest: HashMap<TopicId, u64>,
    bytes: usize,
    /// When the queue last became full (`None`: it is keeping up).
    full_since: Option<Instant>,
    coalesced: u64,
    overflow: Option<Overflow>,
}

impl Queue {
    fn is_full(&self, limits: &OutboxLimits) -> bool {
        self.entries.len() >= limits.frames || self.bytes >= limits.bytes
    }

    fn mark_full(&mut self, limits: &OutboxLimits) -> bool {
        let full = self.is_full(limits);
        if full && self.full_since.is_none() {
            self.full_since = Some(Instant::now());
        }
        full
    }

    fn append(&mut self, topic: Option<TopicId>, frame: Outgoing, limits: &OutboxLimits) -> bool {
        if self.overflow.is_some() {
            return false;
        }
        self.bytes += frame.len();
        if let Some(t) = topic {
            self.latest.insert(t, self.head + self.entries.len() as u64);
        }
        self.entries.push_back(Entry { topic, frame });
        if self.bytes > limits.bytes.saturating_mul(2) {
            self.overflow = Some(Overflow(format!(
                "outbound queue over {} bytes: the client is not reading",
                limits.bytes.saturating_mul(2)
            )));
        }
        self.entries.len() == 1
    }
}

/// One session's outbound queue, shared by the hub (notifications), the session's own
/// tasks (replies, debug lines) and its writer.
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    limits: OutboxLimits,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        Outbox {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            limits,
        }
    }

    fn wake(&self, became_non_empty: bool) {
        // The writer drains until empty before it waits, so it needs waking only when the
        // queue goes from empty to not.
        if became_non_empty {
            self.ready.notify_one();
        }
    }

    /// A reply (success, error, pong): always queued, unless the session is closing.
    pub(crate) fn push_reply(&self, frame: Bytes) {
        let mut q = self.queue.lock();
        q.mark_full(&self.limits);
        let woke = q.append(None, Outgoing::Text(frame), &self.limits);
        drop(q);
        self.wake(woke);
    }

    /// An encoded control frame (ping, pong): always queued, unless the session is
    /// closing.
    pub(crate) fn push_raw(&self, frame: Bytes) {
        let mut q = self.queue.lock();
        q.mark_full(&self.limits);
        let woke = q.append(None, Outgoing::Raw(frame), &self.limits);
        drop(q);
        self.wake(woke);
    }

    /// A binding's new value: queued, or (when the queue is full) put in place of the
    /// value of that binding still waiting.
    pub(crate) fn push_notify(&self, topic: TopicId, id: i64, tail: Bytes) {
        let frame = Outgoing::Notify { id, tail };
        let mut q = self.queue.lock();
        if q.mark_full(&self.limits)
            && let Some(&at) = q.latest.get(&topic)
        {
            let i = (at - q.head) as usize;
            let old = std::mem::replace(&mut q.entries[i].frame, frame);
            q.bytes = q.bytes - old.len() + q.entries[i].frame.len();
            q.coalesced += 1;
            return;
        }
        let woke = q.append(Some(topic), frame, &self.limits);
        drop(q);
        self.wake(woke);
    }

    /// A debug line: dropped while the queue is full (answers whether it was queued).
    pub(crate) fn push_debug(&self, frame: Bytes) -> bool {
        let mut q = self.queue.lock();
        if q.mark_full(&self.limits) {
            return false;
        }
        let woke = q.append(None, Outgoing::Text(frame), &self.limits);
        drop(q);
        self.wake(woke);
        true
    }

    /// A binding was removed: its waiting value (if any) is no longer sent as the latest,
    /// so a new binding with the same topic starts afresh.
    pub(crate) fn forget(&self, topic: TopicId) {
        self.queue.lock().latest.remove(&topic);
    }

    /// Move up to `max` frames into `out`, oldest first; answers how many.
    pub(crate) fn drain(&self, max: usize, out: &mut Vec<Outgoing>) -> usize {
        let mut q = self.queue.lock();
        let n = max.min(q.entries.len());
        for _ in 0..n {
            let Some(e) = q.entries.pop_front() else {
                break;
            };
            if let Some(t) = e.topic
                && q.latest.get(&t) == Some(&q.head)
            {
                q.latest.remove(&t);
            }
            q.head += 1;
            q.bytes -= e.frame.len();
            out.push(e.frame);
        }
        // Caught up: at most half full again.
        if q.entries.len() <= self.limits.frames / 2 && q.bytes <= self.limits.bytes / 2 {
            q.full_since = None;
        }
        n
    }

    /// Wait until a frame is queued (returns at once if one is).
    pub(crate) async fn ready(&self) {
        loop {
            let notified = self.ready.notified();
            if !self.queue.lock().entries.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Since when the queue has been full (the client is behind), if it is.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        self.queue.lock().full_since
    }

    /// Set when the queue went past its hard limit: the session must close.
    pub(crate) fn overflow(&self) -> Option<Overflow> {
        self.queue.lock().overflow.clone()
    }

    /// Values replaced by a newer one before they were sent, since the session began.
    pub(crate) fn coalesced(&self) -> u64 {
        self.queue.lock().coalesced
    }

    /// Frames and bytes waiting.
    pub(crate) fn len(&self) -> (usize, usize) {
        let q = self.queue.lock();
        (q.entries.len(), q.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: usize, bytes: usize) -> OutboxLimits {
        OutboxLimits { frames, bytes }
    }

    fn text(o: &Outgoing) -> String {
        let (Outgoing::Text(b) | Outgoing::Raw(b) | Outgoing::Notify { tail: b, .. }) = o;
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn drain_all(o: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        o.drain(usize::MAX, &mut out);
        out.iter().map(text).collect()
    }

    #[test]
    fn below_the_limit_every_value_is_sent_in_order() {
        let o = Outbox::new(limits(8, 1 << 20));
        o.push_notify(1, 0, Bytes::from_static(b"a1"));
        o.push_notify(1, 0, Bytes::from_static(b"a2"));
        o.push_reply(Bytes::from_static(b"r"));
        o.push_notify(2, 0, Bytes::from_static(b"b1"));
        assert_eq!(drain_all(&o), ["a1", "a2", "r", "b1"]);
        assert_eq!(o.len(), (0, 0));
        assert!(o.behind_since().is_none());
    }

    #[test]
    fn a_full_queue_keeps_only_the_latest_value_of_each_binding() {
        let o = Outbox::new(limits(3, 1 << 20));
        o.push_notify(1, 0, Bytes::from_static(b"a1"));
        o.push_notify(2, 0, Bytes::from_static(b"b1"));
        o.push_notify(1, 0, Bytes::from_static(b"a2"));
        // Full from here on.
        for i in 3..100 {
            o.push_notify(1, 0, Bytes::from(format!("a{i}")));
            o.push_notify(2, 0, Bytes::from(format!("b{i}")));
        }
        o.push_notify(3, 0, Bytes::from_static(b"c1"));
        o.push_reply(Bytes::from_static(b"reply"));
        assert!(!o.push_debug(Bytes::from_static(b"dropped")));
        assert!(o.behind_since().is_some());
        assert_eq!(o.coalesced(), 97 * 2);
        let mut out = Vec::new();
        o.drain(usize::MAX, &mut out);
        let got: Vec<_> = out.iter().map(text).collect();
        // a1 was queued while there was room; b's first entry became its latest; a2 is
        // a's latest entry, replaced in place.
        assert_eq!(got, ["a1", "b99", "a99", "c1", "reply"]);
        assert!(o.behind_since().is_none());
        // After draining, values are queued one by one again.
        o.push_notify(1, 0, Bytes::from_static(b"x"));
        o.push_notify(1, 0, Bytes::from_static(b"y"));
        assert_eq!(drain_all(&o), ["x", "y"]);
    }

    #[test]
    fn a_value_is_never_followed_by_an_older_one() {
        let o = Outbox::new(limits(2, 1 << 20));
        let mut seen = Vec::new();
        for i in 0..1000u32 {
            o.push_notify(7, 0, Bytes::from(i.to_string()));
            if i % 37 == 0 {
                let mut out = Vec::new();
                o.drain(1, &mut out);
                seen.extend(out);
            }
        }
        let mut rest = Vec::new();
        o.drain(usize::MAX, &mut rest);
        seen.extend(rest);
        let nums: Vec<u32> = seen.iter().map(|b| text(b).parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert_eq!(nums.last(), Some(&999));
    }

    #[test]
    fn a_queue_past_twice_its_byte_budget_overflows() {
        let o = Outbox::new(limits(1000, 100));
        for _ in 0..4 {
            o.push_reply(Bytes::from(vec![b'x'; 60]));
        }
        let Overflow(why) = o.overflow().expect("overflow");
        assert!(why.contains("200 bytes"), "{why}");
        // Nothing more is queued once it overflowed.
        let before = o.len();
        o.push_reply(Bytes::from_static(b"more"));
        assert_eq!(o.len(), before);
    }

    #[test]
    fn a_forgotten_binding_is_not_coalesced_into() {
        let o = Outbox::new(limits(1, 1 << 20));
        o.push_notify(1, 0, Bytes::from_static(b"old"));
        o.forget(1);
        o.push_notify(1, 0, Bytes::from_static(b"new"));
        assert_eq!(drain_all(&o), ["old", "new"]);
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_the_first_frame() {
        let o = std::sync::Arc::new(Outbox::new(limits(8, 1 << 20)));
        let w = o.clone();
        let waiter = tokio::spawn(async move { w.ready().await });
        tokio::task::yield_now().await;
        o.push_reply(Bytes::from_static(b"r"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
