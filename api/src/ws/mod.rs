//! The WebSocket control endpoint, `/api/engine/v2/systems/control`: PlaceOS's protocol
//! (`frame`), the fan-out of state changes (`hub`), each connection's bounded queue
//! (`outbox`) and its life (`session`).
//!
//! The handshake is taken over from actix's HTTP/1 dispatcher (its upgrade hook), so a
//! session owns its socket: it writes its frames in batches, and can cut off a client that
//! stops reading instead of leaving the connection to the kernel.

mod frame;
mod hub;
mod outbox;
mod session;

pub use frame::{ErrorCode, WsError};
pub use hub::Hub;

use crate::auth::{Presented, Sources};
use crate::{ApiError, AppState};
use actix_codec::Framed;
use actix_http::{HttpMessage as _, Request, h1};
use actix_web::http::{Method, header};
use actix_web::web;
use lintel_auth::Principal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The control endpoint's path.
pub const CONTROL_PATH: &str = "/api/engine/v2/systems/control";

/// WebSocket limits and timers (the `[websocket]` section of `lintel.toml`).
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Largest frame (and message) a client may send; a bigger one closes the connection
    /// (1009).
    pub max_frame_bytes: usize,
    /// Bindings one connection may hold.
    pub max_binds: usize,
    /// Requests read per second per connection (beyond the burst, reading waits).
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Execs one connection may have running at once.
    pub max_inflight_execs: usize,
    /// Outbound frames queued before values coalesce to the latest per binding.
    pub outbound_frames: usize,
    /// Outbound bytes queued before values coalesce; twice this closes the connection.
    pub outbound_bytes: usize,
    /// How long a client's queue may stay full before it is closed (1008).
    pub slow_client_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// At shutdown, how long running execs have to answer before clients are closed.
    pub shutdown_grace: Duration,
    /// Browser origins allowed to connect besides the server's own (`*`: any); a
    /// connection without an Origin header (not a browser) is allowed.
    pub allowed_origins: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame_bytes: 64 * 1024,
            max_binds: 2000,
            messages_per_second: 200,
            message_burst: 1000,
            max_inflight_execs: 64,
            outbound_frames: 1024,
            outbound_bytes: 4 * 1024 * 1024,
            slow_client_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

/// What every session of a server shares.
pub(crate) struct WsShared {
    pub state: web::Data<AppState>,
    pub hub: Arc<Hub>,
    pub cfg: WsConfig,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    /// Sum of the sessions' last counted outbound bytes.
    pub queued_bytes: std::sync::atomic::AtomicI64,
}

/// The server's WebSocket sessions: how many, what they hold, and closing them gracefully
/// (see [`Websockets::close`]).
#[derive(Clone)]
pub struct Websockets(Arc<WsShared>);

impl Websockets {
    /// Tell every session to close: each first sends the replies of its running execs
    /// (waiting up to `shutdown_grace` for them), then a close frame (1001, "server
    /// shutting down"). Returns when all have closed or `timeout` passed; new handshakes
    /// are refused from now on.
    pub async fn close(&self, timeout: Duration) {
        self.0.shutdown.cancel();
        self.0.sessions.close();
        if tokio::time::timeout(timeout, self.0.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.0.sessions.len(),
                "WebSocket sessions still open at the end of the shutdown timeout"
            );
        }
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.0.sessions.len()
    }

    /// Bytes waiting in the sessions' outbound queues, as their watchdogs last counted
    /// (each about twice per `slow_client_timeout`; also the `lintel_ws_queued_bytes`
    /// gauge).
    pub fn queued_bytes(&self) -> u64 {
        self.0
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0) as u64
    }
}

pub(crate) fn shared(state: web::Data<AppState>, cfg: WsConfig) -> Arc<WsShared> {
    let hub = Hub::start(state.engine.clone(), state.store.changes());
    Arc::new(WsShared {
        state,
        hub,
        cfg,
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        queued_bytes: std::sync::atomic::AtomicI64::new(0),
    })
}

pub(crate) fn shutdown_handle(shared: &Arc<WsShared>) -> Websockets {
    Websockets(shared.clone())
}

