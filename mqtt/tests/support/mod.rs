//! The publisher against a real mosquitto: an embedded store in a temp dir, an engine
//! running the misbehaving fixture driver, two tenants.
//!
//! Tenant A: zones (org, building, level), a system with `Misbehave_1` (running: takes
//! commands) and `Misbehave_2` (not running: tests write its state into the status bus as
//! a driver would). Tenant B: a system of its own, and no broker.
#![allow(dead_code)]

use lintel_auth::{Keyring, SecretKeyring};
use lintel_engine::{Engine, EngineConfig, ModuleStatus};
use lintel_model::{Broker, ControlSystem, DriverRole, IdKind, Module, Tenant, Zone, new_id};
use lintel_mqtt::{MqttConfig, PasswordOpener, Publisher};
use lintel_store::{Actor, EmbeddedStore, ErasedRecord, Store, StoreExt};
use lintel_testkit::{MQTT_PASSWORD, MQTT_USER, Message, Mosquitto, Subscriber};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

pub struct Fixture {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
    pub tenant: String,
    pub system: String,
    pub org: String,
    pub building: String,
    pub level: String,
    pub driver: String,
    /// `Misbehave_1`, running.
    pub live: String,
    /// `Misbehave_2`: write its state with [`Fixture::writer`].
    pub quiet: String,
    pub other_tenant: String,
    pub other_system: String,
    pub other_quiet: String,
    _dir: tempfile::TempDir,
}

pub struct Opener(pub Keyring);

impl PasswordOpener for Opener {
    fn open(&self, b: &Broker) -> Result<Zeroizing<String>, String> {
        self.0
            .open_broker_password(b)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no password".to_string())
    }
}

async fn seed(
    store: &Arc<dyn Store>,
    engine: &Engine,
    name: &str,
    zones: Vec<Zone>,
) -> (String, String, String, String, String) {
    let tenant = store
        .create(
            &Actor::system(),
            Tenant {
                id: new_id(IdKind::Tenant),
                name: name.into(),
                domain: format!("{}.example", name.to_lowercase()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (hash, info) = engine
        .install_component(
            &tenant.id,
            lintel_bundled_drivers::fixtures::MISBEHAVE
                .component
                .to_vec(),
        )
        .await
        .unwrap();
    let driver = store
        .create(
            &Actor::system(),
            info.to_record(&tenant.id, hash, DriverRole::Logic),
        )
        .await
        .unwrap();
    let system = new_id(IdKind::System);
    let mut records: Vec<Box<dyn ErasedRecord>> = Vec::new();
    let mut zone_ids = Vec::new();
    for mut z in zones {
        z.tenant_id = tenant.id.clone();
        zone_ids.push(z.id.clone());
        records.push(Box::new(z));
    }
    let mut modules = Vec::new();
    for running in [true, false] {
        let m = Module {
            id: new_id(IdKind::Module),
            tenant_id: tenant.id.clone(),
            driver_id: driver.id.clone(),
            control_system_id: Some(system.clone()),
            running,
            ..Default::default()
        };
        modules.push(m.id.clone());
        records.push(Box::new(m));
    }
    records.push(Box::new(ControlSystem {
        id: system.clone(),
        tenant_id: tenant.id.clone(),
        name: format!("{name} room"),
        zones: zone_ids,
        modules: modules.clone(),
        ..Default::default()
    }));
    store.create_all(&Actor::system(), records).await.unwrap();
    (
        tenant.id,
        system,
        driver.id,
        modules[0].clone(),
        modules[1].clone(),
    )
}

fn zone(name: &str, tag: &str) -> Zone {
    Zone {
        id: new_id(IdKind::Zone),
        name: name.into(),
        tags: vec![tag.into()],
        ..Default::default()
    }
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line()).unwrap());
        let mut cfg = EngineConfig::new(dir.path().to_path_buf());
        cfg.workers = 1;
        cfg.exec_timeout = Duration::from_secs(2);
        let engine = Arc::new(Engine::new(cfg, store.clone()).unwrap());
        let (org, building, level) = (
            zone("Acme", "org"),
            zone("HQ", "building"),
            zone("Level 3", "level"),
        );
        let ids = (org.id.clone(), building.id.clone(), level.id.clone());
        let (tenant, system, driver, live, quiet) =
            seed(&store, &engine, "Alpha", vec![org, building, level]).await;
        let (other_tenant, other_system, _, _, other_quiet) =
            seed(&store, &engine, "Beta", vec![zone("Beta org", "org")]).await;
        engine.start_all().await.unwrap();
        Fixture {
            engine,
            store,
            keyring,
            tenant,
            system,
            org: ids.0,
            building: ids.1,
            level: ids.2,
            driver,
            live,
            quiet,
            other_tenant,
            other_system,
            other_quiet,
            _dir: dir,
        }
    }

    pub fn writer(&self) -> ModuleStatus {
        self.engine.status_bus().module(&self.quiet)
    }

    /// The state topic of `Misbehave_<index>`'s `key` under the default prefix.
    pub fn topic(&self, index: u32, key: &str) -> String {
        format!(
            "placeos/{}/state/_/{}/{}/_/{}/{}/Misbehave/{index}/{key}",
            self.org, self.building, self.level, self.system, self.driver
        )
    }

    /// A broker record for tenant A pointing at `m`, with the test password sealed.
    pub async fn add_broker(&self, m: &Mosquitto, edit: impl FnOnce(&mut Broker)) -> Broker {
        let id = new_id(IdKind::Broker);
        let mut b = Broker {
            id: id.clone(),
            tenant_id: self.tenant.clone(),
            name: "Building broker".into(),
            host: "127.0.0.1".into(),
            port: Some(m.port()),
            username: Some(MQTT_USER.into()),
            password: Some(
                self.keyring
                    .seal_broker_password(&self.tenant, &id, MQTT_PASSWORD)
                    .unwrap(),
            ),
            ..Default::default()
        };
        edit(&mut b);
        self.store.create(&Actor::system(), b).await.unwrap()
    }

    pub fn publisher(&self, cfg: MqttConfig) -> Arc<Publisher> {
        Publisher::start(
            self.engine.clone(),
            self.store.clone(),
            Arc::new(Opener(self.keyring.clone())),
            cfg,
        )
    }
}

/// Messages until one on `topic` satisfies `pred` (panics after `secs`); returns every
/// message seen, that one last.
pub async fn until(
    sub: &mut Subscriber,
    secs: u64,
    mut pred: impl FnMut(&Message) -> bool,
) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = sub.next(left).await else {
            let topics: Vec<&str> = seen.iter().map(|m: &Message| m.topic.as_str()).collect();
            panic!("no matching message within {secs} s; saw {topics:?}");
        };
        let done = pred(&m);
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// A state message's `value` (`None` for an empty, clearing payload).
pub fn value(m: &Message) -> Option<Value> {
    if m.payload.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_slice(&m.payload).expect("payloads are JSON");
    assert!(v["time"].is_i64(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    Some(v["value"].clone())
}

/// Wait until `check` holds (panics after `secs`).
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
