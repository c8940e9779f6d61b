//! The driver against a scripted projector, in virtual time.

use lintel_driver_harness::{Harness, LogLevel, Value, json};
use std::time::Duration;

/// What a class 1 projector that is off answers to the driver's first queries.
const CLASS1_STARTUP: &[(&str, &str)] = &[
    ("%1CLSS ?\r", "%1CLSS=1\r"),
    ("%1POWR ?\r", "%1POWR=0\r"),
    ("%1INPT ?\r", "%1INPT=31\r"),
    ("%1AVMT ?\r", "%1AVMT=30\r"),
    ("%1ERST ?\r", "%1ERST=000000\r"),
    ("%1LAMP ?\r", "%1LAMP=1234 0\r"),
    ("%1NAME ?\r", "%1NAME=Room 1 projector\r"),
    ("%1INF1 ?\r", "%1INF1=ACME\r"),
    ("%1INF2 ?\r", "%1INF2=PJ-100\r"),
    ("%1INFO ?\r", "%1INFO=laser\r"),
    // The input list is class 1 too (class 1 codes only).
    ("%1INST ?\r", "%1INST=11 31 32\r"),
];

/// The spec's authentication example (PJLink 1.04, §5.1).
const SPEC_RANDOM: &str = "498e4a67";
const SPEC_PASSWORD: &str = "JBMIAProjectorLink";
const SPEC_DIGEST: &str = "5d8409bc1c3fa39749434aa3a5c38682";

fn start(settings: Value) -> Harness {
    Harness::builder(lintel_bundled_drivers::PJLINK.component.to_vec())
        .settings(settings)
        .start()
        .expect("the driver starts")
}

fn script(h: &mut Harness, exchanges: &[(&str, &str)]) {
    for (out, answer) in exchanges {
        h.expect(out.as_bytes()).respond(answer.as_bytes());
    }
}

/// A class 1 projector without a password, connected and read.
fn class1(settings: Value) -> Harness {
    let mut h = start(settings);
    h.connect();
    script(&mut h, CLASS1_STARTUP);
    h.device_sends(b"PJLINK 0\r");
    h.assert_script_done();
    h
}

/// A class 2 projector that is on, connected and read.
fn class2() -> Harness {
    let mut h = start(json!({}));
    h.connect();
    script(
        &mut h,
        &[
            ("%1CLSS ?\r", "%1CLSS=2\r"),
            ("%1POWR ?\r", "%1POWR=1\r"),
            ("%1INPT ?\r", "%1INPT=5A\r"),
            ("%1AVMT ?\r", "%1AVMT=11\r"),
            ("%1ERST ?\r", "%1ERST=102000\r"),
            ("%1LAMP ?\r", "%1LAMP=100 1 2000 0\r"),
            ("%1NAME ?\r", "%1NAME=\r"),
            ("%1INF1 ?\r", "%1INF1=ACME\r"),
            ("%1INF2 ?\r", "%1INF2=PJ-200\r"),
            ("%1INFO ?\r", "%1INFO=\r"),
            ("%2INST ?\r", "%2INST=31 32 5A\r"),
            ("%2FREZ ?\r", "%2FREZ=0\r"),
            ("%2SNUM ?\r", "%2SNUM=SN42\r"),
            ("%2SVER ?\r", "%2SVER=1.2.3\r"),
            ("%2INNM ?31\r", "%2INNM=HDMI 1\r"),
            ("%2INNM ?32\r", "%2INNM=HDMI 2\r"),
            ("%2INNM ?5A\r", "%2INNM=Network\r"),
        ],
    );
    h.device_sends(b"PJLINK 0\r");
    h.assert_script_done();
    h
}

fn last_error(h: &Harness) -> Value {
    h.status("last_error").expect("last_error is always set")
}

fn assert_last_error(h: &Harness, needle: &str) {
    let e = last_error(h);
    assert!(
        e.as_str().is_some_and(|s| s.contains(needle)),
        "last_error should contain {needle:?}: {e}"
    );
}

fn logged(h: &mut Harness, level: LogLevel, needle: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| l.level == level && l.message.contains(needle))
}

#[test]
fn metadata_declares_functions_schemas_and_the_password_secret() {
    let h = start(json!({}));
    let info = h.info();
    assert_eq!(info.module_name, "Projector");
    assert_eq!(info.secrets, vec!["password".to_string()]);
    assert_eq!(
        info.default_settings,
        json!({"poll_every_ms": 10000, "class": "auto", "answer_timeout_ms": 1500})
    );
    // Three sends of an unanswered command fit in the engine's 5 s exec timeout.
    let timeout = info.default_settings["answer_timeout_ms"].as_u64().unwrap();
    assert!(
        timeout * (u64::from(lintel_driver_pjlink::RETRIES) + 1) < 5_000,
        "{timeout}"
    );
    assert!(
        info.default_settings.get("password").is_none(),
        "the password is a secret, not a setting"
    );
    let names: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
    for f in [
        "power",
        "input",
        "mute",
        "video_mute",
        "audio_mute",
        "volume_up",
        "volume_down",
        "mic_volume_up",
        "mic_volume_down",
        "freeze",
        "refresh",
    ] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    for f in &info.functions {
        assert!(!f.description.is_empty(), "{} has no description", f.name);
    }
    let input = info.function("input").unwrap();
    assert_eq!(input.parameters.len(), 1, "the call id is not an argument");
    assert_eq!(input.parameters[0].schema["pattern"], "^[1-6][1-9A-Z]$");
    let class = &info.settings_schema["properties"]["class"];
    assert!(class.to_string().contains("auto"), "{class}");
}

