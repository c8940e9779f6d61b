//! Harness tests: every answer shape the server may give, scripted, in virtual time
//! (which starts at 2026-01-01T00:00:00Z).
//!
//! The bookings are read with a calendar-query `REPORT` (the main path: its request shape,
//! 207 multistatus answers, hrefs and ETags used by `cancel_booking`, server-expanded
//! recurrences, and every bad answer); a server answering REPORT with 405/501 is read with
//! `GET` of the collection (the fallback, tested at the end).

use lintel_driver_harness::{Harness, HttpAnswer, LogLevel, Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z, where virtual time starts.
const T0: i64 = 1_767_225_600;
const CAL: &str = "/room/calendar/";
const H: i64 = 3_600;

fn stamp(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// A VEVENT block (no VCALENDAR around it).
fn vevent(uid: &str, start: i64, end: i64, title: &str, extra: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20251201T000000Z\r\nDTSTART:{}\r\nDTEND:{}\r\nSUMMARY:{title}\r\n{extra}END:VEVENT\r\n",
        stamp(start),
        stamp(end)
    )
}

fn calendar(events: &[String]) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n{}END:VCALENDAR\r\n",
        events.concat()
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\r', "&#13;")
}

/// A 207 multistatus body: one `<response>` per (href, etag, calendar data).
fn multistatus(objects: &[(String, String, String)]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<multistatus xmlns=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\n",
    );
    for (href, etag, ics) in objects {
        out.push_str(&format!(
            "<response><href>{href}</href><propstat><prop><getetag>{}</getetag>\
             <C:calendar-data>{}</C:calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat></response>\n",
            xml_escape(etag),
            xml_escape(ics)
        ));
    }
    out.push_str("</multistatus>\n");
    out
}

/// The UID of a VEVENT block, if it has one.
fn uid_of(event: &str) -> Option<&str> {
    event.split("\r\n").find_map(|l| l.strip_prefix("UID:"))
}

/// A REPORT answer holding each event in its own calendar object `<CAL><uid>.ics`
/// (etag `"e-<uid>"`), as servers store them.
fn report(events: &[String]) -> Result<HttpAnswer, String> {
    let objects: Vec<(String, String, String)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let name = uid_of(e).map_or_else(|| format!("obj{i}"), str::to_string);
            (
                format!("{CAL}{name}.ics"),
                format!("\"e-{name}\""),
                calendar(std::slice::from_ref(e)),
            )
        })
        .collect();
    answer(207, &[], &multistatus(&objects))
}

fn ok(body: &str) -> Result<HttpAnswer, String> {
    answer(200, &[], body)
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Result<HttpAnswer, String> {
    Ok(HttpAnswer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    })
}

fn start(settings: Value) -> Harness {
    let mut base = json!({"calendar_path": CAL});
    for (k, v) in settings.as_object().unwrap() {
        base[k] = v.clone();
    }
    Harness::builder(lintel_bundled_drivers::CALDAV.component.to_vec())
        .settings(base)
        .start()
        .expect("the driver starts")
}

/// Started, with the first read (a REPORT) answered by `first`.
fn synced(settings: Value, first: Result<HttpAnswer, String>) -> Harness {
    let mut h = start(settings);
    h.answer_http("REPORT", CAL, first);
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 1, "one read after loading");
    h
}

fn empty() -> Harness {
    let h = synced(json!({}), report(&[]));
    assert_eq!(h.status("bookings"), Some(json!([])));
    h
}

fn has_log(h: &mut Harness, level: LogLevel, part: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| l.level == level && l.message.contains(part))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn methods(h: &Harness) -> Vec<String> {
    h.http_requests().iter().map(|r| r.method.clone()).collect()
}

/// Checks a request is the calendar-query REPORT for `[start, end)`.
fn assert_report(req: &lintel_driver_harness::HttpCall, start: i64, end: i64) {
    assert_eq!((req.method.as_str(), req.path.as_str()), ("REPORT", CAL));
    assert_eq!(header(&req.headers, "Depth"), Some("1"));
    assert_eq!(
        header(&req.headers, "Content-Type"),
        Some("application/xml; charset=utf-8")
    );
    let body = String::from_utf8(req.body.clone()).unwrap();
    let (s, e) = (stamp(start), stamp(end));
    for part in [
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>".to_string(),
        "<C:calendar-query xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">".into(),
        "<D:prop><D:getetag/>".into(),
        format!("<C:calendar-data><C:expand start=\"{s}\" end=\"{e}\"/></C:calendar-data>"),
        "<C:comp-filter name=\"VCALENDAR\"><C:comp-filter name=\"VEVENT\">".into(),
        format!("<C:time-range start=\"{s}\" end=\"{e}\"/>"),
        "</C:calendar-query>".into(),
    ] {
        assert!(body.contains(&part), "{part} in {body}");
    }
}

#[test]
fn polls_the_calendar_with_report_into_the_bookings_status() {
    let events = [
        // Out of the window (now - 1 h .. now + 24 h): before and after (a server filters
        // them; the driver does too).
        vevent("old", T0 - 3 * H, T0 - 2 * H, "Old", ""),
        vevent("late", T0 + 25 * H, T0 + 26 * H, "Too late", ""),
        vevent("cancelled", T0 + 2 * H, T0 + 3 * H, "Off", "STATUS:CANCELLED\r\n"),
        vevent(
            "b",
            T0 + 9 * H,
            T0 + 10 * H,
            "Board\\, Q1 & <co>",
            "ORGANIZER;CN=Ann:mailto:ann@example.com\r\nATTENDEE:mailto:bo@example.com\r\nATTENDEE;CN=Cy:MAILTO:cy@example.com\r\nCLASS:CONFIDENTIAL\r\n",
        ),
        // Started before the window, still running.
        vevent("running", T0 - 2 * H, T0 + H / 2, "Running", ""),
        // 10:00 in New York is 15:00 UTC.
        "BEGIN:VEVENT\r\nUID:ny\r\nDTSTART;TZID=America/New_York:20260101T100000\r\nDTEND;TZID=America/New_York:20260101T110000\r\nSUMMARY:NY\r\nEND:VEVENT\r\n".into(),
        // All day on 1 January (UTC), folded title.
        "BEGIN:VEVENT\r\nUID:day\r\nDTSTART;VALUE=DATE:20260101\r\nDTEND;VALUE=DATE:20260102\r\nSUMMARY:Whole\r\n  day\r\nEND:VEVENT\r\n".into(),
    ];
    let mut h = synced(json!({}), report(&events));
    let req = &h.http_requests()[0];
    assert_report(req, T0 - H, T0 + 24 * H);
    assert_eq!(req.timeout_ms, 3000);
    assert_eq!(
        h.status("bookings"),
        Some(json!([
            {"id": "running", "title": "Running", "start": T0 - 2 * H, "end": T0 + H / 2,
             "organizer": null, "attendees": [], "all_day": false, "private": false},
            {"id": "day", "title": "Whole day", "start": T0, "end": T0 + 24 * H,
             "organizer": null, "attendees": [], "all_day": true, "private": false},
            {"id": "b", "title": "Board, Q1 & <co>", "start": T0 + 9 * H, "end": T0 + 10 * H,
             "organizer": "ann@example.com", "attendees": ["bo@example.com", "cy@example.com"],
             "all_day": false, "private": true},
            {"id": "ny", "title": "NY", "start": T0 + 15 * H, "end": T0 + 16 * H,
             "organizer": null, "attendees": [], "all_day": false, "private": false},
        ]))
    );
    assert_eq!(h.status("last_sync"), Some(json!(T0)));
    assert_eq!(h.status("last_error"), None, "never set while all is well");
    assert!(
        !h.logs().iter().any(|l| l.level == LogLevel::Warn),
        "{:?}",
        h.logs()
    );

    // The next poll, one period later, asks for the moved window and sees a change.
    h.answer_http(
        "REPORT",
        CAL,
        report(&[vevent("n", T0 + H, T0 + 2 * H, "New", "")]),
    );
    // The poll timer started at load (10 ms before the first read).
    h.advance(Duration::from_millis(59_989));
    assert_eq!(h.http_requests().len(), 1, "no poll before its period");
    h.advance(Duration::from_millis(1));
    assert_eq!(methods(&h), ["REPORT", "REPORT"], "never a GET");
    assert_report(&h.http_requests()[1], T0 + 60 - H, T0 + 60 + 24 * H);
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("n"));
    assert_eq!(h.status("last_sync"), Some(json!(T0 + 60)));
}

