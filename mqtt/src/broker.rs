//! One broker connection: a task that drives the `rumqttc` event loop (connects, reconnects
//! with backoff, reads commands), and a feeder that publishes what waits for the broker.
//!
//! On every new session the feeder publishes, in order: the birth message (`online`,
//! retained; the last will says `offline`), then everything that waited while the broker
//! was away (latest value per topic), then every current value and the metadata records
//! again (a broker restarted without persistence has lost its retained messages, and a
//! publish in flight when the connection broke may be lost too). A value read for this
//! re-publication is read when it is sent, so it is never older than one sent before it.

use crate::pending::Pending;
use crate::topics::{self, CommandTopic};
use crate::{Ctx, Inbound};
use bytes::Bytes;
use lintel_engine::Backoff;
use lintel_model::Broker;
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

const CONNECT_TIMEOUT_SECS: u64 = 5;
/// Requests between the feeder and the event loop.
const CLIENT_CHANNEL: usize = 512;
/// Module snapshots re-published per turn before the waiting queue is looked at again.
const RESYNC_MODULES_PER_TURN: usize = 16;
/// How long closing waits for the `offline` message and DISCONNECT to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a broker's connection is doing, for readiness, the API and metrics.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct BrokerState {
    pub connected: bool,
    /// Unix seconds of the last change of `connected`.
    pub since: i64,
    /// Why the last attempt failed (never the password).
    pub error: Option<String>,
    /// Topics waiting to be published.
    pub pending: usize,
    /// Topics dropped for want of room in the waiting queue since the start.
    pub dropped: u64,
    /// Messages handed to the broker connection since the start.
    pub published: u64,
    /// Sessions established since the start.
    pub sessions: u64,
}

/// What the publisher's core shares with one broker's tasks.
pub(crate) struct BrokerShared {
    pub id: Arc<str>,
    pub name: String,
    pub prefix: String,
    pub qos: QoS,
    pub pending: Mutex<Pending>,
    pub wake: Notify,
    /// Set when changes may have been missed (the core lagged): the feeder re-publishes
    /// every current value.
    pub resync: AtomicBool,
    pub state: Mutex<BrokerState>,
    published: AtomicU64,
}

impl BrokerShared {
    pub fn new(b: &Broker, max_topics: usize, max_bytes: usize) -> BrokerShared {
        BrokerShared {
            id: Arc::from(b.id.as_str()),
            name: b.name.clone(),
            prefix: b.topic_prefix.clone(),
            qos: qos(b.qos),
            pending: Mutex::new(Pending::new(max_topics, max_bytes)),
            wake: Notify::new(),
            resync: AtomicBool::new(false),
            state: Mutex::new(BrokerState::default()),
            published: AtomicU64::new(0),
        }
    }

    /// Queue a value (the core calls this for every change).
    pub fn put(&self, topic: &str, payload: Bytes) {
        let dropped = {
            let mut p = self.pending.lock();
            !p.put(topic, payload)
        };
        if dropped {
            metrics::counter!("lintel_mqtt_dropped_total", "broker" => self.id.to_string())
                .increment(1);
        }
        self.wake.notify_one();
    }

    pub fn snapshot(&self) -> BrokerState {
        let mut s = self.state.lock().clone();
        let mut p = self.pending.lock();
        s.pending = p.len();
        s.dropped += p.take_dropped();
        self.state.lock().dropped = s.dropped;
        s.published = self.published.load(Ordering::Relaxed);
        s
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = self.state.lock();
        if s.connected != connected {
            s.since = lintel_model::now_unix();
        }
        s.connected = connected;
        if connected {
            s.sessions += 1;
            s.error = None;
        } else if error.is_some() {
            s.error = error;
        }
        metrics::gauge!("lintel_mqtt_connected", "broker" => self.id.to_string())
            .set(if connected { 1.0 } else { 0.0 });
    }
}

