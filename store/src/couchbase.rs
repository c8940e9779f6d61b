//! The Couchbase adapter, for production clusters.
//!
//! Layout (see `docs/couchbase.md`): one bucket, one scope (default `lintel`), one
//! collection per record kind (`tenant`, `zone`, `control_system`, …) plus `blob` for
//! driver components. Document key `"<tenant_id>/<id>"`; the document holds the
//! bookkeeping fields next to the record body:
//! `{"kind", "tenant_id", "id", "version", "schema", "deleted_at", "idx", "search", "body"}`.
//!
//! - Every SDK call runs under `timeout` (the SDK has none: a wrong password or a dead
//!   node would otherwise hang forever) and transient failures are retried with
//!   exponential backoff (`backon`).
//! - Writes are idempotent: a retried insert that finds its own document, or a retried
//!   replace that finds its own version, counts as done. Versions are compared-and-set
//!   with the document CAS.
//! - Listings use SQL++ with `request_plus` consistency over the indexes in
//!   `docs/couchbase.md`; single records are key-value reads.
//! - Not available from the Rust SDK: multi-document transactions (a batch is applied in
//!   order and stops at the first failure), a change feed from other processes (this
//!   store's feed carries its own writes), and snapshots (`export` reads each collection
//!   with `request_plus`, consistent per document).

use crate::{
    Change, Doc, MAX_PAGE, Page, Query, Result, Store, StoreError, Write, change_for, check_blob,
    check_size,
};
use backon::{ExponentialBuilder, Retryable};
use couchbase::authenticator::PasswordAuthenticator;
use couchbase::bucket::Bucket;
use couchbase::cluster::Cluster;
use couchbase::collection::Collection;
use couchbase::error::{Error as CbError, ErrorKind};
use couchbase::options::cluster_options::{ClusterOptions, TlsOptions};
use couchbase::options::diagnostic_options::PingOptions;
use couchbase::options::kv_options::{RemoveOptions, ReplaceOptions};
use couchbase::options::query_options::{QueryOptions, ScanConsistency};
use couchbase::results::diagnostics::PingState;
use couchbase::scope::Scope;
use couchbase::service_type::ServiceType;
use couchbase::transcoding;
use futures_util::TryStreamExt;
use lintel_model::IdKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

const BLOB_COLLECTION: &str = "blob";
const CHANGE_FEED_CAPACITY: usize = 4096;

/// How to reach the cluster (the `[store.couchbase]` section of `lintel.toml`).
#[derive(Clone)]
pub struct CouchbaseConfig {
    /// `couchbases://host` (TLS) or `couchbase://host` (plain, for labs only).
    pub url: String,
    pub username: String,
    pub password: String,
    pub bucket: String,
    pub scope: String,
    /// PEM file of the CA that signed the cluster's certificates (replaces the default
    /// roots when set).
    pub ca_file: Option<PathBuf>,
    /// Upper bound on every call to the cluster, including connecting.
    pub timeout: Duration,
    /// Attempts after the first for transient failures.
    pub retries: usize,
    /// Create the scope, collections and indexes if missing (needs a user allowed to;
    /// production normally creates them once, see `docs/couchbase.md`).
    pub create_layout: bool,
}

impl Default for CouchbaseConfig {
    fn default() -> Self {
        CouchbaseConfig {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            bucket: "lintel".into(),
            scope: "lintel".into(),
            ca_file: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            create_layout: false,
        }
    }
}

impl std::fmt::Debug for CouchbaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchbaseConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("bucket", &self.bucket)
            .field("scope", &self.scope)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A document as stored in a kind's collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    kind: String,
    tenant_id: String,
    id: String,
    version: u64,
    schema: u32,
    deleted_at: Option<i64>,
    idx: Vec<String>,
    search: String,
    body: Value,
}

impl Stored {
    fn of(doc: &Doc) -> Self {
        Stored {
            kind: doc.kind.name().into(),
            tenant_id: doc.tenant_id.clone(),
            id: doc.id.clone(),
            version: doc.version,
            schema: doc.schema,
            deleted_at: doc.deleted_at,
            idx: doc.index.clone(),
            search: doc.search.clone(),
            body: doc.body.clone(),
        }
    }

