//! Live tests: the driver in the real engine (real HTTP over loopback) against a REAL
//! Radicale 3.9 CalDAV server (`lintel_testkit::radicale`), seeded independently of the
//! driver with the testkit's own HTTP client. The driver reads with REPORT (Radicale
//! answers it), so these cover the main path; the GET fallback is covered by the harness.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json};
use lintel_testkit::radicale::{RADICALE_PASSWORD, RADICALE_USER, Radicale, event_ics};

const CAL: &str = "/room/calendar/";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn stamp(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

fn settings(password: &str) -> Value {
    json!({
        "calendar_path": CAL,
        "poll_every_ms": 5000,
        "basic_auth": {"username": RADICALE_USER, "password": password},
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

/// Radicale with a calendar at [`CAL`] (started off the async workers: it blocks).
async fn radicale() -> Radicale {
    lintel_driver_harness::tokio::task::spawn_blocking(|| {
        let r = Radicale::start();
        r.make_calendar(CAL);
        r
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bookings_match_the_events_seeded_in_radicale() {
    let rad = radicale().await;
    let hour = now() / 3600 * 3600;
    rad.put_event(
        &format!("{CAL}one.ics"),
        &event_ics(
            "one",
            &stamp(hour + 3600),
            &stamp(hour + 7200),
            "Board\\, Q1",
            "ORGANIZER;CN=Ann:mailto:ann@example.com\r\nATTENDEE:mailto:bo@example.com\r\nCLASS:PRIVATE",
        ),
    );
    // In a named zone (Radicale stores it as given).
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let local = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .with_timezone(&berlin)
            .format("%Y%m%dT%H%M%S")
            .to_string()
    };
    let zoned = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:zoned\r\nDTSTAMP:20260101T000000Z\r\n\
         DTSTART;TZID=Europe/Berlin:{}\r\nDTEND;TZID=Europe/Berlin:{}\r\nSUMMARY:Zoned\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        local(hour + 3 * 3600),
        local(hour + 4 * 3600)
    );
    rad.put_event(&format!("{CAL}zoned.ics"), &zoned);
    // Outside the window (now + 48 h).
    rad.put_event(
        &format!("{CAL}later.ics"),
        &event_ics(
            "later",
            &stamp(hour + 48 * 3600),
            &stamp(hour + 49 * 3600),
            "Later",
            "",
        ),
    );

    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&rad.uri()),
            settings(RADICALE_PASSWORD),
        )
        .await;
    let bookings = live
        .wait_until(&m, "bookings", |v| {
            v.filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
                .cloned()
        })
        .await;
    assert_eq!(
        bookings,
        json!([
            {"id": "one", "title": "Board, Q1", "start": hour + 3600, "end": hour + 7200,
             "organizer": "ann@example.com", "attendees": ["bo@example.com"],
             "all_day": false, "private": true},
            {"id": "zoned", "title": "Zoned", "start": hour + 3 * 3600, "end": hour + 4 * 3600,
             "organizer": null, "attendees": [], "all_day": false, "private": false},
        ])
    );
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));
    assert!(
        live.status(&m, "last_sync")
            .and_then(|v| v.as_i64())
            .unwrap()
            >= hour
    );

    // A later poll sees an event added behind the driver's back.
    rad.put_event(
        &format!("{CAL}added.ics"),
        &event_ics(
            "added",
            &stamp(hour + 5 * 3600),
            &stamp(hour + 6 * 3600),
            "Added",
            "",
        ),
    );
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| i == &["one", "zoned", "added"])
    })
    .await;

    let listed = live
        .exec(&m, "list_bookings", json!([hour, hour + 50 * 3600]))
        .await
        .unwrap();
    assert_eq!(
        ids(Some(&listed)).unwrap(),
        ["one", "zoned", "added", "later"]
    );
    let busy = live
        .exec(&m, "free_busy", json!([hour, hour + 24 * 3600]))
        .await
        .unwrap();
    assert_eq!(
        busy,
        json!([
            {"start": hour + 3600, "end": hour + 7200},
            {"start": hour + 3 * 3600, "end": hour + 4 * 3600},
            {"start": hour + 5 * 3600, "end": hour + 6 * 3600},
        ])
    );
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_create_refuse_overlap_and_cancel_on_radicale() {
    let rad = radicale().await;
    let hour = now() / 3600 * 3600;
    rad.put_event(
        &format!("{CAL}seeded.ics"),
        &event_ics(
            "seeded",
            &stamp(hour + 5 * 3600),
            &stamp(hour + 6 * 3600),
            "Seeded",
            "",
        ),
    );
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&rad.uri()),
            settings(RADICALE_PASSWORD),
        )
        .await;
    live.wait_until(&m, "bookings", |v| ids(v).filter(|i| i == &["seeded"]))
        .await;

    let (s, e) = (hour + 2 * 3600, hour + 3 * 3600);
    let created = live
        .exec(
            &m,
            "create_booking",
            json!([s, e, "Live; booking", "ann@example.com"]),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created,
        json!({"id": id, "title": "Live; booking", "start": s, "end": e,
               "organizer": "ann@example.com", "attendees": [], "all_day": false, "private": false})
    );
    // It is in Radicale, read back independently.
    let ics = rad
        .get_event(&format!("{CAL}{id}.ics"))
        .expect("the event is stored");
    assert!(ics.contains("SUMMARY:Live\\; booking"), "{ics}");
    assert!(ics.contains(&format!("DTSTART:{}", stamp(s))), "{ics}");
    assert!(ics.contains("ORGANIZER:mailto:ann@example.com"), "{ics}");
    live.wait_until(&m, "bookings", |v| {
        ids(v).filter(|i| *i == [id.clone(), "seeded".to_string()])
    })
    .await;

    // Overlapping the new booking, and the seeded one: refused, nothing stored.
    for (a, b) in [
        (s + 1800, e + 1800),
        (hour + 5 * 3600 - 60, hour + 5 * 3600 + 60),
    ] {
        let err = live
            .exec(&m, "create_booking", json!([a, b, "Clash"]))
            .await
            .unwrap_err();
        assert!(err.contains("the room is already booked"), "{err}");
    }
    assert!(!rad.calendar(CAL).contains("SUMMARY:Clash"));

    // Cancel the new one and the seeded one: both gone from Radicale.
    assert_eq!(
        live.exec(&m, "cancel_booking", json!([id, "meeting moved"]))
            .await,
        Ok(Value::Null)
    );
    assert_eq!(rad.get_event(&format!("{CAL}{id}.ics")), None);
    assert_eq!(
        live.exec(&m, "cancel_booking", json!(["seeded"])).await,
        Ok(Value::Null)
    );
    assert_eq!(rad.get_event(&format!("{CAL}seeded.ics")), None);
    live.wait_for(&m, "bookings", json!([])).await;
    let err = live
        .exec(&m, "cancel_booking", json!(["seeded"]))
        .await
        .unwrap_err();
    assert!(err.contains("no booking with id `seeded`"), "{err}");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_wrong_password_sets_last_error_without_the_password() {
    let rad = radicale().await;
    let wrong = "not-the-Radicale-password";
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&rad.uri()),
            settings(wrong),
        )
        .await;
    live.wait_for(
        &m,
        "last_error",
        json!("authentication failed (HTTP 401): check the module's basic_auth credentials"),
    )
    .await;
    let err = live.exec(&m, "refresh", json!([])).await.unwrap_err();
    assert!(err.contains("authentication failed (HTTP 401)"), "{err}");
    let state = json!(live.state(&m)).to_string();
    assert!(
        !state.contains(wrong) && !state.contains(RADICALE_PASSWORD),
        "{state}"
    );
    assert_eq!(live.status(&m, "bookings"), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_a_stopped_server_is_reported_and_a_restarted_one_recovers() {
    let rad = radicale().await;
    let hour = now() / 3600 * 3600;
    rad.put_event(
        &format!("{CAL}kept.ics"),
        &event_ics("kept", &stamp(hour + 3600), &stamp(hour + 7200), "Kept", ""),
    );
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&rad.uri()),
            settings(RADICALE_PASSWORD),
        )
        .await;
    live.wait_until(&m, "bookings", |v| ids(v).filter(|i| i == &["kept"]))
        .await;

    let (dir, port) = rad.stop();
    let err = live.exec(&m, "refresh", json!([])).await.unwrap_err();
    assert!(err.contains("no answer from the calendar server"), "{err}");
    live.wait_until(&m, "last_error", |v| {
        v.and_then(Value::as_str)
            .filter(|e| e.starts_with("no answer from the calendar server"))
            .map(drop)
    })
    .await;
    live.wait_for(&m, "connected", json!(false)).await;
    // Bookings are kept while the server is away.
    assert_eq!(ids(live.status(&m, "bookings").as_ref()).unwrap(), ["kept"]);

    let rad =
        lintel_driver_harness::tokio::task::spawn_blocking(move || Radicale::start_in(dir, port))
            .await
            .unwrap();
    // The next poll (every 5 s) finds it again.
    live.wait_for(&m, "last_error", Value::Null).await;
    live.wait_for(&m, "connected", json!(true)).await;
    assert_eq!(live.exec(&m, "refresh", json!([])).await, Ok(Value::Null));
    drop(rad);
    live.shutdown().await;
}

