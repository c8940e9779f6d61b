//! Harness tests: every answer shape of the Google Calendar API v3 scripted, in virtual
//! time (which starts at 2026-01-01T00:00:00Z). The harness answers HTTP itself, so no
//! token is involved: the engine's `oauth2` handling is covered by the live tests; here
//! its outcomes are scripted (a second 401, an `oauth2: …` transport error).

use lintel_driver_google_calendar::{MAX_BOOKINGS_STATUS_BYTES, event_id};
use lintel_driver_harness::{Harness, HttpAnswer, HttpCall, LogLevel, Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z, where virtual time starts.
const T0: i64 = 1_767_225_600;
const H: i64 = 3_600;
const CAL: &str = "room-1@resource.calendar.google.com";
const EVENTS: &str = "/calendar/v3/calendars/room-1%40resource.calendar.google.com/events";

fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The "Events: list" path of `[start, end)`.
fn list_path(start: i64, end: i64, token: Option<&str>) -> String {
    format!(
        "{EVENTS}?timeMin={}&timeMax={}&singleEvents=true&orderBy=startTime&maxResults=250{}",
        iso(start),
        iso(end),
        token.map(|t| format!("&pageToken={t}")).unwrap_or_default()
    )
}

/// The path of a poll at unix second `now` (the default 24 h lookahead).
fn window_at(now: i64, token: Option<&str>) -> String {
    list_path(now - H, now + 24 * H, token)
}

fn window() -> String {
    window_at(T0, None)
}

/// An event as Google lists it: organized by Ann, the room invited (its `self` entry).
fn ev(id: &str, start: i64, end: i64, summary: &str) -> Value {
    json!({
        "kind": "calendar#event",
        "id": id,
        "etag": format!("\"e-{id}\""),
        "status": "confirmed",
        "summary": summary,
        "start": {"dateTime": iso(start)},
        "end": {"dateTime": iso(end)},
        "organizer": {"email": "ann@example.com", "displayName": "Ann"},
        "attendees": [
            {"email": "ann@example.com", "organizer": true, "responseStatus": "accepted"},
            {"email": CAL, "resource": true, "self": true, "responseStatus": "accepted"}
        ]
    })
}

/// An "Events: list" answer.
fn list_body(items: &[Value], tz: Option<&str>, next: Option<&str>) -> String {
    let mut v = json!({"kind": "calendar#events", "summary": "Room 1", "items": items});
    if let Some(tz) = tz {
        v["timeZone"] = json!(tz);
    }
    if let Some(n) = next {
        v["nextPageToken"] = json!(n);
    }
    v.to_string()
}

fn page(items: &[Value]) -> Result<HttpAnswer, String> {
    answer(200, &[], &list_body(items, Some("UTC"), None))
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

/// A Google API error body ("Handle API errors").
fn api_error(code: u16, reason: &str, message: &str) -> String {
    json!({"error": {"code": code, "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}]}})
    .to_string()
}

fn booking(id: &str, title: &str, start: i64, end: i64) -> Value {
    json!({"id": id, "title": title, "start": start, "end": end,
           "organizer": "ann@example.com", "attendees": ["ann@example.com"],
           "all_day": false, "private": false})
}

fn start(settings: Value) -> Harness {
    let mut base = json!({"calendar_id": CAL});
    for (k, v) in settings.as_object().unwrap() {
        base[k] = v.clone();
    }
    Harness::builder(lintel_bundled_drivers::GOOGLE_CALENDAR.component.to_vec())
        .settings(base)
        .start()
        .expect("the driver starts")
}

/// Started, with the first read answered by `first`.
fn synced(settings: Value, first: Result<HttpAnswer, String>) -> Harness {
    let mut h = start(settings);
    h.answer_http("GET", &window(), first);
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 1, "one read after loading");
    h
}

fn with(items: &[Value]) -> Harness {
    synced(json!({}), page(items))
}

fn has_log(h: &mut Harness, level: LogLevel, part: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| l.level == level && l.message.contains(part))
}

fn header<'a>(req: &'a HttpCall, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn last(h: &Harness) -> HttpCall {
    h.http_requests().last().cloned().expect("a request")
}

fn body_json(req: &HttpCall) -> Value {
    serde_json::from_slice(&req.body).expect("a JSON body")
}

fn last_error(h: &Harness) -> String {
    h.status("last_error")
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| panic!("no last_error: {:?}", h.status("last_error")))
}

#[test]
fn polls_the_events_list_into_the_bookings_status() {
    let mut private = ev("p1", T0 + 5 * H, T0 + 6 * H, "Secret");
    private["visibility"] = json!("private");
    let mut confidential = ev("c1", T0 + 7 * H, T0 + 8 * H, "Board");
    confidential["visibility"] = json!("confidential");
    let mut untitled = ev("u1", T0 + 9 * H, T0 + 10 * H, "");
    untitled.as_object_mut().unwrap().remove("summary");
    let mut cancelled = ev("x1", T0 + 2 * H, T0 + 3 * H, "Off");
    cancelled["status"] = json!("cancelled");
    // A cancelled occurrence of a recurring event as singleEvents lists it: id and status.
    let bare_cancelled =
        json!({"kind": "calendar#event", "id": "r1_20260101T110000Z", "status": "cancelled"});
    let mut free = ev("f1", T0 + 2 * H, T0 + 3 * H, "Free");
    free["transparency"] = json!("transparent");
    let mut declined = ev("d1", T0 + 2 * H, T0 + 3 * H, "Declined by the room");
    declined["attendees"][1]["responseStatus"] = json!("declined");
    // Declined by another attendee only: still a booking.
    let mut other_declined = ev("o1", T0 + 11 * H, T0 + 12 * H, "Still on");
    other_declined["attendees"][0]["responseStatus"] = json!("declined");
    let mut tentative = ev("t1", T0 + 13 * H, T0 + 14 * H, "Maybe");
    tentative["status"] = json!("tentative");
    // 09:00 in Paris is 08:00 UTC.
    let mut offset = ev("z1", 0, 0, "Paris");
    offset["start"] = json!({"dateTime": "2026-01-01T09:00:00+01:00", "timeZone": "Europe/Paris"});
    offset["end"] = json!({"dateTime": "2026-01-01T09:30:00+01:00", "timeZone": "Europe/Paris"});
    // Non-ASCII everywhere.
    let mut cjk = ev("j1", T0 + 15 * H, T0 + 16 * H, "会議 – Überprüfung");
    cjk["organizer"] = json!({"email": "東京会議室@example.jp"});
    cjk["attendees"] = json!([{"email": "ünï@example.com", "responseStatus": "accepted"}]);
    let items = [
        ev("a1", T0 + H, T0 + 2 * H, "Stand-up"),
        private,
        confidential,
        untitled,
        cancelled,
        bare_cancelled,
        free,
        declined,
        other_declined,
        tentative,
        offset,
        cjk,
        // Running since before the window.
        ev("early", T0 - 3 * H, T0 + H / 2, "Running"),
    ];
    let mut h = with(&items);
    let req = &h.http_requests()[0];
    assert_eq!(req.method, "GET");
    assert_eq!(
        req.path,
        "/calendar/v3/calendars/room-1%40resource.calendar.google.com/events?timeMin=2025-12-31T23:00:00Z&timeMax=2026-01-02T00:00:00Z&singleEvents=true&orderBy=startTime&maxResults=250"
    );
    assert_eq!(header(req, "Accept"), Some("application/json"));
    assert_eq!(
        header(req, "Authorization"),
        None,
        "the token is the engine's"
    );
    assert_eq!(req.timeout_ms, 3000);
    let mut p = booking("p1", "Secret", T0 + 5 * H, T0 + 6 * H);
    p["private"] = json!(true);
    let mut c = booking("c1", "Board", T0 + 7 * H, T0 + 8 * H);
    c["private"] = json!(true);
    // The room's own entry (`self`) is left out of the attendees.
    let o = booking("o1", "Still on", T0 + 11 * H, T0 + 12 * H);
    assert_eq!(
        h.status("bookings"),
        Some(json!([
            booking("early", "Running", T0 - 3 * H, T0 + H / 2),
            booking("a1", "Stand-up", T0 + H, T0 + 2 * H),
            p,
            c,
            booking("z1", "Paris", T0 + 8 * H, T0 + 8 * H + 1800),
            booking("u1", "", T0 + 9 * H, T0 + 10 * H),
            o,
            booking("t1", "Maybe", T0 + 13 * H, T0 + 14 * H),
            {"id": "j1", "title": "会議 – Überprüfung", "start": T0 + 15 * H, "end": T0 + 16 * H,
             "organizer": "東京会議室@example.jp", "attendees": ["ünï@example.com"],
             "all_day": false, "private": false},
        ]))
    );
    assert_eq!(h.status("last_sync"), Some(json!(T0)));
    assert_eq!(h.status("last_error"), None, "absent until a problem");
    assert!(!has_log(&mut h, LogLevel::Warn, ""), "{:?}", h.logs());
}

#[test]
fn all_day_dates_are_read_in_the_calendars_time_zone() {
    let mut day = ev("day", 0, 0, "Offsite");
    day["start"] = json!({"date": "2026-01-01"});
    day["end"] = json!({"date": "2026-01-02"});
    // The answer's timeZone (the calendar's) wins over the setting: midnight in New York
    // is 05:00 UTC.
    let mut h = synced(
        json!({"time_zone": "Asia/Tokyo"}),
        answer(
            200,
            &[],
            &list_body(std::slice::from_ref(&day), Some("America/New_York"), None),
        ),
    );
    let b = &h.status("bookings").unwrap()[0];
    assert_eq!(
        (b["start"].clone(), b["end"].clone()),
        (json!(T0 + 5 * H), json!(T0 + 29 * H))
    );
    assert_eq!(b["all_day"], json!(true));

    // No timeZone in the answer: the setting (Tokyo midnight is 15:00 UTC the day before).
    h.answer_http(
        "GET",
        &window_at(T0 + 60, None),
        answer(200, &[], &list_body(std::slice::from_ref(&day), None, None)),
    );
    h.advance(Duration::from_secs(60));
    let b = &h.status("bookings").unwrap()[0];
    assert_eq!(b["start"], json!(T0 - 9 * H));

    // An unknown timeZone: the setting, with a warning.
    h.answer_http(
        "GET",
        &window_at(T0 + 120, None),
        answer(
            200,
            &[],
            &list_body(std::slice::from_ref(&day), Some("Mars/Olympus"), None),
        ),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status("bookings").unwrap()[0]["start"], json!(T0 - 9 * H));
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "the calendar's time zone `Mars/Olympus` is unknown; all-day dates are read in Asia/Tokyo"
    ));
}

