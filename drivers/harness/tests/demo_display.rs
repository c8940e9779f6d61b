//! The canonical harness example (mirrored in `docs/driver-guide.md`): the bundled demo
//! display against a scripted device, in virtual time.

use lintel_bundled_drivers::DEMO_DISPLAY;
use lintel_driver_harness::{Harness, Value, json};
use std::time::Duration;

/// The demo display, connected to a device that answers its four queries.
fn connected(settings: Value) -> Harness {
    let mut h = Harness::builder(DEMO_DISPLAY.component)
        .settings(settings)
        .start()
        .expect("the driver starts");
    h.expect(b"POWER?\r\n").respond(b"POWER=OFF\r\n");
    h.expect(b"INPUT?\r\n").respond(b"INPUT=HDMI1\r\n");
    h.expect(b"VOLUME?\r\n").respond(b"VOLUME=40\r\n");
    h.expect(b"MUTE?\r\n").respond(b"MUTE=OFF\r\n");
    h.connect();
    h.assert_script_done();
    h
}

#[test]
fn queries_on_connect_and_publishes_the_answers() {
    let h = connected(json!({}));
    assert_eq!(h.status("power"), Some(json!(false)));
    assert_eq!(h.status("input"), Some(json!("HDMI1")));
    assert_eq!(h.status("volume"), Some(json!(40)));
    assert_eq!(h.status("mute"), Some(json!(false)));
    assert_eq!(h.error(), None);
}

#[test]
fn power_on() {
    let mut h = connected(json!({}));
    h.expect(b"POWER ON\r\n").respond(b"POWER=ON\r\n");
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
}

#[test]
fn bad_arguments_are_refused_before_the_driver_runs() {
    let mut h = connected(json!({}));
    let e = h.exec("power", json!(["on"])).unwrap_err();
    assert!(e.contains("state"), "{e}");
    let e = h.exec("volume", json!([101])).unwrap_err();
    assert!(e.contains("101"), "{e}");
    let e = h.exec("input", json!(["VGA"])).unwrap_err();
    assert!(e.contains("VGA"), "{e}");
    let e = h.exec("dance", json!([])).unwrap_err();
    assert!(e.contains("dance"), "{e}");
    // Nothing reached the device.
    assert_eq!(h.written().len(), 4);
    h.assert_script_done();
}

#[test]
fn polls_in_virtual_time() {
    let poll = 2_000;
    let mut h = connected(json!({"poll_every_ms": poll}));
    h.advance(Duration::from_millis(poll - 1));
    assert_eq!(h.written().len(), 4, "no poll before its period");

    h.expect(b"POWER?\r\n").respond(b"POWER=ON\r\n");
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    assert_eq!(
        h.written().last().map(Vec::as_slice),
        Some(&b"POWER?\r\n"[..])
    );
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(h.now_ms(), poll);

    // Disconnected, the driver stops polling.
    h.disconnect();
    h.advance(Duration::from_millis(poll * 5));
    assert_eq!(h.written().len(), 5);
}

#[test]
fn unsolicited_updates_and_refusals() {
    let mut h = connected(json!({}));
    h.device_sends(b"VOLUME=55\r\n");
    assert_eq!(h.status("volume"), Some(json!(55)));
    h.device_sends(b"ERR busy\r\n");
    assert!(
        h.logs().iter().any(|l| l.message.contains("busy")),
        "{:?}",
        h.logs()
    );
}

#[test]
fn settings_are_checked_on_load() {
    let e = Harness::builder(DEMO_DISPLAY.component)
        .settings(json!({"poll_every_ms": 1}))
        .start()
        .err()
        .expect("refused");
    assert!(
        e.contains("poll_every_ms must be 500..=3600000, got 1"),
        "{e}"
    );
}

#[test]
fn settings_changed_while_running_go_through_on_update() {
    let mut h = connected(json!({}));
    let e = h
        .update_settings(json!({"poll_every_ms": 1}))
        .expect_err("refused");
    assert!(
        e.contains("on-update refused the settings")
            && e.contains("poll_every_ms must be 500..=3600000, got 1"),
        "{e}"
    );
    assert_eq!(h.update_settings(json!({"poll_every_ms": 2_000})), Ok(()));
    assert_eq!(h.error(), None, "the driver keeps running");
}
