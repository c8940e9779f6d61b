//! Device-to-subscriber latency (issue 7's benchmark): bytes from a simulated TCP device →
//! transport → driver `received` → status → an in-process subscriber of the status bus.
//!
//! The device (a loopback TCP server) writes `PRESENCE=1 PEOPLE=<seq>` lines to
//! DEMO_OCCUPANCY modules at a paced total rate; each line's send time is kept by its
//! sequence number, and the subscriber takes the latency when `people_count == seq`
//! arrives. Cases: 1 module at 1k and 10k updates/s, and 1,000 modules sharing those
//! rates. The baseline, measured in the same run, is the same device read by a bare tokio
//! task that parses the line and publishes it on a broadcast channel (no sandbox, no
//! engine).
//!
//! Run: `cargo bench -p lintel-engine --bench latency`.

mod common;

use common::{BoxError, bed, install, module};
use lintel_store::{Actor, ErasedRecord, StoreExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

/// How long each case sends for; the first tenth is warm-up and not counted.
const CASE_SECONDS: f64 = 3.0;

/// Send times (ns since `start`) by sequence number.
struct Sent {
    start: Instant,
    at: Vec<AtomicU64>,
}

impl Sent {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Sent {
            start: Instant::now(),
            at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn mark(&self, seq: usize) {
        self.at[seq].store(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Microseconds since `seq` was sent.
    fn latency_us(&self, seq: usize) -> Option<f64> {
        let sent = self.at.get(seq)?.load(Ordering::Relaxed);
        let now = self.start.elapsed().as_nanos() as u64;
        (sent > 0).then(|| now.saturating_sub(sent) as f64 / 1000.0)
    }
}

/// Write `total` lines across `conns` at `rate` lines/s in 1 ms ticks, round-robin;
/// line `seq` goes to connection `seq % conns`.
async fn pace(mut conns: Vec<OwnedWriteHalf>, rate: u64, total: usize, sent: Arc<Sent>) {
    let per_ms = (rate as f64 / 1000.0).max(1.0) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0;
    let n = conns.len();
    while seq < total {
        tick.tick().await;
        for _ in 0..per_ms.min(total - seq) {
            let line = format!("PRESENCE=1 PEOPLE={seq}\n");
            sent.mark(seq);
            if conns[seq % n].write_all(line.as_bytes()).await.is_err() {
                return;
            }
            seq += 1;
        }
    }
}

/// Accept `n` connections (in a task of its own, so connections made meanwhile are taken
/// as they come); what the other side writes is read and dropped.
fn accept(
    listener: TcpListener,
    n: usize,
) -> tokio::task::JoinHandle<Result<Vec<OwnedWriteHalf>, BoxError>> {
    tokio::spawn(accept_all(listener, n))
}

async fn accept_all(listener: TcpListener, n: usize) -> Result<Vec<OwnedWriteHalf>, BoxError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await??;
        s.set_nodelay(true)?;
        let (mut rd, wr) = s.into_split();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while matches!(rd.read(&mut buf).await, Ok(k) if k > 0) {}
        });
        conns.push(wr);
    }
    Ok(conns)
}

/// p50 and p99 of the samples after warm-up, in microseconds, and how many there were.
fn percentiles(v: &[(usize, f64)], total: usize) -> (f64, f64, usize) {
    let mut l: Vec<f64> = v
        .iter()
        .filter(|(seq, _)| *seq >= total / 10)
        .map(|(_, l)| *l)
        .collect();
    l.sort_by(f64::total_cmp);
    if l.is_empty() {
        return (f64::NAN, f64::NAN, 0);
    }
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    (at(0.50), at(0.99), l.len())
}

/// Collect latencies from `values` (sequence numbers as they arrive) until the last one,
/// or until `deadline`.
async fn collect(
    mut next: impl AsyncFnMut() -> Option<usize>,
    sent: &Sent,
    total: usize,
) -> Vec<(usize, f64)> {
    let mut out = Vec::with_capacity(total);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(CASE_SECONDS + 30.0);
    while let Ok(Some(seq)) = tokio::time::timeout_at(deadline, next()).await {
        if let Some(l) = sent.latency_us(seq) {
            out.push((seq, l));
        }
        if seq + 1 == total {
            break;
        }
    }
    out
}

/// Latency through the engine: `modules` DEMO_OCCUPANCY modules, `rate` lines/s in all.
async fn through_engine(modules: usize, rate: u64) -> Result<(f64, f64, usize), BoxError> {
    let bed = bed(|_| {}).await?;
    let driver = install(&bed, lintel_bundled_drivers::DEMO_OCCUPANCY.component).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let uri = format!("tcp://{}", listener.local_addr()?);
    let records: Vec<Box<dyn ErasedRecord>> = (0..modules)
        .map(|_| Box::new(module(&bed, &driver, Some(&uri))) as Box<dyn ErasedRecord>)
        .collect();
    bed.store.create_all(&Actor::system(), records).await?;
    let mut bus = bed.engine.status_bus().subscribe();
    let accepting = accept(listener, modules);
    bed.engine.start_all().await?;
    let conns = accepting.await??;
    // Let every driver finish its on-connect exchange.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (rate as f64 * CASE_SECONDS) as usize;
    let sent = Sent::new(total);
    let pacer = tokio::spawn(pace(conns, rate, total, sent.clone()));
    let samples = collect(
        async || loop {
            match bus.recv().await {
                Ok(c) if &*c.key == "people_count" => {
                    return c.value.and_then(|v| v.as_u64()).map(|v| v as usize);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        },
        &sent,
        total,
    )
    .await;
    pacer.abort();
    bed.engine.shutdown().await;
    Ok(percentiles(&samples, total))
}

/// The baseline: the same device and pacing, read by bare tokio tasks that parse each
/// line and publish the number on a broadcast channel.
async fn baseline(conns_n: usize, rate: u64) -> Result<(f64, f64, usize), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::broadcast::channel::<usize>(4096);
    let accepting = accept(listener, conns_n);
    let mut readers = Vec::new();
    for _ in 0..conns_n {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(s).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.rsplit('=').next().and_then(|n| n.parse().ok()) {
                    let _ = tx.send(n);
                }
            }
        }));
    }
    let conns = accepting.await??;
    let total = (rate as f64 * CASE_SECONDS) as usize;
    let sent = Sent::new(total);
    let pacer = tokio::spawn(pace(conns, rate, total, sent.clone()));
    let samples = collect(
        async || loop {
            match rx.recv().await {
                Ok(n) => return Some(n),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        },
        &sent,
        total,
    )
    .await;
    pacer.abort();
    for r in readers {
        r.abort();
    }
    Ok(percentiles(&samples, total))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for modules in [1usize, 1_000] {
        for rate in [1_000u64, 10_000] {
            let base = rt.block_on(baseline(modules, rate));
            let lintel = rt.block_on(through_engine(modules, rate));
            match (base, lintel) {
                (Ok((b50, b99, _)), Ok((l50, l99, n))) => println!(
                    "latency modules={modules} rate={rate}/s: lintel p50={l50:.0}µs p99={l99:.0}µs \
                     (samples {n}); bare tokio baseline p50={b50:.0}µs p99={b99:.0}µs; \
                     ratio p50={:.2} p99={:.2}",
                    l50 / b50,
                    l99 / b99
                ),
                (Err(e), _) | (_, Err(e)) => {
                    println!("latency modules={modules} rate={rate}/s failed: {e}")
                }
            }
        }
    }
}
