//! Microsoft Graph v1.0 shapes, without host calls (unit-tested natively): times, the
//! `event` resource as `calendarView` lists it, error bodies and `@odata.nextLink`s.
//!
//! References (Microsoft Graph v1.0 documentation): "List calendarView", "event resource
//! type", "dateTimeTimeZone resource type", "Microsoft Graph error responses and resource
//! types", "Paging Microsoft Graph data", "National cloud deployments".

use chrono::TimeZone;
use chrono_tz::Tz;
use lintel_driver_sdk::Value;

/// The latest time accepted (9999-12-31T23:59:59Z).
pub use lintel_calendar_kit::MAX_UNIX;
/// A title is cut to this many characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Attendees kept per event.
pub const MAX_ATTENDEES: usize = 50;

/// Hosts an `@odata.nextLink` may name: the Graph service roots (global service and the
/// national clouds), and loopback addresses (a local test server). The link's path and
/// query are then requested from the module's own uri.
pub const NEXT_LINK_HOSTS: [&str; 7] = [
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
    "127.0.0.1",
    "localhost",
    "[::1]",
];

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days in month `m` (1..=12) of year `y` (proleptic Gregorian).
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        _ => 28,
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (no zone) of unix seconds.
pub fn local_stamp(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` (ISO 8601 in UTC) of unix seconds.
pub fn utc_stamp(unix: i64) -> String {
    format!("{}Z", local_stamp(unix))
}

/// Time zone names meaning UTC in a `dateTimeTimeZone`.
fn is_utc_zone(tz: &str) -> bool {
    let tz = tz.trim();
    [
        "UTC",
        "Etc/UTC",
        "Etc/GMT",
        "GMT",
        "Z",
        "tzone://Microsoft/Utc",
    ]
    .iter()
    .any(|u| tz.eq_ignore_ascii_case(u))
}

/// Unix seconds of a `dateTimeTimeZone` (`{"dateTime": "2026-12-03T09:00:00.0000000",
/// "timeZone": "UTC"}`). The driver asks for UTC (`Prefer: outlook.timezone="UTC"`);
/// a dateTime carrying its own offset (`Z`, `+01:00`) is read with it; another zone is
/// refused.
pub fn parse_time(v: &Value) -> Result<i64, String> {
    let dt = v
        .get("dateTime")
        .and_then(Value::as_str)
        .ok_or("no dateTime")?;
    let tz = v.get("timeZone").and_then(Value::as_str);
    let b = dt.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = dt.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let bad = || format!("bad dateTime `{}`", dt.chars().take(40).collect::<String>());
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4), num(5..7), num(8..10));
    let (h, mi, s) = (num(11..13), num(14..16), num(17..19));
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) = (y, mo, d, h, mi, s) else {
        return Err(bad());
    };
    if b[16] != b':'
        || !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return Err(bad());
    }
    // Fractional seconds (Graph writes 7 digits), then an optional offset.
    let mut rest = &dt[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "" => match tz {
            Some(z) if is_utc_zone(z) => 0,
            None => 0,
            Some(z) => {
                return Err(format!(
                    "time zone `{}` is not UTC (the server did not honour Prefer: outlook.timezone=\"UTC\")",
                    z.chars().take(60).collect::<String>()
                ));
            }
        },
        "Z" | "z" => 0,
        o => {
            // `+HH:MM` / `-HH:MM`, compared byte by byte (a multi-byte character must not
            // be sliced through).
            let ob = o.as_bytes();
            let digits = |r: std::ops::Range<usize>| {
                ob[r].iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0'))
            };
            if ob.len() != 6
                || !matches!(ob[0], b'+' | b'-')
                || ob[3] != b':'
                || ![1, 2, 4, 5].iter().all(|&i| ob[i].is_ascii_digit())
            {
                return Err(bad());
            }
            let (oh, om) = (digits(1..3), digits(4..6));
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let unix = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    if !(0..=MAX_UNIX).contains(&unix) {
        return Err(bad());
    }
    Ok(unix)
}

/// An event of a `calendarView` answer, as the driver uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub title: String,
    pub start: i64,
    pub end: i64,
    pub organizer: Option<String>,
    pub attendees: Vec<String>,
    pub all_day: bool,
    pub private: bool,
    /// `isCancelled`.
    pub cancelled: bool,
    /// `showAs`, lowercase (`free`, `tentative`, `busy`, `oof`, `workingElsewhere`…).
    pub show_as: String,
    /// `isOrganizer`: the mailbox organizes it (cancel, not decline).
    pub is_organizer: bool,
}

