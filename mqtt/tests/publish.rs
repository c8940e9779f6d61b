//! Integration tier: the MQTT publisher against a real mosquitto started by each test on
//! a loopback port.

mod support;

use lintel_model::{AuditAction, CommandRule, Module};
use lintel_mqtt::MqttConfig;
use lintel_store::{Actor, StoreExt};
use lintel_testkit::Mosquitto;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Fixture, eventually, until, value};

/// Values arrive on PlaceOS's topics, retained, in order per key; metadata maps ids to
/// names; the birth message is retained; another tenant's state never reaches this
/// tenant's broker; a renamed module's old topics are cleared and its new ones filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_reaches_the_broker_on_placeos_topics_in_order() {
    let f = Fixture::new().await;
    let m = Mosquitto::start(None);
    let broker = f.add_broker(&m, |_| {}).await;
    let mut all = m.subscribe("placeos/#").await;
    let publisher = f.publisher(MqttConfig::default());

    let status = format!("placeos/status/lintel-{}", broker.id);
    until(&mut all, 10, |msg| {
        msg.topic == status && value(msg) == Some(json!("online"))
    })
    .await;

    // 500 changes of one key, and one value from the other tenant in between.
    let w = f.writer();
    let other = f.engine.status_bus().module(&f.other_quiet);
    for i in 0..500 {
        w.set("count", json!(i));
        if i == 250 {
            other.set("count", json!("secret of tenant B"));
        }
    }
    let count = f.topic(2, "count");
    let seen = until(&mut all, 10, |msg| {
        msg.topic == count && value(msg) == Some(json!(499))
    })
    .await;
    let values: Vec<i64> = seen
        .iter()
        .filter(|m| m.topic == count)
        .map(|m| value(m).unwrap().as_i64().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "values out of order: {values:?}"
    );
    assert!(
        seen.iter()
            .all(|m| !String::from_utf8_lossy(&m.payload).contains("tenant B")),
        "tenant B's state reached tenant A's broker"
    );

    // A function's effect on a running module.
    f.engine
        .exec(&f.tenant, &f.live, "remember", vec![json!("hi")])
        .await
        .unwrap();
    let remembered = f.topic(1, "remembered");
    until(&mut all, 10, |msg| {
        msg.topic == remembered && value(msg) == Some(json!("hi"))
    })
    .await;

    // A late subscriber gets the retained state, birth and metadata.
    let mut late = m.subscribe("placeos/#").await;
    let mut got = std::collections::HashMap::new();
    while let Some(msg) = late.next(Duration::from_secs(1)).await {
        assert!(msg.retain, "{} not retained", msg.topic);
        got.insert(msg.topic.clone(), value(&msg));
    }
    assert_eq!(got[&count], Some(json!(499)));
    assert_eq!(got[&status], Some(json!("online")));
    let meta = |id: &str| got[&format!("placeos/org/metadata/{id}")].clone().unwrap();
    assert_eq!(meta(&f.system)["name"], json!("Alpha room"));
    assert_eq!(meta(&f.building)["name"], json!("HQ"));
    assert_eq!(meta(&f.org)["tags"], json!(["org"]));
    assert_eq!(meta(&f.driver)["module_name"], json!("Misbehave"));
    assert!(
        !got.keys().any(|t| t.contains(&f.other_system)),
        "tenant B's topics: {:?}",
        got.keys()
    );

    // Renamed: the old topic is cleared (empty retained payload), the new one filled.
    let mut module: Module = f.store.require(&f.tenant, &f.quiet).await.unwrap();
    module.custom_name = Some("Counter".into());
    f.store.update(&Actor::system(), module).await.unwrap();
    let renamed = count.replace("/Misbehave/2/", "/Counter/1/");
    let seen = until(&mut all, 10, |msg| {
        msg.topic == renamed && value(msg) == Some(json!(499))
    })
    .await;
    assert!(
        seen.iter()
            .any(|msg| msg.topic == count && msg.payload.is_empty()),
        "the old topic was not cleared"
    );
    publisher.shutdown().await;
    // Shut down cleanly: `offline` is retained in place of the birth message.
    let mut after = m.subscribe(&status).await;
    let msg = after.next(Duration::from_secs(5)).await.expect("status");
    assert_eq!(value(&msg), Some(json!("offline")));
}