pub(crate) fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// `online`/`offline` on the status topic.
fn presence(online: bool) -> Bytes {
    let v = if online { "\"online\"" } else { "\"offline\"" };
    topics::payload(lintel_model::now_unix(), v)
}

/// The session options a broker record asks for; an error names the field at fault.
pub(crate) fn options(
    b: &Broker,
    password: Option<Zeroizing<String>>,
    max_inbound_bytes: usize,
    max_payload_bytes: usize,
) -> Result<MqttOptions, String> {
    let client_id = b.client_id();
    let mut o = MqttOptions::new(client_id.clone(), b.host.clone(), b.port());
    o.set_keep_alive(Duration::from_secs(u64::from(b.keep_alive_secs)))
        .set_clean_session(true)
        // Commands up to 4× their limit are read and refused with an answer; a
        // bigger packet ends the session (and the broker is asked again after backoff).
        .set_max_packet_size(max_inbound_bytes * 4 + 4096, max_payload_bytes + 4096)
        .set_last_will(LastWill::new(
            topics::status_topic(&b.topic_prefix, &client_id),
            presence(false).to_vec(),
            qos(b.qos),
            true,
        ));
    if let Some(user) = &b.username {
        o.set_credentials(
            user.clone(),
            password.as_deref().map(String::as_str).unwrap_or_default(),
        );
    }
    if b.tls {
        o.set_transport(lintel_engine::mqtt_tls_transport(
            b.ca_certificate.as_deref(),
        )?);
    }
    Ok(o)
}

/// Why a session failed, in words (the broker's refusal named; never the password).
fn describe(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(C::BadUserNamePassword) => {
            "refused: bad user name or password (check the broker's `username` and `password`)"
                .into()
        }
        E::ConnectionRefused(C::NotAuthorized) => {
            "refused: not authorized (check the broker's `username` and `password`)".into()
        }
        E::ConnectionRefused(C::BadClientId) => {
            "refused: client id rejected (the broker's `client_id`)".into()
        }
        E::ConnectionRefused(code) => format!("refused: {code:?}"),
        E::NetworkTimeout => format!("no answer within {CONNECT_TIMEOUT_SECS} s"),
        other => other.to_string(),
    }
}

/// A running broker connection.
pub(crate) struct BrokerTask {
    pub shared: Arc<BrokerShared>,
    /// Ends the feeder (after `offline` and DISCONNECT) and then the event loop.
    closing: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl BrokerTask {
    pub fn start(
        ctx: Arc<Ctx>,
        tenant: Arc<str>,
        broker: &Broker,
        options: MqttOptions,
        shared: Arc<BrokerShared>,
    ) -> BrokerTask {
        let (client, mut eventloop) = AsyncClient::new(options, CLIENT_CHANNEL);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network);
        let closing = CancellationToken::new();
        let (session_tx, session_rx) = watch::channel(None::<u64>);
        let inbound = broker.commands.enabled.then(|| {
            crate::commands::start(
                ctx.clone(),
                tenant.clone(),
                broker,
                client.clone(),
                shared.clone(),
            )
        });
        let feeder = Feeder {
            ctx: ctx.clone(),
            tenant,
            client: client.clone(),
            shared: shared.clone(),
            status_topic: topics::status_topic(&broker.topic_prefix, &broker.client_id()),
            command_filter: broker
                .commands
                .enabled
                .then(|| CommandTopic::filter(&broker.topic_prefix)),
        };
        let feeder = tokio::spawn(feeder.run(session_rx, closing.clone()));
        let driver = Driver {
            shared: shared.clone(),
            host: format!("{}:{}", broker.host, broker.port()),
            inbound,
        };
        let closing2 = closing.clone();
        let done = tokio::spawn(async move {
            driver.run(&mut eventloop, session_tx, closing2).await;
            let _ = feeder.await;
        });
        BrokerTask {
            shared,
            closing,
            done,
        }
    }

