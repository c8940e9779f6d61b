//! Live tests: a room in the real engine. `Calendar_1` is the CalDAV driver against a REAL
//! Radicale 3.9 server, `Panel_1` the room-panel driver against `PanelSimulator` over real
//! HTTP, `Bookings_1` the room logic calling and following both through the engine. The
//! events are seeded and read back with the testkit's own HTTP client, so the chain
//! (Radicale → CalDAV driver → `bookings` status → room logic → panel and calendar
//! calls → Radicale) is checked at both ends.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json};
use lintel_simulators::room_panel::{PanelSimulator, PanelState};
use lintel_testkit::radicale::{RADICALE_PASSWORD, RADICALE_USER, Radicale, event_ics};
use std::time::{Duration, Instant};

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

struct Room {
    live: LiveEngine,
    radicale: Radicale,
    panel: PanelSimulator,
    bookings: String,
}

/// Radicale with `events` (uid, start, end, title) seeded, and the three modules.
async fn room(events: &[(&str, i64, i64, &str)], settings: Value) -> Room {
    let seeded: Vec<(String, String)> = events
        .iter()
        .map(|(uid, start, end, title)| {
            (
                format!("{CAL}{uid}.ics"),
                event_ics(uid, &stamp(*start), &stamp(*end), title, ""),
            )
        })
        .collect();
    let radicale = lintel_driver_harness::tokio::task::spawn_blocking(move || {
        let r = Radicale::start();
        r.make_calendar(CAL);
        for (path, ics) in &seeded {
            r.put_event(path, ics);
        }
        r
    })
    .await
    .unwrap();
    let live = LiveEngine::start().await;
    live.add_module(
        lintel_bundled_drivers::CALDAV.component,
        Some(&radicale.uri()),
        json!({
            "calendar_path": CAL,
            "poll_every_ms": 5000,
            "basic_auth": {"username": RADICALE_USER, "password": RADICALE_PASSWORD},
        }),
    )
    .await;
    let panel = PanelSimulator::new();
    let addr = panel
        .serve()
        .await
        .expect("the panel binds a loopback port");
    live.add_module(
        lintel_bundled_drivers::ROOM_PANEL.component,
        Some(&format!("http://{addr}")),
        json!({}),
    )
    .await;
    let bookings = live
        .add_module(lintel_bundled_drivers::BOOKINGS.component, None, settings)
        .await;
    Room {
        live,
        radicale,
        panel,
        bookings,
    }
}

/// Wait (up to 20 s) until the panel simulator satisfies `accept`.
async fn panel_until(panel: &PanelSimulator, what: &str, accept: impl Fn(&PanelState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = panel.state();
        if accept(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the panel never showed {what}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A booking nobody checks in to is released: the room logic cancels it through the
/// CalDAV module, Radicale no longer holds it, and the panel turns green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_show_is_released_from_the_real_calendar_and_the_panel_turns_green() {
    // Started 45 s ago; released one minute after its start (a booking first seen after
    // its deadline is never released, so the deadline must come while the logic runs).
    let t = now();
    let r = room(
        &[("standup", t - 45, t + 30 * 60, "Standup")],
        json!({"occupancy": "", "auto_release_minutes": 1}),
    )
    .await;
    r.live
        .wait_for(&r.bookings, "status", json!("pending"))
        .await;
    let released = r
        .live
        .wait_until_within(Duration::from_secs(45), &r.bookings, "released", |v| {
            v.and_then(|v| v["id"].as_str().map(String::from))
        })
        .await;
    assert_eq!(released, "standup");
    r.live.wait_for(&r.bookings, "status", json!("free")).await;
    assert_eq!(
        r.radicale.get_event(&format!("{CAL}standup.ics")),
        None,
        "the released booking is still in Radicale"
    );
    panel_until(&r.panel, "green and free", |s| {
        s.light == "green" && s.shown.state == "free"
    })
    .await;
    assert_eq!(r.live.status(&r.bookings, "last_error"), Some(Value::Null));
}

/// `book_now` creates the booking in Radicale through the CalDAV module and the room is
/// busy (red); `end_meeting` deletes it there and the room is free (green) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_now_and_end_meeting_reach_the_real_calendar_and_the_panel() {
    let r = room(&[], json!({"occupancy": ""})).await;
    r.live.wait_for(&r.bookings, "status", json!("free")).await;
    let booked = r
        .live
        .exec(&r.bookings, "book_now", json!([15, "Ad-hoc"]))
        .await
        .expect("book_now");
    let id = booked["id"].as_str().expect("the booking's id").to_string();
    assert_eq!(booked["title"], "Ad-hoc");
    assert_eq!(
        booked["end"].as_i64().unwrap() - booked["start"].as_i64().unwrap(),
        15 * 60
    );
    let calendar = r.radicale.calendar(CAL);
    assert!(
        calendar.contains(&format!("UID:{id}")) && calendar.contains("SUMMARY:Ad-hoc"),
        "{calendar}"
    );
    r.live.wait_for(&r.bookings, "status", json!("busy")).await;
    panel_until(&r.panel, "red and busy", |s| {
        s.light == "red" && s.shown.state == "busy"
    })
    .await;

    r.live
        .exec(&r.bookings, "end_meeting", json!([]))
        .await
        .expect("end_meeting");
    assert!(
        !r.radicale.calendar(CAL).contains(&format!("UID:{id}")),
        "the ended booking is still in Radicale"
    );
    r.live.wait_for(&r.bookings, "status", json!("free")).await;
    panel_until(&r.panel, "green and free", |s| {
        s.light == "green" && s.shown.state == "free"
    })
    .await;
}
