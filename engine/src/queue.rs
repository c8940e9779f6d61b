//! A module's command queue (PlaceOS semantics): priority order, named commands that
//! replace an older queued one, wait-for-response with timeout and retries, a delay
//! between commands, bounded length, cleared on disconnect.
//!
//! It is a plain state machine over a millisecond clock, so the module actor (real time)
//! and the driver test harness (virtual time) run the same code.

use std::collections::VecDeque;

/// The options a driver gives `send` (the WIT `send-options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    pub priority: u8,
    pub timeout_ms: u32,
    pub retries: u8,
    pub wait: bool,
    pub delay_ms: u32,
    pub name: Option<String>,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            priority: 50,
            timeout_ms: 5000,
            retries: 3,
            wait: false,
            delay_ms: 0,
            name: None,
        }
    }
}

/// Longest `name` of a queued command.
pub const MAX_COMMAND_NAME: usize = 128;

#[derive(Debug)]
struct Command {
    id: u64,
    data: Vec<u8>,
    opts: SendOptions,
    /// Times written so far.
    attempts: u32,
}

#[derive(Debug)]
struct InFlight {
    cmd: Command,
    deadline_ms: u64,
}

/// What the queue asks its owner to do.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueAction {
    /// Write these bytes to the device.
    Write(Vec<u8>),
    /// A `wait` command finished (its outcome goes to the driver as `command-done`).
    Done(u64, Result<(), String>),
}

/// How a `received` message relates to the outstanding command (the WIT `verdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ignore,
    Done,
    Retry,
    Fail(String),
}

/// The command queue of one module.
#[derive(Debug)]
pub struct CommandQueue {
    /// Sorted: higher priority first, then oldest first.
    queued: VecDeque<Command>,
    in_flight: Option<InFlight>,
    hold_until_ms: u64,
    capacity: usize,
    next_id: u64,
    /// Writes the transport can take now (its bounded channel's free slots): queued
    /// commands wait here, not in the transport, while it is full.
    room: usize,
}

impl CommandQueue {
    pub fn new(capacity: usize) -> Self {
        CommandQueue {
            queued: VecDeque::new(),
            in_flight: None,
            hold_until_ms: 0,
            capacity,
            next_id: 1,
            room: usize::MAX,
        }
    }

    /// How many writes the transport can take now.
    pub fn set_room(&mut self, room: usize) {
        self.room = room;
    }

    /// Commands are waiting for room in the transport (wake up when there is some).
    pub fn stalled(&self) -> bool {
        self.room == 0 && self.in_flight.is_none() && !self.queued.is_empty()
    }

