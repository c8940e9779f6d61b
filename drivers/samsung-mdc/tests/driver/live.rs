//! Live tier: the driver in the real engine (`LiveEngine`) against the MDC simulator
//! (`lintel_simulators::samsung_mdc::MdcSimulator`) served on a real loopback TCP port.
//! Real sockets and real time: every wait polls with a deadline.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json, tokio};
use lintel_simulators::samsung_mdc::{MdcFaults, MdcSimulator, MdcState};
use std::time::Duration;

/// A display with id 1 on a fresh loopback port, and an engine with a module on it.
async fn setup(settings: Value) -> (LiveEngine, String, MdcSimulator) {
    let sim = MdcSimulator::new(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("bound").port();
    let served = sim.clone();
    tokio::spawn(lintel_simulators::serve_tcp(listener, move |stream| {
        served.clone().serve(stream)
    }));
    let live = LiveEngine::start().await;
    let uri = format!("tcp://127.0.0.1:{port}");
    let m = live
        .add_module(
            lintel_bundled_drivers::SAMSUNG_MDC.component,
            Some(&uri),
            settings,
        )
        .await;
    live.wait_for(&m, "connected", json!(true)).await;
    (live, m, sim)
}

fn fast() -> Value {
    json!({"poll_every_ms": 500, "reply_timeout_ms": 300, "retries": 2})
}

/// No poll during the test: every command the display sees is the test's.
fn no_poll() -> Value {
    json!({"poll_every_ms": 3_600_000, "reply_timeout_ms": 300, "retries": 2})
}

fn text_contains(needle: &'static str) -> impl Fn(Option<&Value>) -> Option<String> {
    move |v| {
        v.and_then(Value::as_str)
            .filter(|s| s.contains(needle))
            .map(String::from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connects_polls_and_round_trips() {
    let (live, m, sim) = setup(fast()).await;
    live.wait_for(&m, "model", json!("QM55R-SIM")).await;
    live.wait_for(&m, "serial", json!("SIMMDC0000001")).await;
    live.wait_for(&m, "firmware", json!("S-SIM-1000.1")).await;
    live.wait_for(&m, "power", json!(false)).await;
    live.wait_for(&m, "input", json!("HDMI1")).await;
    live.wait_for(&m, "volume", json!(30)).await;
    live.wait_for(&m, "mute", json!(false)).await;

    assert_eq!(live.exec(&m, "power", json!([true])).await, Ok(Value::Null));
    assert!(sim.state().power);
    live.wait_for(&m, "power", json!(true)).await;
    assert_eq!(
        live.exec(&m, "switch_to", json!(["HDMI2"])).await,
        Ok(Value::Null)
    );
    assert_eq!(sim.state().input, 0x23);
    live.wait_for(&m, "input", json!("HDMI2")).await;
    assert_eq!(live.exec(&m, "volume", json!([55])).await, Ok(Value::Null));
    assert_eq!(sim.state().volume, 55);
    live.wait_for(&m, "volume", json!(55)).await;
    assert_eq!(live.exec(&m, "mute", json!([true])).await, Ok(Value::Null));
    assert!(sim.state().mute);
    live.wait_for(&m, "mute", json!(true)).await;
    assert_eq!(live.exec(&m, "volume_up", json!([])).await, Ok(Value::Null));
    assert_eq!(sim.state().volume, 56);
    live.wait_for(&m, "volume", json!(56)).await;

    // Changed at the display (its remote): the poll notices.
    sim.set_state(MdcState {
        power: false,
        input: 0x25,
        volume: 12,
        mute: false,
    });
    live.wait_for(&m, "input", json!("DisplayPort")).await;
    live.wait_for(&m, "power", json!(false)).await;
    live.wait_for(&m, "volume", json!(12)).await;
    assert_eq!(
        live.exec(&m, "query_status", json!([])).await,
        Ok(json!({"power": false, "volume": 12, "mute": false, "input": "DisplayPort"}))
    );
    assert_eq!(live.status(&m, "last_error"), Some(Value::Null));
    assert!(live.error(&m).is_none());
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bad_checksums_then_recovery() {
    let (live, m, sim) = setup(no_poll()).await;
    // The last of the queries sent on connect.
    live.wait_for(&m, "firmware", json!("S-SIM-1000.1")).await;

    // Two corrupt replies: the third attempt succeeds.
    sim.set_faults(MdcFaults {
        bad_checksums: 2,
        ..Default::default()
    });
    let before = sim.commands();
    assert_eq!(live.exec(&m, "power", json!([true])).await, Ok(Value::Null));
    assert_eq!(
        sim.commands(),
        before + 3,
        "the command was sent three times"
    );
    assert!(sim.state().power);

    // A burst longer than the retries: the command fails, saying why.
    sim.set_faults(MdcFaults {
        bad_checksums: 50,
        ..Default::default()
    });
    let e = live
        .exec(&m, "volume", json!([70]))
        .await
        .expect_err("every reply is corrupt");
    assert!(
        e.contains("volume 70 failed: dropped a reply with a bad checksum"),
        "{e}"
    );
    live.wait_until(&m, "last_error", text_contains("bad checksum"))
        .await;
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));

    assert_eq!(
        live.status(&m, "volume"),
        Some(json!(30)),
        "no corrupt reply applied"
    );

    // The display recovers.
    sim.set_faults(MdcFaults::default());
    assert_eq!(live.exec(&m, "volume", json!([70])).await, Ok(Value::Null));
    live.wait_for(&m, "volume", json!(70)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_silent_display_then_recovery() {
    let (live, m, sim) = setup(fast()).await;
    live.wait_for(&m, "model", json!("QM55R-SIM")).await;

    sim.set_faults(MdcFaults {
        silent: true,
        ..Default::default()
    });
    let e = live
        .exec(&m, "power", json!([true]))
        .await
        .expect_err("no answer");
    // The engine prefixes the driver's reason with "the driver failed: ".
    assert!(
        e.ends_with("power on failed: no answer within 300 ms after 3 attempt(s)"),
        "{e}"
    );
    live.wait_until(&m, "last_error", text_contains("no answer within 300 ms"))
        .await;
    assert_eq!(live.status(&m, "connected"), Some(json!(true)));
    assert!(!sim.state().power, "the display ignored it");

    // It answers again: the next poll clears the error, commands work.
    sim.set_faults(MdcFaults::default());
    live.wait_for(&m, "last_error", Value::Null).await;
    assert_eq!(live.exec(&m, "power", json!([true])).await, Ok(Value::Null));
    live.wait_for(&m, "power", json!(true)).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_split_coalesced_and_garbled_replies() {
    let (live, m, sim) = setup(fast()).await;
    live.wait_for(&m, "model", json!("QM55R-SIM")).await;
    sim.set_faults(MdcFaults {
        garbage: b"\x00\x13junk".to_vec(),
        split: true,
        coalesce: true,
        ..Default::default()
    });
    assert_eq!(live.exec(&m, "power", json!([true])).await, Ok(Value::Null));
    assert_eq!(
        live.exec(&m, "switch_to", json!(["HDMI4"])).await,
        Ok(Value::Null)
    );
    assert_eq!(live.exec(&m, "mute", json!([true])).await, Ok(Value::Null));
    live.wait_for(&m, "input", json!("HDMI4")).await;
    live.wait_for(&m, "mute", json!(true)).await;
    live.wait_for(&m, "power", json!(true)).await;
    assert_eq!(sim.state().input, 0x33);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_nak_fails_the_command() {
    let (live, m, sim) = setup(no_poll()).await;
    live.wait_for(&m, "firmware", json!("S-SIM-1000.1")).await;
    sim.set_faults(MdcFaults {
        nak: Some(0x02),
        ..Default::default()
    });
    let before = sim.commands();
    let e = live
        .exec(&m, "mute", json!([true]))
        .await
        .expect_err("refused");
    let why = "the display refused mute on (NAK, error code 0x02)";
    assert!(e.ends_with(why), "{e}");
    assert_eq!(sim.commands(), before + 1, "a NAK is not resent");
    live.wait_for(&m, "last_error", json!(why)).await;
    sim.set_faults(MdcFaults::default());
    assert_eq!(live.exec(&m, "mute", json!([true])).await, Ok(Value::Null));
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_secured_display_is_reported_then_recovers() {
    let sim = MdcSimulator::new(1);
    sim.set_faults(MdcFaults {
        secured: true,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("bound").port();
    let served = sim.clone();
    tokio::spawn(lintel_simulators::serve_tcp(listener, move |stream| {
        served.clone().serve(stream)
    }));
    let live = LiveEngine::start().await;
    let uri = format!("tcp://127.0.0.1:{port}");
    let m = live
        .add_module(
            lintel_bundled_drivers::SAMSUNG_MDC.component,
            Some(&uri),
            fast(),
        )
        .await;
    live.wait_until(&m, "last_error", text_contains("secured protocol"))
        .await;
    assert!(live.status(&m, "power").is_none(), "nothing was read");

    // The secured protocol is turned off: the engine's reconnect finds a plain display.
    sim.set_faults(MdcFaults::default());
    live.wait_until_within(Duration::from_secs(40), &m, "power", |v| v.cloned())
        .await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}
