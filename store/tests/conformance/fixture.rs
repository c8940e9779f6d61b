//! How the suite opens each backend.

use lintel_store::{CouchbaseConfig, CouchbaseStore, EmbeddedStore, Store};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[async_trait::async_trait]
pub trait Fixture: Send + Sync {
    /// The store under test (the same data every time it is opened).
    async fn open(&self) -> Arc<dyn Store>;
    /// A different, empty store (a restore target).
    async fn open_empty(&self) -> Arc<dyn Store>;
    /// Environment for a child process to open the same store as [`open`](Self::open).
    fn child_env(&self) -> Vec<(String, String)>;
    /// Whether reopening needs the previous handle dropped first (a file lock).
    fn exclusive(&self) -> bool;
}

pub struct EmbeddedFixture {
    main: tempfile::TempDir,
    extra: Mutex<Vec<tempfile::TempDir>>,
}

impl EmbeddedFixture {
    pub fn new() -> Self {
        EmbeddedFixture {
            main: tempfile::tempdir().expect("temp dir"),
            extra: Mutex::new(Vec::new()),
        }
    }
    pub fn dir(&self) -> &Path {
        self.main.path()
    }
}

#[async_trait::async_trait]
impl Fixture for EmbeddedFixture {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(self.main.path()).expect("open embedded store"))
    }
    async fn open_empty(&self) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open embedded store");
        self.extra.lock().unwrap().push(dir);
        Arc::new(store)
    }
    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("LINTEL_TEST_CRASH_BACKEND".into(), "embedded".into()),
            (
                "LINTEL_TEST_CRASH_DIR".into(),
                self.main.path().display().to_string(),
            ),
        ]
    }
    fn exclusive(&self) -> bool {
        true
    }
}

/// A real Couchbase cluster from `LINTEL_COUCHBASE_URL`, `LINTEL_COUCHBASE_USERNAME`,
/// `LINTEL_COUCHBASE_PASSWORD`, `LINTEL_COUCHBASE_BUCKET` (and optionally
/// `LINTEL_COUCHBASE_CA_FILE`). Each run creates fresh scopes (`tauthority_…`): use a
/// scratch bucket.
pub struct CouchbaseFixture {
    base: CouchbaseConfig,
    scope: String,
    extra_scopes: Mutex<Vec<String>>,
}

impl CouchbaseFixture {
    pub async fn from_env() -> Option<Self> {
        let url = std::env::var("LINTEL_COUCHBASE_URL").ok()?;
        let var = |k: &str| std::env::var(k).ok();
        let base = CouchbaseConfig {
            url,
            username: var("LINTEL_COUCHBASE_USERNAME").unwrap_or_else(|| "Administrator".into()),
            password: var("LINTEL_COUCHBASE_PASSWORD").unwrap_or_else(|| "password".into()),
            bucket: var("LINTEL_COUCHBASE_BUCKET").unwrap_or_else(|| "lintel".into()),
            ca_file: var("LINTEL_COUCHBASE_CA_FILE").map(PathBuf::from),
            ..CouchbaseConfig::default()
        };
        Some(CouchbaseFixture {
            scope: fresh_scope(),
            base,
            extra_scopes: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self, scope: &str) -> Arc<dyn Store> {
        let cfg = CouchbaseConfig {
            scope: scope.into(),
            create_layout: true,
            ..self.base.clone()
        };
        Arc::new(
            CouchbaseStore::connect(cfg)
                .await
                .expect("connect to Couchbase"),
        )
    }
}

fn fresh_scope() -> String {
    format!(
        "t{}",
        lintel_model::new_id(lintel_model::IdKind::Tenant).replace(['-'], "_")
    )
}

#[async_trait::async_trait]
impl Fixture for CouchbaseFixture {
    async fn open(&self) -> Arc<dyn Store> {
        self.connect(&self.scope).await
    }
    async fn open_empty(&self) -> Arc<dyn Store> {
        let scope = fresh_scope();
        self.extra_scopes.lock().unwrap().push(scope.clone());
        self.connect(&scope).await
    }
    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("LINTEL_TEST_CRASH_BACKEND".into(), "couchbase".into()),
            ("LINTEL_TEST_CRASH_SCOPE".into(), self.scope.clone()),
        ]
    }
    fn exclusive(&self) -> bool {
        false
    }
}

/// Open the store the crash child was told to (see [`Fixture::child_env`]).
pub async fn open_for_child() -> Arc<dyn Store> {
    match std::env::var("LINTEL_TEST_CRASH_BACKEND").as_deref() {
        Ok("embedded") => {
            let dir = std::env::var("LINTEL_TEST_CRASH_DIR").expect("LINTEL_TEST_CRASH_DIR");
            Arc::new(EmbeddedStore::open(Path::new(&dir)).expect("open embedded store"))
        }
        Ok("couchbase") => {
            let fx = CouchbaseFixture::from_env()
                .await
                .expect("LINTEL_COUCHBASE_URL for the couchbase crash child");
            let scope = std::env::var("LINTEL_TEST_CRASH_SCOPE").expect("LINTEL_TEST_CRASH_SCOPE");
            fx.connect(&scope).await
        }
        other => panic!("crash_child runs only under the SIGKILL case (backend {other:?})"),
    }
}
