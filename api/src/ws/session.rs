//! One WebSocket connection after its handshake: reads requests, answers them, and writes
//! what its [`Outbox`] holds.
//!
//! The session is one task running four things side by side: the reader (frames in,
//! throttled to the configured rate), the writer (the outbox out, in batches), the
//! watchdog (keepalive pings, the idle timeout, a client that stays behind, a credential
//! revoked meanwhile) and the server's shutdown signal. Whichever ends first decides the
//! close code and reason; the writer then sends the close frame (after what is queued,
//! unless the client was too slow to read it), and a client that does not take even that
//! within [`CLOSE_GRACE`] is cut off.

use super::frame::{self, Command, ErrorCode, Meta, Request, WsError};
use super::hub::{Command as HubCommand, SessionId, TopicKey};
use super::outbox::{Outbox, OutboxLimits, Outgoing};
use super::{WsConfig, WsShared};
use crate::auth::{Presented, revalidate};
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use governor::{Quota, RateLimiter};
use lintel_auth::{Access, Action, Principal, Resource};
use lintel_engine::{EngineError, LogLevel};
use lintel_model::IdKind;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;

/// How long a closing client has to take the close frame before the connection is cut.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How often a connection's credential is checked again besides each bind and exec.
const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// Frames written per batch (one write system call).
const BATCH_BYTES: usize = 64 * 1024;
/// Initial read buffer (grows up to the frame limit for a large request).
const READ_BUFFER: usize = 1024;

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: u16,
    pub reason: String,
    /// Send what is queued before the close frame (false: the client is too far behind
    /// for it to matter).
    pub flush: bool,
}

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
            flush: true,
        }
    }
}

/// Close codes (RFC 6455 §7.4.1).
pub(crate) mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// A session's state shared by its parts.
pub(crate) struct Session {
    id: SessionId,
    shared: Arc<WsShared>,
    outbox: Arc<Outbox>,
    credential: Presented,
    /// The principal as authenticated at the handshake.
    home: Principal,
    /// The tenant the connection acts in.
    tenant: Arc<str>,
    bound: Mutex<HashSet<Meta>>,
    debugs: Mutex<HashMap<(String, String, u32), tokio::task::AbortHandle>>,
    execs: TaskTracker,
    last_received: Mutex<Instant>,
    /// The outbound bytes this session last added to `WsShared::queued_bytes`.
    counted: std::sync::atomic::AtomicI64,
    close: Mutex<Option<Close>>,
    close_requested: Notify,
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, h) in self.debugs.lock().drain() {
            h.abort();
        }
    }
}