#[test]
fn follows_page_tokens() {
    let mut h = start(json!({}));
    h.answer_http(
        "GET",
        &window(),
        answer(
            200,
            &[],
            &list_body(
                &[ev("a", T0 + H, T0 + 2 * H, "A")],
                Some("UTC"),
                Some("p/2+="),
            ),
        ),
    );
    h.answer_http(
        "GET",
        &window_at(T0, Some("p%2F2%2B%3D")),
        answer(
            200,
            &[],
            &list_body(
                &[ev("b", T0 + 3 * H, T0 + 4 * H, "B")],
                Some("UTC"),
                Some("p3"),
            ),
        ),
    );
    h.answer_http(
        "GET",
        &window_at(T0, Some("p3")),
        answer(
            200,
            &[],
            &list_body(&[ev("c", T0 + 5 * H, T0 + 6 * H, "C")], Some("UTC"), None),
        ),
    );
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 3);
    let ids: Vec<Value> = h
        .status("bookings")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b"), json!("c")]);
    assert_eq!(h.status("last_error"), None);
}

#[test]
fn stops_following_pages_at_the_cap() {
    let mut h = start(json!({}));
    for i in 0..12 {
        let token = (i > 0).then(|| format!("t{i}"));
        h.answer_http(
            "GET",
            &window_at(T0, token.as_deref()),
            answer(
                200,
                &[],
                &list_body(
                    &[ev(&format!("e{i:02}"), T0 + i * 60, T0 + i * 60 + 30, "x")],
                    Some("UTC"),
                    Some(&format!("t{}", i + 1)),
                ),
            ),
        );
    }
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 10, "at most 10 pages per read");
    assert_eq!(h.status("bookings").unwrap().as_array().unwrap().len(), 10);
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "more events than the 10 pages of 250 read"
    ));
    assert_eq!(h.status("last_error"), None, "a cut read is not an error");
}