impl Event {
    /// Whether it blocks the room: not cancelled, not shown as free or working elsewhere.
    pub fn busy(&self) -> bool {
        !self.cancelled && !matches!(self.show_as.as_str(), "free" | "workingelsewhere")
    }

    /// Whether it books time within `[start, end)`: a zero-length event (`start == end`)
    /// books none and never overlaps.
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.start < end && self.end > start && self.end > self.start
    }
}

/// An `emailAddress` field: its `address`, or with `name_too` its `name` when there is
/// no address.
fn address(v: &Value, name_too: bool) -> Option<String> {
    let e = v.get("emailAddress")?;
    let pick = |k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(254).collect::<String>())
    };
    pick("address").or_else(|| if name_too { pick("name") } else { None })
}

/// Resolve an IANA zone name (`Europe/Berlin`, `UTC`).
pub fn zone(name: &str) -> Option<Tz> {
    name.trim().parse().ok()
}

/// Unix seconds of local midnight of `y-m-d` in `tz` (a midnight skipped by a DST
/// change: the first valid hour after it).
pub fn local_midnight(y: i64, m: i64, d: i64, tz: &Tz) -> Option<i64> {
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(y).ok()?,
        u32::try_from(m).ok()?,
        u32::try_from(d).ok()?,
    )?;
    (0..4).find_map(|h| {
        tz.from_local_datetime(&date.and_hms_opt(h, 0, 0)?)
            .earliest()
            .map(|t| t.timestamp())
    })
}

/// Unix seconds of an all-day event's `start`/`end`: Graph gives all-day events as
/// floating midnight-to-midnight dates (labelled with the requested zone, whatever the
/// room's), so the date is read as a local date in `tz`, the room's zone.
pub fn parse_all_day(v: &Value, tz: &Tz) -> Result<i64, String> {
    let dt = v
        .get("dateTime")
        .and_then(Value::as_str)
        .ok_or("no dateTime")?;
    let bad = || format!("bad dateTime `{}`", dt.chars().take(40).collect::<String>());
    // Checked as a whole (`YYYY-MM-DDTHH:MM:SS…`), then its date taken.
    parse_time(
        &lintel_driver_sdk::json!({"dateTime": dt.get(..19).ok_or_else(bad)?, "timeZone": "UTC"}),
    )?;
    let num = |r: std::ops::Range<usize>| dt[r].parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let unix = local_midnight(y, m, d, tz).ok_or_else(bad)?;
    if !(0..=MAX_UNIX).contains(&unix) {
        return Err(bad());
    }
    Ok(unix)
}

