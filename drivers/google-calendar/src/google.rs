//! The Google Calendar API v3 shapes the driver reads and writes (pure functions, no host
//! calls): "Events: list" answers, the "Events resource", and the error bodies of "Handle
//! API errors".

use chrono::{DateTime, NaiveDate, TimeZone};
use chrono_tz::Tz;
use lintel_calendar_kit::MAX_UNIX;
use serde_json::Value;

/// Characters of a summary kept in a booking's title.
pub const MAX_TITLE_CHARS: usize = 200;
/// Attendees kept per booking.
pub const MAX_ATTENDEES: usize = 50;
/// Characters of an API error message kept in an error text.
pub const MAX_MESSAGE_CHARS: usize = 200;
/// The private extended property holding the organizer a booking was made for (an event
/// created by the driver is organized by the room calendar itself).
pub const ORGANIZER_PROPERTY: &str = "lintelOrganizer";

/// An event that blocks the room, read from an "Events: list" item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event id (with `singleEvents=true`, each occurrence has its own).
    pub id: String,
    /// Its summary ("" when absent), at most [`MAX_TITLE_CHARS`] characters.
    pub title: String,
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds (exclusive).
    pub end: i64,
    /// The organizer's e-mail (or display name).
    pub organizer: Option<String>,
    /// The attendees' e-mails (at most [`MAX_ATTENDEES`]).
    pub attendees: Vec<String>,
    /// A `date` (all-day) event.
    pub all_day: bool,
    /// Visibility `private` or `confidential`.
    pub private: bool,
}

impl Event {
    /// Whether it overlaps `[start, end)` (a zero-length event at `start` does).
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.start < end && (self.end > start || (self.end == self.start && self.start >= start))
    }
}

/// One page of an "Events: list" answer.
#[derive(Debug, Default)]
pub struct Page {
    /// The events blocking the room.
    pub events: Vec<Event>,
    /// Items left out: cancelled, transparent (free) or declined by the room.
    pub left_out: usize,
    /// Items that could not be read, with why.
    pub malformed: Vec<String>,
    /// Problems worth a warning (an unknown time zone).
    pub warnings: Vec<String>,
    /// The token of the next page.
    pub next_page_token: Option<String>,
}

/// Percent-encode `s`, keeping RFC 3986 unreserved characters and those in `keep`.
pub fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unix seconds as RFC 3339 in UTC: `2026-01-01T09:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Text cut to `max` characters, control characters replaced by spaces.
pub fn clean(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The error of a Google API error body (`{"error": {"code", "message", "errors":
/// [{"domain", "reason"}], "status"}}`): (reason, message). The reason is the first
/// `errors[].reason`, else `status`; both may be empty.
pub fn api_error(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    if let Some(s) = e.as_str() {
        // OAuth-style `{"error": "invalid_grant", "error_description": …}`.
        let msg = v
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Some((clean(s, 64), clean(msg, MAX_MESSAGE_CHARS)));
    }
    let reason = e
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|x| x.get("reason"))
        .and_then(Value::as_str)
        .or_else(|| e.get("status").and_then(Value::as_str))
        .unwrap_or("");
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    Some((clean(reason, 64), clean(message, MAX_MESSAGE_CHARS)))
}

/// Reasons of a 403 that are rate limits ("Handle API errors": back off). Not
/// `quotaExceeded`: on Calendar it is the account's usage limit on creating events and
/// invitations (lifted after hours), which reads are not held back for.
pub const RATE_LIMIT_REASONS: [&str; 3] = [
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "dailyLimitExceeded",
];

/// Resolve an IANA zone name.
pub fn zone(name: &str) -> Option<Tz> {
    name.parse().ok()
}

/// Unix seconds of local midnight of `date` (`YYYY-MM-DD`) in `tz` (a midnight skipped by
/// a DST change: the first valid hour after it).
pub fn local_midnight(date: &str, tz: &Tz) -> Option<i64> {
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    (0..4).find_map(|h| {
        tz.from_local_datetime(&d.and_hms_opt(h, 0, 0)?)
            .earliest()
            .map(|t| t.timestamp())
    })
}

/// A `start`/`end` object: (unix seconds, all-day). Times outside
/// 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z (the catalog's unix seconds) are refused.
fn when(v: Option<&Value>, tz: &Tz) -> Result<(i64, bool), String> {
    let v = v.ok_or("missing")?;
    let in_range = |t: i64, what: &str, value: &str| {
        if (0..=MAX_UNIX).contains(&t) {
            Ok(t)
        } else {
            Err(format!(
                "{what} `{}` is outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z",
                clean(value, 40)
            ))
        }
    };
    if let Some(t) = v.get("dateTime").and_then(Value::as_str) {
        let d = DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("dateTime `{}`: {e}", clean(t, 40)))?;
        return Ok((in_range(d.timestamp(), "dateTime", t)?, false));
    }
    if let Some(t) = v.get("date").and_then(Value::as_str) {
        let s = local_midnight(t, tz).ok_or_else(|| format!("date `{}`", clean(t, 40)))?;
        return Ok((in_range(s, "date", t)?, true));
    }
    Err("neither dateTime nor date".into())
}

