//! `lintel serve`: API + engine + embedded store in one process.

use crate::config::{Config, LogFormat};
use crate::{bootstrap, demo};
use anyhow::Context;
use lintel_api::{AppState, HttpConfig};
use lintel_auth::{
    ApiKeys, Keyring, LoginLimiter, LoginLimits, OidcClient, PasswordHasher, Sessions, TokenService,
};
use lintel_engine::{Engine, EngineConfig, OutputLimits, SandboxLimits};
use lintel_store::Store;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match cfg.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Human => builder.init(),
    }
}

/// Create the data directory and prove it is writable, before anything else is written.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("data_dir {}: cannot create it", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("data_dir {}: not writable", dir.display()))?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("data_dir {}: cannot remove a file in it", dir.display()))?;
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Purge soft-deleted records older than the retention window, now and every `every`.
async fn purge_tombstones(store: Arc<dyn Store>, retention_days: u32, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let cutoff = lintel_model::now_unix() - i64::from(retention_days) * 86_400;
        match lintel_store::purge_expired(store.as_ref(), cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                records = n,
                retention_days,
                "purged deleted records past retention"
            ),
            Err(e) => tracing::error!(error = %e, "purging deleted records failed; will retry"),
        }
    }
}

pub async fn serve(
    cfg: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // Bind first: a taken port fails before the data directory is touched.
    let listener = std::net::TcpListener::bind(cfg.listen())
        .with_context(|| format!("cannot listen on {}", cfg.listen()))?;
    let addr = listener.local_addr()?;
    // No master key, no start (checked before anything is written).
    let keyring = Keyring::new(cfg.keyring()?);
    prepare_data_dir(&cfg.data_dir)?;
    let store = crate::store::open(&cfg)
        .await
        .context("cannot open the store")?;
    tracing::info!(backend = store.backend_name(), "store open");
    let purger = tokio::spawn(purge_tombstones(
        store.clone(),
        cfg.store.retention_days,
        Duration::from_secs(cfg.store.purge_interval_secs),
    ));
    let tokens = Arc::new(TokenService::new(
        store.clone(),
        keyring.clone(),
        Duration::from_secs(cfg.auth.token_ttl_secs),
        Duration::from_secs(cfg.auth.signing_key_max_age_days * 86_400),
    ));
    let limiter = Arc::new(LoginLimiter::new(LoginLimits {
        per_account_per_minute: cfg.auth.login_per_account_per_minute,
        per_client_per_minute: cfg.auth.login_per_client_per_minute,
        ..LoginLimits::default()
    }));
    let sessions = Arc::new(Sessions::new(
        store.clone(),
        Duration::from_secs(cfg.auth.session_ttl_secs),
    ));
    let housekeeping = tokio::spawn(auth_housekeeping(
        tokens.clone(),
        sessions.clone(),
        limiter.clone(),
    ));
    let admin = crate::admin::listen(
        &cfg.data_dir,
        store.clone(),
        crate::admin::KeyAdmin {
            config: Arc::new(cfg.clone()),
            keyring: keyring.clone(),
            tokens: tokens.clone(),
        },
    )
    .context("cannot open the admin socket")?;
    let mut engine_cfg = EngineConfig::new(cfg.data_dir.clone());
    engine_cfg.secrets = Some(Arc::new(KeyringSealer(keyring.clone())));
    engine_cfg.exec_timeout = Duration::from_millis(cfg.engine.exec_timeout_ms);
    engine_cfg.limits = SandboxLimits {
        memory_bytes: cfg.engine.module_memory_mb * 1024 * 1024,
        event_budget: Duration::from_millis(cfg.engine.event_budget_ms),
        max_modules: cfg.engine.max_modules,
        ..SandboxLimits::default()
    };
    engine_cfg.workers = cfg.engine.workers;
    engine_cfg.output = OutputLimits {
        status_per_second: cfg.engine.status_per_second,
        logs_per_second: cfg.engine.logs_per_second,
        queue_depth: cfg.engine.queue_depth,
    };
    let engine =
        Arc::new(Engine::new(engine_cfg, store.clone()).context("cannot start the engine")?);
    crate::admin::attach_engine(&engine);
    if cfg.bootstrap.demo {
        demo::start_simulators(&engine)
            .await
            .context("cannot start the demo building's simulators")?;
    }
    let passwords = PasswordHasher::new(cfg.auth.hash_concurrency);

    if let Some(first) = bootstrap::first_run(&cfg, store.as_ref(), &engine, &keyring, &passwords)
        .await
        .context("first-run set-up failed; nothing was written")?
    {
        tracing::info!(tenant = %first.tenant.id, domain = %first.tenant.domain, admin = %first.admin_email, demo = cfg.bootstrap.demo, "first run: created the tenant and admin account");
        if let Some(password) = first.generated_password {
            // Shown once, on the terminal only (not in the log stream); it is stored hashed.
            eprintln!(
                "\n  Lintel first run: an admin account was created.\n    user:     {}\n    password: {password}\n  This password is shown once. Sign in with it and change it.\n",
                first.admin_email
            );
        }
    }

    let http = HttpConfig {
        max_body_bytes: cfg.http.max_body_bytes,
        workers: cfg.http.workers,
        shutdown_timeout: Duration::from_secs(cfg.http.shutdown_timeout_secs),
        cors_origins: cfg.http.cors_origins.clone(),
        websocket: cfg.websocket.api_config(&cfg.http),
    };
    let mqtt = cfg.mqtt.enabled.then(|| {
        lintel_mqtt::Publisher::start(
            engine.clone(),
            store.clone(),
            Arc::new(BrokerPasswords(keyring.clone())),
            cfg.mqtt.publisher_config(),
        )
    });
    let state = AppState {
        engine: engine.clone(),
        store: store.clone(),
        tokens,
        sessions,
        api_keys: Arc::new(ApiKeys::new(store.clone())),
        oidc: Arc::new(OidcClient::new(keyring.clone()).context("cannot set up single sign-on")?),
        keyring,
        passwords,
        limiter,
        public_url: cfg.http.public_url.clone(),
        metrics,
        version: env!("CARGO_PKG_VERSION"),
        users: AppState::users_cache(&store),
        mqtt: mqtt.clone(),
    };
    let (server, websockets) =
        lintel_api::serve(listener, &http, state).context("cannot start the HTTP server")?;
    let handle = server.handle();
    let mut server_task = tokio::spawn(server);
    tracing::info!(address = %addr, url = %format!("http://{addr}"), "listening");

    let follow = tokio_util::sync::CancellationToken::new();
    let starter = {
        let (engine, follow) = (engine.clone(), follow.clone());
        // Subscribed before the modules are read, so no change in between is missed.
        let feed = store.changes();
        tokio::spawn(async move {
            match engine.start_all().await {
                Ok(n) => tracing::info!(
                    modules = n,
                    ms = started.elapsed().as_millis() as u64,
                    "ready"
                ),
                Err(e) => tracing::error!(error = %e, "modules could not be started"),
            }
            engine.follow_config(feed, follow).await;
        })
    };

    let reason = tokio::select! {
        r = shutdown_signal() => r,
        r = &mut server_task => {
            engine.shutdown().await;
            return match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                Ok(Err(e)) => Err(e).context("the HTTP server failed"),
                Err(e) => Err(e).context("the HTTP server task failed"),
            };
        }
    };
    tracing::info!(
        signal = reason,
        "shutting down: finishing in-flight requests"
    );
    // WebSocket clients first: the replies of their running execs, then a close frame
    // saying why. Then the HTTP requests in flight.
    websockets.close(http.shutdown_timeout).await;
    handle.stop(true).await;
    let _ = server_task.await;
    // Brokers hear `offline` (retained) before the engine stops.
    if let Some(p) = &mqtt {
        p.shutdown().await;
    }
    follow.cancel();
    starter.abort();
    purger.abort();
    housekeeping.abort();
    admin.abort();
    let _ = std::fs::remove_file(crate::admin::socket_path(&cfg.data_dir));
    engine.shutdown().await;
    drop(engine);
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// The engine's sealing and opening, with the master keyring.
struct KeyringSealer(Keyring);