#[test]
fn settings_are_checked_on_load() {
    for (settings, needle) in [
        (
            json!({"poll_every_ms": 1}),
            "poll_every_ms must be 500..=3600000, got 1",
        ),
        (json!({"poll_every_ms": 3_600_001}), "poll_every_ms must be"),
        (
            json!({"answer_timeout_ms": 50}),
            "answer_timeout_ms must be 100..=30000, got 50",
        ),
        (
            json!({"class": "3"}),
            r#"class must be "auto", "1" or "2", got "3""#,
        ),
        (
            json!({"class": true}),
            r#"class must be "auto", "1" or "2", got true"#,
        ),
    ] {
        let e = Harness::builder(lintel_bundled_drivers::PJLINK.component.to_vec())
            .settings(settings.clone())
            .start()
            .err()
            .unwrap_or_else(|| panic!("{settings} accepted"));
        assert!(e.contains(needle), "{settings}: {e}");
    }
    for class in [json!("2"), json!(2), json!("1"), json!("auto")] {
        assert!(
            Harness::builder(lintel_bundled_drivers::PJLINK.component.to_vec())
                .settings(json!({"class": class, "poll_every_ms": 500, "answer_timeout_ms": 100}))
                .start()
                .is_ok(),
            "{class}"
        );
    }
}

#[test]
fn class1_projector_is_read_on_connect() {
    let h = class1(json!({}));
    let s = h.statuses();
    assert_eq!(s["class"], json!(1));
    assert_eq!(s["power"], json!(false));
    assert_eq!(s["power_state"], json!("off"));
    assert_eq!(s["input"], json!("31"));
    assert_eq!(
        (&s["video_mute"], &s["audio_mute"], &s["mute"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert_eq!(
        s["errors"],
        json!({"fan": "ok", "lamp": "ok", "temperature": "ok", "cover": "ok", "filter": "ok", "other": "ok"})
    );
    assert_eq!(s["lamp_hours"], json!(1234));
    assert_eq!(s["lamps"], json!([{"hours": 1234, "on": false}]));
    assert_eq!(s["name"], json!("Room 1 projector"));
    assert_eq!(s["manufacturer"], json!("ACME"));
    assert_eq!(s["model"], json!("PJ-100"));
    assert_eq!(s["info"], json!("laser"));
    assert_eq!(s["last_error"], Value::Null);
    // `%1INST ?` is class 1; the names (INNM) are class 2 and not asked.
    assert_eq!(s["inputs"], json!(["11", "31", "32"]));
    assert!(
        !s.contains_key("input_names"),
        "no class 2 query on class 1"
    );
    assert!(!s.contains_key("serial"), "no class 2 query on class 1");
}

#[test]
fn class2_is_detected_and_its_queries_read() {
    let h = class2();
    let s = h.statuses();
    assert_eq!(s["class"], json!(2));
    assert_eq!(s["power_state"], json!("on"));
    assert_eq!(s["input"], json!("5A"));
    assert_eq!(
        (&s["video_mute"], &s["audio_mute"], &s["mute"]),
        (&json!(true), &json!(false), &json!(false))
    );
    assert_eq!(s["errors"]["fan"], json!("warning"));
    assert_eq!(s["errors"]["lamp"], json!("ok"));
    assert_eq!(s["errors"]["temperature"], json!("error"));
    assert_eq!(
        s["lamps"],
        json!([{"hours": 100, "on": true}, {"hours": 2000, "on": false}])
    );
    assert_eq!(s["lamp_hours"], json!(100));
    assert_eq!(s["inputs"], json!(["31", "32", "5A"]));
    assert_eq!(
        s["input_names"],
        json!({"31": "HDMI 1", "32": "HDMI 2", "5A": "Network"})
    );
    assert_eq!(s["freeze"], json!(false));
    assert_eq!(s["serial"], json!("SN42"));
    assert_eq!(s["firmware"], json!("1.2.3"));
    assert_eq!(s["name"], json!(""));
    // The class 1 input list queued before `CLSS` answered 2 was replaced by `%2INST ?`.
    assert!(
        !h.written().iter().any(|w| w.starts_with(b"%1INST")),
        "{:?}",
        h.written()
    );
}

#[test]
fn class_setting_1_never_sends_class2_commands() {
    let mut h = start(json!({"class": "1"}));
    h.connect();
    let mut startup = CLASS1_STARTUP.to_vec();
    startup[0] = ("%1CLSS ?\r", "%1CLSS=2\r");
    script(&mut h, &startup);
    h.device_sends(b"PJLINK 0\r");
    h.assert_script_done();
    assert_eq!(h.status("class"), Some(json!(2)));
    let e = h.exec("volume_up", json!([])).unwrap_err();
    assert!(e.contains("needs PJLink class 2"), "{e}");
    h.assert_script_done();
}

#[test]
fn authenticates_with_the_md5_of_the_spec_example() {
    let mut h = start(json!({"password": SPEC_PASSWORD}));
    h.connect();
    // The digest is the spec's published value, not computed by the driver's code.
    let first = format!("{SPEC_DIGEST}%1CLSS ?\r");
    let mut startup = CLASS1_STARTUP.to_vec();
    startup[0] = (&first, "%1CLSS=1\r");
    script(&mut h, &startup);
    h.device_sends(format!("PJLINK 1 {SPEC_RANDOM}\r").as_bytes());
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("off")));
    assert_eq!(last_error(&h), Value::Null);
    // Later commands go without a digest.
    h.expect(b"%1POWR 1\r").respond(b"%1POWR=OK\r");
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=3\r");
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert!(
        !h.logs().iter().any(|l| l.message.contains(SPEC_PASSWORD)),
        "the password is never logged"
    );
    assert!(
        !h.statuses()
            .values()
            .any(|v| v.to_string().contains(SPEC_PASSWORD)),
        "the password is never in a status"
    );
}

#[test]
fn the_digest_uses_each_connections_random_number() {
    let mut h = start(json!({"password": "s3cret"}));
    h.connect();
    let random = "a1b2c3d4";
    // Computed independently by the simulator's MD5 (the md-5 crate).
    let want = lintel_simulators::pjlink::digest(random, "s3cret");
    assert_ne!(want, SPEC_DIGEST);
    h.expect(format!("{want}%1CLSS ?\r").as_bytes())
        .respond(b"%1CLSS=1\r");
    h.device_sends(format!("PJLINK 1 {random}\r").as_bytes());
    assert_eq!(h.written()[0], format!("{want}%1CLSS ?\r").as_bytes());
    assert_eq!(h.status("class"), Some(json!(1)));
}

#[test]
fn a_password_is_required_but_none_is_set() {
    let mut h = start(json!({}));
    h.connect();
    h.device_sends(b"PJLINK 1 498e4a67\r");
    assert!(h.written().is_empty(), "nothing is sent without a password");
    assert_last_error(&h, "authentication required");
    assert!(logged(&mut h, LogLevel::Error, "password"));
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("password"), "{e}");
    h.advance(Duration::from_secs(60));
    assert!(h.written().is_empty(), "the module does not spin");
}

