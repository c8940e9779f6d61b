//! Lintel's API in-process, as `lintel serve` sets it up (embedded store in a temp dir,
//! engine, `lintel_api::serve`), seeded for the WebSocket tests and benches.
//!
//! Tenant A has a system whose `Misbehave_1` runs the misbehaving fixture driver (answers
//! later, panics, floods status and logs on request) and whose `Misbehave_2` is configured
//! but not running: tests write its state straight into the status bus, as a driver
//! would, to make as many changes as they like. Users: an admin and a staff member of A,
//! and an admin of tenant B (with a system of its own).
#![allow(dead_code)]

use lintel_api::ws::{Websockets, WsConfig};
use lintel_api::{AppState, HttpConfig};
use lintel_auth::{
    ApiKeys, Keyring, LoginLimiter, LoginLimits, NewApiKey, OidcClient, PasswordHasher,
    SecretKeyring, Sessions, TokenService,
};
use lintel_engine::{Engine, EngineConfig, ModuleStatus};
use lintel_model::{ControlSystem, DriverRole, IdKind, Module, Role, Tenant, User, new_id};
use lintel_store::{Actor, EmbeddedStore, ErasedRecord, Store, StoreExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Fixture {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub tenant: Tenant,
    pub system: String,
    /// `Misbehave_1`, running.
    pub live: String,
    /// `Misbehave_2`, not running: write its state with [`Fixture::writer`].
    pub quiet: String,
    pub admin: User,
    pub admin_jwt: String,
    pub staff: User,
    pub staff_jwt: String,
    pub staff_key: String,
    /// Tenant B's admin, and B's system.
    pub other_jwt: String,
    pub other_system: String,
    pub websockets: Websockets,
    pub server: actix_web::dev::ServerHandle,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/api/engine/v2/systems/control{query}", self.addr)
    }

    /// Write `Misbehave_2`'s state as its driver would.
    pub fn writer(&self) -> ModuleStatus {
        self.engine.status_bus().module(&self.quiet)
    }
}

async fn tenant(store: &Arc<dyn Store>, name: &str, domain: &str) -> Result<Tenant, BoxError> {
    Ok(store
        .create(
            &Actor::system(),
            Tenant {
                id: new_id(IdKind::Tenant),
                name: name.into(),
                domain: domain.into(),
                ..Default::default()
            },
        )
        .await?)
}

fn user(tenant: &Tenant, name: &str, role: Role) -> User {
    User {
        id: new_id(IdKind::User),
        tenant_id: tenant.id.clone(),
        name: name.into(),
        email: format!("{}@{}", name.to_lowercase(), tenant.domain),
        roles: vec![role],
        ..Default::default()
    }
}

/// A system of `names.len()` misbehave modules (the first running).
async fn system(
    store: &Arc<dyn Store>,
    engine: &Engine,
    tenant: &Tenant,
    extra: Vec<Box<dyn ErasedRecord>>,
) -> Result<(String, Vec<String>), BoxError> {
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
    let system_id = new_id(IdKind::System);
    let mut records = extra;
    let mut modules = Vec::new();
    for running in [true, false] {
        let m = Module {
            id: new_id(IdKind::Module),
            tenant_id: tenant.id.clone(),
            driver_id: driver.id.clone(),
            control_system_id: Some(system_id.clone()),
            running,
            ..Default::default()
        };
        modules.push(m.id.clone());
        records.push(Box::new(m));
    }
    records.push(Box::new(ControlSystem {
        id: system_id.clone(),
        tenant_id: tenant.id.clone(),
        name: format!("{} room", tenant.name),
        modules: modules.clone(),
        ..Default::default()
    }));
    store.create_all(&Actor::system(), records).await?;
    Ok((system_id, modules))
}

