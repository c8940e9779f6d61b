//! A real OpenID provider for the single sign-on tests: node `oidc-provider` (panva), run by
//! `tests/oidc/provider.mjs`, with one confidential client and a set of test accounts.
//!
//! Its npm packages are installed by `scripts/test` (`npm ci --prefix tests/oidc`).
//! [`Idp::sign_in`] plays the browser: it follows redirects from a relying party's login URL
//! through the provider, signs in as a test account (or refuses) and hands back the callback URL.

use reqwest::Url;
use reqwest::blocking::Client;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/provider.mjs");
const NODE_MODULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/node_modules");
/// Per attempt; three attempts are made.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// More than any sign-in takes (relying party, authorize, two interactions, callback).
const MAX_REDIRECTS: usize = 20;

/// A running test OpenID provider. Stopped when dropped.
pub struct Idp {
    /// `http://127.0.0.1:<port>`, also the base of every endpoint.
    pub issuer: String,
    child: Child,
    /// Held open: the provider exits when it closes, even if this process dies without `Drop`.
    _stdin: ChildStdin,
    /// The config file must outlive the start; removed on drop.
    _config: tempfile::NamedTempFile,
    stderr: Arc<Mutex<String>>,
}

/// A test account: `key` is its `sub` and its sign-in name; every field of `claims` is a claim.
pub struct IdpAccount {
    pub key: String,
    pub claims: Value,
}

impl IdpAccount {
    pub fn new(key: &str, claims: Value) -> IdpAccount {
        IdpAccount {
            key: key.to_string(),
            claims,
        }
    }
}

impl Idp {
    /// Start the provider with one confidential client; waits for READY (30 s per attempt, three
    /// attempts, with the captured stderr in the panic message).
    pub fn start(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        accounts: &[(&str, Value)],
    ) -> Idp {
        let accounts: Vec<IdpAccount> = accounts
            .iter()
            .map(|(key, claims)| IdpAccount::new(key, claims.clone()))
            .collect();
        Idp::start_with_accounts(client_id, client_secret, redirect_uri, &accounts)
    }

    /// [`Idp::start`] with [`IdpAccount`]s.
    pub fn start_with_accounts(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        accounts: &[IdpAccount],
    ) -> Idp {
        assert!(
            Path::new(NODE_MODULES).join("oidc-provider").is_dir(),
            "the test OpenID provider's npm packages are not installed ({NODE_MODULES} is \
             missing): run `npm ci --prefix tests/oidc` (scripts/test does it)"
        );
        let accounts: serde_json::Map<String, Value> = accounts
            .iter()
            .map(|a| (a.key.clone(), a.claims.clone()))
            .collect();
        // The port is picked here and released for node to bind; another process can take it in
        // between, so a failure to listen is retried on a new port.
        let mut attempts = 0;
        let mut failures = Vec::new();
        loop {
            attempts += 1;
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port();
            let config = json!({
                "port": port,
                "clients": [{
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "redirect_uris": [redirect_uri],
                }],
                "accounts": accounts,
                "exit_on_stdin_eof": true,
            });
            match Idp::spawn(port, &config) {
                Ok(idp) => return idp,
                // A lost port race, or a start that hung (seen once on a loaded CI machine:
                // node printed its first warning and then nothing for 60 s) is retried.
                Err(failure)
                    if attempts < 3
                        && (failure.contains("cannot listen") || failure.contains("no READY")) =>
                {
                    failures.push(failure);
                    continue;
                }
                Err(failure) => {
                    failures.push(failure);
                    panic!(
                        "the test OpenID provider did not start in {attempts} attempts: {}",
                        failures.join("\n--- next attempt ---\n")
                    )
                }
            }
        }
    }