#[test]
fn a_refused_password_fails_clearly_and_is_retried_with_backoff() {
    let mut h = start(json!({"password": "wrong"}));
    h.connect();
    let first = |random: &str| {
        format!(
            "{}%1CLSS ?\r",
            lintel_simulators::pjlink::digest(random, "wrong")
        )
    };
    h.expect(first("00000001").as_bytes())
        .respond(b"PJLINK ERRA\r");
    h.device_sends(b"PJLINK 1 00000001\r");
    h.assert_script_done();
    assert_last_error(&h, "authentication failed");
    assert!(logged(&mut h, LogLevel::Error, "authentication failed"));
    // The driver dropped the connection: the queued startup queries failed with it.
    let writes = h.written().len();
    assert_eq!(writes, 1, "{:?}", h.written());
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("not connected"), "{e}");

    // The engine reconnects: the driver waits 5 s before offering the password again.
    h.connect();
    h.device_sends(b"PJLINK 1 00000002\r");
    h.advance(Duration::from_millis(4_999));
    assert_eq!(h.written().len(), writes, "no immediate retry");
    h.expect(first("00000002").as_bytes())
        .respond(b"PJLINK ERRA\r");
    h.advance(Duration::from_millis(1));
    h.assert_script_done();

    // Then 10 s; this time the projector takes it (its password was changed to match).
    h.connect();
    h.device_sends(b"PJLINK 1 00000003\r");
    h.advance(Duration::from_millis(9_999));
    assert_eq!(h.written().len(), writes + 1);
    let mut startup = CLASS1_STARTUP.to_vec();
    let login = first("00000003");
    startup[0] = (&login, "%1CLSS=1\r");
    script(&mut h, &startup);
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
    assert!(logged(&mut h, LogLevel::Info, "logged in"));
}

