//! The Bookings room logic, tested with the harness: virtual time, the calendar, occupancy
//! sensor and panel played by scripted statuses (`set_remote_status`) and call answers
//! (`answer_call`).
//!
//! The same room with real modules around it is in `live.rs`.

use lintel_driver_harness::{Harness, LogLevel, Value, json};
use std::time::Duration;

/// Virtual time starts at 2026-01-01T00:00:00Z (a Thursday).
const T0: i64 = 1_767_225_600;
const MIN: i64 = 60;

/// The driver with `settings`, its panel and calendar answering `Ok(null)`, redrawn once
/// the answers are scripted.
fn room(settings: Value) -> Harness {
    let mut h = Harness::builder(lintel_bundled_drivers::BOOKINGS.component.to_vec())
        .settings(settings)
        .start()
        .expect("the driver starts");
    h.answer_call("Panel_1", "set_light", Ok(Value::Null));
    h.answer_call("Panel_1", "show", Ok(Value::Null));
    h.answer_call("Calendar_1", "cancel_booking", Ok(Value::Null));
    assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
    h
}

fn now(h: &Harness) -> i64 {
    T0 + (h.now_ms() / 1000) as i64
}

fn advance_s(h: &mut Harness, secs: i64) {
    h.advance(Duration::from_secs(secs as u64));
}

fn advance_to(h: &mut Harness, unix_s: i64) {
    let by = unix_s - now(h);
    assert!(by >= 0, "cannot go back in time");
    advance_s(h, by);
}

fn booking(id: &str, title: &str, start: i64, minutes: i64) -> Value {
    json!({
        "id": id,
        "title": title,
        "start": start,
        "end": start + minutes * MIN,
        "organizer": "alice@example.com",
        "attendees": ["bob@example.com"],
        "all_day": false,
        "private": false,
    })
}

/// The arguments of every call made to `module.function`, in order.
fn calls_to(h: &Harness, module: &str, function: &str) -> Vec<Vec<Value>> {
    h.calls()
        .into_iter()
        .filter(|(m, f, _)| m == module && f == function)
        .map(|(_, _, a)| a)
        .collect()
}

fn logged(h: &mut Harness, level: LogLevel, needle: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| l.level == level && l.message.contains(needle))
}

fn last_error(h: &Harness) -> String {
    match h.status("last_error") {
        Some(Value::String(s)) => s,
        other => panic!("last_error is {other:?}, expected a text"),
    }
}

/// A room with one booking "Weekly sync" from +10 min for an hour.
fn weekly_sync(settings: Value) -> (Harness, i64) {
    let mut h = room(settings);
    let start = T0 + 10 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", start, 60)]),
    );
    (h, start)
}

// ---------------------------------------------------------------- settings and metadata

#[test]
fn declares_its_functions_and_settings() {
    let h = room(json!({}));
    let info = h.info();
    let mut names: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["book_now", "check_in", "end_meeting", "refresh"]);
    for f in &info.functions {
        assert!(!f.description.is_empty(), "{} is undocumented", f.name);
    }
    let d = &info.default_settings;
    assert_eq!(d["calendar"], json!("Calendar_1"));
    assert_eq!(d["occupancy"], json!("Occupancy_1.presence"));
    assert_eq!(d["panel"], json!("Panel_1"));
    assert_eq!(d["auto_release_minutes"], json!(10));
    assert_eq!(d["check_in_early_minutes"], json!(5));
    assert_eq!(d["book_now_default_minutes"], json!(30));
    assert_eq!(d["title_private"], json!("Private meeting"));
    assert_eq!(d["time_zone"], json!("UTC"));
    let schema = info.settings_schema.to_string();
    assert!(
        schema.contains("auto_release_minutes") && schema.contains("Release a booking"),
        "settings are documented: {schema}"
    );
}

#[test]
fn refuses_bad_settings_with_the_key_named() {
    for (settings, expected) in [
        (
            json!({"auto_release_minutes": 300}),
            "auto_release_minutes must be 0..=240, got 300",
        ),
        (
            json!({"check_in_early_minutes": 121}),
            "check_in_early_minutes must be 0..=120",
        ),
        (
            json!({"book_now_default_minutes": 2}),
            "book_now_default_minutes must be 5..=480, got 2",
        ),
        (
            json!({"evaluate_every_seconds": 1}),
            "evaluate_every_seconds must be 5..=300",
        ),
        (
            json!({"time_zone": "Mars/Olympus"}),
            "time_zone `Mars/Olympus` is not an IANA time zone name",
        ),
        (
            json!({"calendar": "Calendar_1.bookings"}),
            "calendar must name a module",
        ),
        (json!({"panel": "Panel_1.show"}), "panel must name a module"),
        (json!({"occupancy": "Occupancy_1"}), "occupancy: "),
        (
            json!({"calendar": "Calendar_0"}),
            "module indexes start at 1",
        ),
        (json!({"title_private": " "}), "title_private must be"),
    ] {
        let e = Harness::builder(lintel_bundled_drivers::BOOKINGS.component.to_vec())
            .settings(settings.clone())
            .start()
            .err()
            .unwrap_or_else(|| panic!("{settings} accepted"));
        assert!(e.contains(expected), "{settings}: {e}");
    }
}

// ---------------------------------------------------------------- free, pending, busy

