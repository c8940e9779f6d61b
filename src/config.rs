//! Layered, typed configuration: built-in defaults < `lintel.toml` < `LINTEL_*` environment
//! variables (`__` separates sections: `LINTEL_HTTP__PORT=9000`). Secrets may also come from
//! files: `admin_password_file` / `LINTEL_ADMIN_PASSWORD_FILE`.
//!
//! Every value is checked at start; a bad one stops the process with an error naming its
//! key and where it came from. Unknown keys are errors too (a typo never silently
//! becomes a default).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Environment variables with the `LINTEL_` prefix that are not configuration keys.
/// (`LINTEL_COUCHBASE_*` and `LINTEL_TEST_*` configure the test suites, not Lintel.)
const NOT_CONFIG: &[&str] = &[
    "CONFIG",
    "COUCHBASE_URL",
    "COUCHBASE_USERNAME",
    "COUCHBASE_PASSWORD",
    "COUCHBASE_BUCKET",
    "COUCHBASE_CA_FILE",
    "WASM_TARGET_DIR",
    "TEST_BIN",
    "TEST_CRASH_BACKEND",
    "TEST_CRASH_DIR",
    "TEST_CRASH_SCOPE",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store, driver components and keys live.
    pub data_dir: PathBuf,
    pub http: Http,
    pub log: Log,
    pub engine: Engine,
    pub store: StoreConfig,
    pub auth: Auth,
    pub secrets: Secrets,
    pub bootstrap: Bootstrap,
    pub websocket: Websocket,
    pub mqtt: Mqtt,
    /// The first-run admin password (prefer `admin_password_file`).
    #[serde(skip_serializing)]
    pub admin_password: Option<Secret>,
    /// A file holding the first-run admin password.
    pub admin_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub address: IpAddr,
    /// 0 picks a free port (the chosen address is logged).
    pub port: u16,
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    /// The URL browsers reach Lintel by (`https://rooms.example.com`), for single-sign-on
    /// redirects; unset = taken from each request's Host.
    pub public_url: Option<String>,
    /// Browser origins (`https://app.example.com`) allowed to call the API from another
    /// site (CORS); empty = none, `["*"]` = any (credentials are headers, never cookies).
    pub cors_origins: Vec<String>,
}

/// The WebSocket endpoint (`/api/engine/v2/systems/control`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Websocket {
    /// Browser origins allowed to connect besides the server's own, `http.public_url` and
    /// `http.cors_origins`; `["*"]` = any.
    pub allowed_origins: Vec<String>,
    /// Largest frame a client may send (a bigger one closes the connection, 1009).
    pub max_frame_bytes: usize,
    /// Bindings one connection may hold.
    pub max_binds: usize,
    /// Requests read per second per connection, after a burst of `message_burst`
    /// (beyond, the server reads more slowly; nothing is dropped).
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Execs one connection may have running at once.
    pub max_inflight_execs: usize,
    /// Frames queued for a client before its values coalesce to the latest per binding.
    pub outbound_frames: usize,
    /// Bytes queued for a client before values coalesce; twice this closes it (1008).
    pub outbound_bytes: usize,
    /// A client whose queue stays full this long is closed (1008).
    pub slow_client_secs: u64,
    /// How often the server pings each client.
    pub ping_interval_secs: u64,
    /// A client that sends nothing (not even a pong) this long is closed.
    pub idle_timeout_secs: u64,
}

impl Websocket {
    /// The API's WebSocket settings, with the other origins browsers may come from.
    pub fn api_config(&self, http: &Http) -> lintel_api::ws::WsConfig {
        let mut allowed_origins = self.allowed_origins.clone();
        allowed_origins.extend(http.cors_origins.iter().cloned());
        lintel_api::ws::WsConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_binds: self.max_binds,
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            max_inflight_execs: self.max_inflight_execs,
            outbound_frames: self.outbound_frames,
            outbound_bytes: self.outbound_bytes,
            slow_client_timeout: std::time::Duration::from_secs(self.slow_client_secs),
            ping_interval: std::time::Duration::from_secs(self.ping_interval_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            shutdown_grace: std::time::Duration::from_secs(http.shutdown_timeout_secs),
            allowed_origins,
        }
    }
}