#[test]
fn power_on_goes_through_warming() {
    let mut h = class1(json!({}));
    h.expect(b"%1POWR 1\r").respond(b"%1POWR=OK\r");
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=3\r");
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("warming")));
    assert_eq!(h.status("power"), Some(json!(true)));

    // While warming the driver asks again every 2 s.
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=3\r");
    h.advance(Duration::from_millis(2_000));
    h.assert_script_done();
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    // On: input and mutes are read again.
    h.expect(b"%1INPT ?\r").respond(b"%1INPT=32\r");
    h.expect(b"%1AVMT ?\r").respond(b"%1AVMT=30\r");
    h.advance(Duration::from_millis(2_000));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("on")));
    assert_eq!(h.status("input"), Some(json!("32")));
    // Stable: no more transition polls before the regular poll.
    h.advance(Duration::from_millis(5_000));
    h.assert_script_done();
}

#[test]
fn power_off_goes_through_cooling() {
    let mut h = class2();
    h.expect(b"%1POWR 0\r").respond(b"%1POWR=OK\r");
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=2\r");
    assert_eq!(h.exec("power", json!([false])), Ok(Value::Null));
    assert_eq!(h.status("power_state"), Some(json!("cooling")));
    assert_eq!(h.status("power"), Some(json!(false)));
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    h.advance(Duration::from_millis(2_000));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("off")));
}

#[test]
fn err3_while_warming_is_not_fatal() {
    let mut h = class1(json!({}));
    h.expect(b"%1POWR 0\r").respond(b"%1POWR=ERR3\r");
    let e = h.exec("power", json!([false])).unwrap_err();
    assert!(e.contains("ERR3") && e.contains("unavailable time"), "{e}");
    assert_last_error(&h, "ERR3");
    // The session goes on: the next command is sent and answered.
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=3\r");
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("warming")));
    assert_eq!(last_error(&h), Value::Null, "a good answer clears it");
}

#[test]
fn refusals_err1_to_err4_fail_the_call_with_their_meaning() {
    let mut h = class2();
    for (function, args, sent, code, meaning) in [
        (
            "freeze",
            json!([true]),
            "%2FREZ 1\r",
            "ERR1",
            "undefined command",
        ),
        (
            "input",
            json!(["39"]),
            "%2INPT 39\r",
            "ERR2",
            "out of parameter",
        ),
        (
            "mute",
            json!([true]),
            "%1AVMT 31\r",
            "ERR3",
            "unavailable time",
        ),
        (
            "power",
            json!([true]),
            "%1POWR 1\r",
            "ERR4",
            "projector/display failure",
        ),
    ] {
        let header = &sent[..6];
        h.expect(sent.as_bytes())
            .respond(format!("{header}={code}\r").as_bytes());
        let e = h.exec(function, args).unwrap_err();
        assert!(e.contains(code) && e.contains(meaning), "{function}: {e}");
        assert_last_error(&h, code);
        assert!(logged(&mut h, LogLevel::Warn, code));
    }
    h.assert_script_done();
    assert_eq!(h.status("freeze"), Some(json!(false)), "unchanged");
    assert_eq!(h.status("mute"), Some(json!(false)), "unchanged");
}

#[test]
fn query_errors_err3_is_logged_err4_is_a_problem() {
    let mut h = class1(json!({"poll_every_ms": 1000}));
    // Five polls of power only, then the sixth adds errors and lamp hours.
    for _ in 0..5 {
        h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    }
    h.advance(Duration::from_millis(5_000));
    h.assert_script_done();
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    h.expect(b"%1ERST ?\r").respond(b"%1ERST=ERR3\r");
    h.expect(b"%1LAMP ?\r").respond(b"%1LAMP=ERR4\r");
    h.advance(Duration::from_millis(1_000));
    h.assert_script_done();
    assert!(logged(&mut h, LogLevel::Info, "`%1ERST ?` refused: ERR3"));
    assert_last_error(&h, "`%1LAMP ?` refused: ERR4 (projector/display failure)");
    assert_eq!(h.status("lamp_hours"), Some(json!(1234)), "unchanged");

    // ERR1 to a query (a laser projector has no lamp): logged, not asked again.
    for _ in 0..5 {
        h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    }
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    h.expect(b"%1ERST ?\r").respond(b"%1ERST=000000\r");
    h.expect(b"%1LAMP ?\r").respond(b"%1LAMP=ERR1\r");
    h.advance(Duration::from_millis(6_000));
    h.assert_script_done();
    assert!(logged(&mut h, LogLevel::Info, "not asked again"));
    assert_eq!(last_error(&h), Value::Null, "not a problem");
    for _ in 0..6 {
        h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    }
    h.expect(b"%1ERST ?\r").respond(b"%1ERST=000000\r");
    h.advance(Duration::from_millis(6_000));
    h.assert_script_done();
}

