//! The REST API as PlaceOS clients and BI tools use it: paging headers, optimistic locking,
//! soft delete and restore, live state and control by module id, introspection, driver
//! uploads, CORS, the OpenAPI document and its page, and snapshots of response bodies and
//! headers.

use crate::harness::*;
use reqwest::Method;
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::time::Duration;

const V2: &str = "/api/engine/v2";

fn start(extra: &[(&str, &str)]) -> (tempfile::TempDir, Lintel, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let l = Lintel::start(cmd);
    let token = l.token(PASSWORD);
    (dir, l, token)
}

fn send(l: &Lintel, t: &str, method: Method, path: &str, body: Option<Value>) -> Response {
    let mut rb = client().request(method, l.url(path)).bearer_auth(t);
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    rb.send().unwrap()
}

/// Status and JSON body (`Null` for an empty one).
fn json_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text}"))
    };
    (status, v)
}

fn error_of(r: Response, status: u16, code: &str) -> String {
    let (s, v) = json_of(r);
    assert_eq!((s, v["error"].as_str()), (status, Some(code)), "{v}");
    v["message"].as_str().unwrap().to_string()
}

/// The demo's huddle room (one display, `Display_1`).
fn first_system(l: &Lintel, t: &str) -> String {
    let systems: Vec<Value> = l.get(t, &format!("{V2}/systems")).json().unwrap();
    systems
        .iter()
        .find(|s| s["name"] == "Room 1.01 Huddle")
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no huddle room: {systems:?}"))
        .to_string()
}

fn display_module(l: &Lintel, t: &str, sys: &str) -> String {
    let (_, system) = json_of(l.get(t, &format!("{V2}/systems/{sys}")));
    for id in system["modules"].as_array().unwrap() {
        let (_, m) = json_of(l.get(t, &format!("{V2}/modules/{}", id.as_str().unwrap())));
        let (_, d) = json_of(l.get(
            t,
            &format!("{V2}/drivers/{}", m["driver_id"].as_str().unwrap()),
        ));
        if d["module_name"] == "Display" {
            return m["id"].as_str().unwrap().to_string();
        }
    }
    panic!("no display in {system}");
}

