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
    /// Or the OAuth 2.0 tokens its `oauth2` setting asks for.
    pub oauth: Option<Arc<crate::oauth::OAuth2>>,
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
        let oauth = match setting("oauth2") {
            None => None,
            Some(_) if setting("basic_auth").is_some() || setting("bearer_token").is_some() => {
                return Err(
                    "settings `oauth2`, `basic_auth` and `bearer_token`: give one, not several"
                        .into(),
                );
            }
            Some(_)
                if settings.public.get("tls").and_then(|t| t.get("verify"))
                    == Some(&Value::Bool(false)) =>
            {
                return Err("setting `oauth2` cannot go with `tls.verify: false`: the credentials and tokens would go to a server whose certificate is not checked".into());
            }
            Some(v) => {
                crate::oauth::check_secure(&base, "uri")
                    .map_err(|e| format!("setting `oauth2`: the module {e}"))?;
                Some(Arc::new(crate::oauth::OAuth2::from_setting(
                    v,
                    client.clone(),
                )?))
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
            oauth,
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
    let own_authorization = headers.contains_key(reqwest::header::AUTHORIZATION);
    // The engine's credentials go to the module's host only: a `Host` of the driver's
    // choosing could send them to another site behind the same address.
    if (device.authorization.is_some() || device.oauth.is_some())
        && !own_authorization
        && headers.contains_key(reqwest::header::HOST)
    {
        return Err(other(
            "header `Host` cannot be set on a request the engine adds credentials to".into(),
        ));
    }
    if let Some(auth) = &device.authorization {
        headers
            .entry(reqwest::header::AUTHORIZATION)
            .or_insert_with(|| auth.clone());
    }
    let oauth = device.oauth.as_ref().filter(|_| !own_authorization);
    let body = bytes::Bytes::from(req.body);
    // With OAuth, a 401 gets one more try with a new token (the old one may have been
    // revoked or expired early); the second answer is the driver's, whatever it is.
    let mut tries = if oauth.is_some() { 2 } else { 1 };
    let resp = loop {
        tries -= 1;
        let token = match oauth {
            Some(oauth) => {
                let token = oauth
                    .authorization()
                    .await
                    .map_err(HttpFailure::Unreachable)?;
                headers.insert(reqwest::header::AUTHORIZATION, token.clone());
                Some(token)
            }
            None => None,
        };
        let resp = send(device, &method, &url, timeout, &headers, body.clone()).await?;
        match (oauth, token) {
            (Some(oauth), Some(token))
                if tries > 0
                    && resp.status() == reqwest::StatusCode::UNAUTHORIZED
                    && oauth.reject(&token) =>
            {
                tracing::debug!(
                    "the service refused the access token (HTTP 401); getting a new one"
                );
            }
            _ => break resp,
        }
    };
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
            HttpFailure::Unreachable(format!("reading the response: {}", error_chain(&e)))
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

/// One request to the device.
async fn send(
    device: &HttpDevice,
    method: &reqwest::Method,
    url: &reqwest::Url,
    timeout: Duration,
    headers: &reqwest::header::HeaderMap,
    body: bytes::Bytes,
) -> Result<reqwest::Response, HttpFailure> {
    device
        .client
        .request(method.clone(), url.clone())
        .timeout(timeout)
        .headers(headers.clone())
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                HttpFailure::Unreachable(format!("no answer within {} ms", timeout.as_millis()))
            } else if e.is_connect() {
                // Without the URL: its query may carry a device token.
                HttpFailure::Unreachable(format!(
                    "cannot reach {}: {}",
                    device.base.host_str().unwrap_or_default(),
                    error_chain(&e)
                ))
            } else {
                HttpFailure::Unreachable(format!("request failed: {}", error_chain(&e)))
            }
        })
}

/// An error and its causes, without the URL reqwest puts in its own message.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
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