fn is_true(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool) == Some(true)
}

/// Read one item of an "Events: list" answer (or an "Events: get"/"insert" answer):
/// `Ok(None)` for an event that does not block the room (cancelled, transparent, or
/// declined by the room's own attendee entry), `Err` for one that cannot be read.
/// All-day `date` values are local dates in `tz`.
pub fn parse_event(item: &Value, tz: &Tz) -> Result<Option<Event>, String> {
    let id = match item.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id,
        _ => return Err("an item without an id".into()),
    };
    let label = clean(id, 80);
    if item.get("status").and_then(Value::as_str) == Some("cancelled")
        || item.get("transparency").and_then(Value::as_str) == Some("transparent")
    {
        return Ok(None);
    }
    let attendees = match item.get("attendees") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(format!("event `{label}`: attendees is not a list")),
    };
    if attendees.iter().any(|a| {
        is_true(a, "self") && a.get("responseStatus").and_then(Value::as_str) == Some("declined")
    }) {
        return Ok(None);
    }
    let (start, all_day) =
        when(item.get("start"), tz).map_err(|e| format!("event `{label}`: start: {e}"))?;
    let (end, _) = when(item.get("end"), tz).map_err(|e| format!("event `{label}`: end: {e}"))?;
    if end < start {
        return Err(format!("event `{label}` ends before it starts"));
    }
    let title = match item.get("summary") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => clean(s, MAX_TITLE_CHARS),
        Some(_) => return Err(format!("event `{label}`: summary is not text")),
    };
    let org = item.get("organizer");
    let booked_for = item
        .pointer(&format!("/extendedProperties/private/{ORGANIZER_PROPERTY}"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let organizer = match (org, booked_for) {
        (Some(o), Some(b)) if is_true(o, "self") => Some(clean(b, 254)),
        (Some(o), _) => o
            .get("email")
            .or_else(|| o.get("displayName"))
            .and_then(Value::as_str)
            .map(|s| clean(s, 254)),
        (None, b) => b.map(|s| clean(s, 254)),
    };
    // The calendar's own entry (`self`: the room) is not an attendee of its booking, as
    // the Graph driver leaves the room's mailbox out.
    let attendees = attendees
        .iter()
        .filter(|a| !is_true(a, "self"))
        .filter_map(|a| a.get("email").and_then(Value::as_str))
        .take(MAX_ATTENDEES)
        .map(|s| clean(s, 254))
        .collect();
    let private = matches!(
        item.get("visibility").and_then(Value::as_str),
        Some("private" | "confidential")
    );
    Ok(Some(Event {
        id: id.to_owned(),
        title,
        start,
        end,
        organizer,
        attendees,
        all_day,
        private,
    }))
}

/// Read one page of an "Events: list" answer. `Err` for a body that is not JSON or not an
/// events list. All-day dates are read in the answer's `timeZone` (the calendar's), else
/// in `fallback`.
pub fn parse_page(body: &[u8], fallback: &Tz) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        format!("not JSON ({e}): `{}`", clean(&start, 40))
    })?;
    let Some(obj) = v.as_object() else {
        return Err("expected a calendar#events object".into());
    };
    let kind = obj.get("kind").and_then(Value::as_str);
    let items = match obj.get("items") {
        Some(Value::Array(a)) => a.as_slice(),
        None | Some(Value::Null) if kind == Some("calendar#events") => &[][..],
        Some(_) => return Err("expected a calendar#events object: items is not a list".into()),
        None => {
            return Err(format!(
                "expected a calendar#events object, got kind {}",
                kind.map_or("(none)".into(), |k| format!("`{}`", clean(k, 40)))
            ));
        }
    };
    let mut page = Page::default();
    let mut tz = *fallback;
    if let Some(name) = obj.get("timeZone").and_then(Value::as_str) {
        match zone(name) {
            Some(z) => tz = z,
            None => page.warnings.push(format!(
                "the calendar's time zone `{}` is unknown; all-day dates are read in {}",
                clean(name, 64),
                fallback.name()
            )),
        }
    }
    page.next_page_token = match obj.get("nextPageToken") {
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        _ => None,
    };
    for item in items {
        match parse_event(item, &tz) {
            Ok(Some(e)) => page.events.push(e),
            Ok(None) => page.left_out += 1,
            Err(e) => page.malformed.push(e),
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UTC: Tz = chrono_tz::UTC;

    #[test]
    fn reads_times_in_both_forms() {
        let e = parse_event(
            &json!({"id": "a", "start": {"dateTime": "2026-12-03T09:00:00+01:00"},
                    "end": {"dateTime": "2026-12-03T08:30:00.000Z"}}),
            &UTC,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.start, e.end, e.all_day),
            (1_796_284_800, 1_796_286_600, false)
        );
        let london: Tz = "Europe/London".parse().unwrap();
        let e = parse_event(
            &json!({"id": "d", "start": {"date": "2026-07-01"}, "end": {"date": "2026-07-02"}}),
            &london,
        )
        .unwrap()
        .unwrap();
        // BST: local midnight is 23:00 UTC the day before.
        assert_eq!(e.start, 1_782_860_400);
        assert_eq!(e.end - e.start, 86_400);
        assert!(e.all_day);
    }

    #[test]
    fn times_outside_the_unix_range_are_malformed() {
        let item =
            |s: &str, e: &str| json!({"id": "x", "start": {"dateTime": s}, "end": {"dateTime": e}});
        let err =
            parse_event(&item("0001-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), &UTC).unwrap_err();
        assert_eq!(
            err,
            "event `x`: start: dateTime `0001-01-01T00:00:00Z` is outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z"
        );
        // 9999-12-31T23:00 at -05:00 is 10000-01-01T04:00Z.
        assert!(
            parse_event(
                &item("2026-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00"),
                &UTC
            )
            .unwrap_err()
            .contains("end: dateTime `9999-12-31T23:00:00-05:00` is outside")
        );
        assert!(
            parse_event(
                &json!({"id": "d", "start": {"date": "1969-12-31"}, "end": {"date": "1970-01-02"}}),
                &UTC
            )
            .unwrap_err()
            .contains("start: date `1969-12-31` is outside")
        );
        // The edges are kept.
        let e = parse_event(&item("1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"), &UTC)
            .unwrap()
            .unwrap();
        assert_eq!((e.start, e.end), (0, MAX_UNIX));
    }

    #[test]
    fn a_skipped_midnight_takes_the_next_valid_hour() {
        // Chile skipped 2022-09-11 00:00 (clocks went to 01:00).
        let tz: Tz = "America/Santiago".parse().unwrap();
        let t = local_midnight("2022-09-11", &tz).unwrap();
        assert_eq!(t, 1_662_868_800); // 2022-09-11T04:00Z = 01:00 -03
    }

    #[test]
    fn encodes() {
        assert_eq!(
            encode("c_1@resource.calendar.google.com", b""),
            "c_1%40resource.calendar.google.com"
        );
        assert_eq!(encode("2026-01-01T00:00:00Z", b":"), "2026-01-01T00:00:00Z");
        assert_eq!(encode("a+b/c=", b":"), "a%2Bb%2Fc%3D");
        assert_eq!(encode("会", b""), "%E4%BC%9A");
    }

    #[test]
    fn reads_error_bodies() {
        let b = br#"{"error":{"code":403,"message":"Rate Limit Exceeded","errors":[{"domain":"usageLimits","reason":"rateLimitExceeded"}]}}"#;
        assert_eq!(
            api_error(b),
            Some(("rateLimitExceeded".into(), "Rate Limit Exceeded".into()))
        );
        let b =
            br#"{"error":{"code":401,"message":"Invalid Credentials","status":"UNAUTHENTICATED"}}"#;
        assert_eq!(
            api_error(b),
            Some(("UNAUTHENTICATED".into(), "Invalid Credentials".into()))
        );
        assert_eq!(api_error(b"<html>"), None);
        assert_eq!(api_error(b"{}"), None);
    }
}
