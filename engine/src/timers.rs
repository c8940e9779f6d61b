//! A module's timers: in / every / at / cron, over a clock the owner supplies (real time in
//! the module actor, virtual time in the driver test harness). Bounded per module.

use std::collections::HashMap;

/// Most timers one module may hold.
pub const MAX_TIMERS: usize = 64;
/// Shortest period of an `every` timer.
pub const MIN_PERIOD_MS: u64 = 10;

/// When a timer fires (the WIT `schedule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    In(u64),
    Every(u64),
    At(u64),
    Cron(String),
}

/// Times as the timers see them: a monotonic millisecond count and the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on the owner's monotonic clock.
    pub mono_ms: u64,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

enum Kind {
    Once,
    Every(u64),
    Cron(Box<croner::Cron>),
}

struct Timer {
    due_ms: u64,
    kind: Kind,
}

/// The timers of one module.
#[derive(Default)]
pub struct Timers {
    active: HashMap<u32, Timer>,
    /// The zone cron expressions are read in (the module's system's; UTC by default).
    zone: chrono_tz::Tz,
}

fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron `{expr}`: {e}"))
}

/// Milliseconds from `now` to the next occurrence of `cron`, read in time zone `zone`
/// (`0 8 * * *` is 08:00 there, summer or winter).
fn next_cron(cron: &croner::Cron, now: Now, zone: chrono_tz::Tz) -> Result<u64, String> {
    use chrono::TimeZone;
    let at = zone
        .timestamp_millis_opt(now.unix_ms as i64)
        .single()
        .ok_or("the clock is out of range")?;
    let next = cron
        .find_next_occurrence(&at, false)
        .map_err(|e| format!("cron `{}` never fires: {e}", cron.pattern))?;
    Ok((next.timestamp_millis() as u64).saturating_sub(now.unix_ms))
}

impl Timers {
    /// Timers whose cron expressions are read in `zone`.
    pub fn in_zone(zone: chrono_tz::Tz) -> Self {
        Timers {
            active: HashMap::new(),
            zone,
        }
    }

    /// Read cron expressions in `zone` from their next occurrence on.
    pub fn set_zone(&mut self, zone: chrono_tz::Tz) {
        self.zone = zone;
    }

    /// Set (or replace) timer `id`.
    pub fn set(&mut self, id: u32, when: Schedule, now: Now) -> Result<(), String> {
        if !self.active.contains_key(&id) && self.active.len() >= MAX_TIMERS {
            return Err(format!("at most {MAX_TIMERS} timers per module"));
        }
        let (due_ms, kind) = match when {
            Schedule::In(ms) => (now.mono_ms.saturating_add(ms), Kind::Once),
            Schedule::Every(ms) => {
                let ms = ms.max(MIN_PERIOD_MS);
                (now.mono_ms.saturating_add(ms), Kind::Every(ms))
            }
            Schedule::At(unix_ms) => (
                now.mono_ms + unix_ms.saturating_sub(now.unix_ms),
                Kind::Once,
            ),
            Schedule::Cron(expr) => {
                let cron = parse_cron(&expr)?;
                let wait = next_cron(&cron, now, self.zone)?;
                (now.mono_ms + wait, Kind::Cron(Box::new(cron)))
            }
        };
        self.active.insert(id, Timer { due_ms, kind });
        Ok(())
    }

    pub fn cancel(&mut self, id: u32) {
        self.active.remove(&id);
    }