#[test]
fn free_then_pending_then_busy_on_check_in_then_free_at_the_end() {
    let (mut h, start) = weekly_sync(json!({}));
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("free_until"), Some(json!(start)));
    assert_eq!(h.status("current_booking"), Some(Value::Null));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b1"));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    // Exactly at the start (a boundary timer, not the 15 s tick).
    advance_to(&mut h, start - 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    advance_s(&mut h, 1);
    assert_eq!(h.status("status"), Some(json!("pending")));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("b1"));
    assert_eq!(h.status("next_booking"), Some(Value::Null));
    assert_eq!(h.status("free_until"), Some(Value::Null));

    let answer = h.exec("check_in", json!([])).expect("checked in");
    assert_eq!(answer["id"], json!("b1"));
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("checked_in"), Some(json!(true)));
    // Checking in twice is fine.
    assert!(h.exec("check_in", json!([])).is_ok());

    advance_to(&mut h, start + 60 * MIN - 1);
    assert_eq!(h.status("status"), Some(json!("busy")));
    advance_s(&mut h, 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("current_booking"), Some(Value::Null));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
    assert_eq!(
        h.status("free_until"),
        Some(Value::Null),
        "no more bookings"
    );
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
}

#[test]
fn pending_starts_pending_before_minutes_early() {
    let (mut h, start) = weekly_sync(json!({"pending_before_minutes": 5}));
    advance_to(&mut h, start - 5 * MIN - 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    advance_s(&mut h, 1);
    assert_eq!(h.status("status"), Some(json!("pending")));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("b1"));
}

#[test]
fn check_in_opens_check_in_early_minutes_before_the_start() {
    let (mut h, start) = weekly_sync(json!({"check_in_early_minutes": 5}));
    advance_to(&mut h, start - 5 * MIN - 1);
    let e = h.exec("check_in", json!([])).unwrap_err();
    assert!(
        e.contains("the next one starts at 00:10; check-in opens 5 minutes before"),
        "{e}"
    );
    assert_eq!(h.status("checked_in"), Some(json!(false)));

    advance_s(&mut h, 1);
    assert_eq!(h.exec("check_in", json!([])).unwrap()["id"], json!("b1"));
    // Checked in early: the room is in use by this booking already.
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("b1"));

    // And it is not released later.
    advance_to(&mut h, start + 30 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("busy")));
}

#[test]
fn check_in_without_a_booking_is_refused() {
    let mut h = room(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!([]));
    let e = h.exec("check_in", json!([])).unwrap_err();
    assert!(e.contains("no current or upcoming booking"), "{e}");
    assert_eq!(h.status("status"), Some(json!("free")));
}

// ---------------------------------------------------------------- auto-release

#[test]
fn auto_releases_a_no_show_exactly_once() {
    let (mut h, start) = weekly_sync(json!({"auto_release_minutes": 10}));
    let later = booking("b2", "Later", start + 120 * MIN, 30);
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", start, 60), later]),
    );
    advance_to(&mut h, start + 10 * MIN - 1);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("pending")));

    advance_s(&mut h, 1);
    assert_eq!(
        calls_to(&h, "Calendar_1", "cancel_booking"),
        vec![vec![
            json!("b1"),
            json!("Auto-released: no check-in within 10 minutes")
        ]]
    );
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("current_booking"), Some(Value::Null));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b2"));
    assert_eq!(h.status("free_until"), Some(json!(start + 120 * MIN)));
    assert_eq!(
        h.status("released"),
        Some(json!({"id": "b1", "title": "Weekly sync", "at": start + 10 * MIN}))
    );
    assert!(logged(
        &mut h,
        LogLevel::Info,
        "auto-released booking `b1` (Weekly sync): no check-in within 10 minutes"
    ));

    // The calendar still lists it for a while: not released again, the room stays free.
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            booking("b1", "Weekly sync", start, 60),
            booking("b2", "Later", start + 120 * MIN, 30)
        ]),
    );
    advance_s(&mut h, 5 * MIN);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    let e = h.exec("check_in", json!([])).unwrap_err();
    assert!(
        e.contains("starts at 02:10"),
        "a released booking cannot be checked in: {e}"
    );
}

#[test]
fn zero_minutes_never_releases() {
    let (mut h, start) = weekly_sync(json!({"auto_release_minutes": 0}));
    advance_to(&mut h, start + 59 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("pending")));
}

#[test]
fn presence_checks_in_and_prevents_release() {
    let (mut h, start) = weekly_sync(json!({}));
    h.set_remote_status("Occupancy_1.presence", json!(false));
    assert_eq!(h.status("occupied"), Some(json!(false)));
    advance_to(&mut h, start + 2 * MIN);
    assert_eq!(h.status("status"), Some(json!("pending")));

    h.set_remote_status("Occupancy_1.presence", json!(true));
    assert_eq!(h.status("occupied"), Some(json!(true)));
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("checked_in"), Some(json!(true)));

    // People leave for a while: still checked in, never released.
    h.set_remote_status("Occupancy_1.presence", json!(false));
    advance_to(&mut h, start + 30 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("busy")));
}

#[test]
fn presence_before_the_start_does_not_count() {
    let (mut h, start) = weekly_sync(json!({}));
    // The previous meeting overruns until 2 minutes before the start, then leaves.
    h.set_remote_status("Occupancy_1.presence", json!(true));
    advance_to(&mut h, start - 2 * MIN);
    h.set_remote_status("Occupancy_1.presence", json!(false));
    advance_to(&mut h, start + 10 * MIN);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    assert_eq!(h.status("status"), Some(json!("free")));
}

