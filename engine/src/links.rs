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