    fn into_doc(self, kind: IdKind) -> Doc {
        Doc {
            kind,
            tenant_id: self.tenant_id,
            id: self.id,
            version: self.version,
            schema: self.schema,
            deleted_at: self.deleted_at,
            index: self.idx,
            search: self.search,
            body: self.body,
        }
    }
}

/// A failure of one attempt: retried when transient.
#[derive(Debug)]
enum Attempt {
    Transient(String),
    Final(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Final(e)
    }
}

fn classify(e: &CbError) -> Attempt {
    match e.kind() {
        ErrorKind::TemporaryFailure
        | ErrorKind::ServerTimeout
        | ErrorKind::RequestCanceled
        | ErrorKind::DocumentLocked
        | ErrorKind::DurabilityAmbiguous
        | ErrorKind::DurabilityWriteInProgress
        | ErrorKind::DurableWriteRecommitInProgress
        | ErrorKind::RateLimitedFailure
        | ErrorKind::ServiceNotAvailable(_)
        // Just after a collection is created, nodes learn of it one by one.
        | ErrorKind::CollectionNotFound
        // Where the SDK reports dropped connections and other I/O trouble.
        | ErrorKind::OtherFailure(_) => Attempt::Transient(e.to_string()),
        ErrorKind::AuthenticationFailure => Attempt::Final(StoreError::Backend(
            "Couchbase refused the credentials".into(),
        )),
        _ => Attempt::Final(StoreError::Backend(e.to_string())),
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Writes to one key are serialised through one of these (by key hash), from the write
/// until its change is published, so the feed carries each key's changes in order.
const KEY_LOCKS: usize = 64;

pub struct CouchbaseStore {
    cfg: CouchbaseConfig,
    cluster: Cluster,
    bucket: Bucket,
    scope: Scope,
    changes: broadcast::Sender<Change>,
    key_locks: Vec<tokio::sync::Mutex<()>>,
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', ""))
}

impl CouchbaseStore {
    /// Connect, check the bucket answers, and (if `create_layout`) create the scope,
    /// collections and indexes.
    pub async fn connect(cfg: CouchbaseConfig) -> Result<Self> {
        let mut opts =
            ClusterOptions::new(PasswordAuthenticator::new(&cfg.username, &cfg.password).into());
        if let Some(ca) = &cfg.ca_file {
            use rustls_pki_types::pem::PemObject;
            let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
                rustls_pki_types::CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<std::result::Result<_, _>>())
                    .map_err(|e| backend(format!("cannot read CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(backend(format!(
                    "CA file {} has no certificate",
                    ca.display()
                )));
            }
            opts = opts.tls_options(TlsOptions::new().add_ca_certificates(certs));
        }
        let cluster = tokio::time::timeout(cfg.timeout, Cluster::connect(&cfg.url, opts))
            .await
            .map_err(|_| {
                backend(format!(
                    "no answer from Couchbase at {} within {} ms (wrong address or credentials?)",
                    cfg.url,
                    cfg.timeout.as_millis()
                ))
            })?
            .map_err(|e| backend(format!("cannot connect to Couchbase at {}: {e}", cfg.url)))?;
        let bucket = cluster.bucket(&cfg.bucket);
        let scope = bucket.scope(&cfg.scope);
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let store = CouchbaseStore {
            cfg,
            cluster,
            bucket,
            scope,
            changes,
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        };
        store.ping().await?;
        if store.cfg.create_layout {
            store.create_layout().await?;
        }
        Ok(store)
    }

    async fn create_layout(&self) -> Result<()> {
        let mgr = self.bucket.collections();
        let t = self.cfg.timeout;
        match tokio::time::timeout(t, mgr.create_scope(&self.cfg.scope, None)).await {
            Err(_) => return Err(StoreError::Timeout(t.as_millis() as u64)),
            Ok(Err(e)) if *e.kind() != ErrorKind::ScopeExists => return Err(backend(e)),
            Ok(_) => {}
        }
        let names = IdKind::ALL
            .iter()
            .map(|k| k.name())
            .chain([BLOB_COLLECTION]);
        for name in names {
            match tokio::time::timeout(t, mgr.create_collection(&self.cfg.scope, name, None, None))
                .await
            {
                Err(_) => return Err(StoreError::Timeout(t.as_millis() as u64)),
                Ok(Err(e)) if *e.kind() != ErrorKind::CollectionExists => {
                    return Err(backend(e));
                }
                Ok(_) => {}
            }
        }
        for kind in IdKind::ALL {
            for ddl in index_ddl(kind) {
                self.run_query(&ddl, QueryOptions::new()).await?;
            }
        }
        Ok(())
    }

    fn collection(&self, kind: IdKind) -> Collection {
        self.scope.collection(kind.name())
    }

    fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(self.cfg.retries)
            .with_jitter()
    }

    /// Run `op` under the timeout, retrying transient failures (and timeouts, which
    /// every write here tolerates by being idempotent).
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
    {
        let timeout = self.cfg.timeout;
        let mut op = op;
        let attempt = || {
            let fut = op();
            async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Attempt::Transient(format!(
                        "timed out after {} ms",
                        timeout.as_millis()
                    ))),
                }
            }
        };
        match attempt
            .retry(self.retry_policy())
            .when(|e| matches!(e, Attempt::Transient(_)))
            .notify(|e, after| tracing::warn!(operation = what, error = ?e, retry_in = ?after, "Couchbase call failed; retrying"))
            .await
        {
            Ok(v) => Ok(v),
            Err(Attempt::Final(e)) => Err(e),
            Err(Attempt::Transient(m)) if m.starts_with("timed out") => {
                Err(StoreError::Timeout(timeout.as_millis() as u64))
            }
            Err(Attempt::Transient(m)) => Err(backend(format!("{what}: {m}"))),
        }
    }

    /// The stored document and its CAS, or `None`.
    async fn fetch(
        coll: &Collection,
        key: &str,
    ) -> std::result::Result<Option<(Stored, u64)>, Attempt> {
        match coll.get(key, None).await {
            Ok(r) => {
                let stored: Stored = r.content_as().map_err(|e| {
                    Attempt::Final(backend(format!("unreadable document {key}: {e}")))
                })?;
                Ok(Some((stored, r.cas())))
            }
            Err(e) if *e.kind() == ErrorKind::DocumentNotFound => Ok(None),
            Err(e) => Err(classify(&e)),
        }
    }

    async fn run_query(&self, statement: &str, opts: QueryOptions) -> Result<Vec<Value>> {
        let opts = opts
            .scan_consistency(ScanConsistency::RequestPlus)
            .server_timeout(self.cfg.timeout);
        self.call("query", || {
            let opts = opts.clone();
            async move {
                let mut res = self
                    .scope
                    .query(statement, opts)
                    .await
                    .map_err(|e| classify(&e))?;
                res.rows::<Value>()
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| classify(&e))
            }
        })
        .await
    }

    /// Apply one write; returns the document it replaced.
    async fn apply(&self, w: &Write) -> Result<Option<Doc>> {
        let (kind, tenant, id) = match w {
            Write::Insert(d) | Write::Replace { doc: d, .. } => {
                (d.kind, d.tenant_id.as_str(), d.id.as_str())
            }
            Write::Purge {
                kind,
                tenant_id,
                id,
                ..
            } => (*kind, tenant_id.as_str(), id.as_str()),
        };
        let key = format!("{tenant}/{id}");
        let coll = self.collection(kind);
        let not_found = || StoreError::NotFound {
            kind,
            id: id.to_string(),
        };
        let conflict = |expected: u64, actual: u64| StoreError::Conflict {
            kind,
            id: id.to_string(),
            expected,
            actual,
        };
        match w {
            Write::Insert(doc) => {
                let new = Stored::of(doc);
                check_size(doc, serde_json::to_vec(&new.body).map_err(backend)?.len())?;
                let attempts = AtomicU32::new(0);
                self.call("insert", || async {
                    let retry = attempts.fetch_add(1, Ordering::Relaxed) > 0;
                    match coll.insert(&key, &new, None).await {
                        Ok(_) => Ok(None),
                        Err(e) if *e.kind() == ErrorKind::DocumentExists => {
                            // Our own earlier attempt (timed out after it landed)?
                            match Self::fetch(&coll, &key).await? {
                                Some((cur, _)) if retry && cur == new => Ok(None),
                                _ => Err(Attempt::Final(StoreError::AlreadyExists {
                                    kind,
                                    id: id.to_string(),
                                })),
                            }
                        }
                        Err(e) if *e.kind() == ErrorKind::ValueTooLarge => {
                            Err(Attempt::Final(StoreError::TooLarge {
                                kind,
                                id: id.to_string(),
                                size: 0,
                                limit: crate::MAX_DOC_BYTES,
                            }))
                        }
                        Err(e) => Err(classify(&e)),
                    }
                })
                .await
            }
            Write::Replace {
                doc,
                expected_version,
            } => {
                let new = Stored::of(doc);
                check_size(doc, serde_json::to_vec(&new.body).map_err(backend)?.len())?;
                let attempts = AtomicU32::new(0);
                self.call("replace", || async {
                    let retry = attempts.fetch_add(1, Ordering::Relaxed) > 0;
                    let Some((cur, cas)) = Self::fetch(&coll, &key).await? else {
                        return Err(Attempt::Final(not_found()));
                    };
                    if retry && cur == new {
                        // Landed in an earlier attempt whose answer was lost.
                        return Ok(None);
                    }
                    if cur.version != *expected_version {
                        return Err(Attempt::Final(conflict(*expected_version, cur.version)));
                    }
                    match coll
                        .replace(&key, &new, ReplaceOptions::new().cas(cas))
                        .await
                    {
                        Ok(_) => Ok(Some(cur.into_doc(kind))),
                        // Someone wrote between our read and write: read again.
                        Err(e) if *e.kind() == ErrorKind::CasMismatch => {
                            Err(Attempt::Transient("CAS mismatch".into()))
                        }
                        Err(e) => Err(classify(&e)),
                    }
                })
                .await
            }
            Write::Purge {
                expected_version, ..
            } => {
                let mut tried = false;
                self.call("purge", || {
                    let first = !tried;
                    tried = true;
                    let (coll, key) = (coll.clone(), key.clone());
                    async move {
                        let Some((cur, cas)) = Self::fetch(&coll, &key).await? else {
                            // Gone: our own earlier attempt removed it, or it never was.
                            return if first {
                                Err(Attempt::Final(not_found()))
                            } else {
                                Ok(None)
                            };
                        };
                        if cur.version != *expected_version {
                            return Err(Attempt::Final(conflict(*expected_version, cur.version)));
                        }
                        if cur.deleted_at.is_none() {
                            return Err(Attempt::Final(StoreError::NotDeleted {
                                kind,
                                id: id.to_string(),
                            }));
                        }
                        match coll.remove(&key, RemoveOptions::new().cas(cas)).await {
                            Ok(_) => Ok(Some(cur.into_doc(kind))),
                            Err(e) if *e.kind() == ErrorKind::CasMismatch => {
                                Err(Attempt::Transient("CAS mismatch".into()))
                            }
                            Err(e) => Err(classify(&e)),
                        }
                    }
                })
                .await
            }
        }
    }
}