#[test]
fn recurring_events_come_expanded_by_the_server() {
    // What a server answers to `<C:expand>`: one object, one VEVENT per occurrence
    // (RECURRENCE-ID, no RRULE), all with the series' UID.
    let occurrences: Vec<String> = (0..3)
        .map(|d| {
            vevent(
                "daily@example.com",
                T0 + 9 * H + d * 24 * H,
                T0 + 10 * H + d * 24 * H,
                "Daily",
                &format!("RECURRENCE-ID:{}\r\n", stamp(T0 + 9 * H + d * 24 * H)),
            )
        })
        .collect();
    let object = (
        format!("{CAL}series.ics"),
        "\"s-1\"".to_string(),
        calendar(&occurrences),
    );
    let mut h = synced(
        json!({"lookahead_hours": 72}),
        answer(207, &[], &multistatus(std::slice::from_ref(&object))),
    );
    assert_report(&h.http_requests()[0], T0 - H, T0 + 72 * H);
    let b = h.status("bookings").unwrap();
    let got: Vec<(Value, Value, Value)> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].clone(), b["start"].clone(), b["end"].clone()))
        .collect();
    // Each occurrence has its own id: `<uid>#<RECURRENCE-ID in UTC>`.
    assert_eq!(
        got,
        [0, 1, 2].map(|d| (
            json!(format!(
                "daily@example.com#{}",
                stamp(T0 + 9 * H + d * 24 * H)
            )),
            json!(T0 + 9 * H + d * 24 * H),
            json!(T0 + 10 * H + d * 24 * H)
        ))
    );

    // free_busy sees each occurrence.
    h.answer_http(
        "REPORT",
        CAL,
        answer(207, &[], &multistatus(std::slice::from_ref(&object))),
    );
    assert_eq!(
        h.exec("free_busy", json!([T0 + 24 * H, T0 + 48 * H])),
        Ok(json!([{"start": T0 + 33 * H, "end": T0 + 34 * H}]))
    );
    assert_report(&h.http_requests()[1], T0 + 24 * H, T0 + 48 * H);

    // Cancelling one occurrence: the stored series (GET, with its ETag) gets an EXDATE
    // and is written back with If-Match; it is never deleted.
    let path = format!("{CAL}series.ics");
    let stored = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:daily@example.com\r\n\
         DTSTART:{}\r\nDTEND:{}\r\nRRULE:FREQ=DAILY\r\nSUMMARY:Daily\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        stamp(T0 + 9 * H),
        stamp(T0 + 10 * H)
    );
    h.answer_http("GET", &path, answer(200, &[("ETag", "\"s-2\"")], &stored));
    h.answer_http("PUT", &path, answer(204, &[("ETag", "\"s-3\"")], ""));
    let rest = [&occurrences[0], &occurrences[2]].map(|e| e.clone());
    let object2 = (path.clone(), "\"s-3\"".to_string(), calendar(&rest));
    h.answer_http(
        "REPORT",
        CAL,
        answer(207, &[], &multistatus(std::slice::from_ref(&object2))),
    );
    let second = format!("daily@example.com#{}", stamp(T0 + 33 * H));
    assert_eq!(
        h.exec("cancel_booking", json!([second, "holiday"])),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "REPORT", "GET", "PUT", "REPORT"]);
    assert_eq!(reqs[2].path, path);
    assert_eq!(reqs[3].path, path);
    assert_eq!(header(&reqs[3].headers, "If-Match"), Some("\"s-2\""));
    assert_eq!(header(&reqs[3].headers, "If-None-Match"), None);
    let put = String::from_utf8(reqs[3].body.clone()).unwrap();
    assert!(
        put.contains(&format!(
            "RRULE:FREQ=DAILY\r\nSUMMARY:Daily\r\nEXDATE:{}\r\nEND:VEVENT",
            stamp(T0 + 33 * H)
        )),
        "{put}"
    );
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        &format!("cancelled occurrence {second} (the series stays): holiday")
    ));
    assert_eq!(h.status("bookings").unwrap().as_array().unwrap().len(), 2);

    // The bare UID names the whole series: refused, nothing deleted.
    h.answer_http("GET", &path, answer(200, &[("ETag", "\"s-3\"")], &stored));
    assert_eq!(
        h.exec("cancel_booking", json!(["daily@example.com"])),
        Err("booking `daily@example.com` is a recurring series; cancel one occurrence by its id `daily@example.com#<YYYYMMDDTHHMMSSZ>` (as in the bookings status): the series is not deleted".into())
    );
    // The series changed meanwhile: 412, not cancelled.
    h.answer_http("GET", &path, answer(200, &[("ETag", "\"s-3\"")], &stored));
    h.answer_http("PUT", &path, answer(412, &[], ""));
    let third = format!("daily@example.com#{}", stamp(T0 + 57 * H));
    assert_eq!(
        h.exec("cancel_booking", json!([third])),
        Err(format!(
            "booking `{third}` changed on the server since it was read (HTTP 412); not cancelled: try again"
        ))
    );
    // An occurrence of an object that is no series: refused.
    h.answer_http(
        "GET",
        &format!("{CAL}single.ics"),
        answer(
            200,
            &[("ETag", "\"1\"")],
            &calendar(&[vevent("single", T0, T0 + H, "S", "")]),
        ),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["single#20260101T000000Z"])),
        Err("booking `single#20260101T000000Z`: the object holds no recurring series with UID `single`; not cancelled".into())
    );
    assert!(
        !methods(&h).iter().any(|m| m == "DELETE"),
        "a series is never deleted"
    );
}

#[test]
fn occurrence_ids_without_recurrence_id_and_weak_etags() {
    // A server expanding without RECURRENCE-ID: the occurrences' starts make the ids.
    let occurrences: Vec<String> = (0..2)
        .map(|d| {
            vevent(
                "r",
                T0 + 9 * H + d * 24 * H,
                T0 + 10 * H + d * 24 * H,
                "R",
                "",
            )
        })
        .collect();
    let object = (
        format!("{CAL}r.ics"),
        "W/\"weak\"".to_string(),
        calendar(&occurrences),
    );
    let mut h = synced(
        json!({"lookahead_hours": 72}),
        answer(207, &[], &multistatus(std::slice::from_ref(&object))),
    );
    let ids: Vec<Value> = h
        .status("bookings")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            json!(format!("r#{}", stamp(T0 + 9 * H))),
            json!(format!("r#{}", stamp(T0 + 33 * H)))
        ]
    );
    // A weak ETag never goes into If-Match: the object is read again for a strong one.
    let stored = format!(
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:r\r\nDTSTART:{}\r\nRRULE:FREQ=DAILY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        stamp(T0 + 9 * H)
    );
    h.answer_http(
        "GET",
        &object.0,
        answer(200, &[("ETag", "W/\"still-weak\"")], &stored),
    );
    h.answer_http("PUT", &object.0, answer(201, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(
        h.exec(
            "cancel_booking",
            json!([format!("r#{}", stamp(T0 + 9 * H))])
        ),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "GET", "PUT", "REPORT"]);
    assert_eq!(header(&reqs[2].headers, "If-Match"), None);
    assert!(has_log(&mut h, LogLevel::Warn, "no strong ETag"));
}