#[test]
fn a_failing_later_page_keeps_the_previous_bookings() {
    let mut h = with(&[ev("a", T0 + H, T0 + 2 * H, "A")]);
    h.answer_http(
        "GET",
        &window_at(T0 + 60, None),
        answer(
            200,
            &[],
            &list_body(&[ev("b", T0 + H, T0 + 2 * H, "B")], Some("UTC"), Some("n")),
        ),
    );
    h.answer_http(
        "GET",
        &window_at(T0 + 60, Some("n")),
        Err("timed out after 3000 ms".into()),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(h.http_requests().len(), 3);
    assert_eq!(
        last_error(&h),
        "no answer from the calendar server: timed out after 3000 ms"
    );
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"));
}

#[test]
fn many_events_keep_the_status_under_its_cap() {
    let items: Vec<Value> = (0..1500)
        .map(|i| {
            ev(
                &format!("ev{i:04}"),
                T0 + i * 30,
                T0 + i * 30 + 20,
                "A fairly long meeting title",
            )
        })
        .collect();
    let mut h = with(&items);
    let bookings = h.status("bookings").unwrap();
    let n = bookings.as_array().unwrap().len();
    assert!(n > 100 && n < 1500, "{n}");
    assert!(bookings.to_string().len() <= MAX_BOOKINGS_STATUS_BYTES);
    assert_eq!(bookings[0]["id"], json!("ev0000"), "the earliest are kept");
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "the bookings status holds the first"
    ));
    // list_bookings gives them all.
    h.answer_http("GET", &list_path(T0, T0 + 24 * H, None), page(&items));
    let all = h.exec("list_bookings", json!([T0, T0 + 24 * H])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1500);
}

#[test]
fn malformed_items_are_skipped_and_the_others_kept() {
    let mut no_id = ev("", T0, T0 + H, "No id");
    no_id.as_object_mut().unwrap().remove("id");
    let mut bad_time = ev("bt", T0, T0 + H, "Bad time");
    bad_time["start"] = json!({"dateTime": "tomorrow at nine"});
    let mut no_end = ev("ne", T0, T0 + H, "No end");
    no_end.as_object_mut().unwrap().remove("end");
    let mut backwards = ev("bw", T0 + 2 * H, T0 + H, "Backwards");
    backwards["id"] = json!("bw");
    let mut bad_date = ev("bd", 0, 0, "Bad date");
    bad_date["start"] = json!({"date": "2026-02-30"});
    bad_date["end"] = json!({"date": "2026-03-01"});
    let mut h = with(&[
        no_id,
        bad_time,
        no_end,
        backwards,
        bad_date,
        json!("not an object"),
        ev("ok", T0 + H, T0 + 2 * H, "Fine"),
    ]);
    assert_eq!(
        h.status("bookings"),
        Some(json!([booking("ok", "Fine", T0 + H, T0 + 2 * H)]))
    );
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "skipped 6 malformed event(s): an item without an id; event `bt`: start: dateTime `tomorrow at nine`"
    ));
    assert_eq!(h.status("last_error"), None);
}

/// A good first read, then the next poll (at T0 + 60 s) answered by `bad`: `last_error`,
/// the bookings kept; the poll after (T0 + 120 s) good again clears it.
fn bad_then_recovered(bad: Result<HttpAnswer, String>) -> (Harness, String) {
    let mut h = with(&[ev("a", T0 + H, T0 + 2 * H, "A")]);
    h.answer_http("GET", &window_at(T0 + 60, None), bad);
    h.advance(Duration::from_secs(60));
    let e = last_error(&h);
    assert!(has_log(&mut h, LogLevel::Warn, &e), "{e} logged");
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"), "kept");
    assert_eq!(h.status("last_sync"), Some(json!(T0)));
    (h, e)
}

fn recover(h: &mut Harness, at: i64) {
    h.answer_http(
        "GET",
        &window_at(at, None),
        page(&[ev("b", T0 + 3 * H, T0 + 4 * H, "B")]),
    );
    // Virtual time starts at T0; `now_ms` counts from there.
    let now = T0 * 1000 + h.now_ms() as i64;
    let wait = at * 1000 + 10 - now;
    assert!(wait < 3_600_000, "recover at {at}: {wait} ms ahead");
    h.advance(Duration::from_millis(wait.max(0) as u64));
    assert_eq!(h.status("last_error"), Some(Value::Null), "cleared");
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("b"));
    assert!(has_log(h, LogLevel::Info, "the calendar answers again"));
}

#[test]
fn garbage_answers_set_last_error_and_keep_the_bookings() {
    let cases: [(&str, &str); 7] = [
        (
            "<html><body>Sign in</body></html>",
            "malformed answer: not JSON (expected value at line 1 column 1): `<html><body>Sign in</body></html>`",
        ),
        (
            "",
            "malformed answer: not JSON (EOF while parsing a value at line 1 column 0)",
        ),
        (
            "{\"kind\": \"calendar#events\", \"items\": [",
            "malformed answer: not JSON (EOF while parsing",
        ),
        (
            "[1, 2]",
            "malformed answer: expected a calendar#events object",
        ),
        (
            "{\"kind\": \"calendar#calendarList\"}",
            "malformed answer: expected a calendar#events object, got kind `calendar#calendarList`",
        ),
        (
            "{\"kind\": \"calendar#events\", \"items\": {\"a\": 1}}",
            "malformed answer: expected a calendar#events object: items is not a list",
        ),
        (
            "{\"foo\": 1}",
            "malformed answer: expected a calendar#events object, got kind (none)",
        ),
    ];
    for (body, want) in cases {
        let (mut h, e) = bad_then_recovered(answer(200, &[], body));
        assert!(e.starts_with(want), "{body}: {e}");
        recover(&mut h, T0 + 120);
    }
    // Not UTF-8.
    let (mut h, e) = bad_then_recovered(Ok(HttpAnswer {
        status: 200,
        headers: vec![],
        body: vec![0xff, 0xfe, b'{'],
    }));
    assert!(e.starts_with("malformed answer: not JSON"), "{e}");
    recover(&mut h, T0 + 120);
}

#[test]
fn an_oversized_answer_is_refused() {
    let body = " ".repeat(4 * 1024 * 1024 + 1);
    let (mut h, e) = bad_then_recovered(answer(200, &[], &body));
    assert_eq!(
        e,
        "the answer is 4194305 bytes, over the 4194304-byte limit"
    );
    recover(&mut h, T0 + 120);
}

#[test]
fn unauthorized_after_the_engines_retry_says_check_oauth2() {
    let (mut h, e) = bad_then_recovered(answer(
        401,
        &[],
        &json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.",
            "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                        "location": "Authorization", "locationType": "header"}],
            "status": "UNAUTHENTICATED"}})
        .to_string(),
    ));
    assert_eq!(
        e,
        "authentication failed (HTTP 401 authError: Request had invalid authentication credentials.): check the module's oauth2 settings"
    );
    // No back-off: the next poll tries again.
    recover(&mut h, T0 + 120);
}

