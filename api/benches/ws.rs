//! WebSocket benchmarks (rows P1, P2 and P7 of `shared/design/performance.md`), with
//! Lintel's API in-process as in the integration tests (`tests/support`).
//!
//! - **P1 fan-out**: one module's status key, bound by N clients (PlaceOS's protocol),
//!   changed as fast as the producer can (100-byte string values); deliveries per second
//!   counted at the clients over 3 s. Baseline in the same run: a raw tokio-tungstenite
//!   broadcaster (one `broadcast` channel, each connection feeding every waiting message
//!   and flushing when none is left), sending frames of the same size to the same clients.
//!   Both servers get one thread for their connections (Lintel's actix worker; the
//!   baseline's current-thread runtime); the producer runs on the main runtime and the
//!   clients on a thread of their own. N = 10, 100, 1000.
//! - **P2 latency**: a fake display over TCP sends `INPUT=<n>` lines at 1k per second
//!   (10, 100 and 1,000 clients) and 10k per second (100 clients) to the demo display
//!   driver (WASM), which sets its `input` status; the clients bound to it take the time
//!   from the line's write to the notify's arrival.
//!   A driver call that handles several lines publishes the last value (status is
//!   coalesced per call), so at high rates not every line becomes a notify; the share
//!   delivered is printed.
//! - **P7 idle sessions**: a child process (this binary again) opens 10, 100, 1,000 and
//!   10,000 authenticated sessions, each bound to one key; the server's RSS growth per
//!   session is measured in this process.
//!
//! Run: `cargo bench -p lintel-api --bench ws` (`-- p1`, `-- p2` or `-- p7` for one).

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use lintel_api::ws::WsConfig;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::BoxError;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// A runtime on a thread of its own for the load generator.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

fn small_client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Called with each counted frame.
type OnText = Arc<dyn Fn(&str) + Send + Sync>;

/// `n` clients that send `bind` and count the text frames they get after the first
/// `skip`.
struct Clients {
    url: String,
    n: usize,
    bind: String,
    skip: u64,
    count: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    on_text: Option<OnText>,
}

/// Run the clients on a thread of their own until `stop` is set.
fn spawn_clients(c: Clients) -> std::thread::JoinHandle<()> {
    let Clients {
        url,
        n,
        bind,
        skip,
        count,
        connected,
        stop,
        on_text,
    } = c;
    std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let (url, bind, count, connected, on_text) = (
                    url.clone(),
                    bind.clone(),
                    count.clone(),
                    connected.clone(),
                    on_text.clone(),
                );
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
                    url.as_str(),
                    Some(small_client_config()),
                    true,
                )
                .await
                .expect("connect");
                ws.send(Message::text(bind)).await.expect("bind");
                connected.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    let mut seen = 0u64;
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m {
                            seen += 1;
                            if seen > skip {
                                count.fetch_add(1, Ordering::Relaxed);
                                if let Some(f) = &on_text {
                                    f(&t);
                                }
                            }
                        }
                    }
                }));
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for t in tasks {
                t.abort();
            }
        })
    })
}

