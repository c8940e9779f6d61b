//! Host-owned transports: the engine opens the device connection a module's config names,
//! frames what arrives, and writes what the driver queues. Drivers never hold sockets.

use bytes::{Buf, BytesMut};
use futures_util::{FutureExt, StreamExt};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::actor::Event;
use crate::state::ModuleStatus;
use crate::tls::TlsClient;

/// Largest framed message handed to a driver (and largest single send).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Most frames handed to a module in one event (frames already read from the device go
/// together), and the size past which no frame joins a batch: an event holds at most
/// `MAX_BATCH_BYTES + MAX_FRAME_BYTES`, so a module's full event queue stays bounded.
pub(crate) const MAX_BATCH_FRAMES: usize = 256;
pub(crate) const MAX_BATCH_BYTES: usize = 16 * 1024;
/// Status key holding why the device cannot be reached (null once it can).
pub const CONNECTION_ERROR_KEY: &str = "connection_error";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasts this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

/// Reconnection delays: from 0.5 s, doubling to 30 s, each within ±15 % (so modules that
/// lost one gateway together do not come back in step).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next delay to wait (before jitter), for logs.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay to wait now; the next one doubles.
    pub fn wait(&mut self) -> Duration {
        let jitter = rand::random::<f64>() * 0.3 + 0.85;
        let wait = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// Connected: start over from the shortest delay.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How the byte stream is cut into messages (from the driver's metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    Raw,
    Delimiter(Vec<u8>),
    FixedLength(usize),
    /// A big-endian length header of 1, 2 or 4 bytes, then that many bytes.
    LengthPrefixed(u8),
}

/// What a module actor asks of its transport.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    Write(Vec<u8>),
    /// Drop the connection (the driver asked); reconnect with backoff.
    Disconnect,
}

/// An in-process device, reachable as `sim://<name>` (the demo building's simulators).
pub trait InProcessEndpoint: Send + Sync {
    /// A fresh connection to the device.
    fn connect(&self) -> DuplexStream;
}

/// Any `Fn() -> DuplexStream` is an endpoint: `Arc::new(move || simulator.connect())`.
impl<F: Fn() -> DuplexStream + Send + Sync> InProcessEndpoint for F {
    fn connect(&self) -> DuplexStream {
        self()
    }
}

pub(crate) type Endpoints = Arc<RwLock<HashMap<String, Arc<dyn InProcessEndpoint>>>>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Where a module's device is, parsed from its `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
    },
    Udp {
        host: String,
        port: u16,
    },
    /// A WebSocket server: `ws://` or (`secure`) `wss://host[:port]/path?query`.
    WebSocket {
        host: String,
        port: u16,
        secure: bool,
        url: String,
    },
    InProcess(String),
}