#[test]
fn presence_without_check_in_still_blocks_release_when_configured() {
    let (mut h, start) = weekly_sync(json!({
        "presence_checks_in": false,
        "release_on_no_show_only_when_unoccupied": true,
    }));
    advance_to(&mut h, start + MIN);
    h.set_remote_status("Occupancy_1.presence", json!(1));
    h.set_remote_status("Occupancy_1.presence", json!(0));
    assert_eq!(
        h.status("status"),
        Some(json!("pending")),
        "presence is no check-in"
    );
    advance_to(&mut h, start + 30 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
}

#[test]
fn presence_is_ignored_for_release_when_configured() {
    let (mut h, start) = weekly_sync(json!({
        "presence_checks_in": false,
        "release_on_no_show_only_when_unoccupied": false,
    }));
    advance_to(&mut h, start + MIN);
    h.set_remote_status("Occupancy_1.presence", json!(true));
    advance_to(&mut h, start + 10 * MIN);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    assert_eq!(h.status("status"), Some(json!("free")));
}

#[test]
fn a_booking_first_seen_after_its_release_deadline_is_not_released() {
    // E.g. the module restarted mid-meeting: nobody knows whether people checked in.
    let mut h = room(json!({}));
    let start = T0 - 20 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Started earlier", start, 60)]),
    );
    advance_s(&mut h, 30 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("pending")));
    let show = calls_to(&h, "Panel_1", "show");
    assert_eq!(show.last().unwrap()[2], json!("Check in to start"));
}

#[test]
fn a_failing_release_is_reported_and_retried_then_succeeds() {
    let (mut h, start) = weekly_sync(json!({}));
    h.answer_call(
        "Calendar_1",
        "cancel_booking",
        Err("CalDAV server unreachable".into()),
    );
    advance_to(&mut h, start + 10 * MIN);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    let e = last_error(&h);
    assert!(
        e.contains(
            "auto-release of `b1` failed: Calendar_1.cancel_booking: CalDAV server unreachable"
        ),
        "{e}"
    );
    assert!(logged(&mut h, LogLevel::Warn, "CalDAV server unreachable"));
    assert_eq!(h.status("status"), Some(json!("pending")), "still booked");
    assert_eq!(h.error(), None, "no crash");

    // Retried a minute later, not before.
    advance_s(&mut h, 59);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    h.answer_call("Calendar_1", "cancel_booking", Ok(Value::Null));
    advance_s(&mut h, 1);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 2);
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(
        h.status("last_error"),
        Some(Value::Null),
        "cleared by the success"
    );
    assert_eq!(h.status("released").unwrap()["id"], json!("b1"));
}

#[test]
fn a_release_that_keeps_failing_gives_up_after_five_attempts() {
    let (mut h, start) = weekly_sync(json!({}));
    h.answer_call("Calendar_1", "cancel_booking", Err("refused".into()));
    advance_to(&mut h, start + 30 * MIN);
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 5);
    assert!(
        last_error(&h).contains("gave up after 5 attempts"),
        "{}",
        last_error(&h)
    );
    assert_eq!(h.error(), None);
}

// ---------------------------------------------------------------- end_meeting, book_now

#[test]
fn end_meeting_cancels_the_booking_and_frees_the_room() {
    let (mut h, start) = weekly_sync(json!({}));
    let e = h.exec("end_meeting", json!([])).unwrap_err();
    assert!(e.contains("no meeting in progress"), "{e}");

    advance_to(&mut h, start + MIN);
    h.exec("check_in", json!([])).unwrap();
    assert_eq!(h.exec("end_meeting", json!([])), Ok(Value::Null));
    assert_eq!(
        calls_to(&h, "Calendar_1", "cancel_booking"),
        vec![vec![json!("b1"), json!("Ended early from the room")]]
    );
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
    // Still listed for a while: the room stays free.
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", start, 60)]),
    );
    advance_s(&mut h, MIN);
    assert_eq!(h.status("status"), Some(json!("free")));
}

#[test]
fn end_meeting_refused_by_the_calendar_is_an_error() {
    let (mut h, start) = weekly_sync(json!({}));
    advance_to(&mut h, start + MIN);
    h.exec("check_in", json!([])).unwrap();
    h.answer_call("Calendar_1", "cancel_booking", Err("403 Forbidden".into()));
    let e = h.exec("end_meeting", json!([])).unwrap_err();
    assert!(e.contains("ending `b1` failed"), "{e}");
    assert!(e.contains("403 Forbidden"), "{e}");
    assert!(last_error(&h).contains("403 Forbidden"));
    assert_eq!(h.status("status"), Some(json!("busy")));
}

#[test]
fn book_now_creates_a_checked_in_booking() {
    let mut h = room(json!({}));
    let later = T0 + 120 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b9", "Later", later, 30)]),
    );
    advance_s(&mut h, 7);
    let t = now(&h);
    let created = json!({
        "id": "new-1", "title": "Ad-hoc booking", "start": t, "end": t + 30 * MIN,
        "organizer": null, "attendees": [], "all_day": false, "private": false
    });
    h.answer_call("Calendar_1", "create_booking", Ok(created.clone()));
    assert_eq!(h.exec("book_now", json!([])), Ok(created));
    assert_eq!(
        calls_to(&h, "Calendar_1", "create_booking"),
        vec![vec![
            json!(t),
            json!(t + 30 * MIN),
            json!("Ad-hoc booking"),
            Value::Null
        ]]
    );
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("new-1"));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b9"));

    // The calendar lists it later; it is checked in, so it is never released.
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            booking("new-1", "Ad-hoc booking", t, 30),
            booking("b9", "Later", later, 30)
        ]),
    );
    advance_s(&mut h, 20 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("busy")));
}

#[test]
fn a_booking_made_now_survives_a_calendar_that_lags() {
    let mut h = room(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!([]));
    let t = now(&h);
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n1", "Ad-hoc booking", t, 30)),
    );
    h.exec("book_now", json!([])).unwrap();
    // The calendar publishes a list from before the booking was made.
    advance_s(&mut h, 30);
    h.set_remote_status("Calendar_1.bookings", json!([]));
    assert_eq!(h.status("status"), Some(json!("busy")));
    // Still not listed two minutes later: the calendar did not keep it.
    advance_s(&mut h, 90);
    h.set_remote_status("Calendar_1.bookings", json!([]));
    assert_eq!(h.status("status"), Some(json!("free")));
}