async fn wait_for(what: &str, counter: &AtomicU64, n: u64) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!("{what}: {} of {n}", counter.load(Ordering::Relaxed)).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Deliveries per second at the clients while `produce` runs.
async fn deliveries(
    url: String,
    n: usize,
    bind: String,
    skip: u64,
    produce: impl AsyncFnOnce(Arc<AtomicBool>),
) -> Result<f64, BoxError> {
    let (count, connected, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients = spawn_clients(Clients {
        url,
        n,
        bind,
        skip,
        count: count.clone(),
        connected: connected.clone(),
        stop: stop.clone(),
        on_text: None,
    });
    wait_for("clients connected", &connected, n as u64).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producing = Arc::new(AtomicBool::new(true));
    let measure = {
        let (count, producing) = (count.clone(), producing.clone());
        async move {
            tokio::time::sleep(WARMUP).await;
            let start = count.load(Ordering::Relaxed);
            tokio::time::sleep(MEASURE).await;
            let got = count.load(Ordering::Relaxed) - start;
            producing.store(false, Ordering::Relaxed);
            got as f64 / MEASURE.as_secs_f64()
        }
    };
    let (rate, ()) = tokio::join!(measure, produce(producing));
    stop.store(true, Ordering::Relaxed);
    let _ = clients.join();
    Ok(rate)
}

/// The raw baseline: tokio-tungstenite, one broadcast channel, batched writes.
fn baseline_server() -> (SocketAddr, tokio::sync::broadcast::Sender<Bytes>) {
    let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(4096);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = tx.clone();
    std::thread::spawn(move || {
        client_runtime().block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut sink, mut stream) = ws.split();
                    // The bind request.
                    let _ = stream.next().await;
                    tokio::spawn(async move { while stream.next().await.is_some() {} });
                    loop {
                        let first = match rx.recv().await {
                            Ok(b) => b,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        };
                        let mut next = Some(first);
                        while let Some(b) = next.take() {
                            let text = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(b)
                                .expect("utf-8");
                            if sink.feed(Message::Text(text)).await.is_err() {
                                return;
                            }
                            next = loop {
                                match rx.try_recv() {
                                    Ok(b) => break Some(b),
                                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                                        continue;
                                    }
                                    Err(_) => break None,
                                }
                            };
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    });
    (addr, sender)
}

fn value(n: u64) -> String {
    format!("{n:0100}")
}

async fn p1() -> Result<(), BoxError> {
    println!("P1 fan-out: one key bound by N clients, 100-byte values, deliveries/s over 3 s");
    let f = support::start(WsConfig::default()).await?;
    let url = f.ws_url(&format!("?bearer_token={}", f.staff_jwt));
    let bind = json!({"id": 1, "cmd": "bind", "sys": f.system, "mod": "Misbehave", "index": 2, "name": "v"})
        .to_string();
    // The same size as Lintel's notify frame.
    let sample = format!(
        r#"{{"id":1,"type":"notify","value":"{}","meta":{{"sys":"{}","mod":"Misbehave","index":2,"name":"v"}}}}"#,
        value(0),
        f.system
    );
    let (base_addr, base_tx) = baseline_server();
    for n in [10usize, 100, 1000] {
        let w = f.writer();
        let lintel = deliveries(url.clone(), n, bind.clone(), 1, async |go| {
            let mut i = 0u64;
            while go.load(Ordering::Relaxed) {
                w.set("v", json!(value(i)));
                i += 1;
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await?;
        let tx = base_tx.clone();
        let frame = sample.clone();
        let raw = deliveries(
            format!("ws://{base_addr}/"),
            n,
            bind.clone(),
            0,
            async |go| {
                let mut i = 0u64;
                while go.load(Ordering::Relaxed) {
                    // A fresh frame per change, as a server serializing each would.
                    let mut b = frame.clone().into_bytes();
                    let digits = i.to_string();
                    let at = 33 + 100 - digits.len();
                    b[at..at + digits.len()].copy_from_slice(digits.as_bytes());
                    let _ = tx.send(Bytes::from(b));
                    i += 1;
                    if i.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            },
        )
        .await?;
        println!(
            "  {n:>5} clients: Lintel {:>10.0} deliveries/s   raw tokio-tungstenite {:>10.0}/s   ratio {:.2}",
            lintel,
            raw,
            lintel / raw
        );
    }
    f.websockets.close(Duration::from_secs(5)).await;
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn p2() -> Result<(), BoxError> {
    println!(
        "P2 latency: fake display (TCP) -> demo display driver (WASM) -> status -> WebSocket clients"
    );
    let f = support::start(WsConfig::default()).await?;
    let runs = [
        (1_000u64, 10usize),
        (1_000, 100),
        (1_000, 1000),
        (10_000, 100),
    ];
    for (run, (rate, clients_n)) in runs.into_iter().enumerate() {
        let device = TcpListener::bind("127.0.0.1:0").await?;
        let port = device.local_addr()?.port();
        let module = f.add_display(&format!("tcp://127.0.0.1:{port}")).await?;
        let (sock, _) = tokio::time::timeout(Duration::from_secs(10), device.accept()).await??;
        sock.set_nodelay(true)?;
        let (rd, mut wr) = sock.into_split();
        // Drain what the driver sends (its queries).
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(rd).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        let url = f.ws_url(&format!("?bearer_token={}", f.staff_jwt));
        // Each run adds a display after the last: `Display_<run + 1>`.
        let bind = json!({"id": 1, "cmd": "bind", "sys": f.system, "mod": "Display", "index": run + 1, "name": "input"})
            .to_string();
        let epoch = Instant::now();
        // When each line was written (µs since `epoch`), by its number. The clients'
        // thread only finds the number in the frame (no JSON parse), so that it keeps up.
        let total = rate * (WARMUP + MEASURE).as_millis() as u64 / 1000;
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let latencies: Arc<parking_lot::Mutex<Vec<u32>>> = Default::default();
        let record: OnText = {
            let (sent, latencies) = (sent.clone(), latencies.clone());
            Arc::new(move |t: &str| {
                let now = epoch.elapsed().as_micros() as u64;
                let Some(at) = t.find("\"value\":\"L") else {
                    return;
                };
                let digits = &t[at + 10..];
                let end = digits.find('"').unwrap_or(0);
                let Ok(n) = digits[..end].parse::<usize>() else {
                    return;
                };
                if let Some(at) = sent.get(n) {
                    latencies
                        .lock()
                        .push((now - at.load(Ordering::Relaxed)) as u32);
                }
            })
        };
        let (count, connected, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let clients = spawn_clients(Clients {
            url,
            n: clients_n,
            bind,
            skip: 0,
            count,
            connected: connected.clone(),
            stop: stop.clone(),
            on_text: Some(record),
        });
        wait_for("clients connected", &connected, clients_n as u64).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Lines in 1 ms ticks.
        let per_tick = (rate / 1000).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        let mut buf = Vec::new();
        while n < total {
            tick.tick().await;
            buf.clear();
            let now = epoch.elapsed().as_micros() as u64;
            for _ in 0..per_tick {
                buf.extend_from_slice(format!("INPUT=L{n}\r\n").as_bytes());
                sent[n as usize].store(now, Ordering::Relaxed);
                n += 1;
            }
            wr.write_all(&buf).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = clients.join();
        let mut l = std::mem::take(&mut *latencies.lock());
        l.sort_unstable();
        let notified = l.len() as f64 / clients_n as f64;
        println!(
            "  {rate:>6} updates/s x {clients_n:>4} clients: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({:.0}% of lines became a notify)",
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            percentile(&l, 1.0),
            100.0 * notified / n as f64
        );
        f.engine.stop_module(&module).await;
    }
    f.websockets.close(Duration::from_secs(5)).await;
    Ok(())
}

/// Child mode for P7: open sessions in steps, print `READY <n>` after each, wait for a
/// line on stdin before the next.
fn idle_clients(url: String, bind: String) {
    client_runtime().block_on(async move {
        let mut open = Vec::new();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        for target in [10usize, 100, 1000, 10_000] {
            while open.len() < target {
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
                    url.as_str(),
                    Some(small_client_config()),
                    true,
                )
                .await
                .expect("connect");
                ws.send(Message::text(bind.clone())).await.expect("bind");
                // Keep reading (pongs go out) without holding much.
                open.push(tokio::spawn(
                    async move { while ws.next().await.is_some() {} },
                ));
            }
            println!("READY {target}");
            if stdin.next_line().await.ok().flatten().is_none() {
                return;
            }
        }
    });
}

async fn p7() -> Result<(), BoxError> {
    println!("P7 idle sessions: server RSS per authenticated session bound to one key");
    let f = support::start(WsConfig {
        max_binds: 10,
        ..WsConfig::default()
    })
    .await?;
    f.writer().set("v", json!("idle"));
    let url = f.ws_url(&format!("?bearer_token={}", f.staff_jwt));
    let bind = json!({"id": 1, "cmd": "bind", "sys": f.system, "mod": "Misbehave", "index": 2, "name": "v"})
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_bytes();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env("LINTEL_BENCH_WS_CHILD", &url)
        .env("LINTEL_BENCH_WS_BIND", &bind)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    while let Some(line) = out.next_line().await? {
        let Some(n) = line
            .strip_prefix("READY ")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        // Let every session settle (handshake, bind, first notify).
        let deadline = Instant::now() + Duration::from_secs(60);
        while (f.websockets.sessions() as u64) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = rss_bytes().saturating_sub(base);
        println!(
            "  {n:>6} sessions: RSS +{:.1} MiB, {:.1} KiB per session",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / 1024.0 / n as f64
        );
        if stdin.write_all(b"next\n").await.is_err() {
            break;
        }
    }
    drop(stdin);
    let _ = child.wait().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    if let (Ok(url), Ok(bind)) = (
        std::env::var("LINTEL_BENCH_WS_CHILD"),
        std::env::var("LINTEL_BENCH_WS_BIND"),
    ) {
        idle_clients(url, bind);
        return Ok(());
    }
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |case: &str| only.is_empty() || only.iter().any(|a| a == case);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if want("p1") {
            p1().await?;
        }
        if want("p2") {
            p2().await?;
        }
        if want("p7") {
            p7().await?;
        }
        Ok::<_, BoxError>(())
    })
}