/// Publishing to MQTT brokers. The brokers themselves are records (`/api/engine/v2/brokers`,
/// each tenant its own, passwords sealed); these are the process-wide switch and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// Publish to the configured brokers (`false`: none is connected).
    pub enabled: bool,
    /// Topics one broker's queue holds while it is slow or unreachable (latest value per
    /// topic; every new session re-publishes the current state anyway).
    pub buffer_topics: usize,
    /// Bytes one broker's queue holds.
    pub buffer_bytes: usize,
    /// Status values larger than this (as JSON) are not published.
    pub max_payload_bytes: usize,
    /// Inbound command messages larger than this are refused.
    pub command_max_bytes: usize,
    /// Commands waiting per broker before more are dropped.
    pub command_queue: usize,
    /// Commands running at once per broker before more are answered `busy`.
    pub command_inflight: usize,
}

impl Mqtt {
    pub fn publisher_config(&self) -> lintel_mqtt::MqttConfig {
        lintel_mqtt::MqttConfig {
            buffer_topics: self.buffer_topics,
            buffer_bytes: self.buffer_bytes,
            max_payload_bytes: self.max_payload_bytes,
            command_max_bytes: self.command_max_bytes,
            command_queue: self.command_queue,
            command_inflight: self.command_inflight,
            ..lintel_mqtt::MqttConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `info,lintel_engine=debug`, …
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    pub exec_timeout_ms: u64,
    pub module_memory_mb: usize,
    pub event_budget_ms: u64,
    /// Threads that run module actors (0: one per CPU core).
    pub workers: usize,
    /// Module instances the pooling allocator reserves room for (0: allocate on demand).
    pub max_modules: u32,
    /// Status changes one module may publish per second (more are coalesced).
    pub status_per_second: u32,
    /// Log lines one module may write per second (more are counted, then dropped).
    pub logs_per_second: u32,
    /// Commands waiting in one module's queue.
    pub queue_depth: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// redb in `data_dir` (the default).
    Embedded,
    /// A Couchbase cluster (`[store.couchbase]`).
    Couchbase,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Soft-deleted records can be restored for this many days, then they are purged.
    pub retention_days: u32,
    /// How often expired tombstones are purged.
    pub purge_interval_secs: u64,
    pub couchbase: Couchbase,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Couchbase {
    /// `couchbases://host1,host2` (TLS).
    pub url: String,
    pub username: String,
    /// Prefer `password_file`.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub bucket: String,
    pub scope: String,
    /// PEM file of the CA that signed the cluster's certificates.
    pub ca_file: Option<PathBuf>,
    /// Upper bound on every call to the cluster.
    pub timeout_ms: u64,
    /// Retries of transient failures, with exponential backoff.
    pub retries: usize,
    /// Create the scope, collections and indexes at start if missing.
    pub create_layout: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub token_ttl_secs: u64,
    /// How long a sign-in session lasts (refresh tokens stop working after it).
    pub session_ttl_secs: u64,
    /// A tenant's token-signing key is replaced when older than this.
    pub signing_key_max_age_days: u64,
    /// scrypt hashes computed at once (each takes ~128 MiB).
    pub hash_concurrency: usize,
    /// Sign-in attempts per minute per account, and per client address.
    pub login_per_account_per_minute: u32,
    pub login_per_client_per_minute: u32,
}

/// The master keyring that seals secrets at rest (`lintel keys generate`). Required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// The keyring text itself (prefer `master_key_file`, e.g. a mounted Kubernetes Secret).
    #[serde(skip_serializing)]
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    pub tenant_name: String,
    /// The tenant's domain: JWT `aud`, and how browsers reach this server.
    pub domain: String,
    pub admin_email: String,
    /// Create the demo building (four rooms with simulated devices) on first run, and run
    /// its simulators.
    pub demo: bool,
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);
impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("lintel-data"),
            http: Http {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 8080,
                max_body_bytes: 1024 * 1024,
                workers: 0,
                shutdown_timeout_secs: 10,
                public_url: None,
                cors_origins: Vec::new(),
            },
            log: Log {
                format: LogFormat::Human,
                level: "info".into(),
            },
            engine: Engine {
                exec_timeout_ms: 5_000,
                module_memory_mb: 32,
                event_budget_ms: 100,
                workers: 0,
                max_modules: 0,
                status_per_second: 20_000,
                logs_per_second: 200,
                queue_depth: 64,
            },
            store: StoreConfig {
                backend: StoreBackend::Embedded,
                retention_days: 30,
                purge_interval_secs: 3600,
                couchbase: Couchbase {
                    url: String::new(),
                    username: String::new(),
                    password: None,
                    password_file: None,
                    bucket: "lintel".into(),
                    scope: "lintel".into(),
                    ca_file: None,
                    timeout_ms: 10_000,
                    retries: 3,
                    create_layout: false,
                },
            },
            auth: Auth {
                token_ttl_secs: 3600,
                session_ttl_secs: 30 * 86_400,
                signing_key_max_age_days: 90,
                hash_concurrency: 2,
                login_per_account_per_minute: 10,
                login_per_client_per_minute: 60,
            },
            secrets: Secrets {
                master_key: None,
                master_key_file: None,
            },
            websocket: {
                let d = lintel_api::ws::WsConfig::default();
                Websocket {
                    allowed_origins: Vec::new(),
                    max_frame_bytes: d.max_frame_bytes,
                    max_binds: d.max_binds,
                    messages_per_second: d.messages_per_second,
                    message_burst: d.message_burst,
                    max_inflight_execs: d.max_inflight_execs,
                    outbound_frames: d.outbound_frames,
                    outbound_bytes: d.outbound_bytes,
                    slow_client_secs: d.slow_client_timeout.as_secs(),
                    ping_interval_secs: d.ping_interval.as_secs(),
                    idle_timeout_secs: d.idle_timeout.as_secs(),
                }
            },
            mqtt: {
                let d = lintel_mqtt::MqttConfig::default();
                Mqtt {
                    enabled: true,
                    buffer_topics: d.buffer_topics,
                    buffer_bytes: d.buffer_bytes,
                    max_payload_bytes: d.max_payload_bytes,
                    command_max_bytes: d.command_max_bytes,
                    command_queue: d.command_queue,
                    command_inflight: d.command_inflight,
                }
            },
            bootstrap: Bootstrap {
                tenant_name: "Demo".into(),
                domain: "localhost".into(),
                admin_email: "admin@lintel.local".into(),
                demo: true,
            },
            admin_password: None,
            admin_password_file: None,
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("invalid `{key}`: {message}"))
}

