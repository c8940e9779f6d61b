//! MQTT publishing through the real binary: a broker added over the REST API, the demo
//! building's state read back with `mosquitto_sub` (what the docs tell users to run),
//! readiness and the broker's state through a broker outage caused by wrong credentials.

use crate::harness::*;
use lintel_testkit::{MQTT_PASSWORD, MQTT_USER, Mosquitto};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const V2: &str = "/api/engine/v2";

/// `mosquitto_sub -v` on `filter`, its lines collected in the background.
pub(crate) struct Sub {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    pub(crate) fn start(m: &Mosquitto, filter: &str) -> Sub {
        let sbin = "/usr/sbin/mosquitto_sub";
        let bin = if std::path::Path::new(sbin).exists() {
            sbin
        } else {
            "mosquitto_sub"
        };
        let mut child = Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &m.port().to_string()])
            .args(["-u", MQTT_USER, "-P", MQTT_PASSWORD, "-v", "-t", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let into = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                into.lock().unwrap().push(l);
            }
        });
        Sub { child, lines }
    }

    /// The first line `pred` accepts, waiting up to 20 s.
    /// Every line received so far (`<topic> <payload>`).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub(crate) fn wait(&self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> (String, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for l in self.lines.lock().unwrap().iter() {
                let Some((topic, payload)) = l.split_once(' ') else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(payload) else {
                    continue;
                };
                if pred(topic, &v) {
                    return (topic.to_string(), v);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the broker; got {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(l: &Lintel, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let mut req = client().request(method, l.url(path)).bearer_auth(token);
    if !body.is_null() {
        req = req.json(&body);
    }
    let r = req.send().unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert!(status.is_success(), "{status}: {v}");
    v
}

fn ready(l: &Lintel) -> (u16, Value) {
    let r = client().get(l.url(&format!("{V2}/ready"))).send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

#[test]
fn the_demo_building_reaches_a_broker_added_over_the_api() {
    let m = Mosquitto::start(None);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);
    assert_eq!(ready(&l).1["checks"]["mqtt"], json!("off"));

    let sub = Sub::start(&m, "placeos/#");
    let broker = send(
        &l,
        &token,
        reqwest::Method::POST,
        &format!("{V2}/brokers"),
        json!({
            "name": "Site broker",
            "host": "127.0.0.1",
            "port": m.port(),
            "username": MQTT_USER,
            "password": MQTT_PASSWORD,
        }),
    );
    let id = broker["id"].as_str().unwrap().to_string();

    // The demo displays' power and the rooms' names arrive, retained, on PlaceOS topics.
    let (topic, v) = sub.wait("display power", |t, v| {
        t.ends_with("/Display/1/power") && v["value"].is_boolean()
    });
    let levels: Vec<&str> = topic.split('/').collect();
    assert_eq!(levels.len(), 12, "{topic}");
    assert_eq!((levels[0], levels[2], levels[3]), ("placeos", "state", "_"));
    assert!(v["time"].is_i64(), "{v}");
    let system = levels[7].to_string();
    let (_, meta) = sub.wait("the room's metadata", |t, _| {
        t == format!("placeos/org/metadata/{system}")
    });
    assert!(meta["value"]["name"].is_string(), "{meta}");
    sub.wait("the birth message", |t, v| {
        t == format!("placeos/status/lintel-{id}") && v["value"] == json!("online")
    });
    let (status, body) = ready(&l);
    assert_eq!(
        (status, &body["checks"]["mqtt"]),
        (200, &json!("ok")),
        "{body}"
    );
    let shown = send(
        &l,
        &token,
        reqwest::Method::GET,
        &format!("{V2}/brokers/{id}"),
        Value::Null,
    );
    assert_eq!(shown["state"]["connected"], json!(true), "{shown}");
    assert_eq!(shown["password"], json!(true), "{shown}");

    // A change made over the REST API is published.
    let r = l.post(
        &token,
        &format!("{V2}/systems/{system}/Display_1/power"),
        "[true]",
    );
    assert_eq!(r.status(), 200);
    sub.wait("the power change", |t, v| {
        t.contains(&format!("/{system}/"))
            && t.ends_with("/Display/1/power")
            && v["value"] == json!(true)
    });

    // Wrong credentials: degraded (still 200), the reason shown to admins, no password.
    let wrong = "wrong-broker-password-e2e";
    send(
        &l,
        &token,
        reqwest::Method::PATCH,
        &format!("{V2}/brokers/{id}"),
        json!({"password": wrong}),
    );
    let state = eventually("the broker's refusal", || {
        let b = send(
            &l,
            &token,
            reqwest::Method::GET,
            &format!("{V2}/brokers/{id}"),
            Value::Null,
        );
        b["state"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not authorized"))
            .then(|| b["state"].clone())
    });
    assert_eq!(state["connected"], json!(false), "{state}");
    let (status, body) = ready(&l);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["mqtt"], json!("degraded"), "{body}");
    assert_eq!(body["status"], json!("degraded"), "{body}");
    assert_eq!(body["mqtt_brokers_disconnected"], json!(1), "{body}");

    let (exit, logs) = l.terminate();
    assert_eq!(exit.code(), Some(0), "{logs:?}");
    assert!(
        logs.iter().any(|l| l.contains("not authorized")),
        "the refusal is logged"
    );
    for secret in [MQTT_PASSWORD, wrong] {
        assert!(
            !logs.iter().any(|l| l.contains(secret)),
            "a broker password reached the log"
        );
    }
}