impl Target {
    pub fn parse(uri: &str) -> Result<Self, String> {
        let full = uri;
        if let Some(name) = uri.strip_prefix("sim://") {
            if name.is_empty() {
                return Err("sim:// needs a simulator name".into());
            }
            return Ok(Target::InProcess(name.to_string()));
        }
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            format!(
                "unsupported uri `{uri}` (expected tcp://, tls://, udp://host:port or ws(s)://)"
            )
        })?;
        if scheme == "ws" || scheme == "wss" {
            // Errors quote the address without its query (it may carry a device token).
            let uri = uri.split_once('?').map_or(uri, |(u, _)| u);
            let parsed: tokio_tungstenite::tungstenite::http::Uri = uri
                .parse()
                .map_err(|e| format!("uri `{uri}` is not a valid URL: {e}"))?;
            if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(format!("uri `{uri}` must not carry credentials"));
            }
            let host = parsed
                .host()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("uri `{uri}` has no host"))?;
            let secure = scheme == "wss";
            let authority = parsed.authority().map_or("", |a| a.as_str());
            let port_text = match authority.strip_prefix('[') {
                Some(v6) => v6.split_once("]:").map(|(_, p)| p),
                None => authority.rsplit_once(':').map(|(_, p)| p),
            };
            let port = match port_text {
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("uri `{uri}` has an invalid port"))?,
                None if secure => 443,
                None => 80,
            };
            return Ok(Target::WebSocket {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                secure,
                url: full.to_string(),
            });
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("uri `{uri}` has no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("uri `{uri}` has an invalid port"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("uri `{uri}` needs a host and a non-zero port"));
        }
        if host.contains(['/', '@', '?', '#']) {
            return Err(format!("uri `{uri}` must be only scheme://host:port"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        match scheme {
            "tcp" => Ok(Target::Tcp { host, port }),
            "tls" => Ok(Target::Tls { host, port }),
            "udp" => Ok(Target::Udp { host, port }),
            _ => Err(format!(
                "unsupported uri `{uri}` (expected tcp://, tls://, udp://host:port or ws(s)://)"
            )),
        }
    }
}

type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// A live connection to a device.
enum Conn {
    Stream(Box<dyn Stream>),
    Datagram(tokio::net::UdpSocket),
    Messages(Box<WebSocket>),
}

async fn connect(
    target: &Target,
    endpoints: &Endpoints,
    tls: Option<&TlsClient>,
) -> Result<Conn, String> {
    let tcp = async |host: &str, port: u16| {
        let s = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| format!("connect to {host}:{port} timed out"))?
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        s.set_nodelay(true).ok();
        Ok::<_, String>(s)
    };
    match target {
        Target::InProcess(name) => {
            let ep = endpoints
                .read()
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no in-process device `{name}`"))?;
            Ok(Conn::Stream(Box::new(ep.connect())))
        }
        Target::Tcp { host, port } => Ok(Conn::Stream(Box::new(tcp(host, *port).await?))),
        Target::Tls { host, port } => {
            let tls = tls.ok_or("no TLS configuration for a tls:// address")?;
            Ok(Conn::Stream(
                tls_over(tls, host, *port, tcp(host, *port).await?).await?,
            ))
        }
        Target::WebSocket {
            host,
            port,
            secure,
            url,
        } => {
            let s = tcp(host, *port).await?;
            let stream: Box<dyn Stream> = if *secure {
                let tls = tls.ok_or("no TLS configuration for a wss:// address")?;
                tls_over(tls, host, *port, s).await?
            } else {
                Box::new(s)
            };
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(MAX_FRAME_BYTES))
                .max_frame_size(Some(MAX_FRAME_BYTES));
            let (ws, _) = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)),
            )
            .await
            // Named by host and port only: a query may carry a device token.
            .map_err(|_| format!("WebSocket handshake with {host}:{port} timed out"))?
            .map_err(|e| format!("WebSocket handshake with {host}:{port}: {e}"))?;
            Ok(Conn::Messages(Box::new(ws)))
        }
        Target::Udp { host, port } => {
            let addr = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(local)
                .await
                .map_err(|e| format!("udp socket: {e}"))?;
            // Connected: only datagrams from the device's address are received.
            socket
                .connect(addr)
                .await
                .map_err(|e| format!("udp to {addr}: {e}"))?;
            Ok(Conn::Datagram(socket))
        }
    }
}

/// A TLS session over `tcp` to `host`, checked as the module's `tls` settings say.
async fn tls_over(
    tls: &TlsClient,
    host: &str,
    port: u16,
    tcp: tokio::net::TcpStream,
) -> Result<Box<dyn Stream>, String> {
    let name = tls.name_for(host)?;
    if tls.unverified {
        tracing::warn!(%host, port, "TLS certificate not verified (setting tls.verify is false)");
    }
    let s = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    Ok(Box::new(s))
}

/// Cuts a byte stream into frames, refusing any frame over `max`.
pub struct FrameDecoder {
    framing: Framing,
    max: usize,
}

impl FrameDecoder {
    pub fn new(framing: Framing, max: usize) -> Self {
        FrameDecoder { framing, max }
    }
}

