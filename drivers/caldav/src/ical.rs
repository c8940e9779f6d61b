//! iCalendar (RFC 5545) reading and writing: what room bookings need, no more.
//!
//! Reading unfolds lines, splits properties and their parameters (quoted values may hold
//! `:` and `;`), unescapes TEXT values and reads DATE / DATE-TIME values as UTC (`Z`),
//! in an IANA or common Windows `TZID` (chrono-tz), or floating (in the driver's
//! `time_zone`). Recurrence rules are not expanded here (the CalDAV REPORT asks the server
//! to expand them).

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// The latest time accepted (9999-12-31T23:59:59Z).
const MAX_UNIX: i64 = 253_402_300_799;
/// SUMMARY characters kept.
pub const MAX_TITLE_CHARS: usize = 200;
/// ATTENDEEs kept per event.
pub const MAX_ATTENDEES: usize = 50;

/// One VEVENT, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The booking id: the UID, or `<UID>#<RECURRENCE-ID as YYYYMMDDTHHMMSSZ>` for one
    /// occurrence of a recurring series (see [`occurrence_id`]).
    pub id: String,
    pub uid: String,
    /// RECURRENCE-ID (unix seconds): the event is one occurrence of a series.
    pub recurrence_id: Option<i64>,
    pub title: String,
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds (exclusive).
    pub end: i64,
    pub organizer: Option<String>,
    pub attendees: Vec<String>,
    pub all_day: bool,
    /// CLASS:PRIVATE or CLASS:CONFIDENTIAL.
    pub private: bool,
    /// STATUS:CANCELLED.
    pub cancelled: bool,
    /// TRANSP:TRANSPARENT (does not block the room).
    pub transparent: bool,
    /// The event has an RRULE or RDATE.
    pub recurring: bool,
}

impl Event {
    /// Whether the event blocks time (not cancelled, not transparent).
    pub fn busy(&self) -> bool {
        !self.cancelled && !self.transparent
    }

    /// Whether the event overlaps `[start, end)` (a zero-length event counts at its start).
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        if self.end == self.start {
            self.start >= start && self.start < end
        } else {
            self.start < end && self.end > start
        }
    }
}

/// What a calendar object held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// Why events were skipped (one line per skipped event).
    pub skipped: Vec<String>,
    /// Oddities read anyway (an unknown TZID read in the default zone).
    pub warnings: Vec<String>,
}

struct Prop {
    name: String,
    params: Vec<(String, String)>,
    value: String,
}

impl Prop {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Unfold content lines (RFC 5545 3.1): a line starting with a space or tab continues the
/// previous one. Accepts CRLF and bare LF.
fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = line.strip_prefix([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push_str(rest);
            continue;
        }
        if !line.is_empty() {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// `NAME;P1=v;P2="q:v":value`.
fn parse_line(line: &str) -> Result<Prop, String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b';' && bytes[i] != b':' {
        i += 1;
    }
    let name = &line[..i];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("bad property name in `{}`", clip(line, 60)));
    }
    let mut params = Vec::new();
    while i < bytes.len() && bytes[i] == b';' {
        i += 1;
        let k0 = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b':' && bytes[i] != b';' {
            i += 1;
        }
        let key = line[k0..i].to_ascii_uppercase();
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(format!("bad parameter in `{}`", clip(line, 60)));
        }
        i += 1;
        let mut value = String::new();
        loop {
            if i < bytes.len() && bytes[i] == b'"' {
                let q0 = i + 1;
                let Some(q) = line[q0..].find('"') else {
                    return Err(format!("unterminated quote in `{}`", clip(line, 60)));
                };
                value.push_str(&line[q0..q0 + q]);
                i = q0 + q + 1;
            } else {
                let v0 = i;
                while i < bytes.len() && !matches!(bytes[i], b';' | b':' | b',') {
                    i += 1;
                }
                value.push_str(&line[v0..i]);
            }
            if i < bytes.len() && bytes[i] == b',' {
                value.push(',');
                i += 1;
            } else {
                break;
            }
        }
        params.push((key, value));
    }
    if i >= bytes.len() || bytes[i] != b':' {
        return Err(format!("no `:` in `{}`", clip(line, 60)));
    }
    Ok(Prop {
        name: name.to_ascii_uppercase(),
        params,
        value: line[i + 1..].to_owned(),
    })
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Unescape a TEXT value (`\\`, `\;`, `\,`, `\n`, `\N`).
pub fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Escape a TEXT value.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Fold a content line at 75 octets (on character boundaries), CRLF-terminated.
fn fold(line: &str, out: &mut String) {
    let mut width = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += n;
    }
    out.push_str("\r\n");
}