#[test]
fn polls_power_and_every_sixth_time_errors_and_lamps() {
    let mut h = class1(json!({"poll_every_ms": 2000}));
    h.advance(Duration::from_millis(1_999));
    assert_eq!(
        h.written().len(),
        CLASS1_STARTUP.len(),
        "no poll before its period"
    );
    // Just on: input and mutes are read again.
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    h.expect(b"%1INPT ?\r").respond(b"%1INPT=11\r");
    h.expect(b"%1AVMT ?\r").respond(b"%1AVMT=21\r");
    for _ in 0..4 {
        h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    }
    h.advance(Duration::from_millis(8_001));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(h.status("audio_mute"), Some(json!(true)));
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    h.expect(b"%1ERST ?\r").respond(b"%1ERST=020001\r");
    h.expect(b"%1LAMP ?\r").respond(b"%1LAMP=1240 1\r");
    h.advance(Duration::from_millis(2_000));
    h.assert_script_done();
    assert_eq!(
        h.status("errors"),
        Some(
            json!({"fan": "ok", "lamp": "error", "temperature": "ok", "cover": "ok", "filter": "ok", "other": "warning"})
        )
    );
    assert_eq!(h.status("lamp_hours"), Some(json!(1240)));
}

#[test]
fn input_codes_are_validated_and_set() {
    let mut h = class1(json!({}));
    h.expect(b"%1INPT 32\r").respond(b"%1INPT=OK\r");
    assert_eq!(h.exec("input", json!(["32"])), Ok(Value::Null));
    assert_eq!(h.status("input"), Some(json!("32")));
    let before = h.written().len();
    for bad in [json!("3a"), json!("71"), json!("310"), json!(31), json!("")] {
        assert!(h.exec("input", json!([bad.clone()])).is_err(), "{bad}");
    }
    // Class 2 codes on a class 1 projector.
    let e = h.exec("input", json!(["3A"])).unwrap_err();
    assert!(e.contains("class 2"), "{e}");
    assert_eq!(
        h.written().len(),
        before,
        "refused before anything was sent"
    );
    h.assert_script_done();

    let mut h = class2();
    h.expect(b"%2INPT 3A\r").respond(b"%2INPT=OK\r");
    assert_eq!(h.exec("input", json!(["3A"])), Ok(Value::Null));
    assert_eq!(h.status("input"), Some(json!("3A")));
}

#[test]
fn mutes_follow_the_avmt_commands() {
    let mut h = class2();
    h.expect(b"%1AVMT 31\r").respond(b"%1AVMT=OK\r");
    assert_eq!(h.exec("mute", json!([true])), Ok(Value::Null));
    assert_eq!(
        (
            h.status("video_mute"),
            h.status("audio_mute"),
            h.status("mute")
        ),
        (Some(json!(true)), Some(json!(true)), Some(json!(true)))
    );
    h.expect(b"%1AVMT 10\r").respond(b"%1AVMT=OK\r");
    assert_eq!(h.exec("video_mute", json!([false])), Ok(Value::Null));
    assert_eq!(
        (
            h.status("video_mute"),
            h.status("audio_mute"),
            h.status("mute")
        ),
        (Some(json!(false)), Some(json!(true)), Some(json!(false)))
    );
    h.expect(b"%1AVMT 20\r").respond(b"%1AVMT=OK\r");
    assert_eq!(h.exec("audio_mute", json!([false])), Ok(Value::Null));
    assert_eq!(h.status("audio_mute"), Some(json!(false)));
    h.expect(b"%1AVMT 11\r").respond(b"%1AVMT=OK\r");
    assert_eq!(h.exec("video_mute", json!([true])), Ok(Value::Null));
    assert_eq!(h.status("video_mute"), Some(json!(true)));
    h.assert_script_done();
}