impl Decoder for FrameDecoder {
    type Item = Vec<u8>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<u8>>, std::io::Error> {
        let too_big = |n: usize| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame exceeds the {n}-byte limit"),
            )
        };
        match &self.framing {
            Framing::Raw => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(self.max);
                Ok(Some(buf.split_to(n).to_vec()))
            }
            Framing::FixedLength(n) => {
                if *n > self.max {
                    return Err(too_big(self.max));
                }
                if buf.len() < *n {
                    return Ok(None);
                }
                Ok(Some(buf.split_to(*n).to_vec()))
            }
            Framing::LengthPrefixed(header) => {
                let h = usize::from(*header);
                if buf.len() < h {
                    return Ok(None);
                }
                let n = buf[..h]
                    .iter()
                    .fold(0usize, |n, b| (n << 8) | usize::from(*b));
                if n > self.max {
                    return Err(too_big(self.max));
                }
                if buf.len() < h + n {
                    buf.reserve(h + n - buf.len());
                    return Ok(None);
                }
                buf.advance(h);
                Ok(Some(buf.split_to(n).to_vec()))
            }
            Framing::Delimiter(d) => match buf.windows(d.len()).position(|w| w == d.as_slice()) {
                Some(pos) if pos > self.max => Err(too_big(self.max)),
                Some(pos) => {
                    let frame = buf.split_to(pos).to_vec();
                    buf.advance(d.len());
                    Ok(Some(frame))
                }
                None if buf.len() > self.max + d.len() => Err(too_big(self.max)),
                None => Ok(None),
            },
        }
    }
}

/// Runs one module's device connection until `cancel` fires: connect, deliver frames,
/// write queued bytes, and reconnect with exponential backoff and jitter.
pub(crate) struct TransportTask {
    pub module_id: Arc<str>,
    pub target: Target,
    pub framing: Framing,
    pub endpoints: Endpoints,
    pub events: flume::Sender<Event>,
    pub outbound: mpsc::Receiver<Outbound>,
    pub status: ModuleStatus,
    pub cancel: CancellationToken,
    /// For `tls://` targets (from the module's `tls` settings).
    pub tls: Option<TlsClient>,
    /// Make-break (PlaceOS `makebreak`): the connection closes after this long without
    /// traffic, or when the device closes it, and opens again when the driver sends.
    pub makebreak: Option<Duration>,
}