/// The broker is stopped for 30 s while state changes, then started again with nothing
/// retained: the final values on the broker are right (more keys than the queue holds),
/// the queue stayed within its bound meanwhile, the outage showed in the broker's state,
/// and the engine answered as usual throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_no_final_value_and_memory_stays_bounded() {
    let f = Fixture::new().await;
    let m = Mosquitto::start(None);
    let broker = f.add_broker(&m, |b| b.qos = 1).await;
    let cfg = MqttConfig {
        buffer_topics: 50,
        buffer_bytes: 64 * 1024,
        ..MqttConfig::default()
    };
    let publisher = f.publisher(cfg.clone());
    eventually(10, "connected", || {
        publisher
            .broker_state(&f.tenant, &broker.id)
            .is_some_and(|s| s.connected)
    })
    .await;
    let w = f.writer();
    w.set("k0", json!("before"));

    let (dir, port) = m.stop();
    eventually(15, "the outage is seen", || publisher.disconnected() == 1).await;
    let state = publisher.broker_state(&f.tenant, &broker.id).unwrap();
    assert!(!state.connected);
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{state:?}"
    );

    // 30 s of changes: 200 keys (four times the queue), each changed over and over.
    let started = tokio::time::Instant::now();
    let mut round = 0u64;
    let (mut peak_topics, mut peak_bytes) = (0, 0);
    while started.elapsed() < Duration::from_secs(30) {
        for k in 0..200 {
            w.set(
                &format!("k{k}"),
                json!(format!("r{round}-{}", "x".repeat(50))),
            );
        }
        let (topics, bytes) = publisher.pending();
        peak_topics = peak_topics.max(topics);
        peak_bytes = peak_bytes.max(bytes);
        // The engine is not held up by the missing broker.
        let t = std::time::Instant::now();
        f.engine
            .exec(&f.tenant, &f.live, "ping", vec![])
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "exec took {:?}",
            t.elapsed()
        );
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        peak_topics <= cfg.buffer_topics,
        "{peak_topics} topics queued"
    );
    assert!(peak_bytes <= cfg.buffer_bytes, "{peak_bytes} bytes queued");
    assert!(
        publisher
            .broker_state(&f.tenant, &broker.id)
            .unwrap()
            .dropped
            > 0
    );
    let last = round - 1;

    let m = Mosquitto::start_in(dir, port);
    // The next attempt comes within the backoff's ceiling (30 s, +15 %).
    eventually(45, "reconnected", || publisher.disconnected() == 0).await;
    // Every key's final value is on the broker, retained.
    let mut sub = m.subscribe(&f.topic(2, "+")).await;
    let mut finals = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while finals.len() < 200
        || finals
            .values()
            .any(|v| v != &json!(format!("r{last}-{}", "x".repeat(50))))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(msg) = sub.next(left).await else {
            panic!("only {} keys arrived with their final value", finals.len());
        };
        let key = msg.topic.rsplit('/').next().unwrap().to_string();
        finals.insert(key, value(&msg).unwrap());
    }
    let state = publisher.broker_state(&f.tenant, &broker.id).unwrap();
    assert!(state.sessions >= 2, "{state:?}");
    assert_eq!(state.error, None);
    publisher.shutdown().await;
}