/// The SQL++ indexes each kind's collection needs (also listed in `docs/couchbase.md`).
pub fn index_ddl(kind: IdKind) -> [String; 2] {
    let c = quote(kind.name());
    [
        format!("CREATE INDEX IF NOT EXISTS lintel_list ON {c}(tenant_id, id, deleted_at)"),
        format!(
            "CREATE INDEX IF NOT EXISTS lintel_idx ON {c}(DISTINCT ARRAY e FOR e IN idx END, tenant_id, id)"
        ),
    ]
}

/// The `WHERE` clause and parameters of a listing.
fn where_clause(q: &Query) -> Result<(String, Vec<(&'static str, Value)>)> {
    // `IS [NOT] VALUED`: null and missing alike.
    let mut clauses = vec![if q.deleted {
        "d.deleted_at IS VALUED".to_string()
    } else {
        "d.deleted_at IS NOT VALUED".to_string()
    }];
    let mut params: Vec<(&'static str, Value)> = Vec::new();
    match &q.tenant_id {
        Some(t) => {
            clauses.push("d.tenant_id = $tenant".into());
            params.push(("tenant", Value::String(t.clone())));
        }
        None => clauses.push("d.tenant_id IS VALUED".into()),
    }
    if let Some((name, value)) = &q.index {
        clauses.push("ANY e IN d.idx SATISFIES e = $entry END".into());
        params.push(("entry", Value::String(crate::index_entry(name, value))));
    }
    if let Some(s) = &q.search {
        clauses.push("CONTAINS(d.search, $search)".into());
        params.push(("search", Value::String(s.to_lowercase())));
    }
    Ok((clauses.join(" AND "), params))
}

fn with_params(mut opts: QueryOptions, params: &[(&'static str, Value)]) -> Result<QueryOptions> {
    for (k, v) in params {
        opts = opts.add_named_parameter(*k, v).map_err(backend)?;
    }
    Ok(opts)
}

#[async_trait::async_trait]
impl Store for CouchbaseStore {
    async fn get_doc(&self, kind: IdKind, tenant_id: &str, id: &str) -> Result<Option<Doc>> {
        let coll = self.collection(kind);
        let key = format!("{tenant_id}/{id}");
        let got = self.call("get", || Self::fetch(&coll, &key)).await?;
        Ok(got.map(|(s, _)| s.into_doc(kind)))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        use std::hash::{Hash, Hasher};
        for w in &writes {
            let (kind, tenant, id) = w.target();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (kind, tenant, id).hash(&mut h);
            let _key = self.key_locks[h.finish() as usize % KEY_LOCKS].lock().await;
            let old = self.apply(w).await?;
            let _ = self.changes.send(change_for(w, old.as_ref()));
        }
        Ok(())
    }

    async fn query(&self, q: Query) -> Result<Page> {
        if q.limit == 0 || q.limit > MAX_PAGE {
            return Err(StoreError::BadQuery(format!(
                "limit must be 1–{MAX_PAGE}, got {}",
                q.limit
            )));
        }
        let coll = quote(q.kind.name());
        let (filter, mut params) = where_clause(&q)?;
        let count = self
            .run_query(
                &format!("SELECT RAW COUNT(*) FROM {coll} AS d WHERE {filter}"),
                with_params(QueryOptions::new(), &params)?,
            )
            .await?;
        let total = count.first().and_then(Value::as_u64).unwrap_or(0);
        let mut page_filter = filter;
        if let Some(after) = &q.after {
            let (t, i) = after
                .split_once('/')
                .ok_or_else(|| StoreError::BadQuery(format!("bad cursor `{after}`")))?;
            match q.tenant_id.as_deref() {
                None => {
                    page_filter.push_str(" AND [d.tenant_id, d.id] > [$after_tenant, $after_id]");
                    params.push(("after_tenant", Value::String(t.into())));
                    params.push(("after_id", Value::String(i.into())));
                }
                // Within a tenant the index on (tenant_id, id) serves `id > $after_id`.
                Some(tenant) if t == tenant => {
                    page_filter.push_str(" AND d.id > $after_id");
                    params.push(("after_id", Value::String(i.into())));
                }
                Some(tenant) if t < tenant => {} // a cursor before this tenant: from the start
                Some(_) => {
                    return Ok(Page {
                        docs: vec![],
                        total,
                        next: None,
                    });
                }
            }
        }
        let statement = format!(
            "SELECT RAW d FROM {coll} AS d WHERE {page_filter} ORDER BY d.tenant_id, d.id LIMIT {} OFFSET {}",
            q.limit + 1,
            q.offset
        );
        let rows = self
            .run_query(&statement, with_params(QueryOptions::new(), &params)?)
            .await?;
        let mut docs = rows
            .into_iter()
            .map(|v| serde_json::from_value::<Stored>(v).map(|s| s.into_doc(q.kind)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(backend)?;
        let more = docs.len() > q.limit;
        docs.truncate(q.limit);
        let next = if more {
            docs.last().map(Doc::cursor)
        } else {
            None
        };
        Ok(Page { docs, total, next })
    }

    async fn export(&self) -> Result<Vec<Doc>> {
        let mut out = Vec::new();
        for kind in IdKind::ALL {
            let rows = self
                .run_query(
                    &format!(
                        "SELECT RAW d FROM {} AS d WHERE d.tenant_id IS VALUED",
                        quote(kind.name())
                    ),
                    QueryOptions::new(),
                )
                .await?;
            for v in rows {
                let s: Stored = serde_json::from_value(v).map_err(backend)?;
                out.push(s.into_doc(kind));
            }
        }
        Ok(out)
    }

    async fn put_blob(&self, tenant_id: &str, hash: &str, bytes: Vec<u8>) -> Result<()> {
        check_blob(hash, bytes.len())?;
        let coll = self.scope.collection(BLOB_COLLECTION);
        let key = format!("{tenant_id}/{}", hash.to_ascii_lowercase());
        let (encoded, flags) = transcoding::raw_binary::encode(&bytes).map_err(backend)?;
        // Content-addressed: an upsert of the same key writes the same bytes.
        self.call("put blob", || async {
            coll.upsert_raw(&key, encoded, flags, None)
                .await
                .map(drop)
                .map_err(|e| classify(&e))
        })
        .await
    }

    async fn get_blob(&self, tenant_id: &str, hash: &str) -> Result<Option<Vec<u8>>> {
        let coll = self.scope.collection(BLOB_COLLECTION);
        let key = format!("{tenant_id}/{}", hash.to_ascii_lowercase());
        self.call("get blob", || async {
            match coll.get(&key, None).await {
                Ok(r) => {
                    let (content, flags) = r.content_as_raw();
                    let bytes = transcoding::raw_binary::decode(content, flags)
                        .map_err(|e| Attempt::Final(backend(e)))?;
                    Ok(Some(bytes.to_vec()))
                }
                Err(e) if *e.kind() == ErrorKind::DocumentNotFound => Ok(None),
                Err(e) => Err(classify(&e)),
            }
        })
        .await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        let opts = PingOptions::new()
            .service_types(vec![ServiceType::KV])
            .kv_timeout(self.cfg.timeout);
        let report = tokio::time::timeout(self.cfg.timeout, self.bucket.ping(opts))
            .await
            .map_err(|_| StoreError::Timeout(self.cfg.timeout.as_millis() as u64))?
            .map_err(backend)?;
        let ok = report
            .services
            .get(&ServiceType::KV)
            .is_some_and(|eps| !eps.is_empty() && eps.iter().all(|e| e.state == PingState::Ok));
        let _ = &self.cluster;
        if ok {
            Ok(())
        } else {
            Err(backend(format!(
                "bucket `{}` does not answer on every data node",
                self.cfg.bucket
            )))
        }
    }

    fn backend_name(&self) -> &'static str {
        "couchbase"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_filters_are_parameters_never_spliced_text() {
        let mut q = Query::new(IdKind::Module, Some("authority-x"));
        q.index = Some(("system".into(), "sys-1' OR 1=1 --".into()));
        q.search = Some("Board`room".into());
        let (clause, params) = where_clause(&q).unwrap();
        assert!(
            !clause.contains("OR 1=1") && !clause.contains("Board"),
            "{clause}"
        );
        assert_eq!(params.len(), 3);
        assert_eq!(params[2].1, Value::String("board`room".into()));
        assert_eq!(quote("con`trol"), "`control`");
    }

    #[test]
    fn config_debug_hides_the_password() {
        let c = CouchbaseConfig {
            password: "hunter2-canary".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("canary"));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_within_the_timeout() {
        // 127.0.0.1:1 refuses connections; the SDK alone would retry forever.
        let started = std::time::Instant::now();
        let err = CouchbaseStore::connect(CouchbaseConfig {
            url: "couchbase://127.0.0.1:1".into(),
            username: "u".into(),
            password: "p".into(),
            timeout: Duration::from_millis(600),
            ..Default::default()
        })
        .await
        .err()
        .expect("no cluster there");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.to_string().contains("no answer from Couchbase"),
            "{err}"
        );
    }
}