/// One `event` object of a `value` array. `tz` is the room's zone (all-day dates are
/// local dates in it); attendees equal to `mailbox` (the room itself) are left out.
pub fn parse_event(v: &Value, tz: &Tz, mailbox: &str) -> Result<Event, String> {
    if !v.is_object() {
        return Err("not an object".into());
    }
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 1024)
        .ok_or("no id")?
        .to_string();
    let what = |e: String| format!("{}: {e}", id.chars().take(60).collect::<String>());
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let all_day = flag("isAllDay");
    let time = |k: &str| {
        let t = v.get(k).ok_or_else(|| what(format!("no {k}")))?;
        if all_day {
            parse_all_day(t, tz)
        } else {
            parse_time(t)
        }
        .map_err(|e| what(format!("{k}: {e}")))
    };
    let start = time("start")?;
    let end = time("end")?;
    if end < start {
        return Err(what("ends before it starts".into()));
    }
    let title = match v.get("subject") {
        Some(Value::String(s)) => s.trim().chars().take(MAX_TITLE_CHARS).collect(),
        _ => String::new(),
    };
    let attendees = v
        .get("attendees")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|a| address(a, false))
                .filter(|a| !a.eq_ignore_ascii_case(mailbox))
                .take(MAX_ATTENDEES)
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    Ok(Event {
        title,
        start,
        end,
        organizer: v.get("organizer").and_then(|o| address(o, true)),
        attendees,
        all_day,
        private: matches!(text("sensitivity").as_str(), "private" | "confidential"),
        cancelled: flag("isCancelled"),
        show_as: text("showAs"),
        is_organizer: flag("isOrganizer"),
        id,
    })
}

/// A page of a `calendarView` answer: its events, the skipped ones (why), and the next
/// link's path (relative to the service root) if there is one.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Event>,
    pub skipped: Vec<String>,
    pub next: Option<String>,
}

/// Read a `calendarView` answer body (`{"value": [...], "@odata.nextLink": "..."}`); see
/// [`parse_event`] for `tz` and `mailbox`.
pub fn parse_page(body: &[u8], tz: &Tz, mailbox: &str) -> Result<Page, String> {
    let v: Value = serde_json_from_slice(body)?;
    let Some(values) = v.get("value").and_then(Value::as_array) else {
        return Err(format!(
            "malformed answer: expected an object with a `value` array, got {}",
            shape(&v)
        ));
    };
    let mut page = Page::default();
    for item in values {
        match parse_event(item, tz, mailbox) {
            Ok(e) => page.events.push(e),
            Err(e) => page.skipped.push(e),
        }
    }
    page.next = match v.get("@odata.nextLink") {
        None | Some(Value::Null) => None,
        Some(Value::String(link)) => Some(next_path(link)?),
        Some(_) => return Err("malformed answer: `@odata.nextLink` is not a string".into()),
    };
    Ok(page)
}

fn serde_json_from_slice(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("malformed answer: empty body (expected JSON)".into());
    }
    lintel_driver_sdk::serde_json::from_slice(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(&body[..body.len().min(40)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!("malformed answer: not JSON ({e}), starts with `{start}`")
    })
}

/// What a JSON value is, for error texts.
fn shape(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object without it",
    }
}

/// The path and query of an `@odata.nextLink` (`https://graph.microsoft.com/v1.0/…`),
/// to request from the module's uri: refused unless it names a Graph host (see
/// [`NEXT_LINK_HOSTS`]) over https (http only to loopback).
pub fn next_path(link: &str) -> Result<String, String> {
    let quoted = || link.chars().take(100).collect::<String>();
    let (scheme, rest) = link.split_once("://").ok_or_else(|| {
        format!(
            "malformed answer: `@odata.nextLink` `{}` is not a URL",
            quoted()
        )
    })?;
    let cut = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.to_ascii_lowercase();
    let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]");
    let scheme_ok = scheme.eq_ignore_ascii_case("https") || (loopback && scheme == "http");
    if !NEXT_LINK_HOSTS.contains(&host.as_str()) || !scheme_ok || authority.contains('@') {
        return Err(format!(
            "refused `@odata.nextLink` to another host `{}` (only Microsoft Graph hosts are followed)",
            authority.chars().take(100).collect::<String>()
        ));
    }
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "malformed answer: `@odata.nextLink` `{}` has no path",
            quoted()
        ));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(
            "malformed answer: `@odata.nextLink` holds spaces or control characters".into(),
        );
    }
    Ok(path.to_string())
}

