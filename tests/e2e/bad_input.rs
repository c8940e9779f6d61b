//! Start-up mistakes stop the process with a clear message and a non-zero exit code,
//! writing nothing; bad API calls get a clear error in one format.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

const QUICK: Duration = Duration::from_secs(30);

#[test]
fn an_invalid_config_value_names_the_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_HTTP__PORT", "eighty").arg("serve");
    let (code, out) = run_to_exit(cmd, QUICK);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("`http.port`") && out.contains("LINTEL_HTTP__PORT"),
        "{out}"
    );
    assert!(!data.exists(), "nothing may be written on a config error");
}

#[test]
fn an_unknown_config_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("lintel.toml");
    std::fs::write(&file, "[http]\nprot = 9000\n").unwrap();
    let mut cmd = command(&data);
    cmd.arg("--config").arg(&file).arg("serve");
    let (code, out) = run_to_exit(cmd, QUICK);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown key `http.prot` (in "), "{out}");
    assert!(!data.exists());

    let mut cmd = command(&data);
    cmd.arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("serve");
    let (code, out) = run_to_exit(cmd, QUICK);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("missing.toml") && out.contains("not found"),
        "{out}"
    );
}

#[test]
fn a_port_in_use_fails_before_writing_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_HTTP__PORT", port.to_string()).arg("serve");
    let (code, out) = run_to_exit(cmd, QUICK);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("cannot listen on 127.0.0.1:{port}")) && out.contains("in use"),
        "{out}"
    );
    assert!(!data.exists());
}

#[test]
fn an_unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory must be: unwritable even for root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let data = blocker.join("data");
    let mut cmd = command(&data);
    cmd.arg("serve");
    let (code, out) = run_to_exit(cmd, QUICK);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("data_dir") && out.contains("cannot create"),
        "{out}"
    );
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = command(&data);
    first
        .env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()))
        .env("LINTEL_BOOTSTRAP__DEMO", "false");
    let _running = Lintel::start(first);
    let mut second = command(&data);
    second.arg("serve");
    let (code, out) = run_to_exit(second, QUICK);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("in use by another Lintel process"), "{out}");
}

#[test]
fn the_api_refuses_bad_credentials_and_bad_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()))
        .env("LINTEL_HTTP__MAX_BODY_BYTES", "4096");
    let l = Lintel::start(cmd);
    let c = client();

    // Missing, malformed and forged credentials → 401 in the one error format.
    let systems = l.url("/api/engine/v2/systems");
    let r = c.get(&systems).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("missing bearer token")
    );
    for bad in ["garbage", "a.b.c", "Bearer"] {
        let r = c.get(&systems).bearer_auth(bad).send().unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }
    // A well-formed token from another Lintel (another signing key) is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = command(&other_dir.path().join("data"));
    other
        .env(
            "LINTEL_ADMIN_PASSWORD_FILE",
            password_file(other_dir.path()),
        )
        .env("LINTEL_BOOTSTRAP__DEMO", "false");
    let other = Lintel::start(other);
    let foreign = other.token(PASSWORD);
    assert_eq!(l.get(&foreign, "/api/engine/v2/systems").status(), 401);
    drop(other);

    // Wrong password → OAuth2 invalid_grant; the attempt is logged without the secret.
    let r = l.login("not-the-password");
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"], "invalid_grant");
    let r = c
        .post(l.url("/auth/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(
        r.json::<Value>().unwrap()["error"],
        "unsupported_grant_type"
    );
    // The PlaceOS client sends credentials in the query string: accepted, never logged.
    let r = c
        .post(format!(
            "{}?grant_type=password&username={ADMIN}&password={PASSWORD}&client_id=x",
            l.url("/auth/oauth/token")
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!(
            "{}?bearer_token=sekrit-query-token",
            l.url("/api/engine/v2/systems")
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    std::thread::sleep(Duration::from_millis(100));
    let logs = l.stdout().join("\n");
    assert!(
        logs.contains("/auth/oauth/token"),
        "the access log records the path"
    );
    assert!(
        !logs.contains(PASSWORD) && !logs.contains("sekrit-query-token"),
        "credentials reached the log"
    );

    let token = l.token(PASSWORD);
    // Listing parameters: bad ones get the one error format; paging and search work.
    for (query, complaint) in [
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("limit=20000", "limit"),
    ] {
        let r = l.get(&token, &format!("/api/engine/v2/systems?{query}"));
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"], "bad_request", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(complaint),
            "{query}: {body}"
        );
    }
    let r = l.get(&token, "/api/engine/v2/systems?limit=2");
    assert_eq!(r.headers()["x-total-count"], "4");
    let next = r.headers()["x-next-cursor"].to_str().unwrap().to_string();
    let first: Vec<Value> = r.json().unwrap();
    let r = l.get(
        &token,
        &format!("/api/engine/v2/systems?limit=2&after={next}"),
    );
    assert!(
        r.headers().get("x-next-cursor").is_none(),
        "four rooms, two pages"
    );
    let second: Vec<Value> = r.json().unwrap();
    assert_eq!((first.len(), second.len()), (2, 2));
    assert!(
        first
            .iter()
            .all(|a| second.iter().all(|b| a["id"] != b["id"]))
    );
    let r = l.get(&token, "/api/engine/v2/systems?q=NO-SUCH-ROOM");
    assert_eq!(r.headers()["x-total-count"], "0");
    let systems: Vec<Value> = l.get(&token, "/api/engine/v2/systems").json().unwrap();
    let sys = systems[0]["id"].as_str().unwrap();
    let exec = |path: &str, body: &str| {
        let r = l.post(
            &token,
            &format!("/api/engine/v2/systems/{sys}/{path}"),
            body,
        );
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    // Unknown things → 404.
    assert_eq!(exec("Display_9/power", "[true]").0, 404);
    assert_eq!(exec("Display_1/self_destruct", "[]").0, 404);
    assert_eq!(
        l.get(&token, "/api/engine/v2/systems/sys-doesnotexist/Display_1")
            .status(),
        404
    );
    assert_eq!(
        l.get(&token, "/api/engine/v2/systems/../../etc/passwd")
            .status(),
        404
    );
    assert_eq!(l.get(&token, "/api/engine/v2/nonsense").status(), 404);
    // Bad arguments → 400 naming the parameter; malformed JSON → 400; the driver's own
    // refusal → 500 with its message.
    let (status, body) = exec("Display_1/power", "[\"yes\"]");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("`state`"),
        "{body}"
    );
    let (status, body) = exec("Display_1/power", "[tru");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("JSON array"),
        "{body}"
    );
    let (status, body) = exec("Display_1/power", "{\"state\": true}");
    assert_eq!(status, 400, "{body}");
    // Checked against the parameter's JSON Schema before the driver sees it.
    let (status, body) = exec("Display_1/volume", "[101]");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("maximum of 100"),
        "{body}"
    );
    // Body over the limit → 413.
    let huge = format!("[\"{}\"]", "x".repeat(8192));
    assert_eq!(exec("Display_1/input", &huge).0, 413);
    // Nothing above changed the display's power.
    let power: Value = l
        .get(
            &token,
            &format!("/api/engine/v2/systems/{sys}/Display_1/power"),
        )
        .json()
        .unwrap();
    assert_eq!(power, json!(false));
    // Every response carries a request id.
    let r = l.get(&token, "/api/engine/v2/systems");
    assert!(r.headers().contains_key("x-request-id"));
}