/// The `oauth2` setting against a real token endpoint and service on loopback ports.
#[cfg(test)]
mod oauth_tests {
    use super::*;
    use std::collections::HashSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const KEY: &str = include_str!("../tests/data/test-only-rsa-key.pem");
    const PUBLIC_KEY: &str = include_str!("../tests/data/test-only-rsa-key.pub.pem");
    const SECRET: &str = "cl1ent-s3cret";

    /// How the test provider behaves; tests change it between requests.
    #[derive(Default)]
    struct Provider {
        /// The next token answers (status, extra header, body); empty: issue a token.
        token_answers: Vec<(u16, &'static str, String)>,
        /// `expires_in` of issued tokens.
        lifetime: u64,
        /// A refresh token to hand out with each token.
        rotate_to: Option<String>,
        /// Tokens the service refuses.
        revoked: HashSet<String>,
        /// Refuse every token.
        refuse_all: bool,
        issued: usize,
        /// Form bodies of the token requests.
        token_requests: Vec<String>,
        /// `Authorization` of each service request.
        service_auth: Vec<String>,
    }

    /// A token endpoint at `/token` and a service at `/api/` on one loopback port.
    async fn provider(p: Provider) -> (reqwest::Url, Arc<Mutex<Provider>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(p));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body =
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                        buf.drain(..end + 4 + len);
                        let (status, extra, answer) = answer(&state, &head, body);
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if sock.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (reqwest::Url::parse(&base).unwrap(), state)
    }

