//! Harness tests: every answer shape Graph may give, scripted, in virtual time (which
//! starts at 2026-01-01T00:00:00Z). The harness answers for the engine, so no token is
//! involved; an engine that cannot get one is scripted as its `oauth2: …` error.

use lintel_driver_harness::{Harness, HttpAnswer, HttpCall, LogLevel, Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z, where virtual time starts.
const T0: i64 = 1_767_225_600;
const H: i64 = 3_600;
const MB: &str = "room-101@contoso.com";
const USER: &str = "/v1.0/users/room-101@contoso.com";
const SELECT: &str =
    "id,subject,start,end,organizer,attendees,isAllDay,sensitivity,showAs,isCancelled,isOrganizer";

/// `YYYY-MM-DDTHH:MM:SS` of unix seconds.
fn local(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The `calendarView` path the driver asks for `[start, end)`.
fn view(start: i64, end: i64) -> String {
    format!(
        "{USER}/calendarView?startDateTime={}Z&endDateTime={}Z&$select={SELECT}&$orderby=start/dateTime&$top=100",
        local(start),
        local(end)
    )
}

/// The poll's window at virtual `now`.
fn window(now: i64) -> String {
    view(now - H, now + 24 * H)
}

/// A Graph `dateTimeTimeZone` in UTC, with Graph's 7 fractional digits.
fn dt(unix: i64) -> Value {
    json!({"dateTime": format!("{}.0000000", local(unix)), "timeZone": "UTC"})
}

/// An event as `calendarView` lists it, with `extra` properties merged in.
fn ev(id: &str, start: i64, end: i64, subject: &str, extra: Value) -> Value {
    let mut e = json!({
        "@odata.etag": "W/\"DwAAABYAAAA\"",
        "id": id,
        "subject": subject,
        "start": dt(start),
        "end": dt(end),
        "isAllDay": false,
        "sensitivity": "normal",
        "showAs": "busy",
        "isCancelled": false,
        "isOrganizer": true,
        "organizer": {"emailAddress": {"name": "Room 101", "address": MB}},
        "attendees": [],
    });
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn page(events: &[Value], next: Option<&str>) -> Result<HttpAnswer, String> {
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('room-101%40contoso.com')/calendarView",
        "value": events,
    });
    if let Some(n) = next {
        body["@odata.nextLink"] = json!(n);
    }
    answer(
        200,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

fn graph_error(
    status: u16,
    headers: &[(&str, &str)],
    code: &str,
    msg: &str,
) -> Result<HttpAnswer, String> {
    let body = json!({"error": {"code": code, "message": msg,
        "innerError": {"date": "2026-01-01T00:00:00", "request-id": "r", "client-request-id": "c"}}});
    answer(status, headers, &body.to_string())
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

fn component() -> Vec<u8> {
    lintel_bundled_drivers::MSGRAPH.component.to_vec()
}

fn start(settings: Value) -> Harness {
    let mut base = json!({"mailbox": MB});
    for (k, v) in settings.as_object().unwrap() {
        base[k] = v.clone();
    }
    Harness::builder(component())
        .settings(base)
        .start()
        .expect("the driver starts")
}

/// Started, with the first read answered by `first`.
fn synced(settings: Value, first: Result<HttpAnswer, String>) -> Harness {
    let mut h = start(settings);
    h.answer_http("GET", &window(T0), first);
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 1, "one read after loading");
    h
}

fn one_booking() -> Harness {
    let h = synced(
        json!({}),
        page(&[ev("a", T0 + H, T0 + 2 * H, "A", json!({}))], None),
    );
    assert_eq!(h.status("bookings").unwrap()[0]["id"], json!("a"));
    h
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

fn paths(h: &Harness) -> Vec<String> {
    h.http_requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn body_json(req: &HttpCall) -> Value {
    serde_json::from_slice(&req.body).expect("a JSON body")
}

fn ids(v: Option<Value>) -> Vec<String> {
    v.unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn polls_the_calendar_view_into_the_bookings_status() {
    let events = [
        // Started before the window (now - 1 h), still running.
        ev("running", T0 - 2 * H, T0 + H / 2, "Running", json!({})),
        ev(
            "AAMkAGI2+/b=_-x",
            T0 + 9 * H,
            T0 + 10 * H,
            "Board, Q1 & <co>",
            json!({
                "sensitivity": "confidential",
                "isOrganizer": false,
                "organizer": {"emailAddress": {"name": "Ann", "address": "ann@contoso.com"}},
                "attendees": [
                    {"type": "required", "status": {"response": "none"}, "emailAddress": {"name": "Bo", "address": "bo@contoso.com"}},
                    {"type": "resource", "emailAddress": {"name": "Room 101", "address": MB}},
                ],
            }),
        ),
        // All day: Graph gives midnight to midnight.
        ev("day", T0, T0 + 24 * H, "Offsite", json!({"isAllDay": true})),
        // Non-ASCII everywhere.
        ev(
            "jp",
            T0 + 11 * H,
            T0 + 12 * H,
            "東京会議室の定例 🚀",
            json!({"organizer": {"emailAddress": {"name": "山田 太郎"}},
                   "attendees": [{"emailAddress": {"name": "Zoë", "address": "zoë@exämple.com"}}]}),
        ),
        // Tentative and out-of-office block the room; a private one keeps its flag.
        ev(
            "tent",
            T0 + 13 * H,
            T0 + 14 * H,
            "Maybe",
            json!({"showAs": "tentative", "sensitivity": "private"}),
        ),
        ev(
            "oof",
            T0 + 14 * H,
            T0 + 15 * H,
            "Away",
            json!({"showAs": "oof"}),
        ),
        // Left out: cancelled, free, working elsewhere.
        ev(
            "cancelled",
            T0 + 2 * H,
            T0 + 3 * H,
            "Off",
            json!({"isCancelled": true}),
        ),
        ev(
            "free",
            T0 + 3 * H,
            T0 + 4 * H,
            "FYI",
            json!({"showAs": "free"}),
        ),
        ev(
            "elsewhere",
            T0 + 4 * H,
            T0 + 5 * H,
            "Remote",
            json!({"showAs": "workingElsewhere"}),
        ),
        // No subject at all.
        json!({"id": "nosubject", "start": dt(T0 + 16 * H), "end": dt(T0 + 17 * H)}),
    ];
    let mut h = synced(json!({}), page(&events, None));
    let req = &h.http_requests()[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, window(T0));
    assert!(
        req.path
            .contains("startDateTime=2025-12-31T23:00:00Z&endDateTime=2026-01-02T00:00:00Z"),
        "{}",
        req.path
    );
    assert_eq!(header(req, "Prefer"), Some("outlook.timezone=\"UTC\""));
    assert_eq!(header(req, "Accept"), Some("application/json"));
    assert_eq!(req.timeout_ms, 3000);
    assert_eq!(
        header(req, "Authorization"),
        None,
        "tokens are the engine's"
    );
    assert_eq!(
        h.status("bookings"),
        Some(json!([
            {"id": "running", "title": "Running", "start": T0 - 2 * H, "end": T0 + H / 2,
             "organizer": MB, "attendees": [], "all_day": false, "private": false},
            {"id": "day", "title": "Offsite", "start": T0, "end": T0 + 24 * H,
             "organizer": MB, "attendees": [], "all_day": true, "private": false},
            {"id": "AAMkAGI2+/b=_-x", "title": "Board, Q1 & <co>", "start": T0 + 9 * H, "end": T0 + 10 * H,
             "organizer": "ann@contoso.com", "attendees": ["bo@contoso.com"],
             "all_day": false, "private": true},
            {"id": "jp", "title": "東京会議室の定例 🚀", "start": T0 + 11 * H, "end": T0 + 12 * H,
             "organizer": "山田 太郎", "attendees": ["zoë@exämple.com"], "all_day": false, "private": false},
            {"id": "tent", "title": "Maybe", "start": T0 + 13 * H, "end": T0 + 14 * H,
             "organizer": MB, "attendees": [], "all_day": false, "private": true},
            {"id": "oof", "title": "Away", "start": T0 + 14 * H, "end": T0 + 15 * H,
             "organizer": MB, "attendees": [], "all_day": false, "private": false},
            {"id": "nosubject", "title": "", "start": T0 + 16 * H, "end": T0 + 17 * H,
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

    // The next poll, one period later, asks for the moved window.
    h.answer_http(
        "GET",
        &window(T0 + 60),
        page(&[ev("n", T0 + H, T0 + 2 * H, "New", json!({}))], None),
    );
    h.advance(Duration::from_millis(59_989));
    assert_eq!(h.http_requests().len(), 1, "no poll before its period");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.http_requests().len(), 2);
    assert_eq!(h.http_requests()[1].path, window(T0 + 60));
    assert_eq!(ids(h.status("bookings")), ["n"]);
    assert_eq!(h.status("last_sync"), Some(json!(T0 + 60)));
}

#[test]
fn settings_shape_the_requests() {
    let mut h = start(
        json!({"api_version": "beta", "mailbox": " 6b1e5a2c-1d3f-4c4e-9a7b-000000000001 ",
                             "lookahead_hours": 48, "request_timeout_ms": 1500, "poll_every_ms": 5000}),
    );
    let path = format!(
        "/beta/users/6b1e5a2c-1d3f-4c4e-9a7b-000000000001/calendarView?startDateTime={}Z&endDateTime={}Z&$select={SELECT}&$orderby=start/dateTime&$top=100",
        local(T0 - H),
        local(T0 + 48 * H)
    );
    h.answer_http("GET", &path, page(&[], None));
    h.advance(Duration::from_millis(10));
    assert_eq!(paths(&h), [format!("GET {path}")]);
    assert_eq!(h.http_requests()[0].timeout_ms, 1500);
    assert_eq!(h.status("bookings"), Some(json!([])));
}

#[test]
fn next_links_are_followed_on_the_module_host() {
    let link2 = "https://graph.microsoft.com/v1.0/users/room-101@contoso.com/calendarView?startDateTime=2025-12-31T23:00:00Z&endDateTime=2026-01-02T00:00:00Z&$top=100&$skiptoken=AbC%3D%3D";
    let path2 = link2.strip_prefix("https://graph.microsoft.com").unwrap();
    let link3 = format!(
        "{}&$skiptoken=page3",
        link2.split("&$skiptoken").next().unwrap()
    );
    let path3 = link3
        .strip_prefix("https://graph.microsoft.com")
        .unwrap()
        .to_string();
    let mut h = start(json!({}));
    h.answer_http(
        "GET",
        &window(T0),
        page(&[ev("a", T0 + H, T0 + 2 * H, "A", json!({}))], Some(link2)),
    );
    h.answer_http(
        "GET",
        path2,
        page(
            &[ev("b", T0 + 2 * H, T0 + 3 * H, "B", json!({}))],
            Some(&link3),
        ),
    );
    // The last page repeats an event (a calendar changing while paged): listed once.
    h.answer_http(
        "GET",
        &path3,
        page(
            &[
                ev("b", T0 + 2 * H, T0 + 3 * H, "B", json!({})),
                ev("c", T0 + 3 * H, T0 + 4 * H, "C", json!({})),
            ],
            None,
        ),
    );
    h.advance(Duration::from_millis(10));
    let reqs = h.http_requests();
    assert_eq!(reqs.len(), 3, "{:?}", paths(&h));
    assert_eq!(reqs[1].path, path2);
    assert_eq!(reqs[2].path, path3);
    for r in &reqs {
        assert_eq!(header(r, "Prefer"), Some("outlook.timezone=\"UTC\""));
        assert_eq!(r.timeout_ms, 3000);
    }
    assert_eq!(ids(h.status("bookings")), ["a", "b", "c"]);

    // list_bookings pages too.
    let link =
        "https://graph.microsoft.com/v1.0/users/room-101@contoso.com/calendarView?$skiptoken=L";
    h.answer_http(
        "GET",
        &view(T0, T0 + 48 * H),
        page(&[ev("x", T0 + H, T0 + 2 * H, "X", json!({}))], Some(link)),
    );
    h.answer_http(
        "GET",
        "/v1.0/users/room-101@contoso.com/calendarView?$skiptoken=L",
        page(&[ev("y", T0 + 30 * H, T0 + 31 * H, "Y", json!({}))], None),
    );
    let listed = h.exec("list_bookings", json!([T0, T0 + 48 * H])).unwrap();
    assert_eq!(ids(Some(listed)), ["x", "y"]);
}

#[test]
fn paging_stops_at_the_cap_with_a_warning() {
    let mut h = start(json!({}));
    let link = |n: usize| {
        format!(
            "https://graph.microsoft.com/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={n}"
        )
    };
    h.answer_http(
        "GET",
        &window(T0),
        page(
            &[ev("e0", T0 + H, T0 + 2 * H, "E", json!({}))],
            Some(&link(1)),
        ),
    );
    for n in 1..=25 {
        let events = [ev(
            &format!("e{n}"),
            T0 + H + n as i64 * 60,
            T0 + 2 * H,
            "E",
            json!({}),
        )];
        h.answer_http(
            "GET",
            &format!("/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={n}"),
            page(&events, Some(&link(n + 1))),
        );
    }
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 20, "at most 20 pages");
    assert_eq!(h.status("bookings").unwrap().as_array().unwrap().len(), 20);
    assert!(
        has_log(
            &mut h,
            LogLevel::Warn,
            "the calendar view has more than 20 pages of 100 (20 events read in 20 pages); the rest is left out"
        ),
        "{:?}",
        h.logs()
    );
    assert_eq!(h.status("last_error"), None, "not an error");
}

#[test]
fn a_next_link_to_another_host_is_refused_and_bookings_are_kept() {
    let mut h = one_booking();
    h.answer_http(
        "GET",
        &window(T0 + 60),
        page(
            &[ev("z", T0 + H, T0 + 2 * H, "Z", json!({}))],
            Some("https://evil.example.com/v1.0/steal?x=1"),
        ),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(h.http_requests().len(), 2, "the other host is never asked");
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "refused `@odata.nextLink` to another host `evil.example.com` (only Microsoft Graph hosts are followed)"
        ))
    );
    assert_eq!(ids(h.status("bookings")), ["a"], "previous bookings kept");
    // http to graph.microsoft.com (not https) is refused too.
    h.answer_http(
        "GET",
        &window(T0 + 120),
        page(&[], Some("http://graph.microsoft.com/v1.0/x")),
    );
    h.advance(Duration::from_secs(60));
    assert!(
        h.status("last_error")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("another host `graph.microsoft.com`")
    );
}

#[test]
fn authentication_and_permission_failures_are_clear_then_recover() {
    let mut h = synced(
        json!({}),
        graph_error(
            401,
            &[("WWW-Authenticate", "Bearer realm=\"\"")],
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        ),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "authentication failed (HTTP 401 InvalidAuthenticationToken): check the module's oauth2 settings"
        ))
    );
    assert!(has_log(
        &mut h,
        LogLevel::Warn,
        "authentication failed (HTTP 401"
    ));
    h.answer_http(
        "GET",
        &window(T0),
        graph_error(
            401,
            &[],
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ),
    );
    let err = h.exec("refresh", json!([])).unwrap_err();
    assert!(
        err.contains("HTTP 401"),
        "functions fail with it too: {err}"
    );
    assert_eq!(h.status("bookings"), None);

    h.answer_http(
        "GET",
        &window(T0 + 60),
        graph_error(
            403,
            &[],
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "access denied (HTTP 403 ErrorAccessDenied) to mailbox `room-101@contoso.com`: the app needs the Calendars.ReadWrite application permission, and an application access policy may exclude this mailbox; check the module's oauth2 settings"
        ))
    );
    // A 403 without a Graph body.
    h.answer_http("GET", &window(T0 + 120), answer(403, &[], "Forbidden"));
    h.advance(Duration::from_secs(60));
    assert!(
        h.status("last_error")
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("access denied (HTTP 403) to mailbox")
    );

    h.answer_http(
        "GET",
        &window(T0 + 180),
        page(&[ev("a", T0 + H, T0 + 2 * H, "A", json!({}))], None),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "the calendar answers again"
    ));
    assert_eq!(ids(h.status("bookings")), ["a"]);
}

#[test]
fn an_engine_without_a_token_is_reported_as_such() {
    let e = "oauth2: the token endpoint refused the credentials (invalid_client): AADSTS7000215: Invalid client secret provided.";
    let mut h = synced(json!({}), Err(e.into()));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "cannot get an access token: the token endpoint refused the credentials (invalid_client): AADSTS7000215: Invalid client secret provided."
        ))
    );
    h.answer_http(
        "GET",
        &view(T0, T0 + H),
        Err("oauth2: the token endpoint is busy (HTTP 429); next try in 30 s".into()),
    );
    assert_eq!(
        h.exec("list_bookings", json!([T0, T0 + H])),
        Err(
            "cannot get an access token: the token endpoint is busy (HTTP 429); next try in 30 s"
                .into()
        )
    );
    h.answer_http("GET", &window(T0 + 60), page(&[], None));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("bookings"), Some(json!([])));
}

