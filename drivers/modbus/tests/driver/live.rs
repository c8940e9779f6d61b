//! Live tier: the driver in the real engine ([`LiveEngine`]), over real TCP sockets,
//! against a real pymodbus server (`lintel_testkit::modbus::Pymodbus`) and the
//! in-process simulator (`lintel_simulators::modbus::ModbusSimulator`).

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json, tokio};
use lintel_simulators::modbus::ModbusSimulator;
use lintel_testkit::modbus::{Pymodbus, Table};
use std::sync::Arc;

/// Fast polling, with `points` (or the default room sensor). The timeout leaves room for
/// a Python server on a loaded CI machine: a slow answer is not a failure here.
fn settings(points: Option<Value>) -> Value {
    let mut s = json!({"poll_every_ms": 200, "timeout_ms": 1000, "retries": 2});
    if let Some(points) = points {
        s["points"] = points;
    }
    s
}

/// A pymodbus server holding a room at 21.5 °C, 45 %, 612 ppm, occupied.
fn room_server() -> Pymodbus {
    let mut server = Pymodbus::start();
    server.set(Table::Input, 0, 215);
    server.set(Table::Input, 1, 450);
    server.set(Table::Input, 2, 612);
    server.set(Table::Discrete, 0, 1);
    server
}

fn error_containing(needle: &'static str) -> impl Fn(Option<&Value>) -> Option<String> {
    move |v| {
        v.and_then(Value::as_str)
            .filter(|s| s.contains(needle))
            .map(String::from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pymodbus_polls_values_and_sees_changes() {
    let mut server = room_server();
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&server.uri()),
            settings(None),
        )
        .await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    live.wait_for(&m, "humidity", json!(45.0)).await;
    live.wait_for(&m, "co2", json!(612)).await;
    live.wait_for(&m, "occupancy", json!(true)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    assert!(
        live.status(&m, "last_read")
            .is_some_and(|v| v.as_u64() > Some(0))
    );

    // The room changes: the next polls see it (-2.5 °C is 0xFFE7 as an i16).
    server.set(Table::Input, 0, (-25i16) as u16);
    server.set(Table::Discrete, 0, 0);
    live.wait_for(&m, "temperature", json!(-2.5)).await;
    live.wait_for(&m, "occupancy", json!(false)).await;
    // An explicit read answers the current value.
    server.set(Table::Input, 2, 900);
    assert_eq!(live.exec(&m, "read", json!(["co2"])).await, Ok(json!(900)));
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pymodbus_writes_registers_and_coils() {
    let mut server = Pymodbus::start();
    let live = LiveEngine::start().await;
    let points = json!([
        {"key": "setpoint", "table": "holding", "address": 10, "type": "i16", "scale": 0.1, "unit": "°C", "writable": true},
        {"key": "limit", "table": "holding", "address": 20, "type": "f32", "word_order": "little", "writable": true},
        {"key": "relay", "table": "coil", "address": 5, "writable": true}
    ]);
    let m = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&server.uri()),
            settings(Some(points)),
        )
        .await;
    live.wait_for(&m, "setpoint", json!(0.0)).await;

    assert_eq!(
        live.exec(&m, "write", json!(["setpoint", 22.5])).await,
        Ok(json!(22.5))
    );
    assert_eq!(
        server.get(Table::Holding, 10),
        225,
        "read back from the server"
    );
    assert_eq!(
        live.exec(&m, "write", json!(["setpoint", -1.5])).await,
        Ok(json!(-1.5))
    );
    assert_eq!(server.get(Table::Holding, 10), (-15i16) as u16);

    assert_eq!(
        live.exec(&m, "write", json!(["limit", 21.5])).await,
        Ok(json!(21.5))
    );
    // 21.5f32 is 0x41AC0000; little word order puts the low word first.
    assert_eq!(
        (
            server.get(Table::Holding, 20),
            server.get(Table::Holding, 21)
        ),
        (0x0000, 0x41AC)
    );
    assert_eq!(
        live.exec(&m, "write", json!(["relay", true])).await,
        Ok(json!(true))
    );
    assert_eq!(server.get(Table::Coil, 5), 1);

    // A change made on the server side is read back.
    server.set(Table::Holding, 10, 199);
    assert_eq!(
        live.exec(&m, "read", json!(["setpoint"])).await,
        Ok(json!(19.9))
    );
    live.wait_for(&m, "limit", json!(21.5)).await;
    live.wait_for(&m, "relay", json!(true)).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pymodbus_illegal_address_is_an_exception() {
    let server = room_server();
    let live = LiveEngine::start().await;
    // The server holds 200 input registers: 500 is an illegal data address.
    let points = json!([
        {"key": "temperature", "table": "input", "address": 0, "type": "i16", "scale": 0.1},
        {"key": "missing", "table": "input", "address": 500}
    ]);
    let m = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&server.uri()),
            settings(Some(points)),
        )
        .await;
    live.wait_for(&m, "temperature", json!(21.5)).await;
    let e = live
        .wait_until(
            &m,
            "last_error",
            error_containing("exception 2 (illegal data address)"),
        )
        .await;
    assert!(
        e.contains("read input registers 500..=500 (missing)"),
        "{e}"
    );
    let e = live.exec(&m, "read", json!(["missing"])).await.unwrap_err();
    assert!(e.contains("exception 2 (illegal data address)"), "{e}");
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));
    assert_eq!(live.status(&m, "missing"), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pymodbus_stopped_then_restarted_on_the_same_port() {
    let server = room_server();
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&server.uri()),
            settings(None),
        )
        .await;
    live.wait_for(&m, "temperature", json!(21.5)).await;

    let port = server.stop();
    live.wait_for(&m, "connected", json!(false)).await;
    live.wait_until(&m, "connection_error", |v| {
        v.and_then(Value::as_str).map(String::from)
    })
    .await;

    let mut server = Pymodbus::start_on(port);
    server.set(Table::Input, 0, 230);
    live.wait_for(&m, "connected", json!(true)).await;
    live.wait_for(&m, "temperature", json!(23.0)).await;
    live.wait_for(&m, "occupancy", json!(false)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    assert_eq!(live.error(&m), None, "the driver never crashed");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pymodbus_silent_then_answering_again() {
    let mut server = room_server();
    let live = LiveEngine::start().await;
    // A short timeout: the test is about the timeouts.
    let mut short = settings(None);
    short["timeout_ms"] = json!(300);
    short["retries"] = json!(1);
    let m = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&server.uri()),
            short,
        )
        .await;
    live.wait_for(&m, "temperature", json!(21.5)).await;

    // Frozen: the connection stays up, nothing is answered.
    server.pause();
    let e = live
        .wait_until(
            &m,
            "last_error",
            error_containing("no answer within 300 ms"),
        )
        .await;
    assert!(e.contains("after 2 attempt(s)"), "{e}");
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));

    // Thawed: it answers the backlog (stale transaction ids) and the next polls.
    server.resume();
    live.wait_for(&m, "last_error", Value::Null).await;
    server.set(Table::Input, 0, 199);
    live.wait_for(&m, "temperature", json!(19.9)).await;
    assert_eq!(live.error(&m), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_simulator_over_tcp_and_in_process() {
    let sim = ModbusSimulator::new(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let served = sim.clone();
    tokio::spawn(lintel_simulators::serve_tcp(listener, move |stream| {
        served.clone().serve(stream)
    }));
    let live = LiveEngine::start().await;
    let tcp = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some(&format!("tcp://127.0.0.1:{port}")),
            settings(None),
        )
        .await;
    let in_process = sim.clone();
    live.register_endpoint("modbus-room", Arc::new(move || in_process.connect()));
    let piped = live
        .add_module(
            lintel_bundled_drivers::MODBUS.component,
            Some("sim://modbus-room"),
            settings(None),
        )
        .await;
    for m in [&tcp, &piped] {
        live.wait_for(m, "temperature", json!(21.5)).await;
        live.wait_for(m, "humidity", json!(45.0)).await;
        live.wait_for(m, "co2", json!(600)).await;
        live.wait_for(m, "occupancy", json!(false)).await;
    }
    sim.update(|t| {
        t.discrete[0] = true;
        t.input[2] = 850;
    });
    for m in [&tcp, &piped] {
        live.wait_for(m, "occupancy", json!(true)).await;
        live.wait_for(m, "co2", json!(850)).await;
        live.wait_for(m, "last_error", Value::Null).await;
    }
    live.shutdown().await;
}