#[test]
fn book_now_with_minutes_and_title() {
    let mut h = room(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!([]));
    let t = now(&h);
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n2", "Stand-up", t, 15)),
    );
    let b = h.exec("book_now", json!([15, "Stand-up"])).unwrap();
    assert_eq!(b["id"], json!("n2"));
    assert_eq!(
        calls_to(&h, "Calendar_1", "create_booking")[0],
        vec![
            json!(t),
            json!(t + 15 * MIN),
            json!("Stand-up"),
            Value::Null
        ]
    );
    // The schema bounds the minutes before the driver runs.
    assert!(h.exec("book_now", json!([2])).is_err());
    assert!(h.exec("book_now", json!([481])).is_err());
    assert_eq!(calls_to(&h, "Calendar_1", "create_booking").len(), 1);
}

#[test]
fn book_now_is_refused_when_the_room_is_not_free_long_enough() {
    let (mut h, start) = weekly_sync(json!({}));
    let e = h.exec("book_now", json!([30])).unwrap_err();
    assert!(
        e.contains("not free for 30 minutes: `Weekly sync` starts at 00:10 (free for 10 minutes)"),
        "{e}"
    );
    // Short enough: allowed.
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n1", "Ad-hoc booking", T0, 10)),
    );
    assert!(h.exec("book_now", json!([10])).is_ok());

    // During a booking: refused.
    advance_to(&mut h, start + MIN);
    let e = h.exec("book_now", json!([])).unwrap_err();
    assert!(
        e.contains("the room is not free: `Weekly sync` until 01:10"),
        "{e}"
    );
    assert_eq!(calls_to(&h, "Calendar_1", "create_booking").len(), 1);
}

#[test]
fn book_now_failing_in_the_calendar_is_an_error() {
    let mut h = room(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!([]));
    h.answer_call("Calendar_1", "create_booking", Err("conflict".into()));
    let e = h.exec("book_now", json!([])).unwrap_err();
    assert!(
        e.contains("book_now failed: Calendar_1.create_booking: conflict"),
        "{e}"
    );
    assert!(last_error(&h).contains("conflict"));
    assert_eq!(h.status("status"), Some(json!("free")));
    // Nothing stuck: the next attempt goes through.
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n1", "Ad-hoc booking", now(&h), 30)),
    );
    assert!(h.exec("book_now", json!([])).is_ok());
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

// ---------------------------------------------------------------- the panel

#[test]
fn drives_the_panel_on_each_transition_only() {
    let (mut h, start) = weekly_sync(json!({}));
    let lights = |h: &Harness| -> Vec<Value> {
        calls_to(h, "Panel_1", "set_light")
            .into_iter()
            .map(|a| a[0].clone())
            .collect()
    };
    let shows = |h: &Harness| calls_to(h, "Panel_1", "show");
    // Offline (no calendar yet) at start, before the test scripted the panel's answers
    // (so it failed), again at room()'s refresh, then free once the bookings arrive.
    assert_eq!(lights(&h), [json!("off"), json!("off"), json!("green")]);
    assert_eq!(
        shows(&h)[0],
        [
            json!("offline"),
            json!("Unavailable"),
            json!("No calendar information")
        ]
    );
    assert_eq!(
        shows(&h).last().unwrap(),
        &[
            json!("free"),
            json!("Free until 00:10"),
            json!("Next: Weekly sync · 00:10–01:10")
        ]
    );

    // Nothing changes for a few ticks: nothing sent.
    let (n_lights, n_shows) = (lights(&h).len(), shows(&h).len());
    advance_s(&mut h, 2 * MIN);
    assert_eq!((lights(&h).len(), shows(&h).len()), (n_lights, n_shows));

    advance_to(&mut h, start);
    assert_eq!(lights(&h).last(), Some(&json!("amber")));
    assert_eq!(
        shows(&h).last().unwrap(),
        &[
            json!("pending"),
            json!("Weekly sync · 00:10–01:10"),
            json!("Check in by 00:20")
        ]
    );

    h.exec("check_in", json!([])).unwrap();
    assert_eq!(lights(&h).last(), Some(&json!("red")));
    assert_eq!(
        shows(&h).last().unwrap(),
        &[
            json!("busy"),
            json!("Weekly sync · 00:10–01:10"),
            json!("Free from 01:10")
        ]
    );

    advance_to(&mut h, start + 60 * MIN);
    assert_eq!(lights(&h).last(), Some(&json!("green")));
    assert_eq!(
        shows(&h).last().unwrap(),
        &[json!("free"), json!("Free"), json!("No upcoming bookings")]
    );
    assert_eq!(
        lights(&h),
        [
            json!("off"),
            json!("off"),
            json!("green"),
            json!("amber"),
            json!("red"),
            json!("green")
        ]
    );
}

#[test]
fn panel_times_use_the_configured_time_zone() {
    // Paris is UTC+1 in January.
    let (h, _) = weekly_sync(json!({"time_zone": "Europe/Paris"}));
    let show = calls_to(&h, "Panel_1", "show");
    assert_eq!(
        show.last().unwrap(),
        &[
            json!("free"),
            json!("Free until 01:10"),
            json!("Next: Weekly sync · 01:10–02:10")
        ]
    );
}

