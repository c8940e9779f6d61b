//! The MQTT transport against a real broker: mosquitto, started on a loopback port by the
//! test (with a password file) and stopped with it.

use super::*;
use lintel_bundled_drivers::MQTT_SENSOR;

use lintel_testkit::{MQTT_PASSWORD as PASSWORD, MQTT_USER as USER, Mosquitto};

/// A Zigbee2MQTT-style sensor through a real broker: readings become statuses, bad
/// payloads are skipped, over-long ones are reported, `connected` follows the broker
/// through an outage and subscriptions come back after it; wrong credentials are a clear
/// error that does not show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sensors_follow_a_real_broker_through_outages() {
    let f = demo_fixture().await;
    let broker = Mosquitto::start(None);
    let m = add_module(
        &f.engine,
        &f.tenant,
        &f.system,
        MQTT_SENSOR.component,
        Some(&broker.uri()),
        json!({"device": "lobby", "mqtt": {"username": USER, "password": PASSWORD}}),
    )
    .await;
    let wrong = add_module(
        &f.engine,
        &f.tenant,
        &f.system,
        MQTT_SENSOR.component,
        Some(&broker.uri()),
        json!({"device": "lobby", "mqtt": {"username": USER, "password": "not-the-password"}}),
    )
    .await;
    f.engine.start_all().await.unwrap();
    wait_for(&f.engine, &f.tenant, &m.id, "connected", json!(true)).await;

    broker
        .publish(
            "zigbee2mqtt/lobby",
            br#"{"temperature": 21.5, "humidity": 40, "occupancy": true}"#,
            true,
        )
        .await;
    wait_for(&f.engine, &f.tenant, &m.id, "temperature", json!(21.5)).await;
    wait_for(&f.engine, &f.tenant, &m.id, "occupancy", json!(true)).await;
    broker
        .publish(
            "zigbee2mqtt/lobby/availability",
            br#"{"state": "online"}"#,
            true,
        )
        .await;
    wait_for(&f.engine, &f.tenant, &m.id, "available", json!(true)).await;
    // Another device's topic is not followed.
    broker
        .publish("zigbee2mqtt/kitchen", br#"{"kitchen_only": 30}"#, true)
        .await;

    // Garbage is skipped; the next reading still applies.
    broker
        .publish("zigbee2mqtt/lobby", b"not json {", true)
        .await;
    broker
        .publish("zigbee2mqtt/lobby", br#"{"temperature": 22}"#, true)
        .await;
    wait_for(&f.engine, &f.tenant, &m.id, "temperature", json!(22)).await;
    // Over the frame limit: dropped and reported; the session goes on.
    let mut big = br#"{"temperature": 99, "pad": ""#.to_vec();
    big.resize(transport::MAX_FRAME_BYTES + 100, b'x');
    big.extend_from_slice(br#""}"#);
    broker.publish("zigbee2mqtt/lobby", &big, true).await;
    let why = wait_for_text(&f.engine, &f.tenant, &m.id, CONNECTION_ERROR_KEY, "dropped").await;
    assert!(why.contains("zigbee2mqtt/lobby"), "{why}");
    broker
        .publish("zigbee2mqtt/lobby", br#"{"temperature": 23}"#, true)
        .await;
    wait_for(&f.engine, &f.tenant, &m.id, "temperature", json!(23)).await;
    let state = f.engine.state(&f.tenant, &m.id).unwrap();
    assert!(!state.contains_key("pad"), "{state:?}");
    assert!(!state.contains_key("kitchen_only"), "{state:?}");
    assert_eq!(state["humidity"], json!(40));

    // Wrong credentials: refused, said plainly, password not shown.
    let why = wait_for_text(
        &f.engine,
        &f.tenant,
        &wrong.id,
        CONNECTION_ERROR_KEY,
        "refused: not authorized (check the user name and password",
    )
    .await;
    assert!(!why.contains("not-the-password"), "{why}");
    assert_eq!(
        f.engine
            .state_key(&f.tenant, &wrong.id, "connected")
            .unwrap(),
        Some(json!(false))
    );

    // The broker goes away: the module says so, and keeps its last readings.
    let (dir, port) = broker.stop();
    wait_for(&f.engine, &f.tenant, &m.id, "connected", json!(false)).await;
    wait_for_text(
        &f.engine,
        &f.tenant,
        &m.id,
        CONNECTION_ERROR_KEY,
        "MQTT broker",
    )
    .await;
    assert_eq!(
        f.engine.state_key(&f.tenant, &m.id, "temperature").unwrap(),
        Some(json!(23))
    );
    // Back (a new broker with no retained messages): the module reconnects with backoff,
    // subscribes again, and new readings arrive.
    let broker = Mosquitto::start_in(dir, port);
    wait_for(&f.engine, &f.tenant, &m.id, "connected", json!(true)).await;
    wait_for(
        &f.engine,
        &f.tenant,
        &m.id,
        CONNECTION_ERROR_KEY,
        Value::Null,
    )
    .await;
    // Until the resubscription is in place, a reading may go unseen: repeat it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        broker
            .publish("zigbee2mqtt/lobby", br#"{"temperature": 24.5}"#, true)
            .await;
        if f.engine.state_key(&f.tenant, &m.id, "temperature").unwrap() == Some(json!(24.5)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reading after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.engine.shutdown().await;
}
