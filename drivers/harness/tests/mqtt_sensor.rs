//! The bundled MQTT sensor driver in the harness: messages are delivered as a broker
//! would (only on topics its filters match).

use lintel_bundled_drivers::MQTT_SENSOR;
use lintel_driver_harness::{Harness, Value, json};

fn sensor(settings: Value) -> Harness {
    let mut h = Harness::builder(MQTT_SENSOR.component)
        .settings(settings)
        .start()
        .expect("the driver starts");
    h.connect();
    h
}

#[test]
fn readings_and_availability_become_statuses() {
    let mut h = sensor(json!({"device": "meeting room/co2"}));
    assert_eq!(
        h.mqtt_subscriptions(),
        [
            "zigbee2mqtt/meeting room/co2",
            "zigbee2mqtt/meeting room/co2/availability"
        ]
    );
    assert!(h.mqtt_message(
        "zigbee2mqtt/meeting room/co2",
        br#"{"co2": 812, "temperature": 22.4, "occupancy": false}"#
    ));
    assert_eq!(h.status("co2"), Some(json!(812)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
    assert!(h.mqtt_message("zigbee2mqtt/meeting room/co2/availability", b"offline"));
    assert_eq!(h.status("available"), Some(json!(false)));
    // Another device's topic never reaches the driver.
    assert!(!h.mqtt_message("zigbee2mqtt/lobby", br#"{"co2": 1}"#));
    assert_eq!(h.status("co2"), Some(json!(812)));
    assert_eq!(h.error(), None);
}

#[test]
fn bad_payloads_are_skipped_and_keys_can_be_chosen() {
    let mut h = sensor(json!({"base_topic": "z2m", "device": "desk", "keys": ["temperature"]}));
    h.mqtt_message("z2m/desk", b"not json");
    h.mqtt_message("z2m/desk", b"[1, 2]");
    h.mqtt_message(
        "z2m/desk",
        br#"{"temperature": 19, "linkquality": 80, "connected": 1}"#,
    );
    assert_eq!(h.status("temperature"), Some(json!(19)));
    assert_eq!(h.status("linkquality"), None);
    let logs: Vec<String> = h.logs().iter().map(|l| l.message.clone()).collect();
    assert!(
        logs.iter().any(|l| l.contains("not JSON"))
            && logs.iter().any(|l| l.contains("not a JSON object")),
        "{logs:?}"
    );
    assert_eq!(h.error(), None);
}

#[test]
fn settings_with_wildcards_or_no_device_are_refused() {
    for (settings, why) in [
        (json!({}), "setting `device` must be set"),
        (json!({"device": "#"}), "wildcards"),
        (json!({"device": "a", "base_topic": "z/+"}), "wildcards"),
    ] {
        let e = Harness::builder(MQTT_SENSOR.component)
            .settings(settings.clone())
            .start()
            .err()
            .unwrap();
        assert!(e.contains(why), "{settings}: {e}");
    }
}
