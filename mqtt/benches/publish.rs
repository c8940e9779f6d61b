//! MQTT publishing benchmark (row P5 of `shared/design/performance.md`): status changes
//! published to a local mosquitto, against a bare rumqttc publisher in the same run.
//!
//! Per row: a fresh embedded store and engine with one tenant (org/building/level zones),
//! the misbehaving fixture driver, one system of M modules (not running: the bench writes
//! their state through `engine.status_bus().module(id)`, as a driver would) with K = 10
//! keys each, all given a first value before anything is measured, and a `Broker` record
//! for the one mosquitto of the run (`lintel_testkit`). Rows: M = 10, 100, 1,000 at QoS 0
//! (PlaceOS's and the record's default), and M = 100 at QoS 1.
//!
//! - **Baseline**: a bare rumqttc `AsyncClient` with Lintel's channel size (512), network
//!   options and keep-alive, its event loop on a task of its own. A task publishes,
//!   retained, with the row's QoS, as fast as the client channel accepts, round-robin over
//!   the very topics Lintel publishes to
//!   (`placeos/<org>/state/_/<bld>/<lvl>/_/<sys>/<driver>/Misbehave/<i>/k<j>`, checked
//!   against the publisher's own index), each a fresh `{"time":…,"value":<n>}` payload
//!   built by Lintel's `topics::payload`. Rate: publishes the client accepted, per second.
//! - **Lintel**: `Publisher::start` with the default `MqttConfig`. Measuring starts after
//!   the session's first re-publication (birth, 5 metadata records, the M×K values): the
//!   broker is connected, nothing waits and `published` stopped growing. A producer thread
//!   (as the engine's driver workers are threads) then changes the M×K keys round-robin,
//!   module-major, to ever-growing numbers. Rate: the broker's `published` delta per second
//!   (`BrokerState::published` counts what was handed to the rumqttc client: the
//!   baseline's measure). Also printed: changes made per second (coalescing makes
//!   messages ≤ changes), peak `pending()` topics, status-bus lags (each one a full
//!   re-publication of the tenant) and reconnections while measured (0 expected).
//!
//! The producer, and why: the baseline's producer *is* its publisher, held back by the
//! client channel (at most 512 waiting). The Lintel producer is held back likewise
//! (**windowed**, the P5 figure): at most min(M×K/2, 1024) changes not yet handed to the
//! broker connection. Offered load stays just above what the publisher takes, so it is
//! never idle; and with round-robin keys and first-come queues under half the topics in
//! flight, a key's previous value is out before it changes again, so every change is one
//! message, as in the baseline. A producer without pause (**flat-out**, the second table)
//! burns a whole core of this 2-core machine on changes that are only coalesced away,
//! taking it from mosquitto and the publisher's tasks, and outruns the status bus (4,096
//! changes) so that the publisher's core lags: that table shows behaviour under overload,
//! not the publishing rate.
//!
//! Other work on the machine changes both sides' rates, so each row alternates the two:
//! `ROUNDS` rounds of baseline, then Lintel, each a 200 ms warm-up and 1 s measured. A
//! side's round ends with a fence: its queue drained, then a marker published after
//! everything else (the baseline on a topic of its own; Lintel as the first module's
//! `fence` key) and awaited by a subscriber, so the broker (one connection's packets
//! handled in order) has taken all of it before the other side goes on. The ratio is of
//! the totals; the per-round range shows the noise. The load average is printed at the
//! start.
//!
//! Correctness, after each Lintel run: once the queue is empty and the fence is through,
//! a fresh subscriber to the tenant's state topics must get all M×K keys retained with
//! the final value the status bus holds. A mismatch (or a failure to connect or settle)
//! exits non-zero; a ratio below the target does not.
//!
//! Run: `cargo bench -p lintel-mqtt --bench publish` (needs mosquitto; Debian installs it
//! in /usr/sbin). Pick rows with `-- m10 m100 m1000 qos1`, one producer with
//! `-- --windowed` or `-- --flat-out`.