#[test]
fn floating_and_all_day_times_read_in_the_time_zone_setting() {
    let events = [
        "BEGIN:VEVENT\r\nUID:f\r\nDTSTART:20260101T090000\r\nDURATION:PT30M\r\nSUMMARY:Floating\r\nEND:VEVENT\r\n".into(),
        "BEGIN:VEVENT\r\nUID:d\r\nDTSTART;VALUE=DATE:20260101\r\nSUMMARY:Day\r\nEND:VEVENT\r\n".into(),
    ];
    let h = synced(json!({"time_zone": "Asia/Tokyo"}), report(&events));
    let b = h.status("bookings").unwrap();
    // Tokyo is UTC+9: midnight there is 15:00 UTC the day before.
    assert_eq!(b[0]["id"], json!("d"));
    assert_eq!(
        (b[0]["start"].clone(), b[0]["end"].clone()),
        (json!(T0 - 9 * H), json!(T0 + 15 * H))
    );
    assert_eq!(b[1]["id"], json!("f"));
    assert_eq!(b[1]["start"], json!(T0));
    assert_eq!(b[1]["end"], json!(T0 + H / 2));
}

#[test]
fn list_bookings_answers_the_range_sorted() {
    let mut h = empty();
    let events = [
        vevent("c", T0 + 50 * H, T0 + 51 * H, "C", ""),
        vevent("a", T0 + 48 * H, T0 + 49 * H, "A", "CLASS:PRIVATE\r\n"),
        vevent("x", T0 + 60 * H, T0 + 61 * H, "Outside", ""),
        vevent(
            "z",
            T0 + 49 * H,
            T0 + 50 * H,
            "Cancelled",
            "STATUS:CANCELLED\r\n",
        ),
    ];
    h.answer_http("REPORT", CAL, report(&events));
    let got = h
        .exec("list_bookings", json!([T0 + 48 * H, T0 + 52 * H]))
        .unwrap();
    assert_report(&h.http_requests()[1], T0 + 48 * H, T0 + 52 * H);
    let ids: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(got[0]["private"], json!(true));

    assert_eq!(
        h.exec("list_bookings", json!([T0, T0])),
        Err(format!("end ({T0}) must be after start ({T0})"))
    );
    assert!(
        h.exec("list_bookings", json!([T0, T0 + 400 * 24 * H]))
            .unwrap_err()
            .contains("at most 366 days")
    );
    assert!(
        h.exec("list_bookings", json!([-5, T0])).is_err(),
        "the schema refuses negative times"
    );
    assert!(h.exec("list_bookings", json!(["soon", T0])).is_err());
    assert_eq!(
        h.http_requests().len(),
        2,
        "bad ranges never reach the server"
    );
}

#[test]
fn free_busy_merges_overlapping_events() {
    let mut h = empty();
    let events = [
        vevent("a", T0 + 8 * H, T0 + 10 * H, "A", ""),
        vevent("b", T0 + 9 * H, T0 + 11 * H, "B", ""),
        vevent("c", T0 + 11 * H, T0 + 12 * H, "Adjacent", ""),
        vevent(
            "t",
            T0 + 13 * H,
            T0 + 14 * H,
            "Transparent",
            "TRANSP:TRANSPARENT\r\n",
        ),
        vevent(
            "x",
            T0 + 15 * H,
            T0 + 16 * H,
            "Cancelled",
            "STATUS:CANCELLED\r\n",
        ),
        vevent("d", T0 + 17 * H, T0 + 20 * H, "Clipped", ""),
    ];
    h.answer_http("REPORT", CAL, report(&events));
    assert_eq!(
        h.exec("free_busy", json!([T0 + 6 * H, T0 + 18 * H])),
        Ok(json!([
            {"start": T0 + 8 * H, "end": T0 + 12 * H},
            {"start": T0 + 17 * H, "end": T0 + 18 * H},
        ]))
    );
    assert_report(&h.http_requests()[1], T0 + 6 * H, T0 + 18 * H);
}

#[test]
fn create_booking_puts_a_new_event_then_refreshes() {
    let mut h = empty();
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    // The overlap check sees an adjacent booking only.
    h.answer_http(
        "REPORT",
        CAL,
        report(&[vevent("before", T0 + H, s, "Before", "")]),
    );
    let uid = lintel_driver_caldav::booking_uid(
        (T0 * 1000) as u64 + 10,
        1,
        CAL,
        s,
        e,
        "Stand-up; team, all",
    );
    let path = format!("{CAL}{uid}.ics");
    h.answer_http("PUT", &path, answer(201, &[("ETag", "\"e1\"")], ""));
    h.answer_http(
        "REPORT",
        CAL,
        report(&[vevent(&uid, s, e, "Stand-up\\; team\\, all", "")]),
    );
    let got = h
        .exec(
            "create_booking",
            json!([s, e, "  Stand-up; team, all ", "mailto:ann@example.com"]),
        )
        .unwrap();
    assert_eq!(
        got,
        json!({"id": uid, "title": "Stand-up; team, all", "start": s, "end": e,
               "organizer": "ann@example.com", "attendees": [], "all_day": false, "private": false})
    );
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "REPORT", "PUT", "REPORT"]);
    // The overlap check asks for exactly the new booking's range.
    assert_report(&reqs[1], s, e);
    let put = &reqs[2];
    assert_eq!(
        (put.method.as_str(), put.path.as_str()),
        ("PUT", path.as_str())
    );
    assert_eq!(header(&put.headers, "If-None-Match"), Some("*"));
    assert_eq!(
        header(&put.headers, "Content-Type"),
        Some("text/calendar; charset=utf-8")
    );
    let body = String::from_utf8(put.body.clone()).unwrap();
    for line in [
        "BEGIN:VCALENDAR\r\n",
        &format!("UID:{uid}\r\n"),
        "DTSTART:20260101T020000Z\r\n",
        "DTEND:20260101T030000Z\r\n",
        "SUMMARY:Stand-up\\; team\\, all\r\n",
        "ORGANIZER:mailto:ann@example.com\r\n",
        "END:VCALENDAR\r\n",
    ] {
        assert!(body.contains(line), "{line:?} in {body}");
    }
    // Refreshed after the create.
    assert_report(&reqs[3], T0 - H, T0 + 24 * H);
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!(uid));
}