#[test]
fn forbidden_says_share_the_calendar_and_check_oauth2() {
    let (mut h, e) =
        bad_then_recovered(answer(403, &[], &api_error(403, "forbidden", "Forbidden")));
    assert_eq!(
        e,
        format!(
            "access denied (HTTP 403 forbidden: Forbidden): the calendar `{CAL}` is not shared with the account of the module's oauth2 settings (its service account, or the subject it acts for), or the token lacks the scope https://www.googleapis.com/auth/calendar; check the module's oauth2 settings"
        )
    );
    // Not a rate limit: functions are not refused by a back-off.
    h.answer_http("GET", &list_path(T0, T0 + H, None), page(&[]));
    assert_eq!(h.exec("list_bookings", json!([T0, T0 + H])), Ok(json!([])));
    recover(&mut h, T0 + 120);
}

#[test]
fn not_found_names_the_calendar_id() {
    let (mut h, e) = bad_then_recovered(answer(404, &[], &api_error(404, "notFound", "Not Found")));
    assert_eq!(
        e,
        format!("calendar not found (HTTP 404 notFound: Not Found): check calendar_id `{CAL}`")
    );
    recover(&mut h, T0 + 120);
}

#[test]
fn gone_and_other_codes_are_unexpected_answers() {
    let (mut h, e) = bad_then_recovered(answer(
        410,
        &[],
        &api_error(410, "deleted", "Resource has been deleted"),
    ));
    assert_eq!(
        e,
        "unexpected answer to the events list: HTTP 410 deleted: Resource has been deleted"
    );
    recover(&mut h, T0 + 120);
    let (mut h, e) = bad_then_recovered(answer(
        302,
        &[("Location", "https://accounts.google.com/")],
        "",
    ));
    assert_eq!(e, "unexpected answer to the events list: HTTP 302");
    recover(&mut h, T0 + 120);
}

#[test]
fn rate_limit_403_backs_off_exponentially_then_recovers() {
    let limit = || {
        answer(
            403,
            &[],
            &api_error(403, "rateLimitExceeded", "Rate Limit Exceeded"),
        )
    };
    let (mut h, e) = bad_then_recovered(limit());
    assert_eq!(
        e,
        "rate limited (HTTP 403 rateLimitExceeded: Rate Limit Exceeded); retrying in 10 s"
    );
    // Functions are refused without a request while it runs.
    let before = h.http_requests().len();
    let refused = h.exec("refresh", json!([])).unwrap_err();
    assert!(
        refused.starts_with(
            "rate limited (HTTP 403 rateLimitExceeded: Rate Limit Exceeded); retrying in "
        ),
        "{refused}"
    );
    assert!(h.exec("list_bookings", json!([T0, T0 + H])).is_err());
    assert!(h.exec("cancel_booking", json!(["a"])).is_err());
    assert!(
        h.exec("create_booking", json!([T0 + 5 * H, T0 + 6 * H, "x"]))
            .is_err()
    );
    assert_eq!(h.http_requests().len(), before);
    // 10 s later: read again; limited again: 20 s.
    h.answer_http("GET", &window_at(T0 + 70, None), limit());
    h.advance(Duration::from_millis(9_989));
    assert_eq!(
        h.http_requests().len(),
        before,
        "nothing before the wait ends"
    );
    h.advance(Duration::from_millis(1));
    assert_eq!(h.http_requests().len(), before + 1);
    assert!(
        last_error(&h).ends_with("retrying in 20 s"),
        "{}",
        last_error(&h)
    );
    h.advance(Duration::from_millis(19_999));
    assert_eq!(h.http_requests().len(), before + 1);
    // Then it answers: recovered, and the next limit starts at 10 s again.
    recover(&mut h, T0 + 90);
    h.answer_http("GET", &window_at(T0 + 120, None), limit());
    h.advance(Duration::from_secs(30));
    assert!(
        last_error(&h).ends_with("retrying in 10 s"),
        "{}",
        last_error(&h)
    );
}

#[test]
fn user_rate_limit_and_429_obey_retry_after() {
    let (mut h, e) = bad_then_recovered(answer(
        403,
        &[("Retry-After", "30")],
        &api_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
    ));
    assert_eq!(
        e,
        "rate limited (HTTP 403 userRateLimitExceeded: User Rate Limit Exceeded); retrying in 30 s"
    );
    recover(&mut h, T0 + 90);

    let (mut h, e) = bad_then_recovered(answer(
        429,
        &[("Retry-After", "Thu, 01 Jan 2026 00:03:00 GMT")],
        &api_error(429, "rateLimitExceeded", "Too Many Requests"),
    ));
    assert_eq!(
        e,
        "rate limited (HTTP 429 rateLimitExceeded: Too Many Requests); retrying in 120 s"
    );
    let n = h.http_requests().len();
    h.advance(Duration::from_secs(119));
    assert_eq!(
        h.http_requests().len(),
        n,
        "the poll at T0 + 120 s is skipped"
    );
    recover(&mut h, T0 + 180);

    // A huge Retry-After is capped at an hour; a 429 without a body or header: 10 s.
    let (_, e) = bad_then_recovered(answer(429, &[("Retry-After", "999999")], ""));
    assert_eq!(e, "rate limited (HTTP 429); retrying in 3600 s");
    let (_, e) = bad_then_recovered(answer(429, &[], "Too many"));
    assert_eq!(e, "rate limited (HTTP 429); retrying in 10 s");
}

#[test]
fn server_errors_back_off_then_recover() {
    let (mut h, e) = bad_then_recovered(answer(
        503,
        &[("Retry-After", "5")],
        &api_error(503, "backendError", "Backend Error"),
    ));
    assert_eq!(
        e,
        "server error (HTTP 503 backendError: Backend Error); retrying in 5 s"
    );
    recover(&mut h, T0 + 65);

    let (mut h, e) = bad_then_recovered(answer(500, &[], "<html>oops</html>"));
    assert_eq!(e, "server error (HTTP 500); retrying in 10 s");
    recover(&mut h, T0 + 70);
}

#[test]
fn transport_errors_and_oauth2_failures_are_told_apart() {
    let (mut h, e) = bad_then_recovered(Err(
        "oauth2: the token endpoint refused the credentials (invalid_client): The OAuth client was not found.".into(),
    ));
    assert_eq!(
        e,
        "cannot get an access token: the token endpoint refused the credentials (invalid_client): The OAuth client was not found."
    );
    recover(&mut h, T0 + 120);

    let (mut h, e) = bad_then_recovered(Err("timed out after 3000 ms".into()));
    assert_eq!(
        e,
        "no answer from the calendar server: timed out after 3000 ms"
    );
    // The same error again is logged once as a warning (then at debug level).
    h.answer_http(
        "GET",
        &window_at(T0 + 120, None),
        Err("timed out after 3000 ms".into()),
    );
    h.advance(Duration::from_secs(60));
    let warns = h
        .logs()
        .iter()
        .filter(|l| l.level == LogLevel::Warn && l.message.contains("timed out"))
        .count();
    assert_eq!(warns, 1);
    recover(&mut h, T0 + 180);

    // A function gets the same text.
    h.answer_http(
        "GET",
        &list_path(T0, T0 + H, None),
        Err("oauth2: the token endpoint is busy (HTTP 429); next try in 30 s".into()),
    );
    assert_eq!(
        h.exec("list_bookings", json!([T0, T0 + H])),
        Err(
            "cannot get an access token: the token endpoint is busy (HTTP 429); next try in 30 s"
                .into()
        )
    );
}

