//! What the catalog's calendar drivers (CalDAV, Microsoft Graph, Google Calendar) share, so
//! that the room logic and staff apps see one shape whichever calendar a room has: the
//! booking and busy-period shapes, the functions' argument types, time-range checks,
//! busy-period merging, `Retry-After`, the size-capped `bookings` status, and the
//! `last_error` report. Each driver's page (`docs/drivers/`) documents what its ids are.

use lintel_driver_sdk::prelude::*;

/// Bytes of JSON the `bookings` status may hold (the engine's cap is 64 KiB).
pub const MAX_BOOKINGS_STATUS_BYTES: usize = 60_000;
/// Bookings a `list_bookings` answer holds at most.
pub const MAX_LISTED: usize = 2_000;
/// The widest range a function may ask about (366 days).
pub const MAX_RANGE_SECS: i64 = 366 * 86_400;
/// A `Retry-After` is obeyed up to this many seconds.
pub const MAX_RETRY_AFTER_SECS: u64 = 3_600;
/// Wait after a 429 without `Retry-After`.
pub const DEFAULT_429_WAIT_SECS: u64 = 60;
/// HTTP requests in flight at once; more function calls are refused.
pub const MAX_IN_FLIGHT: usize = 16;
/// The latest time accepted (9999-12-31T23:59:59Z).
pub const MAX_UNIX: i64 = 253_402_300_799;

/// A time: unix seconds (UTC).
#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct UnixTime(#[schemars(range(min = 0, max = 253_402_300_799i64))] pub i64);

/// A booking title (1 to 255 characters).
#[derive(Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Title(#[schemars(length(min = 1, max = 255))] pub String);

/// An e-mail address (`mailto:` optional).
#[derive(Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Email(#[schemars(length(min = 3, max = 254))] pub String);

impl Title {
    /// The title trimmed, checked for 1 to 255 characters.
    pub fn clean(self) -> Result<String, String> {
        let title = self.0.trim();
        if title.is_empty() || title.chars().count() > 255 {
            return Err("title must be 1 to 255 characters".into());
        }
        Ok(title.to_owned())
    }
}

impl Email {
    /// The address trimmed and without `mailto:` (any case), checked to be `user@domain`
    /// without spaces or control characters, at most 254 bytes.
    pub fn address(self) -> Result<String, String> {
        let o = strip_mailto(self.0.trim());
        let valid = o.len() <= 254
            && o.split_once('@')
                .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty())
            && !o.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(format!("organizer `{o}` is not an e-mail address"));
        }
        Ok(o.to_owned())
    }
}

/// `v` without a leading `mailto:` (any case).
pub fn strip_mailto(v: &str) -> &str {
    match v.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("mailto:") => &v[7..],
        _ => v,
    }
}

/// A booking id, as in the `bookings` status (Google allows 1024 characters).
#[derive(Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct BookingId(#[schemars(length(min = 1, max = 1024))] pub String);

/// Why a booking is cancelled (at most 500 characters).
#[derive(Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Reason(#[schemars(length(max = 500))] pub String);

/// A booking: the catalog's shared shape.
#[derive(Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Booking {
    /// The calendar's id of the booking (unique within a `bookings` status; for one
    /// occurrence of a recurring series, that occurrence's id).
    pub id: String,
    /// Its title (subject, summary).
    pub title: String,
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds (exclusive).
    pub end: i64,
    /// The organizer's address (without `mailto:`), if any.
    pub organizer: Option<String>,
    /// The attendees' addresses.
    pub attendees: Vec<String>,
    /// An all-day event.
    pub all_day: bool,
    /// A private or confidential booking (apps should not show its title).
    pub private: bool,
}

/// A busy period.
#[derive(Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub struct Period {
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds (exclusive).
    pub end: i64,
}

/// The wall clock, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock, in unix seconds.
pub fn now_s() -> i64 {
    (now_ms() / 1000) as i64
}

/// Percent-encode one URL path segment (RFC 3986 unreserved characters and `@` stay).
pub fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Seconds a `Retry-After` asks for (delta-seconds or an HTTP date), not capped.
pub fn retry_after(value: &str, now: i64) -> Option<u64> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    let t = chrono::NaiveDateTime::parse_from_str(v, "%a, %d %b %Y %H:%M:%S GMT").ok()?;
    Some((t.and_utc().timestamp() - now).max(0) as u64)
}