#[test]
fn class2_volume_steps_and_freeze() {
    let mut h = class2();
    script(
        &mut h,
        &[
            ("%2SVOL 1\r", "%2SVOL=OK\r"),
            ("%2SVOL 0\r", "%2SVOL=OK\r"),
            ("%2MVOL 1\r", "%2MVOL=OK\r"),
            ("%2MVOL 0\r", "%2MVOL=OK\r"),
            ("%2FREZ 1\r", "%2FREZ=OK\r"),
        ],
    );
    for f in [
        "volume_up",
        "volume_down",
        "mic_volume_up",
        "mic_volume_down",
    ] {
        assert_eq!(h.exec(f, json!([])), Ok(Value::Null), "{f}");
    }
    assert_eq!(h.exec("freeze", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("freeze"), Some(json!(true)));
    assert!(h.status("volume").is_none(), "PJLink reports no volume");

    let mut h = class1(json!({}));
    for f in [
        "volume_up",
        "volume_down",
        "mic_volume_up",
        "mic_volume_down",
    ] {
        let e = h.exec(f, json!([])).unwrap_err();
        assert!(e.contains("needs PJLink class 2"), "{f}: {e}");
    }
    let e = h.exec("freeze", json!([true])).unwrap_err();
    assert!(e.contains("needs PJLink class 2"), "{e}");
    h.assert_script_done();
}

#[test]
fn garbage_is_reported_and_the_command_resent() {
    let mut h = class1(json!({}));
    h.expect(b"%1POWR 1\r").respond(b"\x07#?garbage?#\r");
    h.expect(b"%1POWR 1\r").respond(b"%1POWR=OK\r");
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=3\r");
    let mut call = h.exec_later("power", json!([true])).unwrap();
    h.advance(Duration::from_millis(1));
    assert_eq!(call.result(), Ok(Value::Null));
    h.assert_script_done();
    assert!(logged(&mut h, LogLevel::Warn, "unparseable answer"));
    assert_eq!(last_error(&h), Value::Null, "cleared by the good answer");

    // Garbage every time: the command fails after its 3 attempts; the queue moves on.
    for junk in [&b"\xff\xfe\xfd\r"[..], b"%1POWR\r", b"hello\r"] {
        h.expect(b"%1INPT 11\r").respond(junk);
    }
    let e = h.exec("input", json!(["11"])).unwrap_err();
    assert!(e.contains("%1INPT 11") && e.contains("3 attempt"), "{e}");
    let err = last_error(&h);
    assert!(err.as_str().unwrap().contains("%1INPT 11"), "{err}");
    assert!(
        err.as_str().unwrap().contains("unparseable answer"),
        "{err}"
    );
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    h.expect(b"%1INPT ?\r").respond(b"%1INPT=11\r");
    h.expect(b"%1AVMT ?\r").respond(b"%1AVMT=30\r");
    // (the transition poll at 2 s, then the regular poll at 10 s)
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=1\r");
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("on")));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn malformed_values_and_answers_for_other_commands() {
    let mut h = class1(json!({}));
    // A value out of the spec: the query fails, the status is kept.
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=7\r");
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_last_error(&h, "power state `7` is not 0..3");
    assert_eq!(h.status("power_state"), Some(json!("off")));

    // An answer for another command (a late or unsolicited one) does not end the wait:
    // its value is kept and the real answer follows in the same read.
    h.expect(b"%1INPT 32\r").respond(b"%1AVMT=31\r%1INPT=OK\r");
    assert_eq!(h.exec("input", json!(["32"])), Ok(Value::Null));
    assert_eq!(h.status("mute"), Some(json!(true)));
    assert_eq!(h.status("input"), Some(json!("32")));
    // OK to a query, a value to a command: failed, reported.
    h.expect(b"%1AVMT 30\r").respond(b"%1AVMT=31\r");
    let e = h.exec("mute", json!([false])).unwrap_err();
    assert!(e.contains("unexpected answer"), "{e}");
    h.assert_script_done();
}

#[test]
fn partial_frames_and_two_frames_in_one_read() {
    let mut h = start(json!({}));
    h.connect();
    // The greeting arrives in three pieces.
    h.expect(b"%1CLSS ?\r").respond(b"%1CL");
    h.device_sends(b"PJL");
    assert!(h.written().is_empty());
    h.device_sends(b"INK ");
    h.device_sends(b"0\r");
    assert_eq!(h.written().len(), 1);
    assert!(
        h.status("class").is_none(),
        "half an answer is not an answer"
    );
    // The rest of the answer and the next answer's start in one read.
    h.expect(b"%1POWR ?\r").silently();
    h.device_sends(b"SS=1\r");
    assert_eq!(h.status("class"), Some(json!(1)));
    h.expect(b"%1INPT ?\r").silently();
    h.device_sends(b"%1POWR=1\r%1IN");
    assert_eq!(h.status("power_state"), Some(json!("on")));
    h.expect(b"%1AVMT ?\r").silently();
    h.device_sends(b"PT=3Z\r");
    assert_eq!(h.status("input"), Some(json!("3Z")));
    // Two whole answers in one read.
    h.expect(b"%1ERST ?\r").silently();
    h.expect(b"%1LAMP ?\r").silently();
    h.device_sends(b"%1AVMT=31\r%1ERST=000000\r");
    assert_eq!(h.status("mute"), Some(json!(true)));
    assert_eq!(h.status("errors").unwrap()["fan"], json!("ok"));
    script(
        &mut h,
        &[
            ("%1NAME ?\r", "%1NAME=A\r"),
            ("%1INF1 ?\r", "%1INF1=B\r"),
            ("%1INF2 ?\r", "%1INF2=C\r"),
            ("%1INFO ?\r", "%1INFO=D\r"),
            ("%1INST ?\r", "%1INST=11\r"),
        ],
    );
    h.device_sends(b"%1LAMP=5 1\r");
    h.assert_script_done();
    let s = h.statuses();
    assert_eq!(
        (
            &s["name"],
            &s["manufacturer"],
            &s["model"],
            &s["info"],
            &s["lamp_hours"]
        ),
        (
            &json!("A"),
            &json!("B"),
            &json!("C"),
            &json!("D"),
            &json!(5)
        )
    );
    // A `\r\n` line end is tolerated.
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r\n");
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("power_state"), Some(json!("off")));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn lines_longer_than_the_limit_are_refused() {
    let mut h = class1(json!({}));
    let limit = lintel_driver_pjlink::MAX_LINE;
    // `%1NAME=` + name is exactly the limit: accepted.
    let name = "n".repeat(limit - 7);
    h.expect(b"%1CLSS ?\r").respond(b"%1CLSS=1\r");
    for (out, answer) in &CLASS1_STARTUP[1..6] {
        h.expect(out.as_bytes()).respond(answer.as_bytes());
    }
    h.expect(b"%1NAME ?\r")
        .respond(format!("%1NAME={name}\r").as_bytes());
    for (out, answer) in &CLASS1_STARTUP[7..] {
        h.expect(out.as_bytes()).respond(answer.as_bytes());
    }
    assert!(h.exec("refresh", json!([])).is_ok());
    h.assert_script_done();
    assert_eq!(h.status("name"), Some(json!(name)));
    // One byte more: refused as garbage, resent, then given up.
    let long = format!("%1NAME={name}x\r");
    h.expect(b"%1CLSS ?\r").respond(b"%1CLSS=1\r");
    for (out, answer) in &CLASS1_STARTUP[1..6] {
        h.expect(out.as_bytes()).respond(answer.as_bytes());
    }
    for _ in 0..3 {
        h.expect(b"%1NAME ?\r").respond(long.as_bytes());
    }
    for (out, answer) in &CLASS1_STARTUP[7..] {
        h.expect(out.as_bytes()).respond(answer.as_bytes());
    }
    assert!(h.exec("refresh", json!([])).is_ok());
    h.assert_script_done();
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        &format!("answer over {limit} bytes")
    ));
    assert_eq!(h.status("name"), Some(json!(name)), "kept");
}

