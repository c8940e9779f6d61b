//! The `Store` conformance suite, run against every backend.
//!
//! - `embedded::*`: one test per case on a fresh redb data directory.
//! - `couchbase_conformance`: every case in turn against a real cluster when
//!   `LINTEL_COUCHBASE_URL` is set (see `docs/couchbase.md`); otherwise it prints an
//!   explicit `SKIP` line (shown by nextest, see `.config/nextest.toml`).
//!
//! Tier: integration (real database files, a real child process killed mid-write).

mod cases;
mod fixture;

use fixture::{CouchbaseFixture, EmbeddedFixture, Fixture};

macro_rules! embedded_cases {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let fx = super::EmbeddedFixture::new();
                    super::cases::$case(&fx).await;
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn couchbase_conformance() {
            let Some(fx) = CouchbaseFixture::from_env().await else {
                eprintln!(
                    "SKIP couchbase conformance: LINTEL_COUCHBASE_URL is not set \
                     (see docs/couchbase.md to run it against a cluster)"
                );
                return;
            };
            $(
                eprintln!("couchbase: {}", stringify!($case));
                cases::$case(&fx).await;
            )*
        }
    };
}

embedded_cases!(
    crud_and_duplicate_ids,
    compare_and_swap_conflict,
    concurrent_writers_lose_no_update,
    tenant_isolation,
    soft_delete_restore_and_purge,
    refresh_tokens_are_purged_with_their_module,
    pagination_is_stable_under_concurrent_inserts,
    secondary_indexes_and_search,
    change_feed_delivers_every_change_in_order_per_key,
    document_size_limit,
    persistence_across_reopen,
    audit_trail_redacts_secrets,
    blobs_round_trip_and_are_bounded,
    backup_restore_round_trip,
    damaged_backups_write_nothing,
    sigkill_during_write_burst_loses_no_acknowledged_write,
);

/// Not a test: the child process the SIGKILL case starts (this same binary, run with
/// `--ignored --exact crash_child`). It writes records as fast as it can and prints
/// `ACK <id>` after each write returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run only as the child of the SIGKILL conformance case"]
async fn crash_child() {
    cases::crash_child_main().await;
}

/// Embedded-only: the second process to open a data directory gets a clear error.
#[tokio::test]
async fn embedded_second_opener_is_refused() {
    let fx = EmbeddedFixture::new();
    let _first = fx.open().await;
    let err = lintel_store::EmbeddedStore::open(fx.dir())
        .err()
        .expect("a second open must fail");
    assert!(
        matches!(err, lintel_store::StoreError::Locked { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("in use by another Lintel process"));
}

/// Embedded-only: a data directory written by the first release (schema 1) is migrated
/// when it opens. The fixture holds records exactly as that release stored them.
#[tokio::test]
async fn embedded_schema_1_data_dir_is_migrated() {
    cases::schema_1_fixture_is_migrated().await;
}

/// Embedded-only: a data directory written by a newer Lintel is refused with a clear
/// error, not misread.
#[tokio::test]
async fn embedded_newer_data_is_refused() {
    let fx = EmbeddedFixture::new();
    drop(fx.open().await);
    {
        let db = redb::Database::open(fx.dir().join("lintel.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("schema", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = lintel_store::EmbeddedStore::open(fx.dir())
        .err()
        .expect("newer data must be refused");
    assert!(err.to_string().contains("newer Lintel (schema 99"), "{err}");
}
