//! Live tests: the driver in the real engine (real HTTP over loopback), authenticated by
//! the engine's `oauth2` client-credentials setting, against
//! `lintel_simulators::msgraph::MsGraphSimulator`: a local server serving Microsoft
//! Graph's documented response shapes and a token endpoint. There is no Microsoft server
//! here: these tests check the driver and the engine's token handling together against
//! the documented shapes, not against Graph itself.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json};
use lintel_simulators::msgraph::{MsGraphSimulator, event, graph_error_body, in_zone, zone_offset};
use std::time::Duration;

const MB: &str = "room-101@contoso.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value.for-tests";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn settings(addr: std::net::SocketAddr, secret: &str, poll_ms: u64) -> Value {
    json!({
        "mailbox": MB,
        "poll_every_ms": poll_ms,
        "oauth2": {
            "grant": "client_credentials",
            "token_url": format!("http://{addr}/token"),
            "client_id": CLIENT,
            "client_secret": secret,
            "scope": "https://graph.microsoft.com/.default",
        },
    })
}

fn ids(v: Option<&Value>) -> Option<Vec<String>> {
    Some(
        v?.as_array()?
            .iter()
            .filter_map(|b| b["id"].as_str().map(String::from))
            .collect(),
    )
}

/// The simulator on a loopback port and a module of the driver polling every `poll_ms`.
/// The error of a function call, as the driver gave it (the engine prefixes it).
fn failed(r: Result<Value, String>) -> String {
    let e = r.expect_err("the call fails");
    match e.strip_prefix("the driver failed: ") {
        Some(e) => e.to_string(),
        None => panic!("not the driver's error: {e}"),
    }
}

