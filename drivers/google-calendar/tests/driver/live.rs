//! Live tests: the driver in the real engine (real HTTP over loopback, the engine's own
//! `oauth2` token handling) against `lintel_simulators::google_calendar`, a local server
//! serving the documented response shapes of the Google Calendar API v3 and a token
//! endpoint. It is not Google: there is no real Google server here.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json, tokio};
use lintel_simulators::google_calendar::{GoogleCalendarSimulator, error_body, rfc3339};
use std::time::Duration;

const CAL: &str = "c_188room1@resource.calendar.google.com";
const CLIENT_ID: &str = "lintel-test-client";
const CLIENT_SECRET: &str = "s3cret-value-never-shown";
const H: i64 = 3_600;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn component() -> Vec<u8> {
    lintel_bundled_drivers::GOOGLE_CALENDAR.component.to_vec()
}

/// An event the room is invited to (its `self` attendee entry accepted).
fn ev(id: &str, start: i64, end: i64, summary: &str) -> Value {
    json!({
        "id": id,
        "summary": summary,
        "start": {"dateTime": rfc3339(start)},
        "end": {"dateTime": rfc3339(end)},
        "organizer": {"email": "ann@example.com"},
        "attendees": [
            {"email": "ann@example.com", "organizer": true, "responseStatus": "accepted"},
            {"email": CAL, "resource": true, "self": true, "responseStatus": "accepted"}
        ]
    })
}

fn simulator() -> GoogleCalendarSimulator {
    let sim = GoogleCalendarSimulator::new(CLIENT_ID, CLIENT_SECRET);
    sim.add_calendar(CAL, "Europe/London");
    sim
}