#[test]
fn create_booking_refuses_an_overlap_unless_allowed() {
    let mut h = empty();
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    let busy = [vevent("taken", T0 + 2 * H + 1800, T0 + 4 * H, "Taken", "")];
    h.answer_http("REPORT", CAL, report(&busy));
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(
        err.contains(
            "already booked from 20260101T023000Z to 20260101T040000Z (`Taken`, id taken)"
        ),
        "{err}"
    );
    assert_eq!(methods(&h), ["REPORT", "REPORT"], "no PUT");

    // A cancelled or transparent event does not block.
    let free = [
        vevent("x", s, e, "Cancelled", "STATUS:CANCELLED\r\n"),
        vevent("t", s, e, "Transparent", "TRANSP:TRANSPARENT\r\n"),
    ];
    h.answer_http("REPORT", CAL, report(&free));
    let uid = lintel_driver_caldav::booking_uid((T0 * 1000) as u64 + 10, 2, CAL, s, e, "Mine");
    h.answer_http("PUT", &format!("{CAL}{uid}.ics"), answer(204, &[], ""));
    h.answer_http("REPORT", CAL, report(&free));
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])).unwrap()["id"],
        json!(uid)
    );

    // With allow_overlap, no check: straight to the PUT.
    let mut h = synced(json!({"allow_overlap": true}), report(&busy));
    let uid = lintel_driver_caldav::booking_uid((T0 * 1000) as u64 + 10, 1, CAL, s, e, "Mine");
    h.answer_http("PUT", &format!("{CAL}{uid}.ics"), answer(201, &[], ""));
    h.answer_http("REPORT", CAL, report(&busy));
    assert!(h.exec("create_booking", json!([s, e, "Mine"])).is_ok());
    assert_eq!(methods(&h), ["REPORT", "PUT", "REPORT"]);
}

#[test]
fn create_booking_reports_a_clash_and_bad_arguments() {
    let mut h = empty();
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    h.answer_http("REPORT", CAL, report(&[]));
    let uid = lintel_driver_caldav::booking_uid((T0 * 1000) as u64 + 10, 1, CAL, s, e, "T");
    h.answer_http("PUT", &format!("{CAL}{uid}.ics"), answer(412, &[], ""));
    assert_eq!(
        h.exec("create_booking", json!([s, e, "T"])),
        Err(format!(
            "an event with UID {uid} already exists (HTTP 412); not created"
        ))
    );
    assert_eq!(
        h.status("last_error"),
        None,
        "a refused create is not a server problem"
    );

    for (args, want) in [
        (json!([e, s, "T"]), "must be after start"),
        (
            json!([s, e, "T", "not-an-address"]),
            "is not an e-mail address",
        ),
        (
            json!([s, e, "T", "a b@example.com"]),
            "is not an e-mail address",
        ),
        (json!([s, e, "   "]), "title must be 1 to 255 characters"),
    ] {
        let err = h.exec("create_booking", args.clone()).unwrap_err();
        assert!(err.contains(want), "{args}: {err}");
    }
    assert!(
        h.exec("create_booking", json!([s, e, ""])).is_err(),
        "the schema's minLength"
    );
    assert!(
        h.exec("create_booking", json!([s, e, "x".repeat(256)]))
            .is_err()
    );
    assert_eq!(
        h.http_requests().len(),
        3,
        "bad arguments never reach the server"
    );
}

#[test]
fn cancel_booking_deletes_the_href_with_the_etag_from_the_report() {
    // Events stored under names that are not `<uid>.ics` (as other clients do), one href
    // a full URL (allowed by RFC 4918).
    let objects = [
        (
            format!("{CAL}Zm9v-other%20name.ics"),
            "\"etag-7\"".to_string(),
            calendar(&[vevent("evt 1@example.com", T0 + H, T0 + 2 * H, "X", "")]),
        ),
        (
            format!("https://cal.example.com{CAL}0001.ics"),
            "W/\"weak-2\"".to_string(),
            calendar(&[vevent("second", T0 + 3 * H, T0 + 4 * H, "Y", "")]),
        ),
    ];
    let mut h = synced(json!({}), answer(207, &[], &multistatus(&objects)));
    assert_eq!(h.status("bookings").unwrap().as_array().unwrap().len(), 2);

    let path = format!("{CAL}Zm9v-other%20name.ics");
    h.answer_http("DELETE", &path, answer(204, &[], ""));
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&objects[1..])));
    assert_eq!(
        h.exec(
            "cancel_booking",
            json!(["evt 1@example.com", "room closed"])
        ),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "DELETE", "REPORT"], "no GET first");
    assert_eq!(reqs[1].path, path);
    assert_eq!(header(&reqs[1].headers, "If-Match"), Some("\"etag-7\""));
    assert_report(&reqs[2], T0 - H, T0 + 24 * H);
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "cancelled booking evt 1@example.com: room closed"
    ));
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("second"));

    // The full-URL href: its path under the calendar. Its ETag is weak (never matches
    // If-Match): the object is read again for a strong one.
    let path = format!("{CAL}0001.ics");
    h.answer_http(
        "GET",
        &path,
        answer(200, &[("ETag", "\"strong-2\"")], &objects[1].2),
    );
    h.answer_http("DELETE", &path, answer(200, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(h.exec("cancel_booking", json!(["second"])), Ok(Value::Null));
    let reqs = h.http_requests();
    assert_eq!(methods(&h)[3..6], ["GET", "DELETE", "REPORT"]);
    assert_eq!(reqs[3].path, path);
    assert_eq!(reqs[4].path, path);
    assert_eq!(header(&reqs[4].headers, "If-Match"), Some("\"strong-2\""));
    assert_eq!(h.status("bookings"), Some(json!([])));

    // Events seen by list_bookings (outside the status window) are known too.
    let later = [(
        format!("{CAL}later-name.ics"),
        "\"l\"".to_string(),
        calendar(&[vevent("later", T0 + 100 * H, T0 + 101 * H, "L", "")]),
    )];
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&later)));
    h.exec("list_bookings", json!([T0 + 99 * H, T0 + 102 * H]))
        .unwrap();
    h.answer_http("DELETE", &later[0].0, answer(204, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(h.exec("cancel_booking", json!(["later"])), Ok(Value::Null));
    assert_eq!(methods(&h)[7], "DELETE");
    assert_eq!(h.http_requests()[7].path, later[0].0);

    // Still weak when read again: deleted without If-Match, and said so.
    let weak = [(
        format!("{CAL}w.ics"),
        "W/\"w\"".to_string(),
        calendar(&[vevent("w", T0 + 100 * H, T0 + 101 * H, "W", "")]),
    )];
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&weak)));
    h.exec("list_bookings", json!([T0 + 99 * H, T0 + 102 * H]))
        .unwrap();
    h.answer_http(
        "GET",
        &weak[0].0,
        answer(200, &[("ETag", "W/\"w2\"")], &weak[0].2),
    );
    h.answer_http("DELETE", &weak[0].0, answer(204, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(h.exec("cancel_booking", json!(["w"])), Ok(Value::Null));
    let reqs = h.http_requests();
    let del = reqs.iter().rposition(|r| r.method == "DELETE").unwrap();
    assert_eq!(reqs[del - 1].method, "GET");
    assert_eq!(header(&reqs[del].headers, "If-Match"), None);
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        &format!(
            "the server gave no strong ETag for `{CAL}w.ics` (W/\"w2\"): deleting without If-Match"
        )
    ));
}