/// The `error.code` and `error.message` of a Graph error body, if it is one.
pub fn error_of(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = lintel_driver_sdk::serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let e = v.get("error");
    let field = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect())
    };
    (field("code"), field("message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_driver_sdk::json;

    #[test]
    fn times_round_trip_and_graph_forms_are_read() {
        for t in [0, 1_767_225_600, 951_782_400, 4_102_444_799, MAX_UNIX] {
            let v = json!({"dateTime": local_stamp(t), "timeZone": "UTC"});
            assert_eq!(parse_time(&v), Ok(t), "{t}");
        }
        assert_eq!(utc_stamp(1_767_225_600), "2026-01-01T00:00:00Z");
        let t = |dt: &str, tz: &str| parse_time(&json!({"dateTime": dt, "timeZone": tz}));
        assert_eq!(
            t("2026-01-01T09:30:00.0000000", "UTC"),
            Ok(1_767_225_600 + 34_200)
        );
        assert_eq!(
            t("2026-01-01T09:30:00.5", "tzone://Microsoft/Utc"),
            Ok(1_767_259_800)
        );
        assert_eq!(
            t("2026-01-01T10:30:00+01:00", "W. Europe Standard Time"),
            Ok(1_767_259_800)
        );
        assert_eq!(t("2026-01-01T09:30:00Z", "whatever"), Ok(1_767_259_800));
        assert!(
            t("2026-01-01T09:30:00", "Pacific Standard Time")
                .unwrap_err()
                .contains("is not UTC")
        );
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00",
            "2026-01-01T00:00:00.",
            "2026-01-01 00:00:00",
            "२०२६-01-01T00:00:00",
            "2026-01-01T00:00:00+1",
            // Not sliced through a multi-byte character (this trapped).
            "2026-01-01T00:00:00+aé12",
            "2026-01-01T00:00:00+é:12",
            "2026-01-01T00:00:00++1:00",
            "2026-01-01T00:00:00+01:0x",
            "2026-01-01T00:00:00-0a:00",
            "2026-01-01T00:00:00+01:60",
            // Days past the month's end.
            "2026-02-29T00:00:00",
            "2026-02-31T00:00:00",
            "2026-04-31T00:00:00",
            "1900-02-29T00:00:00",
        ] {
            assert!(t(bad, "UTC").is_err(), "{bad}");
        }
        assert_eq!(t("2028-02-29T00:00:00", "UTC"), Ok(1_835_395_200));
        assert_eq!(t("2000-02-29T00:00:00", "UTC"), Ok(951_782_400));
        assert_eq!(t("2026-12-31T00:00:00", "UTC"), Ok(1_798_675_200));
        assert_eq!(t("2026-01-01T09:30:00-00:30", "x"), Ok(1_767_261_600));
        assert!(parse_time(&json!({"timeZone": "UTC"})).is_err());
    }

    #[test]
    fn next_links_stay_on_graph_hosts() {
        assert_eq!(
            next_path("https://graph.microsoft.com/v1.0/users/r@x/calendarView?$skiptoken=a%3D"),
            Ok("/v1.0/users/r@x/calendarView?$skiptoken=a%3D".into())
        );
        assert_eq!(
            next_path("http://127.0.0.1:8080/v1.0/x"),
            Ok("/v1.0/x".into())
        );
        for bad in [
            "https://evil.example.com/v1.0/x",
            "http://graph.microsoft.com/v1.0/x",
            "https://graph.microsoft.com.evil.example/v1.0/x",
            "https://user@graph.microsoft.com/v1.0/x",
            "https://graph.microsoft.com",
            "/v1.0/x",
            "https://graph.microsoft.com//evil/x",
        ] {
            assert!(next_path(bad).is_err(), "{bad}");
        }
    }

    const UTC: Tz = chrono_tz::UTC;

    #[test]
    fn all_day_dates_are_local_dates_in_the_rooms_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Graph labels the floating dates with the requested zone (UTC).
        let day = |d: &str| json!({"dateTime": format!("{d}T00:00:00.0000000"), "timeZone": "UTC"});
        let v = json!({"id": "d", "isAllDay": true, "start": day("2026-01-01"), "end": day("2026-01-02")});
        let e = parse_event(&v, &berlin, "r@x.com").unwrap();
        // Berlin midnight is 23:00 UTC the day before.
        assert_eq!((e.start, e.end), (1_767_222_000, 1_767_308_400));
        assert!(e.all_day);
        let e = parse_event(&v, &UTC, "r@x.com").unwrap();
        assert_eq!((e.start, e.end), (1_767_225_600, 1_767_312_000));
        // Summer (CEST, +2) and a DST change inside the event (23 hours).
        let v = json!({"id": "d", "isAllDay": true, "start": day("2026-03-29"), "end": day("2026-03-30")});
        let e = parse_event(&v, &berlin, "r@x.com").unwrap();
        assert_eq!(e.end - e.start, 23 * 3600);
        assert_eq!(e.start, 1_774_738_800);
        // A timed event is not moved by the zone.
        let v = json!({"id": "t", "start": day("2026-01-01"), "end": day("2026-01-02")});
        assert_eq!(
            parse_event(&v, &berlin, "r@x.com").unwrap().start,
            1_767_225_600
        );
        assert!(parse_event(&json!({"id": "d", "isAllDay": true, "start": day("2026-02-30"), "end": day("2026-03-01")}), &berlin, "r").is_err());
        assert!(zone("Mars/Olympus").is_none() && zone("Europe/Berlin").is_some());
    }

    #[test]
    fn events_map_to_the_shared_shape() {
        let e = parse_event(&json!({
            "id": "AAMk+/=_-", "subject": "  会議 ", "isAllDay": false, "sensitivity": "Confidential",
            "showAs": "workingElsewhere", "isCancelled": false, "isOrganizer": true,
            "start": {"dateTime": "2026-01-01T09:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-01-01T10:00:00.0000000", "timeZone": "UTC"},
            "organizer": {"emailAddress": {"name": "Room", "address": "room@x.com"}},
            "attendees": [{"emailAddress": {"address": "a@x.com"}}, {"emailAddress": {"name": "Só name"}},
                          {"type": "required"}, {"type": "resource", "emailAddress": {"name": "Room", "address": "ROOM@x.com"}}]
        }), &UTC, "room@x.com")
        .unwrap();
        assert_eq!(e.title, "会議");
        assert_eq!(e.organizer.as_deref(), Some("room@x.com"));
        // Addresses only; the room's own entry left out.
        assert_eq!(e.attendees, ["a@x.com"]);
        assert!(e.private && e.is_organizer && !e.busy());
        // The organizer falls back to its name.
        let e = parse_event(&json!({"id": "n", "start": {"dateTime": "2026-01-01T09:00:00"}, "end": {"dateTime": "2026-01-01T09:00:00"},
            "organizer": {"emailAddress": {"name": "Só name"}}}), &UTC, "room@x.com").unwrap();
        assert_eq!(e.organizer.as_deref(), Some("Só name"));
        // Zero length: books no time, overlaps nothing.
        assert!(!e.overlaps(e.start - 10, e.start + 10) && !e.overlaps(e.start, e.start + 1));
        assert!(parse_event(&json!({"id": "x"}), &UTC, "").is_err());
        assert!(parse_event(&json!([1]), &UTC, "").is_err());
    }

    #[test]
    fn graph_errors_are_read() {
        assert_eq!(
            error_of(br#"{"error":{"code":"ErrorItemNotFound","message":"gone"}}"#),
            (Some("ErrorItemNotFound".into()), Some("gone".into()))
        );
        assert_eq!(error_of(b"<html>"), (None, None));
    }
}