/// A time zone by TZID: IANA names (also with a vendor prefix such as
/// `/mozilla.org/20050126_1/Europe/London`) and common Windows names.
pub fn zone(tzid: &str) -> Option<Tz> {
    let tzid = tzid.trim().trim_matches('"');
    if let Ok(tz) = tzid.parse::<Tz>() {
        return Some(tz);
    }
    let windows = match tzid {
        "UTC" | "Coordinated Universal Time" | "GMT" => "UTC",
        "GMT Standard Time" => "Europe/London",
        "W. Europe Standard Time" => "Europe/Berlin",
        "Romance Standard Time" => "Europe/Paris",
        "Central Europe Standard Time" => "Europe/Budapest",
        "Central European Standard Time" => "Europe/Warsaw",
        "E. Europe Standard Time" => "Europe/Chisinau",
        "FLE Standard Time" => "Europe/Kiev",
        "Eastern Standard Time" => "America/New_York",
        "Central Standard Time" => "America/Chicago",
        "Mountain Standard Time" => "America/Denver",
        "Pacific Standard Time" => "America/Los_Angeles",
        "AUS Eastern Standard Time" => "Australia/Sydney",
        "Tokyo Standard Time" => "Asia/Tokyo",
        "China Standard Time" => "Asia/Shanghai",
        "India Standard Time" => "Asia/Kolkata",
        "Singapore Standard Time" => "Asia/Singapore",
        _ => "",
    };
    if !windows.is_empty() {
        return windows.parse().ok();
    }
    // A vendor prefix: try the last two, then the last three path segments.
    let parts: Vec<&str> = tzid.split('/').filter(|p| !p.is_empty()).collect();
    for n in [2, 3] {
        if parts.len() > n
            && let Ok(tz) = parts[parts.len() - n..].join("/").parse::<Tz>()
        {
            return Some(tz);
        }
    }
    None
}

/// A local time in `tz` as unix seconds (the earlier of an ambiguous time, the moment
/// after a skipped one).
fn local_to_unix(tz: &Tz, t: NaiveDateTime) -> i64 {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(d) => d.timestamp(),
        LocalResult::Ambiguous(a, _) => a.timestamp(),
        LocalResult::None => match tz.from_local_datetime(&(t + Duration::hours(1))) {
            LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => d.timestamp(),
            LocalResult::None => tz.from_utc_datetime(&t).timestamp(),
        },
    }
}

/// A DATE or DATE-TIME value as (unix seconds, is a DATE).
fn read_time(
    prop: &Prop,
    default_tz: &Tz,
    warnings: &mut Vec<String>,
) -> Result<(i64, bool), String> {
    let v = prop.value.trim();
    let is_date = prop
        .param("VALUE")
        .is_some_and(|p| p.eq_ignore_ascii_case("DATE"))
        || (v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()));
    if is_date {
        let d = NaiveDate::parse_from_str(v, "%Y%m%d")
            .ok()
            .filter(|d| (1..=9999).contains(&d.year()))
            .ok_or_else(|| format!("{} `{}` is not a DATE", prop.name, clip(v, 40)))?;
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        return Ok((local_to_unix(default_tz, midnight), true));
    }
    let (text, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(t) => (t, true),
        None => (v, false),
    };
    let t = NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S")
        .ok()
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(|| format!("{} `{}` is not a DATE-TIME", prop.name, clip(v, 40)))?;
    if utc {
        return Ok((t.and_utc().timestamp(), false));
    }
    let tz = match prop.param("TZID") {
        Some(id) => zone(id).unwrap_or_else(|| {
            warnings.push(format!(
                "unknown TZID `{}`, read in {}",
                clip(id, 60),
                default_tz.name()
            ));
            *default_tz
        }),
        None => *default_tz,
    };
    Ok((local_to_unix(&tz, t), false))
}