/// A hash for a new booking's id: FNV-1a (64 bit) of the time (unix ms), a per-module
/// counter, the calendar, the times and the title, so ids differ across modules, restarts
/// and calls. Each driver formats it as its server wants (a UID, a Graph transaction id,
/// a Google base32hex id) and adds the counter.
pub fn new_id_hash(
    now_ms: u64,
    counter: u64,
    calendar: &str,
    start: i64,
    end: i64,
    title: &str,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&now_ms.to_le_bytes());
    eat(&counter.to_le_bytes());
    eat(calendar.as_bytes());
    eat(&start.to_le_bytes());
    eat(&end.to_le_bytes());
    eat(title.as_bytes());
    h
}

/// Check a function's time range: unix seconds, `end` after `start`, at most 366 days.
pub fn check_range(start: i64, end: i64) -> Result<(), String> {
    if start < 0 || end > MAX_UNIX {
        return Err(format!(
            "times must be unix seconds 0..={MAX_UNIX} (before the year 10000)"
        ));
    }
    if end <= start {
        return Err(format!("end ({end}) must be after start ({start})"));
    }
    if end - start > MAX_RANGE_SECS {
        return Err(format!(
            "the range is {} days; at most 366 days",
            (end - start) / 86_400
        ));
    }
    Ok(())
}

/// The busy `spans` (start, end) within `[start, end)`, clipped and merged; empty and
/// outside spans are left out.
pub fn merge_busy(
    spans: impl IntoIterator<Item = (i64, i64)>,
    start: i64,
    end: i64,
) -> Vec<Period> {
    let mut spans: Vec<(i64, i64)> = spans
        .into_iter()
        .filter(|(s, e)| e > s && *s < end && *e > start)
        .map(|(s, e)| (s.max(start), e.min(end)))
        .collect();
    spans.sort();
    let mut out: Vec<Period> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(p) if s <= p.end => p.end = p.end.max(e),
            _ => out.push(Period { start: s, end: e }),
        }
    }
    out
}

/// Publish `bookings` (sorted by start) as the `bookings` status: the earliest that fit
/// in [`MAX_BOOKINGS_STATUS_BYTES`], with a warning when some are left out.
pub fn publish_bookings(bookings: Vec<Booking>) {
    let total = bookings.len();
    let mut size = 2;
    let mut kept = Vec::new();
    for b in bookings {
        let n = json!(b).to_string().len() + 1;
        if size + n > MAX_BOOKINGS_STATUS_BYTES {
            break;
        }
        size += n;
        kept.push(b);
    }
    if kept.len() < total {
        host::warn(&format!(
            "the bookings status holds the first {} of {total} bookings (status values are at most 64 KiB); use list_bookings for all",
            kept.len()
        ));
    }
    if let Err(e) = host::set_status("bookings", &kept) {
        host::error(&format!("the bookings status was not published: {e}"));
    }
}

/// The `last_error` status: each change logged once (a warning, or "the calendar
/// answers again" when it clears), a repeat only at debug level.
#[derive(Default)]
pub struct ErrorReport {
    last: Option<String>,
}

impl ErrorReport {
    /// The latest problem, if any.
    pub fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// Report `error` (`None`: the calendar answers).
    pub fn set(&mut self, error: Option<String>) {
        if self.last == error {
            if let Some(e) = &error {
                host::debug(&format!("still failing: {e}"));
            }
            return;
        }
        match &error {
            Some(e) => host::warn(e),
            None if self.last.is_some() => host::info("the calendar answers again"),
            None => {}
        }
        if let Err(e) = host::set_status("last_error", &error) {
            host::error(&format!("last_error was not published: {e}"));
        }
        self.last = error;
    }
}

/// A server's `Retry-After` wait: no request until it ends.
#[derive(Default)]
pub struct RetryWait {
    until: Option<(u64, String)>,
}