#[test]
fn private_titles_are_hidden_on_the_panel_and_in_status() {
    let mut h = room(json!({"title_private": "Busy (private)"}));
    let mut b = booking("p1", "Salary review", T0 + 10 * MIN, 30);
    b["private"] = json!(true);
    h.set_remote_status("Calendar_1.bookings", json!([b]));
    assert_eq!(
        h.status("next_booking").unwrap()["title"],
        json!("Busy (private)")
    );
    let show = calls_to(&h, "Panel_1", "show");
    assert_eq!(
        show.last().unwrap()[2],
        json!("Next: Busy (private) · 00:10–00:40")
    );
    assert!(!format!("{:?}{:?}", h.statuses(), h.calls()).contains("Salary review"));
}

#[test]
fn private_bookings_publish_no_organizer_or_attendees() {
    let mut h = room(json!({}));
    let mut b = booking("p1", "Salary review", T0 + 10 * MIN, 30);
    b["private"] = json!(true);
    let mut open = booking("o1", "Open", T0 + 60 * MIN, 30);
    open["organizer"] = json!("carol@example.com");
    open["attendees"] = json!(["dave@example.com"]);
    h.set_remote_status("Calendar_1.bookings", json!([b, open]));
    let next = h.status("next_booking").unwrap();
    assert_eq!(next["id"], json!("p1"));
    assert_eq!(next["organizer"], Value::Null);
    assert_eq!(next["attendees"], json!([]));
    advance_to(&mut h, T0 + 10 * MIN);
    let current = h.status("current_booking").unwrap();
    assert_eq!(current["id"], json!("p1"));
    assert_eq!(current["title"], json!("Private meeting"));
    assert_eq!(current["organizer"], Value::Null);
    assert_eq!(current["attendees"], json!([]));
    // The check-in answer too.
    let answer = h.exec("check_in", json!([])).unwrap();
    assert_eq!(
        (&answer["organizer"], &answer["attendees"]),
        (&Value::Null, &json!([]))
    );
    let published = format!("{:?}{:?}", h.statuses(), h.calls());
    assert!(!published.contains("alice@example.com"), "{published}");
    assert!(!published.contains("bob@example.com"), "{published}");
    // A booking that is not private keeps them.
    advance_to(&mut h, T0 + 60 * MIN);
    let open = h.status("current_booking").unwrap();
    assert_eq!(open["organizer"], json!("carol@example.com"));
    assert_eq!(open["attendees"], json!(["dave@example.com"]));
}

#[test]
fn a_failing_panel_is_reported_and_redrawn_later() {
    let (mut h, start) = weekly_sync(json!({}));
    h.answer_call("Panel_1", "show", Err("Panel_1 is not running".into()));
    advance_to(&mut h, start);
    assert!(last_error(&h).contains("Panel_1.show failed: Panel_1 is not running"));
    assert!(logged(&mut h, LogLevel::Warn, "Panel_1.show failed"));
    let n = calls_to(&h, "Panel_1", "show").len();

    // The panel comes back: drawn again at the next tick, error cleared.
    h.answer_call("Panel_1", "show", Ok(Value::Null));
    advance_s(&mut h, 15);
    let show = calls_to(&h, "Panel_1", "show");
    assert_eq!(show.len(), n + 1);
    assert_eq!(show.last().unwrap()[0], json!("pending"));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.error(), None);
}

#[test]
fn panel_presses_check_in_end_and_book() {
    let (mut h, start) = weekly_sync(json!({}));
    advance_to(&mut h, start + MIN);
    let press = |seq: u64, kind: &str, minutes: Value| json!({"seq": seq, "kind": kind, "at": T0, "minutes": minutes});
    h.set_remote_status("Panel_1.last_press", press(5, "check_in", Value::Null));
    assert_eq!(h.status("status"), Some(json!("busy")));

    h.set_remote_status("Panel_1.last_press", press(6, "end_meeting", Value::Null));
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    // The same press published again is not acted on twice.
    h.set_remote_status("Panel_1.last_press", press(6, "end_meeting", Value::Null));
    assert_eq!(calls_to(&h, "Calendar_1", "cancel_booking").len(), 1);

    let t = now(&h);
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n1", "Ad-hoc booking", t, 15)),
    );
    h.set_remote_status("Panel_1.last_press", press(7, "book_now", json!(15)));
    assert_eq!(
        calls_to(&h, "Calendar_1", "create_booking"),
        vec![vec![
            json!(t),
            json!(t + 15 * MIN),
            json!("Ad-hoc booking"),
            Value::Null
        ]]
    );
    assert_eq!(h.status("status"), Some(json!("busy")));

    // A press the room cannot honour is logged, not an error.
    h.set_remote_status("Panel_1.last_press", press(8, "book_now", Value::Null));
    assert!(logged(
        &mut h,
        LogLevel::Info,
        "panel press 8 (book_now) refused"
    ));
    h.set_remote_status("Panel_1.last_press", json!({"seq": "x"}));
    assert!(logged(&mut h, LogLevel::Warn, "ignored a panel press"));
    assert_eq!(h.error(), None);
}

#[test]
fn a_panel_that_restarted_is_followed_though_its_seq_repeats() {
    let mut h = room(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!([]));
    let book = |seq: u64, at: i64| json!({"seq": seq, "kind": "book_now", "at": at, "minutes": 15});
    let t = now(&h);
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n1", "Ad-hoc booking", t, 15)),
    );
    h.set_remote_status("Panel_1.last_press", book(1, t));
    assert_eq!(calls_to(&h, "Calendar_1", "create_booking").len(), 1);
    assert_eq!(h.status("status"), Some(json!("busy")));

    // That booking is over; the panel restarted, so its counter starts at 1 again.
    advance_s(&mut h, 20 * MIN);
    h.set_remote_status("Calendar_1.bookings", json!([]));
    assert_eq!(h.status("status"), Some(json!("free")));
    let t2 = now(&h);
    h.answer_call(
        "Calendar_1",
        "create_booking",
        Ok(booking("n2", "Ad-hoc booking", t2, 15)),
    );
    h.set_remote_status("Panel_1.last_press", book(1, t2));
    assert_eq!(
        calls_to(&h, "Calendar_1", "create_booking").len(),
        2,
        "a new press with a repeated seq is a new press"
    );
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("n2"));
    // The very same press published again is still not a new one.
    h.set_remote_status("Panel_1.last_press", book(1, t2));
    assert_eq!(calls_to(&h, "Calendar_1", "create_booking").len(), 2);
}

