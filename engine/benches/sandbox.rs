//! Driver-sandbox benchmarks (rows P3 and P4 of `shared/design/performance.md`).
//!
//! - P3: events/s of one DEMO_OCCUPANCY module fed `PRESENCE=1 PEOPLE=<i>` lines through an
//!   in-process duplex, against a bare wasmtime loop calling the same `received` export
//!   with a no-op host.
//! - P4: start time and RSS per module of M idle `fixtures::MISBEHAVE` modules, with the
//!   on-demand and the pooling instance allocator. The largest M comes from
//!   `LINTEL_BENCH_MODULES` (default 10000).
//!
//! Run: `cargo bench -p lintel-engine --bench sandbox [-- p3|p4]`. With
//! `LINTEL_BENCH_SMAPS=<dir>`, each P4 case leaves its memory map there.

use lintel_engine::EngineConfig;
use lintel_model::Module;
use lintel_store::{Actor, ErasedRecord, StoreExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lines the P3 device writes.
const P3_EVENTS: usize = 200_000;
/// P3 runs each side this many times and keeps the best.
const P3_ROUNDS: usize = 3;
/// The in-process duplex buffer between device and engine.
const DUPLEX_BYTES: usize = 64 * 1024;

mod common;
use common::{BoxError, bed, install, module};

/// The bare-wasmtime baseline: the driver world with a host that does nothing.
mod bare {
    wasmtime::component::bindgen!({
        path: "../drivers/sdk/wit",
        world: "driver",
        exports: { default: async },
    });

    use lintel::driver::types as wit;
    use wasmtime::component::ResourceTable;
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    pub struct NoopHost {
        pub wasi: WasiCtx,
        pub table: ResourceTable,
    }

    impl WasiView for NoopHost {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl lintel::driver::types::Host for NoopHost {}

    impl lintel::driver::host::Host for NoopHost {
        fn send(&mut self, _data: Vec<u8>, _options: wit::SendOptions) -> Result<u64, String> {
            Ok(0)
        }
        fn disconnect(&mut self) {}
        fn set_status(&mut self, _key: String, _value: String) -> Result<(), String> {
            Ok(())
        }
        fn log(&mut self, _level: wit::LogLevel, _message: String) {}
        fn schedule(&mut self, _id: u32, _when: wit::Schedule) -> Result<(), String> {
            Ok(())
        }
        fn cancel_schedule(&mut self, _id: u32) {}
        fn settings(&mut self) -> String {
            "{}".into()
        }
        fn secret(&mut self, _key: String) -> Result<Option<String>, String> {
            Ok(None)
        }
        fn subscribe(&mut self, _target: wit::StatusRef) -> Result<u64, String> {
            Ok(0)
        }
        fn unsubscribe(&mut self, _id: u64) {}
        fn call(
            &mut self,
            _target: wit::ModuleRef,
            _function: String,
            _args: String,
        ) -> Result<u64, String> {
            Ok(0)
        }
        fn http_request(&mut self, _request: wit::HttpRequest) -> Result<u64, String> {
            Ok(0)
        }
        fn mqtt_subscribe(&mut self, _topic_filter: String) -> Result<(), String> {
            Ok(())
        }
        fn lookup_system(&mut self, _system: Option<String>) -> Result<u64, String> {
            Ok(0)
        }
        fn reply(&mut self, _call: u64, _result: Result<String, String>) -> Result<(), String> {
            Ok(())
        }
    }
}

/// Events/s of `n` `received` calls on one Store with a no-op host.
async fn baseline_events_per_s(component: &[u8], n: usize) -> Result<f64, BoxError> {
    use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.concurrency_support(false);
    let engine = wasmtime::Engine::new(&config)?;
    let component = Component::new(&engine, component)?;
    let mut linker: Linker<bare::NoopHost> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bare::Driver::add_to_linker::<_, HasSelf<_>>(&mut linker, |s: &mut bare::NoopHost| s)?;
    let mut store = wasmtime::Store::new(
        &engine,
        bare::NoopHost {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let driver = bare::Driver::instantiate_async(&mut store, &component, &linker).await?;
    let guest = driver.lintel_driver_guest();
    guest
        .call_on_load(&mut store, "{}")
        .await?
        .map_err(|e| format!("on_load: {e}"))?;
    let lines: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("PRESENCE=1 PEOPLE={i}").into_bytes())
        .collect();
    let started = Instant::now();
    for line in &lines {
        guest.call_received(&mut store, line, None).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// P3 through the engine: seconds from the first byte written until the status bus shows
/// `people_count == n-1`, and how many `people_count` changes the bus carried.
async fn lintel_events(
    n: usize,
    configure: impl FnOnce(&mut EngineConfig),
) -> Result<(f64, u64), BoxError> {
    let bed = bed(configure).await?;
    let driver = install(&bed, lintel_bundled_drivers::DEMO_OCCUPANCY.component).await?;
    let m = bed
        .store
        .create(&Actor::system(), module(&bed, &driver, Some("sim://occ")))
        .await?;

    let (tx, mut devices) = tokio::sync::mpsc::unbounded_channel();
    bed.engine.register_endpoint(
        "occ",
        Arc::new(move || {
            let (engine_side, device_side) = tokio::io::duplex(DUPLEX_BYTES);
            let _ = tx.send(device_side);
            engine_side
        }),
    );
    let mut bus = bed.engine.status_bus().subscribe();
    bed.engine.start_all().await?;
    let device = tokio::time::timeout(Duration::from_secs(10), devices.recv())
        .await?
        .ok_or("the engine never connected")?;
    bed.engine.settle(&bed.tenant, &m.id).await?;
    let (mut rd, mut wr) = tokio::io::split(device);
    // Drain what the driver sends (its `STATE?` query on connect).
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while matches!(rd.read(&mut buf).await, Ok(k) if k > 0) {}
    });
    let mut payload = Vec::with_capacity(n * 28);
    for i in 0..n {
        payload.extend_from_slice(format!("PRESENCE=1 PEOPLE={i}\n").as_bytes());
    }
    let target = (n - 1) as u64;
    let module_id: Arc<str> = m.id.as_str().into();

    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut seen = 0u64;
    let wait = async {
        loop {
            match bus.recv().await {
                Ok(c) if c.module_id == module_id && &*c.key == "people_count" => {
                    seen += 1;
                    if c.value.and_then(|v| v.as_u64()) == Some(target) {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let v = bed.engine.state_key(&bed.tenant, &m.id, "people_count")?;
                    if v.and_then(|v| v.as_u64()) == Some(target) {
                        return Ok(());
                    }
                }
                Err(e) => return Err::<(), BoxError>(e.into()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .map_err(|_| {
            let last = bed
                .engine
                .state_key(&bed.tenant, &m.id, "people_count")
                .ok()
                .flatten();
            format!("people_count never reached {target} in 120 s (last {last:?})")
        })??;
    let secs = started.elapsed().as_secs_f64();
    let _wr = writer.await??;
    bed.engine.shutdown().await;
    drain.abort();
    Ok((secs, seen))
}

/// The best of `P3_ROUNDS` runs of each side, the baseline and Lintel taking turns, so a
/// passing disturbance on the machine does not decide the ratio.
async fn p3() {
    let n = P3_EVENTS;
    for (label, unlimited) in [("default limits", false), ("status rate unlimited", true)] {
        let (mut baseline, mut lintel, mut seen) = (0f64, 0f64, 0);
        for _ in 0..P3_ROUNDS {
            let b = tokio::task::spawn_blocking(baseline_rate)
                .await
                .expect("the baseline thread panicked");
            match b {
                Ok(b) => baseline = baseline.max(b),
                Err(e) => {
                    println!("P3 baseline failed: {e}");
                    return;
                }
            }
            let run = lintel_events(n, |cfg| {
                if unlimited {
                    cfg.output.status_per_second = u32::MAX;
                }
            })
            .await;
            match run {
                Ok((secs, changes)) if n as f64 / secs > lintel => {
                    lintel = n as f64 / secs;
                    seen = changes;
                }
                Ok(_) => {}
                Err(e) => {
                    println!("P3 sandbox events/s ({label}) failed: {e}");
                    return;
                }
            }
        }
        println!(
            "P3 sandbox events/s: lintel={lintel:.0} baseline={baseline:.0} ratio={:.3} \
             ({label}; best of {P3_ROUNDS} rounds of N={n}; people_count changes on the bus in \
             the best round: {seen}; target ≥1M/s and ratio ≥0.5)",
            lintel / baseline
        );
    }
}

/// A `Name:   123 kB` field of a `/proc/self` file, in KiB.
fn proc_kib(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split(':').next() == Some(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The process's memory: (VmRSS, Pss) in KiB. RSS counts a shared page once per mapping,
/// and every module maps its driver's memory image (which stays shared until written), so
/// RSS overstates; PSS counts each physical page once, as a cgroup's memory limit does.
fn memory_kib() -> (u64, u64) {
    (
        proc_kib("/proc/self/status", "VmRSS"),
        proc_kib("/proc/self/smaps_rollup", "Pss"),
    )
}

/// Memory one P4 case grew by, in KiB.
struct Grown {
    rss: u64,
    pss: u64,
}

/// P4 for `m` idle modules: how many started, in how many seconds, and the memory growth.
async fn density(m: usize, pooling: bool) -> Result<(usize, f64, Grown), BoxError> {
    let bed = bed(|cfg| {
        if pooling {
            cfg.limits.max_modules = m as u32;
        }
    })
    .await?;
    let driver = install(&bed, lintel_bundled_drivers::fixtures::MISBEHAVE.component).await?;
    let modules: Vec<Module> = (0..m).map(|_| module(&bed, &driver, None)).collect();
    let ids: Vec<String> = modules.iter().map(|m| m.id.clone()).collect();
    let records: Vec<Box<dyn ErasedRecord>> = modules
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn ErasedRecord>)
        .collect();
    bed.store.create_all(&Actor::system(), records).await?;

    let before = memory_kib();
    let started = Instant::now();
    let n = bed.engine.start_all().await?;
    for id in &ids {
        bed.engine.settle(&bed.tenant, id).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = memory_kib();
    // A diagnostic: where the memory is (`LINTEL_BENCH_SMAPS=<dir>` keeps a copy of the
    // process's memory map with all modules running).
    if let Some(dir) = std::env::var_os("LINTEL_BENCH_SMAPS") {
        let to = std::path::Path::new(&dir).join(format!("smaps-{m}-{pooling}"));
        std::fs::copy("/proc/self/smaps", &to)?;
    }
    let running = bed.engine.running_modules();
    if n != m || running != m {
        return Err(format!("started {n} of {m} modules ({running} running)").into());
    }
    if let Some(e) = bed.engine.module_error(&bed.tenant, &ids[0])? {
        return Err(format!("module error: {e}").into());
    }
    bed.engine.shutdown().await;
    Ok((
        n,
        secs,
        Grown {
            rss: after.0.saturating_sub(before.0),
            pss: after.1.saturating_sub(before.1),
        },
    ))
}

/// Each case in a process of its own (this binary, `p4-case ALLOC M`), so the RSS it
/// reports is not shaped by the memory earlier cases left to the allocator.
fn p4() {
    let largest: usize = std::env::var("LINTEL_BENCH_MODULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut sizes: Vec<usize> = [100, 1_000, largest]
        .into_iter()
        .filter(|&s| s <= largest)
        .collect();
    sizes.dedup();
    let exe = std::env::current_exe().expect("the benchmark's own path");
    for alloc in ["on-demand", "pooling"] {
        for &m in &sizes {
            let status = std::process::Command::new(&exe)
                .args(["p4-case", alloc, &m.to_string()])
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => println!("P4 modules={m} alloc={alloc} failed: the case exited with {s}"),
                Err(e) => println!("P4 modules={m} alloc={alloc} failed: {e}"),
            }
        }
    }
}

/// One P4 case, printed as one line.
async fn p4_case(alloc: &str, m: usize) -> bool {
    match density(m, alloc == "pooling").await {
        Ok((n, secs, grown)) => {
            let per_module = |kib: u64| kib as f64 / n as f64;
            let per_gib = |kib: u64| (1024.0 * 1024.0 / per_module(kib).max(0.001)) as u64;
            println!(
                "P4 modules={n} alloc={alloc} start_s={secs:.3} \
                 pss_per_module_kib={:.1} modules_per_gib_pss={} \
                 rss_per_module_kib={:.1} modules_per_gib_rss={} \
                 (target ≥15000/GiB, start < 5 s)",
                per_module(grown.pss),
                per_gib(grown.pss),
                per_module(grown.rss),
                per_gib(grown.rss),
            );
            true
        }
        Err(e) => {
            println!("P4 modules={m} alloc={alloc} failed: {e}");
            false
        }
    }
}

/// The bare-wasmtime rate, on a current-thread runtime of its own.
fn baseline_rate() -> Result<f64, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(baseline_events_per_s(
            lintel_bundled_drivers::DEMO_OCCUPANCY.component,
            P3_EVENTS,
        ))
        .map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let [case, alloc, m, ..] = args.as_slice()
        && case == "p4-case"
    {
        let m: usize = m.parse().expect("p4-case ALLOC MODULES");
        std::process::exit(if rt.block_on(p4_case(alloc, m)) { 0 } else { 1 });
    }
    // `cargo bench --bench sandbox -- p3` (or `p4`) runs one of the two.
    let only: Vec<&String> = args.iter().filter(|a| *a == "p3" || *a == "p4").collect();
    let wanted = |row: &str| only.is_empty() || only.iter().any(|o| *o == row);
    if wanted("p3") {
        rt.block_on(p3());
    }
    if wanted("p4") {
        p4();
    }
}
