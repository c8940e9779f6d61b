//! Live tier: the driver in the real engine ([`LiveEngine`]), over real UDP sockets,
//! against a real BACnet/IP device: bacpypes3 (`lintel_testkit::bacnet::BacnetDevice`)
//! on a loopback port.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json, tokio};
use lintel_testkit::bacnet::BacnetDevice;

/// Fast polling of the device's room objects (plus `extra` points), with
/// ReadPropertyMultiple or one ReadProperty per point. The timeout leaves room for a
/// Python device on a loaded machine: a slow answer is not a failure here.
fn settings(extra: &[Value], read_multiple: bool) -> Value {
    let mut points = vec![
        json!({"name": "temperature", "object": "analog-input,1"}),
        json!({"name": "humidity", "object": "analog-input,2"}),
        json!({"name": "co2", "object": "analog-value,1"}),
        json!({"name": "occupancy", "object": "binary-input,1"}),
        json!({"name": "mode", "object": "multi-state-value,1"}),
    ];
    points.extend_from_slice(extra);
    json!({
        "points": points,
        "poll_every_ms": 200,
        "timeout_ms": 1000,
        "retries": 1,
        "device_instance": BacnetDevice::INSTANCE,
        "read_multiple": read_multiple
    })
}

fn error_containing(needle: &'static str) -> impl Fn(Option<&Value>) -> Option<String> {
    move |v| {
        v.and_then(Value::as_str)
            .filter(|s| s.contains(needle))
            .map(String::from)
    }
}

/// A module polling with ReadPropertyMultiple (the default).
async fn module(live: &LiveEngine, device: &BacnetDevice, extra: &[Value]) -> String {
    live.add_module(
        lintel_bundled_drivers::BACNET.component,
        Some(&device.uri()),
        settings(extra, true),
    )
    .await
}

/// A module polling with ReadProperty only.
async fn module_rp(live: &LiveEngine, device: &BacnetDevice, extra: &[Value]) -> String {
    live.add_module(
        lintel_bundled_drivers::BACNET.component,
        Some(&device.uri()),
        settings(extra, false),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bacpypes3_polls_values_and_sees_changes() {
    let mut device = BacnetDevice::start();
    let live = LiveEngine::start().await;
    let m = module(&live, &device, &[]).await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    live.wait_for(&m, "humidity", json!(45.0)).await;
    live.wait_for(&m, "co2", json!(612.0)).await;
    live.wait_for(&m, "occupancy", json!(true)).await;
    live.wait_for(&m, "mode", json!(2)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    assert!(
        live.status(&m, "last_poll")
            .is_some_and(|v| v.as_u64() > Some(0))
    );

    // The room changes on the device: the next polls see it.
    device.set("analog-input,1", "22.3");
    device.set("binary-input,1", "inactive");
    device.set("multi-state-value,1", "3");
    live.wait_for(&m, "temperature", json!(22.3)).await;
    live.wait_for(&m, "occupancy", json!(false)).await;
    live.wait_for(&m, "mode", json!(3)).await;

    // Any property of any object.
    assert_eq!(
        live.exec(&m, "read", json!(["analog-input,1", "object-name"]))
            .await,
        Ok(json!("Salle 1 – Température"))
    );
    assert_eq!(
        live.exec(&m, "read", json!(["multi-state-value,1", "state-text"]))
            .await,
        Ok(json!(["Off", "Comfort", "Eco"]))
    );
    assert_eq!(
        live.exec(&m, "read", json!(["device,1234", "object-name"]))
            .await,
        Ok(json!(BacnetDevice::NAME))
    );
    // units: degreesCelsius is 62 in BACnetEngineeringUnits.
    assert_eq!(
        live.exec(&m, "read", json!(["analog-input,1", "units"]))
            .await,
        Ok(json!(62))
    );
    assert_eq!(
        live.exec(&m, "read", json!(["analog-input,1", "status-flags"]))
            .await,
        Ok(json!([false, false, false, false]))
    );
    device.set("analog-value,1", "901.5");
    assert_eq!(
        live.exec(&m, "read", json!(["analog-value,1"])).await,
        Ok(json!(901.5))
    );
    assert_eq!(
        live.exec(&m, "poll_now", json!([])).await.map(|_| ()),
        Ok(())
    );
    live.wait_for(&m, "co2", json!(901.5)).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bacpypes3_unknown_object_and_property_are_error_pdus() {
    let device = BacnetDevice::start();
    let live = LiveEngine::start().await;
    let m = module(
        &live,
        &device,
        &[json!({"name": "missing", "object": "analog-input,9"})],
    )
    .await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    let e = live
        .wait_until(&m, "last_error", error_containing("unknown-object"))
        .await;
    assert_eq!(
        e,
        "the device refused to read analog-input,9 present-value (`missing`): unknown-object (error class object, code 31)"
    );
    assert_eq!(live.status(&m, "missing"), None);
    assert_eq!(
        live.exec(&m, "read", json!(["analog-input,1", "200"])).await,
        Err("the driver failed: the device refused to read analog-input,1 200: unknown-property (error class property, code 32)".into())
    );
    assert_eq!(live.error(&m), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bacpypes3_silent_then_answering_again() {
    let mut device = BacnetDevice::start();
    let live = LiveEngine::start().await;
    let m = module_rp(&live, &device, &[]).await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    live.wait_for(&m, "last_error", Value::Null).await;

    device.pause();
    let e = live
        .wait_until(
            &m,
            "last_error",
            error_containing("no answer within 1000 ms"),
        )
        .await;
    assert!(e.contains("after 2 attempt(s)"), "{e}");
    assert_eq!(
        live.status(&m, "temperature"),
        Some(json!(21.5)),
        "the last value is kept"
    );

    device.resume();
    live.wait_for(&m, "last_error", Value::Null).await;
    device.set("analog-input,1", "19.5");
    live.wait_for(&m, "temperature", json!(19.5)).await;
    assert_eq!(live.error(&m), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bacpypes3_stopped_then_restarted_on_the_same_port() {
    let device = BacnetDevice::start();
    let live = LiveEngine::start().await;
    let m = module(&live, &device, &[]).await;
    live.wait_for(&m, "occupancy", json!(true)).await;

    let port = device.stop();
    live.wait_until(&m, "last_error", error_containing("no answer within"))
        .await;
    // Nothing listens: the engine reports the port unreachable (ICMP) as well.
    live.wait_until(
        &m,
        "connection_error",
        error_containing("udp device unreachable"),
    )
    .await;

    let mut device = BacnetDevice::start_on(port);
    device.set("binary-input,1", "inactive");
    live.wait_for(&m, "occupancy", json!(false)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.wait_for(&m, "connection_error", Value::Null).await;
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bacpypes3_read_property_polls_and_an_unknown_object() {
    let mut device = BacnetDevice::start();
    let live = LiveEngine::start().await;
    let m = module_rp(
        &live,
        &device,
        &[json!({"name": "missing", "object": "analog-input,9"})],
    )
    .await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    live.wait_for(&m, "occupancy", json!(true)).await;
    live.wait_for(&m, "mode", json!(2)).await;
    let e = live
        .wait_until(&m, "last_error", error_containing("unknown-object"))
        .await;
    assert_eq!(
        e,
        "the device refused to read analog-input,9 present-value (`missing`): unknown-object (error class object, code 31)"
    );
    device.set("analog-input,2", "51.25");
    live.wait_for(&m, "humidity", json!(51.25)).await;
    live.shutdown().await;
}
