//! How a running module reaches beyond its sandbox through the engine: other modules'
//! status (subscriptions) and functions (calls), and HTTP requests to its own base URL.
//! Each piece of work is a task that reports back to the module as an event; all of them
//! stop with the module.

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

pub(crate) struct EngineLinks {
    router: Arc<Router>,
    tenant_id: String,
    system_id: Option<String>,
    base_url: Option<reqwest::Url>,
    http: reqwest::Client,
    cancel: CancellationToken,
    subscriptions: Mutex<HashMap<u64, CancellationToken>>,
}

impl EngineLinks {
    pub fn new(
        router: Arc<Router>,
        tenant_id: String,
        system_id: Option<String>,
        base_url: Option<reqwest::Url>,
        http: reqwest::Client,
        cancel: CancellationToken,
    ) -> Self {
        EngineLinks {
            router,
            tenant_id,
            system_id,
            base_url,
            http,
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
                            Some((*c.value).clone())
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
        let Some(base) = self.base_url.clone() else {
            self.spawn(async move {
                deliver(
                    &events,
                    HostEvent::Http(id, Err("the module has no http(s) uri".into())),
                )
                .await;
            });
            return;
        };
        let http = self.http.clone();
        self.spawn(async move {
            let result = http_request(&http, &base, request).await;
            deliver(&events, HostEvent::Http(id, result)).await;
        });
    }

    fn mqtt_subscribe(&self, filter: String, _events: flume::Sender<Event>) {
        // Modules with the mqtt transport are refused at start until it is supported.
        tracing::warn!(%filter, "mqtt-subscribe without an MQTT transport");
    }
}

async fn http_request(
    http: &reqwest::Client,
    base: &reqwest::Url,
    req: HttpCall,
) -> Result<HttpAnswer, String> {
    let url = format!("{}{}", base.as_str().trim_end_matches('/'), req.path);
    let url = reqwest::Url::parse(&url).map_err(|e| format!("bad path: {e}"))?;
    if url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err("the request must stay on the module's host".into());
    }
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
    let timeout = match req.timeout_ms {
        0 => HTTP_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(ms.into()).min(HTTP_TIMEOUT_MAX),
    };
    let mut builder = http.request(method, url).timeout(timeout).body(req.body);
    for (k, v) in req.headers {
        builder = builder.header(k, v);
    }
    let resp = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer within {} ms", timeout.as_millis())
        } else {
            format!("request failed: {e}")
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
        let chunk = chunk.map_err(|e| format!("reading the response: {e}"))?;
        if body.len() + chunk.len() > MAX_HTTP_RESPONSE {
            return Err(format!("the response exceeds {MAX_HTTP_RESPONSE} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
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

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
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
        let answer = http_request(&client(), &base, call("POST", "/power?on=1", b"{}", 0))
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
        let e = http_request(&client(), &base, call("GET", "/big", b"", 0))
            .await
            .unwrap_err();
        assert_eq!(e, format!("the response exceeds {MAX_HTTP_RESPONSE} bytes"));

        let e = http_request(&client(), &base, call("GET", "/slow", b"", 300))
            .await
            .unwrap_err();
        assert_eq!(e, "no answer within 300 ms");

        // The path is appended to the base URL; it cannot move the request to another host
        // (through userinfo or the port).
        let mut root = base.clone();
        root.set_path("/");
        for path in ["@evil.example/x", ".evil.example/x"] {
            let r = http_request(&client(), &root, call("GET", path, b"", 0)).await;
            assert!(
                matches!(&r, Err(e) if e.contains("must stay on the module's host") || e.contains("bad path")),
                "{path}: {r:?}"
            );
        }
        let e = http_request(&client(), &base, call("NOT A METHOD", "/x", b"", 0))
            .await
            .unwrap_err();
        assert!(!e.is_empty());
    }
}