/// The module's settings: client_credentials against the simulator's `/token`.
fn settings(base: &str, extra: Value) -> Value {
    let mut s = json!({
        "calendar_id": CAL,
        // Reads come from `refresh` and the driver's own retries, so a poll never takes
        // a failure a test queued for its `refresh`; tests of polling set 5000.
        "poll_every_ms": 600_000,
        "oauth2": {
            "grant": "client_credentials",
            "token_url": format!("{base}/token"),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "https://www.googleapis.com/auth/calendar"
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

/// The engine with one module of the driver against `sim`, after its first read.
async fn started(sim: &GoogleCalendarSimulator, extra: Value) -> (LiveEngine, String, String) {
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let m = live
        .add_module(&component(), Some(&base), settings(&base, extra))
        .await;
    live.wait_until(&m, "last_sync", |v| v.map(|_| ())).await;
    (live, m, base)
}

fn ids(v: Option<&Value>) -> Option<Vec<String>> {
    Some(
        v?.as_array()?
            .iter()
            .filter_map(|b| b["id"].as_str().map(String::from))
            .collect(),
    )
}

/// The driver's own error text of a failed exec (the engine says whose it is).
fn driver_err(e: String) -> String {
    match e.strip_prefix("the driver failed: ") {
        Some(t) => t.to_string(),
        None => panic!("not the driver's error: {e}"),
    }
}

fn secret_nowhere(live: &LiveEngine, m: &str) {
    let state = json!(live.state(m)).to_string();
    assert!(!state.contains(CLIENT_SECRET), "{state}");
    assert!(!state.contains("tok-"), "no token in the state: {state}");
}

async fn error_until(live: &LiveEngine, m: &str, part: &str) -> String {
    live.wait_until(m, "last_error", |v| {
        v.and_then(Value::as_str)
            .filter(|e| e.contains(part))
            .map(String::from)
    })
    .await
}

async fn cleared(live: &LiveEngine, m: &str) {
    live.wait_for(m, "last_error", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bookings_follow_the_calendar_over_several_pages() {
    let sim = simulator();
    let hour = now() / H * H;
    let mut private = ev("priv1", hour + 2 * H, hour + 3 * H, "1:1");
    private["visibility"] = json!("private");
    let mut cancelled = ev("gone1", hour + H, hour + 2 * H, "Dropped");
    cancelled["status"] = json!("cancelled");
    let mut free = ev("free1", hour + H, hour + 2 * H, "Focus time");
    free["transparency"] = json!("transparent");
    let mut declined = ev("decl1", hour + 4 * H, hour + 5 * H, "Declined by the room");
    declined["attendees"][1]["responseStatus"] = json!("declined");
    let mut cjk = ev("cjk1", hour + 6 * H, hour + 7 * H, "会議 – Überprüfung");
    cjk["organizer"] = json!({"email": "東京@example.jp"});
    // An occurrence of a recurring event, as singleEvents lists it.
    let occurrence = ev(
        "series9_20260101T090000Z",
        hour + 8 * H,
        hour + 9 * H,
        "Weekly",
    );
    for e in [
        ev("now1", hour, hour + H, "Stand-up"),
        private,
        cancelled,
        free,
        declined,
        cjk,
        occurrence,
        ev("far1", hour + 48 * H, hour + 49 * H, "Too far"),
    ] {
        sim.add_event(CAL, e);
    }
    // Two items per page: the driver follows nextPageToken.
    sim.set_max_page(2);
    let (live, m, _) = started(&sim, json!({})).await;
    let want = vec![
        "now1".to_string(),
        "priv1".into(),
        "cjk1".into(),
        "series9_20260101T090000Z".into(),
    ];
    let got = live
        .wait_until(&m, "bookings", |v| ids(v).filter(|i| *i == want))
        .await;
    assert_eq!(got, want);
    let bookings = live.status(&m, "bookings").unwrap();
    assert_eq!(bookings[1]["private"], json!(true));
    assert_eq!(bookings[2]["title"], json!("会議 – Überprüfung"));
    assert_eq!(bookings[2]["organizer"], json!("東京@example.jp"));
    assert_eq!(bookings[0]["attendees"], json!(["ann@example.com"]));
    live.wait_for(&m, "connected", json!(true)).await;
    assert_eq!(live.status(&m, "last_error"), None);
    let pages = sim
        .requests()
        .iter()
        .filter(|(_, p)| p.contains("pageToken="))
        .count();
    assert!(pages >= 2, "{:?}", sim.requests());
    assert!(sim.requests()[0].1.starts_with(
        "/calendar/v3/calendars/c_188room1%40resource.calendar.google.com/events?timeMin="
    ));
    assert_eq!(sim.token_requests(), 1, "one token for every request");

    // list and free/busy over a range of their own.
    let listed = live
        .exec(&m, "list_bookings", json!([hour, hour + 3 * H]))
        .await
        .unwrap();
    assert_eq!(ids(Some(&listed)).unwrap(), ["now1", "priv1"]);
    let busy = live
        .exec(&m, "free_busy", json!([hour, hour + 10 * H]))
        .await
        .unwrap();
    assert_eq!(
        busy,
        json!([
            {"start": hour, "end": hour + H},
            {"start": hour + 2 * H, "end": hour + 3 * H},
            {"start": hour + 6 * H, "end": hour + 7 * H},
            {"start": hour + 8 * H, "end": hour + 9 * H},
        ])
    );
    secret_nowhere(&live, &m);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_create_then_cancel_and_decline() {
    let sim = simulator();
    let hour = now() / H * H;
    sim.add_event(
        CAL,
        ev("invited", hour + 5 * H, hour + 6 * H, "Ann's review"),
    );
    let (live, m, _) = started(&sim, json!({})).await;

    let created = live
        .exec(
            &m,
            "create_booking",
            json!([
                hour + 2 * H,
                hour + 3 * H,
                "Planning 計画",
                "bo@example.com"
            ]),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["organizer"], json!("bo@example.com"));
    assert_eq!(created["title"], json!("Planning 計画"));
    let stored = sim.event(CAL, &id).expect("the event is in the calendar");
    assert_eq!(stored["organizer"]["self"], json!(true));
    assert_eq!(stored["attendees"], json!([{"email": "bo@example.com"}]));
    assert_eq!(stored["start"]["dateTime"], json!(rfc3339(hour + 2 * H)));
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i.contains(&id)).map(|_| ())
    })
    .await;

    // Overlaps are refused, and nothing is written.
    let n = sim.events(CAL).len();
    let err = live
        .exec(
            &m,
            "create_booking",
            json!([hour + 2 * H + 900, hour + 4 * H, "Clash"]),
        )
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert!(err.contains("the room is already booked from"), "{err}");
    assert!(err.contains(&id), "{err}");
    assert_eq!(sim.events(CAL).len(), n);

    // The room organizes it: deleted.
    assert_eq!(
        live.exec(&m, "cancel_booking", json!([id, "No-show"]))
            .await,
        Ok(Value::Null)
    );
    assert_eq!(sim.event(CAL, &id).unwrap()["status"], json!("cancelled"));
    // The room is invited: declined, the event stays. Google leaves attendees out of its
    // answer (`maxAttendees`: only the room's entry, `attendeesOmitted`); the decline must
    // not replace the list (the simulator refuses a non-organizer's change of others).
    sim.set_max_attendees(Some(1));
    assert_eq!(
        live.exec(&m, "cancel_booking", json!(["invited", "Auto-released"]))
            .await,
        Ok(Value::Null)
    );
    let inv = sim.event(CAL, "invited").unwrap();
    assert_eq!(inv["status"], json!("confirmed"));
    assert_eq!(inv["attendees"][1]["responseStatus"], json!("declined"));
    assert_eq!(inv["attendees"][1]["comment"], json!("Auto-released"));
    assert_eq!(inv["attendees"][0]["responseStatus"], json!("accepted"));
    assert_eq!(inv["attendees"][0]["email"], json!("ann@example.com"));
    assert_eq!(inv["attendees"].as_array().unwrap().len(), 2);
    sim.set_max_attendees(None);
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i.is_empty()).map(|_| ())
    })
    .await;
    // Unknown and already cancelled ids.
    let err = live
        .exec(&m, "cancel_booking", json!(["nosuchevent"]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(err, "no booking with id `nosuchevent` (HTTP 404)");
    // Already cancelled: done, as Microsoft Graph answers.
    assert_eq!(
        live.exec(&m, "cancel_booking", json!([id])).await,
        Ok(Value::Null)
    );
    assert_eq!(live.status(&m, "last_error"), None);
    let deletes = sim
        .requests()
        .iter()
        .filter(|(m, p)| m == "DELETE" && p.ends_with("?sendUpdates=all"))
        .count();
    assert_eq!(deletes, 1);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_service_account_without_delegation_cannot_invite() {
    let sim = simulator();
    sim.refuse_attendee_invites(true);
    let hour = now() / H * H;
    let (live, m, _) = started(&sim, json!({})).await;
    let err = live
        .exec(
            &m,
            "create_booking",
            json!([hour + 2 * H, hour + 3 * H, "Planning", "bo@example.com"]),
        )
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert!(
        err.starts_with(
            "Google refused to invite the organizer (HTTP 403 forbiddenForServiceAccounts"
        ) && err.contains("set oauth2.subject"),
        "{err}"
    );
    assert!(sim.events(CAL).is_empty());
    // A function's refusal: the calendar is fine, and a booking without an organizer works.
    assert_eq!(live.status(&m, "last_error"), None);
    let created = live
        .exec(
            &m,
            "create_booking",
            json!([hour + 2 * H, hour + 3 * H, "Planning"]),
        )
        .await
        .unwrap();
    assert!(sim.event(CAL, created["id"].as_str().unwrap()).is_some());
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_slow_chain_stops_before_the_exec_timeout() {
    let sim = simulator();
    let hour = now() / H * H;
    // Two free events in the range: two pages of the overlap check, nothing blocking.
    for i in 0..2 {
        let mut free = ev(&format!("free{i}"), hour + 2 * H, hour + 3 * H, "Focus");
        free["transparency"] = json!("transparent");
        sim.add_event(CAL, free);
    }
    sim.set_max_page(1);
    let (live, m, _) = started(&sim, json!({})).await;
    // Each answer takes 2.1 s: the second page ends after the 4 s deadline, so no insert
    // is made (it would have been answered after the engine's 5 s exec timeout).
    sim.set_delay(Some(Duration::from_millis(2_100)));
    let t = std::time::Instant::now();
    let err = live
        .exec(
            &m,
            "create_booking",
            json!([hour + 2 * H, hour + 3 * H, "Late"]),
        )
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(
        err,
        "the calendar answers slowly: the overlap check took over 4 s; not created: try again"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(sim.events(CAL).len(), 2, "nothing inserted");
    assert!(sim.requests().iter().all(|(m, _)| m != "POST"));
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expired_tokens_are_renewed_by_the_engine() {
    let sim = simulator();
    let (live, m, _) = started(&sim, json!({})).await;
    assert_eq!(sim.token_requests(), 1);
    // Every issued token now answers 401: the engine gets a new one and retries; the
    // driver never notices.
    sim.expire_tokens();
    assert_eq!(live.exec(&m, "refresh", json!([])).await, Ok(Value::Null));
    assert_eq!(sim.token_requests(), 2);
    assert_eq!(live.status(&m, "last_error"), None);
    // Within a minute of that forced renewal a 401 is not retried (the engine drops a
    // token on a 401 at most once a minute): it reaches the driver, and the token, still
    // good, serves the next read.
    sim.fail_next(
        401,
        None,
        &error_body(401, "authError", "Invalid Credentials"),
    );
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(
        err,
        "authentication failed (HTTP 401 authError: Invalid Credentials): check the module's oauth2 settings"
    );
    assert_eq!(live.status(&m, "last_error"), Some(json!(err)));
    assert_eq!(live.exec(&m, "refresh", json!([])).await, Ok(Value::Null));
    assert_eq!(sim.token_requests(), 2);
    cleared(&live, &m).await;
    secret_nowhere(&live, &m);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_short_lived_tokens_are_kept_a_minute() {
    let sim = simulator();
    sim.set_expires_in(4);
    let (live, m, _) = started(&sim, json!({"poll_every_ms": 5000})).await;
    let first = sim.token_requests();
    let synced = live.status(&m, "last_sync");
    // The engine keeps a token at least 60 s (not a token request per poll): the next
    // poll, 5 s later, uses the same token.
    live.wait_until_within(Duration::from_secs(20), &m, "last_sync", move |v| {
        (v.cloned() != synced).then_some(())
    })
    .await;
    assert_eq!(sim.token_requests(), first);
    assert_eq!(live.status(&m, "last_error"), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_wrong_client_secret_says_why_and_shows_no_secret() {
    let sim = simulator();
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let mut s = settings(&base, json!({}));
    s["oauth2"]["client_secret"] = json!("wrong-secret-value");
    let m = live.add_module(&component(), Some(&base), s).await;
    let e = error_until(&live, &m, "cannot get an access token").await;
    assert!(
        e.starts_with(
            "cannot get an access token: the token endpoint refused the request (invalid_client"
        ),
        "{e}"
    );
    assert!(!e.contains("wrong-secret-value"), "{e}");
    live.wait_for(&m, "connected", json!(false)).await;
    let why = live
        .wait_until(&m, "connection_error", |v| {
            v.and_then(Value::as_str).map(String::from)
        })
        .await;
    assert!(why.contains("invalid_client"), "{why}");
    let state = json!(live.state(&m)).to_string();
    assert!(!state.contains("wrong-secret-value"), "{state}");
    assert!(
        sim.requests().is_empty(),
        "no API request without a token: {:?}",
        sim.requests()
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_busy_token_endpoint_then_recovery() {
    let sim = simulator();
    sim.add_event(CAL, ev("a", now(), now() + H, "A"));
    sim.fail_token_endpoint(Some((
        503,
        Some(1),
        "{\"error\":\"temporarily_unavailable\"}",
    )));
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            &component(),
            Some(&base),
            settings(&base, json!({"poll_every_ms": 5000})),
        )
        .await;
    let e = error_until(&live, &m, "cannot get an access token").await;
    assert!(e.contains("503"), "{e}");
    sim.fail_token_endpoint(None);
    // The next poll (5 s) after the engine's 1 s wait gets a token and reads.
    live.wait_until_within(Duration::from_secs(15), &m, "bookings", |v| {
        ids(v).filter(|i| i == &["a"]).map(|_| ())
    })
    .await;
    cleared(&live, &m).await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rate_limits_and_server_errors_back_off_then_recover() {
    let sim = simulator();
    let (live, m, _) = started(&sim, json!({})).await;
    sim.add_event(CAL, ev("late", now() + H, now() + 2 * H, "Added later"));

    sim.fail_next(
        403,
        Some(1),
        &error_body(403, "rateLimitExceeded", "Rate Limit Exceeded"),
    );
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(
        err,
        "rate limited (HTTP 403 rateLimitExceeded: Rate Limit Exceeded); retrying in 1 s"
    );
    // The driver reads again by itself after the wait.
    live.wait_until_within(Duration::from_secs(4), &m, "bookings", |v| {
        ids(v).filter(|i| i == &["late"]).map(|_| ())
    })
    .await;
    cleared(&live, &m).await;

    sim.fail_next(
        429,
        Some(1),
        &error_body(429, "rateLimitExceeded", "Too Many Requests"),
    );
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert!(
        err.starts_with("rate limited (HTTP 429 rateLimitExceeded"),
        "{err}"
    );
    // Refused while the wait runs (no request made).
    let n = sim.requests().len();
    let refused = live
        .exec(&m, "list_bookings", json!([now(), now() + H]))
        .await;
    if let Err(e) = &refused {
        assert!(e.contains("retrying in"), "{e}");
        assert_eq!(sim.requests().len(), n);
    }
    cleared(&live, &m).await;

    sim.fail_next(
        503,
        Some(1),
        &error_body(503, "backendError", "Backend Error"),
    );
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(
        err,
        "server error (HTTP 503 backendError: Backend Error); retrying in 1 s"
    );
    cleared(&live, &m).await;
    assert_eq!(ids(live.status(&m, "bookings").as_ref()).unwrap(), ["late"]);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_garbage_and_a_silent_server_keep_the_bookings() {
    let sim = simulator();
    sim.add_event(CAL, ev("a", now(), now() + H, "A"));
    let (live, m, _) = started(&sim, json!({"request_timeout_ms": 1000})).await;
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i == &["a"]).map(|_| ())
    })
    .await;

    sim.fail_next(200, None, "<html><body>Sign in</body></html>");
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert!(err.starts_with("malformed answer: not JSON"), "{err}");
    sim.fail_next(
        200,
        None,
        "{\"kind\":\"calendar#calendarList\",\"items\":{}}",
    );
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert_eq!(
        err,
        "malformed answer: expected a calendar#events object: items is not a list"
    );
    assert_eq!(ids(live.status(&m, "bookings").as_ref()).unwrap(), ["a"]);

    // Silent: the request times out.
    sim.set_delay(Some(Duration::from_secs(3)));
    let err = live
        .exec(&m, "refresh", json!([]))
        .await
        .map_err(driver_err)
        .unwrap_err();
    assert!(
        err.starts_with("no answer from the calendar server: "),
        "{err}"
    );
    assert_eq!(ids(live.status(&m, "bookings").as_ref()).unwrap(), ["a"]);
    sim.set_delay(None);
    assert_eq!(live.exec(&m, "refresh", json!([])).await, Ok(Value::Null));
    cleared(&live, &m).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_wrong_calendar_id_is_told() {
    let sim = simulator();
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            &component(),
            Some(&base),
            settings(
                &base,
                json!({"calendar_id": "c_nope@resource.calendar.google.com"}),
            ),
        )
        .await;
    let e = error_until(&live, &m, "calendar not found").await;
    assert_eq!(
        e,
        "calendar not found (HTTP 404 notFound: Not Found): check calendar_id `c_nope@resource.calendar.google.com`"
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_service_account_jwt_bearer() {
    let sim = simulator();
    sim.set_service_account("room-bot@lintel-test.iam.gserviceaccount.com");
    sim.add_event(CAL, ev("a", now(), now() + H, "A"));
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let key = include_str!("../../../../engine/tests/data/test-only-rsa-key.pem");
    let m = live
        .add_module(
            &component(),
            Some(&base),
            json!({
                "calendar_id": CAL,
                "oauth2": {
                    "grant": "jwt_bearer",
                    "scope": "https://www.googleapis.com/auth/calendar",
                    "service_account": {
                        "client_email": "room-bot@lintel-test.iam.gserviceaccount.com",
                        "private_key": key,
                        "token_uri": format!("{base}/token")
                    },
                    "subject": "admin@example.com"
                }
            }),
        )
        .await;
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i == &["a"]).map(|_| ())
    })
    .await;
    assert_eq!(sim.token_requests(), 1);
    let state = json!(live.state(&m)).to_string();
    assert!(!state.contains("PRIVATE KEY"), "{state}");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_in_flight_requests_are_capped() {
    let sim = simulator();
    let (live, m, _) = started(&sim, json!({"request_timeout_ms": 4000})).await;
    // A slow server: 20 calls at once, at most 16 requests wait for it.
    sim.set_delay(Some(Duration::from_millis(1500)));
    let t = now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let args = json!([t + i, t + i + H]);
            live.exec(&m, "list_bookings", args)
        })
        .collect();
    let results = futures_join(calls).await;
    let refused: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        16,
        "{refused:?}"
    );
    assert_eq!(refused.len(), 4);
    for e in &refused {
        assert_eq!(
            e,
            "the driver failed: 16 requests are already waiting for the server; try later"
        );
    }
    sim.set_delay(None);
    // Nothing is stuck: the next call is served.
    assert!(
        live.exec(&m, "list_bookings", json!([t, t + H]))
            .await
            .is_ok()
    );
    live.shutdown().await;
}

/// Run the futures concurrently; their results in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_refresh_token_grant() {
    let sim = simulator();
    sim.set_refresh_token("1//refresh-token-value");
    sim.add_event(CAL, ev("a", now(), now() + H, "A"));
    let addr = sim.serve().await.unwrap();
    let base = format!("http://{addr}");
    let live = LiveEngine::start().await;
    let grant = |token: &str| {
        json!({
            "calendar_id": CAL,
            "oauth2": {
                "grant": "refresh_token",
                "token_url": format!("{base}/token"),
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": token
            }
        })
    };
    let m = live
        .add_module(&component(), Some(&base), grant("1//refresh-token-value"))
        .await;
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i == &["a"]).map(|_| ())
    })
    .await;
    let state = json!(live.state(&m)).to_string();
    assert!(!state.contains("refresh-token-value"), "{state}");
    // A revoked refresh token: invalid_grant, told as such.
    let m2 = live
        .add_module(&component(), Some(&base), grant("1//revoked"))
        .await;
    let e = error_until(&live, &m2, "cannot get an access token").await;
    assert!(e.contains("invalid_grant"), "{e}");
    assert!(
        !e.contains("1//revoked"),
        "the token value is not told: {e}"
    );
    live.shutdown().await;
}
