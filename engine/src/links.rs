//! How a running module reaches beyond its sandbox through the engine: other modules'
//! status (subscriptions) and functions (calls), HTTP requests to its own base URL, and
//! its MQTT topic filters. Each piece of work is a task that reports back to the module as
//! an event; all of them stop with the module.
//!
//! HTTP modules: `connected` follows the device, true once a request gets any answer and
//! false when one cannot reach it (the reason in `connection_error`). Authentication comes
//! from the module's settings, added to every request that sets no `Authorization` of its
//! own: `basic_auth: {"username": …, "password": …}` or `bearer_token: "…"` (keep them in
//! an encrypted settings level). `https://` checks certificates as the `tls` setting says.

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::Router;
use crate::actor::{Event, HostEvent, HttpAnswer, ModuleLinks};
use crate::host::{HttpCall, ModuleTarget, StatusTarget};
use crate::mqtt::Subscriptions;
use crate::state::ModuleStatus;
use crate::transport::CONNECTION_ERROR_KEY;

/// Largest HTTP response body handed to a driver.
pub const MAX_HTTP_RESPONSE: usize = 4 * 1024 * 1024;
const HTTP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Check a module's `http(s)://` base URL.
pub(crate) fn base_url(uri: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("uri `{uri}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("uri `{uri}` must be http(s)://host[:port][/path]"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in secret settings, not in the uri".into());
    }
    Ok(url)
}