#[test]
fn the_press_seen_when_subscribing_is_not_acted_on() {
    let mut h = room(json!({}));
    h.set_remote_status(
        "Panel_1.last_press",
        json!({"seq": 3, "kind": "check_in", "at": T0, "minutes": null}),
    );
    let start = T0 + MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", start, 60)]),
    );
    advance_to(&mut h, start);
    assert_eq!(h.status("status"), Some(json!("pending")));
    // Subscribing again (refresh) reads seq 3 as the baseline: no check-in.
    assert_eq!(h.exec("refresh", json!([])), Ok(Value::Null));
    assert_eq!(h.status("status"), Some(json!("pending")));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
}

#[test]
fn without_sensor_and_panel() {
    let mut h = Harness::builder(lintel_bundled_drivers::BOOKINGS.component.to_vec())
        .settings(json!({"occupancy": null, "panel": ""}))
        .start()
        .expect("starts");
    h.set_remote_status("Occupancy_1.presence", json!(true));
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", T0, 60)]),
    );
    assert_eq!(h.status("occupied"), Some(Value::Null));
    assert_eq!(
        h.status("status"),
        Some(json!("pending")),
        "presence not followed"
    );
    assert!(h.calls().iter().all(|(m, _, _)| m != "Panel_1"));
}

// ---------------------------------------------------------------- bad input

#[test]
fn calendar_missing_shows_offline_and_recovers() {
    let mut h = room(json!({}));
    assert_eq!(h.status("status"), Some(json!("offline")));
    // Waited for quietly while the module starts (the calendar's first read is under way).
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert!(!logged(&mut h, LogLevel::Warn, "is unavailable"));
    h.advance(Duration::from_secs(29));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    // Then reported, once the evaluation after the start-up wait finds nothing.
    h.advance(Duration::from_secs(16));
    assert!(last_error(&h).contains("Calendar_1.bookings is unavailable"));
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "Calendar_1.bookings is unavailable"
    ));
    let e = h.exec("check_in", json!([])).unwrap_err();
    assert!(e.contains("no calendar data"), "{e}");
    let e = h.exec("book_now", json!([])).unwrap_err();
    assert!(e.contains("no calendar data"), "{e}");

    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("b1", "Weekly sync", T0 + 10 * MIN, 60)]),
    );
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    // The calendar module goes away again (its status becomes null).
    h.set_remote_status("Calendar_1.bookings", Value::Null);
    assert_eq!(h.status("status"), Some(json!("offline")));
    assert_eq!(h.status("next_booking"), Some(Value::Null));
    let lights = calls_to(&h, "Panel_1", "set_light");
    assert_eq!(lights.last().unwrap()[0], json!("off"));
}

#[test]
fn garbage_bookings_keep_the_last_good_list() {
    let (mut h, _) = weekly_sync(json!({}));
    h.set_remote_status("Calendar_1.bookings", json!("<html>502 Bad Gateway</html>"));
    let e = last_error(&h);
    assert!(
        e.contains("Calendar_1.`bookings` is not a JSON array (got a string)"),
        "{e}"
    );
    assert!(logged(&mut h, LogLevel::Warn, "kept the last good list"));
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b1"));
    h.set_remote_status("Calendar_1.bookings", json!({"bookings": []}));
    assert!(last_error(&h).contains("got an object"));
    assert_eq!(h.error(), None);
}

#[test]
fn bad_entries_are_skipped_with_a_log() {
    let mut h = room(json!({}));
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            {"id": "nostart", "title": "x", "end": T0 + 600},
            booking("ok", "Good", T0 + 10 * MIN, 30),
            {"id": "backwards", "title": "y", "start": T0 + 600, "end": T0},
            "not a booking",
            null,
        ]),
    );
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("ok"));
    let e = last_error(&h);
    assert!(e.contains("skipped 4 bad entries"), "{e}");
    assert!(e.contains("entry 0: missing field `start`"), "{e}");
    assert!(e.contains("entry 2 (`backwards`): ends"), "{e}");
    assert!(logged(&mut h, LogLevel::Warn, "skipped 4 bad entries"));

    // A clean list clears the error.
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("ok", "Good", T0 + 10 * MIN, 30)]),
    );
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn occupancy_garbage_is_reported_and_unknown() {
    let (mut h, _) = weekly_sync(json!({}));
    h.set_remote_status("Occupancy_1.presence", json!("yes"));
    assert_eq!(h.status("occupied"), Some(Value::Null));
    assert!(last_error(&h).contains("Occupancy_1.presence is a string"));
    assert!(logged(&mut h, LogLevel::Warn, "occupancy unknown"));
    h.set_remote_status("Occupancy_1.presence", json!(3));
    assert_eq!(h.status("occupied"), Some(json!(true)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    h.set_remote_status("Occupancy_1.presence", Value::Null);
    assert_eq!(h.status("occupied"), Some(Value::Null));
}

#[test]
fn overlapping_and_all_day_bookings() {
    let mut h = room(json!({"auto_release_minutes": 0}));
    let mut all_day = booking("day", "Offsite", T0, 24 * 60);
    all_day["all_day"] = json!(true);
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([booking("late", "Later", T0 + 30 * MIN, 30), all_day]),
    );
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("day"));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("late"));
    h.exec("check_in", json!([])).unwrap();
    let show = calls_to(&h, "Panel_1", "show");
    assert_eq!(
        show.last().unwrap(),
        &[
            json!("busy"),
            json!("Offsite · all day"),
            json!("Next: Later · 00:30–01:00")
        ]
    );
}