#[test]
fn lists_page_with_placeos_headers_and_links() {
    let (_dir, l, t) = start(&[]);
    for i in 0..5 {
        let r = l.post(
            &t,
            &format!("{V2}/zones"),
            &json!({"name": format!("Level {i}"), "tags": ["paging-test"]}).to_string(),
        );
        assert_eq!(r.status(), 201);
    }
    let r = l.get(&t, &format!("{V2}/zones?tags=paging-test&limit=2"));
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-total-count"], "5");
    assert_eq!(h["content-range"], "zone 0-2/5");
    let link = h["link"].to_str().unwrap().to_string();
    assert_eq!(
        link,
        format!("<{V2}/zones?tags=paging-test&limit=2&offset=2>; rel=\"next\"")
    );
    let first: Vec<Value> = r.json().unwrap();
    assert_eq!(first.len(), 2);
    // Follow the links to the end: every zone once, no link on the last page.
    let mut seen: Vec<Value> = first;
    let mut next = Some(link);
    let mut pages = 1;
    while let Some(link) = next {
        let path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        let r = l.get(&t, &path);
        assert_eq!(r.status(), 200);
        next = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let range = r.headers()["content-range"].to_str().unwrap().to_string();
        let page: Vec<Value> = r.json().unwrap();
        pages += 1;
        assert_eq!(
            range,
            format!("zone {}-{}/5", seen.len(), seen.len() + page.len())
        );
        seen.extend(page);
    }
    assert_eq!((pages, seen.len()), (3, 5));
    // The audit trail pages the same way (its link moves on).
    let r = l.get(&t, &format!("{V2}/audit?limit=2"));
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let first: Vec<Value> = r.json().unwrap();
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let second: Vec<Value> = l.get(&t, &next).json().unwrap();
    assert_eq!((first.len(), second.len()), (2, 2));
    assert_ne!(first[0]["id"], second[0]["id"], "{link}");
    let mut ids: Vec<&str> = seen.iter().map(|z| z["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    // Bad paging input is named.
    for (q, named) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("offset=-1", "offset"),
        ("limit=abc", "limit"),
    ] {
        let m = error_of(l.get(&t, &format!("{V2}/zones?{q}")), 400, "bad_request");
        assert!(m.contains(named), "{q}: {m}");
    }
    let m = error_of(
        l.get(&t, &format!("{V2}/modules?control_system_id=a&driver_id=b")),
        400,
        "bad_request",
    );
    assert!(m.contains("one of"), "{m}");
}

#[test]
fn versions_lock_deletes_are_soft_and_admins_restore() {
    let (_dir, l, t) = start(&[]);
    let (s, zone) = json_of(l.post(&t, &format!("{V2}/zones"), r#"{"name": "Lobby"}"#));
    assert_eq!(s, 201);
    let id = zone["id"].as_str().unwrap().to_string();
    let v = zone["version"].as_u64().unwrap();
    // ?version= as PlaceOS clients send it; a stale one is a 409 and changes nothing.
    let (s, z) = json_of(send(
        &l,
        &t,
        Method::PATCH,
        &format!("{V2}/zones/{id}?version={v}"),
        Some(json!({"name": "Lobby 2"})),
    ));
    assert_eq!((s, z["name"].as_str()), (200, Some("Lobby 2")), "{z}");
    let m = error_of(
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{id}?version={v}"),
            Some(json!({"name": "Lost"})),
        ),
        409,
        "conflict",
    );
    assert!(m.contains("stale"), "{m}");
    // In the body, too.
    error_of(
        send(
            &l,
            &t,
            Method::PUT,
            &format!("{V2}/zones/{id}"),
            Some(json!({"name": "Lost", "version": v})),
        ),
        409,
        "conflict",
    );
    // `version=0` is "unknown" (the PlaceOS client sends it for records it has no version of).
    let (s, _) = json_of(send(
        &l,
        &t,
        Method::PATCH,
        &format!("{V2}/zones/{id}?version=0"),
        Some(json!({"description": "d"})),
    ));
    assert_eq!(s, 200);
    error_of(
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{id}?version=x"),
            Some(json!({})),
        ),
        400,
        "bad_request",
    );
    let (_, z) = json_of(l.get(&t, &format!("{V2}/zones/{id}")));
    assert_eq!(z["name"], "Lobby 2");

    // Unknown fields and wrong types are named, nothing is written.
    let m = error_of(
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{id}"),
            Some(json!({"nmae": "typo"})),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("`nmae`"), "{m}");
    let m = error_of(
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{id}"),
            Some(json!({"tags": [1]})),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("tags[0]"), "{m}");
    let m = error_of(
        l.post(&t, &format!("{V2}/zones"), r#"{"name": "x", "#),
        400,
        "bad_request",
    );
    assert!(m.contains("malformed JSON"), "{m}");

    // Delete with a stale version: 409; then delete, list deleted, restore.
    let (_, z) = json_of(l.get(&t, &format!("{V2}/zones/{id}")));
    let v = z["version"].as_u64().unwrap();
    error_of(
        send(
            &l,
            &t,
            Method::DELETE,
            &format!("{V2}/zones/{id}?version={}", v - 1),
            None,
        ),
        409,
        "conflict",
    );
    assert_eq!(
        send(
            &l,
            &t,
            Method::DELETE,
            &format!("{V2}/zones/{id}?version={v}"),
            None
        )
        .status(),
        202
    );
    error_of(l.get(&t, &format!("{V2}/zones/{id}")), 404, "not_found");
    let (s, deleted) = json_of(l.get(&t, &format!("{V2}/zones?deleted=true")));
    assert_eq!(s, 200);
    assert!(
        deleted
            .as_array()
            .unwrap()
            .iter()
            .any(|z| z["id"] == id.as_str()),
        "{deleted}"
    );
    // Staff may neither see nor restore deleted records.
    let staff = {
        let (s, _) = json_of(l.post(&t, &format!("{V2}/users"), &json!({"name": "s", "email": "s@lintel.local", "roles": ["staff"], "password": "staff-password-1234"}).to_string()));
        assert_eq!(s, 201);
        let r = client()
            .post(l.url("/auth/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "s@lintel.local"),
                ("password", "staff-password-1234"),
            ])
            .send()
            .unwrap();
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    error_of(
        l.get(&staff, &format!("{V2}/zones?deleted=true")),
        403,
        "forbidden",
    );
    error_of(
        l.post(&staff, &format!("{V2}/zones/{id}/restore"), ""),
        403,
        "forbidden",
    );
    let (s, z) = json_of(l.post(&t, &format!("{V2}/zones/{id}/restore"), ""));
    assert_eq!((s, z["name"].as_str()), (200, Some("Lobby 2")), "{z}");
    let (s, _) = json_of(l.get(&t, &format!("{V2}/zones/{id}")));
    assert_eq!(s, 200);
    error_of(
        l.post(&t, &format!("{V2}/zones/zone-nope/restore"), ""),
        404,
        "not_found",
    );
    // The audit trail has it all.
    let (_, audit) = json_of(l.get(&t, &format!("{V2}/audit?record_id={id}")));
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "updated", "updated", "deleted", "restored"],
        "{audit}"
    );
}

#[test]
fn live_state_control_and_introspection_by_system_and_module() {
    let (_dir, l, t) = start(&[]);
    let sys = first_system(&l, &t);
    let module = display_module(&l, &t, &sys);
    eventually("the display to report power", || {
        let (_, v) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/Display_1")));
        v.get("power").cloned()
    });
    // By module id: PlaceOS answers values JSON-encoded.
    let (s, v) = json_of(send(
        &l,
        &t,
        Method::POST,
        &format!("{V2}/modules/{module}/exec/power"),
        Some(json!([true])),
    ));
    assert_eq!(s, 200, "{v}");
    eventually("power on", || {
        let (_, v) = json_of(l.get(&t, &format!("{V2}/modules/{module}/state/power")));
        (v == "true").then_some(())
    });
    let (s, all) = json_of(l.get(&t, &format!("{V2}/modules/{module}/state")));
    assert_eq!((s, &all["power"]), (200, &json!("true")), "{all}");
    assert_eq!(all["connected"], "true", "{all}");
    let m = error_of(
        l.get(&t, &format!("{V2}/modules/{module}/state/no_such_key")),
        404,
        "not_found",
    );
    assert!(m.contains("no_such_key"), "{m}");
    // Bad arguments name the parameter; unknown functions and modules are 404s.
    let m = error_of(
        send(
            &l,
            &t,
            Method::POST,
            &format!("{V2}/modules/{module}/exec/power"),
            Some(json!(["on"])),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("`state`"), "{m}");
    let m = error_of(
        send(
            &l,
            &t,
            Method::POST,
            &format!("{V2}/modules/{module}/exec/power"),
            Some(json!({"state": true})),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("JSON array"), "{m}");
    error_of(
        send(
            &l,
            &t,
            Method::POST,
            &format!("{V2}/modules/{module}/exec/explode"),
            Some(json!([])),
        ),
        404,
        "not_found",
    );
    error_of(
        send(
            &l,
            &t,
            Method::POST,
            &format!("{V2}/systems/{sys}/Display_7/power"),
            Some(json!([true])),
        ),
        404,
        "not_found",
    );

    // Introspection.
    let (s, types) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/types")));
    assert_eq!(s, 200);
    assert_eq!(types["Display"], 1, "{types}");
    let (_, count) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/count")));
    assert_eq!(count, types);
    let (s, f) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/functions/Display_1")));
    assert_eq!(s, 200);
    assert_eq!(f["power"]["arity"], 1, "{f}");
    assert_eq!(f["power"]["order"], json!(["state"]), "{f}");
    assert_eq!(f["power"]["params"]["state"]["type"], "boolean", "{f}");
    // "Display" alone is Display_1, as in PlaceOS.
    let (_, f1) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/functions/Display")));
    assert_eq!(f1, f);

    // Ping: the simulator is in-process and reachable.
    let (s, ping) = json_of(l.post(&t, &format!("{V2}/modules/{module}/ping"), ""));
    assert_eq!((s, &ping["pingable"]), (200, &json!(true)), "{ping}");

    // Settings: lowest precedence first, each redacted per role.
    let (s, _) = json_of(l.post(&t, &format!("{V2}/settings"), &json!({"parent_id": module, "encryption_level": "none", "value": {"poll_every_ms": 60000}}).to_string()));
    assert_eq!(s, 201);
    let (s, _) = json_of(
        l.post(
            &t,
            &format!("{V2}/settings"),
            &json!({"parent_id": sys, "encryption_level": "admin", "value": {"note": "sys"}})
                .to_string(),
        ),
    );
    assert_eq!(s, 201);
    let (s, settings) = json_of(l.get(&t, &format!("{V2}/modules/{module}/settings")));
    assert_eq!(s, 200);
    let parents: Vec<&str> = settings
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["parent_id"].as_str().unwrap())
        .collect();
    let at = |id: &str| parents.iter().position(|p| *p == id).unwrap();
    assert!(at(&sys) < at(&module), "{settings}");
    assert_eq!(settings[at(&sys)]["value"]["note"], "sys", "{settings}");

    // Stop and start the module, then the whole system: the engine follows the store.
    assert_eq!(
        l.post(&t, &format!("{V2}/modules/{module}/stop"), "")
            .status(),
        200
    );
    eventually("the module to stop", || {
        let (s, _) = json_of(l.get(&t, &format!("{V2}/modules/{module}/state")));
        (s == 404).then_some(())
    });
    let (_, m) = json_of(l.get(&t, &format!("{V2}/modules/{module}")));
    assert_eq!(m["running"], false);
    assert_eq!(
        l.post(&t, &format!("{V2}/systems/{sys}/start"), "")
            .status(),
        200
    );
    eventually("the module to run again", || {
        let (s, v) = json_of(l.get(&t, &format!("{V2}/modules/{module}/state")));
        (s == 200 && v.get("power").is_some()).then_some(())
    });
    assert_eq!(
        l.post(&t, &format!("{V2}/systems/{sys}/stop"), "").status(),
        200
    );
    let (_, system) = json_of(l.get(&t, &format!("{V2}/systems/{sys}")));
    for id in system["modules"].as_array().unwrap() {
        let (_, m) = json_of(l.get(&t, &format!("{V2}/modules/{}", id.as_str().unwrap())));
        assert_eq!(m["running"], false, "{m}");
    }
}

#[test]
fn drivers_upload_reload_and_describe_themselves_over_rest() {
    let (_dir, l, t) = start(&[("LINTEL_HTTP__MAX_BODY_BYTES", "4096")]);
    let component = lintel_bundled_drivers::DEMO_DISPLAY.component;
    let upload = |path: &str, body: Vec<u8>, ct: &str| {
        client()
            .post(l.url(path))
            .bearer_auth(&t)
            .header("content-type", ct)
            .body(body)
            .send()
            .unwrap()
    };
    // The component is far larger than the body limit: uploads have their own.
    assert!(component.len() > 4096);
    let (s, report) = json_of(upload(
        &format!("{V2}/drivers/upload"),
        component.to_vec(),
        "application/wasm",
    ));
    assert_eq!(s, 201, "{report}");
    assert_eq!(report["created"], true);
    assert_eq!(report["driver"]["name"], "Demo Display", "{report}");
    let id = report["driver"]["id"].as_str().unwrap().to_string();
    let (s, _) = json_of(l.get(&t, &format!("{V2}/drivers/{id}/compiled")));
    assert_eq!(s, 200);
    let (s, meta) = json_of(l.get(&t, &format!("{V2}/drivers/{id}/metadata")));
    assert_eq!(s, 200);
    assert_eq!(
        meta["function_list"]["power"]["order"],
        json!(["state"]),
        "{meta}"
    );
    assert!(meta["settings_schema"].is_object(), "{meta}");
    let (s, report) = json_of(upload(
        &format!("{V2}/drivers/{id}/upload"),
        component.to_vec(),
        "application/wasm",
    ));
    assert_eq!((s, &report["created"]), (200, &json!(false)), "{report}");
    let (s, report) = json_of(l.post(&t, &format!("{V2}/drivers/{id}/recompile"), ""));
    assert_eq!((s, &report["modules"]), (200, &json!([])), "{report}");
    // Bad uploads are named; nothing is created.
    let m = error_of(
        upload(
            &format!("{V2}/drivers/upload"),
            b"not wasm".to_vec(),
            "application/wasm",
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("not a WebAssembly component"), "{m}");
    let m = error_of(
        upload(
            &format!("{V2}/drivers/upload"),
            component.to_vec(),
            "application/json",
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("application/wasm"), "{m}");
    let mut truncated = component[..component.len() / 2].to_vec();
    truncated.truncate(component.len() / 2);
    let (s, v) = json_of(upload(
        &format!("{V2}/drivers/upload"),
        truncated,
        "application/wasm",
    ));
    assert_eq!(s, 400, "{v}");
    let big = vec![0u8; 32 * 1024 * 1024 + 1];
    let m = error_of(
        upload(&format!("{V2}/drivers/upload"), big, "application/wasm"),
        413,
        "payload_too_large",
    );
    assert!(m.contains("33554432"), "{m}");
    // Elsewhere the configured limit holds, in the one error format.
    let m = error_of(
        l.post(
            &t,
            &format!("{V2}/zones"),
            &format!("{{\"name\": \"{}\"}}", "x".repeat(5000)),
        ),
        413,
        "payload_too_large",
    );
    assert!(m.contains("4096"), "{m}");
    let (_, drivers) = json_of(l.get(&t, &format!("{V2}/drivers?q=Demo%20Display")));
    assert_eq!(
        drivers
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["name"] == "Demo Display")
            .count(),
        2,
        "{drivers}"
    );
    // A method a path does not take: 405 in the one format.
    error_of(
        send(
            &l,
            &t,
            Method::DELETE,
            &format!("{V2}/drivers/upload"),
            None,
        ),
        405,
        "method_not_allowed",
    );
}

#[test]
fn cors_allows_only_configured_origins() {
    let (_dir, l, t) = start(&[("LINTEL_HTTP__CORS_ORIGINS", "[\"https://app.example\"]")]);
    let preflight = |origin: &str| {
        client()
            .request(Method::OPTIONS, l.url(&format!("{V2}/systems")))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .unwrap()
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let bad = preflight("https://evil.example");
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    let r = client()
        .get(l.url(&format!("{V2}/systems")))
        .bearer_auth(&t)
        .header("origin", "https://app.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("x-total-count") && exposed.contains("link"),
        "{exposed}"
    );
    // A bad origin in the config stops Lintel with the key named.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.arg("serve")
        .env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()))
        .env("LINTEL_HTTP__CORS_ORIGINS", "[\"app.example/path\"]");
    let (code, out) = run_to_exit(cmd, std::time::Duration::from_secs(30));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("http.cors_origins"), "{out}");
}

#[test]
fn the_openapi_document_and_reference_page_are_served() {
    let (_dir, l, _t) = start(&[]);
    let r = client()
        .get(l.url(&format!("{V2}/openapi.json")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.text().unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // What is served is what docs/openapi.json holds (the snapshot the unit test keeps).
    let stored =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), doc);
    let r = client().get(l.url(&format!("{V2}/docs"))).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = r.text().unwrap();
    assert!(page.contains("/api/engine/v2/systems/{id}/functions/{module}"));
    assert!(page.contains("id=\"schema-ControlSystem\""));
}

/// Replace what changes from run to run (ids, times, request ids) with placeholders.
fn normalize(v: &mut Value) {
    match v {
        Value::String(s) => {
            for prefix in [
                "authority-",
                "settings-",
                "sys-",
                "mod-",
                "zone-",
                "driver-",
                "user-",
                "tenant-",
                "trigger-",
                "key-",
                "set-",
                "meta-",
                "audit-",
            ] {
                if s.starts_with(prefix) && s.len() > prefix.len() + 8 {
                    *s = format!("{prefix}…");
                }
            }
        }
        Value::Number(_) => {}
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if k.ends_with("_at") && val.is_number() {
                    *val = json!("<time>");
                } else {
                    normalize(val);
                }
            }
        }
        _ => {}
    }
}