/// Wrong credentials: a clear error (without the password) and a disconnected broker;
/// nothing else is held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error() {
    let f = Fixture::new().await;
    let m = Mosquitto::start(None);
    let id = lintel_model::new_id(lintel_model::IdKind::Broker);
    let wrong = f
        .keyring
        .seal_broker_password(&f.tenant, &id, "not-the-password")
        .unwrap();
    let broker = f
        .add_broker(&m, |b| {
            b.id = id.clone();
            b.password = Some(wrong);
        })
        .await;
    let publisher = f.publisher(MqttConfig::default());
    eventually(10, "the refusal is reported", || {
        publisher
            .broker_state(&f.tenant, &broker.id)
            .and_then(|s| s.error)
            .is_some()
    })
    .await;
    let state = publisher.broker_state(&f.tenant, &broker.id).unwrap();
    let error = state.error.unwrap();
    assert!(error.contains("refused: not authorized"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    assert!(!state.connected);
    assert_eq!(publisher.disconnected(), 1);
    // Another tenant cannot see it.
    assert!(
        publisher
            .broker_state(&f.other_tenant, &broker.id)
            .is_none()
    );

    // A password sealed for another record does not open: said, not started.
    let mut moved = f
        .store
        .require::<lintel_model::Broker>(&f.tenant, &broker.id)
        .await
        .unwrap();
    moved.password = Some(
        f.keyring
            .seal_broker_password(&f.tenant, "broker-elsewhere", "x")
            .unwrap(),
    );
    f.store.update(&Actor::system(), moved).await.unwrap();
    eventually(10, "the sealed password is refused", || {
        publisher
            .broker_state(&f.tenant, &broker.id)
            .and_then(|s| s.error)
            .is_some_and(|e| e.contains("cannot open the broker's password"))
    })
    .await;
    publisher.shutdown().await;
}

/// Commands: allowed ones run and answer; everything else is refused with a reason,
/// runs nothing, and the audit trail has each one that named a system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_only_when_allowed_and_are_audited() {
    let f = Fixture::new().await;
    let m = Mosquitto::start(None);
    let broker = f
        .add_broker(&m, |b| {
            b.commands.enabled = true;
            b.commands.allow = vec![
                CommandRule {
                    system: f.system.clone(),
                    module: "Misbehave_1".into(),
                    function: "remember".into(),
                },
                // Anything on any system: still only this tenant's.
                CommandRule {
                    system: "*".into(),
                    module: "*".into(),
                    function: "ping".into(),
                },
            ];
        })
        .await;
    let mut replies = m.subscribe("placeos/reply/#").await;
    let publisher = f.publisher(MqttConfig::default());
    eventually(10, "connected", || {
        publisher.disconnected() == 0 && publisher.brokers() == 1
    })
    .await;
    // The command subscription is made right after the session starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let topic = |sys: &str, module: &str, index: &str, function: &str| {
        format!("placeos/command/{sys}/{module}/{index}/{function}")
    };
    let ask = |t: String, payload: Value| {
        let m = &m;
        async move { m.publish(&t, payload.to_string().as_bytes(), false).await }
    };
    let mut reply = async |expect_topic: String| -> Value {
        let msg = until(&mut replies, 10, |msg| msg.topic == expect_topic).await;
        let msg = msg.last().unwrap();
        assert!(!msg.retain);
        serde_json::from_slice(&msg.payload).unwrap()
    };

    // Allowed: runs, answers with the id, the status changes.
    ask(
        topic(&f.system, "Misbehave", "1", "remember"),
        json!({"id": "c1", "args": ["from mqtt"]}),
    )
    .await;
    let r =
        reply(topic(&f.system, "Misbehave", "1", "remember").replace("/command/", "/reply/")).await;
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (json!("c1"), json!(true)),
        "{r}"
    );
    assert_eq!(
        f.engine
            .state_key(&f.tenant, &f.live, "remembered")
            .unwrap(),
        Some(json!("from mqtt"))
    );

    // Not allowed (function): refused, nothing runs.
    ask(
        topic(&f.system, "Misbehave", "1", "panic"),
        json!({"id": 2}),
    )
    .await;
    let r =
        reply(topic(&f.system, "Misbehave", "1", "panic").replace("/command/", "/reply/")).await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone(), r["id"].clone()),
        (json!(false), json!("not_allowed"), json!(2)),
        "{r}"
    );
    assert!(f.engine.module_error(&f.tenant, &f.live).unwrap().is_none());

    // Bad arguments: the engine's schema check names them.
    ask(
        topic(&f.system, "Misbehave", "1", "remember"),
        json!({"args": [5]}),
    )
    .await;
    let r =
        reply(topic(&f.system, "Misbehave", "1", "remember").replace("/command/", "/reply/")).await;
    assert_eq!(r["code"], json!("bad_arguments"), "{r}");

    // Another tenant's system, even under a `*` rule: not found.
    ask(topic(&f.other_system, "Misbehave", "1", "ping"), json!({})).await;
    let r = reply(topic(&f.other_system, "Misbehave", "1", "ping").replace("/command/", "/reply/"))
        .await;
    assert_eq!(r["code"], json!("not_found"), "{r}");

    // Malformed: topic, payload, unknown field, oversized.
    ask(topic(&f.system, "Misbehave", "x", "ping"), json!({})).await;
    let r = reply(topic(&f.system, "Misbehave", "x", "ping").replace("/command/", "/reply/")).await;
    assert_eq!(r["code"], json!("bad_topic"), "{r}");
    let t = topic(&f.system, "Misbehave", "1", "ping");
    let rt = t.replace("/command/", "/reply/");
    m.publish(&t, b"not json", false).await;
    assert_eq!(reply(rt.clone()).await["code"], json!("bad_payload"));
    ask(t.clone(), json!({"args": [], "sudo": true})).await;
    let r = reply(rt.clone()).await;
    assert!(r["error"].as_str().unwrap().contains("sudo"), "{r}");
    m.publish(&t, &vec![b' '; 70 * 1024], false).await;
    assert_eq!(reply(rt.clone()).await["code"], json!("bad_payload"));
    // Still serving.
    ask(t, json!({"id": "last"})).await;
    let r = reply(rt).await;
    assert_eq!(
        (r["ok"].clone(), r["value"].clone()),
        (json!(true), json!("pong")),
        "{r}"
    );

    // The audit trail: the run, the refusals that named a system; the broker as actor.
    let log = f
        .store
        .audit_log(&f.tenant, None, None, 1000)
        .await
        .unwrap();
    let executed: Vec<_> = log
        .items
        .iter()
        .filter(|e| e.action == AuditAction::Executed)
        .collect();
    assert!(
        executed.iter().all(|e| e.actor == broker.id),
        "{executed:?}"
    );
    let outcomes: Vec<(String, String)> = executed
        .iter()
        .map(|e| {
            (
                e.diff["function"].as_str().unwrap().to_string(),
                e.diff["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("remember", "ok"),
        ("panic", "refused"),
        ("remember", "error"),
        ("ping", "ok"),
    ] {
        assert!(
            outcomes.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not in {outcomes:?}"
        );
    }
    let panic_entry = executed
        .iter()
        .find(|e| e.diff["function"] == "panic")
        .unwrap();
    assert_eq!(panic_entry.record_id, broker.id);
    let run = executed.iter().find(|e| e.diff["outcome"] == "ok").unwrap();
    assert_eq!(run.record_kind, "module");
    // Nothing of tenant B's was run, and B's audit trail is untouched.
    let other_log = f
        .store
        .audit_log(&f.other_tenant, None, None, 1000)
        .await
        .unwrap();
    assert!(
        other_log
            .items
            .iter()
            .all(|e| e.action != AuditAction::Executed)
    );
    publisher.shutdown().await;
}

/// With commands off (the default), command topics are not even subscribed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_off_by_default() {
    let f = Fixture::new().await;
    let m = Mosquitto::start(None);
    f.add_broker(&m, |_| {}).await;
    let mut replies = m.subscribe("placeos/reply/#").await;
    let publisher = f.publisher(MqttConfig::default());
    eventually(10, "connected", || {
        publisher.disconnected() == 0 && publisher.brokers() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = format!("placeos/command/{}/Misbehave/1/remember", f.system);
    m.publish(&t, br#"{"args": ["should not run"]}"#, false)
        .await;
    assert!(replies.next(Duration::from_secs(2)).await.is_none());
    assert_eq!(
        f.engine
            .state_key(&f.tenant, &f.live, "remembered")
            .unwrap(),
        None
    );
    publisher.shutdown().await;
}

/// TLS: a broker whose certificate comes from a site CA is trusted with that CA in
/// `ca_certificate`, and refused with a clear error without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_brokers_are_verified_against_the_given_ca() {
    let f = Fixture::new().await;
    let m = Mosquitto::start_tls();
    let (tls_port, ca) = m.tls().unwrap();
    let trusted = f
        .add_broker(&m, |b| {
            b.port = Some(tls_port);
            b.tls = true;
            b.ca_certificate = Some(ca.to_string());
        })
        .await;
    let untrusted = f
        .add_broker(&m, |b| {
            b.port = Some(tls_port);
            b.tls = true;
            b.client_id = Some("untrusted".into());
        })
        .await;
    // Read back over the plain listener.
    let mut sub = m.subscribe(&f.topic(2, "secure")).await;
    let publisher = f.publisher(MqttConfig::default());
    eventually(10, "the TLS broker connects", || {
        publisher
            .broker_state(&f.tenant, &trusted.id)
            .is_some_and(|s| s.connected)
    })
    .await;
    f.writer().set("secure", json!("over tls"));
    until(&mut sub, 10, |msg| value(msg) == Some(json!("over tls"))).await;
    eventually(10, "the untrusted certificate is refused", || {
        publisher
            .broker_state(&f.tenant, &untrusted.id)
            .and_then(|s| s.error)
            .is_some_and(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    assert!(
        !publisher
            .broker_state(&f.tenant, &untrusted.id)
            .unwrap()
            .connected
    );
    publisher.shutdown().await;
}