#[test]
fn list_and_free_busy_read_the_range_asked() {
    let mut h = with(&[]);
    let (s, e) = (T0 + 48 * H, T0 + 72 * H);
    let mut free = ev("free", s + H, s + 2 * H, "Free");
    free["transparency"] = json!("transparent");
    let items = [
        ev("a", s + H, s + 3 * H, "A"),
        ev("b", s + 2 * H, s + 4 * H, "B"),
        ev("c", s + 6 * H, s + 7 * H, "C"),
        ev("edge", s - H, s + H / 2, "Edge"),
        free,
    ];
    h.answer_http("GET", &list_path(s, e, None), page(&items));
    let listed = h.exec("list_bookings", json!([s, e])).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["edge", "a", "b", "c"]);
    assert_eq!(last(&h).path, list_path(s, e, None));

    h.answer_http("GET", &list_path(s, e, None), page(&items));
    assert_eq!(
        h.exec("free_busy", json!([s, e])),
        Ok(json!([
            {"start": s, "end": s + H / 2},
            {"start": s + H, "end": s + 4 * H},
            {"start": s + 6 * H, "end": s + 7 * H},
        ]))
    );
}

#[test]
fn bad_ranges_are_refused_without_a_request() {
    let mut h = with(&[]);
    let n = h.http_requests().len();
    assert_eq!(
        h.exec("list_bookings", json!([T0, T0])),
        Err(format!("end ({T0}) must be after start ({T0})"))
    );
    assert_eq!(
        h.exec("free_busy", json!([T0, T0 + 400 * 24 * H])),
        Err("the range is 400 days; at most 366 days".into())
    );
    assert!(h.exec("list_bookings", json!([-5, T0])).is_err());
    assert!(
        h.exec("list_bookings", json!([T0, 253_402_300_800i64]))
            .is_err()
    );
    assert!(h.exec("list_bookings", json!(["soon", T0])).is_err());
    assert!(h.exec("create_booking", json!([T0, T0 + H, ""])).is_err());
    assert_eq!(
        h.exec("create_booking", json!([T0, T0 + H, "x", "not-an-address"])),
        Err("organizer `not-an-address` is not an e-mail address".into())
    );
    assert_eq!(
        h.exec("create_booking", json!([T0, T0 + H, "a\u{7}b"])),
        Err("title must not hold control characters".into())
    );
    assert!(h.exec("cancel_booking", json!([""])).is_err());
    assert_eq!(h.http_requests().len(), n);
}

#[test]
fn create_books_the_room_after_an_overlap_check() {
    let mut h = with(&[]);
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    // Virtual time now is T0 + 10 ms; the id is the first of this module.
    let id = event_id(T0 as u64 * 1000 + 10, 1, CAL, s, e, "Planning 計画");
    h.answer_http("GET", &list_path(s, e, None), page(&[]));
    let stored = json!({
        "kind": "calendar#event", "id": id, "etag": "\"1\"", "status": "confirmed",
        "summary": "Planning 計画",
        "start": {"dateTime": iso(s), "timeZone": "UTC"}, "end": {"dateTime": iso(e), "timeZone": "UTC"},
        "organizer": {"email": CAL, "displayName": "Room 1", "self": true},
        "creator": {"email": "lintel@project.iam.gserviceaccount.com"},
        "attendees": [{"email": "bo@example.com", "responseStatus": "needsAction"}],
        "extendedProperties": {"private": {"lintelOrganizer": "bo@example.com"}}
    });
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(200, &[], &stored.to_string()),
    );
    h.answer_http("GET", &window(), page(std::slice::from_ref(&stored)));
    let created = h
        .exec(
            "create_booking",
            json!([s, e, "  Planning 計画 ", "MAILTO:bo@example.com"]),
        )
        .unwrap();
    let want = json!({"id": id, "title": "Planning 計画", "start": s, "end": e,
        "organizer": "bo@example.com", "attendees": ["bo@example.com"], "all_day": false, "private": false});
    assert_eq!(created, want);
    let reqs = h.http_requests();
    assert_eq!(reqs.len(), 4, "first read, overlap check, insert, read");
    assert_eq!(reqs[1].path, list_path(s, e, None));
    let post = &reqs[2];
    assert_eq!(post.method, "POST");
    assert_eq!(header(post, "Content-Type"), Some("application/json"));
    assert_eq!(
        body_json(post),
        json!({"id": id, "summary": "Planning 計画",
               "start": {"dateTime": "2026-01-01T02:00:00Z"}, "end": {"dateTime": "2026-01-01T03:00:00Z"},
               "attendees": [{"email": "bo@example.com"}],
               "description": "Booked for bo@example.com by Lintel.",
               "extendedProperties": {"private": {"lintelOrganizer": "bo@example.com"}}})
    );
    // The read after it shows the booking, organized for Bo.
    assert_eq!(h.status("bookings"), Some(json!([want])));
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        &format!("created booking {id}")
    ));

    // Without an organizer: no attendees; an unreadable answer gives the booking asked.
    h.answer_http("GET", &list_path(s + 2 * H, e + 2 * H, None), page(&[]));
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(200, &[], "{}"),
    );
    h.answer_http("GET", &window(), page(&[]));
    let created = h
        .exec("create_booking", json!([s + 2 * H, e + 2 * H, "Quick"]))
        .unwrap();
    assert_eq!(created["organizer"], Value::Null);
    assert_eq!(created["attendees"], json!([]));
    let post = &h.http_requests()[5];
    assert_eq!(body_json(post).get("attendees"), None);
}