/// The REPORT path end to end: Radicale expands a daily event into its occurrences (a
/// GET of the collection would only give the first one, before the window), and an event
/// stored under a name that is not `<uid>.ics` is cancelled through the href and ETag of
/// the REPORT answer (a GET of `<uid>.ics` would find nothing). One occurrence of the
/// series is cancelled with an EXDATE (the series stays); its bare UID is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_report_expands_recurring_events_and_cancels_by_href() {
    let rad = radicale().await;
    let hour = now() / 3600 * 3600;
    // Daily, five times from yesterday: occurrences at -22 h, +2 h, +26 h, +50 h, +74 h;
    // the window (now - 1 h .. now + 72 h) holds the middle three.
    rad.put_event(
        &format!("{CAL}daily-series.ics"),
        &event_ics(
            "daily@example.com",
            &stamp(hour - 22 * 3600),
            &stamp(hour - 21 * 3600),
            "Daily & <co>",
            "RRULE:FREQ=DAILY;COUNT=5",
        ),
    );
    let renamed = format!("{CAL}Stored Elsewhere 42.ics").replace(' ', "%20");
    rad.put_event(
        &renamed,
        &event_ics(
            "renamed-uid@example.com",
            &stamp(hour + 4 * 3600),
            &stamp(hour + 5 * 3600),
            "Renamed",
            "",
        ),
    );
    assert!(rad.get_event(&renamed).is_some());

    let live = LiveEngine::start().await;
    let mut s = settings(RADICALE_PASSWORD);
    s["lookahead_hours"] = json!(72);
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&rad.uri()),
            s,
        )
        .await;
    let spans = |v: Option<&Value>| -> Option<Vec<(String, i64, i64, String)>> {
        Some(
            v?.as_array()?
                .iter()
                .map(|b| {
                    (
                        b["id"].as_str().unwrap_or_default().to_string(),
                        b["start"].as_i64().unwrap_or_default() - hour,
                        b["end"].as_i64().unwrap_or_default() - hour,
                        b["title"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    };
    let got = live
        .wait_until(&m, "bookings", |v| spans(v).filter(|s| s.len() == 4))
        .await;
    let h = 3600;
    // Each occurrence: `<uid>#<RECURRENCE-ID in UTC>` (Radicale's expansion sets it).
    let daily = |at: i64| {
        (
            format!("daily@example.com#{}", stamp(hour + at)),
            at,
            at + h,
            "Daily & <co>".to_string(),
        )
    };
    assert_eq!(
        got,
        [
            daily(2 * h),
            (
                "renamed-uid@example.com".to_string(),
                4 * h,
                5 * h,
                "Renamed".to_string()
            ),
            daily(26 * h),
            daily(50 * h),
        ]
    );
    assert_eq!(live.status(&m, "last_error"), None);

    // Cancel the event stored under another name: gone from Radicale.
    assert_eq!(
        live.exec(
            &m,
            "cancel_booking",
            json!(["renamed-uid@example.com", "moved"])
        )
        .await,
        Ok(Value::Null)
    );
    assert_eq!(rad.get_event(&renamed), None);
    // Cancelling one occurrence: an EXDATE in the series, which stays.
    let series = format!("{CAL}daily-series.ics");
    assert_eq!(
        live.exec(
            &m,
            "cancel_booking",
            json!([format!("daily@example.com#{}", stamp(hour + 26 * h))])
        )
        .await,
        Ok(Value::Null)
    );
    let stored = rad.get_event(&series).expect("the series is not deleted");
    assert!(stored.contains("EXDATE"), "{stored}");
    let got = live
        .wait_until(&m, "bookings", |v| spans(v).filter(|s| s.len() == 2))
        .await;
    assert_eq!(got, [daily(2 * h), daily(50 * h)]);
    // The bare UID names the whole series: refused, nothing deleted.
    let e = live
        .exec(&m, "cancel_booking", json!(["daily@example.com"]))
        .await
        .unwrap_err();
    assert!(e.contains("is a recurring series"), "{e}");
    assert!(rad.get_event(&series).is_some());
    live.shutdown().await;
}

/// The demo building's simulator (`lintel_simulators::caldav`) over real loopback HTTP:
/// the driver shows its generated day, and books and cancels on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_the_demo_simulator_serves_a_day_of_bookings() {
    use lintel_simulators::caldav::CaldavSimulator;
    // Its bookings are at 09:00..17:00 after `day`: from now + 1 h on.
    let day = now() / 3600 * 3600 - 8 * 3600;
    let sim = CaldavSimulator::with_demo_day("/demo/calendar/", day);
    let addr = sim.serve().await.unwrap();
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::CALDAV.component,
            Some(&format!("http://{addr}")),
            json!({"calendar_path": "/demo/calendar/"}),
        )
        .await;
    let titles = live
        .wait_until(&m, "bookings", |v| {
            let a = v?.as_array()?;
            (a.len() == 4).then(|| {
                a.iter()
                    .map(|b| b["title"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
        })
        .await;
    assert_eq!(
        titles,
        [
            "Daily stand-up",
            "Design review",
            "1:1",
            "Customer call, Acme"
        ]
    );
    let created = live
        .exec(
            &m,
            "create_booking",
            json!([day + 18 * 3600, day + 19 * 3600, "Evening"]),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(sim.get(&format!("{id}.ics")).is_some(), "{:?}", sim.names());
    live.exec(&m, "cancel_booking", json!([id])).await.unwrap();
    assert!(sim.get(&format!("{id}.ics")).is_none());
    live.shutdown().await;
}
