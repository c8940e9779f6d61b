use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

fn first_system(l: &Lintel, token: &str) -> String {
    let systems: Vec<Value> = l.get(token, "/api/engine/v2/systems").json().unwrap();
    assert_eq!(
        systems.len(),
        4,
        "the demo building has four rooms: {systems:?}"
    );
    systems[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn serve_shows_live_demo_state_obeys_exec_stops_cleanly_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);
    let sys = first_system(&l, &token);

    // Live state from the WASM display driver talking to its simulator.
    let state: Value = eventually("the display to connect and report", || {
        let s: Value = l
            .get(&token, &format!("/api/engine/v2/systems/{sys}/Display_1"))
            .json()
            .ok()?;
        (s["connected"] == json!(true) && s["power"].is_boolean()).then_some(s)
    });
    assert_eq!(state["power"], json!(false));
    let power = l.get(
        &token,
        &format!("/api/engine/v2/systems/{sys}/Display_1/power"),
    );
    assert_eq!(power.status(), 200);
    assert_eq!(power.json::<Value>().unwrap(), json!(false));
    // The occupancy sensor reports too.
    eventually("occupancy readings", || {
        let s: Value = l
            .get(&token, &format!("/api/engine/v2/systems/{sys}/Occupancy_1"))
            .json()
            .ok()?;
        s["people_count"].is_u64().then_some(())
    });

    // exec: POST [true] switches the display on.
    let r = l.post(
        &token,
        &format!("/api/engine/v2/systems/{sys}/Display_1/power"),
        "[true]",
    );
    assert_eq!(r.status(), 200, "{:?}", r.text());
    eventually("power to become true", || {
        let v: Value = l
            .get(
                &token,
                &format!("/api/engine/v2/systems/{sys}/Display_1/power"),
            )
            .json()
            .ok()?;
        (v == json!(true)).then_some(())
    });

    // Operations endpoints.
    let health = client().get(l.url("/api/engine/v2/health")).send().unwrap();
    assert_eq!(health.status(), 200);
    let metrics = client()
        .get(l.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("lintel_modules_running 24"), "{metrics}");
    assert!(metrics.contains("lintel_http_requests_total"), "{metrics}");

    // SIGTERM: clean exit 0, after saying so.
    let (status, logs) = l.terminate();
    assert_eq!(status.code(), Some(0), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("\"stopped\"")), "{logs:?}");
    // The admin password never reached the logs.
    assert!(!logs.iter().any(|l| l.contains(PASSWORD)));

    // Restart on the same data dir: config and admin persist, no second demo building.
    let l = Lintel::start(command(&data));
    let token = l.token(PASSWORD);
    let again = first_system(&l, &token);
    assert_eq!(again, sys);
    // The cloud calendars come back: new simulator ports, the sealed credentials opened
    // again, the token endpoints found by name.
    let systems: Vec<Value> = l.get(&token, "/api/engine/v2/systems").json().unwrap();
    for room in ["Room 1.03 Focus", "Room 1.04 Studio"] {
        let id = systems
            .iter()
            .find(|s| s["name"] == room)
            .and_then(|s| s["id"].as_str())
            .unwrap_or_else(|| panic!("no {room}: {systems:?}"));
        eventually_within(Duration::from_secs(30), room, || {
            let s: Value = l
                .get(&token, &format!("/api/engine/v2/systems/{id}/Calendar_1"))
                .json()
                .ok()?;
            (s["connected"] == json!(true) && s["bookings"].as_array()?.len() >= 2).then_some(())
        });
    }
    assert!(!l.log_lines().iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("first run"))
    }));
    // Time-to-ready is logged.
    let ready = l
        .log_lines()
        .into_iter()
        .find(|v| v["message"] == "ready")
        .expect("a ready line");
    eprintln!("time to ready on restart: {} ms", ready["ms"]);
    let (status, _) = l.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_generated_admin_password_is_printed_once_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_BOOTSTRAP__DEMO", "false");
    let l = Lintel::start(cmd);
    let password = eventually("the password banner", || {
        l.stderr().iter().find_map(|line| {
            line.trim()
                .strip_prefix("password:")
                .map(|p| p.trim().to_string())
        })
    });
    assert!(password.len() >= 20);
    l.token(&password);
    assert!(
        !l.stdout().iter().any(|line| line.contains(&password)),
        "the password leaked into the log stream"
    );
    let (status, _) = l.terminate();
    assert_eq!(status.code(), Some(0));

    let mut cmd = command(&data);
    cmd.env("LINTEL_BOOTSTRAP__DEMO", "false");
    let l = Lintel::start(cmd);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !l.stderr().iter().any(|line| line.contains("password")),
        "{:?}",
        l.stderr()
    );
    l.token(&password);
    // Without the demo, no systems were created.
    let systems: Vec<Value> = l
        .get(&l.token(&password), "/api/engine/v2/systems")
        .json()
        .unwrap();
    assert!(systems.is_empty());
}