#[test]
fn create_refuses_an_overlap_unless_allowed() {
    let mut h = with(&[]);
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    h.answer_http(
        "GET",
        &list_path(s, e, None),
        page(&[ev("busy", s - H, s + H / 2, "Weekly")]),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])),
        Err("the room is already booked from 2026-01-01T01:00:00Z to 2026-01-01T02:30:00Z (`Weekly`, id busy); set allow_overlap to allow overlapping bookings".into())
    );
    // A private event's title is not told.
    let mut p = ev("sec", s, e, "Layoffs");
    p["visibility"] = json!("private");
    h.answer_http("GET", &list_path(s, e, None), page(&[p]));
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(
        err.contains("(a private booking, id sec)") && !err.contains("Layoffs"),
        "{err}"
    );
    // Free and declined events do not block.
    let mut free = ev("free", s, e, "Free");
    free["transparency"] = json!("transparent");
    h.answer_http("GET", &list_path(s, e, None), page(&[free]));
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(200, &[], "{}"),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert!(h.exec("create_booking", json!([s, e, "Mine"])).is_ok());
    assert!(
        h.http_requests()
            .iter()
            .all(|r| r.method != "POST" || r.path.ends_with("?sendUpdates=all"))
    );

    // allow_overlap: no check.
    let mut h = synced(json!({"allow_overlap": true}), page(&[]));
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(200, &[], "{}"),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert!(h.exec("create_booking", json!([s, e, "Mine"])).is_ok());
    assert_eq!(h.http_requests()[1].method, "POST");
}

#[test]
fn create_failures_are_told() {
    let mut h = synced(json!({"allow_overlap": true}), page(&[]));
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(
            409,
            &[],
            &api_error(409, "duplicate", "The requested identifier already exists."),
        ),
    );
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(
        err.starts_with("an event with id lintel")
            && err.ends_with("already exists (HTTP 409); not created"),
        "{err}"
    );
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(
            403,
            &[],
            &api_error(
                403,
                "requiredAccessLevel",
                "You need to have writer access to this calendar.",
            ),
        ),
    );
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(err.starts_with("access denied (HTTP 403 requiredAccessLevel: You need to have writer access to this calendar.)"), "{err}");
    assert_eq!(last_error(&h), err);
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        Err("timed out after 3000 ms".into()),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])),
        Err("no answer from the calendar server: timed out after 3000 ms".into())
    );
}

#[test]
fn refused_inserts_are_the_functions_failures() {
    let mut h = synced(json!({"allow_overlap": true}), page(&[]));
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    let post = format!("{EVENTS}?sendUpdates=all");
    // A service account without domain-wide delegation may not invite the organizer.
    h.answer_http(
        "POST",
        &post,
        answer(
            403,
            &[],
            &api_error(
                403,
                "forbiddenForServiceAccounts",
                "Service accounts cannot invite attendees without Domain-Wide Delegation of Authority.",
            ),
        ),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine", "bo@example.com"])),
        Err("Google refused to invite the organizer (HTTP 403 forbiddenForServiceAccounts: Service accounts cannot invite attendees without Domain-Wide Delegation of Authority.): a service account cannot invite attendees without domain-wide delegation; set oauth2.subject (a Workspace user the service account acts for, with domain-wide delegation) or create the booking without an organizer".into())
    );
    // The account's usage limit on creating events: its own text, no back-off.
    h.answer_http(
        "POST",
        &post,
        answer(
            403,
            &[],
            &api_error(403, "quotaExceeded", "Calendar usage limits exceeded."),
        ),
    );
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(
        err.starts_with("Google Calendar usage limit reached (HTTP 403 quotaExceeded: Calendar usage limits exceeded.)"),
        "{err}"
    );
    // A 400 to the insert.
    h.answer_http(
        "POST",
        &post,
        answer(
            400,
            &[],
            &api_error(400, "timeRangeEmpty", "The specified time range is empty."),
        ),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])),
        Err("the server refused the insert (HTTP 400 timeRangeEmpty: The specified time range is empty.)".into())
    );
    // None set last_error or started a back-off: reads and creates go on at once.
    assert_eq!(h.status("last_error"), None);
    h.answer_http("GET", &list_path(T0, T0 + H, None), page(&[]));
    assert_eq!(h.exec("list_bookings", json!([T0, T0 + H])), Ok(json!([])));
    h.answer_http("POST", &post, answer(200, &[], "{}"));
    h.answer_http("GET", &window(), page(&[]));
    assert!(h.exec("create_booking", json!([s, e, "Mine"])).is_ok());
    h.answer_http("GET", &window_at(T0 + 60, None), page(&[]));
    h.advance(Duration::from_secs(60));
    assert_eq!(last(&h).path, window_at(T0 + 60, None), "the poll runs");
}

#[test]
fn quota_exceeded_on_a_read_is_not_a_rate_limit() {
    let (mut h, e) = bad_then_recovered(answer(
        403,
        &[],
        &api_error(403, "quotaExceeded", "Calendar usage limits exceeded."),
    ));
    assert!(
        e.starts_with("Google Calendar usage limit reached (HTTP 403 quotaExceeded"),
        "{e}"
    );
    // No back-off: functions still reach the server.
    h.answer_http("GET", &list_path(T0, T0 + H, None), page(&[]));
    assert_eq!(h.exec("list_bookings", json!([T0, T0 + H])), Ok(json!([])));
    recover(&mut h, T0 + 120);
}

#[test]
fn zero_length_events_are_not_bookings() {
    let items = [
        ev("zero", T0 + 2 * H, T0 + 2 * H, "Reminder"),
        ev("real", T0 + 3 * H, T0 + 4 * H, "Real"),
    ];
    let mut h = with(&items);
    assert_eq!(
        h.status("bookings"),
        Some(json!([booking("real", "Real", T0 + 3 * H, T0 + 4 * H)]))
    );
    h.answer_http("GET", &list_path(T0, T0 + 5 * H, None), page(&items));
    assert_eq!(
        h.exec("list_bookings", json!([T0, T0 + 5 * H])),
        Ok(json!([booking("real", "Real", T0 + 3 * H, T0 + 4 * H)]))
    );
    h.answer_http("GET", &list_path(T0, T0 + 5 * H, None), page(&items));
    assert_eq!(
        h.exec("free_busy", json!([T0, T0 + 5 * H])),
        Ok(json!([{"start": T0 + 3 * H, "end": T0 + 4 * H}]))
    );
    // It does not block a booking at its time.
    let (s, e) = (T0 + 2 * H, T0 + 3 * H);
    h.answer_http("GET", &list_path(s, e, None), page(&items[..1]));
    h.answer_http(
        "POST",
        &format!("{EVENTS}?sendUpdates=all"),
        answer(200, &[], "{}"),
    );
    h.answer_http("GET", &window(), page(&items));
    assert!(h.exec("create_booking", json!([s, e, "Mine"])).is_ok());
}