/// Response bodies and the headers clients read, kept in `tests/e2e/snapshots/rest.json`
/// (ids and times normalized). `LINTEL_UPDATE_SNAPSHOTS=1` rewrites it after a reviewed
/// change.
#[test]
fn responses_match_their_snapshots() {
    let (_dir, l, t) = start(&[("LINTEL_BOOTSTRAP__DEMO", "false")]);
    let mut out = serde_json::Map::new();
    let mut take = |name: &str, r: Response| -> Value {
        let status = r.status().as_u16();
        let mut headers = serde_json::Map::new();
        for h in [
            "content-type",
            "x-total-count",
            "content-range",
            "link",
            "www-authenticate",
            "retry-after",
        ] {
            if let Some(v) = r.headers().get(h) {
                let mut s = v.to_str().unwrap().to_string();
                if h == "link" {
                    s = "<present>".into();
                }
                headers.insert(h.into(), json!(s));
            }
        }
        assert!(r.headers().contains_key("x-request-id"), "{name}");
        let text = r.text().unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let mut shown = body.clone();
        normalize(&mut shown);
        out.insert(
            name.into(),
            json!({"status": status, "headers": headers, "body": shown}),
        );
        body
    };
    let zone = take(
        "create zone",
        l.post(
            &t,
            &format!("{V2}/zones"),
            r#"{"name": "Level 1", "tags": ["level"], "description": "first floor"}"#,
        ),
    );
    let zid = zone["id"].as_str().unwrap().to_string();
    take("show zone", l.get(&t, &format!("{V2}/zones/{zid}")));
    take("list zones", l.get(&t, &format!("{V2}/zones?limit=10")));
    take(
        "update zone",
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{zid}?version=1"),
            Some(json!({"display_name": "L1"})),
        ),
    );
    take(
        "stale version",
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{zid}?version=1"),
            Some(json!({"display_name": "L1"})),
        ),
    );
    take(
        "unknown field",
        send(
            &l,
            &t,
            Method::PATCH,
            &format!("{V2}/zones/{zid}"),
            Some(json!({"colour": "red"})),
        ),
    );
    take(
        "wrong type",
        l.post(
            &t,
            &format!("{V2}/systems"),
            r#"{"name": "Room", "zones": "zone-x"}"#,
        ),
    );
    take(
        "missing",
        l.get(&t, &format!("{V2}/systems/sys-doesnotexist")),
    );
    take("no route", l.get(&t, &format!("{V2}/nothing-here")));
    take(
        "no credential",
        client().get(l.url(&format!("{V2}/zones"))).send().unwrap(),
    );
    take("never_display settings are redacted even for sysadmins", l.post(&t, &format!("{V2}/settings"), &json!({"parent_id": zid, "encryption_level": "never_display", "value": {"password": "canary-secret"}}).to_string()));
    take("current user", l.get(&t, &format!("{V2}/users/current")));
    take(
        "authority",
        client().get(l.url("/auth/authority")).send().unwrap(),
    );
    take(
        "health",
        client().get(l.url(&format!("{V2}/health"))).send().unwrap(),
    );
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/snapshots/rest.json");
    let now = serde_json::to_string_pretty(&lintel_api::openapi::sorted(Value::Object(out)))
        .unwrap()
        + "\n";
    assert!(
        !now.contains("canary-secret"),
        "a secret reached a response"
    );
    if std::env::var_os("LINTEL_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &now).unwrap();
    }
    let stored = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        stored == now,
        "responses differ from {}: review, then rerun with LINTEL_UPDATE_SNAPSHOTS=1\n{now}",
        file.display()
    );
}