/// An RFC 5545 DURATION (`P1D`, `PT1H30M`, `-PT15M`, `P2W`) in seconds.
pub fn duration(v: &str) -> Option<i64> {
    let v = v.trim();
    let (sign, rest) = match v.as_bytes().first()? {
        b'-' => (-1, &v[1..]),
        b'+' => (1, &v[1..]),
        _ => (1, v),
    };
    let rest = rest.strip_prefix(['P', 'p'])?;
    let mut total: i64 = 0;
    let mut n: Option<i64> = None;
    let mut in_time = false;
    let mut any = false;
    for c in rest.chars() {
        match c.to_ascii_uppercase() {
            d @ '0'..='9' => {
                let digit = i64::from(d as u8 - b'0');
                n = Some(n.unwrap_or(0).checked_mul(10)?.checked_add(digit)?);
            }
            'T' if !in_time && n.is_none() => in_time = true,
            u => {
                let unit = match (u, in_time) {
                    ('W', false) => 604_800,
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
                total = total.checked_add(n.take()?.checked_mul(unit)?)?;
                any = true;
            }
        }
    }
    (any && n.is_none()).then_some(sign * total)
}

pub use lintel_calendar_kit::strip_mailto;

/// The booking id of one occurrence: `<uid>#<YYYYMMDDTHHMMSSZ>` (its RECURRENCE-ID in UTC).
pub fn occurrence_id(uid: &str, recurrence_id: i64) -> String {
    format!("{uid}#{}", utc_stamp(recurrence_id))
}

/// An occurrence id split into (UID, RECURRENCE-ID unix seconds); `None` for a plain UID.
pub fn split_occurrence_id(id: &str) -> Option<(&str, i64)> {
    let (uid, stamp) = id.rsplit_once('#')?;
    if uid.is_empty() || stamp.len() != 16 {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    Some((uid, t.and_utc().timestamp()))
}

/// A calendar user address as text: `mailto:` dropped, else the CN.
fn address(prop: &Prop) -> Option<String> {
    let v = prop.value.trim();
    let v = strip_mailto(v);
    if !v.is_empty() {
        return Some(clip(v, 254));
    }
    prop.param("CN")
        .filter(|c| !c.is_empty())
        .map(|c| clip(c, 254))
}

fn build_event(
    props: &[Prop],
    default_tz: &Tz,
    warnings: &mut Vec<String>,
) -> Result<Event, String> {
    let first = |name: &str| props.iter().find(|p| p.name == name);
    let uid = first("UID")
        .map(|p| p.value.trim().to_owned())
        .filter(|u| !u.is_empty())
        .ok_or("a VEVENT without UID")?;
    let in_event = |e: String| format!("event `{}`: {e}", clip(&uid, 80));
    let dtstart = first("DTSTART").ok_or_else(|| in_event("no DTSTART".into()))?;
    let (start, all_day) = read_time(dtstart, default_tz, warnings).map_err(in_event)?;
    let end = if let Some(dtend) = first("DTEND") {
        read_time(dtend, default_tz, warnings).map_err(in_event)?.0
    } else if let Some(d) = first("DURATION") {
        let secs = duration(&d.value).ok_or_else(|| {
            in_event(format!(
                "DURATION `{}` is not a duration",
                clip(&d.value, 40)
            ))
        })?;
        start
            .checked_add(secs)
            .ok_or_else(|| in_event(format!("DURATION `{}` is out of range", clip(&d.value, 40))))?
    } else if all_day {
        // One day: the next local midnight.
        let date = NaiveDate::parse_from_str(dtstart.value.trim(), "%Y%m%d")
            .map_err(|_| in_event("bad DTSTART".into()))?;
        let next = date
            .succ_opt()
            .ok_or_else(|| in_event("DTSTART out of range".into()))?;
        local_to_unix(default_tz, next.and_hms_opt(0, 0, 0).expect("midnight"))
    } else {
        start
    };
    if end < start {
        return Err(in_event("ends before it starts".into()));
    }
    if end > MAX_UNIX {
        return Err(in_event("ends after the year 9999".into()));
    }
    let recurrence_id = match first("RECURRENCE-ID") {
        Some(r) => Some(read_time(r, default_tz, warnings).map_err(in_event)?.0),
        None => None,
    };
    let upper = |name: &str| first(name).map(|p| p.value.trim().to_ascii_uppercase());
    Ok(Event {
        id: String::new(),
        recurrence_id,
        title: first("SUMMARY")
            .map(|p| clip(&unescape(&p.value), MAX_TITLE_CHARS))
            .unwrap_or_default(),
        start,
        end,
        organizer: first("ORGANIZER").and_then(address),
        attendees: props
            .iter()
            .filter(|p| p.name == "ATTENDEE")
            .filter_map(address)
            .take(MAX_ATTENDEES)
            .collect(),
        all_day,
        private: matches!(upper("CLASS").as_deref(), Some("PRIVATE" | "CONFIDENTIAL")),
        cancelled: upper("STATUS").as_deref() == Some("CANCELLED"),
        transparent: upper("TRANSP").as_deref() == Some("TRANSPARENT"),
        recurring: first("RRULE").is_some() || first("RDATE").is_some(),
        uid,
    })
}

/// Read every VEVENT of a calendar object (or of a whole exported calendar). A malformed
/// event is skipped (and said why in `skipped`); the others are kept. `Err` only when the
/// text is not an iCalendar object at all.
pub fn parse(text: &str, default_tz: &Tz) -> Result<Parsed, String> {
    let lines = unfold(text);
    if !lines
        .first()
        .is_some_and(|l| l.trim().eq_ignore_ascii_case("BEGIN:VCALENDAR"))
    {
        return Err(format!(
            "not an iCalendar object (starts with `{}`)",
            clip(lines.first().map_or("", |l| l.as_str()), 40)
        ));
    }
    let mut out = Parsed::default();
    let mut stack: Vec<String> = Vec::new();
    // The VEVENT being read: its properties and the first problem found in it.
    let mut event: Option<(Vec<Prop>, Option<String>)> = None;
    for line in &lines {
        let prop = match parse_line(line) {
            Ok(p) => p,
            Err(e) => {
                if let Some((_, bad @ None)) = &mut event {
                    *bad = Some(e);
                }
                continue;
            }
        };
        match prop.name.as_str() {
            "BEGIN" => {
                let name = prop.value.trim().to_ascii_uppercase();
                if name == "VEVENT" && event.is_none() {
                    event = Some((Vec::new(), None));
                }
                stack.push(name);
            }
            "END" => {
                let name = prop.value.trim().to_ascii_uppercase();
                let top = stack.pop();
                if top.as_deref() != Some(name.as_str())
                    && let Some((_, bad @ None)) = &mut event
                {
                    *bad = Some(format!(
                        "END:{name} does not close BEGIN:{}",
                        top.as_deref().unwrap_or("-")
                    ));
                }
                // The event ends when its own VEVENT closes.
                if event.is_some() && !stack.iter().any(|c| c == "VEVENT") {
                    let (props, bad) = event.take().expect("an event");
                    let built = match bad {
                        Some(e) => Err(e),
                        None => build_event(&props, default_tz, &mut out.warnings),
                    };
                    match built {
                        Ok(e) => out.events.push(e),
                        Err(e) => out.skipped.push(with_uid(&props, e)),
                    }
                }
            }
            _ => {
                // Properties of the VEVENT itself, not of a VALARM inside it.
                if let Some((props, _)) = &mut event
                    && stack.last().map(String::as_str) == Some("VEVENT")
                {
                    props.push(prop);
                }
            }
        }
    }
    if let Some((props, _)) = event {
        out.skipped
            .push(with_uid(&props, "the VEVENT is not closed".into()));
    }
    assign_ids(&mut out.events);
    Ok(out)
}

/// Booking ids: an occurrence (RECURRENCE-ID) is `<uid>#<stamp>`; events sharing a UID
/// without RECURRENCE-ID (a server expanding a series without saying so) use their start
/// as the stamp; a lone event keeps its bare UID.
fn assign_ids(events: &mut [Event]) {
    let mut plain: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.recurrence_id.is_none()) {
        *plain.entry(e.uid.clone()).or_default() += 1;
    }
    for e in events.iter_mut() {
        e.id = match e.recurrence_id {
            Some(r) => occurrence_id(&e.uid, r),
            None if plain.get(&e.uid).is_some_and(|n| *n > 1) => occurrence_id(&e.uid, e.start),
            None => e.uid.clone(),
        };
    }
}

/// Whether a calendar object holds a recurring series for `uid` (RRULE / RDATE, or
/// RECURRENCE-ID overrides): deleting it would delete every occurrence.
pub fn is_series(text: &str, uid: &str) -> bool {
    let mut in_event = false;
    let mut props: Vec<Prop> = Vec::new();
    for line in unfold(text) {
        let Ok(p) = parse_line(&line) else { continue };
        match p.name.as_str() {
            "BEGIN" if p.value.trim().eq_ignore_ascii_case("VEVENT") => {
                in_event = true;
                props.clear();
            }
            "END" if p.value.trim().eq_ignore_ascii_case("VEVENT") => {
                in_event = false;
                let this = props
                    .iter()
                    .any(|p| p.name == "UID" && p.value.trim() == uid);
                if this
                    && props
                        .iter()
                        .any(|p| matches!(p.name.as_str(), "RRULE" | "RDATE" | "RECURRENCE-ID"))
                {
                    return true;
                }
            }
            _ if in_event => props.push(p),
            _ => {}
        }
    }
    false
}

/// `t` (unix seconds) written like `like` (a DTSTART): a DATE, UTC, in its TZID, or floating
/// (in `default_tz`). Returns the parameters part (`;VALUE=DATE`, `;TZID=…` or empty) and
/// the value.
fn time_like(t: i64, like: &Prop, default_tz: &Tz) -> (String, String) {
    let v = like.value.trim();
    let is_date = like
        .param("VALUE")
        .is_some_and(|p| p.eq_ignore_ascii_case("DATE"))
        || (v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()));
    let utc = DateTime::from_timestamp(t, 0).unwrap_or_default();
    if is_date {
        let local = utc.with_timezone(default_tz);
        return (";VALUE=DATE".into(), local.format("%Y%m%d").to_string());
    }
    if v.ends_with(['Z', 'z']) {
        return (String::new(), utc_stamp(t));
    }
    match like.param("TZID") {
        Some(id) => {
            let tz = zone(id).unwrap_or(*default_tz);
            let param = if id.contains([':', ';', ',']) {
                format!(";TZID=\"{id}\"")
            } else {
                format!(";TZID={id}")
            };
            (
                param,
                utc.with_timezone(&tz).format("%Y%m%dT%H%M%S").to_string(),
            )
        }
        None => (
            String::new(),
            utc.with_timezone(default_tz)
                .format("%Y%m%dT%H%M%S")
                .to_string(),
        ),
    }
}

