//! The master keyring end to end: no key, no start; sealed settings reach drivers (and only
//! them); `lintel keys rotate` re-seals everything online without logging anyone out; the
//! old key can then be dropped. And sign-in refusals: same timing for unknown users and
//! wrong passwords, oversized credentials, rate limits, audit.

use crate::harness::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

fn keyed_command(data: &Path, key_file: &Path) -> std::process::Command {
    let mut cmd = command(data);
    cmd.env_remove("LINTEL_SECRETS__MASTER_KEY")
        .env("LINTEL_SECRETS__MASTER_KEY_FILE", key_file);
    cmd
}

fn generate(out: Option<&Path>) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["keys", "generate"]);
    if let Some(p) = out {
        cmd.arg("--out").arg(p);
    }
    run_to_exit(cmd, Duration::from_secs(20))
}

fn post_json(l: &Lintel, token: &str, path: &str, body: Value) -> Value {
    let r = l.post(token, path, &body.to_string());
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

#[test]
fn sealed_settings_reach_drivers_and_keys_rotate_online() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("master.key");

    // No key: a clear error, and nothing written.
    let mut cmd = command(&data);
    cmd.env_remove("LINTEL_SECRETS__MASTER_KEY").arg("serve");
    let (code, out) = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no master key") && out.contains("lintel keys generate"),
        "{out}"
    );
    assert!(!data.join("lintel.redb").exists());

    // `keys generate --out` writes 0600 and never overwrites.
    let (code, out) = generate(Some(&key_file));
    assert_eq!(code, Some(0), "{out}");
    let first = std::fs::read_to_string(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, out) = generate(Some(&key_file));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("never overwritten"), "{out}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), first);

    let mut cmd = keyed_command(&data, &key_file);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);
    let systems: Vec<Value> = l.get(&token, "/api/engine/v2/systems").json().unwrap();
    let sys = systems[0]["id"].as_str().unwrap().to_string();
    let modules: Vec<Value> = l
        .get(
            &token,
            &format!("/api/engine/v2/modules?control_system_id={sys}"),
        )
        .json()
        .unwrap();
    let display = modules
        .iter()
        .find(|m| {
            let d: Value = l
                .get(
                    &token,
                    &format!(
                        "/api/engine/v2/drivers/{}",
                        m["driver_id"].as_str().unwrap()
                    ),
                )
                .json()
                .unwrap();
            d["module_name"] == "Display"
        })
        .expect("a display module")["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A never_display setting reaches the driver: the demo display refuses poll_every_ms 5
    // and says so, which it can only do if it received the opened value.
    let secret = post_json(
        &l,
        &token,
        "/api/engine/v2/settings",
        json!({"parent_id": display, "encryption_level": "never_display", "value": {"poll_every_ms": 5}}),
    );
    assert_eq!(secret["value"], "<redacted>", "{secret}");
    eventually("the driver to receive the sealed setting", || {
        l.stdout()
            .iter()
            .any(|line| line.contains("poll_every_ms must be 500..=3600000, got 5"))
            .then_some(())
    });
    let admin_level = post_json(
        &l,
        &token,
        "/api/engine/v2/settings",
        json!({"parent_id": sys, "encryption_level": "admin", "value": {"api_token": "kept-across-rotation"}}),
    );
    let setting_path = format!(
        "/api/engine/v2/settings/{}",
        admin_level["id"].as_str().unwrap()
    );

    // An MQTT broker's password is sealed too (write-only: shown back as `true`).
    let broker = post_json(
        &l,
        &token,
        "/api/engine/v2/brokers",
        json!({"name": "Site broker", "host": "broker.example.com", "username": "lintel", "password": "broker-password-kept"}),
    );
    assert_eq!(broker["password"], true, "{broker}");
    let broker_path = format!("/api/engine/v2/brokers/{}", broker["id"].as_str().unwrap());

    // Rotate online: a new key first in the file, then `lintel keys rotate`.
    let (_, second) = generate(None);
    let second = second.trim().to_string();
    let second_id = second.split(':').next().unwrap().to_string();
    std::fs::write(&key_file, format!("{second}\n{first}")).unwrap();
    let mut rotate = keyed_command(&data, &key_file);
    rotate.args(["keys", "rotate"]);
    let (code, out) = run_to_exit(rotate, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["primary_key"], second_id.as_str(), "{report}");
    // The test's two sealed settings, the demo calendars' two, the broker and at least
    // one signing key moved to the new key.
    assert!(
        report["resealed_records"].as_u64().unwrap() >= 6,
        "{report}"
    );
    assert_eq!(report["new_signing_keys"], 1, "{report}");
    // Nobody is logged out: the token signed by the old signing key still works.
    let v: Value = l.get(&token, &setting_path).json().unwrap();
    assert_eq!(v["value"]["api_token"], "kept-across-rotation", "{v}");
    let jwks: Value = client()
        .get(l.url("/.well-known/jwks.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    let (status, _) = l.terminate();
    assert!(status.success());

    // The old key can go: everything opens with the new one alone.
    std::fs::write(&key_file, format!("{second}\n")).unwrap();
    let l = Lintel::start(keyed_command(&data, &key_file));
    let token = l.token(PASSWORD);
    let v: Value = l.get(&token, &setting_path).json().unwrap();
    assert_eq!(v["value"]["api_token"], "kept-across-rotation", "{v}");
    let v: Value = l.get(&token, &broker_path).json().unwrap();
    assert_eq!(v["password"], true, "{v}");
    eventually("the driver to receive the setting again", || {
        l.stdout()
            .iter()
            .any(|line| line.contains("got 5"))
            .then_some(())
    });
    for line in l.stdout().iter().chain(l.stderr().iter()) {
        assert!(!line.contains("cannot be opened"), "{line}");
        assert!(!line.contains("kept-across-rotation"), "{line}");
        assert!(!line.contains("broker-password-kept"), "{line}");
    }
}

fn sign_in(l: &Lintel, username: &str, password: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = client()
        .post(l.url("/auth/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ])
        .send()
        .unwrap();
    let elapsed = started.elapsed();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null), elapsed)
}

#[test]
fn sign_in_refusals_are_uniform_bounded_limited_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()))
        .env("LINTEL_AUTH__LOGIN_PER_ACCOUNT_PER_MINUTE", "6");
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);

    // A wrong password and an unknown user: the same answer, in the same time order
    // (both run scrypt at full strength).
    let (s1, b1, wrong) = sign_in(&l, ADMIN, "not-the-password-at-all");
    let (s2, b2, unknown) = sign_in(&l, "nobody@lintel.local", "not-the-password-at-all");
    assert_eq!((s1, s2), (400, 400));
    assert_eq!(b1, b2, "the answers must not tell the two apart");
    assert_eq!(b1["error"], "invalid_grant");
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown user {unknown:?} vs wrong password {wrong:?}"
    );

    // Oversized credentials: refused before any hashing, naming the limit.
    let (s, b, took) = sign_in(&l, ADMIN, &"p".repeat(5000));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("1024 bytes"),
        "{b}"
    );
    assert!(
        took < wrong,
        "an oversized password must not be hashed ({took:?})"
    );
    let huge = client()
        .get(l.url("/api/engine/v2/systems"))
        .bearer_auth("x".repeat(9000))
        .send()
        .unwrap();
    assert_eq!(huge.status(), 401);

    // Per-account limit: a burst, then 429 with Retry-After — the right password too.
    let mut limited = None;
    for _ in 0..12 {
        let r = client()
            .post(l.url("/auth/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", ADMIN),
                ("password", "wrong-password-again"),
            ])
            .send()
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the account was never rate-limited");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (s, _, _) = sign_in(&l, ADMIN, PASSWORD);
    assert_eq!(s, 429, "a limited account is limited for every password");

    // The audit trail has the sign-in and the refusals, with reasons, never passwords.
    let audit: Vec<Value> = l
        .get(&token, "/api/engine/v2/audit?limit=1000")
        .json()
        .unwrap();
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|e| e["action"] == "sign_in_failed")
        .filter_map(|e| e["diff"]["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"wrong password"), "{reasons:?}");
    assert!(reasons.contains(&"unknown user"), "{reasons:?}");
    assert!(
        audit.iter().any(|e| e["action"] == "signed_in"),
        "{audit:?}"
    );
    let everything = format!("{audit:?}{:?}{:?}", l.stdout(), l.stderr());
    assert!(!everything.contains("not-the-password-at-all"));
    assert!(!everything.contains("wrong-password-again"));
}