#[test]
fn a_wrong_mailbox_is_named() {
    for code in ["ErrorInvalidUser", "ResourceNotFound"] {
        let h = synced(
            json!({}),
            graph_error(
                404,
                &[],
                code,
                "The requested user 'room-101@contoso.com' is invalid.",
            ),
        );
        assert_eq!(
            h.status("last_error"),
            Some(json!(format!(
                "mailbox not found (HTTP 404 {code}): check mailbox `room-101@contoso.com`"
            )))
        );
    }
    // A view Graph refuses is the calendar's problem too.
    let h = synced(
        json!({}),
        graph_error(
            400,
            &[],
            "ErrorInvalidParameter",
            "This request requires a time window.",
        ),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "the server refused the calendar view (HTTP 400 ErrorInvalidParameter): This request requires a time window."
        ))
    );
}

#[test]
fn timeouts_and_refused_connections_then_recovery() {
    let mut h = one_booking();
    h.answer_http(
        "GET",
        &window(T0 + 60),
        Err("no answer within 3000 ms".into()),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "no answer from Microsoft Graph: no answer within 3000 ms"
        ))
    );
    assert_eq!(ids(h.status("bookings")), ["a"], "kept");
    h.answer_http(
        "GET",
        &window(T0 + 120),
        Err("cannot reach graph.microsoft.com: connection refused".into()),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "no answer from Microsoft Graph: cannot reach graph.microsoft.com: connection refused"
        ))
    );
    h.answer_http("GET", &window(T0 + 180), page(&[], None));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("bookings"), Some(json!([])));
}