/// An HTTP module's device: its base URL, the client that reaches it and its credentials.
#[derive(Clone)]
pub(crate) struct HttpDevice {
    pub base: reqwest::Url,
    pub client: reqwest::Client,
    /// The `Authorization` header its settings ask for.
    pub authorization: Option<reqwest::header::HeaderValue>,
    pub status: ModuleStatus,
    /// Whether the device answered the latest request.
    pub up: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpDevice {
    /// An HTTP module's device from its address and settings (`tls`, `basic_auth`,
    /// `bearer_token`); an error names the setting at fault. `shared` serves modules with
    /// no `tls` setting of their own.
    pub fn new(
        uri: &str,
        settings: &crate::actor::ModuleSettings,
        shared: &reqwest::Client,
        status: ModuleStatus,
    ) -> Result<HttpDevice, String> {
        let base = base_url(uri)?;
        let setting = |key: &str| {
            settings
                .public
                .get(key)
                .or_else(|| settings.secrets.get(key))
                .filter(|v| !v.is_null())
        };
        // Read like every transport's `tls` (public settings: certificates are not secret).
        let client = match settings.public.get("tls").filter(|v| !v.is_null()) {
            None => shared.clone(),
            Some(_) => {
                let tls = crate::tls::TlsClient::from_settings(&settings.public)?;
                if tls.server_name.is_some() {
                    return Err("setting `tls.server_name` is not supported for https:// (the URL's host is checked)".into());
                }
                http_client_builder()
                    .use_preconfigured_tls((*tls.config).clone())
                    .build()
                    .map_err(|e| format!("setting `tls`: {e}"))?
            }
        };
        let authorization = match (setting("basic_auth"), setting("bearer_token")) {
            (Some(_), Some(_)) => {
                return Err("settings `basic_auth` and `bearer_token`: give one, not both".into());
            }
            (Some(basic), None) => {
                let field = |k: &str| match basic.get(k) {
                    Some(Value::String(s)) => Ok(s.as_str()),
                    None | Some(Value::Null) if k == "password" => Ok(""),
                    _ => Err(format!("setting `basic_auth.{k}` must be a string")),
                };
                let (user, password) = (field("username")?, field("password")?);
                use base64::Engine as _;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(header_value(&format!("Basic {token}"), "basic_auth")?)
            }
            (None, Some(Value::String(token))) if !token.is_empty() => {
                Some(header_value(&format!("Bearer {token}"), "bearer_token")?)
            }
            (None, Some(_)) => {
                return Err("setting `bearer_token` must be a non-empty string".into());
            }
            (None, None) => None,
        };
        Ok(HttpDevice {
            base,
            client,
            authorization,
            status,
            up: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }
}

fn header_value(value: &str, setting: &str) -> Result<reqwest::header::HeaderValue, String> {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| format!("setting `{setting}` holds characters a header cannot carry"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// How every device HTTP client is built: no redirects (a device must not send the
/// engine elsewhere), a connect timeout.
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
}

pub(crate) struct EngineLinks {
    router: Arc<Router>,
    tenant_id: String,
    system_id: Option<String>,
    http: Option<HttpDevice>,
    mqtt: Option<Subscriptions>,
    cancel: CancellationToken,
    subscriptions: Mutex<HashMap<u64, CancellationToken>>,
}

impl EngineLinks {
    pub fn new(
        router: Arc<Router>,
        tenant_id: String,
        system_id: Option<String>,
        http: Option<HttpDevice>,
        mqtt: Option<Subscriptions>,
        cancel: CancellationToken,
    ) -> Self {
        EngineLinks {
            router,
            tenant_id,
            system_id,
            http,
            mqtt,
            cancel,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    fn system(&self, named: &Option<String>) -> Result<String, String> {
        named
            .clone()
            .or_else(|| self.system_id.clone())
            .ok_or_else(|| "this module is in no system: name one".to_string())
    }

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }
}

impl Drop for EngineLinks {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn deliver(events: &flume::Sender<Event>, ev: HostEvent) -> bool {
    events.send_async(Event::Host(ev)).await.is_ok()
}

impl ModuleLinks for EngineLinks {
    fn subscribe(&self, id: u64, target: StatusTarget, events: flume::Sender<Event>) {
        let router = self.router.clone();
        let tenant = self.tenant_id.clone();
        let system = self.system(&target.system);
        let cancel = self.cancel.child_token();
        self.subscriptions.lock().insert(id, cancel.clone());
        tokio::spawn(async move {
            let work = async {
                let slug = format!("{}_{}", target.module, target.index);
                let module_id = match system {
                    Ok(system) => router.resolve(&tenant, &system, &slug).await,
                    Err(e) => Err(crate::EngineError::ModuleNotFound(e)),
                };
                let Ok(module_id) = module_id else {
                    // Nothing to follow: the driver learns the value is absent.
                    deliver(&events, HostEvent::StatusChanged(id, None)).await;
                    return;
                };
                let mut changes = router.status.subscribe();
                let mut last = router
                    .status
                    .get(&module_id, &target.key)
                    .map(|v| (*v).clone());
                if !deliver(&events, HostEvent::StatusChanged(id, last.clone())).await {
                    return;
                }
                loop {
                    use tokio::sync::broadcast::error::RecvError;
                    let now = match changes.recv().await {
                        Ok(c) if *c.module_id == *module_id && *c.key == *target.key => {
                            c.value.as_deref().cloned()
                        }
                        Ok(_) => continue,
                        // Fell behind: re-read the value rather than replay.
                        Err(RecvError::Lagged(_)) => router
                            .status
                            .get(&module_id, &target.key)
                            .map(|v| (*v).clone()),
                        Err(RecvError::Closed) => return,
                    };
                    if now != last {
                        last = now.clone();
                        if !deliver(&events, HostEvent::StatusChanged(id, now)).await {
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = work => {}
            }
        });
    }

    fn unsubscribe(&self, id: u64) {
        if let Some(c) = self.subscriptions.lock().remove(&id) {
            c.cancel();
        }
    }

    fn call(
        &self,
        id: u64,
        target: ModuleTarget,
        function: String,
        args: Vec<Value>,
        events: flume::Sender<Event>,
    ) {
        let router = self.router.clone();
        let tenant = self.tenant_id.clone();
        let system = self.system(&target.system);
        self.spawn(async move {
            let slug = format!("{}_{}", target.module, target.index);
            let result = async {
                let system = system?;
                let module = router
                    .resolve(&tenant, &system, &slug)
                    .await
                    .map_err(|e| e.to_string())?;
                router
                    .exec(&tenant, &module, &function, args)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            deliver(&events, HostEvent::CallResult(id, result)).await;
        });
    }

    fn http(&self, id: u64, request: HttpCall, events: flume::Sender<Event>) {
        let Some(device) = self.http.clone() else {
            self.spawn(async move {
                deliver(
                    &events,
                    HostEvent::Http(id, Err("the module has no http(s) uri".into())),
                )
                .await;
            });
            return;
        };
        self.spawn(async move {
            use std::sync::atomic::Ordering;
            let (result, reached) = match http_request(&device, request).await {
                Ok(answer) => (Ok(answer), Some(true)),
                Err(HttpFailure::Unreachable(e)) => (Err(e), Some(false)),
                Err(HttpFailure::Other(e)) => (Err(e), None),
            };
            // `connected` follows whether the device answers; the driver hears of a change
            // before the answer that shows it.
            match (reached, &result) {
                (Some(true), _) => {
                    if device.status.has(CONNECTION_ERROR_KEY) {
                        device.status.set(CONNECTION_ERROR_KEY, Value::Null);
                    }
                    if !device.up.swap(true, Ordering::SeqCst)
                        && events.send_async(Event::Connected).await.is_err()
                    {
                        return;
                    }
                }
                (Some(false), Err(e)) => {
                    device
                        .status
                        .set(CONNECTION_ERROR_KEY, Value::String(e.clone()));
                    if device.up.swap(false, Ordering::SeqCst)
                        && events.send_async(Event::Disconnected).await.is_err()
                    {
                        return;
                    }
                }
                _ => {}
            }
            deliver(&events, HostEvent::Http(id, result)).await;
        });
    }

    fn lookup_system(&self, id: u64, system: Option<String>, events: flume::Sender<Event>) {
        let router = self.router.clone();
        let tenant = self.tenant_id.clone();
        let system = self.system(&system);
        self.spawn(async move {
            let result = async {
                let system = system?;
                let (record, modules) = router
                    .system_modules(&tenant, &system)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "id": record.id,
                    "name": record.name,
                    "zones": record.zones,
                    "modules": modules,
                }))
            }
            .await;
            deliver(&events, HostEvent::CallResult(id, result)).await;
        });
    }

    fn mqtt_subscribe(&self, filter: String, _events: flume::Sender<Event>) {
        let Some(mqtt) = &self.mqtt else {
            // The host refuses mqtt-subscribe for other transports.
            return;
        };
        if let Err(e) = mqtt.add(filter) {
            tracing::warn!(error = %e, "MQTT subscription not made");
        }
    }
}

/// Why an HTTP request failed: the device could not be reached, or anything else (a bad
/// request, an answer too big).
#[derive(Debug, PartialEq)]
enum HttpFailure {
    Unreachable(String),
    Other(String),
}

async fn http_request(device: &HttpDevice, req: HttpCall) -> Result<HttpAnswer, HttpFailure> {
    let base = &device.base;
    let other = HttpFailure::Other;
    let url = format!("{}{}", base.as_str().trim_end_matches('/'), req.path);
    let url = reqwest::Url::parse(&url).map_err(|e| other(format!("bad path: {e}")))?;
    if url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(other("the request must stay on the module's host".into()));
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|e| other(format!("method `{}`: {e}", req.method)))?;
    let timeout = match req.timeout_ms {
        0 => HTTP_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(ms.into()).min(HTTP_TIMEOUT_MAX),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in req.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| other(format!("header name `{k}` is not valid")))?;
        let value = reqwest::header::HeaderValue::from_str(&v)
            .map_err(|_| other(format!("header `{k}` has a value a header cannot carry")))?;
        headers.append(name, value);
    }
    if let Some(auth) = &device.authorization {
        headers
            .entry(reqwest::header::AUTHORIZATION)
            .or_insert_with(|| auth.clone());
    }
    let resp = device
        .client
        .request(method, url)
        .timeout(timeout)
        .headers(headers)
        .body(req.body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                HttpFailure::Unreachable(format!("no answer within {} ms", timeout.as_millis()))
            } else if e.is_connect() {
                // Without the URL: its query may carry a device token.
                HttpFailure::Unreachable(format!(
                    "cannot reach {}: {}",
                    base.host_str().unwrap_or_default(),
                    source_chain(&e)
                ))
            } else {
                HttpFailure::Unreachable(format!("request failed: {}", source_chain(&e)))
            }
        })?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            HttpFailure::Unreachable(format!("reading the response: {}", source_chain(&e)))
        })?;
        if body.len() + chunk.len() > MAX_HTTP_RESPONSE {
            return Err(other(format!(
                "the response exceeds {MAX_HTTP_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// An error and its causes, without the URL reqwest puts in its own message.
fn source_chain(e: &reqwest::Error) -> String {
    let mut out = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    if out.is_empty() {
        out.push(
            if e.is_body() {
                "the body could not be sent or read"
            } else {
                "the request failed"
            }
            .into(),
        );
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A real HTTP/1.1 server on a loopback port: answers each request by `respond` from
    /// the request head and body, and hands the request it read to the test.
    async fn server(
        respond: impl Fn(&str, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> (
        reqwest::Url,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/api/", listener.local_addr().unwrap()))
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (tx, respond) = (tx.clone(), respond.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            while buf.len() < end + 4 + len {
                                let n = sock.read(&mut chunk).await.unwrap();
                                buf.extend_from_slice(&chunk[..n]);
                            }
                            break (head, buf[end + 4..end + 4 + len].to_vec());
                        }
                    };
                    let answer = respond(&head, &body);
                    let _ = tx.send((head, body));
                    match answer {
                        Some(bytes) => {
                            let _ = sock.write_all(&bytes).await;
                        }
                        // Never answer (the client's timeout is under test).
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        (url, rx)
    }

    fn call(method: &str, path: &str, body: &[u8], timeout_ms: u32) -> HttpCall {
        HttpCall {
            method: method.into(),
            path: path.into(),
            headers: vec![("X-Lintel-Test".into(), "yes".into())],
            body: body.to_vec(),
            timeout_ms,
        }
    }

    /// An HTTP module's device at `base` with these settings.
    fn device_with(base: &reqwest::Url, settings: Value) -> Result<HttpDevice, String> {
        let settings = crate::actor::ModuleSettings {
            public: settings,
            ..Default::default()
        };
        let bus = crate::StatusBus::default();
        HttpDevice::new(
            base.as_str(),
            &settings,
            &http_client_builder().build().unwrap(),
            bus.module("mod-http"),
        )
    }

    fn device(base: &reqwest::Url) -> HttpDevice {
        device_with(base, serde_json::json!({})).unwrap()
    }

    #[tokio::test]
    async fn requests_reach_a_real_server_and_answers_come_back_whole() {
        let (base, mut seen) = server(|head, body| {
            let reply = format!("{} {}", head.lines().next().unwrap(), body.len());
            Some(
                format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Device: panel\r\n\
                     Content-Length: {}\r\n\r\n{reply}",
                    reply.len()
                )
                .into_bytes(),
            )
        })
        .await;
        let answer = http_request(&device(&base), call("POST", "/power?on=1", b"{}", 0))
            .await
            .unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(
            String::from_utf8(answer.body).unwrap(),
            "POST /api/power?on=1 HTTP/1.1 2"
        );
        assert!(
            answer
                .headers
                .iter()
                .any(|(k, v)| k == "x-device" && v == "panel"),
            "{:?}",
            answer.headers
        );
        let (head, body) = seen.recv().await.unwrap();
        assert!(
            head.to_ascii_lowercase().contains("\r\nx-lintel-test: yes"),
            "{head}"
        );
        assert_eq!(body, b"{}");
    }

    #[tokio::test]
    async fn oversized_slow_and_off_host_requests_fail_with_a_reason() {
        let big = MAX_HTTP_RESPONSE + 1;
        let (base, _seen) = server(move |head, _| {
            if head.starts_with("GET /api/slow") {
                return None;
            }
            let mut bytes =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
            bytes.resize(bytes.len() + big, b'x');
            Some(bytes)
        })
        .await;
        let e = http_request(&device(&base), call("GET", "/big", b"", 0))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            HttpFailure::Other(format!("the response exceeds {MAX_HTTP_RESPONSE} bytes"))
        );

        let e = http_request(&device(&base), call("GET", "/slow", b"", 300))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            HttpFailure::Unreachable("no answer within 300 ms".into())
        );

        // The path is appended to the base URL; it cannot move the request to another host
        // (through userinfo or the port).
        let mut root = base.clone();
        root.set_path("/");
        for path in ["@evil.example/x", ".evil.example/x"] {
            let r = http_request(&device(&root), call("GET", path, b"", 0)).await;
            assert!(
                matches!(&r, Err(HttpFailure::Other(e)) if e.contains("must stay on the module's host") || e.contains("bad path")),
                "{path}: {r:?}"
            );
        }
        let e = http_request(&device(&base), call("NOT A METHOD", "/x", b"", 0))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpFailure::Other(m) if m.contains("NOT A METHOD")),
            "{e:?}"
        );
        let mut bad_header = call("GET", "/x", b"", 0);
        bad_header.headers.push(("X-Bad".into(), "a\nb".into()));
        let e = http_request(&device(&base), bad_header).await.unwrap_err();
        assert_eq!(
            e,
            HttpFailure::Other("header `X-Bad` has a value a header cannot carry".into())
        );

        // Nothing listens: the device is unreachable, and the error does not quote the
        // URL (its query may carry a token).
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let gone = reqwest::Url::parse(&format!("http://{addr}/")).unwrap();
        let e = http_request(&device(&gone), call("GET", "/x?token=s3cret", b"", 0))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HttpFailure::Unreachable(m) if m.starts_with("cannot reach 127.0.0.1") && !m.contains("s3cret")),
            "{e:?}"
        );
    }

    /// `basic_auth` and `bearer_token` settings reach a real server as `Authorization`;
    /// a request that sets its own keeps it; bad settings name the setting.
    #[tokio::test]
    async fn auth_settings_add_an_authorization_header() {
        let (base, mut seen) =
            server(|_, _| Some(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_vec()))
                .await;
        let auth_of = |head: String| {
            head.lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or_else(|| l.strip_prefix("Authorization: "))
                        .map(str::to_string)
                })
                .unwrap_or_default()
        };
        let basic = device_with(
            &base,
            serde_json::json!({"basic_auth": {"username": "admin", "password": "pw"}}),
        )
        .unwrap();
        http_request(&basic, call("GET", "/x", b"", 0))
            .await
            .unwrap();
        // base64("admin:pw")
        assert_eq!(auth_of(seen.recv().await.unwrap().0), "Basic YWRtaW46cHc=");
        let mut own = call("GET", "/x", b"", 0);
        own.headers
            .push(("Authorization".into(), "Token abc".into()));
        http_request(&basic, own).await.unwrap();
        assert_eq!(auth_of(seen.recv().await.unwrap().0), "Token abc");

        let bearer = device_with(&base, serde_json::json!({"bearer_token": "t0k"})).unwrap();
        http_request(&bearer, call("GET", "/x", b"", 0))
            .await
            .unwrap();
        assert_eq!(auth_of(seen.recv().await.unwrap().0), "Bearer t0k");

        for (settings, why) in [
            (
                serde_json::json!({"basic_auth": {"password": "pw"}}),
                "`basic_auth.username`",
            ),
            (serde_json::json!({"bearer_token": ""}), "`bearer_token`"),
            (
                serde_json::json!({"bearer_token": "a", "basic_auth": {"username": "u"}}),
                "not both",
            ),
            (
                serde_json::json!({"bearer_token": "a\nb"}),
                "`bearer_token` holds",
            ),
            (serde_json::json!({"tls": {"ca": "not pem"}}), "tls.ca"),
        ] {
            let e = device_with(&base, settings.clone()).err().unwrap();
            assert!(e.contains(why), "{settings}: {e}");
            assert!(!e.contains("pw") && !e.contains("a\nb"), "{e}");
        }
    }

