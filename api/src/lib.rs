//! Lintel's HTTP API (actix-web): the PlaceOS-compatible REST surface under
//! `/api/engine/v2`, the OAuth2 token endpoint, health, readiness and Prometheus metrics.

mod auth;
mod error;
mod resources;
mod routes;
mod sso;

pub use auth::Authenticated;
pub use error::ApiError;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};
use lintel_auth::{
    ApiKeys, Keyring, LoginLimiter, OidcClient, PasswordHasher, Sessions, TokenService,
};
use lintel_engine::Engine;
use lintel_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every handler can reach.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenService>,
    pub sessions: Arc<Sessions>,
    pub api_keys: Arc<ApiKeys>,
    pub keyring: Keyring,
    pub passwords: PasswordHasher,
    pub limiter: Arc<LoginLimiter>,
    pub oidc: Arc<OidcClient>,
    /// The URL browsers reach this server by (for single-sign-on redirects); `None` =
    /// taken from each request's Host.
    pub public_url: Option<String>,
    pub metrics: Option<PrometheusHandle>,
    pub version: &'static str,
}

/// A scrypt hash (N=2^17) of a random password nobody knows: verified for unknown users,
/// so login timing does not reveal which accounts exist.
pub(crate) const DUMMY_HASH: &str =
    "$scrypt$ln=17,r=8,p=1$TOqLgUbGceKbCMSWUtRJZw$lYZ9b+kD9NJ2YN6s9H/pycwcowjOlMA6c9dQGnO/gNQ";

/// HTTP settings (the `[http]` section of `lintel.toml`).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request id, access log and request metrics. Only the path is logged, never the query
/// string: the token endpoint and `bearer_token` carry credentials there.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let started = Instant::now();
    let mut res = next.call(req).await?;
    let status = res.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    tracing::info!(target: "lintel::access", request_id = %id, %method, %path, status, ms, "request");
    metrics::counter!("lintel_http_requests_total", "status" => status.to_string()).increment(1);
    metrics::histogram!("lintel_http_request_seconds").record(ms / 1000.0);
    Ok(res)
}

/// Serve the API on an already-bound listener (bound first, so a taken port fails before
/// anything is written). The returned server runs when awaited; stop it with its handle.
pub fn serve(listener: TcpListener, cfg: &HttpConfig, state: AppState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let max_body = cfg.max_body_bytes;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            // A malformed query string gets the one error format, naming the parameter.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::BadRequest(format!("bad query string: {e}")).into()
            }))
            .wrap(from_fn(observe))
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
    })
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_timeout.as_secs());
    if cfg.workers > 0 {
        server = server.workers(cfg.workers);
    }
    Ok(server.listen(listener)?.run())
}