#[test]
fn retry_after_is_obeyed_then_the_driver_recovers() {
    for (status, code, kind) in [
        (429, "TooManyRequests", "server busy"),
        (503, "ServiceUnavailable", "server error"),
        (504, "GatewayTimeout", "server error"),
    ] {
        let mut h = synced(
            json!({}),
            graph_error(
                status,
                &[("Retry-After", "120")],
                code,
                "Please retry later.",
            ),
        );
        let why = format!("{kind} (HTTP {status} {code})");
        assert_eq!(
            h.status("last_error"),
            Some(json!(format!("{why}; retrying in 120 s")))
        );
        // Functions are refused while waiting, without asking the server.
        let err = h.exec("list_bookings", json!([T0, T0 + H])).unwrap_err();
        assert!(err.starts_with(&format!("{why}; retrying in")), "{err}");
        assert!(h.exec("refresh", json!([])).is_err());
        assert!(h.exec("cancel_booking", json!(["a"])).is_err());
        assert!(
            h.exec("create_booking", json!([T0 + H, T0 + 2 * H, "X"]))
                .is_err()
        );
        // The regular poll at 60 s is skipped.
        h.advance(Duration::from_secs(60));
        assert_eq!(h.http_requests().len(), 1);
        h.answer_http(
            "GET",
            &window(T0 + 120),
            page(&[ev("a", T0 + H, T0 + 2 * H, "A", json!({}))], None),
        );
        h.advance(Duration::from_secs(60));
        assert_eq!(h.http_requests().len(), 2, "asked again after 120 s");
        assert_eq!(h.status("last_error"), Some(Value::Null));
        assert_eq!(ids(h.status("bookings")), ["a"]);
    }
}

