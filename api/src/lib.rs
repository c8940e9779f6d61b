//! Lintel's HTTP API (actix-web): the PlaceOS-compatible REST surface under
//! `/api/engine/v2`, the OAuth2 token endpoint, health, readiness and Prometheus metrics.

mod auth;
mod control;
mod endpoints;
mod error;
mod export;
pub mod openapi;
mod resources;
mod routes;
mod sso;
pub mod ws;

pub use auth::Authenticated;
pub use error::ApiError;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next, from_fn};
use actix_web::{App, web};
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
    /// Users by `(tenant, id)`, as credentials are checked on every request: see
    /// [`AppState::users_cache`].
    pub users: lintel_store::FeedCache<(String, String), Option<lintel_model::User>>,
    /// The MQTT publisher, when enabled: its brokers' state shows in readiness and in
    /// the brokers API.
    pub mqtt: Option<Arc<lintel_mqtt::Publisher>>,
}

impl AppState {
    /// The users cache for [`AppState::users`]: emptied by any user change through this
    /// process, entries trusted at most 5 s (another process's change, e.g. a disabled
    /// account, is seen within that).
    pub fn users_cache(
        store: &Arc<dyn Store>,
    ) -> lintel_store::FeedCache<(String, String), Option<lintel_model::User>> {
        lintel_store::FeedCache::new(
            store.changes(),
            &[lintel_model::IdKind::User],
            Duration::from_secs(5),
            10_000,
        )
    }
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
    /// Browser origins allowed to call the API from other sites (CORS); `*` = any.
    pub cors_origins: Vec<String>,
    /// The WebSocket endpoint's limits and timers.
    pub websocket: ws::WsConfig,
}

/// Whether `origin` is a CORS origin: `*`, or `scheme://host[:port]` with nothing after.
pub fn valid_cors_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The CORS policy: nothing allowed unless origins are configured. Credentials travel in
/// headers (`Authorization`, `X-API-Key`), so cookies are never allowed cross-site.
fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut c = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::ACCEPT,
            HeaderName::from_static("x-api-key"),
            REQUEST_ID,
        ])
        .expose_headers([
            "X-Total-Count",
            "Content-Range",
            "Link",
            "X-Next-Cursor",
            "X-Request-Id",
        ])
        .max_age(3600);
    for o in origins {
        c = if o == "*" {
            c.allow_any_origin()
        } else {
            c.allowed_origin(o)
        };
    }
    c
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request id, access log and request metrics. Only the path is logged, never the query
/// string: the token endpoint and `bearer_token` carry credentials there.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(req.headers());
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

/// The request's id: the client's `X-Request-Id` when it is sensible, else a new one.
pub(crate) fn request_id(headers: &actix_web::http::header::HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// A client error actix answered itself (a body over the limit, a method the path does
/// not take) gets the one error format too.
fn json_error<B>(
    res: ServiceResponse<B>,
    max_body: usize,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let json = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = res.status();
    if json || status.is_success() {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let error = match status.as_u16() {
        413 if res.request().path().ends_with("/upload") => {
            ApiError::PayloadTooLarge(control::MAX_COMPONENT_BYTES)
        }
        413 => ApiError::PayloadTooLarge(max_body),
        405 => ApiError::MethodNotAllowed(format!(
            "{} is not allowed on {}",
            res.request().method(),
            res.request().path()
        )),
        404 => ApiError::NotFound(format!("no route for {}", res.request().path())),
        _ => ApiError::BadRequest(
            status
                .canonical_reason()
                .unwrap_or("bad request")
                .to_string(),
        ),
    };
    let (req, _) = res.into_parts();
    let res = ServiceResponse::new(req, actix_web::ResponseError::error_response(&error));
    Ok(ErrorHandlerResponse::Response(res.map_into_right_body()))
}

/// Serve the API on an already-bound listener (bound first, so a taken port fails before
/// anything is written). The returned server runs when awaited; stop it with its handle,
/// after closing the WebSocket sessions with the returned [`ws::Websockets`] (so their
/// clients are told why).
///
/// The server is actix-web's app inside actix's HTTP/1 service, with the service's upgrade
/// hook taking WebSocket handshakes ([`ws`]).
pub fn serve(
    listener: TcpListener,
    cfg: &HttpConfig,
    state: AppState,
) -> std::io::Result<(Server, ws::Websockets)> {
    use actix_service::{
        IntoServiceFactory, ServiceFactoryExt, fn_factory, fn_service, map_config,
    };
    let state = web::Data::new(state);
    let max_body = cfg.max_body_bytes;
    let origins = cfg.cors_origins.clone();
    let ws = ws::shared(state.clone(), cfg.websocket.clone());
    let shutdown = ws::shutdown_handle(&ws);
    let addr = listener.local_addr()?;
    let app = move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            // A malformed query string gets the one error format, naming the parameter.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::BadRequest(format!("bad query string: {e}")).into()
            }))
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::BadRequest(format!("bad path: {e}")).into()),
            )
            .wrap(ErrorHandlers::new().default_handler_client(move |res| json_error(res, max_body)))
            .wrap(cors(&origins))
            .wrap(from_fn(observe))
            .configure(|c| endpoints::configure(c, max_body))
            .default_service(web::to(routes::not_found))
    };
    let mut server = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(cfg.shutdown_timeout.as_secs());
    if cfg.workers > 0 {
        server = server.workers(cfg.workers);
    }
    let server = server.listen("lintel-http", listener, move || {
        let ws = ws.clone();
        let app = app()
            .into_factory()
            .map_err(|e: actix_web::Error| e.error_response());
        actix_http::HttpService::build()
            // A request head (line and headers) must arrive within 5 s (else 408 and the
            // connection is closed: slow-header attacks hold nothing for long).
            .client_request_timeout(Duration::from_secs(5))
            // As actix-web's `HttpServer` sets it: a closing connection gets 1 s to go.
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .upgrade(fn_factory(move || {
                let ws = ws.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(fn_service(
                        move |(req, framed): (actix_http::Request, _)| {
                            ws::upgrade(ws.clone(), req, framed)
                        },
                    ))
                }
            }))
            .finish(map_config(app, |_| actix_web::dev::AppConfig::default()))
            .tcp()
    })?;
    Ok((server.run(), shutdown))
}