#[test]
fn a_huge_list_is_capped_within_the_time_budget() {
    let mut h = room(json!({}));
    // 600 half-hour bookings back to back from +10 min: only the first 500 are used.
    let list: Vec<Value> = (0..600)
        .map(|i| booking(&format!("b{i}"), "Slot", T0 + 10 * MIN + i * 30 * MIN, 30))
        .collect();
    h.set_remote_status("Calendar_1.bookings", Value::Array(list));
    assert_eq!(h.error(), None, "no trap, within the time budget");
    assert!(last_error(&h).contains("only the first 500 of 600 bookings are used"));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b0"));
    advance_to(&mut h, T0 + 10 * MIN);
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("b0"));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("b1"));
    assert_eq!(h.error(), None);
}

#[test]
fn times_out_of_range_are_skipped_and_no_timer_is_set_in_the_past() {
    let mut h = room(json!({}));
    let start = T0 + 10 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            // Would overflow `start + auto_release` (and `start * 1000` for the timer).
            {"id": "huge", "title": "x", "start": i64::MAX - 10, "end": i64::MAX},
            // Would be the current booking since 1969.
            {"id": "negative", "title": "y", "start": -3600, "end": T0 + 60 * MIN},
            // One second after 9999-12-31T23:59:59Z.
            {"id": "far", "title": "z", "start": 253_402_300_800i64, "end": 253_402_304_400i64},
            booking("ok", "Weekly sync", start, 60),
        ]),
    );
    assert_eq!(h.error(), None, "no trap");
    let e = last_error(&h);
    assert!(e.contains("skipped 3 bad entries"), "{e}");
    assert!(
        e.contains("entry 0 (`huge`): start 9223372036854775797 is out of range"),
        "{e}"
    );
    assert!(
        e.contains("entry 1 (`negative`): start -3600 is out of range"),
        "{e}"
    );
    assert!(
        e.contains("entry 2 (`far`): start 253402300800 is out of range"),
        "{e}"
    );
    assert!(logged(&mut h, LogLevel::Warn, "skipped 3 bad entries"));
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("current_booking"), Some(Value::Null));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("ok"));

    // The good booking's boundaries still fire exactly on time, and nothing else does.
    advance_to(&mut h, start - 1);
    assert_eq!(h.status("status"), Some(json!("free")));
    advance_s(&mut h, 1);
    assert_eq!(h.status("status"), Some(json!("pending")));
    advance_to(&mut h, start + 10 * MIN);
    assert_eq!(
        calls_to(&h, "Calendar_1", "cancel_booking"),
        vec![vec![
            json!("ok"),
            json!("Auto-released: no check-in within 10 minutes")
        ]]
    );
    advance_s(&mut h, 2 * 3600);
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.error(), None);

    // The latest valid time is accepted.
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([{"id": "last", "start": 253_402_297_199i64, "end": 253_402_300_799i64}]),
    );
    assert_eq!(h.status("status"), Some(json!("free")));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("last"));
    assert_eq!(h.status("free_until"), Some(json!(253_402_297_199i64)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    advance_s(&mut h, MIN);
    assert_eq!(h.error(), None);
}

// ---------------------------------------------------------------- all-day bookings

fn all_day(id: &str, title: &str, start: i64) -> Value {
    let mut b = booking(id, title, start, 24 * 60);
    b["all_day"] = json!(true);
    b
}

#[test]
fn all_day_bookings_are_busy_and_never_released() {
    // Default settings: auto-release after 10 minutes.
    let mut h = room(json!({}));
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([all_day("closed", "Room closed", T0)]),
    );
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("closed"));
    assert_eq!(h.status("free_until"), Some(Value::Null));
    assert_eq!(
        calls_to(&h, "Panel_1", "show").last().unwrap(),
        &[
            json!("busy"),
            json!("Room closed · all day"),
            json!("Free from Fri 00:00")
        ]
    );
    assert_eq!(
        calls_to(&h, "Panel_1", "set_light").last().unwrap()[0],
        json!("red")
    );

    advance_s(&mut h, 3 * 3600);
    assert!(
        calls_to(&h, "Calendar_1", "cancel_booking").is_empty(),
        "an all-day booking is never auto-released"
    );
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("released"), Some(Value::Null));

    // Nor ended (deleted) from the room; nor is the room bookable.
    let e = h.exec("end_meeting", json!([])).unwrap_err();
    assert!(
        e.contains("`Room closed` is an all-day booking: it cannot be ended from the room"),
        "{e}"
    );
    let e = h.exec("book_now", json!([])).unwrap_err();
    assert!(e.contains("the room is not free: `Room closed`"), "{e}");
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert!(calls_to(&h, "Calendar_1", "create_booking").is_empty());

    advance_to(&mut h, T0 + 24 * 3600);
    assert_eq!(h.status("status"), Some(json!("free")));
}