#[test]
fn silence_fails_commands_after_retries_and_the_queue_moves_on() {
    let mut h = class1(json!({"answer_timeout_ms": 1000}));
    for _ in 0..3 {
        h.expect(b"%1POWR 1\r").silently();
    }
    h.expect(b"%1INPT 11\r").respond(b"%1INPT=OK\r");
    let mut power = h.exec_later("power", json!([true])).unwrap();
    let mut input = h.exec_later("input", json!(["11"])).unwrap();
    h.advance(Duration::from_millis(2_999));
    assert_eq!(
        power.result(),
        Err("no answer yet (the driver answers later)".into())
    );
    h.advance(Duration::from_millis(1));
    let e = power.result().unwrap_err();
    assert!(
        e.contains("no answer to `%1POWR 1`") && e.contains("1000 ms"),
        "{e}"
    );
    assert!(logged(&mut h, LogLevel::Warn, "no answer to `%1POWR 1`"));
    // The next command was sent and answered (which clears `last_error`).
    assert_eq!(input.result(), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn a_silent_projector_is_disconnected_and_recovers_on_reconnect() {
    let mut h = class1(json!({"answer_timeout_ms": 1000, "poll_every_ms": 500}));
    // Every command goes unanswered: after 3 in a row, the driver drops the connection.
    // (The queue writes the next poll as the third fails, just before the disconnect.)
    for _ in 0..10 {
        h.expect(b"%1POWR ?\r").silently();
    }
    h.advance(Duration::from_millis(500 + 9_000));
    h.assert_script_done();
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "3 commands in a row went unanswered"
    ));
    assert_last_error(&h, "no answer");
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("not connected"), "{e}");
    let writes = h.written().len();
    h.advance(Duration::from_millis(10_000));
    assert_eq!(h.written().len(), writes, "no polling while disconnected");

    // The engine reconnects; the projector is back.
    h.connect();
    script(&mut h, CLASS1_STARTUP);
    h.device_sends(b"PJLINK 0\r");
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
    h.expect(b"%1POWR ?\r").respond(b"%1POWR=0\r");
    h.advance(Duration::from_millis(500));
    h.assert_script_done();
}

#[test]
fn no_greeting_times_out_and_disconnects() {
    let mut h = start(json!({"answer_timeout_ms": 2000}));
    h.connect();
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("waiting for its PJLINK greeting"), "{e}");
    h.advance(Duration::from_millis(2_000));
    assert_last_error(&h, "no PJLINK greeting");
    // A greeting on the old connection is not seen; a new connection works.
    h.connect();
    script(&mut h, CLASS1_STARTUP);
    h.device_sends(b"PJLINK 0\r");
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn malformed_greetings_disconnect() {
    for greeting in [
        &b"PJLINK 1\r"[..],
        b"PJLINK 7\r",
        b"PJLINK 1 \r",
        b"PJLINK 1 a b c\r",
    ] {
        let mut h = start(json!({"password": "p"}));
        h.connect();
        h.device_sends(greeting);
        assert!(h.written().is_empty(), "{greeting:?}");
        assert_last_error(&h, "malformed greeting");
        let e = h.exec("power", json!([true])).unwrap_err();
        assert!(e.contains("not connected"), "{greeting:?}: {e}");
    }
}

#[test]
fn a_disconnect_fails_the_waiting_call() {
    let mut h = class1(json!({}));
    h.expect(b"%1POWR 1\r").silently();
    let mut call = h.exec_later("power", json!([true])).unwrap();
    h.disconnect();
    let e = call.result().unwrap_err();
    assert!(e.contains("disconnected"), "{e}");
    assert_eq!(
        last_error(&h),
        Value::Null,
        "a disconnect is the engine's to report"
    );
}