#[test]
fn cancel_booking_of_an_unseen_id_reads_its_uid_object_first() {
    let mut h = empty();
    let id = "evt 1@example.com";
    let path = format!("{CAL}evt%201@example.com.ics");
    h.answer_http(
        "GET",
        &path,
        answer(
            200,
            &[("ETag", "\"etag-7\"")],
            &calendar(&[vevent(id, T0 + H, T0 + 2 * H, "X", "")]),
        ),
    );
    h.answer_http("DELETE", &path, answer(204, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(
        h.exec("cancel_booking", json!([id, "room closed"])),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "GET", "DELETE", "REPORT"]);
    assert_eq!(reqs[1].path, path);
    assert_eq!(
        (reqs[2].method.as_str(), reqs[2].path.as_str()),
        ("DELETE", path.as_str())
    );
    assert_eq!(header(&reqs[2].headers, "If-Match"), Some("\"etag-7\""));
}

#[test]
fn cancel_booking_reports_unknown_changed_and_mismatched_events() {
    let objects = [(
        format!("{CAL}stored-as-this.ics"),
        "\"1\"".to_string(),
        calendar(&[vevent("a", T0 + H, T0 + 2 * H, "A", "")]),
    )];
    let mut h = synced(json!({}), answer(207, &[], &multistatus(&objects)));
    h.answer_http("GET", &format!("{CAL}nope.ics"), answer(404, &[], ""));
    assert_eq!(
        h.exec("cancel_booking", json!(["nope"])),
        Err(format!(
            "no booking with id `nope` (HTTP 404 for {CAL}nope.ics)"
        ))
    );
    assert_eq!(
        h.status("last_error"),
        None,
        "an unknown id is not a server problem"
    );

    // Changed since the REPORT read it: not deleted, and read again.
    h.answer_http("DELETE", &objects[0].0, answer(412, &[], ""));
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&objects)));
    assert_eq!(
        h.exec("cancel_booking", json!(["a"])),
        Err("booking `a` changed on the server since it was read (HTTP 412); not cancelled: try again".into())
    );
    assert_eq!(methods(&h), ["REPORT", "GET", "DELETE", "REPORT"]);
    assert_eq!(
        header(&h.http_requests()[2].headers, "If-Match"),
        Some("\"1\"")
    );

    // Deleted behind the driver's back since it was read: 404.
    h.answer_http("DELETE", &objects[0].0, answer(404, &[], ""));
    assert_eq!(
        h.exec("cancel_booking", json!(["a"])),
        Err("no booking with id `a` (HTTP 404)".into())
    );

    // The object at <id>.ics holds another event: nothing is deleted.
    h.answer_http(
        "GET",
        &format!("{CAL}b.ics"),
        answer(200, &[], &objects[0].2),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["b"])),
        Err(format!(
            "{CAL}b.ics does not hold booking `b`; not cancelled"
        ))
    );
    assert!(
        !h.http_requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with("b.ics"))
    );
    assert!(h.exec("cancel_booking", json!([""])).is_err());
}

#[test]
fn authentication_failure_is_reported_then_recovers() {
    for code in [401u16, 403] {
        let mut h = synced(
            json!({}),
            answer(
                code,
                &[("WWW-Authenticate", "Basic realm=\"Radicale\"")],
                "Access denied",
            ),
        );
        let want = format!(
            "authentication failed (HTTP {code}): check the module's basic_auth credentials"
        );
        assert_eq!(h.status("last_error"), Some(json!(want)));
        assert_eq!(h.status("bookings"), None);
        assert!(has_log(&mut h, LogLevel::Warn, &want));
        h.answer_http("REPORT", CAL, answer(code, &[], ""));
        assert_eq!(
            h.exec("list_bookings", json!([T0, T0 + H])),
            Err(want.clone())
        );

        h.answer_http("REPORT", CAL, report(&[]));
        assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
        assert_eq!(h.status("last_error"), Some(Value::Null));
        assert!(has_log(
            &mut h,
            LogLevel::Info,
            "the calendar answers again"
        ));
        assert_eq!(methods(&h), ["REPORT", "REPORT", "REPORT"]);
    }
}

#[test]
fn a_wrong_calendar_path_says_so() {
    let mut h = start(json!({"calendar_path": "/room/nowhere"}));
    h.answer_http(
        "REPORT",
        "/room/nowhere/",
        answer(404, &[], "The requested resource could not be found."),
    );
    h.advance(Duration::from_millis(10));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "calendar not found (HTTP 404): check calendar_path `/room/nowhere/`"
        ))
    );
}

#[test]
fn retry_after_is_obeyed_then_the_driver_recovers() {
    let mut h = synced(
        json!({}),
        answer(503, &[("Retry-After", "120")], "maintenance"),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!("server error (HTTP 503); retrying in 120 s"))
    );
    // Functions are refused while waiting, without asking the server.
    let err = h.exec("list_bookings", json!([T0, T0 + H])).unwrap_err();
    assert!(
        err.starts_with("server error (HTTP 503); retrying in"),
        "{err}"
    );
    assert!(h.exec("refresh", json!([])).is_err());
    assert!(h.exec("cancel_booking", json!(["a"])).is_err());
    // The regular poll at 60 s is skipped.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.http_requests().len(), 1);
    h.answer_http(
        "REPORT",
        CAL,
        report(&[vevent("a", T0 + H, T0 + 2 * H, "A", "")]),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(methods(&h), ["REPORT", "REPORT"], "asked again after 120 s");
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"));
}

#[test]
fn too_many_requests_backs_off_by_date_or_default() {
    // An HTTP date 300 s after the virtual start.
    let mut h = synced(
        json!({}),
        answer(429, &[("Retry-After", "Thu, 01 Jan 2026 00:05:00 GMT")], ""),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!("server busy (HTTP 429); retrying in 300 s"))
    );
    h.advance(Duration::from_secs(250));
    assert_eq!(h.http_requests().len(), 1);
    h.answer_http("REPORT", CAL, report(&[]));
    h.advance(Duration::from_secs(50));
    assert_eq!(h.http_requests().len(), 2);
    assert_eq!(h.status("last_error"), Some(Value::Null));

    // No Retry-After: 60 s. An absurd one is capped at an hour.
    let h = synced(json!({}), answer(429, &[], ""));
    assert_eq!(
        h.status("last_error"),
        Some(json!("server busy (HTTP 429); retrying in 60 s"))
    );
    let h = synced(json!({}), answer(503, &[("Retry-After", "99999999")], ""));
    assert_eq!(
        h.status("last_error"),
        Some(json!("server error (HTTP 503); retrying in 3600 s"))
    );
}

#[test]
fn a_server_error_without_retry_after_waits_for_the_next_poll() {
    let mut h = synced(json!({"poll_every_ms": 5000}), answer(500, &[], "boom"));
    assert_eq!(
        h.status("last_error"),
        Some(json!("server error (HTTP 500)"))
    );
    h.answer_http("REPORT", CAL, answer(502, &[], "<html>bad gateway</html>"));
    h.advance(Duration::from_millis(5000));
    assert_eq!(
        h.status("last_error"),
        Some(json!("server error (HTTP 502)"))
    );
    h.answer_http("REPORT", CAL, report(&[]));
    h.advance(Duration::from_millis(5000));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(methods(&h), ["REPORT", "REPORT", "REPORT"]);
}

#[test]
fn timeouts_and_unreachable_servers_are_reported_then_recover() {
    let mut h = synced(
        json!({"poll_every_ms": 5000}),
        Err("no answer within 3000 ms".into()),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "no answer from the calendar server: no answer within 3000 ms"
        ))
    );
    h.answer_http(
        "REPORT",
        CAL,
        Err("request failed: connection refused".into()),
    );
    h.advance(Duration::from_millis(5000));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "no answer from the calendar server: request failed: connection refused"
        ))
    );
    assert!(has_log(&mut h, LogLevel::Warn, "connection refused"));
    h.answer_http("REPORT", CAL, report(&[]));
    h.advance(Duration::from_millis(5000));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("bookings"), Some(json!([])));
    assert_eq!(methods(&h), ["REPORT", "REPORT", "REPORT"]);
}