async fn started(sim: &MsGraphSimulator, secret: &str, poll_ms: u64) -> (LiveEngine, String) {
    let addr = sim.serve().await.expect("the simulator serves");
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::MSGRAPH.component,
            Some(&format!("http://{addr}")),
            settings(addr, secret, poll_ms),
        )
        .await;
    (live, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bookings_come_through_the_engines_token_and_paging() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let hour = now() / 3600 * 3600;
    let mut board = event(
        "AAMk+board/=",
        hour + 3600,
        hour + 7200,
        "Board, Q1 会議",
        "ann@contoso.com",
    );
    board["sensitivity"] = json!("private");
    board["attendees"] =
        json!([{"type": "required", "emailAddress": {"name": "Bo", "address": "bo@contoso.com"}}]);
    sim.add_event(board);
    // Two whole days from today's midnight (UTC).
    let midnight = hour / 86_400 * 86_400;
    let mut day = event("day", midnight, midnight + 2 * 86_400, "Offsite", MB);
    day["isAllDay"] = json!(true);
    sim.add_event(day);
    let mut free = event(
        "free",
        hour + 2 * 3600,
        hour + 3 * 3600,
        "FYI",
        "ann@contoso.com",
    );
    free["showAs"] = json!("free");
    sim.add_event(free);
    let mut gone = event(
        "gone",
        hour + 2 * 3600,
        hour + 3 * 3600,
        "Off",
        "ann@contoso.com",
    );
    gone["isCancelled"] = json!(true);
    sim.add_event(gone);
    for i in 0..4 {
        sim.add_event(event(
            &format!("s{i}"),
            hour + (4 + i) * 3600,
            hour + (4 + i) * 3600 + 1800,
            "Sync",
            "cy@contoso.com",
        ));
    }
    sim.add_event(event(
        "later",
        hour + 48 * 3600,
        hour + 49 * 3600,
        "Later",
        MB,
    ));
    // Pages of two: the driver follows four nextLinks.
    sim.set_max_page(2);

    let (live, m) = started(&sim, SECRET, 60_000).await;
    let bookings = live
        .wait_until(&m, "bookings", |v| {
            v.filter(|v| v.as_array().is_some_and(|a| a.len() == 6))
                .cloned()
        })
        .await;
    assert_eq!(
        ids(Some(&bookings)).unwrap(),
        ["day", "AAMk+board/=", "s0", "s1", "s2", "s3"]
    );
    assert_eq!(
        bookings[1],
        json!({"id": "AAMk+board/=", "title": "Board, Q1 会議", "start": hour + 3600, "end": hour + 7200,
               "organizer": "ann@contoso.com", "attendees": ["bo@contoso.com"], "all_day": false, "private": true})
    );
    assert_eq!(bookings[0]["all_day"], json!(true));
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));
    assert!(
        live.status(&m, "last_sync")
            .and_then(|v| v.as_i64())
            .unwrap()
            >= hour
    );
    assert_eq!(sim.token_requests(), 1, "one token for every request");
    let views = sim
        .requests()
        .iter()
        .filter(|r| r.contains("/calendarView"))
        .count();
    assert!(views >= 4, "{:?}", sim.requests());
    assert!(
        sim.requests().iter().any(|r| r.contains("$skiptoken=sk")),
        "pages followed"
    );

    // list_bookings and free_busy over a wider range.
    let listed = live
        .exec(&m, "list_bookings", json!([hour, hour + 72 * 3600]))
        .await
        .unwrap();
    assert!(ids(Some(&listed)).unwrap().contains(&"later".to_string()));
    let busy = live
        .exec(&m, "free_busy", json!([hour + 3600, hour + 3 * 3600]))
        .await
        .unwrap();
    assert_eq!(
        busy,
        json!([{"start": hour + 3600, "end": hour + 3 * 3600}]),
        "the all-day event covers it"
    );

    // The client secret appears nowhere in the module's state.
    let state = json!(live.state(&m)).to_string();
    assert!(
        !state.contains(SECRET) && !state.contains("tok-"),
        "{state}"
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_create_refuse_overlap_cancel_and_decline() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let hour = now() / 3600 * 3600;
    sim.add_event(event(
        "theirs+/=",
        hour + 5 * 3600,
        hour + 6 * 3600,
        "Their meeting",
        "ann@contoso.com",
    ));
    let (live, m) = started(&sim, SECRET, 60_000).await;
    live.wait_until(&m, "bookings", |v| ids(v).filter(|i| i == &["theirs+/="]))
        .await;

    let created = live
        .exec(
            &m,
            "create_booking",
            json!([
                hour + 2 * 3600,
                hour + 3 * 3600,
                "Ad-hoc ☕",
                "bo@contoso.com"
            ]),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["title"], json!("Ad-hoc ☕"));
    assert_eq!(created["organizer"], json!(MB));
    let stored = sim.event(&id).expect("the event is in the simulator");
    assert_eq!(
        stored["attendees"][0]["emailAddress"]["address"],
        json!("bo@contoso.com")
    );
    assert!(
        stored["transactionId"]
            .as_str()
            .unwrap()
            .starts_with("lintel-")
    );
    live.wait_until(&m, "bookings", |v| ids(v).filter(|i| i.contains(&id)))
        .await;

    let err = failed(
        live.exec(
            &m,
            "create_booking",
            json!([hour + 2 * 3600 + 600, hour + 4 * 3600, "Clash"]),
        )
        .await,
    );
    assert!(
        err.contains("the room is already booked") && err.contains("Ad-hoc ☕"),
        "{err}"
    );

    // The room organizes its own booking: cancelled. Ids with `+`, `/`, `=` travel encoded.
    live.exec(&m, "cancel_booking", json!([id, "Ended early"]))
        .await
        .unwrap();
    assert!(sim.event(&id).is_none());
    // Someone else's meeting: the room declines it.
    live.exec(&m, "cancel_booking", json!(["theirs+/=", "No-show"]))
        .await
        .unwrap();
    let actions = sim.actions();
    assert_eq!(
        actions[0],
        (
            id.clone(),
            "cancel".into(),
            json!({"comment": "Ended early"})
        )
    );
    assert_eq!(
        actions[1],
        (
            "theirs+/=".into(),
            "decline".into(),
            json!({"comment": "No-show", "sendResponse": true})
        )
    );
    live.wait_for(&m, "bookings", json!([])).await;

    let err = failed(live.exec(&m, "cancel_booking", json!(["nope"])).await);
    assert!(
        err.contains("no booking with id `nope` (HTTP 404 ErrorItemNotFound)"),
        "{err}"
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_expired_tokens_are_renewed_by_the_engine_unseen_by_the_driver() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let (live, m) = started(&sim, SECRET, 60_000).await;
    live.wait_for(&m, "bookings", json!([])).await;
    assert_eq!(sim.token_requests(), 1);
    sim.expire_tokens();
    sim.add_event(event("new", now() + 3600, now() + 7200, "New", MB));
    live.exec(&m, "refresh", json!([]))
        .await
        .expect("the engine fetched a new token and retried");
    assert_eq!(
        ids(live.status(&m, "bookings").as_ref()),
        Some(vec!["new".to_string()])
    );
    assert!(
        matches!(sim.token_requests(), 2 | 3),
        "{}",
        sim.token_requests()
    );
    assert_eq!(
        live.status(&m, "last_error"),
        None,
        "the driver never noticed"
    );

    // Within a minute of that forced renewal a 401 is not retried (the engine drops a
    // token on a 401 at most once a minute): it reaches the driver, and the token, still
    // good, serves the next read.
    let before = sim.token_requests();
    sim.fail_next(401, None, "");
    let err = failed(live.exec(&m, "refresh", json!([])).await);
    assert_eq!(
        err,
        "authentication failed (HTTP 401 InvalidAuthenticationToken): check the module's oauth2 settings"
    );
    live.wait_for(&m, "last_error", json!(err)).await;
    live.exec(&m, "refresh", json!([])).await.unwrap();
    assert_eq!(sim.token_requests(), before);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_refused_credentials_and_a_failing_token_endpoint() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let (live, m) = started(&sim, "wrong-secret", 5_000).await;
    let e = live
        .wait_until(&m, "last_error", |v| {
            v.and_then(Value::as_str).map(String::from)
        })
        .await;
    assert!(e.starts_with("cannot get an access token: "), "{e}");
    assert!(e.contains("invalid_client"), "{e}");
    live.wait_for(&m, "connected", json!(false)).await;
    assert!(
        live.status(&m, "connection_error")
            .is_some_and(|v| v.as_str().is_some_and(|s| s.contains("invalid_client")))
    );
    assert_eq!(live.status(&m, "bookings"), None);
    let state = json!(live.state(&m)).to_string();
    assert!(!state.contains("wrong-secret"), "{state}");
    let views = sim
        .requests()
        .iter()
        .filter(|r| r.contains("/calendarView"))
        .count();
    assert_eq!(views, 0, "no API request without a token");
    live.shutdown().await;

    // Working credentials, then the token endpoint fails, then recovers.
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let (live, m) = started(&sim, SECRET, 5_000).await;
    live.wait_for(&m, "bookings", json!([])).await;
    sim.fail_tokens(Some((503, "{\"error\":\"temporarily_unavailable\"}")));
    sim.expire_tokens();
    let err = failed(live.exec(&m, "refresh", json!([])).await);
    assert!(err.starts_with("cannot get an access token: "), "{err}");
    sim.fail_tokens(None);
    sim.add_event(event("back", now() + 600, now() + 1200, "Back", MB));
    live.wait_until_within(Duration::from_secs(60), &m, "bookings", |v| {
        ids(v).filter(|i| i == &["back"])
    })
    .await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_throttling_permissions_and_a_wrong_mailbox() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let (live, m) = started(&sim, SECRET, 60_000).await;
    live.wait_for(&m, "bookings", json!([])).await;

    // 429 with Retry-After: 1 s of backoff, then a read on its own.
    sim.fail_next(429, Some(1), "");
    let err = failed(live.exec(&m, "refresh", json!([])).await);
    assert_eq!(
        err,
        "server busy (HTTP 429 TooManyRequests); retrying in 1 s"
    );
    sim.add_event(event("after", now() + 600, now() + 1200, "After", MB));
    live.wait_until(&m, "bookings", |v| ids(v).filter(|i| i == &["after"]))
        .await;
    assert_eq!(live.status(&m, "last_error"), Some(Value::Null));

    // 503 with Retry-After, the same.
    sim.fail_next(503, Some(1), "");
    assert!(
        failed(live.exec(&m, "refresh", json!([])).await)
            .starts_with("server error (HTTP 503 ServiceUnavailable); retrying in 1 s")
    );
    live.wait_for(&m, "last_error", Value::Null).await;

    // 403: the app lacks the permission or a policy excludes the mailbox.
    sim.fail_next(
        403,
        None,
        &graph_error_body(
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
        .to_string(),
    );
    let err = failed(live.exec(&m, "refresh", json!([])).await);
    assert!(
        err.starts_with(
            "access denied (HTTP 403 ErrorAccessDenied) to mailbox `room-101@contoso.com`"
        ),
        "{err}"
    );
    // Garbage, then recovery.
    sim.fail_next(200, None, "<html>Service Unavailable</html>");
    let err = failed(live.exec(&m, "refresh", json!([])).await);
    assert!(err.starts_with("malformed answer: not JSON"), "{err}");
    assert_eq!(
        ids(live.status(&m, "bookings").as_ref()),
        Some(vec!["after".to_string()]),
        "kept"
    );
    live.exec(&m, "refresh", json!([])).await.unwrap();
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;

    // A mailbox the tenant does not have.
    let sim = MsGraphSimulator::new("other@contoso.com", CLIENT, SECRET);
    let (live, m) = started(&sim, SECRET, 60_000).await;
    live.wait_for(
        &m,
        "last_error",
        json!(
            "mailbox not found (HTTP 404 ErrorInvalidUser): check mailbox `room-101@contoso.com`"
        ),
    )
    .await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_times_are_read_in_utc_and_all_day_dates_in_the_rooms_zone() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let hour = now() / 3600 * 3600;
    // Created in Los Angeles: without `Prefer: outlook.timezone="UTC"` the simulator
    // answers it in Pacific time, which the driver would skip.
    sim.add_event(in_zone(
        event(
            "pst",
            hour + 3600,
            hour + 7200,
            "Pacific",
            "ann@contoso.com",
        ),
        "Pacific Standard Time",
    ));
    // Tomorrow (UTC date), all day in Berlin: floating midnight to midnight.
    let day = (hour / 86_400 + 1) * 86_400;
    let mut all_day = in_zone(
        event("day", day, day + 86_400, "Offsite", MB),
        "Europe/Berlin",
    );
    all_day["isAllDay"] = json!(true);
    sim.add_event(all_day);
    let addr = sim.serve().await.expect("the simulator serves");
    let live = LiveEngine::start().await;
    let mut s = settings(addr, SECRET, 60_000);
    s["time_zone"] = json!("Europe/Berlin");
    let m = live
        .add_module(
            lintel_bundled_drivers::MSGRAPH.component,
            Some(&format!("http://{addr}")),
            s,
        )
        .await;
    let bookings = live
        .wait_until(&m, "bookings", |v| {
            v.filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
                .cloned()
        })
        .await;
    let berlin_midnight = |d: i64| d - zone_offset("Europe/Berlin", d).unwrap();
    let span = |id: &str| {
        let b = bookings
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("no booking {id} in {bookings}"));
        (b["start"].as_i64().unwrap(), b["end"].as_i64().unwrap())
    };
    assert_eq!(span("pst"), (hour + 3600, hour + 7200));
    assert_eq!(
        span("day"),
        (berlin_midnight(day), berlin_midnight(day + 86_400))
    );
    assert_eq!(live.status(&m, "last_error"), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_cancel_whose_first_answer_comes_late_is_not_sent() {
    let sim = MsGraphSimulator::new(MB, CLIENT, SECRET);
    let hour = now() / 3600 * 3600;
    let mut own = event("AAMk+own/=", hour + 3600, hour + 7200, "Own", MB);
    own["isOrganizer"] = json!(true);
    sim.add_event(own);
    let addr = sim.serve().await.expect("the simulator serves");
    let live = LiveEngine::start().await;
    let mut s = settings(addr, SECRET, 60_000);
    s["request_timeout_ms"] = json!(8_000);
    let m = live
        .add_module(
            lintel_bundled_drivers::MSGRAPH.component,
            Some(&format!("http://{addr}")),
            s,
        )
        .await;
    live.wait_until(&m, "bookings", |v| {
        v.filter(|v| v.as_array().is_some_and(|a| a.len() == 1))
            .cloned()
    })
    .await;
    // The GET before the cancel answers after the function's 4.5 s: the POST is not sent.
    sim.delay_next(Duration::from_millis(4_700));
    let err = live
        .exec(&m, "cancel_booking", json!(["AAMk+own/=", "late"]))
        .await
        .expect_err("refused");
    // The driver's answer, or the engine's exec timeout when a loaded machine delivered
    // it after 5 s; either way nothing was cancelled.
    assert!(
        err.contains("reading the booking took until 4.5 s after the call")
            || err.contains("no reply from the module within"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    live.settle(&m).await;
    assert!(sim.actions().is_empty(), "{:?}", sim.actions());
    assert!(sim.event("AAMk+own/=").is_some());
    live.shutdown().await;
}