#[test]
fn times_outside_the_unix_range_are_skipped_as_malformed() {
    let mut early = ev("early", 0, 0, "Year one");
    early["start"] = json!({"dateTime": "0001-01-01T00:00:00Z"});
    early["end"] = json!({"dateTime": "2026-01-01T02:00:00Z"});
    let mut late = ev("late", 0, 0, "Year 10000");
    late["start"] = json!({"dateTime": "2026-01-01T03:00:00Z"});
    late["end"] = json!({"dateTime": "9999-12-31T23:00:00-05:00"});
    let mut h = with(&[early, late, ev("ok", T0 + H, T0 + 2 * H, "Fine")]);
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
        "skipped 2 malformed event(s): event `early`: start: dateTime `0001-01-01T00:00:00Z` is outside"
    ));
}

#[test]
fn new_settings_read_the_new_calendar() {
    let mut h = with(&[ev("a1", T0 + H, T0 + 2 * H, "Old room")]);
    assert!(
        h.update_settings(json!({"calendar_id": "room-2@x"}))
            .is_ok()
    );
    let path = list_path(T0 - H, T0 + 24 * H, None)
        .replace("room-1%40resource.calendar.google.com", "room-2%40x");
    h.answer_http("GET", &path, page(&[]));
    h.advance(Duration::from_millis(10));
    assert_eq!(last(&h).path, path);
    assert_eq!(h.status("bookings"), Some(json!([])));
    // A refresh starts its own read of the new calendar.
    h.answer_http(
        "GET",
        &path,
        page(&[ev("b1", T0 + H, T0 + 2 * H, "New room")]),
    );
    assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("b1"));
}

fn event_path(id: &str) -> String {
    format!("{EVENTS}/{id}")
}

#[test]
fn cancel_deletes_an_event_the_room_organizes() {
    let mut h = with(&[]);
    let mut own = ev("own1", T0 + H, T0 + 2 * H, "Ours");
    own["organizer"] = json!({"email": CAL, "self": true});
    own["etag"] = json!("\"3181161784712000\"");
    h.answer_http(
        "GET",
        &event_path("own1"),
        answer(200, &[], &own.to_string()),
    );
    h.answer_http(
        "DELETE",
        &format!("{}?sendUpdates=all", event_path("own1")),
        answer(204, &[], ""),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert_eq!(
        h.exec("cancel_booking", json!(["own1", "No-show"])),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(header(&reqs[1], "Accept"), Some("application/json"));
    assert_eq!(reqs[2].method, "DELETE");
    assert_eq!(header(&reqs[2], "If-Match"), Some("\"3181161784712000\""));
    assert_eq!(reqs[3].path, window(), "read again");
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "cancelled booking own1: No-show"
    ));
}

#[test]
fn cancel_declines_an_event_the_room_is_invited_to() {
    let mut h = with(&[]);
    // One occurrence of a recurring event: its own id.
    let id = "abc123_20260101T090000Z";
    let mut inv = ev(id, T0 + 9 * H, T0 + 10 * H, "Weekly");
    inv["attendees"] = json!([
        {"email": "ann@example.com", "organizer": true, "responseStatus": "accepted"},
        {"email": CAL, "displayName": "Room 1", "resource": true, "self": true, "responseStatus": "accepted"},
        {"email": "bo@example.com", "responseStatus": "tentative", "optional": true}
    ]);
    h.answer_http("GET", &event_path(id), answer(200, &[], &inv.to_string()));
    h.answer_http(
        "PATCH",
        &format!("{}?sendUpdates=all", event_path(id)),
        answer(200, &[], &inv.to_string()),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert_eq!(
        h.exec("cancel_booking", json!([id, "Auto-released: no one came"])),
        Ok(Value::Null)
    );
    let patch = &h.http_requests()[2];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        header(patch, "If-Match"),
        Some(format!("\"e-{id}\"").as_str())
    );
    assert_eq!(header(patch, "Content-Type"), Some("application/json"));
    // Only the room's own entry, with attendeesOmitted: the others' entries are not
    // sent (an attendees array would replace them).
    assert_eq!(
        body_json(patch),
        json!({"attendeesOmitted": true, "attendees": [
            {"email": CAL, "displayName": "Room 1", "resource": true, "self": true,
             "responseStatus": "declined", "comment": "Auto-released: no one came"}
        ]})
    );
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        &format!("declined booking {id} for the room")
    ));

    // Neither organizer nor attendee: this calendar's copy is deleted.
    let mut stray = ev("stray", T0 + H, T0 + 2 * H, "Stray");
    stray.as_object_mut().unwrap().remove("attendees");
    h.answer_http(
        "GET",
        &event_path("stray"),
        answer(200, &[], &stray.to_string()),
    );
    h.answer_http(
        "DELETE",
        &format!("{}?sendUpdates=all", event_path("stray")),
        answer(204, &[], ""),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert_eq!(h.exec("cancel_booking", json!(["stray"])), Ok(Value::Null));
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "the room is neither its organizer nor an attendee"
    ));
}