#[test]
fn a_timed_booking_inside_an_all_day_one_comes_first() {
    let mut h = room(json!({}));
    let standup = T0 + 60 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            all_day("day", "Offsite", T0),
            booking("su", "Stand-up", standup, 30)
        ]),
    );
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("day"));
    assert_eq!(h.status("next_booking").unwrap()["id"], json!("su"));

    // The stand-up is current from its start (not the all-day booking listed first), and
    // the all-day booking is not "next".
    advance_to(&mut h, standup);
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("su"));
    assert_eq!(h.status("status"), Some(json!("pending")));
    assert_eq!(h.status("next_booking"), Some(Value::Null));
    // Nobody came: only the stand-up is released; the room is the offsite's again.
    advance_to(&mut h, standup + 10 * MIN);
    assert_eq!(
        calls_to(&h, "Calendar_1", "cancel_booking"),
        vec![vec![
            json!("su"),
            json!("Auto-released: no check-in within 10 minutes")
        ]]
    );
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("day"));
    assert_eq!(h.status("status"), Some(json!("busy")));
}

// ---------------------------------------------------------------- the check-in target

#[test]
fn check_in_goes_to_the_meeting_whose_window_just_opened() {
    // A 00:10–01:10 and B 01:10–02:10, back to back.
    let (mut h, a) = weekly_sync(json!({}));
    let b = a + 60 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            booking("a", "Weekly sync", a, 60),
            booking("b", "Planning", b, 60)
        ]),
    );
    advance_to(&mut h, a + MIN);
    assert_eq!(h.exec("check_in", json!([])).unwrap()["id"], json!("a"));

    // 01:07: A is still running (checked in), B's window opened at 01:05.
    advance_to(&mut h, b - 3 * MIN);
    assert_eq!(h.exec("check_in", json!([])).unwrap()["id"], json!("b"));
    assert!(logged(&mut h, LogLevel::Info, "checked in to booking `b`"));
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("a"));
    assert_eq!(h.status("status"), Some(json!("busy")));

    advance_to(&mut h, b);
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("b"));
    assert_eq!(h.status("status"), Some(json!("busy")));
    assert_eq!(h.status("checked_in"), Some(json!(true)));
    advance_to(&mut h, b + 30 * MIN);
    assert!(
        calls_to(&h, "Calendar_1", "cancel_booking").is_empty(),
        "B was checked in: not released"
    );
}

#[test]
fn check_in_goes_to_the_timed_booking_not_the_all_day_one() {
    let mut h = room(json!({}));
    let standup = T0 + 60 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            all_day("day", "Offsite", T0),
            booking("su", "Stand-up", standup, 30)
        ]),
    );
    advance_to(&mut h, standup - 3 * MIN);
    assert_eq!(h.exec("check_in", json!([])).unwrap()["id"], json!("su"));
    advance_to(&mut h, standup);
    assert_eq!(h.status("current_booking").unwrap()["id"], json!("su"));
    assert_eq!(h.status("checked_in"), Some(json!(true)));
    assert_eq!(h.status("status"), Some(json!("busy")));
    advance_to(&mut h, standup + 20 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());

    // With only the all-day booking open, check-in goes to it (and changes nothing else).
    advance_to(&mut h, standup + 30 * MIN);
    assert_eq!(h.exec("check_in", json!([])).unwrap()["id"], json!("day"));
    assert_eq!(h.status("status"), Some(json!("busy")));
}

// ---------------------------------------------------------------- recurring series

#[test]
fn occurrences_sharing_an_id_are_distinct_bookings() {
    // A calendar listing every occurrence of a series under one id.
    let mut h = room(json!({}));
    let first = T0 + 10 * MIN;
    let second = T0 + 60 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            booking("series", "Daily sync", first, 30),
            booking("series", "Daily sync", second, 30)
        ]),
    );
    assert_eq!(h.status("last_error"), Some(Value::Null), "not a duplicate");
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "lists the same id for several bookings"
    ));
    assert_eq!(h.status("next_booking").unwrap()["start"], json!(first));

    advance_to(&mut h, first + MIN);
    h.exec("check_in", json!([])).unwrap();
    assert_eq!(h.status("status"), Some(json!("busy")));
    // Cancelling the id could cancel the whole series: never done from the room.
    let e = h.exec("end_meeting", json!([])).unwrap_err();
    assert!(
        e.contains("lists its id `series` for several bookings"),
        "{e}"
    );

    // The second occurrence is not checked in by the first one's check-in.
    advance_to(&mut h, second);
    assert_eq!(h.status("current_booking").unwrap()["start"], json!(second));
    assert_eq!(h.status("checked_in"), Some(json!(false)));
    assert_eq!(h.status("status"), Some(json!("pending")));
    assert_eq!(
        calls_to(&h, "Panel_1", "show").last().unwrap()[2],
        json!("Check in to start")
    );
    advance_to(&mut h, second + 20 * MIN);
    assert!(calls_to(&h, "Calendar_1", "cancel_booking").is_empty());
    assert_eq!(h.status("status"), Some(json!("pending")));
}

#[test]
fn occurrences_with_their_own_ids_are_released_one_by_one() {
    // The CalDAV driver's ids: `<uid>#<start>` per occurrence.
    let mut h = room(json!({}));
    let first = T0 + 10 * MIN;
    let second = T0 + 60 * MIN;
    h.set_remote_status(
        "Calendar_1.bookings",
        json!([
            booking("sync@x#20260101T001000Z", "Daily sync", first, 30),
            booking("sync@x#20260101T010000Z", "Daily sync", second, 30)
        ]),
    );
    advance_to(&mut h, first + MIN);
    h.exec("check_in", json!([])).unwrap();
    advance_to(&mut h, second + 10 * MIN);
    assert_eq!(
        calls_to(&h, "Calendar_1", "cancel_booking"),
        vec![vec![
            json!("sync@x#20260101T010000Z"),
            json!("Auto-released: no check-in within 10 minutes")
        ]]
    );
    assert_eq!(h.status("status"), Some(json!("free")));
}