#[test]
fn bi_exports_stream_state_and_inventory_with_a_read_only_key() {
    let (_dir, l, t) = start(&[]);
    let sys = first_system(&l, &t);
    eventually("the display to report power", || {
        let (_, v) = json_of(l.get(&t, &format!("{V2}/systems/{sys}/Display_1")));
        v.get("power").cloned()
    });
    let (s, key) = json_of(l.post(&t, &format!("{V2}/api_keys"), &json!({"name": "BI", "role": "support", "scopes": ["state.read", "systems.read", "zones.read", "modules.read"]}).to_string()));
    assert_eq!(s, 201, "{key}");
    let key = key["x_api_key"].as_str().unwrap().to_string();
    let get = |path: &str| {
        client()
            .get(l.url(path))
            .header("X-API-Key", &key)
            .send()
            .unwrap()
    };
    // JSON: every row of the system's display, with its names and the value as JSON.
    let r = get(&format!("{V2}/export/state?system_id={sys}"));
    assert_eq!(r.status(), 200);
    let rows: Vec<Value> = r.json().unwrap();
    let power = rows
        .iter()
        .find(|r| r["module"] == "Display_1" && r["key"] == "power")
        .unwrap_or_else(|| panic!("no power row: {rows:?}"));
    assert_eq!(power["system_id"], sys.as_str());
    assert!(power["value"].is_boolean(), "{power}");
    assert!(rows.iter().all(|r| r["system_id"] == sys.as_str()));
    // NDJSON by Accept: the same rows, one per line.
    let r = client()
        .get(l.url(&format!("{V2}/export/state?system_id={sys}")))
        .header("X-API-Key", &key)
        .header("accept", "application/x-ndjson")
        .send()
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/x-ndjson")
    );
    let lines: Vec<Value> = r
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rows.len());
    // CSV with a key filter: a header and one row per display power, the value JSON-encoded.
    // Every module with a `power` status: the four demo displays, the projector, the
    // Samsung display and the four panels (once each has reported).
    let text = eventually_within(Duration::from_secs(30), "every power status", || {
        let r = get(&format!("{V2}/export/state?format=csv&key=power"));
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = r.text().unwrap();
        (text.lines().count() == 11).then_some(text)
    });
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("system_id,system_name,module_id,module,driver_id,driver,key,value"),
        "{text}"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter().all(|l| l.contains(",power,")),
        "only the key asked for: {text}"
    );
    let displays: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|l| l.contains(",Demo Display,power,"))
        .collect();
    assert_eq!(
        displays.len(),
        4,
        "four demo rooms, one demo display each: {text}"
    );
    assert_eq!(rows.len(), 10, "{text}");
    assert!(
        displays
            .iter()
            .all(|l| l.contains(",power,true,") || l.contains(",power,false,")),
        "{text}"
    );
    // Inventory: every table the key reads, and one table as CSV.
    let (s, inv) = json_of(get(&format!("{V2}/export/inventory")));
    assert_eq!(s, 200);
    assert_eq!(inv["systems"].as_array().unwrap().len(), 4, "{inv}");
    assert!(inv["modules"].as_array().unwrap().len() >= 4, "{inv}");
    let csv = get(&format!("{V2}/export/inventory?type=systems&format=csv"))
        .text()
        .unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // Refusals before the first byte, naming the parameter.
    let m = error_of(
        get(&format!("{V2}/export/state?format=xml")),
        400,
        "bad_request",
    );
    assert!(m.contains("format"), "{m}");
    let m = error_of(
        get(&format!("{V2}/export/state?system_id=sys-nope")),
        400,
        "bad_request",
    );
    assert!(m.contains("system_id"), "{m}");
    let m = error_of(
        get(&format!("{V2}/export/state?zone=x")),
        400,
        "bad_request",
    );
    assert!(m.contains("zone"), "{m}");
    // The key cannot write.
    let r = client()
        .post(l.url(&format!("{V2}/zones")))
        .header("X-API-Key", &key)
        .header("content-type", "application/json")
        .body(r#"{"name": "nope"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn traversal_ids_and_slow_headers_are_refused() {
    use std::io::{Read, Write};
    let (_dir, l, t) = start(&[]);
    let sys = first_system(&l, &t);
    for path in [
        format!("{V2}/zones/..%2F..%2Fetc%2Fpasswd"),
        format!("{V2}/modules/..%2Fsecrets/state"),
        format!("{V2}/systems/{sys}/..%2F..%2Fetc/power"),
        format!("{V2}/drivers/%2e%2e%2f%2e%2e/metadata"),
    ] {
        let (s, v) = json_of(l.get(&t, &path));
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
    }
    // Slowloris: headers trickled in are cut off (actix's 5 s request-head timeout), the
    // connection closed; the server keeps answering others meanwhile.
    let addr = l.url("").trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_millis(250)))
        .unwrap();
    slow.write_all(format!("GET {V2}/health HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let cut = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(12),
            "a request whose headers never end was not cut off"
        );
        if slow.write_all(b"X-Slow: a\r\n").is_err() {
            break true;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        assert_eq!(
            client()
                .get(l.url(&format!("{V2}/health")))
                .send()
                .unwrap()
                .status(),
            200
        );
    };
    let text = String::from_utf8_lossy(&answer);
    assert!(
        cut && (text.is_empty() || text.starts_with("HTTP/1.1 408")),
        "{text}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "cut too early"
    );
}

