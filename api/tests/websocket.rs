//! Integration tier: the WebSocket control endpoint in-process (the real server, engine
//! and store; `support`), driven by a tokio-tungstenite client as an app would. Covers
//! PlaceOS's protocol frame by frame (snapshot in `tests/snapshots/websocket.json`), every
//! WebSocket row of the security matrix (credentials, Origin, frame size, malformed
//! frames, a bind flood, a client that never reads, another tenant), coalescing,
//! bindings that follow the configuration, and graceful shutdown.

mod support;

use futures_util::{SinkExt, StreamExt};
use lintel_api::ws::WsConfig;
use lintel_model::{ControlSystem, IdKind, Module, User, new_id};
use lintel_store::{Actor, StoreExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::Fixture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, client_async};

const WAIT: Duration = Duration::from_secs(10);

struct Client {
    ws: WebSocketStream<TcpStream>,
    next: i64,
    /// Every text frame received, as sent (for the snapshot).
    log: Vec<String>,
}

/// What a read gave.
#[derive(Debug)]
enum Got {
    Json(Value),
    Text(String),
    Closed(Option<(u16, String)>),
}

impl Client {
    async fn connect(url: &str) -> Client {
        Self::try_connect(url, &[]).await.expect("handshake")
    }

    async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let addr = req.uri().authority().unwrap().as_str().to_owned();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = client_async(req, tcp).await?;
        Ok(Client {
            ws,
            next: 1,
            log: Vec::new(),
        })
    }

    async fn send(
        &mut self,
        cmd: &str,
        sys: &str,
        module: &str,
        index: u32,
        name: &str,
        args: Option<Value>,
    ) -> i64 {
        let id = self.next;
        self.next += 1;
        let mut frame =
            json!({"id": id, "cmd": cmd, "sys": sys, "mod": module, "index": index, "name": name});
        if let Some(a) = args {
            frame["args"] = a;
        }
        self.text(&frame.to_string()).await;
        id
    }

    async fn text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).await.unwrap();
    }

    async fn next(&mut self) -> Got {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within 10 s");
            match m {
                None | Some(Err(_)) => return Got::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    self.log.push(t.to_string());
                    return match serde_json::from_str(&t) {
                        Ok(v) => Got::Json(v),
                        Err(_) => Got::Text(t.to_string()),
                    };
                }
                Some(Ok(Message::Close(c))) => {
                    return Got::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The frames received since the last call, as sent (`sorted` where their order is
    /// not defined), without pongs.
    fn take_log(&mut self, sorted: bool) -> Vec<String> {
        let mut log: Vec<String> = std::mem::take(&mut self.log)
            .into_iter()
            .filter(|t| t != "pong")
            .collect();
        if sorted {
            log.sort();
        }
        log
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Got::Json(v) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    /// Nothing else is queued for this client: a ping's pong comes next.
    async fn nothing_pending(&mut self) {
        self.text("ping").await;
        match self.next().await {
            Got::Text(t) if t == "pong" => {}
            other => panic!("expected only pong, got {other:?}"),
        }
    }

    async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.next().await {
                Got::Closed(c) => return c,
                Got::Json(_) | Got::Text(_) => continue,
            }
        }
    }
}

fn cfg() -> WsConfig {
    WsConfig::default()
}

/// Replace ids with their kind, so the transcript does not change from run to run.
fn normalize(v: &mut Value, f: &Fixture) {
    match v {
        Value::String(s) => {
            for (id, name) in [
                (&f.system, "<sys>"),
                (&f.live, "<Misbehave_1>"),
                (&f.quiet, "<Misbehave_2>"),
            ] {
                *s = s.replace(id.as_str(), name);
            }
            // A panic's text names a line of the fixture's source.
            if let Some(at) = s.find("; guest stderr: ") {
                let end = s[at..]
                    .find("\",\"error_code\"")
                    .map_or(s.len(), |e| at + e);
                s.replace_range(at..end, "; guest stderr: <panic message>");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| normalize(v, f)),
        Value::Object(o) => o.values_mut().for_each(|v| normalize(v, f)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_protocol_answers_as_placeos_does() {
    let f = support::start(cfg()).await.unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.admin_jwt))).await;
    let mut transcript: Vec<Value> = Vec::new();
    let mut note = |what: &str, sent: Value, got: Vec<String>, f: &Fixture| {
        let mut entry = json!({"case": what, "sent": sent, "received": got});
        normalize(&mut entry, f);
        transcript.push(entry);
    };
    let sys = f.system.clone();
    let w = f.writer();

    c.text("ping").await;
    let Got::Text(pong) = c.next().await else {
        panic!("pong")
    };
    assert_eq!(pong, "pong");

    // A key with no value yet: success only; its first value arrives as a notify.
    let id = c.send("bind", &sys, "Misbehave", 2, "power", None).await;
    assert_eq!(c.json().await["type"], "success");
    c.nothing_pending().await;
    w.set("power", json!(true));
    let n = c.json().await;
    assert_eq!(n["id"], id);
    note(
        "bind a key without a value, then it is set",
        json!({"cmd": "bind", "index": 2, "name": "power"}),
        c.take_log(false),
        &f,
    );

    // A key with a value: success, then the value.
    w.set("volume", json!({"level": 30, "muted": false}));
    c.send("bind", &sys, "Misbehave", 2, "volume", None).await;
    let (ok, value) = (c.json().await, c.json().await);
    assert_eq!(
        (ok["type"].clone(), value["value"]["level"].clone()),
        (json!("success"), json!(30))
    );
    note(
        "bind a key with a value",
        json!({"cmd": "bind", "index": 2, "name": "volume"}),
        c.take_log(false),
        &f,
    );

    // Binding it again only answers.
    c.send("bind", &sys, "Misbehave", 2, "volume", None).await;
    assert_eq!(c.json().await["type"], "success");
    c.nothing_pending().await;
    note(
        "bind the same key again",
        json!({"cmd": "bind", "index": 2, "name": "volume"}),
        c.take_log(false),
        &f,
    );

    // Exec: its result, meta and 200; the status it sets reaches a binding.
    c.send("bind", &sys, "Misbehave", 1, "remembered", None)
        .await;
    let bound = c.json().await;
    let id = c
        .send(
            "exec",
            &sys,
            "Misbehave",
            1,
            "remember",
            Some(json!(["hello"])),
        )
        .await;
    let got = [bound, c.json().await, c.json().await];
    assert!(got.iter().any(|v| v["id"] == id && v["type"] == "success"));
    assert!(
        got.iter()
            .any(|v| v["type"] == "notify" && v["value"] == "hello")
    );
    note(
        "exec a function that sets a bound status",
        json!({"cmd": "exec", "name": "remember", "args": ["hello"]}),
        c.take_log(true),
        &f,
    );

    let id = c
        .send("exec", &sys, "Misbehave", 1, "ping", Some(json!([])))
        .await;
    let got = c.json().await;
    assert_eq!(
        (got["id"].clone(), got["value"].clone()),
        (json!(id), json!("pong"))
    );
    note(
        "exec with a result",
        json!({"cmd": "exec", "name": "ping", "args": []}),
        c.take_log(false),
        &f,
    );

    for (what, module, index, name, args) in [
        ("exec an unknown function", "Misbehave", 1, "fly", json!([])),
        (
            "exec with a bad argument",
            "Misbehave",
            1,
            "remember",
            json!([42]),
        ),
        (
            "exec on a module the system lacks",
            "Misbehave",
            9,
            "ping",
            json!([]),
        ),
    ] {
        let id = c
            .send("exec", &sys, module, index, name, Some(args.clone()))
            .await;
        let got = c.json().await;
        assert_eq!(
            (got["id"].clone(), got["type"].clone()),
            (json!(id), json!("error")),
            "{what}: {got}"
        );
        note(
            what,
            json!({"cmd": "exec", "mod": module, "index": index, "name": name, "args": args}),
            c.take_log(false),
            &f,
        );
    }

    // A driver that panics: its error; the status it had is gone (null) until it sets
    // it again.
    let id = c
        .send("exec", &sys, "Misbehave", 1, "panic", Some(json!([])))
        .await;
    let mut got = [c.json().await, c.json().await];
    got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    assert_eq!(
        (got[0]["id"].clone(), got[0]["error_code"].clone()),
        (json!(id), json!(3))
    );
    assert_eq!(
        (got[1]["type"].clone(), got[1]["value"].clone()),
        (json!("notify"), Value::Null)
    );
    note(
        "exec a function that panics",
        json!({"cmd": "exec", "name": "panic", "args": []}),
        c.take_log(true),
        &f,
    );

    let id = c
        .send("bind", "sys-doesnotexist", "Misbehave", 1, "power", None)
        .await;
    let got = c.json().await;
    assert_eq!(
        (got["id"].clone(), got["error_code"].clone()),
        (json!(id), json!(5))
    );
    note(
        "bind in a system that does not exist",
        json!({"cmd": "bind", "sys": "sys-doesnotexist"}),
        c.take_log(false),
        &f,
    );

    // A module the system lacks: bound, waiting for it (as PlaceOS).
    c.send("bind", &sys, "Misbehave", 9, "power", None).await;
    let got = c.json().await;
    assert_eq!(got["type"], "success");
    c.nothing_pending().await;
    note(
        "bind on a module the system lacks (yet)",
        json!({"cmd": "bind", "index": 9}),
        c.take_log(false),
        &f,
    );

    // Unbind: success, and no more values.
    let id = c.send("unbind", &sys, "Misbehave", 2, "power", None).await;
    assert_eq!(c.json().await, json!({"id": id, "type": "success"}));
    w.set("power", json!(false));
    c.nothing_pending().await;
    note(
        "unbind",
        json!({"cmd": "unbind", "index": 2, "name": "power"}),
        c.take_log(false),
        &f,
    );

    for (what, frame) in [
        ("not JSON", "{nope".to_string()),
        // Written out, so the frame's field order does not depend on serde_json's features.
        (
            "unknown command",
            format!(r#"{{"id":90,"cmd":"fly","sys":"{sys}","mod":"Misbehave","name":"x"}}"#),
        ),
        (
            "missing field",
            format!(r#"{{"id":91,"cmd":"bind","sys":"{sys}"}}"#),
        ),
        (
            "wrong type",
            format!(
                r#"{{"id":92,"cmd":"bind","sys":"{sys}","mod":"Misbehave","index":"1","name":"x"}}"#
            ),
        ),
        (
            "unknown field",
            format!(
                r#"{{"id":93,"cmd":"bind","sys":"{sys}","mod":"Misbehave","name":"x","level":1}}"#
            ),
        ),
        ("not an object", "[1, 2]".to_string()),
    ] {
        c.text(&frame).await;
        assert_eq!(c.json().await["type"], "error", "{what}");
        note(what, Value::String(frame), c.take_log(false), &f);
    }
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(c.json().await["error_code"], 0);
    note("a binary frame", json!("<3 bytes>"), c.take_log(false), &f);
    // After all that the connection still works.
    c.nothing_pending().await;

    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/websocket.json");
    // Keys sorted: the same file whether or not serde_json keeps insertion order (its
    // `preserve_order` feature is on when the whole workspace is built).
    let now = serde_json::to_string_pretty(&lintel_api::openapi::sorted(Value::Array(transcript)))
        .unwrap()
        + "\n";
    if std::env::var_os("LINTEL_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &now).unwrap();
    }
    let stored = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        stored == now,
        "frames differ from {}: review, then rerun with LINTEL_UPDATE_SNAPSHOTS=1\n{now}",
        file.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_streams_a_modules_log_lines_to_support_and_above() {
    let f = support::start(cfg()).await.unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.admin_jwt))).await;
    // The backoffice sends the module id as `mod`.
    let id = c.send("debug", &f.system, &f.live, 1, "debug", None).await;
    assert_eq!(c.json().await, json!({"id": id, "type": "success"}));
    let exec = c
        .send("exec", &f.system, "Misbehave", 1, "flood", Some(json!([3])))
        .await;
    // The log lines and the exec's reply travel separately: their order is not defined.
    let mut lines = Vec::new();
    let mut replied = false;
    while lines.len() < 3 || !replied {
        let v = c.json().await;
        if v["type"] == "debug" {
            assert_eq!(
                (v["id"].clone(), v["mod"].clone(), v["level"].clone()),
                (json!(id), json!(f.live), json!("info"))
            );
            lines.push(v["msg"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(
                (v["id"].clone(), v["type"].clone()),
                (json!(exec), json!("success"))
            );
            replied = true;
        }
    }
    assert_eq!(lines, ["flood line 0", "flood line 1", "flood line 2"]);
    c.send("ignore", &f.system, &f.live, 1, "debug", None).await;
    assert_eq!(c.json().await["type"], "success");
    c.send("exec", &f.system, "Misbehave", 1, "flood", Some(json!([2])))
        .await;
    assert_eq!(c.json().await["type"], "success");
    c.nothing_pending().await;

    // By name too; staff may not read logs.
    let mut s = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    s.send("debug", &f.system, "Misbehave", 1, "debug", None)
        .await;
    let got = s.json().await;
    assert_eq!(
        (
            got["type"].clone(),
            got["error_code"].clone(),
            got["code"].clone()
        ),
        (json!("error"), json!(2), json!(403))
    );
    let id = c
        .send("debug", &f.system, "Misbehave", 1, "debug", None)
        .await;
    assert_eq!(c.json().await, json!({"id": id, "type": "success"}));
}

/// Send a raw handshake; answer the status and body.
async fn handshake(f: &Fixture, path: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        f.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n")
        || (got.starts_with(b"HTTP/1.1 4") && !String::from_utf8_lossy(&got).ends_with('}'))
    {
        assert!(
            Instant::now() < deadline,
            "no answer: {}",
            String::from_utf8_lossy(&got)
        );
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_refused_with_clear_answers() {
    let f = support::start(WsConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        ..cfg()
    })
    .await
    .unwrap();
    let path = "/api/engine/v2/systems/control";
    let tok = format!("{path}?bearer_token={}", f.staff_jwt);
    let (status, body) = handshake(&f, path, "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing bearer token"), "{body}");
    let (status, body) = handshake(&f, &format!("{path}?bearer_token=nonsense"), "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = handshake(&f, &tok, "Origin: https://evil.example.net\r\n").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin"), "{body}");
    assert_eq!(
        handshake(&f, &tok, "Origin: https://app.example.com\r\n")
            .await
            .0,
        101
    );
    assert_eq!(
        handshake(&f, &tok, &format!("Origin: http://{}\r\n", f.addr))
            .await
            .0,
        101
    );
    assert_eq!(handshake(&f, &tok, "").await.0, 101);
    // As @placeos/ts-client sends credentials from a browser or with an API key.
    assert_eq!(
        handshake(
            &f,
            path,
            &format!("Cookie: theme=dark; bearer_token={}\r\n", f.staff_jwt)
        )
        .await
        .0,
        101
    );
    assert_eq!(
        handshake(
            &f,
            &format!("{path}?fixed_device=true&api-key={}", f.staff_key),
            ""
        )
        .await
        .0,
        101
    );
    let (status, body) = handshake(
        &f,
        &format!("/api/engine/v2/systems/other?bearer_token={}", f.staff_jwt),
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // A key scoped to systems only may not hold live state.
    let (_, narrow) = lintel_auth::ApiKeys::new(f.store.clone())
        .create(
            &Actor::system(),
            &f.tenant.id,
            lintel_auth::NewApiKey {
                name: "systems only".into(),
                role: lintel_model::Role::Staff,
                scopes: vec!["systems.read".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (status, body) = handshake(&f, path, &format!("X-API-Key: {narrow}\r\n")).await;
    assert_eq!(status, 403, "{body}");

    // Without the upgrade: 426 in the one error format.
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    s.write_all(format!("GET {tok} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 426"), "{out}");
    assert!(out.contains("\"error\":\"upgrade_required\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_systems_answer_as_missing_ones() {
    let f = support::start(cfg()).await.unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.other_jwt))).await;
    for cmd in ["bind", "exec"] {
        c.send(cmd, &f.system, "Misbehave", 1, "ping", Some(json!([])))
            .await;
        let got = c.json().await;
        assert_eq!(got["error_code"], 5, "{cmd}: {got}");
    }
    c.send("debug", &f.system, &f.live, 1, "debug", None).await;
    assert_eq!(c.json().await["error_code"], 6);
    // Its own system works.
    c.send(
        "exec",
        &f.other_system,
        "Misbehave",
        1,
        "ping",
        Some(json!([])),
    )
    .await;
    assert_eq!(c.json().await["value"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_closes_the_connection_with_1009() {
    let f = support::start(WsConfig {
        max_frame_bytes: 1024,
        ..cfg()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    c.text(&"x".repeat(2000)).await;
    let got = c.json().await;
    assert_eq!(got["error_code"], 1);
    assert!(
        got["msg"].as_str().unwrap().contains("1024-byte limit"),
        "{got}"
    );
    let (code, reason) = c.closed().await.expect("a close frame");
    assert_eq!(code, u16::from(CloseCode::Size));
    assert!(reason.contains("1024"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_binds_is_bounded_and_the_connection_survives() {
    let f = support::start(WsConfig {
        max_binds: 100,
        messages_per_second: 100_000,
        message_burst: 100_000,
        ..cfg()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    for i in 0..10_000 {
        let frame = json!({"id": i + 1, "cmd": "bind", "sys": f.system, "mod": "Misbehave", "index": 2, "name": format!("k{i}")});
        c.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..10_000 {
        let v = c.json().await;
        match (v["type"].as_str(), v["error_code"].as_i64()) {
            (Some("success"), _) => ok += 1,
            (Some("error"), Some(1)) => {
                assert!(v["msg"].as_str().unwrap().contains("bind limit"), "{v}");
                refused += 1;
            }
            other => panic!("{other:?}: {v}"),
        }
    }
    assert_eq!((ok, refused), (100, 9_900));
    c.nothing_pending().await;
    // Its bindings work.
    f.writer().set("k7", json!(7));
    assert_eq!(c.json().await["value"], 7);
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    const CHANGES: u32 = 8192;
    const CHANGE_BYTES: usize = 4096;
    const STUCK: usize = 10;
    let limits = WsConfig {
        outbound_frames: 64,
        outbound_bytes: 64 * 1024,
        slow_client_timeout: Duration::from_secs(1),
        ..cfg()
    };
    let f = support::start(limits.clone()).await.unwrap();
    let url = f.ws_url(&format!("?bearer_token={}", f.staff_jwt));
    let mut healthy = Client::connect(&url).await;
    healthy
        .send("bind", &f.system, "Misbehave", 2, "big", None)
        .await;
    assert_eq!(healthy.json().await["type"], "success");
    let w = f.writer();
    let filler = "x".repeat(CHANGE_BYTES);
    let sessions = f.websockets.clone();
    // 32 MiB of changes, paced so the fan-out keeps up (every value is queued for every
    // client); the healthy client reads along to the last one. Answers the most bytes
    // seen queued across sessions.
    let flood = async |mut healthy: Client, round: u32| {
        let last = json!(round * 1_000_000 + CHANGES - 1);
        let reader = tokio::spawn(async move {
            loop {
                let v = healthy.json().await;
                if v["value"]["n"] == last {
                    return healthy;
                }
            }
        });
        let mut most = 0;
        for n in 0..CHANGES {
            w.set("big", json!({"n": round * 1_000_000 + n, "fill": filler}));
            if n % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                most = most.max(sessions.queued_bytes());
            }
        }
        let healthy = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the healthy client got the last value")
            .unwrap();
        (healthy, most)
    };
    // Twice with the healthy client alone: the first fills the status bus (it keeps its
    // last 4096 changes); the second shows what such a flood costs (the allocator keeps
    // some of what it freed).
    let (healthy, _) = flood(healthy, 0).await;
    let start = rss_bytes();
    let (healthy, _) = flood(healthy, 1).await;
    let before = rss_bytes();
    let alone = before.saturating_sub(start);
    // Clients with tiny receive buffers bind the same key and never read again.
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(f.addr).await.unwrap();
        let (mut ws, _) = client_async(url.as_str(), tcp).await.unwrap();
        let bind = json!({"id": 1, "cmd": "bind", "sys": f.system, "mod": "Misbehave", "index": 2, "name": "big"});
        ws.send(Message::text(bind.to_string())).await.unwrap();
        stuck.push(ws);
    }
    let deadline = Instant::now() + WAIT;
    while f.websockets.sessions() < 1 + STUCK {
        assert!(
            Instant::now() < deadline,
            "{} sessions",
            f.websockets.sessions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut healthy, most) = flood(healthy, 2).await;
    // Each queue coalesces at its limit and is cut off at twice it.
    let bound = (STUCK + 1) as u64 * 2 * limits.outbound_bytes as u64;
    assert!(most <= bound, "{most} bytes queued, more than {bound}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.websockets.sessions() > 1 {
        assert!(
            Instant::now() < deadline,
            "{} sessions still open",
            f.websockets.sessions()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.websockets.queued_bytes(), 0);
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < alone + (16 << 20),
        "RSS grew {} MiB while {STUCK} clients did not read 32 MiB of changes, {} MiB without them",
        grown >> 20,
        alone >> 20
    );
    healthy.nothing_pending().await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_gets_the_latest_value_of_each_binding_in_order() {
    let f = support::start(WsConfig {
        outbound_frames: 16,
        ..cfg()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    for key in ["a", "b"] {
        c.send("bind", &f.system, "Misbehave", 2, key, None).await;
        assert_eq!(c.json().await["type"], "success");
    }
    let w = f.writer();
    for n in 0..5000 {
        w.set("a", json!(n));
        w.set("b", json!(-n));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.last() != Some(&4999) || b.last() != Some(&-4999) {
        let v = c.json().await;
        let n = v["value"].as_i64().unwrap();
        match v["meta"]["name"].as_str() {
            Some("a") => a.push(n),
            _ => b.push(n),
        }
    }
    assert!(a.windows(2).all(|p| p[0] < p[1]), "a out of order");
    assert!(b.windows(2).all(|p| p[0] > p[1]), "b out of order");
    c.nothing_pending().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_follow_the_systems_configuration() {
    let f = support::start(cfg()).await.unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    // Misbehave_3 does not exist yet.
    c.send("bind", &f.system, "Misbehave", 3, "power", None)
        .await;
    assert_eq!(c.json().await["type"], "success");
    let driver = f
        .store
        .get::<Module>(&f.tenant.id, &f.live)
        .await
        .unwrap()
        .unwrap()
        .driver_id;
    let third = Module {
        id: new_id(IdKind::Module),
        tenant_id: f.tenant.id.clone(),
        driver_id: driver,
        control_system_id: Some(f.system.clone()),
        running: false,
        ..Default::default()
    };
    let third = f.store.create(&Actor::system(), third).await.unwrap();
    f.engine
        .status_bus()
        .module(&third.id)
        .set("power", json!("on"));
    let mut system: ControlSystem = f.store.get(&f.tenant.id, &f.system).await.unwrap().unwrap();
    system.modules.push(third.id.clone());
    let system = f.store.update(&Actor::system(), system).await.unwrap();
    let v = c.json().await;
    assert_eq!(
        (v["type"].clone(), v["value"].clone()),
        (json!("notify"), json!("on"))
    );
    // Removed again: the binding's value goes (null) and it waits once more.
    let mut system = system;
    system.modules.retain(|m| *m != third.id);
    f.store.update(&Actor::system(), system).await.unwrap();
    let v = c.json().await;
    assert_eq!(
        (v["type"].clone(), v["value"].clone()),
        (json!("notify"), Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_loses_access_on_the_next_request() {
    let f = support::start(cfg()).await.unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    c.send("bind", &f.system, "Misbehave", 2, "power", None)
        .await;
    assert_eq!(c.json().await["type"], "success");
    let mut u: User = f
        .store
        .get(&f.tenant.id, &f.staff.id)
        .await
        .unwrap()
        .unwrap();
    u.disabled = true;
    f.store.update(&Actor::system(), u).await.unwrap();
    c.send("exec", &f.system, "Misbehave", 1, "ping", Some(json!([])))
        .await;
    let got = c.json().await;
    assert_eq!(
        (got["error_code"].clone(), got["code"].clone()),
        (json!(2), json!(401)),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_running_execs_then_closes_with_a_reason() {
    let f = support::start(cfg()).await.unwrap();
    let url = f.ws_url(&format!("?bearer_token={}", f.admin_jwt));
    let mut c = Client::connect(&url).await;
    // `later` answers only when `answer_later` is called.
    let id = c
        .send("exec", &f.system, "Misbehave", 1, "later", Some(json!([])))
        .await;
    c.nothing_pending().await;
    let closing = {
        let ws = f.websockets.clone();
        tokio::spawn(async move { ws.close(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while shutting down.
    assert!(Client::try_connect(&url, &[]).await.is_err());
    f.engine
        .exec(&f.tenant.id, &f.live, "answer_later", vec![json!("done")])
        .await
        .unwrap();
    let v = c.json().await;
    assert_eq!(
        (v["id"].clone(), v["value"].clone()),
        (json!(id), json!("done"))
    );
    assert_eq!(
        c.closed().await,
        Some((1001, "server shutting down".into()))
    );
    closing.await.unwrap();
    assert_eq!(f.websockets.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_rate_are_read_later_not_dropped() {
    let f = support::start(WsConfig {
        messages_per_second: 20,
        message_burst: 5,
        ..cfg()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&f.ws_url(&format!("?bearer_token={}", f.staff_jwt))).await;
    let started = Instant::now();
    for _ in 0..45 {
        c.ws.feed(Message::text("ping")).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    for i in 0..45 {
        match c.next().await {
            Got::Text(t) if t == "pong" => {}
            other => panic!("pong {i}: {other:?}"),
        }
    }
    // 5 at once, then 20 a second: the last 40 take at least 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "45 requests answered in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_and_one_answering_pings_is_kept() {
    let f = support::start(WsConfig {
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        ..cfg()
    })
    .await
    .unwrap();
    let url = f.ws_url(&format!("?bearer_token={}", f.staff_jwt));
    let mut silent = Client::connect(&url).await;
    let mut alive = Client::connect(&url).await;
    // The live client reads (tungstenite answers each ping with a pong) for 2.5 s.
    let reader = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), alive.ws.next()).await
            {
                assert!(!matches!(m, Ok(Message::Close(_))), "closed: {m:?}");
            }
        }
        alive
    });
    // The silent one reads nothing (so it answers no ping) for 2.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, reason) = silent.closed().await.expect("a close frame");
    assert_eq!(code, 1000);
    assert!(reason.starts_with("idle"), "{reason}");
    let mut alive = reader.await.unwrap();
    alive.nothing_pending().await;
}