#[test]
fn malformed_replies_set_last_error_and_keep_the_last_bookings() {
    let good = report(&[vevent("a", T0 + H, T0 + 2 * H, "A", "")]);
    let mut h = synced(json!({"poll_every_ms": 5000}), good.clone());
    for (status, body, want) in [
        (
            207,
            b"<html><body>Login</body></html>".to_vec(),
            "malformed answer: expected a DAV multistatus, got <html>",
        ),
        (
            207,
            vec![0xff, 0xfe, 0x00, 0x42],
            "malformed answer: not UTF-8",
        ),
        (
            207,
            Vec::new(),
            "malformed answer: malformed XML: no multistatus element",
        ),
        (
            207,
            b"not xml at all".to_vec(),
            "malformed answer: malformed XML",
        ),
        // Cut off in the middle.
        (
            207,
            format!("<D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>{CAL}a.ics").into_bytes(),
            "malformed answer: malformed XML",
        ),
        // Mismatched tags.
        (
            207,
            b"<D:multistatus xmlns:D=\"DAV:\"><D:response></D:href></D:multistatus>".to_vec(),
            "malformed answer: malformed XML at byte",
        ),
        // A login page with 200 instead of a multistatus.
        (
            200,
            b"<html>Please log in</html>".to_vec(),
            "unexpected answer to REPORT: HTTP 200",
        ),
    ] {
        h.answer_http(
            "REPORT",
            CAL,
            Ok(HttpAnswer {
                status,
                headers: vec![],
                body: body.clone(),
            }),
        );
        h.advance(Duration::from_millis(5000));
        let e = h.status("last_error").unwrap();
        assert!(
            e.as_str().is_some_and(|e| e.starts_with(want)),
            "{}: {e}",
            String::from_utf8_lossy(&body)
        );
        assert!(has_log(&mut h, LogLevel::Warn, want));
        assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"), "kept");
    }
    // A 3xx is not followed.
    h.answer_http(
        "REPORT",
        CAL,
        answer(302, &[("Location", "/elsewhere")], ""),
    );
    h.advance(Duration::from_millis(5000));
    assert_eq!(
        h.status("last_error"),
        Some(json!("unexpected answer to the calendar query: HTTP 302"))
    );
    // A list_bookings call gets the reason.
    h.answer_http("REPORT", CAL, answer(207, &[], "<oops"));
    let err = h.exec("list_bookings", json!([T0, T0 + H])).unwrap_err();
    assert!(err.starts_with("malformed answer: malformed XML"), "{err}");
    // And a good answer clears it.
    h.answer_http("REPORT", CAL, good);
    h.advance(Duration::from_millis(5000));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "the calendar answers again"
    ));
    assert!(h.error().is_none(), "the driver never crashed");
    assert!(methods(&h).iter().all(|m| m == "REPORT"));
}

#[test]
fn malformed_events_are_skipped_and_logged() {
    let one_object = calendar(&[
        vevent("good-1", T0 + H, T0 + 2 * H, "One", ""),
        "BEGIN:VEVENT\r\nUID:bad-start\r\nDTSTART:tomorrow\r\nSUMMARY:x\r\nEND:VEVENT\r\n".into(),
        "BEGIN:VEVENT\r\nSUMMARY:no uid\r\nDTSTART:20260101T050000Z\r\nEND:VEVENT\r\n".into(),
        "BEGIN:VEVENT\r\nUID:bad-line\r\nDTSTART:20260101T050000Z\r\ngarbage without colon\r\nEND:VEVENT\r\n".into(),
        "BEGIN:VEVENT\r\nUID:bad-nest\r\nDTSTART:20260101T050000Z\r\nBEGIN:VALARM\r\nEND:VEVENT\r\nEND:VALARM\r\n".into(),
        vevent("good-2", T0 + 3 * H, T0 + 4 * H, "Two", ""),
        "BEGIN:VEVENT\r\nUID:tz\r\nDTSTART;TZID=Mars/Olympus:20260101T060000\r\nDTEND;TZID=Mars/Olympus:20260101T070000\r\nSUMMARY:Unknown zone\r\nEND:VEVENT\r\n".into(),
    ]);
    let mut body = multistatus(&[
        (
            format!("{CAL}garbage.ics"),
            "\"g\"".into(),
            "this is not iCalendar".into(),
        ),
        (format!("{CAL}many.ics"), "\"m\"".into(), one_object),
    ]);
    // A response whose calendar-data was not found (404 propstat) is ignored, and one
    // without an href too.
    body = body.replace(
        "</multistatus>",
        &format!(
            "<response><href>{CAL}gone.ics</href><propstat><prop><C:calendar-data/></prop>\
             <status>HTTP/1.1 404 Not Found</status></propstat></response>\
             <response><propstat><prop><getetag>\"x\"</getetag></prop></propstat></response>\
             </multistatus>"
        ),
    );
    let mut h = synced(json!({}), answer(207, &[], &body));
    let ids: Vec<String> = h
        .status("bookings")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["good-1", "good-2", "tz"]);
    assert_eq!(h.status("last_error"), None);
    let logs: Vec<String> = h
        .logs()
        .iter()
        .filter(|l| l.level == LogLevel::Warn)
        .map(|l| l.message.clone())
        .collect();
    let skipped = logs
        .iter()
        .find(|l| l.starts_with("skipped 5 malformed event(s): "))
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert!(
        skipped.contains(&format!(
            "{CAL}garbage.ics: not an iCalendar object (starts with `this is not iCalendar`)"
        )),
        "{skipped}"
    );
    assert!(
        skipped.contains("event `bad-start`: DTSTART `tomorrow` is not a DATE-TIME"),
        "{skipped}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("unknown TZID `Mars/Olympus`, read in UTC")),
        "{logs:?}"
    );
}

#[test]
fn huge_answers_are_refused_and_big_ones_fit_the_status() {
    // Over the 4 MiB the engine would already refuse.
    let mut h = start(json!({}));
    h.answer_http(
        "REPORT",
        CAL,
        Ok(HttpAnswer {
            status: 207,
            headers: vec![],
            body: vec![b'x'; 4 * 1024 * 1024 + 1],
        }),
    );
    h.advance(Duration::from_millis(10));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "the answer is 4194305 bytes, over the 4194304-byte limit"
        ))
    );

    // 1500 events in the window, one object each (~0.8 MB of multistatus): parsed within
    // the time budget, the status keeps what fits in its 60 000 bytes.
    let events: Vec<String> = (0..1500)
        .map(|i| {
            vevent(
                &format!("e{i:04}"),
                T0 + i * 30,
                T0 + i * 30 + 20,
                &format!("Meeting number {i} with a fairly long title"),
                "ATTENDEE:mailto:someone@example.com\r\n",
            )
        })
        .collect();
    let mut h = synced(json!({}), report(&events));
    assert!(h.error().is_none(), "{:?}", h.error());
    let b = h.status("bookings").unwrap();
    let n = b.as_array().unwrap().len();
    assert!((100..1500).contains(&n), "{n}");
    assert!(b.to_string().len() <= 60_000);
    assert_eq!(b[0]["id"], json!("e0000"), "the earliest are kept");
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        &format!("the bookings status holds the first {n} of 1500 bookings")
    ));
    // list_bookings answers them all.
    h.answer_http("REPORT", CAL, report(&events));
    let all = h.exec("list_bookings", json!([T0, T0 + 24 * H])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1500);
}