    #[cfg(test)]
    pub fn clear(&mut self) {
        self.active.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.active.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// When the next timer is due (monotonic ms).
    pub fn next_due(&self) -> Option<u64> {
        self.active.values().map(|t| t.due_ms).min()
    }

    /// The timers due at `now`, earliest first; repeating ones are re-armed. A repeating
    /// timer that fell behind fires once (it coalesces rather than piles up).
    pub fn take_due(&mut self, now: Now) -> Vec<u32> {
        let mut due: Vec<(u64, u32)> = self
            .active
            .iter()
            .filter(|(_, t)| t.due_ms <= now.mono_ms)
            .map(|(id, t)| (t.due_ms, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in &due {
            let Some(t) = self.active.get_mut(id) else {
                continue;
            };
            match &t.kind {
                Kind::Once => {
                    self.active.remove(id);
                }
                Kind::Every(period) => {
                    let behind = now.mono_ms - t.due_ms;
                    t.due_ms += period * (behind / period + 1);
                }
                Kind::Cron(cron) => match next_cron(cron, now, self.zone) {
                    Ok(wait) => t.due_ms = now.mono_ms + wait.max(1),
                    Err(_) => {
                        self.active.remove(id);
                    }
                },
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mono_ms: u64) -> Now {
        // 2026-01-01T00:00:00Z + mono
        Now {
            mono_ms,
            unix_ms: 1_767_225_600_000 + mono_ms,
        }
    }

    #[test]
    fn in_every_and_at_fire_when_due() {
        let mut t = Timers::default();
        t.set(1, Schedule::In(100), at(0)).unwrap();
        t.set(2, Schedule::Every(30), at(0)).unwrap();
        t.set(3, Schedule::At(at(50).unix_ms), at(0)).unwrap();
        assert_eq!(t.next_due(), Some(30));
        assert_eq!(t.take_due(at(29)), Vec::<u32>::new());
        assert_eq!(t.take_due(at(30)), vec![2]);
        assert_eq!(t.take_due(at(60)), vec![3, 2]);
        // Far behind: a repeating timer fires once, then keeps its phase.
        assert_eq!(t.take_due(at(1000)), vec![2, 1]);
        assert_eq!(t.next_due(), Some(1020));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cron_fires_on_the_wall_clock() {
        let mut t = Timers::default();
        // Every minute at second 0; the clock starts at a whole minute.
        t.set(7, Schedule::Cron("* * * * *".into()), at(0)).unwrap();
        assert_eq!(t.next_due(), Some(60_000));
        assert_eq!(t.take_due(at(60_000)), vec![7]);
        assert_eq!(t.next_due(), Some(120_000));
        // Six fields: seconds.
        t.set(8, Schedule::Cron("*/5 * * * * *".into()), at(1_000))
            .unwrap();
        assert_eq!(t.take_due(at(5_000)), vec![8]);
        let e = t
            .set(9, Schedule::Cron("99 * * * *".into()), at(0))
            .unwrap_err();
        assert!(e.contains("cron `99 * * * *`"), "{e}");
    }

    /// Cron reads in the module's time zone, daylight saving included.
    #[test]
    fn cron_reads_in_the_time_zone() {
        const HOUR: u64 = 3_600_000;
        // 2026-01-01T00:00Z is 19:00 the day before in New York (EST, UTC-5): 08:00 there
        // is 13 hours on.
        let mut t = Timers::in_zone(chrono_tz::America::New_York);
        t.set(1, Schedule::Cron("0 8 * * *".into()), at(0)).unwrap();
        assert_eq!(t.next_due(), Some(13 * HOUR));
        // In UTC it is 8 hours on.
        let mut utc = Timers::default();
        utc.set(1, Schedule::Cron("0 8 * * *".into()), at(0))
            .unwrap();
        assert_eq!(utc.next_due(), Some(8 * HOUR));
        // From 2026-07-01T00:00Z, London is on summer time (UTC+1): 08:00 there is 07:00Z.
        let july = Now {
            mono_ms: 0,
            unix_ms: 1_782_864_000_000,
        };
        let mut t = Timers::in_zone(chrono_tz::Europe::London);
        t.set(1, Schedule::Cron("0 8 * * *".into()), july).unwrap();
        assert_eq!(t.next_due(), Some(7 * HOUR));
        // A zone change applies from the next occurrence on.
        t.set_zone(chrono_tz::UTC);
        assert_eq!(
            t.take_due(Now {
                mono_ms: 7 * HOUR,
                unix_ms: july.unix_ms + 7 * HOUR
            }),
            vec![1]
        );
        assert_eq!(t.next_due(), Some(8 * HOUR));
    }

    #[test]
    fn timers_are_bounded_and_replaceable() {
        let mut t = Timers::default();
        for id in 0..MAX_TIMERS as u32 {
            t.set(id, Schedule::Every(1), at(0)).unwrap();
        }
        let e = t.set(999, Schedule::In(1), at(0)).unwrap_err();
        assert!(e.contains("at most 64"), "{e}");
        // Replacing an existing id is always allowed; the minimum period applies.
        t.set(0, Schedule::Every(1), at(0)).unwrap();
        assert_eq!(t.next_due(), Some(MIN_PERIOD_MS));
        t.cancel(0);
        t.set(999, Schedule::In(1), at(0)).unwrap();
        t.clear();
        assert!(t.is_empty());
    }
}