impl Config {
    /// The master keyring, from `secrets.master_key` or `secrets.master_key_file`. There is
    /// no default: without one Lintel does not start.
    pub fn keyring(&self) -> anyhow::Result<lintel_auth::SecretKeyring> {
        use anyhow::Context as _;
        match (&self.secrets.master_key, &self.secrets.master_key_file) {
            (Some(k), _) => lintel_auth::SecretKeyring::parse(k.expose())
                .context("invalid `secrets.master_key`"),
            (None, Some(path)) => lintel_auth::SecretKeyring::load_file(path)
                .context("invalid `secrets.master_key_file`"),
            (None, None) => anyhow::bail!(
                "no master key: secrets at rest need one. Create it with `lintel keys generate --out <file>` \
                 and set `secrets.master_key_file` (LINTEL_SECRETS__MASTER_KEY_FILE) to that file"
            ),
        }
    }

    /// Load `file` (if it exists; an explicitly named file must exist) and the environment.
    pub fn load(file: &Path, file_required: bool) -> Result<Self, ConfigError> {
        Self::load_from(file, file_required, Env::prefixed("LINTEL_"))
    }

    fn load_from(file: &Path, file_required: bool, env: Env) -> Result<Self, ConfigError> {
        if file_required && !file.exists() {
            return Err(ConfigError::MissingFile(file.to_path_buf()));
        }
        let env = env
            .filter(|k| {
                !NOT_CONFIG
                    .iter()
                    .any(|n| k.as_str().eq_ignore_ascii_case(n))
            })
            .split("__");
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(env);
        let mut cfg: Config = figment.extract().map_err(describe)?;
        cfg.resolve_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file(
            "admin_password",
            &mut self.admin_password,
            &self.admin_password_file,
        )?;
        // The keyring file is read when the keyring is loaded (it is reloaded on rotation).
        let cb = &mut self.store.couchbase;
        read_secret_file(
            "store.couchbase.password",
            &mut cb.password,
            &cb.password_file,
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        for origin in &self.http.cors_origins {
            if !lintel_api::valid_cors_origin(origin) {
                return Err(invalid(
                    "http.cors_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], or `*`)"),
                ));
            }
        }
        let ws = &self.websocket;
        for origin in &ws.allowed_origins {
            if !lintel_api::valid_cors_origin(origin) {
                return Err(invalid(
                    "websocket.allowed_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], or `*`)"),
                ));
            }
        }
        let ranges: [(&str, u64, u64, u64); 10] = [
            (
                "websocket.max_frame_bytes",
                ws.max_frame_bytes as u64,
                1024,
                16 << 20,
            ),
            ("websocket.max_binds", ws.max_binds as u64, 1, 100_000),
            (
                "websocket.messages_per_second",
                ws.messages_per_second.into(),
                1,
                100_000,
            ),
            (
                "websocket.message_burst",
                ws.message_burst.into(),
                1,
                100_000,
            ),
            (
                "websocket.max_inflight_execs",
                ws.max_inflight_execs as u64,
                1,
                10_000,
            ),
            (
                "websocket.outbound_frames",
                ws.outbound_frames as u64,
                16,
                1_000_000,
            ),
            (
                "websocket.outbound_bytes",
                ws.outbound_bytes as u64,
                64 << 10,
                1 << 30,
            ),
            ("websocket.slow_client_secs", ws.slow_client_secs, 1, 3600),
            (
                "websocket.ping_interval_secs",
                ws.ping_interval_secs,
                1,
                3600,
            ),
            (
                "websocket.idle_timeout_secs",
                ws.idle_timeout_secs,
                2,
                86_400,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        let mq = &self.mqtt;
        let ranges: [(&str, u64, u64, u64); 6] = [
            (
                "mqtt.buffer_topics",
                mq.buffer_topics as u64,
                16,
                10_000_000,
            ),
            (
                "mqtt.buffer_bytes",
                mq.buffer_bytes as u64,
                64 << 10,
                16 << 30,
            ),
            (
                "mqtt.max_payload_bytes",
                mq.max_payload_bytes as u64,
                1024,
                64 << 20,
            ),
            (
                "mqtt.command_max_bytes",
                mq.command_max_bytes as u64,
                256,
                16 << 20,
            ),
            ("mqtt.command_queue", mq.command_queue as u64, 1, 100_000),
            (
                "mqtt.command_inflight",
                mq.command_inflight as u64,
                1,
                10_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        if ws.idle_timeout_secs <= ws.ping_interval_secs {
            return Err(invalid(
                "websocket.idle_timeout_secs",
                "must be longer than websocket.ping_interval_secs (a client answers pings)",
            ));
        }
        if self.http.shutdown_timeout_secs > 600 {
            return Err(invalid("http.shutdown_timeout_secs", "must be at most 600"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e))?;
        if !(100..=600_000).contains(&self.engine.exec_timeout_ms) {
            return Err(invalid(
                "engine.exec_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=4096).contains(&self.engine.module_memory_mb) {
            return Err(invalid(
                "engine.module_memory_mb",
                "must be between 1 and 4096",
            ));
        }
        if !(10..=60_000).contains(&self.engine.event_budget_ms) {
            return Err(invalid(
                "engine.event_budget_ms",
                "must be between 10 and 60000",
            ));
        }
        if self.engine.workers > 256 {
            return Err(invalid("engine.workers", "must be between 0 and 256"));
        }
        if self.engine.max_modules > 1_000_000 {
            return Err(invalid(
                "engine.max_modules",
                "must be between 0 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&self.engine.status_per_second) {
            return Err(invalid(
                "engine.status_per_second",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=100_000).contains(&self.engine.logs_per_second) {
            return Err(invalid(
                "engine.logs_per_second",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=10_000).contains(&self.engine.queue_depth) {
            return Err(invalid("engine.queue_depth", "must be between 1 and 10000"));
        }
        if !(60..=86_400).contains(&self.auth.token_ttl_secs) {
            return Err(invalid(
                "auth.token_ttl_secs",
                "must be between 60 and 86400",
            ));
        }
        let st = &self.store;
        if st.retention_days > 3650 {
            return Err(invalid("store.retention_days", "must be at most 3650"));
        }
        if !(60..=86_400).contains(&st.purge_interval_secs) {
            return Err(invalid(
                "store.purge_interval_secs",
                "must be between 60 and 86400",
            ));
        }
        let cb = &st.couchbase;
        if st.backend == StoreBackend::Couchbase {
            if !(cb.url.starts_with("couchbases://") || cb.url.starts_with("couchbase://")) {
                return Err(invalid(
                    "store.couchbase.url",
                    "must be couchbases://host[,host…] (or couchbase:// without TLS)",
                ));
            }
            if cb.username.is_empty() || cb.password.is_none() {
                return Err(invalid(
                    "store.couchbase.password",
                    "the Couchbase backend needs username and password (or password_file)",
                ));
            }
            if cb.ca_file.is_some() && !cb.url.starts_with("couchbases://") {
                return Err(invalid(
                    "store.couchbase.ca_file",
                    "a CA file needs a couchbases:// (TLS) url",
                ));
            }
        }
        if cb.bucket.is_empty() || cb.scope.is_empty() {
            return Err(invalid(
                "store.couchbase.bucket",
                "bucket and scope must not be empty",
            ));
        }
        if !(100..=600_000).contains(&cb.timeout_ms) {
            return Err(invalid(
                "store.couchbase.timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if cb.retries > 20 {
            return Err(invalid("store.couchbase.retries", "must be at most 20"));
        }
        let a = &self.auth;
        if !(3600..=365 * 86_400).contains(&a.session_ttl_secs) {
            return Err(invalid(
                "auth.session_ttl_secs",
                "must be between 3600 and 31536000",
            ));
        }
        if !(1..=3650).contains(&a.signing_key_max_age_days) {
            return Err(invalid(
                "auth.signing_key_max_age_days",
                "must be between 1 and 3650",
            ));
        }
        for (key, v) in [
            (
                "auth.login_per_account_per_minute",
                a.login_per_account_per_minute,
            ),
            (
                "auth.login_per_client_per_minute",
                a.login_per_client_per_minute,
            ),
        ] {
            if !(1..=100_000).contains(&v) {
                return Err(invalid(key, "must be between 1 and 100000"));
            }
        }
        if self.secrets.master_key.is_some() && self.secrets.master_key_file.is_some() {
            return Err(invalid(
                "secrets.master_key_file",
                "set either secrets.master_key or secrets.master_key_file, not both",
            ));
        }
        if let Some(u) = &self.http.public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(invalid("http.public_url", "must be an http(s):// URL"));
        }
        if !(1..=64).contains(&self.auth.hash_concurrency) {
            return Err(invalid("auth.hash_concurrency", "must be between 1 and 64"));
        }
        if self.bootstrap.tenant_name.trim().is_empty() {
            return Err(invalid("bootstrap.tenant_name", "must not be empty"));
        }
        if self.bootstrap.domain.trim().is_empty()
            || self.bootstrap.domain.contains(['/', ' ', ':'])
        {
            return Err(invalid(
                "bootstrap.domain",
                "must be a host name such as rooms.example.com",
            ));
        }
        if !self.bootstrap.admin_email.contains('@') {
            return Err(invalid("bootstrap.admin_email", "must be an email address"));
        }
        if let Some(p) = &self.admin_password
            && p.expose().chars().count() < 12
        {
            return Err(invalid("admin_password", "must be at least 12 characters"));
        }
        Ok(())
    }

    /// The Couchbase adapter's settings.
    pub fn couchbase(&self) -> lintel_store::CouchbaseConfig {
        let cb = &self.store.couchbase;
        lintel_store::CouchbaseConfig {
            url: cb.url.clone(),
            username: cb.username.clone(),
            password: cb
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
            bucket: cb.bucket.clone(),
            scope: cb.scope.clone(),
            ca_file: cb.ca_file.clone(),
            timeout: std::time::Duration::from_millis(cb.timeout_ms),
            retries: cb.retries,
            create_layout: cb.create_layout,
        }
    }

    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.http.address, self.http.port)
    }
}

/// Fill `secret` from `file` (trailing newline removed); both set is an error.
fn read_secret_file(
    key: &str,
    secret: &mut Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    let file_key = format!("{key}_file");
    if secret.is_some() {
        return Err(invalid(
            &file_key,
            format!("set either {key} or {file_key}, not both"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(&file_key, format!("{}: {e}", path.display())))?;
    *secret = Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()));
    Ok(())
}

/// Turn figment's errors into one message per problem, naming the key and its source.
fn describe(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            let source = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
                    _ if m.name.contains("environment") => {
                        let var: Vec<String> =
                            path.iter().map(|p| p.to_ascii_uppercase()).collect();
                        format!(" (from LINTEL_{})", var.join("__"))
                    }
                    _ => String::new(),
                },
                None => String::new(),
            };
            match &e.kind {
                figment::error::Kind::UnknownField(..) => format!("unknown key `{key}`{source}"),
                kind => format!("invalid `{key}`{source}: {kind}"),
            }
        })
        .collect();
    ConfigError::Invalid(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::result_large_err)] // figment::Jail's signature, tests only
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lintel.toml");
        std::fs::write(&file, toml).unwrap();
        let mut out = None;
        // Jail serialises tests that touch the process environment.
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(Config::load_from(&file, true, Env::prefixed("LINTEL_")));
            Ok(())
        });
        out.expect("the jail ran the closure")
    }

    #[test]
    fn defaults_then_file_then_env() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen().to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("lintel-data"));
        let c = load("[http]\nport = 9000\n", &[]).unwrap();
        assert_eq!(c.http.port, 9000);
        let c = load(
            "[http]\nport = 9000\n",
            &[("LINTEL_HTTP__PORT", "9100"), ("LINTEL_CONFIG", "x")],
        )
        .unwrap();
        assert_eq!(c.http.port, 9100);
    }

    #[test]
    fn bad_values_name_the_key_and_source() {
        let e = load("", &[("LINTEL_HTTP__PORT", "eighty")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`http.port`") && e.contains("LINTEL_HTTP__PORT"),
            "{e}"
        );
        let e = load("[http]\nport = 70000\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("`http.port`") && e.contains("lintel.toml"),
            "{e}"
        );
        let e = load("[log]\nformat = \"xml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`log.format`"), "{e}");
        let e = load("[engine]\nexec_timeout_ms = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`engine.exec_timeout_ms`"), "{e}");
        let e = load("[log]\nlevel = \"info,[[\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`log.level`"), "{e}");
    }