/// The fallback: a server that refuses REPORT (405 Method Not Allowed, 501 Not
/// Implemented) is read with GET of the whole collection from then on.
#[test]
fn a_server_refusing_report_is_read_with_get_of_the_collection() {
    for code in [405u16, 501] {
        let cal = calendar(&[
            vevent("a", T0 + H, T0 + 2 * H, "A", ""),
            vevent("late", T0 + 30 * H, T0 + 31 * H, "Late", ""),
        ]);
        let mut h = start(json!({"poll_every_ms": 5000}));
        h.answer_http(
            "REPORT",
            CAL,
            answer(code, &[("Allow", "OPTIONS, GET, PUT, DELETE")], ""),
        );
        h.answer_http("GET", CAL, ok(&cal));
        h.advance(Duration::from_millis(10));
        assert_eq!(methods(&h), ["REPORT", "GET"]);
        let get = &h.http_requests()[1];
        assert_eq!(get.path, CAL);
        assert_eq!(header(&get.headers, "Accept"), Some("text/calendar"));
        assert!(get.body.is_empty());
        // The driver filters the window itself.
        assert_eq!(h.status("bookings").unwrap().as_array().unwrap().len(), 1);
        assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"));
        assert_eq!(h.status("last_error"), None, "not an error");
        assert!(has_log(
            &mut h,
            LogLevel::Warn,
            &format!(
                "the server refused REPORT (HTTP {code}); reading the whole calendar with GET instead"
            )
        ));

        // From then on, GET only.
        h.answer_http("GET", CAL, ok(&calendar(&[])));
        h.advance(Duration::from_millis(5000));
        assert_eq!(methods(&h), ["REPORT", "GET", "GET"]);
        assert_eq!(h.status("bookings"), Some(json!([])));

        // A garbage answer in this mode.
        h.answer_http("GET", CAL, ok("<html>Login</html>"));
        h.advance(Duration::from_millis(5000));
        let e = h.status("last_error").unwrap();
        assert!(
            e.as_str()
                .unwrap()
                .starts_with("malformed calendar: not an iCalendar object"),
            "{e}"
        );

        h.answer_http("GET", CAL, ok(&cal));
        let listed = h.exec("list_bookings", json!([T0, T0 + 48 * H])).unwrap();
        assert_eq!(listed[1]["id"], json!("late"));
        assert_eq!(h.status("last_error"), Some(Value::Null));

        // Cancelling reads `<uid>.ics` for its ETag, then deletes it.
        let path = format!("{CAL}a.ics");
        h.answer_http(
            "GET",
            &path,
            answer(
                200,
                &[("ETag", "\"9\"")],
                &calendar(&[vevent("a", T0 + H, T0 + 2 * H, "A", "")]),
            ),
        );
        h.answer_http("DELETE", &path, answer(204, &[], ""));
        h.answer_http("GET", CAL, ok(&calendar(&[])));
        assert_eq!(h.exec("cancel_booking", json!(["a"])), Ok(Value::Null));
        let reqs = h.http_requests();
        let n = reqs.len();
        assert_eq!(
            reqs[n - 3..]
                .iter()
                .map(|r| (r.method.as_str(), r.path.as_str()))
                .collect::<Vec<_>>(),
            [
                ("GET", path.as_str()),
                ("DELETE", path.as_str()),
                ("GET", CAL)
            ]
        );
        assert_eq!(header(&reqs[n - 2].headers, "If-Match"), Some("\"9\""));
        assert!(methods(&h)[1..].iter().all(|m| m != "REPORT"));
    }
}

#[test]
fn settings_are_checked_on_load() {
    for (settings, want) in [
        (json!({}), "calendar_path is required"),
        (
            json!({"calendar_path": "room/cal/"}),
            "must be a path starting with a single `/`",
        ),
        (
            json!({"calendar_path": "/a?b"}),
            "must be a path starting with a single `/`",
        ),
        (
            json!({"calendar_path": "/c/", "poll_every_ms": 1000}),
            "poll_every_ms must be 5000..=86400000, got 1000",
        ),
        (
            json!({"calendar_path": "/c/", "lookahead_hours": 0}),
            "lookahead_hours must be 1..=744, got 0",
        ),
        (
            json!({"calendar_path": "/c/", "request_timeout_ms": 100}),
            "request_timeout_ms must be 500..=60000, got 100",
        ),
        (
            json!({"calendar_path": "/c/", "time_zone": "Mars/Olympus"}),
            "time_zone `Mars/Olympus` is not an IANA time zone",
        ),
    ] {
        let e = Harness::builder(lintel_bundled_drivers::CALDAV.component.to_vec())
            .settings(settings.clone())
            .start()
            .err()
            .unwrap_or_else(|| panic!("{settings} accepted"));
        assert!(e.contains(want), "{settings}: {e}");
    }
}

#[test]
fn declares_its_functions_and_settings() {
    let h = start(json!({}));
    let info = h.info();
    let names: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
    for f in [
        "list_bookings",
        "free_busy",
        "create_booking",
        "cancel_booking",
        "refresh",
    ] {
        assert!(names.contains(&f), "{names:?}");
        let func = info.function(f).unwrap();
        assert!(!func.description.is_empty(), "{f} is documented");
    }
    let schema = info.settings_schema.to_string();
    for key in [
        "calendar_path",
        "poll_every_ms",
        "lookahead_hours",
        "allow_overlap",
        "request_timeout_ms",
        "time_zone",
    ] {
        assert!(schema.contains(key), "{key} in {schema}");
    }
}

#[test]
fn cjk_attendees_and_organizers_do_not_crash_the_driver() {
    // `mailto:` was once sliced at byte 7, inside `会` (bytes 6..9): a trap on every poll.
    let events = [vevent(
        "cjk",
        T0 + H,
        T0 + 2 * H,
        "東京会議",
        "ORGANIZER:東京会議室\r\nATTENDEE:東京会議室\r\nATTENDEE;CN=大阪:mailto:大阪@example.jp\r\n",
    )];
    let mut h = synced(json!({}), report(&events));
    assert_eq!(h.error(), None);
    let b = &h.status("bookings").unwrap()[0];
    assert_eq!(b["organizer"], json!("東京会議室"));
    assert_eq!(b["attendees"], json!(["東京会議室", "大阪@example.jp"]));
    assert_eq!(b["title"], json!("東京会議"));
    // Polls go on.
    h.answer_http("REPORT", CAL, report(&events));
    h.advance(Duration::from_secs(60));
    assert_eq!(methods(&h), ["REPORT", "REPORT"]);
    assert_eq!(h.status("last_error"), None, "never an error");
    // A CJK organizer given to create_booking: checked, not sliced.
    let err = h
        .exec(
            "create_booking",
            json!([T0 + 5 * H, T0 + 6 * H, "X", "東京会議室"]),
        )
        .unwrap_err();
    assert_eq!(err, "organizer `東京会議室` is not an e-mail address");
    assert_eq!(h.error(), None);
}

#[test]
fn a_huge_duration_is_skipped_and_logged() {
    let events = [
        format!(
            "BEGIN:VEVENT\r\nUID:huge\r\nDTSTART:{}\r\nDURATION:PT9223372036854775807S\r\nEND:VEVENT\r\n",
            stamp(T0 + H)
        ),
        vevent("ok", T0 + 2 * H, T0 + 3 * H, "OK", ""),
    ];
    let mut h = synced(json!({}), report(&events));
    assert_eq!(h.error(), None);
    let ids: Vec<Value> = h
        .status("bookings")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(ids, [json!("ok")]);
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "event `huge`: DURATION `PT9223372036854775807S` is out of range"
    ));
}