#[test]
fn cancel_failures_are_told() {
    let mut h = with(&[]);
    // Unknown id.
    h.answer_http(
        "GET",
        &event_path("nope"),
        answer(404, &[], &api_error(404, "notFound", "Not Found")),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["nope"])),
        Err("no booking with id `nope` (HTTP 404)".into())
    );
    // Percent-encoded id.
    h.answer_http(
        "GET",
        &event_path("a%2Fb%20c"),
        answer(
            410,
            &[],
            &api_error(410, "deleted", "Resource has been deleted"),
        ),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["a/b c"])),
        Err("no booking with id `a/b c` (HTTP 410)".into())
    );
    // Already cancelled: done (as Graph answers), logged, no further request.
    let mut gone = ev("gone", T0, T0 + H, "Gone");
    gone["status"] = json!("cancelled");
    h.answer_http(
        "GET",
        &event_path("gone"),
        answer(200, &[], &gone.to_string()),
    );
    let n = h.http_requests().len();
    assert_eq!(h.exec("cancel_booking", json!(["gone"])), Ok(Value::Null));
    assert_eq!(h.http_requests().len(), n + 1, "only the read");
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "booking gone is already cancelled"
    ));
    // Already declined by the room: done, no PATCH.
    let mut declined = ev("dec", T0, T0 + H, "Declined");
    declined["attendees"][1]["responseStatus"] = json!("declined");
    h.answer_http(
        "GET",
        &event_path("dec"),
        answer(200, &[], &declined.to_string()),
    );
    assert_eq!(h.exec("cancel_booking", json!(["dec"])), Ok(Value::Null));
    assert_eq!(h.http_requests().len(), n + 2, "only the read");
    // Deleted between the read and the DELETE (410): done as well.
    let mut own_gone = ev("og", T0, T0 + H, "Own");
    own_gone["organizer"]["self"] = json!(true);
    h.answer_http(
        "GET",
        &event_path("og"),
        answer(200, &[], &own_gone.to_string()),
    );
    h.answer_http(
        "DELETE",
        &format!("{}?sendUpdates=all", event_path("og")),
        answer(
            410,
            &[],
            &api_error(410, "deleted", "Resource has been deleted"),
        ),
    );
    assert_eq!(h.exec("cancel_booking", json!(["og"])), Ok(Value::Null));
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "booking og is already cancelled"
    ));
    // Changed meanwhile.
    h.answer_http(
        "GET",
        &event_path("a1"),
        answer(200, &[], &ev("a1", T0, T0 + H, "A").to_string()),
    );
    h.answer_http(
        "PATCH",
        &format!("{}?sendUpdates=all", event_path("a1")),
        answer(
            412,
            &[],
            &api_error(412, "conditionNotMet", "Precondition Failed"),
        ),
    );
    h.answer_http("GET", &window(), page(&[]));
    assert_eq!(
        h.exec("cancel_booking", json!(["a1"])),
        Err("booking `a1` changed on the server since it was read (HTTP 412); not cancelled: try again".into())
    );
    // Not allowed to change it.
    h.answer_http(
        "GET",
        &event_path("a2"),
        answer(200, &[], &ev("a2", T0, T0 + H, "A").to_string()),
    );
    h.answer_http(
        "PATCH",
        &format!("{}?sendUpdates=all", event_path("a2")),
        answer(
            403,
            &[],
            &api_error(
                403,
                "forbiddenForNonOrganizer",
                "Shared properties can only be changed by the organizer of the event.",
            ),
        ),
    );
    let err = h.exec("cancel_booking", json!(["a2"])).unwrap_err();
    assert_eq!(
        err,
        "the room may not change this event (HTTP 403 forbiddenForNonOrganizer: Shared properties can only be changed by the organizer of the event.): only its organizer may"
    );
    // Garbage instead of the event.
    h.answer_http("GET", &event_path("a3"), answer(200, &[], "<html>"));
    assert_eq!(
        h.exec("cancel_booking", json!(["a3"])),
        Err(
            "malformed answer to the event's read: not an event (booking `a3` not cancelled)"
                .into()
        )
    );
    // A refused PATCH (400).
    h.answer_http(
        "GET",
        &event_path("a5"),
        answer(200, &[], &ev("a5", T0, T0 + H, "A").to_string()),
    );
    h.answer_http(
        "PATCH",
        &format!("{}?sendUpdates=all", event_path("a5")),
        answer(400, &[], &api_error(400, "invalid", "Invalid attendee.")),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["a5"])),
        Err("the server refused the decline (HTTP 400 invalid: Invalid attendee.)".into())
    );
    // None of these is the calendar's problem: last_error is untouched.
    assert_eq!(h.status("last_error"), None);
    // The token cannot be had.
    h.answer_http(
        "GET",
        &event_path("a4"),
        Err(
            "oauth2: the token endpoint refused the credentials (invalid_grant): Bad Request"
                .into(),
        ),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["a4"])),
        Err("cannot get an access token: the token endpoint refused the credentials (invalid_grant): Bad Request".into())
    );
    // The delete itself is rate limited.
    let mut own = ev("own", T0, T0 + H, "Own");
    own["organizer"]["self"] = json!(true);
    h.answer_http(
        "GET",
        &event_path("own"),
        answer(200, &[], &own.to_string()),
    );
    h.answer_http(
        "DELETE",
        &format!("{}?sendUpdates=all", event_path("own")),
        answer(429, &[("Retry-After", "7")], ""),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["own"])),
        Err("rate limited (HTTP 429); retrying in 7 s".into())
    );
}

#[test]
fn refresh_answers_after_the_read() {
    let mut h = with(&[]);
    h.answer_http(
        "GET",
        &window(),
        page(&[ev("n", T0 + H, T0 + 2 * H, "New")]),
    );
    assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("n"));
    h.answer_http(
        "GET",
        &window(),
        answer(404, &[], &api_error(404, "notFound", "Not Found")),
    );
    let err = h.exec("refresh", json!([])).unwrap_err();
    assert!(err.starts_with("calendar not found"), "{err}");
}

#[test]
fn primary_and_settings_changes() {
    let mut h = start(
        json!({"calendar_id": "primary", "poll_every_ms": 5000, "lookahead_hours": 2, "request_timeout_ms": 1500}),
    );
    let path = format!(
        "/calendar/v3/calendars/primary/events?timeMin={}&timeMax={}&singleEvents=true&orderBy=startTime&maxResults=250",
        iso(T0 - H),
        iso(T0 + 2 * H)
    );
    h.answer_http("GET", &path, page(&[]));
    h.advance(Duration::from_millis(10));
    assert_eq!(last(&h).path, path);
    assert_eq!(last(&h).timeout_ms, 1500);
    // The poll period.
    h.answer_http(
        "GET",
        &list_path(T0 + 5 - H, T0 + 5 + 2 * H, None)
            .replace("room-1%40resource.calendar.google.com", "primary"),
        page(&[]),
    );
    h.advance(Duration::from_millis(4990));
    assert_eq!(h.http_requests().len(), 2);
}

#[test]
fn settings_are_checked_on_load() {
    let refused = |s: Value| {
        let mut b = json!({"calendar_id": CAL});
        for (k, v) in s.as_object().unwrap() {
            b[k] = v.clone();
        }
        Harness::builder(lintel_bundled_drivers::GOOGLE_CALENDAR.component.to_vec())
            .settings(b)
            .start()
            .err()
            .expect("refused")
    };
    assert!(refused(json!({"calendar_id": " "})).contains("calendar_id is required"));
    assert!(
        refused(json!({"calendar_id": "a b@x"}))
            .contains("calendar_id `a b@x` must be a calendar id without spaces")
    );
    assert!(
        refused(json!({"poll_every_ms": 100}))
            .contains("poll_every_ms must be 5000..=86400000, got 100")
    );
    assert!(
        refused(json!({"lookahead_hours": 0})).contains("lookahead_hours must be 1..=744, got 0")
    );
    assert!(
        refused(json!({"request_timeout_ms": 70000}))
            .contains("request_timeout_ms must be 500..=60000, got 70000")
    );
    assert!(
        refused(json!({"time_zone": "Europe/Atlantis"}))
            .contains("time_zone `Europe/Atlantis` is not an IANA time zone")
    );
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
        assert!(names.contains(&f), "{f} in {names:?}");
    }
    assert!(info.functions.iter().all(|f| !f.description.is_empty()));
    assert_eq!(info.module_name, "Calendar");
}