/// MQTT brokers (`/brokers`, admins): the password is write-only and sealed. Responses
/// show `true`/`false`, never the sealed value nor the plaintext; an update without it
/// keeps it, `null` clears it; the audit trail and the logs never carry it.
#[test]
fn broker_passwords_are_sealed_and_write_only() {
    let (_dir, l, root) = start(&[("LINTEL_BOOTSTRAP__DEMO", "false")]);
    let canary = format!("broker-canary-{}", std::process::id());
    let user = |email: &str, role: &str| -> String {
        let body = json!({
            "name": email, "email": email, "roles": [role], "password": "user-password-1234",
        });
        let (s, v) = json_of(l.post(&root, &format!("{V2}/users"), &body.to_string()));
        assert_eq!(s, 201, "{v}");
        let r = client()
            .post(l.url("/auth/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", email),
                ("password", "user-password-1234"),
            ])
            .send()
            .unwrap();
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let admin = user("broker-admin@lintel.local", "admin");
    let support = user("broker-support@lintel.local", "support");
    let staff = user("broker-staff@lintel.local", "staff");
    let mut bodies: Vec<String> = Vec::new();
    let mut text_of = |r: Response, status: u16| -> Value {
        let s = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(s, status, "{text}");
        bodies.push(text.clone());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };

    let created = text_of(
        l.post(
            &admin,
            &format!("{V2}/brokers"),
            &json!({
                "name": "Site broker",
                "host": "broker.example.com",
                "tls": true,
                "username": "lintel",
                "password": canary,
                "topic_prefix": "site/placeos",
            })
            .to_string(),
        ),
        201,
    );
    assert_eq!(created["password"], true, "{created}");
    assert_eq!(
        (created["qos"].as_u64(), created["topic_prefix"].as_str()),
        (Some(0), Some("site/placeos")),
        "{created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("broker-"), "{id}");
    let one = format!("{V2}/brokers/{id}");
    let shown = text_of(l.get(&admin, &one), 200);
    assert_eq!(shown["password"], true, "{shown}");
    let listed = text_of(l.get(&admin, &format!("{V2}/brokers")), 200);
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["password"], true, "{listed}");

    // Updates without the password keep it (PATCH and PUT), and so does `true`.
    for (method, body) in [
        (Method::PATCH, json!({"description": "roof plant room"})),
        (Method::PUT, json!({"name": "Site broker 2"})),
        (
            Method::PATCH,
            json!({"password": true, "keep_alive_secs": 60}),
        ),
    ] {
        let v = text_of(
            send(&l, &admin, method.clone(), &one, Some(body.clone())),
            200,
        );
        assert_eq!(v["password"], true, "{method} {body}: {v}");
    }
    let v = text_of(l.get(&admin, &one), 200);
    assert_eq!(
        (
            v["name"].as_str(),
            v["keep_alive_secs"].as_u64(),
            &v["password"]
        ),
        (Some("Site broker 2"), Some(60), &json!(true)),
        "{v}"
    );

    // Bad input is a 400 naming the field, and changes nothing.
    for (body, named) in [
        (json!({"qos": 2}), "qos"),
        (json!({"qos": "high"}), "qos"),
        (json!({"host": "mqtt://broker.example.com"}), "host"),
        (json!({"topic_prefix": "site/#"}), "topic_prefix"),
        (json!({"password": ""}), "password"),
        (json!({"password": "p".repeat(1025)}), "password"),
        (json!({"password": 42}), "password"),
        // A sealed value made up by a client is not taken for the stored one.
        (
            json!({"password": {"key_id": "k", "nonce": "bm9uY2U=", "ciphertext": "eA=="}}),
            "password",
        ),
        (json!({"username": null}), "password"),
        (json!({"commands": {"enabled": true}}), "commands.allow"),
    ] {
        let m = error_of(
            send(&l, &admin, Method::PATCH, &one, Some(body.clone())),
            400,
            "bad_request",
        );
        assert!(m.contains(&format!("`{named}")), "{body}: {m}");
    }
    let m = error_of(
        l.post(
            &admin,
            &format!("{V2}/brokers"),
            &json!({"name": "b", "host": "h", "qos": 2}).to_string(),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("`qos`"), "{m}");
    let m = error_of(
        l.post(
            &admin,
            &format!("{V2}/brokers"),
            &json!({"name": "b", "host": "h", "password": "no-username"}).to_string(),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("`password`") && m.contains("username"), "{m}");
    assert_eq!(text_of(l.get(&admin, &one), 200)["password"], true);

    // Staff and support may not see brokers at all, nor change them.
    for t in [&staff, &support] {
        error_of(l.get(t, &format!("{V2}/brokers")), 403, "forbidden");
        error_of(l.get(t, &one), 403, "forbidden");
        error_of(
            l.post(t, &format!("{V2}/brokers"), r#"{"name": "b", "host": "h"}"#),
            403,
            "forbidden",
        );
        error_of(
            send(&l, t, Method::PATCH, &one, Some(json!({"password": null}))),
            403,
            "forbidden",
        );
    }

    // `null` clears it; a new string sets it again; `false` clears too.
    let v = text_of(
        send(
            &l,
            &admin,
            Method::PATCH,
            &one,
            Some(json!({"password": null})),
        ),
        200,
    );
    assert_eq!(v["password"], false, "{v}");
    assert_eq!(text_of(l.get(&admin, &one), 200)["password"], false);
    let v = text_of(
        send(
            &l,
            &admin,
            Method::PATCH,
            &one,
            Some(json!({"password": format!("{canary}-2")})),
        ),
        200,
    );
    assert_eq!(v["password"], true, "{v}");
    let v = text_of(
        send(
            &l,
            &admin,
            Method::PUT,
            &one,
            Some(json!({"password": false})),
        ),
        200,
    );
    assert_eq!(v["password"], false, "{v}");

    // Soft delete and restore show the same view.
    let v = text_of(
        send(
            &l,
            &admin,
            Method::PATCH,
            &one,
            Some(json!({"password": format!("{canary}-3")})),
        ),
        200,
    );
    assert_eq!(v["password"], true, "{v}");
    assert_eq!(send(&l, &admin, Method::DELETE, &one, None).status(), 202);
    let deleted = text_of(l.get(&admin, &format!("{V2}/brokers?deleted=true")), 200);
    assert_eq!(deleted[0]["password"], true, "{deleted}");
    let restored = text_of(l.post(&admin, &format!("{one}/restore"), ""), 200);
    assert_eq!(restored["password"], true, "{restored}");

    // The audit trail records every change, the password only as `<redacted>`.
    let audit = text_of(l.get(&admin, &format!("{V2}/audit?record_id={id}")), 200);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"created"), "{audit}");
    assert!(
        actions.contains(&"deleted") && actions.contains(&"restored"),
        "{audit}"
    );
    assert_eq!(audit[0]["diff"]["password"]["to"], "<redacted>", "{audit}");
    text_of(l.get(&root, &format!("{V2}/audit?limit=1000")), 200);

    for b in &bodies {
        assert!(!b.contains(&canary), "a response shows the password: {b}");
        // A sealed value has a `ciphertext` and the keyring's key id.
        for sealed in ["ciphertext", "lk-e2e-test"] {
            assert!(
                !b.contains(sealed),
                "a response shows the sealed value: {b}"
            );
        }
    }
    for line in l.stdout().iter().chain(l.stderr().iter()) {
        assert!(
            !line.contains(&canary),
            "the password is in the logs: {line}"
        );
    }
}