#[test]
fn too_many_requests_backs_off_by_date_default_or_cap() {
    let mut h = synced(
        json!({}),
        graph_error(
            429,
            &[("Retry-After", "Thu, 01 Jan 2026 00:05:00 GMT")],
            "TooManyRequests",
            "x",
        ),
    );
    assert_eq!(
        h.status("last_error"),
        Some(json!(
            "server busy (HTTP 429 TooManyRequests); retrying in 300 s"
        ))
    );
    h.advance(Duration::from_secs(250));
    assert_eq!(h.http_requests().len(), 1);
    h.answer_http("GET", &window(T0 + 300), page(&[], None));
    h.advance(Duration::from_secs(50));
    assert_eq!(h.http_requests().len(), 2);
    assert_eq!(h.status("last_error"), Some(Value::Null));

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
    let mut h = one_booking();
    h.answer_http(
        "GET",
        &window(T0 + 60),
        graph_error(500, &[], "generalException", "An unspecified error."),
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.status("last_error"),
        Some(json!("server error (HTTP 500 generalException)"))
    );
    assert_eq!(ids(h.status("bookings")), ["a"]);
    // Not backing off: a function asks at once.
    h.answer_http("GET", &view(T0, T0 + H), page(&[], None));
    assert_eq!(h.exec("list_bookings", json!([T0, T0 + H])), Ok(json!([])));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn garbage_and_wrong_shapes_keep_the_previous_bookings() {
    let cases: Vec<(Result<HttpAnswer, String>, &str)> = vec![
        (
            answer(
                200,
                &[("Content-Type", "text/html")],
                "<html><body>Sign in to your account</body></html>",
            ),
            "malformed answer: not JSON",
        ),
        (
            answer(200, &[], ""),
            "malformed answer: empty body (expected JSON)",
        ),
        (
            answer(200, &[], "{\"value\": [{\"id\": \"a\""),
            "malformed answer: not JSON",
        ),
        (
            answer(200, &[], "\u{1}\u{2}\u{ff}garbage"),
            "malformed answer: not JSON",
        ),
        (
            answer(200, &[], "{\"values\": []}"),
            "malformed answer: expected an object with a `value` array, got an object without it",
        ),
        (
            answer(200, &[], "[1, 2]"),
            "malformed answer: expected an object with a `value` array, got an array",
        ),
        (
            answer(200, &[], "{\"value\": {}}"),
            "malformed answer: expected an object with a `value` array",
        ),
        (
            answer(200, &[], "{\"value\": [], \"@odata.nextLink\": 5}"),
            "malformed answer: `@odata.nextLink` is not a string",
        ),
        (
            answer(204, &[], ""),
            "unexpected answer to the calendar view: HTTP 204",
        ),
        (
            answer(
                302,
                &[("Location", "https://login.microsoftonline.com/")],
                "",
            ),
            "unexpected answer to the calendar view: HTTP 302",
        ),
    ];
    let mut h = one_booking();
    let mut now = T0;
    for (bad, want) in cases {
        now += 60;
        h.answer_http("GET", &window(now), bad);
        h.advance(Duration::from_secs(60));
        let e = h.status("last_error").unwrap();
        assert!(e.as_str().unwrap().starts_with(want), "{e} for {want}");
        assert!(has_log(&mut h, LogLevel::Warn, want), "logged: {want}");
        assert_eq!(ids(h.status("bookings")), ["a"], "kept after {want}");
    }
    now += 60;
    h.answer_http("GET", &window(now), page(&[], None));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("bookings"), Some(json!([])));
    assert!(h.error().is_none(), "never a trap");
}

#[test]
fn malformed_events_are_skipped_and_the_others_kept() {
    let events = [
        ev("good", T0 + H, T0 + 2 * H, "Good", json!({})),
        json!({"id": "nostart", "end": dt(T0 + H)}),
        ev(
            "badtime",
            T0 + H,
            T0 + 2 * H,
            "x",
            json!({"start": {"dateTime": "tomorrow", "timeZone": "UTC"}}),
        ),
        ev(
            "pacific",
            T0 + H,
            T0 + 2 * H,
            "x",
            json!({"start": {"dateTime": "2026-01-01T01:00:00.0000000", "timeZone": "Pacific Standard Time"}}),
        ),
        ev("backwards", T0 + 3 * H, T0 + 2 * H, "x", json!({})),
        json!({"subject": "no id", "start": dt(T0), "end": dt(T0 + H)}),
        json!("not an event"),
        // An explicit offset is read with it.
        ev(
            "offset",
            T0,
            T0,
            "Offset",
            json!({"start": {"dateTime": "2026-01-01T05:00:00+02:00", "timeZone": "whatever"},
                                                "end": {"dateTime": "2026-01-01T06:00:00+02:00", "timeZone": "whatever"}}),
        ),
    ];
    let mut h = synced(json!({}), page(&events, None));
    assert_eq!(ids(h.status("bookings")), ["good", "offset"]);
    assert_eq!(h.status("bookings").unwrap()[1]["start"], json!(T0 + 3 * H));
    assert!(
        has_log(
            &mut h,
            LogLevel::Warn,
            "skipped 6 malformed event(s): nostart: no start; badtime: start: bad dateTime `tomorrow`; pacific: start: time zone `Pacific Standard Time` is not UTC"
        ),
        "{:?}",
        h.logs()
    );
    assert_eq!(h.status("last_error"), None);
}

