//! The driver in the real engine against the PJLink simulator on a loopback TCP port.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::{Value, json, tokio};
use lintel_simulators::pjlink::{PjlinkSimulator, PjlinkState, Power};
use lintel_simulators::serve_tcp;
use std::time::Duration;

/// `sim` served on a fresh loopback port: its `tcp://` uri.
async fn serve(sim: &PjlinkSimulator) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().unwrap().port();
    let sim = sim.clone();
    tokio::spawn(serve_tcp(listener, move |s| sim.clone().serve(s)));
    format!("tcp://127.0.0.1:{port}")
}

/// Warming up takes 5 s: long enough that `warming` is seen on a loaded machine (the
/// driver asks `POWR ?` right after `POWR 1` is accepted, and every 2 s while warming).
const WARMUP: Duration = Duration::from_secs(5);

fn sim() -> PjlinkSimulator {
    PjlinkSimulator::default().with_transitions(WARMUP, Duration::from_millis(300))
}

async fn module(live: &LiveEngine, uri: &str, settings: Value) -> String {
    let m = live
        .add_module(
            lintel_bundled_drivers::PJLINK.component,
            Some(uri),
            settings,
        )
        .await;
    live.wait_for(&m, "connected", json!(true)).await;
    m
}

fn contains(needle: &'static str) -> impl Fn(Option<&Value>) -> Option<String> {
    move |v| {
        v.and_then(Value::as_str)
            .filter(|s| s.contains(needle))
            .map(String::from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_controls_and_polls_a_class2_projector() {
    let sim = sim();
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = module(&live, &uri, json!({"poll_every_ms": 500})).await;
    live.wait_for(&m, "class", json!(2)).await;
    live.wait_for(&m, "power_state", json!("off")).await;
    live.wait_for(&m, "model", json!("SIM-4352")).await;
    live.wait_for(&m, "inputs", json!(["11", "31", "32", "5A"]))
        .await;
    live.wait_for(
        &m,
        "input_names",
        json!({"11": "RGB 1", "31": "HDMI 1", "32": "HDMI 2", "5A": "LAN"}),
    )
    .await;
    live.wait_for(&m, "firmware", json!("2.0.0")).await;
    live.wait_for(&m, "lamp_hours", json!(1234)).await;
    assert_eq!(live.status(&m, "last_error"), Some(Value::Null));

    // Off: the projector refuses input changes (ERR3); the call says so.
    let e = live.exec(&m, "input", json!(["32"])).await.unwrap_err();
    assert!(e.contains("ERR3"), "{e}");

    // Power on: warming, then on (seen by the poll).
    live.exec(&m, "power", json!([true])).await.unwrap();
    live.wait_for(&m, "power_state", json!("warming")).await;
    assert_eq!(live.status(&m, "power"), Some(json!(true)));
    live.wait_for(&m, "power_state", json!("on")).await;
    assert_eq!(sim.state().power, Power::On);

    live.exec(&m, "input", json!(["32"])).await.unwrap();
    assert_eq!(live.status(&m, "input"), Some(json!("32")));
    assert_eq!(sim.state().input, "32");
    live.exec(&m, "mute", json!([true])).await.unwrap();
    assert_eq!(live.status(&m, "mute"), Some(json!(true)));
    assert!(sim.state().video_mute && sim.state().audio_mute);
    live.exec(&m, "volume_up", json!([])).await.unwrap();
    live.exec(&m, "volume_up", json!([])).await.unwrap();
    live.exec(&m, "volume_down", json!([])).await.unwrap();
    assert_eq!(sim.state().volume, 51);
    live.exec(&m, "freeze", json!([true])).await.unwrap();
    assert!(sim.state().freeze);

    // Polling picks up changes made at the projector (errors and lamps every 6th poll).
    sim.update(|s| {
        s.errors = "000020".into();
        s.lamp_hours = 1300;
    });
    live.wait_for(&m, "lamp_hours", json!(1300)).await;
    live.wait_until(&m, "errors", |v| (v?["filter"] == "error").then_some(()))
        .await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_authenticates_with_the_password_secret() {
    let sim = sim();
    sim.set_password(Some("JBMIAProjectorLink"));
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = module(&live, &uri, json!({"password": "JBMIAProjectorLink"})).await;
    live.wait_for(&m, "power_state", json!("off")).await;
    live.exec(&m, "power", json!([true])).await.unwrap();
    live.wait_for(&m, "power_state", json!("on")).await;
    assert_eq!(sim.auth_failures(), 0);
    assert_eq!(live.status(&m, "last_error"), Some(Value::Null));
    let state = live.state(&m);
    assert!(
        !serde_json_text(&state).contains("JBMIAProjectorLink"),
        "the password is not in the state: {state:?}"
    );
    live.shutdown().await;
}

fn serde_json_text(state: &std::collections::BTreeMap<String, Value>) -> String {
    json!(state).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_wrong_password_is_reported_retried_slowly_and_recovers() {
    let sim = sim();
    sim.set_password(Some("right"));
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = live
        .add_module(
            lintel_bundled_drivers::PJLINK.component,
            Some(&uri),
            json!({"password": "wrong"}),
        )
        .await;
    let e = live
        .wait_until(&m, "last_error", contains("authentication failed"))
        .await;
    assert!(e.contains("PJLINK ERRA"), "{e}");
    assert_eq!(sim.auth_failures(), 1);
    assert!(live.status(&m, "power_state").is_none());
    // The engine reconnects; the driver holds the password back for 5 s instead of
    // hammering the projector. Wait until the driver has the second greeting (its calls
    // then say it is waiting to log in again), then check that nothing is tried for 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let e = live.exec(&m, "power", json!([true])).await.unwrap_err();
        if e.contains("refused the password 1 time(s)") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the driver never waited to log in again: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.connections(), 2);
    // (A negative check: a retry at once would show within this time.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.auth_failures(), 1, "no immediate retry");
    assert_eq!(sim.connections(), 2, "the connection is kept while waiting");

    // The projector's password is changed to the module's: the next try logs in.
    sim.set_password(Some("wrong"));
    live.wait_for(&m, "power_state", json!("off")).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.exec(&m, "power", json!([true])).await.unwrap();
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_silent_projector_is_reported_and_recovers() {
    let sim = sim();
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = module(
        &live,
        &uri,
        json!({"poll_every_ms": 500, "answer_timeout_ms": 300}),
    )
    .await;
    live.wait_for(&m, "power_state", json!("off")).await;

    sim.set_silent(true);
    live.wait_until(&m, "last_error", contains("no answer"))
        .await;
    // Three unanswered commands in a row: the driver reconnects; the silent projector
    // does not greet, which is reported too.
    live.wait_until(&m, "last_error", contains("no PJLINK greeting"))
        .await;

    sim.set_silent(false);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.exec(&m, "power", json!([true])).await.unwrap();
    live.wait_for(&m, "power_state", json!("on")).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_garbage_and_split_replies() {
    let sim = PjlinkSimulator::new(PjlinkState {
        class: 1,
        power: Power::On,
        ..Default::default()
    });
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = module(
        &live,
        &uri,
        json!({"poll_every_ms": 500, "answer_timeout_ms": 500}),
    )
    .await;
    live.wait_for(&m, "class", json!(1)).await;
    live.wait_for(&m, "power_state", json!("on")).await;
    // The class 1 input list (`%1INST ?`).
    live.wait_for(&m, "inputs", json!(["11", "31", "32"])).await;

    // Every answer arrives in two writes: still understood.
    sim.set_split(true);
    live.exec(&m, "input", json!(["11"])).await.unwrap();
    assert_eq!(live.status(&m, "input"), Some(json!("11")));
    let e = live.exec(&m, "volume_up", json!([])).await.unwrap_err();
    assert!(e.contains("class 2"), "{e}");

    // Junk instead of answers: reported, the call fails, nothing crashes.
    sim.set_garbage(true);
    let e = live
        .exec(&m, "input", json!(["31"]))
        .await
        .expect_err("garbage is no answer");
    assert!(e.contains("%1INPT 31"), "{e}");
    live.wait_until(&m, "last_error", contains("unparseable answer"))
        .await;
    assert!(live.error(&m).is_none(), "the driver did not crash");

    sim.set_garbage(false);
    sim.set_split(false);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.exec(&m, "input", json!(["31"])).await.unwrap();
    assert_eq!(sim.state().input, "31");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_missing_password_is_reported_and_nothing_is_sent() {
    let sim = sim();
    sim.set_password(Some("needed"));
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    let m = module(&live, &uri, json!({})).await;
    live.wait_until(&m, "last_error", contains("authentication required"))
        .await;
    let e = live.exec(&m, "power", json!([true])).await.unwrap_err();
    assert!(e.contains("password"), "{e}");
    live.settle(&m).await;
    assert!(sim.commands().is_empty(), "{:?}", sim.commands());
    assert_eq!(sim.auth_failures(), 0);
    assert_eq!(sim.connections(), 1, "the idle connection is kept");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_in_process_endpoint_as_the_demo_uses_it() {
    let sim = PjlinkSimulator::default().with_transitions(WARMUP, WARMUP);
    let live = LiveEngine::start().await;
    let s = sim.clone();
    live.register_endpoint("projector", std::sync::Arc::new(move || s.connect()));
    let m = module(&live, "sim://projector", json!({})).await;
    live.wait_for(&m, "power_state", json!("off")).await;
    live.wait_for(&m, "class", json!(2)).await;
    live.exec(&m, "power", json!([true])).await.unwrap();
    live.wait_for(&m, "power_state", json!("warming")).await;
    assert_eq!(sim.connections(), 1);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_unanswered_calls_fail_with_the_drivers_reason() {
    let sim = sim();
    let uri = serve(&sim).await;
    let live = LiveEngine::start().await;
    // No poll in flight while the projector goes silent. The defaults' budget (3 × 1.5 s
    // against the 5 s exec timeout) is checked in virtual time by the harness test
    // `with_default_timeouts_…`; here 3 × 1 s leaves a loaded machine room to spare.
    let m = module(
        &live,
        &uri,
        json!({"poll_every_ms": 3_600_000, "answer_timeout_ms": 1_000}),
    )
    .await;
    live.wait_for(&m, "firmware", json!("2.0.0")).await;
    live.wait_for(
        &m,
        "input_names",
        json!({"11": "RGB 1", "31": "HDMI 1", "32": "HDMI 2", "5A": "LAN"}),
    )
    .await;
    live.settle(&m).await;
    sim.set_silent(true);
    // The call fails with the driver's reason, not the engine's generic timeout.
    let e = live.exec(&m, "power", json!([true])).await.unwrap_err();
    assert!(
        e.contains("no answer to `%1POWR 1`") && e.contains("1000 ms"),
        "{e}"
    );
    sim.set_silent(false);
    live.shutdown().await;
}