use lintel_auth::{Keyring, SecretKeyring};
use lintel_engine::{Engine, EngineConfig, ModuleStatus};
use lintel_model::{Broker, ControlSystem, DriverRole, IdKind, Module, Tenant, Zone, new_id};
use lintel_mqtt::{MqttConfig, PasswordOpener, Publisher};
use lintel_store::{Actor, EmbeddedStore, ErasedRecord, Store, StoreExt};
use lintel_testkit::{MQTT_PASSWORD, MQTT_USER, Mosquitto, Subscriber};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Rounds per row, each side measured once per round.
const ROUNDS: usize = 3;
/// Not counted, at the start of every round.
const WARMUP: Duration = Duration::from_millis(200);
/// Measured, per round and side.
const ROUND: Duration = Duration::from_secs(1);
/// Status keys per module.
const KEYS: usize = 10;
const KEY_NAMES: [&str; KEYS] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
/// Lintel's feeder → event loop channel (`CLIENT_CHANNEL` in `src/broker.rs`).
const CLIENT_CHANNEL: usize = 512;
/// Changes (or baseline publishes) between looks at the clock and the window.
const BATCH: u64 = 64;
/// Windowed producer: most changes not yet handed to the broker connection.
const WINDOW: u64 = 1024;
const TARGET: f64 = 0.80;

// ---------------------------------------------------------------------------------------
// Warnings the publisher logs while measured (a bus lag means a full re-publication).

