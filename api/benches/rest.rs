//! REST read throughput (row P6 of `shared/design/performance.md`):
//! `GET /api/engine/v2/systems/:id/Display_1/power` over keep-alive HTTP/1.1, against a
//! trivial actix-web handler measured in the same run with the same load generator.
//!
//! Lintel is set up in-process as `lintel serve` does (embedded store in a temp dir,
//! engine, `lintel_api::serve` with the real middleware, extractor and route), with one
//! tenant and a system whose `Display_1` is a DEMO_DISPLAY module on an in-process
//! display simulator. Requests authenticate with an API key (`X-API-Key`, role staff, no
//! user: what a BI tool or integration would hold); one extra case uses a bearer JWT from
//! the token service (what the PlaceOS front ends send). The baseline is an actix-web 4
//! `HttpServer` with one route on the same path pattern answering `true` as JSON, sent
//! the same request bytes (its `X-API-Key` header is ignored).
//!
//! Fairness on a 2-core machine: both servers run with ONE actix worker, and the load
//! generator is one thread (a current-thread tokio runtime of its own) driving N
//! keep-alive connections, each doing sequential GETs (no pipelining), 0.5 s warm-up then
//! 3 s counted. So server and client get a core each; a faster server cannot use the
//! client's core, and the client is cheap per request (request bytes prebuilt, responses
//! parsed by Content-Length). Each line also prints how busy the client thread and the
//! rest of the process (the server) were, in cores: a client near 1.0 while the server is
//! below 1.0 means the figure is client-bound, not a server limit. Any non-200 response
//! stops the bench.
//!
//! Not included, as in a plain library set-up: a tracing subscriber (`lintel serve` logs
//! one access line per request to stdout) and a metrics recorder.
//!
//! Cases: 8, 64 and 256 connections with a 1-module system (the P6 row is 64); then, at
//! 64 connections, a system of 100 modules (`Display_1` first) and the bearer JWT.
//!
//! Run: `cargo bench -p lintel-api --bench rest` (`-- profile [api-key|jwt|large] [conns]`
//! runs only that Lintel case, repeatedly, for a profiler to attach to).

use actix_web::{App, HttpResponse, HttpServer, web};
use lintel_api::{AppState, HttpConfig};
use lintel_auth::{
    ApiKeys, Keyring, LoginLimiter, LoginLimits, NewApiKey, OidcClient, PasswordHasher,
    SecretKeyring, Sessions, TokenService,
};
use lintel_engine::{Engine, EngineConfig};
use lintel_model::{ControlSystem, DriverRole, IdKind, Module, Role, Tenant, User, new_id};
use lintel_simulators::DisplaySimulator;
use lintel_store::{Actor, EmbeddedStore, ErasedRecord, Store, StoreExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
/// Workers of each HTTP server.
const SERVER_WORKERS: usize = 1;

// ---------------------------------------------------------------------------------------
// Load generator

/// One case's result: requests/s and how busy (in cores) the client thread and the rest
/// of the process were while counting.
struct Load {
    rps: f64,
    client_cores: f64,
    server_cores: f64,
}

/// First field of a schedstat file: nanoseconds on a CPU.
fn schedstat_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of every thread of this process, in ns.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .map(|t| schedstat_ns(&t.path().join("schedstat")))
                .sum()
        })
        .unwrap_or(0)
}

fn thread_cpu_ns() -> u64 {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// A keep-alive HTTP/1.1 connection sending one prebuilt request at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send `request`, read one response; returns its status and body.
    async fn call(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), BoxError> {
        self.stream.write_all(request).await?;
        loop {
            if let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..head_end])?;
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or("malformed status line")?;
                let mut length = None;
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = Some(v.trim().parse::<usize>()?);
                        } else if k.eq_ignore_ascii_case("transfer-encoding") {
                            return Err("chunked response: not handled by this client".into());
                        }
                    }
                }
                let length = length.ok_or("response without Content-Length")?;
                let total = head_end + 4 + length;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                let body = self.buf[head_end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), BoxError> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// One request on a fresh connection (the check before measuring).