/// Start Lintel's API with these WebSocket settings; the engine's exec timeout is 2 s.
pub async fn start(ws: WsConfig) -> Result<Fixture, BoxError> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
    let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line())?);
    let mut cfg = EngineConfig::new(dir.path().to_path_buf());
    cfg.workers = 1;
    cfg.exec_timeout = Duration::from_secs(2);
    let engine = Arc::new(Engine::new(cfg, store.clone())?);

    let a = tenant(&store, "Alpha", "alpha.example").await?;
    let b = tenant(&store, "Beta", "beta.example").await?;
    let admin = user(&a, "Admin", Role::Admin);
    let staff = user(&a, "Staff", Role::Staff);
    let other = user(&b, "Other", Role::Admin);
    let (system_id, modules) = system(
        &store,
        &engine,
        &a,
        vec![Box::new(admin.clone()), Box::new(staff.clone())],
    )
    .await?;
    let (other_system, _) = system(&store, &engine, &b, vec![Box::new(other.clone())]).await?;

    let tokens = Arc::new(TokenService::new(
        store.clone(),
        keyring.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(90 * 86_400),
    ));
    let admin_jwt = tokens.issue(&a, &admin, None).await?;
    let staff_jwt = tokens.issue(&a, &staff, None).await?;
    let other_jwt = tokens.issue(&b, &other, None).await?;
    let api_keys = Arc::new(ApiKeys::new(store.clone()));
    let (_, staff_key) = api_keys
        .create(
            &Actor::system(),
            &a.id,
            NewApiKey {
                name: "panel".into(),
                role: Role::Staff,
                ..Default::default()
            },
        )
        .await?;
    let state = AppState {
        engine: engine.clone(),
        store: store.clone(),
        tokens,
        sessions: Arc::new(Sessions::new(store.clone(), Duration::from_secs(86_400))),
        api_keys,
        oidc: Arc::new(OidcClient::new(keyring.clone())?),
        keyring,
        passwords: PasswordHasher::new(1),
        limiter: Arc::new(LoginLimiter::new(LoginLimits::default())),
        public_url: None,
        metrics: None,
        version: "test",
        users: AppState::users_cache(&store),
        mqtt: None,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let http = HttpConfig {
        max_body_bytes: 1 << 20,
        workers: 1,
        shutdown_timeout: Duration::from_secs(5),
        cors_origins: Vec::new(),
        websocket: ws,
    };
    let (server, websockets) = lintel_api::serve(listener, &http, state)?;
    let handle = server.handle();
    tokio::spawn(server);
    engine.start_all().await?;
    engine.settle(&a.id, &modules[0]).await?;
    Ok(Fixture {
        addr,
        engine,
        store,
        tenant: a,
        system: system_id,
        live: modules[0].clone(),
        quiet: modules[1].clone(),
        admin,
        admin_jwt,
        staff,
        staff_jwt,
        staff_key,
        other_jwt,
        other_system,
        websockets,
        server: handle,
        _dir: dir,
    })
}

impl Fixture {
    /// Add a demo display at `uri` to the system (after the two fixture modules, so it is
    /// `Display_1`) and start it; answers its module id.
    pub async fn add_display(&self, uri: &str) -> Result<String, BoxError> {
        let actor = Actor::system();
        let (hash, info) = self
            .engine
            .install_component(
                &self.tenant.id,
                lintel_bundled_drivers::DEMO_DISPLAY.component.to_vec(),
            )
            .await?;
        let driver = self
            .store
            .create(
                &actor,
                info.to_record(&self.tenant.id, hash, DriverRole::Device),
            )
            .await?;
        let module = self
            .store
            .create(
                &actor,
                Module {
                    id: new_id(IdKind::Module),
                    tenant_id: self.tenant.id.clone(),
                    driver_id: driver.id.clone(),
                    control_system_id: Some(self.system.clone()),
                    uri: Some(uri.to_owned()),
                    running: true,
                    ..Default::default()
                },
            )
            .await?;
        let mut system: ControlSystem = self
            .store
            .get(&self.tenant.id, &self.system)
            .await?
            .ok_or("system gone")?;
        system.modules.push(module.id.clone());
        self.store.update(&actor, system).await?;
        self.engine
            .start_module(&self.tenant.id, &module.id)
            .await?;
        Ok(module.id)
    }
}