/// Whether a browser page at `origin` may open a connection to a server reached as
/// `host`.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the page was served by this server.
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// The handshake: route, WebSocket headers, Origin, credential and permission. The
/// answer is the principal, or the HTTP error to answer.
async fn accept(shared: &WsShared, req: &Request) -> Result<(Presented, Principal), ApiError> {
    if req.path() != CONTROL_PATH {
        return Err(ApiError::NotFound(format!(
            "no WebSocket endpoint at {}",
            req.path()
        )));
    }
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} is not allowed on {CONTROL_PATH}",
            req.method()
        )));
    }
    actix_http::ws::verify_handshake(req.head())
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket handshake: {e}")))?;
    if shared.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let public = shared.state.public_url.as_deref();
        let mut allowed = shared.cfg.allowed_origins.clone();
        allowed.extend(public.map(|u| u.trim_end_matches('/').to_owned()));
        if !origin_allowed(origin, host, &allowed) {
            return Err(ApiError::Forbidden(format!(
                "origin `{origin}` may not open a WebSocket here (see websocket.allowed_origins)"
            )));
        }
    }
    let credential = crate::auth::presented(
        headers,
        req.uri().query().unwrap_or_default(),
        Sources::WebSocket,
    )?;
    let switch = headers
        .get(crate::auth::TENANT_HEADER)
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| ApiError::BadRequest(format!("malformed {}", crate::auth::TENANT_HEADER)))?;
    let principal = crate::auth::authenticate(&shared.state, &credential, switch).await?;
    crate::auth::authorize(
        &principal,
        crate::endpoints::permission(&Method::GET, Some(CONTROL_PATH)),
    )?;
    Ok((credential, principal))
}

/// Answer an upgrade request that actix's dispatcher handed over with its socket.
pub(crate) async fn upgrade(
    shared: Arc<WsShared>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_http::Error> {
    if let Err(e) = handshake(shared, req, framed).await {
        // The client went away during the handshake.
        tracing::debug!(error = %e, "WebSocket handshake not completed");
    }
    Ok(())
}

async fn handshake(
    shared: Arc<WsShared>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), std::io::Error> {
    let started = Instant::now();
    // The dispatcher's buffers (8 KiB each) are not kept for the session: only the bytes
    // the client sent past its handshake.
    let actix_codec::FramedParts { io, read_buf, .. } = framed.into_parts();
    let mut io = io;
    let leftover = bytes::Bytes::copy_from_slice(&read_buf);
    drop(read_buf);
    let request_id = crate::request_id(req.headers());
    let path = req.path().to_owned();
    // Boxed: this future lives as long as the session; the handshake's state need not.
    let (credential, principal) = match Box::pin(accept(&shared, &req)).await {
        Ok(ok) => ok,
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e);
            let body = serde_json::to_vec(&e.body()).unwrap_or_default();
            let mut head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body.len()
            );
            if status == actix_web::http::StatusCode::UNAUTHORIZED {
                head.push_str("www-authenticate: Bearer\r\n");
            }
            head.push_str("\r\n");
            tracing::info!(target: "lintel::access", request_id = %request_id, method = "GET", %path, status = status.as_u16(), ms = started.elapsed().as_secs_f64() * 1000.0, "request");
            io.write_all(head.as_bytes()).await?;
            io.write_all(&body).await?;
            return io.shutdown().await;
        }
    };
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_bytes()))
        .unwrap_or_default();
    let accept_key = std::str::from_utf8(&key).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept_key}\r\nx-request-id: {request_id}\r\n\r\n"
    );
    io.write_all(head.as_bytes()).await?;
    let _ = io.set_nodelay(true);
    tracing::info!(target: "lintel::access", request_id = %request_id, method = "GET", %path, status = 101, ms = started.elapsed().as_secs_f64() * 1000.0, user = %principal.user_id, "request");
    metrics::counter!("lintel_http_requests_total", "status" => "101").increment(1);
    drop(req);
    let sessions = shared.sessions.clone();
    // Boxed: a session lives long, and this handshake's state need not live with it.
    sessions
        .track_future(Box::pin(session::run(
            shared, io, leftover, credential, principal,
        )))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_same_host_or_allowed() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(
            "https://lintel.example.com",
            Some("lintel.example.com"),
            &allowed
        ));
        assert!(origin_allowed(
            "https://app.example.com",
            Some("lintel.example.com"),
            &allowed
        ));
        assert!(!origin_allowed(
            "https://evil.example.net",
            Some("lintel.example.com"),
            &allowed
        ));
        assert!(!origin_allowed(
            "null",
            Some("lintel.example.com"),
            &allowed
        ));
        assert!(!origin_allowed("https://evil.example.net", None, &[]));
        assert!(origin_allowed(
            "https://evil.example.net",
            None,
            &["*".to_string()]
        ));
    }
}