fn probe(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = Conn::open(addr).await?;
        let (status, body) = c.call(request).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// `conns` keep-alive connections, each sending `request` back to back, on a thread and
/// runtime of their own. Fails on any non-200.
fn load(addr: SocketAddr, request: Arc<Vec<u8>>, conns: usize) -> Result<Load, BoxError> {
    std::thread::spawn(move || -> Result<Load, BoxError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut opened = Vec::with_capacity(conns);
            for _ in 0..conns {
                opened.push(Conn::open(addr).await?);
            }
            let start = Instant::now();
            let (from, until) = (start + WARMUP, start + WARMUP + MEASURE);
            let mut tasks = Vec::with_capacity(conns);
            for mut c in opened {
                let request = request.clone();
                tasks.push(tokio::spawn(async move {
                    let mut counted = 0u64;
                    loop {
                        let (status, body) = c.call(&request).await?;
                        if status != 200 {
                            return Err::<u64, BoxError>(
                                format!(
                                    "HTTP {status} during the run: {}",
                                    String::from_utf8_lossy(&body)
                                )
                                .into(),
                            );
                        }
                        let now = Instant::now();
                        if now >= until {
                            return Ok(counted);
                        }
                        if now >= from {
                            counted += 1;
                        }
                    }
                }));
            }
            // CPU use across the counted window, sampled on the client thread itself.
            tokio::time::sleep_until(from.into()).await;
            let (c0, p0) = (thread_cpu_ns(), process_cpu_ns());
            tokio::time::sleep_until(until.into()).await;
            let (c1, p1) = (thread_cpu_ns(), process_cpu_ns());
            let mut total = 0;
            for t in tasks {
                total += t.await??;
            }
            let secs = MEASURE.as_secs_f64();
            let client = (c1 - c0) as f64 / 1e9 / secs;
            Ok(Load {
                rps: total as f64 / secs,
                client_cores: client,
                server_cores: (p1 - p0) as f64 / 1e9 / secs - client,
            })
        })
    })
    .join()
    .map_err(|_| "the load generator panicked")?
}

fn request(path: &str, auth: &str) -> Arc<Vec<u8>> {
    Arc::new(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n\r\n").into_bytes())
}

// ---------------------------------------------------------------------------------------
// The servers

/// The baseline: one route, the same pattern, `true` as JSON.
fn baseline_server(rt: &tokio::runtime::Runtime) -> Result<SocketAddr, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(|| {
        App::new().route(
            "/api/engine/v2/systems/{id}/{module}/{key}",
            web::get().to(|| async { HttpResponse::Ok().json(true) }),
        )
    })
    .workers(SERVER_WORKERS)
    .disable_signals()
    .listen(listener)?
    .run();
    rt.spawn(server);
    Ok(addr)
}