impl TransportTask {
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        self.status.set("connected", serde_json::Value::Bool(false));
        // Make-break, between connections: the write that opens the next one.
        let mut idle = false;
        let mut first_write = None;
        loop {
            if idle {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    out = self.outbound.recv() => match out {
                        Some(Outbound::Write(bytes)) => first_write = Some(bytes),
                        Some(Outbound::Disconnect) => continue,
                        None => return,
                    },
                }
            }
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = connect(&self.target, &self.endpoints, self.tls.as_ref()) => r,
            };
            match attempt {
                Ok(conn) => {
                    let opened = tokio::time::Instant::now();
                    if self.makebreak.is_some() {
                        tracing::debug!(module = %self.module_id, "device connected");
                    } else {
                        tracing::info!(module = %self.module_id, "device connected");
                    }
                    self.report(None);
                    match conn {
                        Conn::Stream(stream) => self.session(stream, first_write.take()).await,
                        Conn::Datagram(socket) => self.datagrams(socket).await,
                        Conn::Messages(ws) => self.messages(*ws).await,
                    }
                    if self.cancel.is_cancelled() {
                        return;
                    }
                    // Only a connection that lasted resets the backoff: a device that
                    // accepts and closes at once (a refused login) is not hammered.
                    if opened.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    if self.makebreak.is_some() {
                        // Closed between commands: not offline, the next send reconnects.
                        idle = true;
                        if self.events.send_async(Event::Idle).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // PlaceOS semantics: commands queued for a lost connection are dropped
                    // (the actor clears its command queue on `Disconnected`).
                    while self.outbound.try_recv().is_ok() {}
                    let _ = self.events.send_async(Event::Disconnected).await;
                }
                Err(e) => {
                    tracing::warn!(module = %self.module_id, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "device unreachable");
                    self.report(Some(e));
                    if self.makebreak.is_some() {
                        // Offline: what is queued fails; the next send tries again.
                        idle = true;
                        first_write = None;
                        while self.outbound.try_recv().is_ok() {}
                        if self.events.send_async(Event::Disconnected).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let wait = backoff.wait();
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A byte stream until it ends; with make-break, also until `makebreak` passes without
    /// traffic. `first_write` is the write that opened a make-break connection.
    async fn session(&mut self, stream: Box<dyn Stream>, first_write: Option<Vec<u8>>) {
        let (reader, mut writer) = tokio::io::split(stream);
        let mut frames = FramedRead::new(
            reader,
            FrameDecoder::new(self.framing.clone(), MAX_FRAME_BYTES),
        );
        let frames_total = metrics::counter!("lintel_transport_frames_total");
        let writes_total = metrics::counter!("lintel_transport_writes_total");
        if self.makebreak.is_none() {
            // Stale writes for an earlier connection (make-break's are for this one).
            while self.outbound.try_recv().is_ok() {}
        }
        if self.events.send_async(Event::Connected).await.is_err() {
            return;
        }
        if let Some(bytes) = first_write {
            writes_total.increment(1);
            if let Err(e) = writer.write_all(&bytes).await {
                tracing::warn!(module = %self.module_id, error = %e, "write to device failed");
                return;
            }
        }
        // Only polled with make-break.
        let mut quiet = std::pin::pin!(tokio::time::sleep(self.makebreak.unwrap_or(BACKOFF_MAX)));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = &mut quiet, if self.makebreak.is_some() => {
                    tracing::debug!(module = %self.module_id, "make-break: closing a quiet connection");
                    return;
                }
                frame = frames.next() => {
                    if let Some(d) = self.makebreak {
                        quiet.as_mut().reset(tokio::time::Instant::now() + d);
                    }
                    let first = match frame {
                        Some(Ok(data)) => data,
                        end => return self.ended(end),
                    };
                    // Frames already read go to the module together: one wake-up of its
                    // actor per read from the device, not one per frame.
                    let mut bytes = first.len();
                    let mut batch = vec![first];
                    let mut end = None;
                    while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                        match frames.next().now_or_never() {
                            Some(Some(Ok(data))) => {
                                bytes += data.len();
                                batch.push(data);
                            }
                            Some(other) => {
                                end = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    frames_total.increment(batch.len() as u64);
                    if self.events.send_async(Event::Received(batch)).await.is_err() {
                        return;
                    }
                    if let Some(end) = end {
                        return self.ended(end);
                    }
                },
                out = self.outbound.recv() => match out {
                    Some(Outbound::Write(bytes)) => {
                        writes_total.increment(1);
                        if let Some(d) = self.makebreak {
                            quiet.as_mut().reset(tokio::time::Instant::now() + d);
                        }
                        if let Err(e) = writer.write_all(&bytes).await {
                            tracing::warn!(module = %self.module_id, error = %e, "write to device failed; reconnecting");
                            return;
                        }
                    }
                    Some(Outbound::Disconnect) => {
                        tracing::info!(module = %self.module_id, "the driver dropped the connection");
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    /// The device stream ended: an error (the connection is dropped and retried) or EOF.
    fn ended(&self, end: Option<Result<Vec<u8>, std::io::Error>>) {
        match end {
            Some(Err(e)) => {
                tracing::warn!(module = %self.module_id, error = %e, "device stream error; reconnecting");
                self.report(Some(format!("device stream error: {e}")));
            }
            _ => tracing::info!(module = %self.module_id, "device closed the connection"),
        }
    }

    /// Publish why the device cannot be reached (`connection_error`), or clear it.
    fn report(&self, error: Option<String>) {
        match error {
            Some(e) => self
                .status
                .set(CONNECTION_ERROR_KEY, serde_json::Value::String(e)),
            // A module that never failed to connect has no such key.
            None if self.status.has(CONNECTION_ERROR_KEY) => self
                .status
                .set(CONNECTION_ERROR_KEY, serde_json::Value::Null),
            None => false,
        };
    }

    /// A UDP "connection": datagrams are cut into frames like a stream (with raw framing,
    /// one datagram is one frame). The socket stays up through ICMP errors (a device that
    /// is off), which are reported; the next send tries again.
    async fn datagrams(&mut self, socket: tokio::net::UdpSocket) {
        let frames_total = metrics::counter!("lintel_transport_frames_total");
        let writes_total = metrics::counter!("lintel_transport_writes_total");
        while self.outbound.try_recv().is_ok() {}
        if self.events.send_async(Event::Connected).await.is_err() {
            return;
        }
        let mut decoder = FrameDecoder::new(self.framing.clone(), MAX_FRAME_BYTES);
        let mut pending = BytesMut::new();
        // One byte more than a frame may hold, to tell an over-long datagram apart.
        let mut buf = vec![0u8; MAX_FRAME_BYTES + 1];
        let mut reported = false;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                got = socket.recv(&mut buf) => match got {
                    Ok(n) => {
                        if reported {
                            // The device answers again (what follows may report anew).
                            reported = false;
                            self.report(None);
                        }
                        reported |= self.take_datagram(&buf[..n], &mut pending);
                        // Datagrams already queued are framed together.
                        while pending.len() < MAX_BATCH_BYTES {
                            match socket.try_recv(&mut buf) {
                                Ok(k) => reported |= self.take_datagram(&buf[..k], &mut pending),
                                Err(_) => break,
                            }
                        }
                        loop {
                            let mut batch = Vec::new();
                            let mut bytes = 0;
                            while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                                match decoder.decode(&mut pending) {
                                    Ok(Some(frame)) => {
                                        bytes += frame.len();
                                        batch.push(frame);
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        tracing::warn!(module = %self.module_id, error = %e, "datagram data dropped");
                                        self.report(Some(format!("datagram data dropped: {e}")));
                                        reported = true;
                                        pending.clear();
                                        break;
                                    }
                                }
                            }
                            if batch.is_empty() {
                                break;
                            }
                            frames_total.increment(batch.len() as u64);
                            if self.events.send_async(Event::Received(batch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // ECONNREFUSED from an earlier send: nothing listens on the port.
                        tracing::warn!(module = %self.module_id, error = %e, "udp device unreachable");
                        self.report(Some(format!("udp device unreachable: {e}")));
                        reported = true;
                    }
                },
                out = self.outbound.recv() => match out {
                    Some(Outbound::Write(bytes)) => {
                        writes_total.increment(1);
                        if let Err(e) = socket.send(&bytes).await {
                            tracing::warn!(module = %self.module_id, error = %e, "udp send failed");
                            self.report(Some(format!("udp send failed: {e}")));
                            reported = true;
                        }
                    }
                    Some(Outbound::Disconnect) | None => return,
                },
            }
        }
    }

    /// A WebSocket: each text or binary message is one frame; the driver's sends go out
    /// as text when they are UTF-8, else as binary. Pings are answered; a close ends it.
    async fn messages(&mut self, ws: WebSocket) {
        use tokio_tungstenite::tungstenite::Message;
        let frames_total = metrics::counter!("lintel_transport_frames_total");
        let writes_total = metrics::counter!("lintel_transport_writes_total");
        let (mut sink, mut stream) = ws.split();
        while self.outbound.try_recv().is_ok() {}
        if self.events.send_async(Event::Connected).await.is_err() {
            return;
        }
        let data = |m: Message| match m {
            Message::Text(t) => Some(t.as_bytes().to_vec()),
            Message::Binary(b) => Some(b.to_vec()),
            _ => None,
        };
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = futures_util::SinkExt::close(&mut sink).await;
                    return;
                }
                msg = stream.next() => {
                    let first = match msg {
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                            tracing::info!(module = %self.module_id, close = %why, "device closed the WebSocket");
                            return;
                        }
                        Some(Ok(m)) => match data(m) {
                            Some(d) => d,
                            None => continue, // ping/pong: tungstenite answers pings
                        },
                        Some(Err(e)) => {
                            tracing::warn!(module = %self.module_id, error = %e, "WebSocket error; reconnecting");
                            self.report(Some(format!("WebSocket error: {e}")));
                            return;
                        }
                        None => return,
                    };
                    let mut bytes = first.len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(m))) => {
                                if let Some(d) = data(m) {
                                    bytes += d.len();
                                    batch.push(d);
                                }
                            }
                            _ => break,
                        }
                    }
                    frames_total.increment(batch.len() as u64);
                    if self.events.send_async(Event::Received(batch)).await.is_err() {
                        return;
                    }
                },
                out = self.outbound.recv() => match out {
                    Some(Outbound::Write(bytes)) => {
                        writes_total.increment(1);
                        let msg = match String::from_utf8(bytes) {
                            Ok(text) => Message::text(text),
                            Err(e) => Message::binary(e.into_bytes()),
                        };
                        if let Err(e) = futures_util::SinkExt::send(&mut sink, msg).await {
                            tracing::warn!(module = %self.module_id, error = %e, "WebSocket send failed; reconnecting");
                            self.report(Some(format!("WebSocket send failed: {e}")));
                            return;
                        }
                    }
                    Some(Outbound::Disconnect) | None => {
                        let _ = futures_util::SinkExt::close(&mut sink).await;
                        return;
                    }
                },
            }
        }
    }

    /// Add one datagram to the bytes waiting to be framed; an over-long one is dropped
    /// (and reported: returns true).
    fn take_datagram(&self, data: &[u8], pending: &mut BytesMut) -> bool {
        if data.len() > MAX_FRAME_BYTES {
            tracing::warn!(module = %self.module_id, "datagram dropped: over the {MAX_FRAME_BYTES}-byte frame limit");
            self.report(Some(format!(
                "datagram dropped: frame exceeds the {MAX_FRAME_BYTES}-byte limit"
            )));
            true
        } else if pending.len() + data.len() > MAX_FRAME_BYTES + MAX_BATCH_BYTES {
            // Unframed bytes that never complete a frame do not pile up.
            tracing::warn!(module = %self.module_id, "datagram data dropped: no frame boundary");
            self.report(Some(format!(
                "datagram data dropped: no frame boundary within {MAX_FRAME_BYTES} bytes"
            )));
            pending.clear();
            true
        } else {
            pending.extend_from_slice(data);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames already read reach the module together, in order, and a batch stays within
    /// its frame bound (many short lines) and its byte bound (long lines).
    #[tokio::test]
    async fn frames_already_read_are_batched_within_bounds() {
        // 2,000 lines of 10 bytes: the frame bound ends a batch (256 × 11 bytes < 16 KiB).
        assert_eq!(largest_batch(2000, 10).await, MAX_BATCH_FRAMES);
        // 200 lines of 1,000 bytes: the byte bound ends a batch. It takes frames while it
        // holds less than 16 KiB, so the 17th frame (16,016 bytes before it) is its last.
        assert_eq!(largest_batch(200, 1000).await, 17);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let mut nominal = BACKOFF_MIN;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let w = b.wait();
            assert!(
                w >= nominal.mul_f64(0.85) && w <= nominal.mul_f64(1.15),
                "{w:?} for {nominal:?}"
            );
            waits.push(w);
            nominal = (nominal * 2).min(BACKOFF_MAX);
        }
        // 0.5, 1, 2, 4, 8, 16, then 30 s from the 7th on.
        assert_eq!(b.peek(), BACKOFF_MAX);
        assert!(waits[6] >= BACKOFF_MAX.mul_f64(0.85));
        // Jittered: not every capped delay is the same.
        assert!(waits[6..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        b.reset();
        assert_eq!(b.peek(), BACKOFF_MIN);
    }

    /// A device that sends faster than its module takes events (here: not at all) is held
    /// back by TCP, not buffered by the engine: its writer blocks while the module's bounded
    /// queue is full, and every line still arrives, in order, once the module reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_faster_than_its_module_is_held_back_not_buffered() {
        use tokio::io::AsyncWriteExt;
        const LINES: usize = 64 * 1024;
        const LEN: usize = 1023; // + '\n': 64 MiB in all, far over the socket buffers
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = flume::bounded(4);
        let (task, cancel, _outbound) =
            line_task(&format!("tcp://{addr}"), Default::default(), events_tx);
        let running = tokio::spawn(task.run());
        let (mut device, _) = listener.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            let mut line = vec![b'x'; LEN + 1];
            for i in 0..LINES {
                line[..8].copy_from_slice(format!("{i:08}").as_bytes());
                line[LEN] = b'\n';
                device.write_all(&line).await.unwrap();
            }
            device
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !writer.is_finished(),
            "64 MiB were taken in without the module reading"
        );
        let mut next = 0;
        while next < LINES {
            match events.recv_async().await.unwrap() {
                Event::Received(batch) => {
                    for frame in batch {
                        assert_eq!(&frame[..8], format!("{next:08}").as_bytes());
                        next += 1;
                    }
                }
                Event::Connected => {}
                _ => panic!("only frames expected"),
            }
        }
        let _device = writer.await.unwrap();
        cancel.cancel();
        running.await.unwrap();
    }

    /// A transport of `\n`-terminated lines to `uri`; keep the sender it returns (the
    /// transport stops when its outbound channel closes).
    fn line_task(
        uri: &str,
        endpoints: Endpoints,
        events: flume::Sender<Event>,
    ) -> (TransportTask, CancellationToken, mpsc::Sender<Outbound>) {
        let (outbound_tx, outbound) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = TransportTask {
            module_id: "mod-t".into(),
            target: Target::parse(uri).unwrap(),
            framing: Framing::Delimiter(b"\n".to_vec()),
            endpoints,
            events,
            outbound,
            status: crate::state::StatusBus::default().module("mod-t"),
            cancel: cancel.clone(),
            tls: None,
            makebreak: None,
        };
        (task, cancel, outbound_tx)
    }

    /// Writes `count` lines of `len` bytes before the transport reads any of them; checks
    /// every frame arrives in order within the bounds; returns the largest batch.
    async fn largest_batch(count: usize, len: usize) -> usize {
        let (device_tx, mut device_rx) = mpsc::unbounded_channel();
        let endpoints: Endpoints = Default::default();
        endpoints.write().insert(
            "dev".into(),
            Arc::new(move || {
                let (engine_side, device_side) = tokio::io::duplex(1 << 20);
                let _ = device_tx.send(device_side);
                engine_side
            }),
        );
        let (events_tx, events) = flume::bounded(1024);
        let (task, cancel, _outbound) = line_task("sim://dev", endpoints, events_tx);
        let running = tokio::spawn(task.run());
        let mut device = device_rx.recv().await.unwrap();
        assert!(matches!(events.recv_async().await, Ok(Event::Connected)));
        let lines: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("{i:0len$}").into_bytes())
            .collect();
        let mut bytes = Vec::new();
        for line in &lines {
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
        }
        device.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let mut largest = 0;
        while got.len() < lines.len() {
            match events.recv_async().await.unwrap() {
                Event::Received(batch) => {
                    assert!(batch.len() <= MAX_BATCH_FRAMES, "{}", batch.len());
                    let size: usize = batch.iter().map(Vec::len).sum();
                    assert!(size <= MAX_BATCH_BYTES + MAX_FRAME_BYTES, "{size}");
                    largest = largest.max(batch.len());
                    got.extend(batch);
                }
                _ => panic!("only frames expected"),
            }
        }
        assert_eq!(got, lines);
        cancel.cancel();
        running.await.unwrap();
        largest
    }

    fn decode_all(framing: Framing, max: usize, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut d = FrameDecoder::new(framing, max);
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(f) = d.decode(&mut buf).map_err(|e| e.to_string())? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn delimiter_framing_splits_and_keeps_partial_frames() {
        let frames = decode_all(
            Framing::Delimiter(b"\r\n".to_vec()),
            64,
            b"A=1\r\nB=2\r\nC=",
        )
        .unwrap();
        assert_eq!(frames, vec![b"A=1".to_vec(), b"B=2".to_vec()]);
    }

    #[test]
    fn oversized_frames_are_a_clear_error() {
        let err = decode_all(Framing::Delimiter(b"\n".to_vec()), 8, &[b'x'; 20]).unwrap_err();
        assert!(err.contains("8-byte limit"), "{err}");
        let err = decode_all(Framing::Delimiter(b"\n".to_vec()), 8, b"0123456789\n").unwrap_err();
        assert!(err.contains("8-byte limit"), "{err}");
    }

    #[test]
    fn fixed_and_raw_framing() {
        assert_eq!(
            decode_all(Framing::FixedLength(2), 64, b"abcde").unwrap(),
            vec![b"ab".to_vec(), b"cd".to_vec()]
        );
        assert_eq!(
            decode_all(Framing::Raw, 3, b"abcde").unwrap(),
            vec![b"abc".to_vec(), b"de".to_vec()]
        );
    }

    #[test]
    fn length_prefixed_framing() {
        assert_eq!(
            decode_all(
                Framing::LengthPrefixed(2),
                64,
                b"\x00\x03abc\x00\x01d\x00\x05ef"
            )
            .unwrap(),
            vec![b"abc".to_vec(), b"d".to_vec()]
        );
        let err = decode_all(Framing::LengthPrefixed(1), 8, b"\x09123456789").unwrap_err();
        assert!(err.contains("8-byte limit"), "{err}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("tcp://10.0.0.5:4352").unwrap(),
            Target::Tcp {
                host: "10.0.0.5".into(),
                port: 4352
            }
        );
        assert_eq!(
            Target::parse("tcp://[::1]:23").unwrap(),
            Target::Tcp {
                host: "::1".into(),
                port: 23
            }
        );
        assert_eq!(
            Target::parse("sim://display-1").unwrap(),
            Target::InProcess("display-1".into())
        );
        assert_eq!(
            Target::parse("tls://panel.local:443").unwrap(),
            Target::Tls {
                host: "panel.local".into(),
                port: 443
            }
        );
        assert_eq!(
            Target::parse("udp://10.0.0.9:1719").unwrap(),
            Target::Udp {
                host: "10.0.0.9".into(),
                port: 1719
            }
        );
        assert_eq!(
            Target::parse("wss://hub.example/api/ws?x=1").unwrap(),
            Target::WebSocket {
                host: "hub.example".into(),
                port: 443,
                secure: true,
                url: "wss://hub.example/api/ws?x=1".into()
            }
        );
        assert_eq!(
            Target::parse("ws://[::1]:8080/").unwrap(),
            Target::WebSocket {
                host: "::1".into(),
                port: 8080,
                secure: false,
                url: "ws://[::1]:8080/".into()
            }
        );
        // A query (which may carry a device token) stays out of the error.
        let e = Target::parse("ws://h:bad/?token=s3cret").unwrap_err();
        assert!(e.contains("ws://h:bad/") && !e.contains("s3cret"), "{e}");
        for bad in [
            "http://x:1",
            "tcp://host",
            "tcp://host:0",
            "tcp://:80",
            "tcp://h:99999",
            "tcp://user@h:23",
            "tcp://h:23/path",
            "sim://",
            "ws://",
            "ws://user:pw@h/",
            "wss://h:notaport/",
            "gopher://h:70",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