#[test]
fn with_default_timeouts_an_unanswered_call_fails_before_the_engines_exec_timeout() {
    let mut h = class1(json!({}));
    for _ in 0..3 {
        h.expect(b"%1POWR 1\r").silently();
    }
    let mut call = h.exec_later("power", json!([true])).unwrap();
    // 3 sends × 1500 ms = 4.5 s: the caller gets the driver's reason before the
    // engine's 5 s exec timeout would answer instead.
    h.advance(Duration::from_millis(4_499));
    assert!(call.result().is_err_and(|e| e.contains("no answer yet")));
    h.advance(Duration::from_millis(1));
    let e = call.result().unwrap_err();
    assert!(
        e.contains("no answer to `%1POWR 1`") && e.contains("1500 ms"),
        "{e}"
    );
    h.assert_script_done();
}

#[test]
fn an_answer_timeout_beyond_the_exec_timeout_is_accepted_with_a_warning() {
    let warning = "exec timeout";
    // 1666 × 3 = 4998 ms: fits.
    let mut h = start(json!({"answer_timeout_ms": 1666}));
    assert!(!logged(&mut h, LogLevel::Warn, warning), "{:?}", h.logs());
    // 1667 × 3 = 5001 ms: the caller would get the engine's timeout, not the reason.
    let mut h = start(json!({"answer_timeout_ms": 1667}));
    let line = h
        .logs()
        .iter()
        .find(|l| l.level == LogLevel::Warn && l.message.contains(warning))
        .map(|l| l.message.clone())
        .expect("a warning");
    assert!(
        line.contains("answer_timeout_ms 1667") && line.contains("at most 1666"),
        "{line}"
    );
}

#[test]
fn the_login_command_is_sent_once_and_unanswered_it_reconnects_for_a_fresh_random() {
    let mut h = start(json!({"password": "s3cret"}));
    h.connect();
    let login = |random: &str| {
        format!(
            "{}%1CLSS ?\r",
            lintel_simulators::pjlink::digest(random, "s3cret")
        )
    };
    h.expect(login("0000aaaa").as_bytes()).silently();
    h.device_sends(b"PJLINK 1 0000aaaa\r");
    h.assert_script_done();
    // Nothing else is sent while the login waits for its answer.
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("waiting for its answer to the login"), "{e}");
    // Not resent with the same digest after the answer timeout: the connection is
    // dropped instead.
    h.advance(Duration::from_millis(1_500));
    h.advance(Duration::from_millis(10_000));
    let logins = h
        .written()
        .iter()
        .filter(|w| w.ends_with(b"%1CLSS ?\r"))
        .count();
    assert_eq!(logins, 1, "{:?}", h.written());
    assert_eq!(h.written().len(), 1, "only the login: {:?}", h.written());
    assert_last_error(&h, "no answer to the login command");
    assert_last_error(&h, "reconnecting");
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("not connected"), "{e}");

    // The next connection logs in with its own random number.
    h.connect();
    let mut startup = CLASS1_STARTUP.to_vec();
    let second = login("0000bbbb");
    startup[0] = (&second, "%1CLSS=1\r");
    script(&mut h, &startup);
    h.device_sends(b"PJLINK 1 0000bbbb\r");
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
    assert_eq!(h.status("power_state"), Some(json!("off")));
}

#[test]
fn garbage_to_the_login_command_reconnects_without_resending_it() {
    let mut h = start(json!({"password": "s3cret"}));
    h.connect();
    let login = format!(
        "{}%1CLSS ?\r",
        lintel_simulators::pjlink::digest("12345678", "s3cret")
    );
    h.expect(login.as_bytes()).respond(b"#junk#\r");
    h.device_sends(b"PJLINK 1 12345678\r");
    h.assert_script_done();
    h.advance(Duration::from_millis(10_000));
    assert_eq!(
        h.written()
            .iter()
            .filter(|w| w.ends_with(b"%1CLSS ?\r"))
            .count(),
        1,
        "{:?}",
        h.written()
    );
    assert_last_error(&h, "no valid answer to the login command");
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(e.contains("not connected"), "{e}");
}

#[test]
fn a_refused_password_then_waiting_says_so_to_callers() {
    let mut h = start(json!({"password": "wrong"}));
    h.connect();
    let login = format!(
        "{}%1CLSS ?\r",
        lintel_simulators::pjlink::digest("00000001", "wrong")
    );
    h.expect(login.as_bytes()).respond(b"PJLINK ERRA\r");
    h.device_sends(b"PJLINK 1 00000001\r");
    h.connect();
    h.device_sends(b"PJLINK 1 00000002\r");
    let e = h.exec("power", json!([true])).unwrap_err();
    assert!(
        e.contains("refused the password 1 time(s)") && e.contains("waiting"),
        "{e}"
    );
}
