//! Authentication and authorization end to end: sessions and refresh-token rotation, API
//! keys, the role matrix over every route group, tenant isolation, secrets that must never
//! leak, and single sign-on against a real OpenID provider.

use crate::harness::*;
use crate::idp::{Idp, browser};
use reqwest::Method;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use std::collections::HashMap;

const V2: &str = "/api/engine/v2";
const USER_PASSWORD: &str = "e2e-user-password-5678";

/// A started server (first-run admin is `sysadmin`, with the demo building).
fn start() -> (tempfile::TempDir, std::path::PathBuf, Lintel) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    (dir, data, l)
}

/// A response, read whole.
#[derive(Debug)]
struct Resp {
    status: u16,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }
}

#[derive(Clone, Copy)]
enum Cred<'a> {
    Bearer(&'a str),
    Key(&'a str),
}

fn call(
    l: &Lintel,
    method: Method,
    path: &str,
    cred: Cred,
    body: Option<&Value>,
    tenant: Option<&str>,
) -> Resp {
    let mut rb = client().request(method, l.url(path));
    rb = match cred {
        Cred::Bearer(t) => rb.bearer_auth(t),
        Cred::Key(k) => rb.header("X-API-Key", k),
    };
    if let Some(t) = tenant {
        rb = rb.header("X-Tenant-Id", t);
    }
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        text: r.text().unwrap(),
        headers,
    }
}

fn get(l: &Lintel, t: &str, path: &str) -> Resp {
    call(l, Method::GET, path, Cred::Bearer(t), None, None)
}

fn post(l: &Lintel, t: &str, path: &str, body: Value) -> Resp {
    call(l, Method::POST, path, Cred::Bearer(t), Some(&body), None)
}

fn token_form(l: &Lintel, form: &[(&str, &str)]) -> Resp {
    let r = client()
        .post(l.url("/auth/oauth/token"))
        .form(form)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        text: r.text().unwrap(),
        headers,
    }
}

/// Password sign-in → the token response.
fn login(l: &Lintel, email: &str, password: &str, authority: Option<&str>) -> Value {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", email),
        ("password", password),
    ];
    if let Some(a) = authority {
        form.push(("authority", a));
    }
    let r = token_form(l, &form);
    assert_eq!(r.status, 200, "sign-in as {email}: {}", r.text);
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert!(v["expires_in"].as_u64().unwrap() > 0, "{v}");
    v
}

fn access(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}
fn refresh(v: &Value) -> String {
    v["refresh_token"].as_str().unwrap().to_string()
}

fn refresh_with(l: &Lintel, rt: &str) -> Resp {
    token_form(l, &[("grant_type", "refresh_token"), ("refresh_token", rt)])
}