impl RetryWait {
    /// A 429 or 5xx answer (`code`) with its `Retry-After` header: start the wait it asks
    /// for (1 s ..= [`MAX_RETRY_AFTER_SECS`]; a 429 without one waits
    /// [`DEFAULT_429_WAIT_SECS`], a 5xx without one does not wait). Answers the reason
    /// (`server busy (HTTP 429); retrying in 60 s`) and the milliseconds to wait.
    /// `detail` follows the code inside the parentheses (e.g. `" TooManyRequests"`).
    pub fn after(
        &mut self,
        code: u16,
        detail: &str,
        retry_after_header: Option<&str>,
    ) -> (String, Option<u64>) {
        let why = if code == 429 {
            format!("server busy (HTTP {code}{detail})")
        } else {
            format!("server error (HTTP {code}{detail})")
        };
        let wait = retry_after_header
            .and_then(|v| retry_after(v, now_s()))
            .or((code == 429).then_some(DEFAULT_429_WAIT_SECS));
        match wait {
            Some(s) => {
                let ms = self.start(s, why.clone());
                (format!("{why}; retrying in {} s", ms / 1000), Some(ms))
            }
            None => (why, None),
        }
    }

    /// Wait `secs` (1 s ..= [`MAX_RETRY_AFTER_SECS`]) because of `why`; answers the
    /// milliseconds to wait.
    pub fn start(&mut self, secs: u64, why: String) -> u64 {
        let ms = secs.clamp(1, MAX_RETRY_AFTER_SECS) * 1000;
        self.until = Some((now_ms() + ms, why));
        ms
    }

    /// End the wait (its timer fired).
    pub fn clear(&mut self) {
        self.until = None;
    }

    /// Whether a wait runs: its reason, with the seconds left.
    pub fn active(&mut self) -> Option<String> {
        let (until, why) = self.until.as_ref()?;
        let now = now_ms();
        if now >= *until {
            self.until = None;
            return None;
        }
        Some(format!(
            "{why}; retrying in {} s",
            (until - now).div_ceil(1000)
        ))
    }

    /// The milliseconds left, if a wait runs.
    pub fn remaining_ms(&self) -> Option<u64> {
        let (until, _) = self.until.as_ref()?;
        until.checked_sub(now_ms()).filter(|ms| *ms > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_spans_are_clipped_and_merged() {
        let got = merge_busy(
            [(50, 120), (100, 200), (300, 250), (400, 500), (0, 10)],
            20,
            450,
        );
        assert_eq!(
            got,
            [
                Period {
                    start: 50,
                    end: 200
                },
                Period {
                    start: 400,
                    end: 450
                }
            ]
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(" 30 ", 0), Some(30));
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_700),
            Some(77)
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800),
            Some(0)
        );
        assert_eq!(retry_after("soon", 0), None);
    }

    #[test]
    fn busy_answers_start_a_wait() {
        let mut w = RetryWait::default();
        assert_eq!(
            w.after(503, "", None),
            ("server error (HTTP 503)".into(), None)
        );
        assert!(w.active().is_none());
        assert_eq!(
            w.after(429, " TooManyRequests", None),
            (
                "server busy (HTTP 429 TooManyRequests); retrying in 60 s".into(),
                Some(60_000)
            )
        );
        assert_eq!(
            w.active().as_deref(),
            Some("server busy (HTTP 429 TooManyRequests); retrying in 60 s")
        );
        assert_eq!(w.after(503, "", Some("0")).1, Some(1_000));
        assert_eq!(w.after(503, "", Some("999999")).1, Some(3_600_000));
        w.clear();
        assert!(w.active().is_none() && w.remaining_ms().is_none());
    }

    #[test]
    fn titles_and_addresses_are_checked() {
        assert_eq!(Title("  Stand-up ".into()).clean().unwrap(), "Stand-up");
        assert!(Title("   ".into()).clean().is_err());
        assert!(Title("x".repeat(256)).clean().is_err());
        assert_eq!(
            Email(" MailTo:a@b.example ".into()).address().unwrap(),
            "a@b.example"
        );
        assert_eq!(
            Email("東京@example.jp".into()).address().unwrap(),
            "東京@example.jp"
        );
        for bad in ["a@", "@b", "a b@c", "ab"] {
            assert_eq!(
                Email(bad.into()).address().unwrap_err(),
                format!("organizer `{bad}` is not an e-mail address")
            );
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(0, 1).is_ok());
        assert!(check_range(5, 5).unwrap_err().contains("must be after"));
        assert!(check_range(-1, 5).unwrap_err().contains("unix seconds"));
        assert!(
            check_range(0, MAX_RANGE_SECS + 1)
                .unwrap_err()
                .contains("at most 366 days")
        );
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(
            segment("a b/c@d.e~f"),
            "a%20b%2Fc%40d.e~f".replace("%40", "@")
        );
        assert_eq!(segment("AAMkAD=+/"), "AAMkAD%3D%2B%2F");
    }
}
