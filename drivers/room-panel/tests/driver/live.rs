//! Live tests: the driver in the real engine (`LiveEngine`) against `PanelSimulator`, a
//! real HTTP server on a loopback port, in real time.

use lintel_driver_harness::live::LiveEngine;
use lintel_driver_harness::tokio;
use lintel_driver_harness::{Value, json};
use lintel_simulators::room_panel::{PanelSimulator, PanelState, SeenRequest};
use std::time::{Duration, Instant};

/// Fast polls, so real-time tests stay short.
fn fast() -> Value {
    json!({"poll_every_ms": 1000, "events_every_ms": 200, "request_timeout_ms": 2000})
}

fn with(mut settings: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    settings
}

/// A simulator on a loopback port, and a module of the driver talking to it.
async fn panel_module(live: &LiveEngine, settings: Value) -> (PanelSimulator, String) {
    let sim = PanelSimulator::new();
    let addr = sim
        .serve()
        .await
        .expect("the simulator binds a loopback port");
    let uri = format!("http://{addr}");
    let m = live
        .add_module(
            lintel_bundled_drivers::ROOM_PANEL.component,
            Some(&uri),
            settings,
        )
        .await;
    (sim, m)
}

/// Wait (up to 15 s) until the simulator satisfies `accept`.
async fn sim_until(sim: &PanelSimulator, what: &str, accept: impl Fn(&PanelState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = sim.state();
        if accept(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the panel never got {what}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to 15 s) until the simulator's request log satisfies `accept`.
async fn requests_until(sim: &PanelSimulator, what: &str, accept: impl Fn(&[SeenRequest]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = sim.requests();
        if accept(&seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the panel never saw {what}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn error_containing(want: &'static str) -> impl Fn(Option<&Value>) -> Option<String> {
    move |v| match v {
        Some(Value::String(s)) if s.contains(want) => Some(s.clone()),
        _ => None,
    }
}

fn events_polls(seen: &[SeenRequest]) -> usize {
    seen.iter()
        .filter(|r| r.path.starts_with("/api/v1/panel/events"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_and_drives_the_panel() {
    let live = LiveEngine::start().await;
    let (sim, m) = panel_module(&live, fast()).await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.wait_for(&m, "model", json!("SimPanel 10")).await;
    live.wait_for(&m, "firmware", json!("1.4.2")).await;
    live.wait_for(&m, "light", json!("off")).await;
    live.wait_for(&m, "brightness", json!(80)).await;

    assert_eq!(
        live.exec(&m, "set_light", json!(["red"])).await,
        Ok(Value::Null)
    );
    assert_eq!(sim.state().light, "red");
    live.wait_for(&m, "light", json!("red")).await;

    live.exec(&m, "show", json!(["busy", "Board meeting", "until 15:00"]))
        .await
        .unwrap();
    let shown = sim.state().shown;
    assert_eq!(
        (
            shown.state.as_str(),
            shown.title.as_str(),
            shown.subtitle.as_str()
        ),
        ("busy", "Board meeting", "until 15:00")
    );
    live.exec(&m, "power", json!([false])).await.unwrap();
    assert!(!sim.state().power);
    live.exec(&m, "brightness", json!([30])).await.unwrap();
    assert_eq!(sim.state().brightness, 30);
    live.wait_for(&m, "power", json!(false)).await;
    live.wait_for(&m, "brightness", json!(30)).await;
    live.wait_for(
        &m,
        "shown",
        json!({"state": "busy", "title": "Board meeting", "subtitle": "until 15:00"}),
    )
    .await;
    assert!(
        sim.requests().iter().all(|r| r.api_key.is_none()),
        "no api_key, no header"
    );
    assert_eq!(live.status(&m, "last_error"), None);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_button_presses_become_last_press() {
    let live = LiveEngine::start().await;
    let (sim, m) = panel_module(&live, fast()).await;
    // Two events polls seen: the first (the sync) was answered.
    requests_until(&sim, "two events polls", |seen| events_polls(seen) >= 2).await;

    let seq = sim.press("check_in", None);
    let press = live
        .wait_until(&m, "last_press", |v| {
            v.filter(|p| p["seq"] == json!(seq)).cloned()
        })
        .await;
    assert_eq!(press["kind"], json!("check_in"));
    assert_eq!(press["minutes"], Value::Null);
    let at = press["at"].as_u64().expect("at is a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(at) < 60, "at {at} is the press's time");

    let seq = sim.press("book_now", Some(30));
    live.wait_until(&m, "last_press", |v| {
        v.filter(|p| p["seq"] == json!(seq) && p["kind"] == json!("book_now"))
            .map(|p| assert_eq!(p["minutes"], json!(30)))
    })
    .await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_wrong_api_key_is_reported() {
    let live = LiveEngine::start().await;
    let sim = PanelSimulator::new();
    sim.require_api_key(Some("right-key"));
    let addr = sim.serve().await.unwrap();
    let uri = format!("http://{addr}");
    let wrong = live
        .add_module(
            lintel_bundled_drivers::ROOM_PANEL.component,
            Some(&uri),
            with(fast(), json!({"api_key": "wrong-key"})),
        )
        .await;
    let e = live
        .wait_until(
            &wrong,
            "last_error",
            error_containing("refused the credentials (HTTP 401)"),
        )
        .await;
    assert!(e.contains("api_key"), "{e}");
    assert_eq!(live.status(&wrong, "model"), None);
    // The key went as the header, and is nowhere in the module's state.
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.api_key.as_deref() == Some("wrong-key"))
    );
    let state = format!("{:?}", live.state(&wrong));
    assert!(!state.contains("wrong-key"), "{state}");

    // The right key works.
    let right = live
        .add_module(
            lintel_bundled_drivers::ROOM_PANEL.component,
            Some(&uri),
            with(fast(), json!({"api_key": "right-key"})),
        )
        .await;
    live.wait_for(&right, "model", json!("SimPanel 10")).await;
    live.exec(&right, "set_light", json!(["green"]))
        .await
        .unwrap();
    assert_eq!(sim.state().light, "green");
    assert_eq!(live.status(&right, "last_error"), None);
    let e = live
        .exec(&wrong, "set_light", json!(["red"]))
        .await
        .unwrap_err();
    assert!(e.contains("HTTP 401"), "{e}");
    assert_eq!(sim.state().light, "green");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_busy_panel_is_waited_for_then_recovers() {
    let live = LiveEngine::start().await;
    let sim = PanelSimulator::new();
    sim.busy(2, 2); // the first two requests: 503, Retry-After: 2
    let addr = sim.serve().await.unwrap();
    let m = live
        .add_module(
            lintel_bundled_drivers::ROOM_PANEL.component,
            Some(&format!("http://{addr}")),
            fast(),
        )
        .await;
    live.wait_until(&m, "last_error", error_containing("waiting 2 s"))
        .await;
    live.wait_for(&m, "model", json!("SimPanel 10")).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    // Nothing was asked during the 2 s back-off (the events poll runs every 200 ms).
    let seen = sim.requests();
    let busy_at = seen[1].at;
    let next = seen[2].at;
    assert!(
        next.duration_since(busy_at) >= Duration::from_millis(1900),
        "asked again {:?} after the 503",
        next.duration_since(busy_at)
    );
    live.exec(&m, "set_light", json!(["amber"])).await.unwrap();
    assert_eq!(sim.state().light, "amber");
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_restarted_panel_gets_the_wanted_state_back() {
    let live = LiveEngine::start().await;
    let (sim, m) = panel_module(&live, fast()).await;
    requests_until(&sim, "two events polls", |seen| events_polls(seen) >= 2).await;
    live.exec(&m, "set_light", json!(["red"])).await.unwrap();
    live.exec(&m, "show", json!(["busy", "Standup", "until 10:15"]))
        .await
        .unwrap();
    sim.press("check_in", None);
    let second = sim.press("end_meeting", None);
    live.wait_until(&m, "last_press", |v| {
        v.filter(|p| p["seq"] == json!(second)).map(drop)
    })
    .await;

    sim.reboot();
    assert_eq!(sim.state().light, "off");
    sim_until(&sim, "its light and shown status back", |s| {
        s.light == "red" && s.shown.state == "busy" && s.shown.subtitle == "until 10:15"
    })
    .await;
    // Its press counter restarted too: the first press after the reboot is reported.
    let first = sim.press("book_now", Some(15));
    assert_eq!(first, 1);
    live.wait_until(&m, "last_press", |v| {
        v.filter(|p| p["seq"] == json!(1) && p["kind"] == json!("book_now"))
            .map(drop)
    })
    .await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_offline_panel_then_back() {
    let live = LiveEngine::start().await;
    let (sim, m) = panel_module(&live, fast()).await;
    live.wait_for(&m, "connected", json!(true)).await;
    live.exec(&m, "set_light", json!(["green"])).await.unwrap();

    sim.offline(true);
    live.wait_for(&m, "connected", json!(false)).await;
    live.wait_until(
        &m,
        "last_error",
        error_containing("no answer from the panel"),
    )
    .await;
    let e = live
        .exec(&m, "set_light", json!(["red"]))
        .await
        .unwrap_err();
    assert!(e.contains("applied when the panel takes it"), "{e}");

    // It comes back after a restart: light off. The driver puts red back.
    sim.reboot();
    sim.offline(false);
    live.wait_for(&m, "connected", json!(true)).await;
    sim_until(&sim, "the red light back", |s| s.light == "red").await;
    live.wait_for(&m, "light", json!("red")).await;
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_hung_panel_times_out_without_piling_up() {
    let live = LiveEngine::start().await;
    let settings =
        json!({"poll_every_ms": 1000, "events_every_ms": 200, "request_timeout_ms": 1000});
    let (sim, m) = panel_module(&live, settings).await;
    live.wait_for(&m, "model", json!("SimPanel 10")).await;

    sim.hang(true);
    let before = sim.requests().len();
    let hung_at = Instant::now();
    live.wait_until(
        &m,
        "last_error",
        error_containing("no answer within 1000 ms"),
    )
    .await;
    // A function is answered (with the reason), not stuck behind the hung polls.
    let started = Instant::now();
    let e = live.exec(&m, "power", json!([false])).await.unwrap_err();
    assert!(e.contains("no answer"), "{e}");
    // It waits for (at most) one 1 s request timeout; the bound leaves room for a loaded
    // machine without letting a stuck queue pass.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One poll of each kind at a time: about one events poll and one state poll per
    // timeout, not one per 200 ms tick. Slack of 3 for requests already on the way when
    // the simulator hung and timers firing late on a loaded machine; still well below one
    // request per tick (the failure this catches) after the first seconds.
    let during = sim.requests().len() - before;
    let elapsed = hung_at.elapsed();
    let ticks = (elapsed.as_millis() / 200) as usize;
    let timeouts = (elapsed.as_millis() / 1000) as usize + 1;
    assert!(
        during <= 2 * timeouts + 3,
        "{during} requests in {elapsed:?} ({ticks} ticks, {timeouts} timeouts)"
    );

    sim.hang(false);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.exec(&m, "power", json!([false])).await.unwrap();
    assert!(!sim.state().power);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_garbage_answers_are_reported() {
    let live = LiveEngine::start().await;
    let (sim, m) = panel_module(&live, fast()).await;
    live.wait_for(&m, "model", json!("SimPanel 10")).await;
    sim.garbage(true);
    let e = live
        .wait_until(&m, "last_error", error_containing("is not the API's JSON"))
        .await;
    assert!(e.contains("<html>"), "{e}");
    assert_eq!(live.error(&m), None, "the driver did not crash");
    sim.garbage(false);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_requests_waiting_for_a_hung_panel_are_bounded() {
    let live = std::sync::Arc::new(LiveEngine::start().await);
    let settings =
        json!({"poll_every_ms": 1000, "events_every_ms": 200, "request_timeout_ms": 3000});
    let (sim, m) = panel_module(&live, settings).await;
    live.wait_for(&m, "model", json!("SimPanel 10")).await;
    sim.hang(true);
    // 24 calls at once: at most 16 requests wait for the panel (the polls hold up to 2);
    // the rest fail at once instead of queueing without bound.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24u8 {
        let (live, m) = (live.clone(), m.clone());
        calls.spawn(async move {
            let started = Instant::now();
            let r = live.exec(&m, "brightness", json!([i])).await;
            (r, started.elapsed())
        });
    }
    let mut refused = 0;
    let mut timed_out = 0;
    while let Some(done) = calls.join_next().await {
        let (result, took) = done.unwrap();
        let e = result.expect_err("a hung panel answers nothing");
        if e.contains("16 requests are already waiting for the panel") {
            assert!(took < Duration::from_secs(2), "refused at once: {took:?}");
            refused += 1;
        } else {
            assert!(e.contains("no answer within 3000 ms"), "{e}");
            timed_out += 1;
        }
    }
    assert!(
        (8..=10).contains(&refused),
        "{refused} refused, {timed_out} timed out"
    );
    sim.hang(false);
    live.wait_for(&m, "last_error", Value::Null).await;
    live.exec(&m, "brightness", json!([55])).await.unwrap();
    assert_eq!(sim.state().brightness, 55);
}