    #[test]
    fn websocket_settings_are_checked_and_reach_the_api() {
        for (toml, key) in [
            (
                "[websocket]\nmax_frame_bytes = 10\n",
                "websocket.max_frame_bytes",
            ),
            ("[websocket]\nmax_binds = 0\n", "websocket.max_binds"),
            (
                "[websocket]\nallowed_origins = [\"evil\"]\n",
                "websocket.allowed_origins",
            ),
            (
                "[websocket]\nping_interval_secs = 30\nidle_timeout_secs = 30\n",
                "websocket.idle_timeout_secs",
            ),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        }
        let c = load(
            "[http]\ncors_origins = [\"https://app.example.com\"]\n[websocket]\nallowed_origins = [\"https://panel.example.com\"]\nmax_binds = 50\n",
            &[("LINTEL_WEBSOCKET__SLOW_CLIENT_SECS", "5")],
        )
        .unwrap();
        let ws = c.websocket.api_config(&c.http);
        assert_eq!(ws.max_binds, 50);
        assert_eq!(ws.slow_client_timeout, std::time::Duration::from_secs(5));
        assert_eq!(
            ws.allowed_origins,
            ["https://panel.example.com", "https://app.example.com"]
        );
    }

    #[test]
    fn mqtt_settings_are_checked_and_reach_the_publisher() {
        for (toml, key) in [
            ("[mqtt]\nbuffer_topics = 0\n", "mqtt.buffer_topics"),
            ("[mqtt]\nbuffer_bytes = 10\n", "mqtt.buffer_bytes"),
            ("[mqtt]\ncommand_inflight = 0\n", "mqtt.command_inflight"),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        }
        let c = load(
            "[mqtt]\nbuffer_topics = 500\n",
            &[("LINTEL_MQTT__ENABLED", "false")],
        )
        .unwrap();
        assert!(!c.mqtt.enabled);
        let p = c.mqtt.publisher_config();
        assert_eq!(p.buffer_topics, 500);
        assert_eq!(
            p.buffer_bytes,
            lintel_mqtt::MqttConfig::default().buffer_bytes
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load("[http]\nprot = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `http.prot` "), "{e}");
        let e = load("", &[("LINTEL_DATADIR", "/x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `datadir` (from LINTEL_DATADIR)"),
            "{e}"
        );
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "correct-horse-battery\n").unwrap();
        let c = load("", &[("LINTEL_ADMIN_PASSWORD_FILE", pw.to_str().unwrap())]).unwrap();
        assert_eq!(
            c.admin_password.as_ref().unwrap().expose(),
            "correct-horse-battery"
        );
        assert!(!format!("{c:?}").contains("correct-horse"));
        let e = load("", &[("LINTEL_ADMIN_PASSWORD_FILE", "/nonexistent/pw")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`admin_password_file`"), "{e}");
        let e = load("", &[("LINTEL_ADMIN_PASSWORD", "short")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`admin_password`") && !e.contains("short"),
            "{e}"
        );
    }

    #[test]
    fn the_couchbase_backend_needs_its_settings() {
        let e = load("[store]\nbackend = \"couchbase\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`store.couchbase.url`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("cbpw");
        std::fs::write(&pw, "cb-canary-password\n").unwrap();
        let c = load(
            "[store]\nbackend = \"couchbase\"\n[store.couchbase]\nurl = \"couchbases://cb.local\"\nusername = \"lintel\"\n",
            &[("LINTEL_STORE__COUCHBASE__PASSWORD_FILE", pw.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(c.couchbase().password, "cb-canary-password");
        assert!(!format!("{c:?} {:?}", c.couchbase()).contains("canary"));
        let e = load("[store]\nretention_days = 99999\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`store.retention_days`"), "{e}");
        // The test suites' variables are not configuration keys.
        load("", &[("LINTEL_COUCHBASE_USERNAME", "x")]).unwrap();
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let e = Config::load(Path::new("/nonexistent/lintel.toml"), true).unwrap_err();
        assert!(matches!(e, ConfigError::MissingFile(_)));
    }
}