#[test]
fn oversized_answers_and_many_bookings_stay_within_limits() {
    // Over 4 MiB: not parsed.
    let mut h = one_booking();
    let big = format!(
        "{{\"value\": [], \"pad\": \"{}\"}}",
        "x".repeat(4 * 1024 * 1024)
    );
    h.answer_http("GET", &window(T0 + 60), answer(200, &[], &big));
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.status("last_error"),
        Some(json!(format!(
            "the answer is {} bytes, over the 4194304-byte limit",
            big.len()
        )))
    );
    assert_eq!(ids(h.status("bookings")), ["a"]);

    // 20 pages of 100 events with long titles: the status is cut under 64 KiB, in budget.
    let mut h = start(json!({}));
    let link = |n: usize| {
        format!(
            "https://graph.microsoft.com/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={n}"
        )
    };
    for p in 0..20 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                let n = (p * 100 + i) as i64;
                ev(
                    &format!("AAMkAD{n:06}"),
                    T0 + n * 30,
                    T0 + n * 30 + 1800,
                    &"Weekly planning 週次 ".repeat(12),
                    json!({}),
                )
            })
            .collect();
        let path = if p == 0 {
            window(T0)
        } else {
            format!("/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={p}")
        };
        h.answer_http("GET", &path, page(&events, Some(&link(p + 1))));
    }
    h.advance(Duration::from_millis(10));
    assert!(h.error().is_none(), "{:?}", h.error());
    let bookings = h.status("bookings").unwrap();
    let n = bookings.as_array().unwrap().len();
    assert!(n > 50 && n < 2000, "{n}");
    assert!(bookings.to_string().len() <= 60_000);
    assert!(
        has_log(
            &mut h,
            LogLevel::Warn,
            &format!("the bookings status holds the first {n} of 2000 bookings")
        ),
        "{:?}",
        h.logs()
    );
    // list_bookings answers up to 2000.
    h.answer_http(
        "GET",
        &view(T0, T0 + 24 * H),
        page(
            &(0..3)
                .map(|i| ev(&format!("l{i}"), T0 + i, T0 + H, "L", json!({})))
                .collect::<Vec<_>>(),
            None,
        ),
    );
    assert_eq!(
        h.exec("list_bookings", json!([T0, T0 + 24 * H]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn list_and_free_busy_ask_for_their_range() {
    let mut h = one_booking();
    let events = [
        ev("a", T0 + 5 * H, T0 + 7 * H, "A", json!({})),
        ev(
            "b",
            T0 + 6 * H,
            T0 + 8 * H,
            "B",
            json!({"showAs": "tentative"}),
        ),
        ev(
            "free",
            T0 + 9 * H,
            T0 + 10 * H,
            "F",
            json!({"showAs": "free"}),
        ),
        ev(
            "c",
            T0 + 11 * H,
            T0 + 20 * H,
            "C",
            json!({"isCancelled": true}),
        ),
        ev("d", T0 + 17 * H, T0 + 19 * H, "D", json!({})),
    ];
    h.answer_http("GET", &view(T0 + 6 * H, T0 + 18 * H), page(&events, None));
    assert_eq!(
        h.exec("free_busy", json!([T0 + 6 * H, T0 + 18 * H])),
        Ok(
            json!([{"start": T0 + 6 * H, "end": T0 + 8 * H}, {"start": T0 + 17 * H, "end": T0 + 18 * H}])
        )
    );
    h.answer_http("GET", &view(T0 + 6 * H, T0 + 18 * H), page(&events, None));
    let listed = h
        .exec("list_bookings", json!([T0 + 6 * H, T0 + 18 * H]))
        .unwrap();
    assert_eq!(ids(Some(listed)), ["a", "b", "d"]);
    // Bad ranges are refused without a request.
    let before = h.http_requests().len();
    assert!(
        h.exec("list_bookings", json!([T0, T0]))
            .unwrap_err()
            .contains("must be after start")
    );
    assert!(
        h.exec("list_bookings", json!([T0, T0 + 400 * 24 * H]))
            .unwrap_err()
            .contains("at most 366 days")
    );
    assert!(h.exec("free_busy", json!([-5, T0])).is_err());
    assert!(
        h.exec("list_bookings", json!([T0, 253_402_300_800i64]))
            .is_err()
    );
    assert!(h.exec("list_bookings", json!(["soon", T0])).is_err());
    assert_eq!(h.http_requests().len(), before);
}

#[test]
fn create_checks_the_range_then_posts_the_event() {
    let mut h = one_booking();
    let (s, e) = (T0 + 3 * H, T0 + 4 * H);
    h.answer_http("GET", &view(s, e), page(&[], None));
    let created = ev(
        "AAMkNEW+/=",
        s,
        e,
        "Stand-up ☕",
        json!({
            "attendees": [{"type": "required", "emailAddress": {"address": "ann@contoso.com"}}],
            "organizer": {"emailAddress": {"name": "Room 101", "address": MB}},
        }),
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        answer(
            201,
            &[("Content-Type", "application/json")],
            &created.to_string(),
        ),
    );
    h.answer_http(
        "GET",
        &window(T0),
        page(
            &[ev("a", T0 + H, T0 + 2 * H, "A", json!({})), created.clone()],
            None,
        ),
    );
    let booking = h
        .exec(
            "create_booking",
            json!([s, e, "  Stand-up ☕ ", "mailto:ann@contoso.com"]),
        )
        .unwrap();
    assert_eq!(
        booking,
        json!({"id": "AAMkNEW+/=", "title": "Stand-up ☕", "start": s, "end": e, "organizer": MB,
               "attendees": ["ann@contoso.com"], "all_day": false, "private": false})
    );
    let reqs = h.http_requests();
    assert_eq!(
        paths(&h)[1..],
        [
            format!("GET {}", view(s, e)),
            format!("POST {USER}/events"),
            format!("GET {}", window(T0))
        ]
    );
    let post = &reqs[2];
    assert_eq!(header(post, "Content-Type"), Some("application/json"));
    let body = body_json(post);
    let tx = body["transactionId"].as_str().unwrap().to_string();
    assert!(tx.starts_with("lintel-") && tx.len() > 20, "{tx}");
    assert_eq!(
        body,
        json!({"subject": "Stand-up ☕",
               "start": {"dateTime": "2026-01-01T03:00:00", "timeZone": "UTC"},
               "end": {"dateTime": "2026-01-01T04:00:00", "timeZone": "UTC"},
               "showAs": "busy", "transactionId": tx,
               "attendees": [{"emailAddress": {"address": "ann@contoso.com"}, "type": "required"}]})
    );
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "created booking AAMkNEW+/="
    ));
    assert_eq!(
        ids(h.status("bookings")),
        ["a", "AAMkNEW+/="],
        "read again after creating"
    );

    // Another booking gets another transactionId; no organizer, no attendees.
    h.answer_http("GET", &view(s + 2 * H, e + 2 * H), page(&[], None));
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        answer(
            201,
            &[],
            &ev("n2", s + 2 * H, e + 2 * H, "Two", json!({})).to_string(),
        ),
    );
    h.answer_http("GET", &window(T0), page(&[], None));
    h.exec("create_booking", json!([s + 2 * H, e + 2 * H, "Two"]))
        .unwrap();
    let body2 = body_json(&h.http_requests()[5]);
    assert_ne!(body2["transactionId"], json!(tx));
    assert!(body2.get("attendees").is_none());
}