static LAGS: AtomicU64 = AtomicU64::new(0);
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct WarnCounter;

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut text = MessageText(String::new());
        e.record(&mut text);
        if text.0.contains("fell behind") {
            LAGS.fetch_add(1, Ordering::Relaxed);
        } else if let Ok(mut w) = WARNINGS.lock() {
            w.push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------------------
// Fixture: one tenant, M modules, a broker record.

struct Opener(Keyring);

impl PasswordOpener for Opener {
    fn open(&self, b: &Broker) -> Result<Zeroizing<String>, String> {
        self.0
            .open_broker_password(b)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no password".to_string())
    }
}

struct Fixture {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    keyring: Keyring,
    tenant: String,
    modules: Vec<String>,
    /// `topics[module][key]`: the state topics, as PlaceOS's scheme spells them.
    topics: Vec<Vec<String>>,
    _dir: tempfile::TempDir,
}

fn zone(tenant: &str, name: &str, tag: &str) -> Zone {
    Zone {
        id: new_id(IdKind::Zone),
        tenant_id: tenant.into(),
        name: name.into(),
        tags: vec![tag.into()],
        ..Default::default()
    }
}

impl Fixture {
    async fn new(m: usize) -> Result<Fixture, BoxError> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
        let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line())?);
        let mut cfg = EngineConfig::new(dir.path().to_path_buf());
        cfg.workers = 1;
        let engine = Arc::new(Engine::new(cfg, store.clone())?);
        let tenant = store
            .create(
                &Actor::system(),
                Tenant {
                    id: new_id(IdKind::Tenant),
                    name: format!("Bench {m}"),
                    domain: format!("bench{m}.example"),
                    ..Default::default()
                },
            )
            .await?;
        let (hash, info) = engine
            .install_component(
                &tenant.id,
                lintel_bundled_drivers::fixtures::MISBEHAVE
                    .component
                    .to_vec(),
            )
            .await?;
        let driver = store
            .create(
                &Actor::system(),
                info.to_record(&tenant.id, hash, DriverRole::Logic),
            )
            .await?;
        let zones = [
            zone(&tenant.id, "Acme", "org"),
            zone(&tenant.id, "HQ", "building"),
            zone(&tenant.id, "Level 3", "level"),
        ];
        let system = new_id(IdKind::System);
        let mut records: Vec<Box<dyn ErasedRecord>> = Vec::new();
        let modules: Vec<String> = (0..m).map(|_| new_id(IdKind::Module)).collect();
        for id in &modules {
            records.push(Box::new(Module {
                id: id.clone(),
                tenant_id: tenant.id.clone(),
                driver_id: driver.id.clone(),
                control_system_id: Some(system.clone()),
                running: false,
                ..Default::default()
            }));
        }
        records.push(Box::new(ControlSystem {
            id: system.clone(),
            tenant_id: tenant.id.clone(),
            name: format!("Bench room {m}"),
            zones: zones.iter().map(|z| z.id.clone()).collect(),
            modules: modules.clone(),
            ..Default::default()
        }));
        let topics = (1..=m)
            .map(|index| {
                (0..KEYS)
                    .map(|k| {
                        format!(
                            "placeos/{}/state/_/{}/{}/_/{system}/{}/Misbehave/{index}/k{k}",
                            zones[0].id, zones[1].id, zones[2].id, driver.id
                        )
                    })
                    .collect()
            })
            .collect();
        for z in zones {
            records.push(Box::new(z));
        }
        store.create_all(&Actor::system(), records).await?;
        Ok(Fixture {
            engine,
            store,
            keyring,
            tenant: tenant.id,
            modules,
            topics,
            _dir: dir,
        })
    }

    fn writers(&self) -> Vec<ModuleStatus> {
        self.modules
            .iter()
            .map(|id| self.engine.status_bus().module(id))
            .collect()
    }

    async fn add_broker(&self, mosquitto: &Mosquitto, qos: u8) -> Result<Broker, BoxError> {
        let id = new_id(IdKind::Broker);
        let b = Broker {
            id: id.clone(),
            tenant_id: self.tenant.clone(),
            name: "Bench broker".into(),
            host: "127.0.0.1".into(),
            port: Some(mosquitto.port()),
            username: Some(MQTT_USER.into()),
            password: Some(
                self.keyring
                    .seal_broker_password(&self.tenant, &id, MQTT_PASSWORD)?,
            ),
            qos,
            ..Default::default()
        };
        Ok(self.store.create(&Actor::system(), b).await?)
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Key `n` of the round-robin: module-major, so consecutive changes hit different modules.
fn slot(n: u64, m: usize) -> (usize, usize) {
    let i = (n % (m * KEYS) as u64) as usize;
    (i % m, i / m)
}

/// A token unique in the run.
fn fence_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("fence-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Wait for `token` on `sub`: the broker has handled everything its publisher sent before.
async fn fence_wait(sub: &mut Subscriber, token: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = sub
            .next(left)
            .await
            .ok_or("the fence message did not come back within 30 s")?;
        if String::from_utf8_lossy(&msg.payload).contains(token) {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Baseline: a bare rumqttc publisher.

struct Baseline {
    client: AsyncClient,
    driver: tokio::task::JoinHandle<()>,
    topics: Arc<Vec<Vec<String>>>,
    qos: QoS,
    /// The round-robin's position.
    next: u64,
    /// Sees the fence published after each round.
    fence: Subscriber,
    fence_topic: String,
}

impl Baseline {
    async fn connect(
        mosquitto: &Mosquitto,
        topics: &[Vec<String>],
        q: u8,
        run: usize,
    ) -> Result<Baseline, BoxError> {
        let (client, mut eventloop) = AsyncClient::new(
            mosquitto.options(&format!("bench-baseline-{run}")),
            CLIENT_CHANNEL,
        );
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(5);
        eventloop.set_network_options(network);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let driver = tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(c) = connected.take() {
                            let _ = c.send(());
                        }
                    }
                    Ok(_) => {}
                    // Also the end: the broker closes after our DISCONNECT.
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected_rx).await??;
        let fence_topic = format!("bench/fence/baseline-{run}");
        Ok(Baseline {
            fence: mosquitto.subscribe(&fence_topic).await,
            fence_topic,
            client,
            driver,
            topics: Arc::new(topics.to_vec()),
            qos: qos(q),
            next: 0,
        })
    }

    /// Publish as fast as the client takes for a warm-up and a round; the publishes
    /// accepted in the round.
    async fn round(&mut self) -> Result<u64, BoxError> {
        let go = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicU64::new(self.next));
        let producer = {
            let (go, sent, client, topics) = (
                go.clone(),
                sent.clone(),
                self.client.clone(),
                self.topics.clone(),
            );
            let (qos, m, mut n) = (self.qos, self.topics.len(), self.next);
            tokio::spawn(async move {
                while go.load(Ordering::Relaxed) {
                    for _ in 0..BATCH {
                        let (module, key) = slot(n, m);
                        let payload =
                            lintel_mqtt::topics::payload(lintel_model::now_unix(), &n.to_string());
                        client
                            .publish_bytes(topics[module][key].clone(), qos, true, payload)
                            .await
                            .map_err(|e| format!("baseline publish: {e}"))?;
                        n += 1;
                    }
                    sent.store(n, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
                Ok::<u64, String>(n)
            })
        };
        tokio::time::sleep(WARMUP).await;
        let start = sent.load(Ordering::Relaxed);
        tokio::time::sleep(ROUND).await;
        let end = sent.load(Ordering::Relaxed);
        go.store(false, Ordering::Relaxed);
        self.next = producer.await??;
        // The broker has taken everything before Lintel's turn.
        let token = fence_token();
        self.client
            .publish(&self.fence_topic, QoS::AtMostOnce, false, token.clone())
            .await?;
        fence_wait(&mut self.fence, &token).await?;
        Ok(end - start)
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.driver).await;
    }
}

// ---------------------------------------------------------------------------------------
// Lintel.

/// How the Lintel side's producer offers changes.
#[derive(Clone, Copy, PartialEq)]
enum Producer {
    /// At most `window(m)` changes not yet handed to the broker connection.
    Windowed,
    /// Without pause.
    FlatOut,
}

impl Producer {
    fn name(self) -> &'static str {
        match self {
            Producer::Windowed => "windowed",
            Producer::FlatOut => "flat-out",
        }
    }
}

/// In-flight changes the windowed producer allows: under half the topics, so that with
/// round-robin changes and first-come queues a key's previous value is always out before
/// it changes again (nothing coalesces: every change is a message, as in the baseline).
fn window(m: usize) -> u64 {
    ((m * KEYS / 2) as u64).min(WINDOW)
}

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

/// One row's outcome for one producer.
struct Row {
    baseline: f64,
    lintel: f64,
    /// Lintel / baseline per round.
    rounds: Vec<f64>,
    changes_per_s: f64,
    peak_pending: usize,
    /// "fell behind the status bus" warnings (each a full re-publication).
    lags: u64,
    /// Sessions begun while measuring (0: the connection held).
    reconnects: u64,
}

async fn wait_until(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        if Instant::now() > deadline {
            return Err(format!("not within {secs} s: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Wait until the broker is connected, nothing waits and `published` stays put between
/// looks `every` apart (at least `min` published).
async fn settled(
    publisher: &Publisher,
    tenant: &str,
    broker: &str,
    min: u64,
    every: Duration,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = u64::MAX;
    loop {
        let s = publisher
            .broker_state(tenant, broker)
            .ok_or("the broker is not configured")?;
        if s.connected && s.pending == 0 && s.published >= min && s.published == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the publisher did not settle: {s:?}").into());
        }
        last = s.published;
        tokio::time::sleep(every).await;
    }
}

/// Lintel's side of a row, alternating with the baseline's rounds.
async fn row(
    f: &Fixture,
    mosquitto: &Mosquitto,
    broker: &Broker,
    mode: Producer,
    publisher: &Arc<Publisher>,
    baseline: &mut Baseline,
) -> Result<Row, BoxError> {
    let m = f.modules.len();
    wait_until(15, "the broker connected", || {
        publisher
            .broker_state(&f.tenant, &broker.id)
            .is_some_and(|s| s.connected)
    })
    .await?;
    // Birth, 5 metadata records (3 zones, the system, the driver), every key's value.
    let first = 1 + 5 + (m * KEYS) as u64;
    let slow = Duration::from_millis(250);
    settled(publisher, &f.tenant, &broker.id, first, slow).await?;

    // Lintel's fence: a key of module 1 set after a round; when it is on the broker, so
    // is everything the publisher sent before it (one connection, handled in order).
    let fence_writer = f.engine.status_bus().module(&f.modules[0]);
    let fence_topic = f.topics[0][0].replace("/k0", "/fence");
    let mut fence = mosquitto.subscribe(&fence_topic).await;
    let lintel_fence = async |fence: &mut Subscriber| {
        let token = fence_token();
        fence_writer.set("fence", json!(token));
        fence_wait(fence, &token).await
    };
    lintel_fence(&mut fence).await?;

    // The topics Lintel built are the ones the baseline publishes to.
    let built = publisher.topics(&f.tenant).ok_or("no topics built")?;
    for (i, id) in f.modules.iter().enumerate() {
        let bases = built
            .modules
            .get(id.as_str())
            .ok_or_else(|| format!("module {id} has no topic"))?;
        let want = f.topics[i][0].trim_end_matches("k0");
        if bases.len() != 1 || format!("placeos/{}", bases[0]) != want {
            return Err(format!("module {i}: topic bases {bases:?}, expected {want}").into());
        }
    }

    let shared = Arc::new((publisher.clone(), f.tenant.clone(), broker.id.clone()));
    let state =
        |s: &(Arc<Publisher>, String, String)| s.0.broker_state(&s.1, &s.2).unwrap_or_default();
    let before = state(&shared);
    let lags_before = LAGS.load(Ordering::Relaxed);
    let phase = Arc::new(AtomicU8::new(PAUSE));
    let changes = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (phase, changes, shared) = (phase.clone(), changes.clone(), shared.clone());
        let writers = f.writers();
        let (window, published0) = (window(m), before.published);
        let batch = BATCH.min(window / 2);
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                match phase.load(Ordering::Relaxed) {
                    STOP => return,
                    PAUSE => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    _ => {}
                }
                if mode == Producer::Windowed
                    && n.saturating_sub(state(&shared).published - published0) + batch > window
                {
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                for _ in 0..batch {
                    let (module, key) = slot(n, m);
                    n += 1;
                    writers[module].set(KEY_NAMES[key], json!(n));
                }
                changes.store(n, Ordering::Relaxed);
            }
        })
    };
    let watcher = {
        let (phase, peak, publisher) = (phase.clone(), peak.clone(), publisher.clone());
        tokio::spawn(async move {
            while phase.load(Ordering::Relaxed) != STOP {
                peak.fetch_max(publisher.pending().0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let rounds = async {
        let (mut base, mut published, mut changed) = (0, 0, 0);
        let mut ratios = Vec::new();
        for _ in 0..ROUNDS {
            let b = baseline.round().await?;
            phase.store(RUN, Ordering::Relaxed);
            tokio::time::sleep(WARMUP).await;
            let (p0, c0) = (state(&shared).published, changes.load(Ordering::Relaxed));
            tokio::time::sleep(ROUND).await;
            let (p1, c1) = (state(&shared).published, changes.load(Ordering::Relaxed));
            phase.store(PAUSE, Ordering::Relaxed);
            let fast = Duration::from_millis(50);
            settled(publisher, &f.tenant, &broker.id, 0, fast).await?;
            lintel_fence(&mut fence).await?;
            ratios.push((p1 - p0) as f64 / b as f64);
            (base, published, changed) = (base + b, published + p1 - p0, changed + c1 - c0);
        }
        Ok::<_, BoxError>((base, published, changed, ratios))
    }
    .await;
    phase.store(STOP, Ordering::Relaxed);
    producer.join().map_err(|_| "the producer panicked")?;
    let _ = watcher.await;
    let (base, published, changed, rounds) = rounds?;
    let lags = LAGS.load(Ordering::Relaxed) - lags_before;
    let reconnects = state(&shared).sessions - before.sessions;

    // Correctness: every key's final value is on the broker, retained.
    settled(publisher, &f.tenant, &broker.id, 0, slow).await?;
    lintel_fence(&mut fence).await?;
    check_retained(f, mosquitto).await?;
    let secs = (ROUND * ROUNDS as u32).as_secs_f64();
    Ok(Row {
        baseline: base as f64 / secs,
        lintel: published as f64 / secs,
        rounds,
        changes_per_s: changed as f64 / secs,
        peak_pending: peak.load(Ordering::Relaxed),
        lags,
        reconnects,
    })
}

/// A fresh subscriber gets every key retained, with the value the status bus holds.
async fn check_retained(f: &Fixture, mosquitto: &Mosquitto) -> Result<(), BoxError> {
    let mut want: HashMap<&str, Value> = HashMap::new();
    for (i, id) in f.modules.iter().enumerate() {
        for (k, key) in KEY_NAMES.iter().enumerate() {
            let v = f
                .engine
                .status_bus()
                .get(id, key)
                .ok_or_else(|| format!("module {i} has no {key}"))?;
            want.insert(f.topics[i][k].as_str(), (*v).clone());
        }
    }
    // `placeos/<org>/state/#`
    let t = &f.topics[0][0];
    let org_end = t["placeos/".len()..].find('/').ok_or("topic shape")? + "placeos/".len();
    let mut sub = mosquitto
        .subscribe(&format!("{}/state/#", &t[..org_end]))
        .await;
    // Each retained message comes once, with the broker's final value: gather one per
    // topic, then compare.
    let mut got: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = sub.next(left.min(Duration::from_secs(2))).await else {
            break;
        };
        if !msg.retain {
            continue;
        }
        let v: Value = serde_json::from_slice(&msg.payload)?;
        if want.contains_key(msg.topic.as_str()) && !got.contains_key(&msg.topic) {
            seen += 1;
        }
        got.insert(msg.topic, v["value"].clone());
    }
    let wrong: Vec<String> = want
        .iter()
        .filter(|(t, v)| got.get(**t) != Some(*v))
        .map(|(t, v)| format!("{t}: broker has {:?}, bus has {v}", got.get(*t)))
        .collect();
    if !wrong.is_empty() {
        return Err(format!(
            "retained state wrong on {} of {} topics, e.g. {:#?}",
            wrong.len(),
            want.len(),
            &wrong[..wrong.len().min(3)]
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let modes: Vec<Producer> = match (
        args.iter().any(|a| a == "--windowed"),
        args.iter().any(|a| a == "--flat-out"),
    ) {
        (true, false) => vec![Producer::Windowed],
        (false, true) => vec![Producer::FlatOut],
        _ => vec![Producer::Windowed, Producer::FlatOut],
    };
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rows: Vec<(usize, u8)> = [
        ("m10", 10, 0),
        ("m100", 100, 0),
        ("m1000", 1000, 0),
        ("qos1", 100, 1),
    ]
    .into_iter()
    .filter(|(name, _, _)| only.is_empty() || only.contains(name))
    .map(|(_, m, q)| (m, q))
    .collect();
    tracing::subscriber::set_global_default(WarnCounter)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mosquitto = Mosquitto::start(None);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "P5 MQTT publishing: status changes -> local mosquitto, {KEYS} keys per module, \
             retained; msg/s over {ROUNDS} alternating rounds of {} s per side \
             (load average at start: {})",
            ROUND.as_secs(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        let mut results: Vec<(usize, u8, Producer, Result<Row, BoxError>)> = Vec::new();
        for (run, (m, q)) in rows.into_iter().enumerate() {
            let f = Fixture::new(m).await?;
            for w in f.writers() {
                for key in KEY_NAMES {
                    w.set(key, json!(0));
                }
            }
            let broker = f.add_broker(&mosquitto, q).await?;
            let mut baseline = Baseline::connect(&mosquitto, &f.topics, q, run).await?;
            for &mode in &modes {
                let publisher = Publisher::start(
                    f.engine.clone(),
                    f.store.clone(),
                    Arc::new(Opener(f.keyring.clone())),
                    MqttConfig::default(),
                );
                let r = row(&f, &mosquitto, &broker, mode, &publisher, &mut baseline).await;
                // Also after a failure: the next run's session takes the same client id.
                publisher.shutdown().await;
                match &r {
                    Ok(r) => eprintln!(
                        "  M={m} QoS {q} {}: baseline {:.0} msg/s, lintel {:.0} msg/s",
                        mode.name(),
                        r.baseline,
                        r.lintel
                    ),
                    Err(e) => eprintln!("  M={m} QoS {q} {}: FAILED: {e}", mode.name()),
                }
                results.push((m, q, mode, r));
            }
            baseline.close().await;
            f.engine.shutdown().await;
        }
        for mode in modes {
            match mode {
                Producer::Windowed => println!(
                    "\nwindowed producer (the P5 figure): at most min(M*{KEYS}/2, {WINDOW}) \
                     changes not yet handed to the broker connection"
                ),
                Producer::FlatOut => println!(
                    "\nflat-out producer (overload): changes without pause; coalesced, \
                     and the status bus outrun"
                ),
            }
            println!(
                "  {:>5} {:>3} | {:>14} {:>12} {:>5} {:>11} | {:>10} {:>7} {:>7} {:>6}",
                "M",
                "QoS",
                "baseline msg/s",
                "lintel msg/s",
                "ratio",
                "rounds",
                "changes/s",
                "pending",
                "lags",
                "reconn"
            );
            for (m, q, _, r) in results.iter().filter(|r| r.2 == mode) {
                match r {
                    Ok(r) => {
                        let ratio = r.lintel / r.baseline;
                        let lo = r.rounds.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = r.rounds.iter().copied().fold(0.0, f64::max);
                        println!(
                            "  {m:>5} {q:>3} | {:>14.0} {:>12.0} {ratio:>5.2} {:>11} | {:>10.0} {:>7} {:>7} {:>6}   ratio={ratio:.2}{}",
                            r.baseline,
                            r.lintel,
                            format!("{lo:.2}-{hi:.2}"),
                            r.changes_per_s,
                            r.peak_pending,
                            r.lags,
                            r.reconnects,
                            if mode == Producer::Windowed && ratio < TARGET {
                                "  (below target)"
                            } else {
                                ""
                            },
                        )
                    }
                    Err(_) => println!("  {m:>5} {q:>3} | FAILED (see above)"),
                }
            }
        }
        println!("\ntarget (P5): lintel / baseline >= {TARGET:.2} (windowed producer)");
        let warnings = std::mem::take(&mut *WARNINGS.lock().unwrap_or_else(|e| e.into_inner()));
        if !warnings.is_empty() {
            println!(
                "other warnings logged: {} (first: {:?})",
                warnings.len(),
                &warnings[..warnings.len().min(3)]
            );
        }
        if results.iter().any(|r| r.3.is_err()) {
            return Err("a correctness check failed".into());
        }
        Ok(())
    })
}
