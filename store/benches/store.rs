//! Embedded store benchmark: durable config writes/s, reads/s, and listing latency at
//! 10k systems / 100k modules. Each figure is printed with a `ratio=` against raw redb
//! doing the same work in the same run (same machine, same disk).
//!
//! Run: `cargo bench -p lintel-store --bench store`

use lintel_model::{ControlSystem, IdKind, Module, new_id};
use lintel_store::{Actor, EmbeddedStore, ErasedRecord, ListOptions, Store, StoreExt};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::time::{Duration, Instant};

const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");

fn system(tenant: &str, i: usize) -> ControlSystem {
    ControlSystem {
        id: new_id(IdKind::System),
        tenant_id: tenant.into(),
        name: format!("Room {i:05}"),
        description: "Meeting room with a display and an occupancy sensor".into(),
        capacity: 8,
        bookable: true,
        features: vec!["display".into(), "vc".into()],
        zones: vec!["zone-building1".into(), format!("zone-level{}", i % 20)],
        ..Default::default()
    }
}

fn module(tenant: &str, sys: &str) -> Module {
    Module {
        id: new_id(IdKind::Module),
        tenant_id: tenant.into(),
        driver_id: "driver-display01".into(),
        control_system_id: Some(sys.into()),
        ip: Some("10.1.2.3".into()),
        port: Some(4352),
        ..Default::default()
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
    )
}

async fn time_list<F, Fut>(iterations: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        std::hint::black_box(f().await);
        samples.push(t.elapsed());
    }
    percentiles(samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let actor = Actor::system();
    println!(
        "embedded store (redb, fsync per commit), temp dir {}",
        dir.path().display()
    );

    // --- durable writes: raw redb, one ~400-byte value per committed transaction
    const WRITES: usize = 300;
    let raw_db = Database::create(dir.path().join("raw.redb")).unwrap();
    let value = serde_json::to_vec(&system("authority-bench", 0)).unwrap();
    let t = Instant::now();
    for i in 0..WRITES {
        let txn = raw_db.begin_write().unwrap();
        txn.open_table(RAW)
            .unwrap()
            .insert(format!("k{i}").as_str(), value.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let raw_writes = rate(WRITES, t.elapsed());

    let store = EmbeddedStore::open(&dir.path().join("lintel")).unwrap();
    let tenant = "authority-bench";
    let t = Instant::now();
    for i in 0..WRITES {
        store.create(&actor, system(tenant, i)).await.unwrap();
    }
    let writes = rate(WRITES, t.elapsed());
    println!(
        "writes (durable, one record + audit entry + indexes per commit): {writes:.0}/s; raw redb one value per commit {raw_writes:.0}/s; ratio={:.2}",
        writes / raw_writes
    );

    // --- populate 10k systems / 100k modules in batches (one commit per batch)
    let t = Instant::now();
    let mut systems = Vec::new();
    let mut inserted = 0;
    for chunk in 0..20 {
        let mut batch: Vec<Box<dyn ErasedRecord>> = Vec::new();
        for i in 0..500 {
            let s = system(tenant, chunk * 500 + i);
            for _ in 0..10 {
                batch.push(Box::new(module(tenant, &s.id)));
            }
            systems.push(s.id.clone());
            batch.push(Box::new(s));
        }
        inserted += batch.len();
        store.create_all(&actor, batch).await.unwrap();
    }
    println!(
        "batched writes (5,500 records + audit per commit): {:.0} records/s",
        rate(inserted, t.elapsed())
    );

    // --- reads
    const READS: usize = 100_000;
    let t = Instant::now();
    for i in 0..READS {
        let txn = raw_db.begin_read().unwrap();
        let table = txn.open_table(RAW).unwrap();
        std::hint::black_box(
            redb::ReadableTable::get(&table, format!("k{}", i % WRITES).as_str()).unwrap(),
        );
    }
    let raw_reads = rate(READS, t.elapsed());
    let t = Instant::now();
    for i in 0..READS {
        let s: Option<ControlSystem> = store
            .get(tenant, &systems[i % systems.len()])
            .await
            .unwrap();
        std::hint::black_box(s);
    }
    let reads = rate(READS, t.elapsed());
    println!(
        "reads (typed get, decoded): {reads:.0}/s; raw redb get {raw_reads:.0}/s; ratio={:.2}",
        reads / raw_reads
    );

    // --- listings at 10,300 systems / 100,000 modules
    let total_modules = store
        .list::<Module>(
            tenant,
            ListOptions {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .total;
    println!(
        "listing latency over {} systems / {total_modules} modules (p50 / p99 ms):",
        systems.len() + WRITES
    );
    let raw_scan = {
        let db = &raw_db;
        // Baseline: a raw redb range scan over as many keys as the modules table holds.
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(RAW).unwrap();
            for i in 0..total_modules {
                t.insert(format!("m{i:07}").as_str(), value.as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        time_list(20, || async {
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(RAW).unwrap();
            redb::ReadableTable::range(&t, "m".."n").unwrap().count()
        })
        .await
    };
    let store = &store;
    let cases: Vec<(&str, ListOptions)> = vec![
        ("systems, first page of 100", ListOptions::default()),
        (
            "systems, search `room 0999`",
            ListOptions {
                search: Some("room 0999".into()),
                ..Default::default()
            },
        ),
        (
            "systems in one zone (index, ~500)",
            ListOptions {
                limit: 1000,
                ..ListOptions::by("zone", "zone-level7")
            },
        ),
    ];
    for (name, opts) in cases {
        let (p50, p99) = time_list(20, || {
            let opts = opts.clone();
            async move {
                store
                    .list::<ControlSystem>(tenant, opts)
                    .await
                    .unwrap()
                    .items
                    .len()
            }
        })
        .await;
        println!("  {name}: {p50:.2} / {p99:.2}");
    }
    let sys = systems[systems.len() / 2].clone();
    let (p50, p99) = time_list(50, || {
        let sys = sys.clone();
        async move {
            store
                .list::<Module>(tenant, ListOptions::by("system", &sys))
                .await
                .unwrap()
                .items
                .len()
        }
    })
    .await;
    println!("  modules of one system (index, 10): {p50:.3} / {p99:.3}");
    let (p50, p99) = time_list(20, || async {
        store
            .list::<Module>(tenant, ListOptions::default())
            .await
            .unwrap()
            .items
            .len()
    })
    .await;
    println!(
        "  modules, first page of 100 with total count: {p50:.2} / {p99:.2}; raw redb scan of {total_modules} keys {:.2} / {:.2}; ratio={:.2}",
        raw_scan.0,
        raw_scan.1,
        p50 / raw_scan.0
    );
    let _ = Store::ping(store).await;
}