#[test]
fn create_refuses_overlaps_unless_allowed() {
    let mut h = one_booking();
    let (s, e) = (T0 + H + 1800, T0 + 3 * H);
    h.answer_http(
        "GET",
        &view(s, e),
        page(&[ev("a", T0 + H, T0 + 2 * H, "Team sync", json!({}))], None),
    );
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert_eq!(
        err,
        "the room is already booked from 2026-01-01T01:00:00Z to 2026-01-01T02:00:00Z (`Team sync`, id a); set allow_overlap to allow overlapping bookings"
    );
    // A private one's title is not told; free and cancelled ones do not clash.
    h.answer_http(
        "GET",
        &view(s, e),
        page(
            &[
                ev("f", s, e, "Free", json!({"showAs": "free"})),
                ev("c", s, e, "Gone", json!({"isCancelled": true})),
                ev("p", s, e, "Secret", json!({"sensitivity": "private"})),
            ],
            None,
        ),
    );
    let err = h.exec("create_booking", json!([s, e, "Mine"])).unwrap_err();
    assert!(
        err.contains("(a private booking, id p)") && !err.contains("Secret"),
        "{err}"
    );
    assert!(
        !paths(&h).iter().any(|p| p.starts_with("POST")),
        "never posted"
    );

    let mut h = synced(json!({"allow_overlap": true}), page(&[], None));
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        answer(201, &[], &ev("n", s, e, "Mine", json!({})).to_string()),
    );
    h.answer_http("GET", &window(T0), page(&[], None));
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])).unwrap()["id"],
        json!("n")
    );
    assert_eq!(
        paths(&h)[1],
        format!("POST {USER}/events"),
        "no overlap check"
    );
}

#[test]
fn create_failures_are_explained() {
    let mut h = synced(json!({"allow_overlap": true}), page(&[], None));
    let (s, e) = (T0 + H, T0 + 2 * H);
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        graph_error(
            400,
            &[],
            "ErrorPropertyValidationFailure",
            "At least one property failed validation.",
        ),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "X"])),
        Err("the server refused the new event (HTTP 400 ErrorPropertyValidationFailure): At least one property failed validation.".into())
    );
    assert_eq!(h.http_requests().len(), 2, "not read again after a refusal");
    assert_eq!(
        h.status("last_error"),
        None,
        "a refused create is not a calendar problem"
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        graph_error(403, &[], "ErrorAccessDenied", "Access is denied."),
    );
    assert!(
        h.exec("create_booking", json!([s, e, "X"]))
            .unwrap_err()
            .starts_with("access denied (HTTP 403 ErrorAccessDenied)")
    );
    // Created, but the answer is not an event: said so, and read again.
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        answer(201, &[], "<html>"),
    );
    h.answer_http("GET", &window(T0), page(&[], None));
    let err = h.exec("create_booking", json!([s, e, "X"])).unwrap_err();
    assert!(
        err.starts_with("the server answered HTTP 201 but not with an event (")
            && err.ends_with("the booking may exist: refresh to see it"),
        "{err}"
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        Err("no answer within 3000 ms".into()),
    );
    assert_eq!(
        h.exec("create_booking", json!([s, e, "X"])),
        Err("no answer from Microsoft Graph: no answer within 3000 ms".into())
    );
    // Arguments are checked first.
    let before = h.http_requests().len();
    assert!(
        h.exec("create_booking", json!([s, e, "   "]))
            .unwrap_err()
            .contains("title must be 1 to 255")
    );
    assert!(
        h.exec("create_booking", json!([s, e, "x".repeat(256)]))
            .is_err()
    );
    assert!(
        h.exec("create_booking", json!([s, e, "X", "not an address"]))
            .unwrap_err()
            .contains("is not an e-mail address")
    );
    assert!(h.exec("create_booking", json!([e, s, "X"])).is_err());
    assert_eq!(h.http_requests().len(), before);
}

#[test]
fn cancel_cancels_the_rooms_own_events_and_declines_others() {
    let mut h = one_booking();
    let id = "AAMkAGI2TG93AAA=+/x_y-z";
    let enc = "AAMkAGI2TG93AAA%3D%2B%2Fx_y-z";
    let fetch = format!("{USER}/events/{enc}?$select=id,subject,isOrganizer,isCancelled");
    h.answer_http(
        "GET",
        &fetch,
        answer(
            200,
            &[],
            &json!({"id": id, "subject": "S", "isOrganizer": true, "isCancelled": false})
                .to_string(),
        ),
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events/{enc}/cancel"),
        answer(202, &[], ""),
    );
    h.answer_http("GET", &window(T0), page(&[], None));
    assert_eq!(
        h.exec(
            "cancel_booking",
            json!([id, "Auto-released: no one checked in"])
        ),
        Ok(Value::Null)
    );
    let reqs = h.http_requests();
    assert_eq!(
        paths(&h)[1..],
        [
            format!("GET {fetch}"),
            format!("POST {USER}/events/{enc}/cancel"),
            format!("GET {}", window(T0))
        ]
    );
    assert_eq!(
        body_json(&reqs[2]),
        json!({"comment": "Auto-released: no one checked in"})
    );
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        &format!("cancelled booking {id}: Auto-released")
    ));
    assert_eq!(h.status("bookings"), Some(json!([])), "read again");

    // Organized by someone else: the room declines.
    h.answer_http(
        "GET",
        &format!("{USER}/events/b?$select=id,subject,isOrganizer,isCancelled"),
        answer(
            200,
            &[],
            &json!({"id": "b", "isOrganizer": false}).to_string(),
        ),
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events/b/decline"),
        answer(202, &[], ""),
    );
    h.answer_http("GET", &window(T0), page(&[], None));
    assert_eq!(h.exec("cancel_booking", json!(["b"])), Ok(Value::Null));
    assert_eq!(
        body_json(&h.http_requests()[5]),
        json!({"sendResponse": true})
    );
    assert!(has_log(
        &mut h,
        LogLevel::Info,
        "declined booking b (the room is not its organizer)"
    ));

    // Already cancelled: nothing to do.
    h.answer_http(
        "GET",
        &format!("{USER}/events/c?$select=id,subject,isOrganizer,isCancelled"),
        answer(
            200,
            &[],
            &json!({"id": "c", "isOrganizer": true, "isCancelled": true}).to_string(),
        ),
    );
    let before = h.http_requests().len();
    assert_eq!(h.exec("cancel_booking", json!(["c"])), Ok(Value::Null));
    assert_eq!(h.http_requests().len(), before + 1, "no POST");
}