/// Create a user (as `t`) and return its id.
fn create_user(l: &Lintel, t: &str, tenant: Option<&str>, email: &str, role: &str) -> String {
    let body = json!({
        "name": email, "email": email, "roles": [role], "password": USER_PASSWORD,
    });
    let r = call(
        l,
        Method::POST,
        &format!("{V2}/users"),
        Cred::Bearer(t),
        Some(&body),
        tenant,
    );
    assert_eq!(r.status, 201, "create user {email}: {}", r.text);
    assert!(!r.text.contains("password_hash"), "{}", r.text);
    assert!(!r.text.contains(USER_PASSWORD), "{}", r.text);
    let v = r.json();
    assert_eq!(v["email"], email, "{v}");
    assert_eq!(v["roles"], json!([role]), "{v}");
    assert_eq!(v["has_password"], true, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn first_system(l: &Lintel, t: &str) -> String {
    let r = get(l, t, &format!("{V2}/systems"));
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    v[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no demo system: {v}"))
        .to_string()
}

fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let v = r.json();
    assert_eq!(v["error"], code, "{what}: {v}");
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

// 1. ------------------------------------------------------------------------------------

#[test]
fn refresh_tokens_rotate_and_reuse_revokes_the_session() {
    let (_dir, _data, l) = start();
    let me = format!("{V2}/users/current");

    let first = login(&l, ADMIN, PASSWORD, None);
    let (a1, r1) = (access(&first), refresh(&first));
    assert_eq!(get(&l, &a1, &me).json()["email"], ADMIN);
    // An unrelated session of the same user, which must survive what follows.
    let other = login(&l, ADMIN, PASSWORD, None);

    // Rotation: each refresh hands out a new pair; the new tokens work.
    let r = refresh_with(&l, &r1);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let second = r.json();
    let (a2, r2) = (access(&second), refresh(&second));
    assert_ne!(r2, r1, "the refresh token rotates");
    assert_eq!(get(&l, &a2, &me).status, 200);
    let r = refresh_with(&l, &r2);
    assert_eq!(r.status, 200, "{}", r.text);
    let third = r.json();
    let (a3, r3) = (access(&third), refresh(&third));
    assert_ne!(r3, r2);
    assert_eq!(get(&l, &a3, &me).status, 200);

    // Reuse of an exchanged refresh token: refused, and the whole session is revoked.
    let reused = refresh_with(&l, &r1);
    assert_eq!(reused.status, 400, "{}", reused.text);
    let v = reused.json();
    assert_eq!(v["error"], "invalid_grant", "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("already used")),
        "{v}"
    );
    let newest = refresh_with(&l, &r3);
    assert_eq!(
        newest.status, 400,
        "the newest refresh token dies with the session: {}",
        newest.text
    );
    assert_eq!(newest.json()["error"], "invalid_grant");
    for (name, t) in [("a1", &a1), ("a2", &a2), ("a3", &a3)] {
        let r = get(&l, t, &me);
        assert_error(&r, 401, "unauthorized", &format!("{name} after reuse"));
    }
    // Garbage refresh tokens are invalid_grant too.
    assert_eq!(
        refresh_with(&l, "not-a-token").json()["error"],
        "invalid_grant"
    );

    // The other session is untouched.
    assert_eq!(get(&l, &access(&other), &me).status, 200);
    let r = refresh_with(&l, &refresh(&other));
    assert_eq!(r.status, 200, "{}", r.text);

    // Logout revokes the session: its access token and its refresh token.
    let s = login(&l, ADMIN, PASSWORD, None);
    let out = post(&l, &access(&s), "/auth/logout", json!({}));
    assert_eq!(out.status, 204, "{}", out.text);
    assert_error(
        &get(&l, &access(&s), &me),
        401,
        "unauthorized",
        "after logout",
    );
    let r = refresh_with(&l, &refresh(&s));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "invalid_grant");
    // Logging out again with the dead token is a 401.
    assert_eq!(post(&l, &access(&s), "/auth/logout", json!({})).status, 401);

    // No token reached the logs.
    let logs = [l.stdout(), l.stderr()].concat().join("\n");
    for t in [&a1, &r1, &r2, &r3, &refresh(&s)] {
        assert!(!logs.contains(t.as_str()), "a token leaked into the logs");
    }
}

// 2. ------------------------------------------------------------------------------------

#[test]
fn api_keys_work_until_revoked_and_never_show_their_secret() {
    let (_dir, _data, l) = start();
    let t = l.token(PASSWORD);

    let r = post(
        &l,
        &t,
        &format!("{V2}/api_keys"),
        json!({"name": "bi", "role": "support"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let created = r.json();
    let key = created["x_api_key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.len() >= 20, "{key}");
    assert!(created.get("secret_hash").is_none(), "{created}");
    assert_eq!(created["role"], "support", "{created}");

    // Never shown again: not in the list, not in show.
    for path in [format!("{V2}/api_keys"), format!("{V2}/api_keys/{id}")] {
        let r = get(&l, &t, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert!(!r.text.contains(&key), "{path} shows the key");
        assert!(!r.text.contains("secret_hash"), "{path}: {}", r.text);
        assert!(!r.text.contains("x_api_key"), "{path}: {}", r.text);
        assert!(!r.text.contains("$scrypt"), "{path}: {}", r.text);
    }
    assert!(get(&l, &t, &format!("{V2}/api_keys")).text.contains(&id));

    // It works, with its role: support reads configuration but writes nothing.
    let k = Cred::Key(&key);
    let r = call(&l, Method::GET, &format!("{V2}/systems"), k, None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(&l, Method::GET, &format!("{V2}/settings"), k, None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &l,
        Method::POST,
        &format!("{V2}/zones"),
        k,
        Some(&json!({"name": "z"})),
        None,
    );
    assert_error(&r, 403, "forbidden", "support key writing a zone");
    // A key may not mint a key above its own role (it may not touch api_keys at all).
    let r = call(
        &l,
        Method::POST,
        &format!("{V2}/api_keys"),
        k,
        Some(&json!({"name": "x", "role": "admin"})),
        None,
    );
    assert_error(&r, 403, "forbidden", "support key minting a key");

    // Scopes narrow a role.
    let r = post(
        &l,
        &t,
        &format!("{V2}/api_keys"),
        json!({"name": "narrow", "role": "admin", "scopes": ["systems.read"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let narrow = r.json()["x_api_key"].as_str().unwrap().to_string();
    let n = Cred::Key(&narrow);
    assert_eq!(
        call(&l, Method::GET, &format!("{V2}/systems"), n, None, None).status,
        200
    );
    assert_error(
        &call(&l, Method::GET, &format!("{V2}/zones"), n, None, None),
        403,
        "forbidden",
        "systems.read key reading zones",
    );
    assert_error(
        &call(
            &l,
            Method::POST,
            &format!("{V2}/systems"),
            n,
            Some(&json!({"name": "s"})),
            None,
        ),
        403,
        "forbidden",
        "systems.read key writing systems",
    );
    // Unknown scopes are refused at creation.
    let r = post(
        &l,
        &t,
        &format!("{V2}/api_keys"),
        json!({"name": "bad", "scopes": ["nope"]}),
    );
    assert_error(&r, 400, "bad_request", "unknown scope");

    // A wrong key is a 401.
    let wrong = format!("{key}x");
    assert_error(
        &call(
            &l,
            Method::GET,
            &format!("{V2}/systems"),
            Cred::Key(&wrong),
            None,
            None,
        ),
        401,
        "unauthorized",
        "wrong key",
    );

    // Revoked: it stops at once.
    let r = call(
        &l,
        Method::DELETE,
        &format!("{V2}/api_keys/{id}"),
        Cred::Bearer(&t),
        None,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_error(
        &call(&l, Method::GET, &format!("{V2}/systems"), k, None, None),
        401,
        "unauthorized",
        "revoked key",
    );
    assert_eq!(get(&l, &t, &format!("{V2}/api_keys/{id}")).status, 404);

    // Neither secret reached the logs.
    let logs = [l.stdout(), l.stderr()].concat().join("\n");
    assert!(
        !logs.contains(&key) && !logs.contains(&narrow),
        "an API key leaked into the logs"
    );
}

// 3. ------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
enum R {
    Staff,
    Support,
    Admin,
    Sysadmin,
}

#[test]
fn roles_matrix_over_the_api() {
    let (_dir, _data, l) = start();
    let root = l.token(PASSWORD);
    // The first-run admin is a sysadmin.
    let me = get(&l, &root, &format!("{V2}/users/current")).json();
    assert_eq!(me["roles"], json!(["sysadmin"]), "{me}");
    assert!(me.get("password_hash").is_none(), "{me}");

    let mut tokens = vec![(R::Sysadmin, root.clone())];
    for (role, name) in [
        (R::Staff, "staff"),
        (R::Support, "support"),
        (R::Admin, "admin"),
    ] {
        let email = format!("{name}-user@lintel.local");
        create_user(&l, &root, None, &email, name);
        tokens.push((role, access(&login(&l, &email, USER_PASSWORD, None))));
    }
    // Nobody grants above their own role.
    let admin_t = &tokens.iter().find(|(r, _)| *r == R::Admin).unwrap().1;
    let r = post(
        &l,
        admin_t,
        &format!("{V2}/users"),
        json!({"name": "x", "email": "x@lintel.local", "roles": ["sysadmin"], "password": USER_PASSWORD}),
    );
    assert_error(&r, 403, "forbidden", "admin granting sysadmin");
    assert!(r.json()["message"].as_str().unwrap().contains("sysadmin"));
    // Emails are unique in a tenant, whatever their case: sign-in finds users by them.
    let r = post(
        &l,
        admin_t,
        &format!("{V2}/users"),
        json!({"name": "x", "email": "Staff-User@Lintel.local", "roles": ["staff"], "password": USER_PASSWORD}),
    );
    assert_error(&r, 409, "conflict", "a second user with an existing email");

    let sys = first_system(&l, &root);
    let tenant = me["tenant_id"].as_str().unwrap().to_string();
    let bogus = "does-not-exist";

    // (method, path, body, least role allowed). Ids that do not exist still prove the
    // permission: refused callers get 403 before the lookup, allowed ones a 404.
    let mut table: Vec<(Method, String, Option<Value>, R)> = vec![
        (Method::GET, format!("{V2}/users/current"), None, R::Staff),
        (
            Method::GET,
            format!("{V2}/systems/{sys}/Display_1"),
            None,
            R::Staff,
        ),
        (
            Method::GET,
            format!("{V2}/systems/{sys}/Display_1/power"),
            None,
            R::Staff,
        ),
        (
            Method::POST,
            format!("{V2}/systems/{sys}/Display_1/power"),
            Some(json!([false])),
            R::Staff,
        ),
        (Method::GET, format!("{V2}/audit"), None, R::Support),
        (Method::GET, format!("{V2}/tenants"), None, R::Support),
        (
            Method::GET,
            format!("{V2}/tenants/{tenant}"),
            None,
            R::Support,
        ),
        (Method::GET, format!("{V2}/api_keys"), None, R::Admin),
        (
            Method::GET,
            format!("{V2}/api_keys/{bogus}"),
            None,
            R::Admin,
        ),
        (
            Method::PATCH,
            format!("{V2}/api_keys/{bogus}"),
            Some(json!({"name": "n"})),
            R::Admin,
        ),
        (
            Method::DELETE,
            format!("{V2}/api_keys/{bogus}"),
            None,
            R::Admin,
        ),
    ];
    // POST /api_keys and /tenants create, with a body unique per caller.
    let reads_for_staff = ["zones", "systems", "metadata"];
    let crud = [
        ("zones", json!({"name": "z"})),
        ("systems", json!({"name": "s"})),
        ("modules", json!({"name": "m"})),
        ("drivers", json!({"name": "d"})),
        (
            "settings",
            json!({"parent_id": sys, "encryption_level": "none", "value": {"a": 1}}),
        ),
        (
            "metadata",
            json!({"name": "md", "parent_id": sys, "details": {}}),
        ),
        ("triggers", json!({"name": "t"})),
        ("users", Value::Null),
        (
            "identity_providers",
            json!({"name": "i", "issuer": "http://127.0.0.1:9", "client_id": "c"}),
        ),
        (
            "brokers",
            json!({"name": "b", "host": "broker.example.com", "username": "u", "password": "p"}),
        ),
    ];
    for (name, body) in &crud {
        let read = match *name {
            n if reads_for_staff.contains(&n) => R::Staff,
            "identity_providers" | "brokers" => R::Admin,
            _ => R::Support,
        };
        table.push((Method::GET, format!("{V2}/{name}"), None, read));
        table.push((Method::GET, format!("{V2}/{name}/{bogus}"), None, read));
        if !body.is_null() {
            table.push((
                Method::POST,
                format!("{V2}/{name}"),
                Some(body.clone()),
                R::Admin,
            ));
        }
        table.push((
            Method::PATCH,
            format!("{V2}/{name}/{bogus}"),
            Some(json!({"name": "p"})),
            R::Admin,
        ));
        table.push((
            Method::DELETE,
            format!("{V2}/{name}/{bogus}"),
            None,
            R::Admin,
        ));
    }

    let mut failures = Vec::new();
    for (role, t) in &tokens {
        let tag = format!("{role:?}").to_lowercase();
        let mut rows = table.clone();
        rows.push((
            Method::POST,
            format!("{V2}/users"),
            Some(json!({"name": tag, "email": format!("new-{tag}@lintel.local"), "roles": ["staff"], "password": USER_PASSWORD})),
            R::Admin,
        ));
        rows.push((
            Method::POST,
            format!("{V2}/api_keys"),
            Some(json!({"name": tag, "role": "staff"})),
            R::Admin,
        ));
        rows.push((
            Method::POST,
            format!("{V2}/tenants"),
            Some(json!({"name": tag, "domain": format!("{tag}.example")})),
            R::Sysadmin,
        ));
        for (method, path, body, least) in rows {
            let r = call(
                &l,
                method.clone(),
                &path,
                Cred::Bearer(t),
                body.as_ref(),
                None,
            );
            let allowed = *role >= least;
            let ok = if allowed {
                r.status != 401 && r.status != 403 && r.status < 500
            } else {
                r.status == 403
                    && serde_json::from_str::<Value>(&r.text)
                        .is_ok_and(|v| v["error"] == "forbidden" && v["message"].is_string())
            };
            if !ok {
                failures.push(format!(
                    "{role:?} {method} {path}: expected {}, got {} {}",
                    if allowed { "allowed" } else { "403 forbidden" },
                    r.status,
                    r.text
                ));
            }
            assert!(
                !r.text.contains("$scrypt$"), // hashes never leave; the audit names the field as <redacted>
                "{method} {path}: {}",
                r.text
            );
        }
    }
    // No credential at all: 401 everywhere.
    for (method, path, body, _) in &table {
        let mut rb = client().request(method.clone(), l.url(path));
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let status = rb.send().unwrap().status().as_u16();
        if status != 401 {
            failures.push(format!("anonymous {method} {path}: got {status}"));
        }
    }
    // Logout is open to every role.
    for (role, t) in &tokens {
        let r = post(&l, t, "/auth/logout", json!({}));
        if r.status != 204 {
            failures.push(format!("{role:?} logout: {} {}", r.status, r.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every operation of the served OpenAPI document, called by every role and anonymously:
/// a role the policy does not allow gets 403, an allowed one never 401/403/5xx, and nobody
/// without a credential gets past 401. A route added to the API is covered here without
/// editing this test.
#[test]
fn every_documented_operation_enforces_its_permission() {
    use lintel_auth::{Action, Resource, policy};
    let (_dir, _data, l) = start();
    let root = l.token(PASSWORD);
    let mut tokens = vec![(R::Sysadmin, root.clone())];
    for (role, name) in [
        (R::Staff, "staff"),
        (R::Support, "support"),
        (R::Admin, "admin"),
    ] {
        let email = format!("{name}-doc@lintel.local");
        create_user(&l, &root, None, &email, name);
        tokens.push((role, access(&login(&l, &email, USER_PASSWORD, None))));
    }
    let sys = first_system(&l, &root);
    let doc: Value = client()
        .get(l.url(&format!("{V2}/openapi.json")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 60, "{} paths", paths.len());
    let resource = |name: &str| {
        Resource::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .unwrap_or_else(|| panic!("unknown resource {name}"))
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let permission = op["x-lintel-permission"].as_str().unwrap();
            if permission == "public" || path == "/auth/logout" {
                continue;
            }
            // Ids that do not exist (or the demo system) still prove the permission:
            // refused callers get 403 before any lookup, allowed ones a 400 or 404.
            let url = path
                .replace(
                    "{id}",
                    if path.contains("/systems/{id}/") {
                        &sys
                    } else {
                        "does-not-exist"
                    },
                )
                .replace("{module}", "Nothing_1")
                .replace("{key}", "power")
                .replace("{method}", "power");
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let wasm = op["requestBody"]["content"]["application/wasm"].is_object();
            let json_body = op["requestBody"]["content"]["application/json"]["schema"]["type"]
                .as_str()
                .map(|t| if t == "array" { "[]" } else { "{}" })
                .or(op["requestBody"]["content"]["application/json"]
                    .is_object()
                    .then_some("{}"));
            let send = |token: Option<&str>| {
                let mut rb = client().request(method.clone(), l.url(&url));
                if let Some(t) = token {
                    rb = rb.bearer_auth(t);
                }
                if wasm {
                    rb = rb
                        .header("content-type", "application/wasm")
                        .body(b"not wasm".to_vec());
                } else if let Some(b) = json_body {
                    rb = rb.header("content-type", "application/json").body(b);
                }
                let r = rb.send().unwrap();
                (r.status().as_u16(), r.text().unwrap_or_default())
            };
            let (status, text) = send(None);
            if status != 401 {
                failures.push(format!("anonymous {method} {url}: {status} {text}"));
            }
            for (role, t) in &tokens {
                let allowed = match permission.split_once('.') {
                    None => true, // any authenticated caller
                    Some((r, a)) => policy::allows(
                        match role {
                            R::Staff => lintel_model::Role::Staff,
                            R::Support => lintel_model::Role::Support,
                            R::Admin => lintel_model::Role::Admin,
                            R::Sysadmin => lintel_model::Role::Sysadmin,
                        },
                        resource(r),
                        if a == "read" {
                            Action::Read
                        } else {
                            Action::Write
                        },
                    ),
                };
                let (status, text) = send(Some(t));
                let ok = if allowed {
                    status != 401 && status != 403 && status < 500
                } else {
                    status == 403 && text.contains("\"forbidden\"")
                };
                if !ok {
                    failures.push(format!(
                        "{role:?} {method} {url} ({permission}): expected {}, got {status} {text}",
                        if allowed { "allowed" } else { "403" }
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "only {checked} calls");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// 4. ------------------------------------------------------------------------------------

#[test]
fn another_tenants_records_answer_404() {
    let (_dir, _data, l) = start();
    let root = l.token(PASSWORD);
    let tenant_a = get(&l, &root, &format!("{V2}/users/current")).json()["tenant_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Only a sysadmin creates tenants.
    let r = post(
        &l,
        &root,
        &format!("{V2}/tenants"),
        json!({"name": "B", "domain": "b.example"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let tenant_b = r.json()["id"].as_str().unwrap().to_string();
    // A domain is one tenant's.
    let r = post(
        &l,
        &root,
        &format!("{V2}/tenants"),
        json!({"name": "B2", "domain": "b.example"}),
    );
    assert_error(&r, 409, "conflict", "duplicate domain");

    // B's admin, created by the sysadmin acting in B.
    create_user(&l, &root, Some(&tenant_b), "boss@b.example", "admin");
    let b = access(&login(&l, "boss@b.example", USER_PASSWORD, Some(&tenant_b)));
    let me_b = get(&l, &b, &format!("{V2}/users/current")).json();
    assert_eq!(me_b["tenant_id"], tenant_b.as_str(), "{me_b}");
    // B's admin does not exist in A.
    let r = token_form(
        &l,
        &[
            ("grant_type", "password"),
            ("username", "boss@b.example"),
            ("password", USER_PASSWORD),
            ("authority", &tenant_a),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.text);
    // With two tenants and a Host that is neither's domain, the authority is required.
    let r = token_form(
        &l,
        &[
            ("grant_type", "password"),
            ("username", ADMIN),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text);

    // A's records.
    let r = post(&l, &root, &format!("{V2}/zones"), json!({"name": "A-only"}));
    assert_eq!(r.status, 201, "{}", r.text);
    let zone = r.json()["id"].as_str().unwrap().to_string();
    let r = post(
        &l,
        &root,
        &format!("{V2}/settings"),
        json!({"parent_id": zone, "encryption_level": "none", "value": {"a": 1}}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let setting = r.json()["id"].as_str().unwrap().to_string();
    let user = create_user(&l, &root, None, "someone@lintel.local", "staff");
    // One record of every other kind, too.
    let sys = first_system(&l, &root);
    let modules = get(&l, &root, &format!("{V2}/modules?control_system_id={sys}")).json();
    let module = modules[0]["id"].as_str().unwrap().to_string();
    let driver = modules[0]["driver_id"].as_str().unwrap().to_string();
    let mut created = Vec::new();
    for (kind, body) in [
        (
            "metadata",
            json!({"name": "md", "parent_id": sys, "details": {}}),
        ),
        ("triggers", json!({"name": "t"})),
        (
            "identity_providers",
            json!({"name": "idp", "issuer": "https://idp.example", "client_id": "c"}),
        ),
        (
            "brokers",
            json!({"name": "b", "host": "broker.example.com", "username": "u", "password": "p"}),
        ),
        ("api_keys", json!({"name": "k", "role": "staff"})),
    ] {
        let r = post(&l, &root, &format!("{V2}/{kind}"), body);
        assert_eq!(r.status, 201, "{kind}: {}", r.text);
        created.push((kind, r.json()["id"].as_str().unwrap().to_string()));
    }
    // Live state and control of A's system: not found for B.
    for (method, path) in [
        (Method::GET, format!("{V2}/systems/{sys}/Display_1")),
        (Method::GET, format!("{V2}/systems/{sys}/Display_1/power")),
        (Method::POST, format!("{V2}/systems/{sys}/Display_1/power")),
        (Method::GET, format!("{V2}/systems/{sys}/types")),
        (
            Method::GET,
            format!("{V2}/systems/{sys}/functions/Display_1"),
        ),
        (Method::GET, format!("{V2}/systems/{sys}/triggers")),
        (Method::POST, format!("{V2}/systems/{sys}/stop")),
        (Method::POST, format!("{V2}/systems/{sys}/restore")),
        (Method::GET, format!("{V2}/modules/{module}/state")),
        (Method::GET, format!("{V2}/modules/{module}/state/power")),
        (Method::POST, format!("{V2}/modules/{module}/exec/power")),
        (Method::POST, format!("{V2}/modules/{module}/stop")),
        (Method::POST, format!("{V2}/modules/{module}/ping")),
        (Method::GET, format!("{V2}/modules/{module}/settings")),
        (Method::POST, format!("{V2}/drivers/{driver}/reload")),
        (Method::GET, format!("{V2}/drivers/{driver}/metadata")),
        (Method::GET, format!("{V2}/drivers/{driver}/compiled")),
    ] {
        let r = call(
            &l,
            method.clone(),
            &path,
            Cred::Bearer(&b),
            Some(&json!([true])),
            None,
        );
        assert_error(&r, 404, "not_found", &format!("B {method} {path}"));
    }

    let mut every = vec![
        ("zones", zone.clone()),
        ("settings", setting.clone()),
        ("users", user.clone()),
        ("systems", sys.clone()),
        ("modules", module),
        ("drivers", driver),
    ];
    every.extend(created);
    for (kind, id) in &every {
        let path = format!("{V2}/{kind}/{id}");
        assert_error(
            &get(&l, &b, &path),
            404,
            "not_found",
            &format!("B GET {path}"),
        );
        let r = call(
            &l,
            Method::PATCH,
            &path,
            Cred::Bearer(&b),
            Some(&json!({"name": "stolen"})),
            None,
        );
        assert_error(&r, 404, "not_found", &format!("B PATCH {path}"));
        let r = call(&l, Method::DELETE, &path, Cred::Bearer(&b), None, None);
        assert_error(&r, 404, "not_found", &format!("B DELETE {path}"));
        let list = get(&l, &b, &format!("{V2}/{kind}"));
        assert_eq!(list.status, 200, "{}", list.text);
        assert!(
            !list.text.contains(id.as_str()),
            "B's {kind} list shows A's record: {}",
            list.text
        );
        // Still there for A, unchanged.
        let r = get(&l, &root, &path);
        assert_eq!(r.status, 200, "A GET {path}: {}", r.text);
        assert!(!r.text.contains("stolen"), "{}", r.text);
    }
    // B's tenant list is B alone; A is not found.
    let r = get(&l, &b, &format!("{V2}/tenants"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains(&tenant_a), "{}", r.text);
    assert_error(
        &get(&l, &b, &format!("{V2}/tenants/{tenant_a}")),
        404,
        "not_found",
        "B GET tenant A",
    );

    // X-Tenant-Id from a non-sysadmin: 404, the same answer as a missing tenant.
    let r = call(
        &l,
        Method::GET,
        &format!("{V2}/zones"),
        Cred::Bearer(&b),
        None,
        Some(&tenant_a),
    );
    assert_error(&r, 404, "not_found", "B's admin switching to A");
    let a_admin_id = create_user(&l, &root, None, "admin-a@lintel.local", "admin");
    let a_admin = access(&login(
        &l,
        "admin-a@lintel.local",
        USER_PASSWORD,
        Some(&tenant_a),
    ));
    let r = call(
        &l,
        Method::GET,
        &format!("{V2}/zones"),
        Cred::Bearer(&a_admin),
        None,
        Some(&tenant_b),
    );
    assert_error(&r, 404, "not_found", "A's admin switching to B");
    let r = call(
        &l,
        Method::GET,
        &format!("{V2}/zones"),
        Cred::Bearer(&root),
        None,
        Some("tenant-nope"),
    );
    assert_error(
        &r,
        404,
        "not_found",
        "sysadmin switching to a missing tenant",
    );
    // The sysadmin acting in B sees B's records, not A's.
    let r = call(
        &l,
        Method::GET,
        &format!("{V2}/zones/{zone}"),
        Cred::Bearer(&root),
        None,
        Some(&tenant_b),
    );
    assert_error(&r, 404, "not_found", "sysadmin in B reading A's zone");
    let r = call(
        &l,
        Method::GET,
        &format!("{V2}/users"),
        Cred::Bearer(&root),
        None,
        Some(&tenant_b),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("boss@b.example") && !r.text.contains(&a_admin_id),
        "{}",
        r.text
    );
}

// 5. ------------------------------------------------------------------------------------

#[test]
fn a_canary_secret_never_leaks() {
    let (dir, data, l) = start();
    let root = l.token(PASSWORD);
    let canary = unique("CANARY");
    let admin_secret = unique("ADMINSECRET");
    let mut bodies: Vec<String> = Vec::new();

    create_user(&l, &root, None, "admin@b.local", "admin");
    create_user(&l, &root, None, "support@b.local", "support");
    create_user(&l, &root, None, "staff@b.local", "staff");
    let admin = access(&login(&l, "admin@b.local", USER_PASSWORD, None));
    let support = access(&login(&l, "support@b.local", USER_PASSWORD, None));
    let staff = access(&login(&l, "staff@b.local", USER_PASSWORD, None));
    let sys = first_system(&l, &admin);

    let r = post(
        &l,
        &admin,
        &format!("{V2}/settings"),
        json!({"parent_id": sys, "encryption_level": "never_display", "value": {"password": canary}}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    bodies.push(r.text.clone());
    let never = r.json();
    assert_eq!(
        never["value"], "<redacted>",
        "even its creator never sees it: {never}"
    );
    let never_id = never["id"].as_str().unwrap().to_string();
    let r = post(
        &l,
        &admin,
        &format!("{V2}/settings"),
        json!({"parent_id": sys, "encryption_level": "admin", "value": {"password": admin_secret}}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    bodies.push(r.text.clone());
    let admin_id = r.json()["id"].as_str().unwrap().to_string();
    // Support may not write a level it cannot read.
    let r = post(
        &l,
        &support,
        &format!("{V2}/settings"),
        json!({"parent_id": sys, "encryption_level": "admin", "value": {"x": 1}}),
    );
    assert_error(&r, 403, "forbidden", "support writing settings");

    // An MQTT broker's password: sealed, shown back only as `true`. A real broker refuses
    // it (the refusal is logged, the password is not); another broker with the right
    // credentials receives everything published, which must hold neither secret.
    let mosquitto = lintel_testkit::Mosquitto::start(None);
    let everything = crate::mqtt::Sub::start(&mosquitto, "#");
    let r = post(
        &l,
        &admin,
        &format!("{V2}/brokers"),
        json!({"name": "Reader", "host": "127.0.0.1", "port": mosquitto.port(),
               "username": lintel_testkit::MQTT_USER, "password": lintel_testkit::MQTT_PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = post(
        &l,
        &admin,
        &format!("{V2}/brokers"),
        json!({"name": "Site broker", "host": "127.0.0.1", "port": mosquitto.port(), "username": "lintel", "password": canary}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["password"], true, "{}", r.text);
    bodies.push(r.text.clone());
    let broker_id = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        &l,
        Method::PATCH,
        &format!("{V2}/brokers/{broker_id}"),
        Cred::Bearer(&admin),
        Some(&json!({"description": "kept sealed"})),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["password"], true, "{}", r.text);
    bodies.push(r.text.clone());

    // Updating with the redacted placeholder keeps the value (no way to read it back).
    let r = call(
        &l,
        Method::PATCH,
        &format!("{V2}/settings/{never_id}"),
        Cred::Bearer(&admin),
        Some(&json!({"value": "<redacted>"})),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    bodies.push(r.text.clone());

    for (who, t) in [
        ("admin", &admin),
        ("sysadmin", &root),
        ("support", &support),
    ] {
        let r = get(&l, t, &format!("{V2}/settings/{never_id}"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        assert_eq!(r.json()["value"], "<redacted>", "{who}: {}", r.text);
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/settings/{admin_id}"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        if who == "support" {
            assert_eq!(
                r.json()["value"],
                "<redacted>",
                "support reads an admin-level value: {}",
                r.text
            );
            assert!(!r.text.contains(&admin_secret));
        } else {
            assert_eq!(
                r.json()["value"]["password"],
                admin_secret.as_str(),
                "{who}: {}",
                r.text
            );
        }
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/settings?parent_id={sys}"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        assert!(r.text.contains(&never_id), "{}", r.text);
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/settings"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/audit"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        if who == "support" {
            assert!(
                !r.text.contains(&admin_secret),
                "the audit trail shows support an admin-level value"
            );
        }
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/audit?record_id={never_id}"));
        assert_eq!(r.status, 200, "{who}: {}", r.text);
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/brokers/{broker_id}"));
        assert_eq!(
            r.status,
            if who == "support" { 403 } else { 200 },
            "{who}: {}",
            r.text
        );
        bodies.push(r.text);
        let r = get(&l, t, &format!("{V2}/brokers"));
        bodies.push(r.text);
    }
    for path in [
        format!("{V2}/settings"),
        format!("{V2}/settings/{never_id}"),
        format!("{V2}/settings/{admin_id}"),
        format!("{V2}/brokers/{broker_id}"),
    ] {
        let r = get(&l, &staff, &path);
        assert_error(&r, 403, "forbidden", &format!("staff GET {path}"));
        bodies.push(r.text);
    }
    // Live module state must not expose it either.
    let r = get(&l, &admin, &format!("{V2}/systems/{sys}/Display_1"));
    bodies.push(r.text);

    // What reached the broker: the demo building's state, and neither secret.
    everything.wait("the demo state on the broker", |t, _| {
        t.ends_with("/Display/1/power")
    });
    let published = everything.lines();
    for line in &published {
        assert!(
            !line.contains(&canary) && !line.contains(&admin_secret),
            "a secret reached the MQTT broker: {line}"
        );
    }

    // A backup (while serving).
    let file = dir.path().join("canary.backup");
    let mut backup = command(&data);
    backup.args(["backup", "--out"]).arg(&file);
    let (code, out) = run_to_exit(backup, std::time::Duration::from_secs(60));
    assert_eq!(code, Some(0), "backup failed: {out}");
    let backup_bytes = std::fs::read(&file).unwrap();
    assert!(!backup_bytes.is_empty());

    let stderr = l.stderr();
    let (status, stdout) = l.terminate();
    assert_eq!(status.code(), Some(0), "{stdout:?}");
    let stderr = [stderr, Vec::new()].concat();

    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    for (i, b) in bodies.iter().enumerate() {
        assert!(
            !b.contains(&canary),
            "response #{i} shows the never_display value: {b}"
        );
    }
    for line in stdout.iter().chain(&stderr) {
        assert!(!line.contains(&canary), "the canary is in the logs: {line}");
        assert!(
            !line.contains(&admin_secret),
            "the admin-level secret is in the logs: {line}"
        );
    }
    assert!(!out.contains(&canary), "backup command output: {out}");
    assert!(
        stdout
            .iter()
            .any(|l| l.contains("MQTT broker unreachable") && l.contains("not authorized")),
        "the broker given the canary as its password was tried and refused"
    );
    assert!(
        !contains(&backup_bytes, &canary),
        "the canary is in the backup in clear"
    );
    assert!(
        !contains(&backup_bytes, &admin_secret),
        "the admin-level secret is in the backup in clear"
    );
    // Nor in the data directory at rest.
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !contains(&bytes, &canary),
                    "the canary is in clear in {}",
                    path.display()
                );
            }
        }
    }
}

// 6. ------------------------------------------------------------------------------------

fn fragment(location: &str) -> HashMap<String, String> {
    let (_, frag) = location
        .split_once('#')
        .unwrap_or_else(|| panic!("no fragment in {location}"));
    reqwest::Url::parse(&format!("http://x/?{frag}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Sign in through Lintel's login URL with one cookie-keeping browser, then request the
/// callback with that same browser; the callback's response.
fn oidc_sign_in(l: &Lintel, idp: &Idp, idp_id: &str, redirect_uri: &str) -> Resp {
    let browser = browser();
    let start = l.url(&format!("/auth/oidc/{idp_id}/login?continue=/app"));
    let callback = idp.sign_in_with(&browser, &start, redirect_uri, Some("alice"));
    let r = browser.get(&callback).send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Resp {
        status,
        text: r.text().unwrap(),
        headers,
    }
}

#[test]
fn oidc_sign_in_against_a_real_provider() {
    let (_dir, _data, l) = start();
    let root = l.token(PASSWORD);
    let redirect_uri = format!("{}/auth/oidc/callback", l.base);
    let client_secret = unique("idp-secret");
    let idp = Idp::start(
        "lintel",
        &client_secret,
        &redirect_uri,
        &[("alice", crate::idp::alice())],
    );
    let config = |name: &str, tid: &str| {
        json!({
            "name": name,
            "issuer": idp.issuer,
            "client_id": "lintel",
            "client_secret": client_secret,
            "role_mappings": [{"group": "building-admins", "role": "admin"}],
            "default_role": null,
            "allowed_tids": [tid],
            "allowed_hosted_domains": [],
        })
    };
    let r = post(
        &l,
        &root,
        &format!("{V2}/identity_providers"),
        config("Entra", "tenant-guid-1"),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains(&client_secret), "{}", r.text);
    let created = r.json();
    assert_eq!(created["client_secret"], true, "{created}");
    let idp_id = created["id"].as_str().unwrap().to_string();
    // An update that leaves the secret out keeps it (the sign-in below needs it).
    let r = call(
        &l,
        Method::PATCH,
        &format!("{V2}/identity_providers/{idp_id}"),
        Cred::Bearer(&root),
        Some(&json!({"name": "Entra ID"})),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["client_secret"], true, "{}", r.text);
    let r = get(&l, &root, &format!("{V2}/identity_providers"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains(&client_secret), "{}", r.text);
    assert_eq!(r.json()[0]["client_secret"], true, "{}", r.text);

    // Sign in as alice: the callback sends the browser to /app with tokens in the fragment.
    let r = oidc_sign_in(&l, &idp, &idp_id, &redirect_uri);
    assert_eq!(
        r.status,
        302,
        "callback: {}\nprovider: {}",
        r.text,
        idp.logs()
    );
    let location = r
        .headers
        .get(LOCATION)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(location.starts_with("/app#"), "{location}");
    let params = fragment(&location);
    let token = params["access_token"].clone();
    assert!(params.contains_key("refresh_token"), "{location}");
    let me = get(&l, &token, &format!("{V2}/users/current"));
    assert_eq!(me.status, 200, "{}", me.text);
    let me = me.json();
    assert_eq!(me["email"], "alice@acme.example", "{me}");
    assert_eq!(me["roles"], json!(["admin"]), "{me}");
    assert!(me.get("password_hash").is_none(), "{me}");
    // The mapped role is real: alice may manage API keys but not tenants.
    assert_eq!(get(&l, &token, &format!("{V2}/api_keys")).status, 200);
    assert_eq!(
        post(
            &l,
            &token,
            &format!("{V2}/tenants"),
            json!({"name": "x", "domain": "x.example"})
        )
        .status,
        403
    );
    // Its refresh token works like any other.
    let r = refresh_with(&l, &params["refresh_token"]);
    assert_eq!(r.status, 200, "{}", r.text);

    // A provider that admits only another directory refuses alice at the callback.
    let r = post(
        &l,
        &root,
        &format!("{V2}/identity_providers"),
        config("Other", "other"),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let other_id = r.json()["id"].as_str().unwrap().to_string();
    let r = oidc_sign_in(&l, &idp, &other_id, &redirect_uri);
    assert_error(&r, 403, "forbidden", "a directory not allowed");
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("directory"), "{msg}");
    assert!(r.headers.get(LOCATION).is_none());

    // A callback without the flow cookie is refused.
    let r = client()
        .get(l.url("/auth/oidc/callback?code=x&state=y"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // Neither the client secret nor the tokens reached the logs.
    let logs = [l.stdout(), l.stderr()].concat().join("\n");
    assert!(
        !logs.contains(&client_secret),
        "the client secret leaked into the logs"
    );
    assert!(
        !logs.contains(&token),
        "the access token leaked into the logs"
    );
}