    /// Start node and wait for its READY line; on failure, the reason and its stderr.
    fn spawn(port: u16, config: &Value) -> Result<Idp, String> {
        let mut file = tempfile::Builder::new()
            .prefix("lintel-test-idp-")
            .suffix(".json")
            .tempfile()
            .expect("create the provider's config file");
        serde_json::to_writer(&mut file, config).expect("write the provider's config file");
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .arg(file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run `node` for the test OpenID provider: {e} (is Node.js installed?)")
            });

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_stream = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let out_stream = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            // Keep reading after READY so the provider never blocks on a full pipe.
            for line in BufReader::new(out_stream).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = ready_tx.send(issuer.to_string());
                }
            }
        });

        let stdin = child.stdin.take().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        let issuer = loop {
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(issuer) => break issuer,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without READY: the provider is exiting.
                    let status = child.wait().ok();
                    return Err(failure(
                        &format!("exited early ({status:?})"),
                        stderr_reader,
                        &stderr,
                    ));
                }
            }
            if let Some(status) = child.try_wait().expect("poll the provider") {
                return Err(failure(
                    &format!("exited early ({status})"),
                    stderr_reader,
                    &stderr,
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure(
                    &format!("no READY within {READY_TIMEOUT:?}"),
                    stderr_reader,
                    &stderr,
                ));
            }
        };
        assert_eq!(
            issuer,
            format!("http://127.0.0.1:{port}"),
            "the provider's issuer"
        );
        Ok(Idp {
            issuer,
            child,
            _stdin: stdin,
            _config: file,
            stderr,
        })
    }

    /// What the provider wrote to stderr so far: its warnings and every error it returned to a
    /// relying party (with oidc-provider's detail, e.g. why a token request was rejected).
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Drive a browser sign-in: starting from `start_url` (typically Lintel's login endpoint,
    /// which redirects to the IdP), follow redirects manually with a cookie-keeping client,
    /// completing IdP interactions as `account` (None = the user refuses), and return the first
    /// URL that points back at `redirect_uri`'s origin+path (the callback URL carrying
    /// `code`/`state` or `error`), WITHOUT requesting it.
    ///
    /// Every call is a fresh browser with no cookies. To keep the relying party's cookies (its
    /// login state) for the callback request, use [`Idp::sign_in_with`].
    pub fn sign_in(&self, start_url: &str, redirect_uri: &str, account: Option<&str>) -> String {
        self.sign_in_with(&browser(), start_url, redirect_uri, account)
    }

    /// [`Idp::sign_in`] with the caller's client, which must keep cookies and must not follow
    /// redirects itself (see [`browser`]); the caller then requests the callback with it.
    pub fn sign_in_with(
        &self,
        client: &Client,
        start_url: &str,
        redirect_uri: &str,
        account: Option<&str>,
    ) -> String {
        let target = Url::parse(redirect_uri).expect("redirect_uri is a URL");
        let issuer = Url::parse(&self.issuer).unwrap();
        let mut url = Url::parse(start_url).expect("start_url is a URL");
        let mut visited = Vec::new();
        for _ in 0..MAX_REDIRECTS {
            if url.origin() == target.origin() && url.path() == target.path() {
                return url.into();
            }
            if url.origin() == issuer.origin() && url.path().starts_with("/interaction/") {
                // The provider's login or consent "page": answer it as the test user.
                url.set_query(None);
                if let Some(account) = account {
                    url.query_pairs_mut().append_pair("account", account);
                }
            }
            visited.push(url.to_string());
            let response = client
                .get(url.clone())
                .send()
                .unwrap_or_else(|e| panic!("sign-in: GET {url}: {e}\nvisited: {visited:#?}"));
            let status = response.status();
            let location = response.headers().get(LOCATION).cloned();
            let Some(location) = location.filter(|_| status.is_redirection()) else {
                let body = response.text().unwrap_or_default();
                panic!(
                    "sign-in: GET {url} answered {status} where a redirect was expected:\n{body}\n\
                     visited: {visited:#?}\nprovider stderr:\n{}",
                    self.logs()
                );
            };
            let location = location.to_str().expect("Location is ASCII");
            url = url
                .join(location)
                .unwrap_or_else(|e| panic!("sign-in: bad Location {location:?} from {url}: {e}"));
        }
        panic!(
            "sign-in: more than {MAX_REDIRECTS} redirects without reaching {redirect_uri}\n\
             visited: {visited:#?}\nprovider stderr:\n{}",
            self.logs()
        );
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that behaves like a browser for [`Idp::sign_in_with`]: keeps cookies and leaves
/// redirects to the caller.
pub fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the browser client")
}

/// Why the provider did not start, once it has exited and its stderr is read to the end.
fn failure(what: &str, reader: std::thread::JoinHandle<()>, stderr: &Mutex<String>) -> String {
    let _ = reader.join();
    format!("{what}; stderr:\n{}", stderr.lock().unwrap())
}

// The provider's own checks, and this driver's.

const CLIENT_ID: &str = "lintel";
const CLIENT_SECRET: &str = "s3cret";
/// Nothing listens there: sign_in stops before requesting the callback.
const REDIRECT_URI: &str = "http://127.0.0.1:9/auth/oidc/callback";
/// RFC 7636 appendix B: BASE64URL(SHA256(verifier)) == challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The test account every SSO test signs in as: an Entra-like `tid` and a Google-like `hd`.
pub fn alice() -> Value {
    json!({
        "email": "alice@acme.example",
        "email_verified": true,
        "name": "Alice",
        "groups": ["building-admins"],
        "tid": "tenant-guid-1",
        "hd": "acme.example",
    })
}

fn discovery(idp: &Idp) -> Value {
    let url = format!("{}/.well-known/openid-configuration", idp.issuer);
    browser()
        .get(url)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

fn authorization_url(discovery: &Value, state: &str, nonce: &str) -> String {
    Url::parse_with_params(
        discovery["authorization_endpoint"].as_str().unwrap(),
        [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid email profile"),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap()
    .into()
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// The payload of a JWT, without verifying it.
fn jwt_payload(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64url_decode(payload)).expect("JWT payload is JSON")
}

fn base64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn base64url_decodes() {
    assert_eq!(base64url_decode("eyJhIjoiYj8ifQ"), br#"{"a":"b?"}"#);
    assert_eq!(base64url_decode("_-8"), [0xff, 0xef]);
}

#[test]
fn the_test_idp_issues_codes_and_tokens() {
    let idp = Idp::start(
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        &[("alice", alice())],
    );
    let discovery = discovery(&idp);
    assert_eq!(discovery["issuer"], idp.issuer.as_str());
    let token_endpoint = discovery["token_endpoint"].as_str().unwrap();

    // A browser that signs in, then comes back for a second sign-in with the IdP's session.
    let browser = browser();
    let callback = idp.sign_in_with(
        &browser,
        &authorization_url(&discovery, "state-1", "nonce-1"),
        REDIRECT_URI,
        Some("alice"),
    );
    assert!(callback.starts_with(REDIRECT_URI), "{callback}");
    let params = query(&callback);
    assert_eq!(
        params.get("state").map(String::as_str),
        Some("state-1"),
        "{callback}"
    );
    let code = params
        .get("code")
        .unwrap_or_else(|| panic!("no code: {callback}"));

    // client_secret_basic, with the PKCE verifier.
    let tokens: Value = browser
        .post(token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id_token = tokens["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no id_token: {tokens}\n{}", idp.logs()));
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    let claims = jwt_payload(id_token);
    assert_eq!(claims["iss"], idp.issuer.as_str(), "{claims}");
    assert_eq!(claims["aud"], CLIENT_ID, "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["nonce"], "nonce-1", "{claims}");
    assert_eq!(claims["email"], "alice@acme.example", "{claims}");
    assert_eq!(claims["email_verified"], true, "{claims}");
    assert_eq!(claims["name"], "Alice", "{claims}");
    assert_eq!(claims["groups"], json!(["building-admins"]), "{claims}");
    assert_eq!(claims["tid"], "tenant-guid-1", "{claims}");
    assert_eq!(claims["hd"], "acme.example", "{claims}");

    // The same browser again: its IdP session and grant stand, so no interaction at all;
    // client_secret_post is accepted too. A code without the PKCE verifier is not.
    let callback = idp.sign_in_with(
        &browser,
        &authorization_url(&discovery, "state-2", "nonce-2"),
        REDIRECT_URI,
        None,
    );
    let params = query(&callback);
    assert_eq!(
        params.get("state").map(String::as_str),
        Some("state-2"),
        "{callback}"
    );
    let code = params
        .get("code")
        .unwrap_or_else(|| panic!("no code: {callback}"));
    let exchange = |verifier: Option<&str>| -> Value {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        browser
            .post(token_endpoint)
            .form(&form)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let refused = exchange(None);
    assert_eq!(refused["error"], "invalid_grant", "{refused}");
    // oidc-provider checks PKCE before it consumes the code, so the code is still good.
    let tokens = exchange(Some(VERIFIER));
    let claims = jwt_payload(
        tokens["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{tokens}")),
    );
    assert_eq!(claims["nonce"], "nonce-2", "{claims}");
    assert_eq!(claims["groups"], json!(["building-admins"]), "{claims}");

    // A fresh browser whose user refuses to sign in.
    let callback = idp.sign_in(
        &authorization_url(&discovery, "state-3", "nonce-3"),
        REDIRECT_URI,
        None,
    );
    let params = query(&callback);
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied"),
        "{callback}"
    );
    assert_eq!(
        params.get("state").map(String::as_str),
        Some("state-3"),
        "{callback}"
    );
    assert!(!params.contains_key("code"), "{callback}");

    // An authorization request without PKCE is refused by the provider itself.
    let no_pkce = authorization_url(&discovery, "state-4", "nonce-4").replace(
        &format!("&code_challenge={CHALLENGE}&code_challenge_method=S256"),
        "",
    );
    let callback = idp.sign_in(&no_pkce, REDIRECT_URI, Some("alice"));
    let params = query(&callback);
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("invalid_request"),
        "{callback}"
    );
}

#[test]
fn unknown_accounts_refuse() {
    let idp = Idp::start(
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        &[("alice", alice())],
    );
    let discovery = discovery(&idp);
    let callback = idp.sign_in(
        &authorization_url(&discovery, "s", "n"),
        REDIRECT_URI,
        Some("mallory"),
    );
    assert_eq!(
        query(&callback).get("error").map(String::as_str),
        Some("access_denied")
    );
}