/// Lintel in-process, seeded: what the cases need to address it.
struct Lintel {
    addr: SocketAddr,
    /// A system whose only module is `Display_1`.
    small_system: String,
    /// A system of 100 modules, `Display_1` first (running), 99 more displays (stopped).
    large_system: String,
    api_key: String,
    jwt: String,
    engine: Arc<Engine>,
    tenant: String,
    displays: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn lintel() -> Result<Lintel, BoxError> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
    let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line())?);
    let mut cfg = EngineConfig::new(dir.path().to_path_buf());
    cfg.workers = 1; // module actors: idle during the run (the display only polls power)
    let engine = Arc::new(Engine::new(cfg, store.clone())?);
    let actor = Actor::system();

    let tenant = store
        .create(
            &actor,
            Tenant {
                id: new_id(IdKind::Tenant),
                name: "Bench".into(),
                domain: "bench.example".into(),
                ..Default::default()
            },
        )
        .await?;
    let (hash, info) = engine
        .install_component(
            &tenant.id,
            lintel_bundled_drivers::DEMO_DISPLAY.component.to_vec(),
        )
        .await?;
    let driver = store
        .create(&actor, info.to_record(&tenant.id, hash, DriverRole::Device))
        .await?;

    let mut records: Vec<Box<dyn ErasedRecord>> = Vec::new();
    let mut systems = Vec::new();
    let mut displays = Vec::new();
    for (n, sim) in [(1usize, "bench-display-1"), (100, "bench-display-2")] {
        let d = DisplaySimulator::default();
        engine.register_endpoint(sim, Arc::new(move || d.connect()));
        let system_id = new_id(IdKind::System);
        let mut modules = Vec::new();
        for i in 0..n {
            let m = Module {
                id: new_id(IdKind::Module),
                tenant_id: tenant.id.clone(),
                driver_id: driver.id.clone(),
                control_system_id: Some(system_id.clone()),
                uri: (i == 0).then(|| format!("sim://{sim}")),
                running: i == 0,
                ..Default::default()
            };
            if i == 0 {
                displays.push(m.id.clone());
            }
            modules.push(m.id.clone());
            records.push(Box::new(m));
        }
        records.push(Box::new(ControlSystem {
            id: system_id.clone(),
            tenant_id: tenant.id.clone(),
            name: format!("Bench room ({n} modules)"),
            capacity: 4,
            modules,
            ..Default::default()
        }));
        systems.push(system_id);
    }
    let user = User {
        id: new_id(IdKind::User),
        tenant_id: tenant.id.clone(),
        name: "Bench".into(),
        email: "bench@bench.example".into(),
        roles: vec![Role::Staff],
        ..Default::default()
    };
    records.push(Box::new(user.clone()));
    store.create_all(&actor, records).await?;

    let tokens = Arc::new(TokenService::new(
        store.clone(),
        keyring.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(90 * 86_400),
    ));
    let jwt = tokens.issue(&tenant, &user, None).await?;
    let api_keys = Arc::new(ApiKeys::new(store.clone()));
    let (_, api_key) = api_keys
        .create(
            &actor,
            &tenant.id,
            NewApiKey {
                name: "bench".into(),
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
        version: "bench",
        users: AppState::users_cache(&store),
        mqtt: None,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let http = HttpConfig {
        max_body_bytes: 1 << 20,
        workers: SERVER_WORKERS,
        shutdown_timeout: Duration::from_secs(1),
        cors_origins: Vec::new(),
        websocket: Default::default(),
    };
    tokio::spawn(lintel_api::serve(listener, &http, state)?.0);
    let started = engine.start_all().await?;
    if started != displays.len() {
        return Err(format!("{started} modules started, expected {}", displays.len()).into());
    }
    Ok(Lintel {
        addr,
        small_system: systems[0].clone(),
        large_system: systems[1].clone(),
        api_key,
        jwt,
        engine,
        tenant: tenant.id,
        displays,
        _dir: dir,
    })
}

/// Wait until each display has a `power` status; exec `power(false)` where it has none.
async fn settle_power(l: &Lintel) -> Result<(), BoxError> {
    for id in &l.displays {
        let deadline = Instant::now() + Duration::from_secs(3);
        while l
            .engine
            .state_key(&l.tenant, id, "power")
            .ok()
            .flatten()
            .is_none()
        {
            if Instant::now() > deadline {
                l.engine
                    .exec(&l.tenant, id, "power", vec![serde_json::json!(false)])
                    .await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.engine.state_key(&l.tenant, id, "power")?.is_none() {
            if Instant::now() > deadline {
                return Err(format!("module {id} never reported `power`").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The check before measuring: 200 with `true` or `false`.
fn check(label: &str, addr: SocketAddr, request: &[u8]) {
    match probe(addr, request) {
        Ok((200, body)) if body == "true" || body == "false" => {
            println!("  check {label}: 200 {body}");
        }
        Ok((status, body)) => panic!("{label}: expected 200 true/false, got {status} {body}"),
        Err(e) => panic!("{label}: {e}"),
    }
}

fn run(label: &str, addr: SocketAddr, request: &Arc<Vec<u8>>, conns: usize) -> Load {
    load(addr, request.clone(), conns).unwrap_or_else(|e| panic!("{label} conns={conns}: {e}"))
}

fn main() {
    // The servers' runtime (the actix server futures, the engine's tasks and the store's
    // blocking pool); the HTTP workers and the load generator have threads of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let base_addr = baseline_server(&rt).expect("baseline server");
    let l = rt.block_on(lintel()).expect("lintel set-up");
    rt.block_on(settle_power(&l)).expect("display power status");

    let path = |sys: &str| format!("/api/engine/v2/systems/{sys}/Display_1/power");
    let key_header = format!("X-API-Key: {}", l.api_key);
    let small = request(&path(&l.small_system), &key_header);
    let large = request(&path(&l.large_system), &key_header);
    let jwt = request(
        &path(&l.small_system),
        &format!("Authorization: Bearer {}", l.jwt),
    );
    let base = request(&path(&l.small_system), &key_header);
    // `rest -- profile [api-key|jwt|large] [conns]`: only that Lintel case, for 20 s, to
    // attach a profiler (`perf record -p <pid>`).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "profile") {
        let which = args.get(i + 1).map_or("api-key", String::as_str);
        let conns = args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(64);
        let req = match which {
            "jwt" => &jwt,
            "large" => &large,
            _ => &small,
        };
        check(which, l.addr, req);
        println!(
            "profiling {which} conns={conns}, pid {}",
            std::process::id()
        );
        let mut total = 0.0;
        for _ in 0..6 {
            total += run(which, l.addr, req, conns).rps;
        }
        println!("{which} conns={conns}: {:.0} req/s", total / 6.0);
        return;
    }

    println!(
        "P6 REST GET …/Display_1/power, keep-alive HTTP/1.1, {SERVER_WORKERS} actix worker per \
         server, 1 client thread, {:.1} s counted after {:.1} s warm-up ({} cores)",
        MEASURE.as_secs_f64(),
        WARMUP.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    check("baseline", base_addr, &base);
    check("lintel 1 module, X-API-Key", l.addr, &small);
    check("lintel 100 modules, X-API-Key", l.addr, &large);
    check("lintel 1 module, Bearer JWT", l.addr, &jwt);

    let cpu = |x: &Load| {
        format!(
            "client {:.2} / server {:.2}",
            x.client_cores, x.server_cores
        )
    };
    let line = |label: &str, conns: usize, lin: &Load, b: &Load| {
        println!(
            "P6 conns={conns} {label}lintel={:.0} req/s baseline={:.0} req/s ratio={:.2}  \
             (cores busy: lintel {}; baseline {})",
            lin.rps,
            b.rps,
            lin.rps / b.rps,
            cpu(lin),
            cpu(b)
        );
    };
    for conns in [8usize, 64, 256] {
        let b = run("baseline", base_addr, &base, conns);
        let lin = run("lintel", l.addr, &small, conns);
        line("", conns, &lin, &b);
    }
    let b = run("baseline", base_addr, &base, 64);
    let one = run("lintel", l.addr, &small, 64);
    let hundred = run("lintel 100 modules", l.addr, &large, 64);
    line("modules=1 ", 64, &one, &b);
    line("modules=100 ", 64, &hundred, &b);
    println!(
        "  growth modules 1 → 100: {:.2}× the time per request",
        one.rps / hundred.rps
    );
    let bearer = run("lintel bearer JWT", l.addr, &jwt, 64);
    line("auth=bearer-jwt ", 64, &bearer, &b);
    println!(
        "  (auth=X-API-Key unless stated; target: ≥ 50000 req/s and ratio ≥ 0.60 at 64 conns)"
    );
    rt.block_on(l.engine.shutdown());
}