/// The calendar object `text` with the occurrence `recurrence_id` (unix seconds) of series
/// `uid` cancelled: an `EXDATE` added to the master VEVENT (written like its DTSTART) and an
/// override VEVENT for that occurrence removed. `Err` when the object holds no recurring
/// master for `uid`. Lines are refolded at 75 octets.
pub fn cancel_occurrence(
    text: &str,
    uid: &str,
    recurrence_id: i64,
    default_tz: &Tz,
) -> Result<String, String> {
    let lines = unfold(text);
    if !lines
        .first()
        .is_some_and(|l| l.trim().eq_ignore_ascii_case("BEGIN:VCALENDAR"))
    {
        return Err("not an iCalendar object".into());
    }
    let mut out = String::new();
    let mut stack: Vec<String> = Vec::new();
    // The top-level VEVENT being copied: its lines.
    let mut block: Option<Vec<String>> = None;
    let mut found_master = false;
    let mut warnings = Vec::new();
    for line in &lines {
        let prop = parse_line(line).ok();
        let (name, value) = prop
            .as_ref()
            .map(|p| (p.name.as_str(), p.value.trim().to_ascii_uppercase()))
            .unwrap_or(("", String::new()));
        if name == "BEGIN" {
            if value == "VEVENT" && stack.len() == 1 {
                block = Some(Vec::new());
            }
            stack.push(value.clone());
        }
        match &mut block {
            Some(b) => b.push(line.clone()),
            None => fold(line, &mut out),
        }
        if name == "END" {
            stack.pop();
            if value == "VEVENT" && stack.len() == 1 {
                let b = block.take().unwrap_or_default();
                // The VEVENT's own properties (depth 1 inside it).
                let mut depth = 0usize;
                let mut own: Vec<Prop> = Vec::new();
                for l in &b {
                    let Ok(p) = parse_line(l) else { continue };
                    match p.name.as_str() {
                        "BEGIN" => depth += 1,
                        "END" => depth = depth.saturating_sub(1),
                        _ if depth == 1 => own.push(p),
                        _ => {}
                    }
                }
                let get = |n: &str| own.iter().find(|p| p.name == n);
                let this = get("UID").is_some_and(|p| p.value.trim() == uid);
                let rid = get("RECURRENCE-ID")
                    .and_then(|p| read_time(p, default_tz, &mut warnings).ok())
                    .map(|(t, _)| t);
                let master =
                    this && rid.is_none() && (get("RRULE").is_some() || get("RDATE").is_some());
                if this && rid == Some(recurrence_id) {
                    // The override of the cancelled occurrence: dropped.
                    continue;
                }
                let n = b.len();
                for (i, l) in b.iter().enumerate() {
                    if master && i + 1 == n {
                        let like = get("DTSTART").ok_or("the series has no DTSTART")?;
                        let (params, value) = time_like(recurrence_id, like, default_tz);
                        fold(&format!("EXDATE{params}:{value}"), &mut out);
                        found_master = true;
                    }
                    fold(l, &mut out);
                }
            }
        }
    }
    if !found_master {
        return Err(format!(
            "the object holds no recurring series with UID `{}`",
            clip(uid, 80)
        ));
    }
    Ok(out)
}