    /// Say `offline`, disconnect, and wait (bounded) for both tasks to end.
    pub async fn close(self) {
        self.closing.cancel();
        let abort = self.done.abort_handle();
        if tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), self.done)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.shared.set_connected(false, None);
    }
}

/// Drives the event loop: the connection, its errors, and inbound commands.
struct Driver {
    shared: Arc<BrokerShared>,
    host: String,
    inbound: Option<Inbound>,
}

impl Driver {
    async fn run(
        self,
        eventloop: &mut EventLoop,
        session: watch::Sender<Option<u64>>,
        closing: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut sessions = 0u64;
        let mut closing_since: Option<Instant> = None;
        loop {
            if closing.is_cancelled() && closing_since.is_none() {
                closing_since = Some(Instant::now());
                if session.borrow().is_none() {
                    return;
                }
            }
            // `poll` is not cancelled while connected (it may be mid-write); closing is
            // noticed between events, and bounded by a deadline.
            let polled = match closing_since {
                Some(t) => {
                    match tokio::time::timeout_at((t + CLOSE_TIMEOUT).into(), eventloop.poll())
                        .await
                    {
                        Ok(p) => p,
                        Err(_) => return,
                    }
                }
                None if session.borrow().is_none() => tokio::select! {
                    // Not connected: connecting may be abandoned.
                    _ = closing.cancelled() => continue,
                    p = eventloop.poll() => p,
                },
                None => eventloop.poll().await,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    sessions += 1;
                    tracing::info!(broker = %self.shared.id, name = %self.shared.name, host = %self.host, "MQTT broker connected");
                    self.shared.set_connected(true, None);
                    let _ = session.send(Some(sessions));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(inbound) = &self.inbound {
                        inbound.offer(p.topic, p.payload);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::warn!(broker = %self.shared.id, "the MQTT broker refused the command subscription (check its ACL)");
                        self.shared.state.lock().error =
                            Some("the broker refused the command topic subscription".into());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if closing_since.is_some() => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = session.send(None);
                    if closing_since.is_some() {
                        return;
                    }
                    let why = format!("MQTT broker {}: {}", self.host, describe(&e));
                    let wait = backoff.wait();
                    tracing::warn!(broker = %self.shared.id, name = %self.shared.name, error = %why, retry_in_ms = wait.as_millis() as u64, "MQTT broker unreachable; values wait, coalesced");
                    self.shared.set_connected(false, Some(why));
                    tokio::select! {
                        _ = closing.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Publishes what waits, and on each new session the birth message and everything again.
struct Feeder {
    ctx: Arc<Ctx>,
    tenant: Arc<str>,
    client: AsyncClient,
    shared: Arc<BrokerShared>,
    status_topic: String,
    command_filter: Option<String>,
}

/// The feeder stops a session's work when the connection went away or closing began.
enum Stop {
    Session,
    Closing,
}

impl Feeder {
    async fn run(self, mut session: watch::Receiver<Option<u64>>, closing: CancellationToken) {
        loop {
            // Wait for a session.
            let current = loop {
                if let Some(n) = *session.borrow_and_update() {
                    break n;
                }
                tokio::select! {
                    _ = closing.cancelled() => return,
                    r = session.changed() => if r.is_err() { return },
                }
            };
            match self.serve(current, &mut session, &closing).await {
                Stop::Session => continue,
                Stop::Closing => {
                    // Connected: say so, then DISCONNECT (the last will is then not sent).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        let _ = self
                            .client
                            .publish_bytes(
                                self.status_topic.clone(),
                                self.shared.qos,
                                true,
                                presence(false),
                            )
                            .await;
                        let _ = self.client.disconnect().await;
                    })
                    .await;
                    return;
                }
            }
        }
    }

    /// One session: birth, then what waits, interleaved with the re-publication.
    async fn serve(
        &self,
        current: u64,
        session: &mut watch::Receiver<Option<u64>>,
        closing: &CancellationToken,
    ) -> Stop {
        let mut resync = Resync::new(&self.ctx, &self.tenant);
        self.shared.resync.store(false, Ordering::Relaxed);
        let mut batch: Vec<(String, Bytes)> = vec![(self.status_topic.clone(), presence(true))];
        if let Some(filter) = &self.command_filter
            && let Err(e) = self
                .client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
        {
            tracing::warn!(broker = %self.shared.id, error = %e, "could not subscribe to the command topic");
        }
        loop {
            for (topic, payload) in batch.drain(..) {
                tokio::select! {
                    biased;
                    _ = closing.cancelled() => return Stop::Closing,
                    r = self.client.publish_bytes(topic, self.shared.qos, true, payload) => {
                        if r.is_err() {
                            // The event loop is gone (closing).
                            return Stop::Closing;
                        }
                        self.shared.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if closing.is_cancelled() {
                return Stop::Closing;
            }
            // Compared, not `has_changed`: the wait below marks a change seen.
            if *session.borrow() != Some(current) {
                return Stop::Session;
            }
            // What waits first, a bounded slice of it at a time.
            {
                let mut p = self.shared.pending.lock();
                while batch.len() < 256 {
                    match p.pop() {
                        Some((t, v)) => batch.push((t.to_string(), v)),
                        None => break,
                    }
                }
            }
            if !batch.is_empty() {
                continue;
            }
            if resync.fill(&self.ctx, &self.shared.prefix, &mut batch) {
                continue;
            }
            // Asked for while one ran: one more pass once it is done (not a restart per
            // request, which a burst of them would keep from ever finishing).
            if self.shared.resync.swap(false, Ordering::Relaxed) {
                resync = Resync::new(&self.ctx, &self.tenant);
                continue;
            }
            metrics::gauge!("lintel_mqtt_pending", "broker" => self.shared.id.to_string()).set(0.0);
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = session.changed() => {}
                _ = closing.cancelled() => return Stop::Closing,
            }
        }
    }
}

/// The re-publication of a session: the tenant's metadata, then each module's current
/// values, a few modules per turn.
struct Resync {
    metadata: Vec<(String, serde_json::Value)>,
    modules: Vec<(Arc<str>, Vec<topics::StateBase>)>,
}

impl Resync {
    fn new(ctx: &Ctx, tenant: &str) -> Resync {
        let Some(t) = ctx.index.read().get(tenant).cloned() else {
            return Resync {
                metadata: Vec::new(),
                modules: Vec::new(),
            };
        };
        Resync {
            // Popped from the end: reversed so zones go before systems and drivers.
            metadata: t
                .metadata
                .iter()
                .rev()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            modules: t
                .modules
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Add the next slice to `batch`; `false` when done.
    fn fill(&mut self, ctx: &Ctx, prefix: &str, batch: &mut Vec<(String, Bytes)>) -> bool {
        let now = lintel_model::now_unix();
        if !self.metadata.is_empty() {
            for _ in 0..64 {
                let Some((id, v)) = self.metadata.pop() else {
                    break;
                };
                batch.push((
                    topics::metadata_topic(prefix, &id),
                    topics::payload(now, &v.to_string()),
                ));
            }
            return true;
        }
        let mut n = 0;
        while n < RESYNC_MODULES_PER_TURN {
            let Some((module, bases)) = self.modules.pop() else {
                break;
            };
            n += 1;
            // Read now, as it is sent: never older than a value sent before.
            let Some(snapshot) = ctx.bus.snapshot(&module) else {
                continue;
            };
            for (key, value) in &snapshot {
                let p = topics::payload(now, &value.to_string());
                if p.len() > ctx.cfg.max_payload_bytes {
                    continue;
                }
                for base in &bases {
                    batch.push((topics::state_topic(prefix, base, key), p.clone()));
                }
            }
        }
        n > 0
    }
}