impl lintel_engine::Sealer for KeyringSealer {
    fn open_settings(&self, s: &lintel_model::Settings) -> Result<serde_json::Value, String> {
        let opened = self.0.current().open_settings(s);
        opened.map_err(|e| e.to_string())
    }

    fn seal_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        token: &str,
    ) -> Result<lintel_model::SealedValue, String> {
        let sealed = self
            .0
            .current()
            .seal_refresh_token(tenant_id, record_id, token);
        sealed.map_err(|e| e.to_string())
    }

    fn open_refresh_token(
        &self,
        tenant_id: &str,
        record_id: &str,
        sealed: &lintel_model::SealedValue,
    ) -> Result<String, String> {
        let opened = self
            .0
            .current()
            .open_refresh_token(tenant_id, record_id, sealed);
        opened.map_err(|e| e.to_string())
    }
}

/// Opens MQTT brokers' sealed passwords with the master keyring.
struct BrokerPasswords(Keyring);

impl lintel_mqtt::PasswordOpener for BrokerPasswords {
    fn open(&self, b: &lintel_model::Broker) -> Result<zeroize::Zeroizing<String>, String> {
        self.0
            .open_broker_password(b)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the broker has no password".to_string())
    }
}

/// Every few minutes: forget idle rate-limit entries; delete long-retired signing keys
/// and long-ended sessions.
async fn auth_housekeeping(
    tokens: Arc<TokenService>,
    sessions: Arc<Sessions>,
    limiter: Arc<LoginLimiter>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tick.tick().await;
        limiter.housekeeping();
        if let Err(e) = tokens.remove_retired().await {
            tracing::warn!(error = %e, "could not remove retired signing keys");
        }
        if let Err(e) = sessions.remove_ended().await {
            tracing::warn!(error = %e, "could not remove ended sessions");
        }
    }
}