#[test]
fn transparent_events_are_not_bookings() {
    let events = [
        vevent("free", T0 + H, T0 + 2 * H, "Free", "TRANSP:TRANSPARENT\r\n"),
        vevent("busy", T0 + 3 * H, T0 + 4 * H, "Busy", "TRANSP:OPAQUE\r\n"),
    ];
    let mut h = synced(json!({}), report(&events));
    let ids = |v: Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].clone())
            .collect()
    };
    assert_eq!(ids(h.status("bookings").unwrap()), [json!("busy")]);
    h.answer_http("REPORT", CAL, report(&events));
    assert_eq!(
        ids(h.exec("list_bookings", json!([T0, T0 + 5 * H])).unwrap()),
        [json!("busy")]
    );
}

#[test]
fn an_overlap_with_a_private_event_does_not_tell_its_title() {
    let mut h = empty();
    let busy = [vevent(
        "p",
        T0 + 2 * H,
        T0 + 3 * H,
        "Secret merger talk",
        "CLASS:PRIVATE\r\n",
    )];
    h.answer_http("REPORT", CAL, report(&busy));
    let err = h
        .exec("create_booking", json!([T0 + 2 * H, T0 + 3 * H, "Mine"]))
        .unwrap_err();
    assert_eq!(
        err,
        "the room is already booked from 20260101T020000Z to 20260101T030000Z (a private booking, id p); set allow_overlap to allow overlapping bookings"
    );
    assert!(!h.logs().iter().any(|l| l.message.contains("Secret")));
}

#[test]
fn a_line_folded_inside_a_character_is_read() {
    // `東京` folded between the bytes of `京` (E4 BA AC), in a REPORT and in a GET answer.
    let ics = calendar(&[vevent("f", T0 + H, T0 + 2 * H, "東京", "")]);
    let mut body =
        multistatus(&[(format!("{CAL}f.ics"), "\"1\"".into(), ics.clone())]).into_bytes();
    let at = body.windows(3).position(|w| w == "京".as_bytes()).unwrap() + 1;
    for (i, b) in b"&#13;\n ".iter().enumerate() {
        body.insert(at + i, *b);
    }
    assert!(std::str::from_utf8(&body).is_err());
    let h = synced(
        json!({}),
        Ok(HttpAnswer {
            status: 207,
            headers: vec![],
            body,
        }),
    );
    assert_eq!(h.status("bookings").unwrap()[0]["title"], json!("東京"));
    assert_eq!(h.status("last_error"), None, "never an error");

    let mut h = start(json!({}));
    h.answer_http("REPORT", CAL, answer(405, &[], ""));
    let mut body = ics.into_bytes();
    let at = body.windows(3).position(|w| w == "京".as_bytes()).unwrap() + 2;
    for (i, b) in b"\r\n\t".iter().enumerate() {
        body.insert(at + i, *b);
    }
    h.answer_http(
        "GET",
        CAL,
        Ok(HttpAnswer {
            status: 200,
            headers: vec![],
            body,
        }),
    );
    h.advance(Duration::from_millis(10));
    assert_eq!(methods(&h), ["REPORT", "GET"]);
    assert_eq!(h.status("bookings").unwrap()[0]["title"], json!("東京"));
}

#[test]
fn the_object_map_is_rebuilt_by_each_sync() {
    // An object seen by one sync, renamed on the server before the next: the cancel uses
    // the new href, not a stale one (nor a guessed `<uid>.ics`).
    let ev = vevent("m", T0 + H, T0 + 2 * H, "M", "");
    let at = |name: &str, etag: &str| {
        answer(
            207,
            &[],
            &multistatus(&[(
                format!("{CAL}{name}"),
                etag.to_string(),
                calendar(std::slice::from_ref(&ev)),
            )]),
        )
    };
    let mut h = synced(json!({}), at("old-name.ics", "\"1\""));
    h.answer_http("REPORT", CAL, at("new-name.ics", "\"2\""));
    h.advance(Duration::from_secs(60));
    h.answer_http(
        "DELETE",
        &format!("{CAL}new-name.ics"),
        answer(204, &[], ""),
    );
    h.answer_http("REPORT", CAL, report(&[]));
    assert_eq!(h.exec("cancel_booking", json!(["m"])), Ok(Value::Null));
    let reqs = h.http_requests();
    assert_eq!(methods(&h), ["REPORT", "REPORT", "DELETE", "REPORT"]);
    assert_eq!(reqs[2].path, format!("{CAL}new-name.ics"));
    assert_eq!(header(&reqs[2].headers, "If-Match"), Some("\"2\""));
    // Gone from the calendar: forgotten by the next sync, so the id is read at `<uid>.ics`.
    h.answer_http("GET", &format!("{CAL}m.ics"), answer(404, &[], ""));
    assert!(h.exec("cancel_booking", json!(["m"])).is_err());
    assert_eq!(h.http_requests()[4].path, format!("{CAL}m.ics"));
}

#[test]
fn times_out_of_range_are_refused_without_a_request() {
    let mut h = empty();
    for args in [
        json!([-1, 10]),
        json!([0, 253_402_300_800i64]),
        json!([-9_223_372_036_854_775_807i64, 9_223_372_036_854_775_807i64]),
    ] {
        for f in ["list_bookings", "free_busy", "create_booking"] {
            let mut a = args.clone();
            if f == "create_booking" {
                a.as_array_mut().unwrap().push(json!("T"));
            }
            assert!(h.exec(f, a).is_err(), "{f} {args}");
        }
    }
    assert_eq!(h.error(), None);
    assert_eq!(methods(&h), ["REPORT"], "nothing reached the server");
}

#[test]
fn objects_seen_by_list_bookings_survive_one_poll() {
    let later = [(
        format!("{CAL}later-name.ics"),
        "\"l\"".to_string(),
        calendar(&[vevent("later", T0 + 100 * H, T0 + 101 * H, "L", "")]),
    )];
    let mut h = empty();
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&later)));
    h.exec("list_bookings", json!([T0 + 99 * H, T0 + 102 * H]))
        .unwrap();
    // One poll (which does not see it): still known.
    h.answer_http("REPORT", CAL, report(&[]));
    h.advance(Duration::from_secs(60));
    h.answer_http("DELETE", &later[0].0, answer(412, &[], ""));
    h.answer_http("REPORT", CAL, report(&[]));
    assert!(h.exec("cancel_booking", json!(["later"])).is_err());
    let reqs = h.http_requests();
    assert_eq!(
        methods(&h),
        ["REPORT", "REPORT", "REPORT", "DELETE", "REPORT"]
    );
    assert_eq!(reqs[3].path, later[0].0);
    // Seen again by list_bookings, then two polls: forgotten, looked up at `<uid>.ics`.
    h.answer_http("REPORT", CAL, answer(207, &[], &multistatus(&later)));
    h.exec("list_bookings", json!([T0 + 99 * H, T0 + 102 * H]))
        .unwrap();
    for _ in 0..2 {
        h.answer_http("REPORT", CAL, report(&[]));
        h.advance(Duration::from_secs(60));
    }
    h.answer_http("GET", &format!("{CAL}later.ics"), answer(404, &[], ""));
    assert!(h.exec("cancel_booking", json!(["later"])).is_err());
    let reqs = h.http_requests();
    let last = reqs.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", format!("{CAL}later.ics").as_str())
    );
}