fn with_uid(props: &[Prop], e: String) -> String {
    if e.starts_with("event `") {
        return e;
    }
    match props.iter().find(|p| p.name == "UID") {
        Some(u) => format!("event `{}`: {e}", clip(u.value.trim(), 80)),
        None => e,
    }
}

/// `20260101T090000Z`.
pub fn utc_stamp(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| "19700101T000000Z".into())
}

/// A new calendar object with one VEVENT.
pub fn new_event(
    uid: &str,
    now: i64,
    start: i64,
    end: i64,
    title: &str,
    organizer: Option<&str>,
) -> String {
    let mut out = String::new();
    for line in [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Lintel//CalDAV driver//EN",
        "BEGIN:VEVENT",
    ] {
        fold(line, &mut out);
    }
    fold(&format!("UID:{uid}"), &mut out);
    fold(&format!("DTSTAMP:{}", utc_stamp(now)), &mut out);
    fold(&format!("DTSTART:{}", utc_stamp(start)), &mut out);
    fold(&format!("DTEND:{}", utc_stamp(end)), &mut out);
    fold(&format!("SUMMARY:{}", escape(title)), &mut out);
    if let Some(o) = organizer {
        fold(&format!("ORGANIZER:mailto:{o}"), &mut out);
    }
    for line in [
        "STATUS:CONFIRMED",
        "TRANSP:OPAQUE",
        "END:VEVENT",
        "END:VCALENDAR",
    ] {
        fold(line, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: Tz = chrono_tz::UTC;

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn reads_folded_escaped_zoned_events() {
        let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:a-1\r\n\
            SUMMARY:Board\\, budget\\; Q1\\nreview with a very long title that is folde\r\n d over\r\n\
            DTSTART;TZID=Europe/London:20260701T090000\r\nDTEND;TZID=\"/mozilla.org/x/Europe/London\":20260701T100000\r\n\
            ORGANIZER;CN=\"Smith: Ann\":mailto:ann@example.com\r\nATTENDEE;CN=Bo:MAILTO:bo@example.com\r\n\
            ATTENDEE;CN=Cy:\r\nCLASS:PRIVATE\r\nBEGIN:VALARM\r\nUID:not-me\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\n\
            END:VEVENT\r\nEND:VCALENDAR\r\n";
        let p = parse(text, &UTC).unwrap();
        assert_eq!(p.skipped, Vec::<String>::new());
        let e = &p.events[0];
        assert_eq!(e.uid, "a-1");
        assert_eq!(
            e.title,
            "Board, budget; Q1\nreview with a very long title that is folded over"
        );
        assert_eq!(e.start, ts("2026-07-01T08:00:00Z"));
        assert_eq!(e.end, ts("2026-07-01T09:00:00Z"));
        assert_eq!(e.organizer.as_deref(), Some("ann@example.com"));
        assert_eq!(e.attendees, vec!["bo@example.com", "Cy"]);
        assert!(e.private && !e.all_day && !e.cancelled);
    }

    #[test]
    fn all_day_floating_duration_and_windows_zones() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let text = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:d\nDTSTART;VALUE=DATE:20260102\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:f\nDTSTART:20260102T120000\nDURATION:PT1H30M\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:w\nDTSTART;TZID=W. Europe Standard Time:20260102T120000\nDTEND;TZID=Nowhere/Zone:20260102T130000\nEND:VEVENT\nEND:VCALENDAR\n";
        let p = parse(text, &berlin).unwrap();
        assert_eq!(p.events.len(), 3);
        assert!(p.events[0].all_day);
        assert_eq!(p.events[0].start, ts("2026-01-01T23:00:00Z"));
        assert_eq!(p.events[0].end, ts("2026-01-02T23:00:00Z"));
        assert_eq!(p.events[1].start, ts("2026-01-02T11:00:00Z"));
        assert_eq!(p.events[1].end, ts("2026-01-02T12:30:00Z"));
        assert_eq!(p.events[2].start, ts("2026-01-02T11:00:00Z"));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn skips_bad_events_keeps_good_ones() {
        let text = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:bad-date\nDTSTART:2026-01-02\nEND:VEVENT\n\
            BEGIN:VEVENT\nSUMMARY:no uid\nDTSTART:20260102T120000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:backwards\nDTSTART:20260102T120000Z\nDTEND:20260102T110000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:garbage-line\nthis line has no colon\nDTSTART:20260102T120000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:ok\nDTSTART:20260102T120000Z\nDTEND:20260102T130000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:open\nDTSTART:20260102T120000Z\nEND:VCALENDAR\n";
        let p = parse(text, &UTC).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].uid, "ok");
        assert_eq!(p.skipped.len(), 5, "{:?}", p.skipped);
        assert!(parse("<html>", &UTC).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("PT1H30M"), Some(5400));
        assert_eq!(duration("P1W"), Some(604_800));
        assert_eq!(duration("-PT15M"), Some(-900));
        assert_eq!(duration("P1DT2H"), Some(93_600));
        assert_eq!(duration("PT"), None);
        assert_eq!(duration("P1H"), None);
        assert_eq!(duration("1H"), None);
    }

    #[test]
    fn writes_what_it_reads() {
        let text = new_event(
            "u-1",
            0,
            ts("2026-03-01T10:00:00Z"),
            ts("2026-03-01T11:00:00Z"),
            "Über, lange; Besprechung\\ mit sehr langem Titel, der gefaltet werden muss, ja",
            Some("x@example.com"),
        );
        assert!(text.lines().all(|l| l.trim_end_matches('\r').len() <= 75));
        let p = parse(&text, &UTC).unwrap();
        let e = &p.events[0];
        assert_eq!(
            e.title,
            "Über, lange; Besprechung\\ mit sehr langem Titel, der gefaltet werden muss, ja"
        );
        assert_eq!(
            (e.start, e.end),
            (ts("2026-03-01T10:00:00Z"), ts("2026-03-01T11:00:00Z"))
        );
        assert_eq!(e.organizer.as_deref(), Some("x@example.com"));
    }

    #[test]
    fn cjk_addresses_never_split_a_character() {
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:cjk\r\nDTSTART:20260102T120000Z\r\n\
            DTEND:20260102T130000Z\r\nSUMMARY:会議\r\nORGANIZER:東京会議室\r\nATTENDEE:東京会議室\r\n\
            ATTENDEE;CN=大阪:mailto:大阪@example.jp\r\nATTENDEE:MAILTO:x@example.com\r\nATTENDEE:会議\r\n\
            ATTENDEE:mailto\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let p = parse(text, &UTC).unwrap();
        let e = &p.events[0];
        assert_eq!(e.organizer.as_deref(), Some("東京会議室"));
        assert_eq!(
            e.attendees,
            [
                "東京会議室",
                "大阪@example.jp",
                "x@example.com",
                "会議",
                "mailto"
            ]
        );
        assert_eq!(strip_mailto("東京会議室"), "東京会議室");
        assert_eq!(strip_mailto("MailTo:東京@example.jp"), "東京@example.jp");
        assert_eq!(strip_mailto("mailto:"), "");
        assert_eq!(strip_mailto("é"), "é");
    }

    #[test]
    fn a_huge_duration_skips_the_event() {
        let text = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:huge\nDTSTART:20260102T120000Z\n\
            DURATION:PT9223372036854775807S\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:far\nDTSTART:20260102T120000Z\nDURATION:P9999999W\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:ok\nDTSTART:20260102T120000Z\nDURATION:PT1H\nEND:VEVENT\nEND:VCALENDAR\n";
        let p = parse(text, &UTC).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].uid, "ok");
        assert!(
            p.skipped[0].contains("event `huge`: DURATION"),
            "{:?}",
            p.skipped
        );
        assert!(p.skipped[0].contains("out of range"), "{:?}", p.skipped);
        assert!(
            p.skipped[1].contains("after the year 9999"),
            "{:?}",
            p.skipped
        );
    }

    #[test]
    fn occurrences_get_their_own_ids() {
        let text = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:s\nRECURRENCE-ID;TZID=Europe/Berlin:20260105T100000\n\
            DTSTART:20260105T090000Z\nDTEND:20260105T100000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:s\nRECURRENCE-ID;VALUE=DATE:20260106\nDTSTART:20260106T090000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:d\nDTSTART:20260105T090000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:d\nDTSTART:20260106T090000Z\nEND:VEVENT\n\
            BEGIN:VEVENT\nUID:lone\nDTSTART:20260106T090000Z\nEND:VEVENT\nEND:VCALENDAR\n";
        let p = parse(text, &UTC).unwrap();
        let ids: Vec<&str> = p.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "s#20260105T090000Z",
                "s#20260106T000000Z",
                "d#20260105T090000Z",
                "d#20260106T090000Z",
                "lone"
            ]
        );
        assert_eq!(p.events[0].recurrence_id, Some(ts("2026-01-05T09:00:00Z")));
        assert_eq!(
            split_occurrence_id("a#b@x#20260105T090000Z"),
            Some(("a#b@x", ts("2026-01-05T09:00:00Z")))
        );
        assert_eq!(split_occurrence_id("a#b"), None);
        assert_eq!(split_occurrence_id("#20260105T090000Z"), None);
        assert_eq!(split_occurrence_id("plain"), None);
        assert_eq!(split_occurrence_id("x#2026010_T090000Z"), None);
    }

    #[test]
    fn cancels_one_occurrence_with_an_exdate() {
        let series = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nEND:VTIMEZONE\r\n\
            BEGIN:VEVENT\r\nUID:s\r\nDTSTART;TZID=Europe/Berlin:20260105T100000\r\nDTEND;TZID=Europe/Berlin:20260105T110000\r\n\
            RRULE:FREQ=DAILY;COUNT=5\r\nSUMMARY:東京会議室の定例会議、とても長いタイトルなので折り返されます\r\n\
            BEGIN:VALARM\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\nEND:VEVENT\r\n\
            BEGIN:VEVENT\r\nUID:s\r\nRECURRENCE-ID;TZID=Europe/Berlin:20260107T100000\r\n\
            DTSTART;TZID=Europe/Berlin:20260107T120000\r\nDTEND;TZID=Europe/Berlin:20260107T130000\r\nEND:VEVENT\r\n\
            BEGIN:VEVENT\r\nUID:s\r\nRECURRENCE-ID;TZID=Europe/Berlin:20260108T100000\r\n\
            DTSTART;TZID=Europe/Berlin:20260108T120000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        // The moved occurrence of Jan 7 (10:00 Berlin = 09:00Z): its override goes too.
        let out = cancel_occurrence(series, "s", ts("2026-01-07T09:00:00Z"), &UTC).unwrap();
        assert!(out.lines().all(|l| l.len() <= 76), "{out}");
        assert!(
            out.contains("EXDATE;TZID=Europe/Berlin:20260107T100000\r\nEND:VEVENT"),
            "{out}"
        );
        assert!(!out.contains("20260107T120000"), "{out}");
        assert!(out.contains("RECURRENCE-ID;TZID=Europe/Berlin:20260108T100000"));
        assert!(out.contains("BEGIN:VALARM\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\nEXDATE"));
        let p = parse(&out, &UTC).unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(p.events[0].title.starts_with("東京会議室の定例会議"));
        // UTC and all-day series; floating in the default zone.
        let utc = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:u\nDTSTART:20260105T090000Z\nRRULE:FREQ=DAILY\nEND:VEVENT\nEND:VCALENDAR\n";
        let out = cancel_occurrence(utc, "u", ts("2026-01-06T09:00:00Z"), &UTC).unwrap();
        assert!(
            out.contains("EXDATE:20260106T090000Z\r\nEND:VEVENT"),
            "{out}"
        );
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let day = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:a\nDTSTART;VALUE=DATE:20260105\nRRULE:FREQ=DAILY\nEND:VEVENT\nEND:VCALENDAR\n";
        let out = cancel_occurrence(day, "a", ts("2026-01-05T23:00:00Z"), &berlin).unwrap();
        assert!(out.contains("EXDATE;VALUE=DATE:20260106\r\n"), "{out}");
        let floating = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:f\nDTSTART:20260105T100000\nRRULE:FREQ=DAILY\nEND:VEVENT\nEND:VCALENDAR\n";
        let out = cancel_occurrence(floating, "f", ts("2026-01-06T09:00:00Z"), &berlin).unwrap();
        assert!(out.contains("EXDATE:20260106T100000\r\n"), "{out}");
        // Not a series, another UID, not iCalendar: refused.
        let single = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:one\nDTSTART:20260105T090000Z\nEND:VEVENT\nEND:VCALENDAR\n";
        assert!(cancel_occurrence(single, "one", 0, &UTC).is_err());
        assert!(cancel_occurrence(utc, "other", 0, &UTC).is_err());
        assert!(cancel_occurrence("<html>", "u", 0, &UTC).is_err());
        assert!(is_series(series, "s") && is_series(utc, "u"));
        assert!(!is_series(single, "one") && !is_series(utc, "other"));
    }
}