#[test]
fn cancel_failures_are_explained() {
    let mut h = one_booking();
    let fetch = |id: &str| format!("{USER}/events/{id}?$select=id,subject,isOrganizer,isCancelled");
    h.answer_http(
        "GET",
        &fetch("gone"),
        graph_error(
            404,
            &[],
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["gone"])),
        Err("no booking with id `gone` (HTTP 404 ErrorItemNotFound)".into())
    );
    h.answer_http(
        "GET",
        &fetch("bad"),
        graph_error(400, &[], "ErrorInvalidIdMalformed", "Id is malformed."),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["bad"])),
        Err("no booking with id `bad` (HTTP 400 ErrorInvalidIdMalformed)".into())
    );
    assert_eq!(
        h.status("last_error"),
        None,
        "a wrong id is not a calendar problem"
    );
    h.answer_http(
        "GET",
        &fetch("x"),
        graph_error(
            404,
            &[],
            "ErrorInvalidUser",
            "The requested user is invalid.",
        ),
    );
    assert!(
        h.exec("cancel_booking", json!(["x"]))
            .unwrap_err()
            .starts_with("mailbox not found (HTTP 404 ErrorInvalidUser)")
    );
    h.answer_http("GET", &fetch("x"), answer(200, &[], "<html>"));
    assert!(
        h.exec("cancel_booking", json!(["x"]))
            .unwrap_err()
            .starts_with("malformed answer: response body:")
    );
    h.answer_http("GET", &fetch("x"), answer(200, &[], "{}"));
    assert!(
        h.exec("cancel_booking", json!(["x"]))
            .unwrap_err()
            .contains("has no id; not cancelled")
    );
    // The cancel itself refused.
    h.answer_http(
        "GET",
        &fetch("y"),
        answer(
            200,
            &[],
            &json!({"id": "y", "isOrganizer": true}).to_string(),
        ),
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events/y/cancel"),
        graph_error(
            400,
            &[],
            "ErrorInvalidRequest",
            "Your request can't be completed.",
        ),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["y", "r"])),
        Err("the server refused booking `y` (HTTP 400 ErrorInvalidRequest): Your request can't be completed.".into())
    );
    h.answer_http(
        "GET",
        &fetch("y"),
        answer(
            200,
            &[],
            &json!({"id": "y", "isOrganizer": true}).to_string(),
        ),
    );
    h.answer_http(
        "POST",
        &format!("{USER}/events/y/cancel"),
        graph_error(404, &[], "ErrorItemNotFound", "gone"),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["y"])),
        Err("no booking with id `y` (HTTP 404 ErrorItemNotFound)".into())
    );
    h.answer_http(
        "GET",
        &fetch("y"),
        Err("oauth2: the token endpoint refused the credentials (invalid_client): nope".into()),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["y"])),
        Err("cannot get an access token: the token endpoint refused the credentials (invalid_client): nope".into())
    );
    // Arguments checked first.
    let before = h.http_requests().len();
    assert!(h.exec("cancel_booking", json!([""])).is_err());
    assert!(h.exec("cancel_booking", json!(["a\nb"])).is_err());
    assert!(
        h.exec("cancel_booking", json!(["a", "x".repeat(501)]))
            .is_err()
    );
    assert_eq!(h.http_requests().len(), before);
}

#[test]
fn refresh_answers_after_the_read_and_joins_one_in_flight() {
    let mut h = one_booking();
    h.answer_http(
        "GET",
        &window(T0),
        page(&[ev("r", T0 + H, T0 + 2 * H, "R", json!({}))], None),
    );
    assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
    assert_eq!(ids(h.status("bookings")), ["r"]);
    h.answer_http("GET", &window(T0), answer(500, &[], ""));
    assert_eq!(
        h.exec("refresh", json!([])),
        Err("server error (HTTP 500)".into())
    );
}

#[test]
fn settings_are_checked_on_load() {
    let refused = |s: Value| {
        Harness::builder(component())
            .settings(s)
            .start()
            .err()
            .expect("refused")
    };
    assert!(refused(json!({})).contains("mailbox is required"));
    assert!(refused(json!({"mailbox": "  "})).contains("mailbox is required"));
    assert!(
        refused(json!({"mailbox": "a b@x.com"})).contains("must be an SMTP address or user id")
    );
    assert!(refused(json!({"mailbox": "../x"})).contains("must be an SMTP address or user id"));
    assert!(
        refused(json!({"mailbox": MB, "api_version": "v2"}))
            .contains("api_version must be `v1.0` or `beta`, got `v2`")
    );
    assert!(
        refused(json!({"mailbox": MB, "poll_every_ms": 1}))
            .contains("poll_every_ms must be 5000..=86400000, got 1")
    );
    assert!(
        refused(json!({"mailbox": MB, "lookahead_hours": 0}))
            .contains("lookahead_hours must be 1..=744, got 0")
    );
    assert!(
        refused(json!({"mailbox": MB, "request_timeout_ms": 100}))
            .contains("request_timeout_ms must be 500..=60000, got 100")
    );
    // The metadata the engine publishes.
    let h = start(json!({}));
    let info = h.info();
    assert_eq!(info.module_name, "Calendar");
    let names: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
    for f in [
        "list_bookings",
        "free_busy",
        "create_booking",
        "cancel_booking",
        "refresh",
    ] {
        assert!(names.contains(&f), "{names:?}");
    }
    assert!(info.functions.iter().all(|f| !f.description.is_empty()));
}

#[test]
fn zero_length_events_are_not_bookings_and_block_nothing() {
    let events = [
        ev("zero", T0 + H, T0 + H, "Reminder", json!({})),
        ev("a", T0 + 2 * H, T0 + 3 * H, "A", json!({})),
        ev("zero2", T0 + 5 * H, T0 + 5 * H, "Pin", json!({})),
    ];
    let mut h = synced(json!({}), page(&events, None));
    assert_eq!(ids(h.status("bookings")), ["a"]);
    h.answer_http("GET", &view(T0, T0 + 6 * H), page(&events, None));
    assert_eq!(
        ids(Some(
            h.exec("list_bookings", json!([T0, T0 + 6 * H])).unwrap()
        )),
        ["a"]
    );
    h.answer_http("GET", &view(T0, T0 + 6 * H), page(&events, None));
    assert_eq!(
        h.exec("free_busy", json!([T0, T0 + 6 * H])),
        Ok(json!([{"start": T0 + 2 * H, "end": T0 + 3 * H}]))
    );
    // A booking starting where a zero-length event sits is not refused.
    let (s, e) = (T0 + 5 * H, T0 + 6 * H);
    h.answer_http("GET", &view(s, e), page(&events[2..], None));
    h.answer_http(
        "POST",
        &format!("{USER}/events"),
        answer(201, &[], &ev("n", s, e, "Mine", json!({})).to_string()),
    );
    h.answer_http("GET", &window(T0), page(&events, None));
    assert_eq!(
        h.exec("create_booking", json!([s, e, "Mine"])).unwrap()["id"],
        json!("n")
    );
}