#[test]
fn version_and_help() {
    let out = std::process::Command::new(BIN)
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("lintel 0.1.0") && text.contains("lintel:driver@0.1.0"),
        "{text}"
    );
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "version", "config", "--config"] {
        assert!(text.contains(word), "{text}");
    }
}

/// The demo building runs the catalog drivers against their simulators: each room's
/// calendar, panel, sensors and displays report, and the room logic ties them together —
/// check-in, ending a meeting and booking from the room show on the panel's light.
#[test]
fn the_demo_building_runs_the_catalog_drivers_and_room_logic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);
    let systems: Vec<Value> = l.get(&token, "/api/engine/v2/systems").json().unwrap();
    let id_of = |name: &str| {
        systems
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["id"].as_str())
            .unwrap_or_else(|| panic!("no system {name}: {systems:?}"))
            .to_string()
    };
    let (huddle, board) = (id_of("Room 1.01 Huddle"), id_of("Room 1.02 Boardroom"));
    let state = |sys: &str, module: &str| -> Value {
        l.get(&token, &format!("/api/engine/v2/systems/{sys}/{module}"))
            .json()
            .unwrap()
    };
    // 24 modules start at once on a machine shared with other tests: be patient.
    let wait = |what: &str, sys: &str, module: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        eventually_within(Duration::from_secs(30), what, || {
            let s = state(sys, module);
            ok(&s).then_some(s)
        })
    };
    // A room with a current booking is pending (amber) or busy (red), and its panel shows
    // it. Both read in each round: people walking in turn a pending room busy.
    let light_follows_the_booking = |sys: &str| {
        eventually_within(
            Duration::from_secs(30),
            "the panel's light to follow the room logic",
            || {
                let logic = state(sys, "Bookings_1");
                let light = match logic["status"].as_str() {
                    Some("pending") => "amber",
                    Some("busy") => "red",
                    _ => return None,
                };
                (logic["current_booking"].is_object() && state(sys, "Panel_1")["light"] == light)
                    .then_some(())
            },
        )
    };
    let exec = |sys: &str, module: &str, function: &str, args: &str| {
        let r = l.post(
            &token,
            &format!("/api/engine/v2/systems/{sys}/{module}/{function}"),
            args,
        );
        let status = r.status();
        let body = r.text().unwrap();
        assert_eq!(status, 200, "{module}.{function}{args}: {body}");
        body
    };

    // Devices: the Modbus room sensor, the PJLink projector and the Samsung display.
    let sensor = wait("Modbus readings", &huddle, "Modbus_1", &|s| {
        s["temperature"].is_number() && s["co2"].is_number()
    });
    assert_eq!(sensor["connected"], json!(true), "{sensor}");
    wait("the projector", &board, "Projector_1", &|s| {
        s["connected"] == json!(true) && s["power"] == json!(false)
    });
    wait("the Samsung display", &board, "Display_2", &|s| {
        s["connected"] == json!(true) && s["power"].is_boolean()
    });
    exec(&board, "Projector_1", "power", "[true]");
    wait("the projector to warm up", &board, "Projector_1", &|s| {
        matches!(s["power_state"].as_str(), Some("warming" | "on"))
    });

    // The calendar, the panel and the room logic.
    for sys in [&huddle, &board] {
        let cal = wait("the demo bookings", sys, "Calendar_1", &|s| {
            s["bookings"].as_array().is_some_and(|b| !b.is_empty())
        });
        assert_eq!(cal["connected"], json!(true), "{cal}");
        light_follows_the_booking(sys);
    }

    // Room 1.03's calendar is a Microsoft 365 room mailbox (Graph, OAuth client
    // credentials), free for the next forty minutes; room 1.04's a Google Workspace
    // calendar (a delegated refresh token), its meeting under way. The engine gets their
    // tokens from the simulators' token endpoints with the sealed demo credentials.
    let (focus, studio) = (id_of("Room 1.03 Focus"), id_of("Room 1.04 Studio"));
    for sys in [&focus, &studio] {
        let cal = wait("the cloud calendars' bookings", sys, "Calendar_1", &|s| {
            s["bookings"].as_array().is_some_and(|b| !b.is_empty())
        });
        assert_eq!(cal["connected"], json!(true), "{cal}");
    }
    wait(
        "a free room before its next booking",
        &focus,
        "Bookings_1",
        &|s| s["status"] == "free" && s["next_booking"].is_object(),
    );
    wait("a green light", &focus, "Panel_1", &|s| {
        s["light"] == "green"
    });
    light_follows_the_booking(&studio);
    // Booking from the room writes the event to Graph.
    let before = state(&focus, "Calendar_1")["bookings"]
        .as_array()
        .map_or(0, Vec::len);
    exec(&focus, "Bookings_1", "book_now", "[15]");
    wait("booked in Microsoft 365", &focus, "Bookings_1", &|s| {
        s["status"] == "busy"
    });
    wait("a red light", &focus, "Panel_1", &|s| s["light"] == "red");
    wait(
        "the new event in the Graph calendar",
        &focus,
        "Calendar_1",
        &|s| {
            s["bookings"]
                .as_array()
                .is_some_and(|b| b.len() == before + 1)
        },
    );

    // The room logic started after the devices it drives and waited for the calendars'
    // first read: no warnings about modules not running, calendars unavailable or
    // tokens refused.
    let noise: Vec<String> = l
        .log_lines()
        .iter()
        .filter(|v| v["level"] == "WARN")
        .filter_map(|v| v["message"].as_str().map(String::from))
        .filter(|m| {
            m.contains("is not running") || m.contains("is unavailable") || m.contains("oauth2")
        })
        .collect();
    assert!(noise.is_empty(), "{noise:?}");
    // The demo's OAuth credentials are sealed settings: never in the logs.
    let logs = l.stdout().join("\n");
    assert!(
        !logs.contains("demo-client-secret") && !logs.contains("demo-refresh-token"),
        "credentials reached the log"
    );

    // Check in, end the meeting, book the room from the panel's side: the light follows.
    exec(&huddle, "Bookings_1", "check_in", "[]");
    wait("checked in", &huddle, "Bookings_1", &|s| {
        s["status"] == "busy" && s["checked_in"] == json!(true)
    });
    wait("a red light", &huddle, "Panel_1", &|s| s["light"] == "red");
    let current = state(&huddle, "Bookings_1")["current_booking"]["id"].clone();
    exec(&huddle, "Bookings_1", "end_meeting", "[]");
    wait("free again", &huddle, "Bookings_1", &|s| {
        s["status"] == "free"
    });
    wait("a green light", &huddle, "Panel_1", &|s| {
        s["light"] == "green"
    });
    wait(
        "the booking gone from the calendar",
        &huddle,
        "Calendar_1",
        &|s| {
            s["bookings"]
                .as_array()
                .is_some_and(|b| b.iter().all(|x| x["id"] != current))
        },
    );
    exec(&huddle, "Bookings_1", "book_now", "[15]");
    wait("booked from the room", &huddle, "Bookings_1", &|s| {
        s["status"] == "busy"
    });
    wait("red again", &huddle, "Panel_1", &|s| s["light"] == "red");
    let (status, logs) = l.terminate();
    assert_eq!(status.code(), Some(0), "{logs:?}");
}