    /// Change the bound (commands already queued stay).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    pub fn len(&self) -> usize {
        self.queued.len() + usize::from(self.in_flight.is_some())
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outstanding `wait` command, whose answer `received` is asked about.
    pub fn waiting(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|f| f.cmd.id)
    }

    /// Queue a command. A queued command with the same name is replaced (and, if it was
    /// waited on, reported as failed); a full queue refuses.
    pub fn push(
        &mut self,
        data: Vec<u8>,
        opts: SendOptions,
    ) -> Result<(u64, Option<QueueAction>), String> {
        if let Some(name) = &opts.name
            && (name.is_empty() || name.len() > MAX_COMMAND_NAME)
        {
            return Err(format!("command name must be 1..={MAX_COMMAND_NAME} bytes"));
        }
        let mut replaced = None;
        if let Some(name) = &opts.name
            && let Some(pos) = self
                .queued
                .iter()
                .position(|c| c.opts.name.as_deref() == Some(name))
        {
            let old = self.queued.remove(pos).expect("position is in range");
            if old.opts.wait {
                replaced = Some(QueueAction::Done(
                    old.id,
                    Err(format!("replaced by a newer `{name}` command")),
                ));
            }
        }
        if self.len() >= self.capacity {
            return Err(format!(
                "command queue full ({} commands waiting)",
                self.capacity
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let pos = self
            .queued
            .iter()
            .position(|c| c.opts.priority < opts.priority)
            .unwrap_or(self.queued.len());
        self.queued.insert(
            pos,
            Command {
                id,
                data,
                opts,
                attempts: 0,
            },
        );
        Ok((id, replaced))
    }

    /// Write what may be written now: commands in order until one waits for its answer,
    /// asks for a delay, or the transport has no room.
    pub fn pump(&mut self, now_ms: u64, out: &mut Vec<QueueAction>) {
        while self.in_flight.is_none() && now_ms >= self.hold_until_ms && self.room > 0 {
            let Some(mut cmd) = self.queued.pop_front() else {
                return;
            };
            cmd.attempts += 1;
            self.room -= 1;
            out.push(QueueAction::Write(cmd.data.clone()));
            if cmd.opts.delay_ms > 0 {
                self.hold_until_ms = now_ms + u64::from(cmd.opts.delay_ms);
            }
            if cmd.opts.wait {
                let deadline_ms = now_ms + u64::from(cmd.opts.timeout_ms.max(1));
                self.in_flight = Some(InFlight { cmd, deadline_ms });
            }
        }
    }

    /// The driver's verdict on a message that arrived while a command was outstanding.
    pub fn verdict(&mut self, verdict: Verdict, now_ms: u64, out: &mut Vec<QueueAction>) {
        let Some(f) = self.in_flight.as_ref() else {
            return;
        };
        match verdict {
            Verdict::Ignore => {}
            Verdict::Done => {
                let id = f.cmd.id;
                self.in_flight = None;
                out.push(QueueAction::Done(id, Ok(())));
            }
            Verdict::Fail(why) => {
                let id = f.cmd.id;
                self.in_flight = None;
                out.push(QueueAction::Done(id, Err(why)));
            }
            Verdict::Retry => self.retry(now_ms, "the driver asked to retry", out),
        }
        self.pump(now_ms, out);
    }

    fn retry(&mut self, now_ms: u64, why: &str, out: &mut Vec<QueueAction>) {
        let Some(mut f) = self.in_flight.take() else {
            return;
        };
        if f.cmd.attempts > u32::from(f.cmd.opts.retries) {
            out.push(QueueAction::Done(
                f.cmd.id,
                Err(format!("{why} after {} attempt(s)", f.cmd.attempts)),
            ));
            return;
        }
        f.cmd.attempts += 1;
        // A resend goes out even with no room counted: it replaces its own earlier write.
        self.room = self.room.saturating_sub(1);
        out.push(QueueAction::Write(f.cmd.data.clone()));
        f.deadline_ms = now_ms + u64::from(f.cmd.opts.timeout_ms.max(1));
        self.in_flight = Some(f);
    }

    /// The next time [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.in_flight {
            Some(f) => Some(f.deadline_ms),
            None if !self.queued.is_empty() && self.hold_until_ms > 0 => Some(self.hold_until_ms),
            None => None,
        }
    }

    /// Time passes: an unanswered command is retried or fails; a delay ends.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<QueueAction>) {
        if let Some(f) = &self.in_flight
            && now_ms >= f.deadline_ms
        {
            let why = format!("no answer within {} ms", f.cmd.opts.timeout_ms);
            self.retry(now_ms, &why, out);
        }
        self.pump(now_ms, out);
    }

    /// The connection is gone: every queued command is dropped (waited ones fail).
    pub fn clear(&mut self, why: &str, out: &mut Vec<QueueAction>) {
        let in_flight = self.in_flight.take().map(|f| f.cmd);
        for cmd in in_flight.into_iter().chain(self.queued.drain(..)) {
            if cmd.opts.wait {
                out.push(QueueAction::Done(cmd.id, Err(why.to_string())));
            }
        }
        self.hold_until_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SendOptions {
        SendOptions::default()
    }

    fn writes(out: &[QueueAction]) -> Vec<&[u8]> {
        out.iter()
            .filter_map(|a| match a {
                QueueAction::Write(d) => Some(d.as_slice()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn higher_priority_goes_first_and_equal_keeps_order() {
        let mut q = CommandQueue::new(8);
        q.push(b"a".to_vec(), opts()).unwrap();
        q.push(b"b".to_vec(), opts()).unwrap();
        q.push(
            b"urgent".to_vec(),
            SendOptions {
                priority: 90,
                ..opts()
            },
        )
        .unwrap();
        let mut out = vec![];
        q.pump(0, &mut out);
        assert_eq!(writes(&out), vec![&b"urgent"[..], b"a", b"b"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_named_command_replaces_the_queued_one() {
        let mut q = CommandQueue::new(8);
        let named = |n: &str| SendOptions {
            name: Some(n.into()),
            wait: true,
            ..opts()
        };
        // Hold the queue with a waited command so the others stay queued.
        q.push(
            b"hold".to_vec(),
            SendOptions {
                wait: true,
                ..opts()
            },
        )
        .unwrap();
        let mut out = vec![];
        q.pump(0, &mut out);
        let (old, _) = q.push(b"POWER ON".to_vec(), named("power")).unwrap();
        let (_, replaced) = q.push(b"POWER OFF".to_vec(), named("power")).unwrap();
        assert_eq!(
            replaced,
            Some(QueueAction::Done(
                old,
                Err("replaced by a newer `power` command".into())
            ))
        );
        assert_eq!(q.len(), 2);
        out.clear();
        q.verdict(Verdict::Done, 1, &mut out);
        assert_eq!(writes(&out), vec![&b"POWER OFF"[..]]);
    }

    #[test]
    fn waiting_commands_time_out_retry_then_fail() {
        let mut q = CommandQueue::new(8);
        let (id, _) = q
            .push(
                b"Q".to_vec(),
                SendOptions {
                    wait: true,
                    timeout_ms: 100,
                    retries: 2,
                    ..opts()
                },
            )
            .unwrap();
        q.push(b"next".to_vec(), opts()).unwrap();
        let mut out = vec![];
        q.pump(0, &mut out);
        assert_eq!(writes(&out), vec![&b"Q"[..]], "the next one waits");
        assert_eq!(q.waiting(), Some(id));
        assert_eq!(q.next_deadline(), Some(100));
        for t in [100, 200] {
            out.clear();
            q.tick(t, &mut out);
            assert_eq!(writes(&out), vec![&b"Q"[..]], "retry at {t}");
        }
        out.clear();
        q.tick(300, &mut out);
        assert_eq!(
            out,
            vec![
                QueueAction::Done(id, Err("no answer within 100 ms after 3 attempt(s)".into())),
                QueueAction::Write(b"next".to_vec()),
            ]
        );
    }

    #[test]
    fn verdicts_finish_retry_or_fail_the_outstanding_command() {
        let mut q = CommandQueue::new(8);
        let wait = SendOptions {
            wait: true,
            retries: 1,
            ..opts()
        };
        let (a, _) = q.push(b"A".to_vec(), wait.clone()).unwrap();
        let (b, _) = q.push(b"B".to_vec(), wait.clone()).unwrap();
        let mut out = vec![];
        q.pump(0, &mut out);
        out.clear();
        q.verdict(Verdict::Ignore, 1, &mut out);
        assert!(out.is_empty());
        q.verdict(Verdict::Retry, 1, &mut out);
        assert_eq!(writes(&out), vec![&b"A"[..]]);
        out.clear();
        q.verdict(Verdict::Retry, 2, &mut out);
        assert_eq!(
            out[0],
            QueueAction::Done(
                a,
                Err("the driver asked to retry after 2 attempt(s)".into())
            )
        );
        assert_eq!(q.waiting(), Some(b));
        out.clear();
        q.verdict(Verdict::Fail("ERR 3".into()), 3, &mut out);
        assert_eq!(out, vec![QueueAction::Done(b, Err("ERR 3".into()))]);
    }

    #[test]
    fn delay_holds_the_next_command() {
        let mut q = CommandQueue::new(8);
        q.push(
            b"A".to_vec(),
            SendOptions {
                delay_ms: 50,
                ..opts()
            },
        )
        .unwrap();
        q.push(b"B".to_vec(), opts()).unwrap();
        let mut out = vec![];
        q.pump(0, &mut out);
        assert_eq!(writes(&out), vec![&b"A"[..]]);
        assert_eq!(q.next_deadline(), Some(50));
        out.clear();
        q.tick(49, &mut out);
        assert!(out.is_empty());
        q.tick(50, &mut out);
        assert_eq!(writes(&out), vec![&b"B"[..]]);
    }

    #[test]
    fn the_queue_is_bounded_and_cleared_on_disconnect() {
        let mut q = CommandQueue::new(2);
        let (a, _) = q
            .push(
                b"A".to_vec(),
                SendOptions {
                    wait: true,
                    ..opts()
                },
            )
            .unwrap();
        q.push(b"B".to_vec(), opts()).unwrap();
        let e = q.push(b"C".to_vec(), opts()).unwrap_err();
        assert_eq!(e, "command queue full (2 commands waiting)");
        let e = q
            .push(
                b"D".to_vec(),
                SendOptions {
                    name: Some(String::new()),
                    ..opts()
                },
            )
            .unwrap_err();
        assert!(e.contains("command name"), "{e}");
        let mut out = vec![];
        q.clear("disconnected", &mut out);
        assert_eq!(out, vec![QueueAction::Done(a, Err("disconnected".into()))]);
        assert!(q.is_empty());
    }

    /// While the transport is full, commands stay queued (and the queue's bound refuses
    /// new ones with a clear error) rather than being written into a full channel.
    #[test]
    fn commands_wait_for_room_in_the_transport() {
        let mut q = CommandQueue::new(3);
        let mut out = vec![];
        q.set_room(1);
        for c in [b"A", b"B", b"C"] {
            q.push(c.to_vec(), opts()).unwrap();
        }
        q.pump(0, &mut out);
        assert_eq!(out, vec![QueueAction::Write(b"A".to_vec())]);
        assert!(q.stalled());
        q.push(b"D".to_vec(), opts()).unwrap();
        let e = q.push(b"E".to_vec(), opts()).unwrap_err();
        assert_eq!(e, "command queue full (3 commands waiting)");
        out.clear();
        q.set_room(2);
        q.pump(0, &mut out);
        assert_eq!(
            out,
            vec![
                QueueAction::Write(b"B".to_vec()),
                QueueAction::Write(b"C".to_vec())
            ]
        );
        assert!(q.stalled());
        out.clear();
        q.set_room(usize::MAX);
        q.pump(0, &mut out);
        assert_eq!(out, vec![QueueAction::Write(b"D".to_vec())]);
        assert!(!q.stalled() && q.is_empty());
    }
}