/// Run a session on an upgraded connection (`leftover`: bytes read past the handshake).
pub(crate) async fn run(
    shared: Arc<WsShared>,
    mut stream: TcpStream,
    leftover: Bytes,
    credential: Presented,
    principal: Principal,
) {
    let cfg = shared.cfg.clone();
    let outbox = Arc::new(Outbox::new(OutboxLimits {
        frames: cfg.outbound_frames,
        bytes: cfg.outbound_bytes,
    }));
    let id = shared.hub.session_id();
    if !shared
        .hub
        .send(HubCommand::Open {
            session: id,
            outbox: outbox.clone(),
        })
        .await
    {
        return;
    }
    let session = Arc::new(Session {
        id,
        tenant: principal.tenant_id.as_str().into(),
        home: principal,
        shared: shared.clone(),
        outbox,
        credential,
        bound: Mutex::new(HashSet::new()),
        debugs: Mutex::new(HashMap::new()),
        execs: TaskTracker::new(),
        last_received: Mutex::new(Instant::now()),
        counted: std::sync::atomic::AtomicI64::new(0),
        close: Mutex::new(None),
        close_requested: Notify::new(),
    });
    let started = Instant::now();
    let (close, cut) = {
        let (rd, mut wr) = stream.split();
        let mut frames =
            FramedRead::with_capacity(rd, Codec::new().max_size(cfg.max_frame_bytes), READ_BUFFER);
        frames.read_buffer_mut().extend_from_slice(&leftover);
        let reader = session.clone().read(frames);
        let watchdog = session.clone().watch();
        let writer = session.write(&mut wr);
        tokio::pin!(reader, watchdog, writer);
        let close = tokio::select! {
            c = &mut reader => c,
            c = &mut watchdog => c,
            () = shared.shutdown.cancelled() => {
                // Replies to the execs already running go out before the close frame.
                session.execs.close();
                let _ = tokio::time::timeout(shared.cfg.shutdown_grace, session.execs.wait()).await;
                Close::new(code::GOING_AWAY, "server shutting down")
            }
            r = &mut writer => {
                // The client is gone (a write failed).
                if let Err(e) = r {
                    tracing::debug!(session = id, error = %e, "WebSocket write failed");
                }
                Close { code: 1006, reason: "connection lost".into(), flush: false }
            }
        };
        let cut = if close.code == 1006 {
            false
        } else {
            *session.close.lock() = Some(close.clone());
            session.close_requested.notify_one();
            tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
        };
        (close, cut)
    };
    if cut {
        // The client does not read: drop the connection at once rather than leave the
        // kernel holding unsent data for it.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    shared.hub.send(HubCommand::Close { session: id }).await;
    session.count_queued(0);
    session.execs.close();
    for (_, h) in session.debugs.lock().drain() {
        h.abort();
    }
    metrics::counter!("lintel_ws_closed_total", "code" => close.code.to_string()).increment(1);
    tracing::info!(
        target: "lintel::access",
        session = id,
        code = close.code,
        reason = %close.reason,
        secs = started.elapsed().as_secs_f64(),
        coalesced = session.outbox.coalesced(),
        "WebSocket closed"
    );
}

impl Session {
    fn cfg(&self) -> &WsConfig {
        &self.shared.cfg
    }

    /// Report the outbound bytes waiting (to `lintel_ws_queued_bytes`).
    fn count_queued(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let was = self.counted.swap(bytes as i64, Relaxed);
        let total = self
            .shared
            .queued_bytes
            .fetch_add(bytes as i64 - was, Relaxed)
            + (bytes as i64 - was);
        metrics::gauge!("lintel_ws_queued_bytes").set(total as f64);
    }

    fn reply_error(&self, id: i64, e: &WsError) {
        self.outbox.push_reply(frame::error(id, e));
    }

    /// Frames in, until the client closes or breaks the protocol.
    async fn read(
        self: Arc<Self>,
        mut frames: FramedRead<tokio::net::tcp::ReadHalf<'_>, Codec>,
    ) -> Close {
        let quota = Quota::per_second(
            NonZeroU32::new(self.cfg().messages_per_second).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(self.cfg().message_burst).unwrap_or(NonZeroU32::MIN));
        let limiter = RateLimiter::direct(quota);
        // A message arriving in fragments: whether it is text, and its bytes so far.
        let mut fragments: Option<(bool, BytesMut)> = None;
        loop {
            let frame = match frames.next().await {
                None => return Close::new(code::NORMAL, "client disconnected"),
                Some(Err(ProtocolError::Overflow)) => {
                    let limit = self.cfg().max_frame_bytes;
                    self.reply_error(
                        0,
                        &WsError::bad_request(format!(
                            "frame over the {limit}-byte limit: the connection is closed"
                        )),
                    );
                    return Close::new(code::TOO_BIG, format!("frame over {limit} bytes"));
                }
                Some(Err(e)) => {
                    return Close::new(code::PROTOCOL, format!("WebSocket protocol error: {e}"));
                }
                Some(Ok(f)) => f,
            };
            *self.last_received.lock() = Instant::now();
            let text = match frame {
                Frame::Ping(p) => {
                    let mut out = BytesMut::new();
                    frame::write_pong(&mut out, &p);
                    self.outbox.push_raw(out.freeze());
                    continue;
                }
                Frame::Pong(_) => continue,
                Frame::Close(reason) => {
                    let code = reason.as_ref().map_or(code::NORMAL, |r| u16::from(r.code));
                    // Echo the client's code (1005 "no status" is never sent on the wire).
                    let code = if matches!(code, 1005 | 1006 | 1015) {
                        code::NORMAL
                    } else {
                        code
                    };
                    return Close::new(code, "client closed");
                }
                Frame::Binary(_) => {
                    limiter.until_ready().await;
                    self.reply_error(0, &binary_refused());
                    continue;
                }
                Frame::Text(b) => b,
                Frame::Continuation(item) => {
                    let (first, is_text, chunk, last) = match item {
                        Item::FirstText(b) => (true, true, b, false),
                        Item::FirstBinary(b) => (true, false, b, false),
                        Item::Continue(b) => (false, false, b, false),
                        Item::Last(b) => (false, false, b, true),
                    };
                    if first {
                        fragments = Some((is_text, BytesMut::new()));
                    }
                    let Some((_, buf)) = fragments.as_mut() else {
                        return Close::new(
                            code::PROTOCOL,
                            "a continuation frame without a first one",
                        );
                    };
                    buf.extend_from_slice(&chunk);
                    let limit = self.cfg().max_frame_bytes;
                    if buf.len() > limit {
                        return Close::new(code::TOO_BIG, format!("message over {limit} bytes"));
                    }
                    if !last {
                        continue;
                    }
                    match fragments.take() {
                        Some((true, buf)) => buf.freeze(),
                        _ => {
                            self.reply_error(0, &binary_refused());
                            continue;
                        }
                    }
                }
            };
            limiter.until_ready().await;
            // Boxed: the state of handling a request (store reads, auth) is kept only
            // while one is handled, not in every idle session.
            Box::pin(self.handle_text(text)).await;
        }
    }

    async fn handle_text(self: &Arc<Self>, text: Bytes) {
        metrics::counter!("lintel_ws_requests_total").increment(1);
        let Ok(text) = std::str::from_utf8(&text) else {
            return self.reply_error(
                0,
                &WsError::new(ErrorCode::ParseError, 400, "parse error: not UTF-8"),
            );
        };
        if text == "ping" {
            return self.outbox.push_reply(Bytes::from_static(b"pong"));
        }
        let req = match frame::parse(text) {
            Ok(r) => r,
            Err((id, e)) => return self.reply_error(id, &e),
        };
        match req.cmd {
            Command::Bind => self.bind(req).await,
            Command::Unbind => self.unbind(req).await,
            Command::Exec => self.exec(req),
            Command::Debug => self.debug(req).await,
            Command::Ignore => self.ignore(req),
        }
    }

    /// The caller as they are now, allowed `action` on `resource`.
    async fn authorize(&self, resource: Resource, action: Action) -> Result<Principal, WsError> {
        let p = revalidate(
            &self.shared.state,
            &self.credential,
            &self.home,
            &self.tenant,
        )
        .await
        .map_err(WsError::from)?;
        p.check(resource, action)
            .map_err(|e| WsError::from(crate::ApiError::from(e)))?;
        Ok(p)
    }

    async fn resolve(&self, p: &Principal, req: &Request) -> Result<String, WsError> {
        let slug = format!("{}_{}", req.module, req.index);
        Ok(self
            .shared
            .state
            .engine
            .resolve(&p.tenant_id, &req.sys, &slug)
            .await?)
    }

    async fn bind(&self, req: Request) {
        let meta = Meta::of(&req);
        let result = async {
            let p = self.authorize(Resource::State, Action::Read).await?;
            {
                let bound = self.bound.lock();
                if !bound.contains(&meta) && bound.len() >= self.cfg().max_binds {
                    return Err(WsError::bad_request(format!(
                        "bind limit reached: at most {} bindings per connection",
                        self.cfg().max_binds
                    )));
                }
            }
            // A module the system does not have (yet) is bound and waits for it, as in
            // PlaceOS; a system that does not exist is an error.
            let module = match self.resolve(&p, &req).await {
                Ok(m) => Some(Arc::from(m)),
                Err(e) if e.code == ErrorCode::ModuleNotFound => None,
                Err(e) => return Err(e),
            };
            Ok(module)
        }
        .await;
        match result {
            Err(e) => self.reply_error(req.id, &e),
            Ok(module) => {
                self.bound.lock().insert(meta.clone());
                self.shared
                    .hub
                    .send(HubCommand::Bind {
                        session: self.id,
                        key: TopicKey {
                            tenant: self.tenant.clone(),
                            meta,
                        },
                        module,
                        id: req.id,
                    })
                    .await;
            }
        }
    }

    async fn unbind(&self, req: Request) {
        let meta = Meta::of(&req);
        self.bound.lock().remove(&meta);
        self.shared
            .hub
            .send(HubCommand::Unbind {
                session: self.id,
                key: TopicKey {
                    tenant: self.tenant.clone(),
                    meta,
                },
                id: req.id,
            })
            .await;
    }

    fn exec(self: &Arc<Self>, mut req: Request) {
        if self.execs.len() >= self.cfg().max_inflight_execs {
            return self.reply_error(
                req.id,
                &WsError::new(
                    ErrorCode::RequestFailed,
                    429,
                    format!(
                        "too many requests in flight: at most {} execs at once per connection",
                        self.cfg().max_inflight_execs
                    ),
                ),
            );
        }
        if self.execs.is_closed() {
            return self.reply_error(
                req.id,
                &WsError::new(ErrorCode::RequestFailed, 503, "the server is shutting down"),
            );
        }
        let this = self.clone();
        self.execs.spawn(async move {
            let meta = Meta::of(&req);
            let result = async {
                let p = this.authorize(Resource::Control, Action::Write).await?;
                let module = this.resolve(&p, &req).await?;
                let args = std::mem::take(&mut req.args);
                Ok::<_, WsError>(
                    this.shared
                        .state
                        .engine
                        .exec(&p.tenant_id, &module, &req.name, args)
                        .await?,
                )
            }
            .await;
            match result {
                Ok(v) => this.outbox.push_reply(frame::executed(req.id, &v, &meta)),
                Err(e) => this.reply_error(req.id, &e),
            }
        });
    }

    async fn debug(&self, req: Request) {
        let key = (req.sys.clone(), req.module.clone(), req.index);
        if self.debugs.lock().contains_key(&key) {
            return self.outbox.push_reply(frame::success(req.id));
        }
        let result = async {
            let p = self.authorize(Resource::Modules, Action::Read).await?;
            // PlaceOS's backoffice sends the module id as `mod`; a name is resolved.
            let module = if IdKind::Module.is_valid_id(&req.module) {
                req.module.clone()
            } else {
                self.resolve(&p, &req).await?
            };
            let lines = self.shared.state.engine.debug(&p.tenant_id, &module)?;
            Ok::<_, WsError>((module, lines))
        }
        .await;
        let (module, mut lines) = match result {
            Ok(r) => r,
            Err(e) => return self.reply_error(req.id, &e),
        };
        let (outbox, id, meta) = (self.outbox.clone(), req.id, Meta::of(&req));
        let task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            // Lines not sent (the module logged faster than this client reads), told to
            // the client with the next line that fits.
            let mut skipped = 0u64;
            loop {
                let (level, msg) = match lines.recv().await {
                    Ok(line) => (level_name(line.level), line.message),
                    Err(RecvError::Lagged(n)) => {
                        skipped += n;
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if skipped > 0 {
                    let note = format!(
                        "{skipped} log lines skipped: the module logs faster than this connection reads"
                    );
                    if !outbox.push_debug(frame::debug_line(id, &module, "warn", &note, &meta)) {
                        skipped += 1;
                        continue;
                    }
                    skipped = 0;
                }
                if !outbox.push_debug(frame::debug_line(id, &module, level, &msg, &meta)) {
                    skipped += 1;
                }
            }
        });
        self.debugs.lock().insert(key, task.abort_handle());
        self.outbox.push_reply(frame::success(req.id));
    }

    fn ignore(&self, req: Request) {
        if let Some(h) =
            self.debugs
                .lock()
                .remove(&(req.sys.clone(), req.module.clone(), req.index))
        {
            h.abort();
        }
        self.outbox.push_reply(frame::success(req.id));
    }

    /// Keepalive, idle timeout, lag and credential checks.
    async fn watch(self: Arc<Self>) -> Close {
        let cfg = self.cfg().clone();
        let tick = cfg
            .ping_interval
            .min(cfg.slow_client_timeout / 2)
            .min(cfg.idle_timeout / 4)
            .max(Duration::from_millis(100));
        let mut next_ping = Instant::now() + cfg.ping_interval;
        let mut next_check = Instant::now() + RECHECK_EVERY;
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            self.count_queued(self.outbox.len().1);
            if let Some(o) = self.outbox.overflow() {
                return Close {
                    flush: false,
                    ..Close::new(code::POLICY, o.0)
                };
            }
            if let Some(since) = self.outbox.behind_since()
                && now.duration_since(since) > cfg.slow_client_timeout
            {
                metrics::counter!("lintel_ws_slow_clients_total").increment(1);
                return Close {
                    flush: false,
                    ..Close::new(
                        code::POLICY,
                        format!(
                            "client too slow: its queue was full for {} s",
                            cfg.slow_client_timeout.as_secs_f64()
                        ),
                    )
                };
            }
            let quiet = now.duration_since(*self.last_received.lock());
            if quiet > cfg.idle_timeout {
                return Close::new(
                    code::NORMAL,
                    format!(
                        "idle: nothing received for {} s",
                        cfg.idle_timeout.as_secs()
                    ),
                );
            }
            if now >= next_ping {
                let mut out = BytesMut::new();
                frame::write_ping(&mut out);
                self.outbox.push_raw(out.freeze());
                next_ping = now + cfg.ping_interval;
            }
            if now >= next_check {
                next_check = now + RECHECK_EVERY;
                // Boxed: kept only while it runs, not in every idle session.
                if let Err(e) = Box::pin(revalidate(
                    &self.shared.state,
                    &self.credential,
                    &self.home,
                    &self.tenant,
                ))
                .await
                {
                    let e = WsError::from(e);
                    if e.code == ErrorCode::AccessDenied {
                        return Close::new(
                            code::POLICY,
                            format!("credential no longer valid: {}", e.message),
                        );
                    }
                }
            }
        }
    }

    /// The outbox out, until a close is requested (then the close frame) or a write fails.
    async fn write(&self, wr: &mut tokio::net::tcp::WriteHalf<'_>) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        let mut batch: Vec<Outgoing> = Vec::new();
        loop {
            tokio::select! {
                () = self.outbox.ready() => {}
                () = self.close_requested.notified() => {}
            }
            let close = self.close.lock().clone();
            if close.as_ref().is_some_and(|c| !c.flush) {
                out.clear();
            } else {
                loop {
                    batch.clear();
                    if self.outbox.drain(256, &mut batch) == 0 {
                        break;
                    }
                    for f in batch.drain(..) {
                        match f {
                            Outgoing::Text(b) => frame::write_text(&mut out, &b),
                            Outgoing::Notify { id, tail } => {
                                frame::write_notify(&mut out, id, &tail)
                            }
                            Outgoing::Raw(b) => out.extend_from_slice(&b),
                        }
                    }
                    if out.len() >= BATCH_BYTES {
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                }
            }
            if let Some(c) = close {
                frame::write_close(&mut out, c.code, &c.reason);
                wr.write_all(&out).await?;
                return wr.shutdown().await;
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
            // An idle session keeps no large buffer.
            if out.capacity() > BATCH_BYTES * 2 {
                out = BytesMut::new();
            }
        }
    }
}

fn binary_refused() -> WsError {
    WsError::new(
        ErrorCode::ParseError,
        400,
        "binary frames are not part of the protocol: send JSON text",
    )
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

impl From<EngineError> for WsError {
    fn from(e: EngineError) -> Self {
        crate::error::ws_error(e)
    }
}