#[test]
fn an_offset_with_a_multibyte_character_is_skipped_not_a_trap() {
    let events = [
        ev("good", T0 + H, T0 + 2 * H, "Good", json!({})),
        ev(
            "bad",
            T0 + H,
            T0 + 2 * H,
            "x",
            json!({"start": {"dateTime": "2026-01-01T01:00:00+aé12", "timeZone": "UTC"}}),
        ),
        ev(
            "feb31",
            T0 + H,
            T0 + 2 * H,
            "x",
            json!({"end": {"dateTime": "2026-02-31T01:00:00", "timeZone": "UTC"}}),
        ),
    ];
    let mut h = synced(json!({}), page(&events, None));
    assert!(h.error().is_none(), "{:?}", h.error());
    assert_eq!(ids(h.status("bookings")), ["good"]);
    assert!(
        has_log(
            &mut h,
            LogLevel::Warn,
            "skipped 2 malformed event(s): bad: start: bad dateTime `2026-01-01T01:00:00+aé12`; feb31: end: bad dateTime `2026-02-31T01:00:00`"
        ),
        "{:?}",
        h.logs()
    );
}

#[test]
fn all_day_events_are_local_dates_in_the_time_zone_setting() {
    // Graph (asked for UTC) gives an all-day event as floating midnight to midnight.
    let day = ev("day", T0, T0 + 24 * H, "Offsite", json!({"isAllDay": true}));
    let timed = ev("t", T0 + H, T0 + 2 * H, "T", json!({}));
    let mut h = start(json!({"time_zone": "Europe/Berlin"}));
    h.answer_http(
        "GET",
        &window(T0),
        page(&[day.clone(), timed.clone()], None),
    );
    h.advance(Duration::from_millis(10));
    let b = h.status("bookings").unwrap();
    // 2026-01-01 in Berlin: 2025-12-31T23:00Z .. 2026-01-01T23:00Z.
    assert_eq!(
        (
            b[0]["id"].clone(),
            b[0]["start"].clone(),
            b[0]["end"].clone()
        ),
        (json!("day"), json!(T0 - H), json!(T0 + 23 * H))
    );
    assert_eq!(b[0]["all_day"], json!(true));
    assert_eq!(
        b[1]["start"],
        json!(T0 + H),
        "timed events keep their instant"
    );
    // New York (UTC-5).
    h.update_settings(json!({"mailbox": MB, "time_zone": "America/New_York"}))
        .unwrap();
    h.answer_http("GET", &window(T0), page(&[day], None));
    h.advance(Duration::from_millis(10));
    let b = h.status("bookings").unwrap();
    assert_eq!(b[0]["start"], json!(T0 + 5 * H));
    // A bad zone is refused, naming the key.
    assert_eq!(
        h.update_settings(json!({"mailbox": MB, "time_zone": "Berlin"})),
        Err("on-update refused the settings: time_zone `Berlin` is not an IANA time zone (e.g. `Europe/Berlin`, `UTC`)".into())
    );
}

#[test]
fn only_addresses_are_attendees_and_the_room_is_not_one() {
    let e = ev(
        "m",
        T0 + H,
        T0 + 2 * H,
        "M",
        json!({
            "organizer": {"emailAddress": {"name": "Ann Only-Name"}},
            "attendees": [
                {"type": "required", "emailAddress": {"name": "Bo", "address": "bo@contoso.com"}},
                {"type": "optional", "emailAddress": {"name": "No Address"}},
                {"type": "resource", "emailAddress": {"name": "Room 101", "address": "Room-101@Contoso.com"}},
            ],
        }),
    );
    let h = synced(json!({}), page(&[e], None));
    let b = h.status("bookings").unwrap();
    assert_eq!(b[0]["attendees"], json!(["bo@contoso.com"]));
    assert_eq!(b[0]["organizer"], json!("Ann Only-Name"));
}

#[test]
fn only_graph_item_codes_or_a_bare_404_mean_no_such_booking() {
    let mut h = one_booking();
    let fetch = |id: &str| format!("{USER}/events/{id}?$select=id,subject,isOrganizer,isCancelled");
    // A bare 404 (no Graph body): the id is unknown.
    h.answer_http("GET", &fetch("x"), answer(404, &[], ""));
    assert_eq!(
        h.exec("cancel_booking", json!(["x"])),
        Err("no booking with id `x` (HTTP 404)".into())
    );
    // A 400 without a Graph body is a refusal, not a wrong id.
    h.answer_http("GET", &fetch("x"), answer(400, &[], "Bad Request"));
    assert_eq!(
        h.exec("cancel_booking", json!(["x"])),
        Err("the server refused booking `x` (HTTP 400)".into())
    );
    // Another Graph code on a 400 neither.
    h.answer_http(
        "GET",
        &fetch("x"),
        graph_error(400, &[], "ErrorInvalidRequest", "Nope."),
    );
    assert_eq!(
        h.exec("cancel_booking", json!(["x"])),
        Err("the server refused booking `x` (HTTP 400 ErrorInvalidRequest): Nope.".into())
    );
}

#[test]
fn the_event_cap_is_named_when_it_stops_paging() {
    let mut h = start(json!({}));
    let link = |n: usize| {
        format!(
            "https://graph.microsoft.com/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={n}"
        )
    };
    // Pages of 1000 (more than $top asks): the 2000-event cap is hit after 2 pages.
    for p in 0..3usize {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                let n = (p * 1000 + i) as i64;
                ev(&format!("e{n}"), T0 + n, T0 + n + 60, "E", json!({}))
            })
            .collect();
        let path = if p == 0 {
            window(T0)
        } else {
            format!("/v1.0/users/room-101@contoso.com/calendarView?$skiptoken={p}")
        };
        h.answer_http("GET", &path, page(&events, Some(&link(p + 1))));
    }
    h.advance(Duration::from_millis(10));
    assert_eq!(h.http_requests().len(), 2, "stopped at 2000 events");
    assert!(
        has_log(
            &mut h,
            LogLevel::Warn,
            "the calendar view has more than 2000 events (2000 events read in 2 pages); the rest is left out"
        ),
        "{:?}",
        h.logs()
    );
}