    /// `connected` follows an HTTP device: the first answer connects it (before the
    /// answer reaches the driver), a device that cannot be reached disconnects it and says
    /// why in `connection_error`, and an answer clears that again.
    #[tokio::test]
    async fn http_connected_follows_whether_the_device_answers() {
        let (base, _seen) =
            server(|_, _| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())).await;
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(crate::StatusBus::default());
        let router = Arc::new(Router::new(
            Arc::new(lintel_store::EmbeddedStore::open(dir.path()).unwrap()),
            bus.clone(),
            Duration::from_secs(5),
        ));
        let status = bus.module("mod-http");
        let links_at = |url: &reqwest::Url| {
            let settings = crate::actor::ModuleSettings::default();
            let device = HttpDevice::new(
                url.as_str(),
                &settings,
                &http_client_builder().build().unwrap(),
                status.clone(),
            )
            .unwrap();
            EngineLinks::new(
                router.clone(),
                "tenant".into(),
                None,
                Some(device),
                None,
                CancellationToken::new(),
            )
        };
        let (tx, rx) = flume::bounded(16);
        let kinds = |n: usize| {
            let rx = rx.clone();
            async move {
                let mut out = Vec::new();
                for _ in 0..n {
                    out.push(match rx.recv_async().await.unwrap() {
                        Event::Connected => "connected".to_string(),
                        Event::Disconnected => "disconnected".to_string(),
                        Event::Host(HostEvent::Http(_, Ok(a))) => format!("answer {}", a.status),
                        Event::Host(HostEvent::Http(_, Err(e))) => format!("error {e}"),
                        _ => "other".to_string(),
                    });
                }
                out
            }
        };
        let up = links_at(&base);
        up.http(1, call("GET", "/x", b"", 0), tx.clone());
        assert_eq!(kinds(2).await, ["connected", "answer 200"]);
        up.http(2, call("GET", "/x", b"", 0), tx.clone());
        assert_eq!(kinds(1).await, ["answer 200"]);

        // The same module's device stops answering (a port nothing listens on).
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone =
            reqwest::Url::parse(&format!("http://{}/", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        let mut down = links_at(&gone);
        down.http.as_mut().unwrap().up = up.http.as_ref().unwrap().up.clone();
        down.http(3, call("GET", "/x", b"", 0), tx.clone());
        let seen = kinds(2).await;
        assert_eq!(seen[0], "disconnected");
        assert!(
            seen[1].starts_with("error cannot reach 127.0.0.1"),
            "{seen:?}"
        );
        let why = bus.get("mod-http", CONNECTION_ERROR_KEY).unwrap();
        assert!(why.as_str().unwrap().starts_with("cannot reach"), "{why}");

        up.http(4, call("GET", "/x", b"", 0), tx.clone());
        assert_eq!(kinds(2).await, ["connected", "answer 200"]);
        assert_eq!(
            bus.get("mod-http", CONNECTION_ERROR_KEY).as_deref(),
            Some(&Value::Null)
        );
    }
}