    fn answer(state: &Mutex<Provider>, head: &str, body: String) -> (u16, String, String) {
        let mut p = state.lock();
        if head.starts_with("post /token") {
            p.token_requests.push(body);
            if !p.token_answers.is_empty() {
                let (status, extra, body) = p.token_answers.remove(0);
                return (status, extra.to_string(), body);
            }
            p.issued += 1;
            let mut token = serde_json::json!({
                "access_token": format!("tok-{}", p.issued),
                "token_type": "Bearer",
                "expires_in": p.lifetime,
            });
            if let Some(r) = &p.rotate_to {
                token["refresh_token"] = Value::String(format!("{r}-{}", p.issued));
            }
            return (200, String::new(), token.to_string());
        }
        let auth = head
            .lines()
            .find_map(|l| l.strip_prefix("authorization: bearer "))
            .unwrap_or_default()
            .to_string();
        p.service_auth.push(auth.clone());
        if auth.is_empty() || p.refuse_all || p.revoked.contains(&auth) {
            return (
                401,
                String::new(),
                r#"{"error":{"code":"InvalidAuthenticationToken"}}"#.into(),
            );
        }
        (200, String::new(), r#"{"value":[]}"#.into())
    }

    fn client_credentials(base: &reqwest::Url) -> Value {
        serde_json::json!({"oauth2": {
            "grant": "client_credentials",
            "token_url": format!("{base}token"),
            "client_id": "lintel",
            "client_secret": SECRET,
            "scope": "https://graph.example/.default",
        }})
    }

    fn device(base: &reqwest::Url, settings: Value) -> Result<HttpDevice, String> {
        let settings = crate::actor::ModuleSettings {
            public: settings,
            ..Default::default()
        };
        let bus = crate::StatusBus::default();
        HttpDevice::new(
            &format!("{base}api/"),
            &settings,
            &http_client_builder().build().unwrap(),
            bus.module("mod-oauth"),
        )
    }

    fn get() -> HttpCall {
        HttpCall {
            method: "GET".into(),
            path: "/events".into(),
            headers: vec![],
            body: vec![],
            timeout_ms: 0,
        }
    }

    fn form(body: &str) -> HashMap<String, String> {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let decode = |s: &str| percent_decode(&s.replace('+', " "));
                (decode(k), decode(v))
            })
            .collect()
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Client credentials: one token request serves many requests; every request carries
    /// the token; the form is RFC 6749 §4.4's.
    #[tokio::test]
    async fn a_client_credentials_token_is_fetched_once_and_sent_with_every_request() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let dev = device(&base, client_credentials(&base)).unwrap();
        for _ in 0..3 {
            let a = http_request(&dev, get()).await.unwrap();
            assert_eq!(a.status, 200);
        }
        let p = p.lock();
        assert_eq!(p.service_auth, ["tok-1", "tok-1", "tok-1"]);
        assert_eq!(p.token_requests.len(), 1);
        let f = form(&p.token_requests[0]);
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["client_id"], "lintel");
        assert_eq!(f["client_secret"], SECRET);
        assert_eq!(f["scope"], "https://graph.example/.default");
    }

    /// A token is renewed before it expires (inside the last quarter of its life, at most
    /// the last 5 min); a refused renewal keeps using the old token until it expires, and
    /// then requests fail with the reason, without asking the endpoint again during its
    /// pause.
    #[tokio::test]
    async fn tokens_are_renewed_before_expiry_and_a_failed_renewal_keeps_the_old_one() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let dev = device(&base, client_credentials(&base)).unwrap();
        let oauth = dev.oauth.clone().unwrap();
        http_request(&dev, get()).await.unwrap();
        // A 3600 s token is renewed once it is 3300 s old, not before.
        oauth.age(Duration::from_secs(3299));
        http_request(&dev, get()).await.unwrap();
        assert_eq!(p.lock().token_requests.len(), 1, "renewed too early");
        oauth.age(Duration::from_secs(2));
        http_request(&dev, get()).await.unwrap();
        assert_eq!(p.lock().token_requests.len(), 2);
        assert_eq!(p.lock().service_auth.last().unwrap(), "tok-2");

        // The endpoint is down when tok-2 needs renewing: tok-2 is still used.
        p.lock()
            .token_answers
            .push((503, "Retry-After: 120\r\n", "{}".into()));
        oauth.age(Duration::from_secs(3400));
        let a = http_request(&dev, get()).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(p.lock().service_auth.last().unwrap(), "tok-2");
        assert_eq!(p.lock().token_requests.len(), 3);
        // Expired, and the endpoint's Retry-After (120 s) has not passed: no request.
        oauth.age(Duration::from_secs(300));
        let e = http_request(&dev, get()).await.unwrap_err();
        match e {
            HttpFailure::Unreachable(why) => {
                assert!(
                    why == "oauth2: the token endpoint failed (HTTP 503); next try in 120 s"
                        || why == "oauth2: the token endpoint failed (HTTP 503); next try in 119 s",
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.lock().token_requests.len(), 3, "asked during the pause");
    }

    /// A 401 from the service drops the token: a new one is fetched and the request sent
    /// once more; a service that refuses every token gets exactly two tries, and its 401
    /// reaches the driver.
    #[tokio::test]
    async fn a_401_gets_a_new_token_and_one_more_try() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let dev = device(&base, client_credentials(&base)).unwrap();
        http_request(&dev, get()).await.unwrap();
        p.lock().revoked.insert("tok-1".into());
        let a = http_request(&dev, get()).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(p.lock().service_auth, ["tok-1", "tok-1", "tok-2"]);

        // A service refusing every token (a wrong scope or audience): a 401 drops the token
        // at most once a minute, so requests do not become token requests.
        p.lock().refuse_all = true;
        for _ in 0..3 {
            let a = http_request(&dev, get()).await.unwrap();
            assert_eq!(a.status, 401);
        }
        assert_eq!(&p.lock().service_auth[3..], ["tok-2", "tok-2", "tok-2"]);
        assert_eq!(p.lock().token_requests.len(), 2);
        // A minute later one more renewal is tried.
        dev.oauth
            .as_ref()
            .unwrap()
            .age_forced(Duration::from_secs(61));
        let a = http_request(&dev, get()).await.unwrap();
        assert_eq!(a.status, 401);
        assert_eq!(&p.lock().service_auth[6..], ["tok-2", "tok-3"]);
        assert_eq!(p.lock().token_requests.len(), 3);

        // A request with its own Authorization is the driver's business: no token, no retry.
        let mut own = get();
        own.headers
            .push(("Authorization".into(), "Bearer mine".into()));
        let a = http_request(&dev, own).await.unwrap();
        assert_eq!(a.status, 401);
        assert_eq!(p.lock().service_auth.last().unwrap(), "mine");
        assert_eq!(p.lock().service_auth.len(), 9);
        // Nor may it choose the `Host` the engine's token goes to.
        let mut host = get();
        host.headers.push(("Host".into(), "other.example".into()));
        match http_request(&dev, host).await {
            Err(HttpFailure::Other(why)) => assert!(why.contains("header `Host`"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.lock().service_auth.len(), 9);
    }

    /// Refusals name the OAuth error and what to check, never a credential (even one the
    /// endpoint echoes), and pause token requests for 60 s; a busy endpoint's
    /// `Retry-After` is honoured; malformed answers are clear errors.
    #[tokio::test]
    async fn token_endpoint_failures_are_clear_paused_and_secret_free() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let fails = |answers: Vec<(u16, &'static str, String)>| {
            let p = p.clone();
            let base = base.clone();
            async move {
                p.lock().token_answers = answers;
                let dev = device(&base, client_credentials(&base)).unwrap();
                let before = p.lock().token_requests.len();
                let first = match http_request(&dev, get()).await {
                    Err(HttpFailure::Unreachable(why)) => why,
                    other => panic!("{other:?}"),
                };
                let second = match http_request(&dev, get()).await {
                    Err(HttpFailure::Unreachable(why)) => why,
                    other => panic!("{other:?}"),
                };
                assert_eq!(p.lock().token_requests.len(), before + 1, "{first}");
                assert!(
                    !first.contains(SECRET) && !second.contains(SECRET),
                    "{first}"
                );
                (first, second)
            }
        };
        let (first, second) = fails(vec![(
            401,
            "",
            serde_json::json!({"error": "invalid_client",
                "error_description": format!("AADSTS7000215: Invalid client secret {SECRET} provided.\r\nTrace ID: 1")})
            .to_string(),
        )])
        .await;
        assert!(
            first.starts_with("oauth2: the token endpoint refused the request (invalid_client: AADSTS7000215: Invalid client secret [redacted] provided.  Trace ID: 1); check oauth2.client_id and oauth2.client_secret; next try in 60 s"),
            "{first}"
        );
        assert!(
            second.contains("invalid_client") && second.contains("next try in"),
            "{second}"
        );

        // A refusal pauses 60 s whatever `Retry-After` says, and a secret the endpoint
        // echoes is removed before the text is cut (no part of it survives the cut).
        let (first, _) = fails(vec![(
            400,
            "Retry-After: 0\r\n",
            serde_json::json!({"error": "invalid_request",
                "error_description": format!("{}{SECRET}", "x".repeat(295))})
            .to_string(),
        )])
        .await;
        assert!(first.ends_with("; next try in 60 s"), "{first}");
        assert!(!first.contains("cl1ent"), "{first}");
        // A busy endpoint saying `Retry-After: 0` still waits the back-off.
        let (first, _) = fails(vec![(503, "Retry-After: 0\r\n", "{}".into())]).await;
        assert_eq!(
            first,
            "oauth2: the token endpoint failed (HTTP 503); next try in 5 s"
        );
        let (first, _) = fails(vec![(429, "Retry-After: 30\r\n", "{}".into())]).await;
        assert_eq!(
            first,
            "oauth2: the token endpoint is busy (HTTP 429); next try in 30 s"
        );
        let (first, _) = fails(vec![(200, "", "<html>".into())]).await;
        assert_eq!(
            first,
            "oauth2: the token endpoint's answer is not JSON; next try in 5 s"
        );
        let (first, _) = fails(vec![(
            200,
            "",
            r#"{"access_token":"x","token_type":"mac"}"#.into(),
        )])
        .await;
        assert!(first.contains("is not a bearer token"), "{first}");
        let (first, _) = fails(vec![(403, "", "Forbidden".into())]).await;
        assert!(
            first
                .starts_with("oauth2: the token endpoint answered HTTP 403 without an OAuth error"),
            "{first}"
        );

        // Nothing listens at the token URL.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let mut settings = client_credentials(&base);
        settings["oauth2"]["token_url"] = Value::String(format!("http://{gone}/token"));
        let dev = device(&base, settings).unwrap();
        match http_request(&dev, get()).await {
            Err(HttpFailure::Unreachable(why)) => assert!(
                why.starts_with("oauth2: cannot reach the token endpoint 127.0.0.1"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Lifetimes are bounded: `expires_in` 0 keeps a token a minute (not one token request
    /// per request); a huge one (as a number or a string) neither panics nor is believed.
    #[tokio::test]
    async fn token_lifetimes_are_bounded() {
        for (expires_in, kept_for) in [
            (Value::from(0), 60),
            (Value::from(u64::MAX), 86_400),
            (Value::from("18446744073709551615"), 86_400),
        ] {
            let (base, p) = provider(Provider::default()).await;
            let body = serde_json::json!({"access_token": "t", "token_type": "Bearer",
                "expires_in": expires_in})
            .to_string();
            p.lock().token_answers.push((200, "", body));
            let dev = device(&base, client_credentials(&base)).unwrap();
            let oauth = dev.oauth.clone().unwrap();
            for _ in 0..3 {
                assert_eq!(http_request(&dev, get()).await.unwrap().status, 200);
            }
            assert_eq!(p.lock().token_requests.len(), 1, "{expires_in}");
            // Renewed in the last quarter of the kept lifetime (at most its last 5 min), not
            // before.
            let renew_after = kept_for - (kept_for / 4).min(300);
            oauth.age(Duration::from_secs(renew_after - 5));
            http_request(&dev, get()).await.unwrap();
            assert_eq!(p.lock().token_requests.len(), 1, "{expires_in}");
            oauth.age(Duration::from_secs(10));
            http_request(&dev, get()).await.unwrap();
            assert_eq!(p.lock().token_requests.len(), 2, "{expires_in}");
        }
    }

    /// Delegated access: the refresh token is sent, and a rotated one replaces it.
    #[tokio::test]
    async fn the_refresh_token_grant_follows_rotation() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            rotate_to: Some("r".into()),
            ..Default::default()
        })
        .await;
        let settings = serde_json::json!({"oauth2": {
            "grant": "refresh_token",
            "token_url": format!("{base}token"),
            "client_id": "lintel",
            "client_secret": SECRET,
            "refresh_token": "r-0",
        }});
        let dev = device(&base, settings).unwrap();
        http_request(&dev, get()).await.unwrap();
        p.lock().revoked.insert("tok-1".into());
        http_request(&dev, get()).await.unwrap();
        let p = p.lock();
        let sent: Vec<String> = p
            .token_requests
            .iter()
            .map(|b| form(b)["refresh_token"].clone())
            .collect();
        assert_eq!(sent, ["r-0", "r-1"]);
        let f = form(&p.token_requests[0]);
        assert_eq!(f["grant_type"], "refresh_token");
        assert!(!f.contains_key("scope"));
        assert_eq!(p.service_auth, ["tok-1", "tok-1", "tok-2"]);
    }

    /// What the engine keeps of a rotated refresh token, and when it does not use it: new
    /// configured credentials win, a record copied to another module does not open, a
    /// token that cannot be sealed is still used from memory.
    #[tokio::test]
    async fn a_kept_refresh_token_serves_only_its_module_and_credentials() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            rotate_to: Some("r".into()),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn lintel_store::Store> =
            Arc::new(lintel_store::EmbeddedStore::open(dir.path()).unwrap());
        let sealer = crate::tests::KeyringSealer::generated();
        const TENANT: &str = "authority-t1";
        let keep = |module: &str, sealer: Arc<dyn crate::Sealer>| crate::oauth::TokenStore {
            store: store.clone(),
            sealer,
            tenant_id: TENANT.into(),
            module_id: module.into(),
        };
        let settings = |configured: &str| {
            serde_json::json!({"oauth2": {
                "grant": "refresh_token",
                "token_url": format!("{base}token"),
                "client_id": "lintel",
                "client_secret": SECRET,
                "refresh_token": configured,
            }})
        };
        // One request of a freshly started module; the refresh token it presented.
        let run =
            |configured: &'static str, module: &'static str, sealer: Arc<dyn crate::Sealer>| {
                let (dev, p) = (device(&base, settings(configured)).unwrap(), p.clone());
                dev.oauth
                    .as_ref()
                    .unwrap()
                    .keep_tokens_in(keep(module, sealer));
                async move {
                    assert_eq!(http_request(&dev, get()).await.unwrap().status, 200);
                    let p = p.lock();
                    form(p.token_requests.last().unwrap())["refresh_token"].clone()
                }
            };
        let kept = |module: &str| {
            let (store, sealer) = (store.clone(), sealer.clone());
            let id = lintel_model::RefreshToken::id_for(module).unwrap();
            async move {
                use lintel_store::StoreExt;
                let r = store
                    .get::<lintel_model::RefreshToken>(TENANT, &id)
                    .await
                    .unwrap()?;
                Some(
                    crate::Sealer::open_refresh_token(&*sealer, TENANT, &id, &r.refresh_token)
                        .unwrap(),
                )
            }
        };
        assert_eq!(run("c-0", "mod-a", sealer.clone()).await, "c-0");
        assert_eq!(kept("mod-a").await.as_deref(), Some("r-1"));
        assert_eq!(run("c-0", "mod-a", sealer.clone()).await, "r-1");
        assert_eq!(kept("mod-a").await.as_deref(), Some("r-2"));
        // An administrator stores a new token: it wins over the kept one, and is then
        // followed in turn.
        assert_eq!(run("c-new", "mod-a", sealer.clone()).await, "c-new");
        assert_eq!(run("c-new", "mod-a", sealer.clone()).await, "r-3");
        // The record copied to another module's id does not open there (the seal binds
        // the record): that module starts from its configured token.
        {
            use lintel_store::StoreExt;
            let a: lintel_model::RefreshToken = store
                .require(
                    TENANT,
                    &lintel_model::RefreshToken::id_for("mod-a").unwrap(),
                )
                .await
                .unwrap();
            store
                .create(
                    &lintel_store::Actor::system(),
                    lintel_model::RefreshToken {
                        id: lintel_model::RefreshToken::id_for("mod-b").unwrap(),
                        module_id: "mod-b".into(),
                        ..a
                    },
                )
                .await
                .unwrap();
        }
        assert_eq!(run("c-new", "mod-b", sealer.clone()).await, "c-new");
        assert_eq!(kept("mod-b").await.as_deref(), Some("r-5"));
        // A keyring that can neither open nor seal: the configured token serves, and the
        // new one is used from memory all the same.
        struct Broken;
        impl crate::Sealer for Broken {
            fn open_settings(&self, _: &lintel_model::Settings) -> Result<Value, String> {
                Err("broken".into())
            }
            fn seal_refresh_token(
                &self,
                _: &str,
                _: &str,
                _: &str,
            ) -> Result<lintel_model::SealedValue, String> {
                Err("broken".into())
            }
            fn open_refresh_token(
                &self,
                _: &str,
                _: &str,
                _: &lintel_model::SealedValue,
            ) -> Result<String, String> {
                Err("broken".into())
            }
        }
        let dev = device(&base, settings("c-new")).unwrap();
        let oauth = dev.oauth.clone().unwrap();
        oauth.keep_tokens_in(keep("mod-b", Arc::new(Broken)));
        assert_eq!(http_request(&dev, get()).await.unwrap().status, 200);
        p.lock().revoked.insert("tok-6".into());
        assert_eq!(http_request(&dev, get()).await.unwrap().status, 200);
        let sent: Vec<String> = p.lock().token_requests[5..]
            .iter()
            .map(|b| form(b)["refresh_token"].clone())
            .collect();
        assert_eq!(sent, ["c-new", "r-6"]);
        assert_eq!(kept("mod-b").await.as_deref(), Some("r-5"));
    }

    /// A Google-style service account signs an RS256 assertion (RFC 7523) for its scope
    /// and subject; the endpoint verifies it with the public key.
    #[tokio::test]
    async fn a_service_account_signs_a_jwt_bearer_assertion() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let settings = serde_json::json!({"oauth2": {
            "grant": "jwt_bearer",
            "scope": "https://www.googleapis.com/auth/calendar",
            "subject": "admin@example.com",
            "service_account": {
                "type": "service_account",
                "client_email": "lintel@project.iam.gserviceaccount.com",
                "private_key_id": "k1",
                "private_key": KEY,
                "token_uri": format!("{base}token"),
            },
        }});
        let dev = device(&base, settings).unwrap();
        assert_eq!(http_request(&dev, get()).await.unwrap().status, 200);
        let f = form(&p.lock().token_requests[0]);
        assert_eq!(
            f["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[format!("{base}token")]);
        v.set_issuer(&["lintel@project.iam.gserviceaccount.com"]);
        let claims = jsonwebtoken::decode::<Value>(&f["assertion"], &key, &v)
            .expect("a valid assertion")
            .claims;
        assert_eq!(claims["scope"], "https://www.googleapis.com/auth/calendar");
        assert_eq!(claims["sub"], "admin@example.com");
        let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(life, 3600);
        let header = jsonwebtoken::decode_header(&f["assertion"]).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert!(!f.contains_key("client_secret"));
    }

    /// Bad `oauth2` settings stop the module with an error naming the key, never a value;
    /// tokens never travel in clear over a network.
    #[tokio::test]
    async fn bad_oauth2_settings_name_the_key() {
        let base = reqwest::Url::parse("http://127.0.0.1:9/").unwrap();
        let ok = client_credentials(&base);
        let with = |path: &[&str], v: Value| {
            let mut s = ok.clone();
            let mut at = &mut s["oauth2"];
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            match v {
                Value::Null => {
                    at.as_object_mut().unwrap().remove(path[path.len() - 1]);
                }
                v => at[path[path.len() - 1]] = v,
            }
            s
        };
        for (settings, why) in [
            (
                with(&["client_secret"], Value::Null),
                "`oauth2.client_secret` is required",
            ),
            (
                with(&["client_id"], Value::from(7)),
                "`oauth2.client_id` must be a non-empty string",
            ),
            (
                with(&["grant"], Value::from("password")),
                "`oauth2.grant` `password` is not one of",
            ),
            (
                with(&["tenant"], Value::from("x")),
                "`oauth2.tenant` is not known",
            ),
            (
                with(&["token_url"], Value::from("http://login.example/token")),
                "`oauth2.token_url` must be https://",
            ),
            (
                with(&["token_url"], Value::from("not a url")),
                "`oauth2.token_url`",
            ),
            (
                serde_json::json!({"oauth2": {"grant": "jwt_bearer", "scope": "s",
                    "service_account": {"client_email": "a@b", "private_key": format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----")}}}),
                "`oauth2.service_account.private_key` is not an RSA private key",
            ),
            (
                serde_json::json!({"oauth2": {"grant": "jwt_bearer", "service_account": {"client_email": "a@b", "private_key": KEY, "token_uri": "https://t.example/"}}}),
                "`oauth2.scope` is required",
            ),
            (
                serde_json::json!({"oauth2": {"grant": "refresh_token", "token_url": "https://t.example/", "client_id": "c"}}),
                "`oauth2.refresh_token` is required",
            ),
            (
                serde_json::json!({"oauth2": "token"}),
                "`oauth2` must be an object",
            ),
            (
                with(&["subject"], Value::from("a@b")),
                "`oauth2.subject` does not belong to grant client_credentials",
            ),
            (
                serde_json::json!({"oauth2": {"grant": "jwt_bearer", "scope": "s", "client_secret": SECRET,
                    "service_account": {"client_email": "a@b", "private_key": KEY, "token_uri": "https://t.example/"}}}),
                "`oauth2.client_secret` does not belong to grant jwt_bearer",
            ),
            (
                serde_json::json!({"oauth2": {"grant": "jwt_bearer", "scope": "s", "service_account": "{not json"}}),
                "`oauth2.service_account` must be the service account's JSON key",
            ),
        ] {
            let e = device(&base, settings.clone()).err().unwrap();
            assert!(e.contains(why), "{settings}: {e}");
            assert!(!e.contains(SECRET), "{e}");
        }
        let mut both = ok.clone();
        both["bearer_token"] = Value::from("t");
        assert!(
            device(&base, both)
                .err()
                .unwrap()
                .contains("give one, not several")
        );
        // Credentials never go to a server whose certificate is not checked.
        let mut unchecked = ok.clone();
        unchecked["tls"] = serde_json::json!({"verify": false});
        assert!(
            device(&base, unchecked)
                .err()
                .unwrap()
                .contains("cannot go with `tls.verify: false`")
        );
        // A service account key pasted as text works like the object, and values are
        // trimmed.
        let pasted = serde_json::json!({"oauth2": {"grant": "jwt_bearer", "scope": " s \n",
            "service_account": serde_json::json!({"client_email": "a@b", "private_key": KEY,
                "token_uri": "https://t.example/"}).to_string()}});
        assert!(device(&base, pasted).is_ok());
        // The service itself must be https:// (or on this machine).
        let settings = crate::actor::ModuleSettings {
            public: ok,
            ..Default::default()
        };
        let e = HttpDevice::new(
            "http://graph.example/",
            &settings,
            &http_client_builder().build().unwrap(),
            crate::StatusBus::default().module("m"),
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "setting `oauth2`: the module `uri` must be https:// (plain http:// only to a loopback address)"
        );
    }

    /// Concurrent requests share one token request.
    #[tokio::test]
    async fn concurrent_requests_share_one_token_request() {
        let (base, p) = provider(Provider {
            lifetime: 3600,
            ..Default::default()
        })
        .await;
        let dev = device(&base, client_credentials(&base)).unwrap();
        let all: Vec<_> = (0..8)
            .map(|_| {
                let dev = dev.clone();
                tokio::spawn(async move { http_request(&dev, get()).await.unwrap().status })
            })
            .collect();
        for t in all {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(p.lock().token_requests.len(), 1);
    }

    /// The engine's credentials never reach the driver's settings.
    #[test]
    fn engine_credentials_are_kept_from_the_driver() {
        let info = crate::runtime::DriverInfo {
            name: "calendar".into(),
            module_name: "Calendar".into(),
            description: String::new(),
            version: "1".into(),
            abi: crate::DRIVER_ABI.into(),
            transport: crate::runtime::TransportKind::Http,
            framing: crate::transport::Framing::Raw,
            default_settings: Value::Null,
            settings_schema: Value::Null,
            // A driver declaring one of them a secret still does not get it.
            secrets: vec!["oauth2".into()],
            functions: vec![],
        };
        let s = crate::actor::ModuleSettings::split(
            serde_json::json!({"oauth2": {"client_secret": SECRET}, "basic_auth": {}, "bearer_token": "t", "mailbox": "room@x"}),
            &info,
        );
        assert_eq!(s.public, serde_json::json!({"mailbox": "room@x"}));
        assert_eq!(s.secrets.len(), 3);
    }
}
