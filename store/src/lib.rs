//! The `Store`: where Lintel keeps configuration and secrets.
//!
//! One trait, [`Store`], with an adapter per backend, both held to one conformance suite
//! (`store/tests/conformance.rs`):
//! - [`EmbeddedStore`] (redb), the default: one file in the data directory, durable when
//!   a call returns, crash-safe, locked against a second process.
//! - `CouchbaseStore` (cargo feature `couchbase`, on in the `lintel` binary) for production
//!   clusters: one collection per record kind, every call under a timeout, transient
//!   failures retried, writes idempotent.
//!
//! The raw trait moves [`Doc`]s; [`StoreExt`] adds typed records, validation, the audit
//! trail and soft delete on top. Every key and query names a tenant, so no call can reach
//! another tenant's records.

#![recursion_limit = "256"] // the Couchbase SDK's futures are deeply nested

mod backup;
mod cache;
#[cfg(feature = "couchbase")]
mod couchbase;
mod doc;
mod embedded;
mod typed;

pub use backup::{BackupSummary, RestoreError, check_backup, restore, write_backup};
pub use cache::FeedCache;
#[cfg(feature = "couchbase")]
pub use couchbase::{CouchbaseConfig, CouchbaseStore};
pub use doc::{doc_from_body, migrate_doc};
pub use embedded::EmbeddedStore;
pub use typed::{Actor, ErasedRecord, Event, ListOptions, ListPage, StoreExt, purge_expired};

use lintel_model::{AuditAction, IdKind};
use serde_json::Value;
use tokio::sync::broadcast;

/// The largest record the store accepts (its JSON body). Couchbase allows 20 MiB; a
/// configuration record anywhere near this is a mistake, so the limit is far lower.
pub const MAX_DOC_BYTES: usize = 1024 * 1024;
/// The largest blob (a driver component) the store accepts.
pub const MAX_BLOB_BYTES: usize = 16 * 1024 * 1024;
/// The most records one page of a listing returns.
pub const MAX_PAGE: usize = 10_000;

/// A stored record: identity, bookkeeping and its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub kind: IdKind,
    pub tenant_id: String,
    pub id: String,
    pub version: u64,
    /// The schema version the body was written with (see `lintel_model::SCHEMA_VERSION`).
    pub schema: u32,
    /// Set when soft-deleted (seconds since the epoch): a tombstone, restorable until purged.
    pub deleted_at: Option<i64>,
    /// Secondary-index entries, each `"<index>=<value>"` (`system=sys-…`).
    pub index: Vec<String>,
    /// Lower-case text that searches match.
    pub search: String,
    pub body: Value,
}

impl Doc {
    /// The key a listing cursor refers to: `<tenant>/<id>`.
    pub fn cursor(&self) -> String {
        format!("{}/{}", self.tenant_id, self.id)
    }
}

/// One write in a [`Store::commit`] batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// A new record; `AlreadyExists` if the id is taken (even by a tombstone).
    Insert(Doc),
    /// Replace if the stored version is still `expected_version` (compare-and-swap),
    /// else `Conflict`. Soft delete and restore are replacements that set or clear
    /// `deleted_at`.
    Replace { doc: Doc, expected_version: u64 },
    /// Remove a tombstone for good (after the retention window).
    Purge {
        kind: IdKind,
        tenant_id: String,
        id: String,
        expected_version: u64,
    },
}

impl Write {
    fn target(&self) -> (IdKind, &str, &str) {
        match self {
            Write::Insert(d) | Write::Replace { doc: d, .. } => (d.kind, &d.tenant_id, &d.id),
            Write::Purge {
                kind,
                tenant_id,
                id,
                ..
            } => (*kind, tenant_id, id),
        }
    }
}

/// What changed, published on the change feed once the write is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: IdKind,
    pub tenant_id: String,
    pub id: String,
    pub version: u64,
    pub action: AuditAction,
}

/// A listing: records of one kind in one tenant (or all tenants), optionally narrowed by
/// a secondary index and a search, in stable `(tenant, id)` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub kind: IdKind,
    /// `None` lists across tenants: only for tenants themselves and sysadmin tooling.
    pub tenant_id: Option<String>,
    /// `(index, value)`, e.g. `("system", "sys-…")`.
    pub index: Option<(String, String)>,
    /// Case-insensitive substring of the record's search text.
    pub search: Option<String>,
    /// `false`: live records; `true`: tombstones only.
    pub deleted: bool,
    /// Continue after this cursor ([`Page::next`]): stable under concurrent inserts.
    pub after: Option<String>,
    /// Skip this many matches after the cursor (PlaceOS `offset`; not stable under
    /// concurrent inserts, unlike the cursor).
    pub offset: usize,
    /// At most this many records (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

impl Query {
    pub fn new(kind: IdKind, tenant_id: Option<&str>) -> Self {
        Query {
            kind,
            tenant_id: tenant_id.map(String::from),
            index: None,
            search: None,
            deleted: false,
            after: None,
            offset: 0,
            limit: 100,
        }
    }

    /// Whether a stored doc passes the filters (everything but cursor and paging).
    pub fn matches(&self, doc: &Doc) -> bool {
        doc.kind == self.kind
            && self.tenant_id.as_ref().is_none_or(|t| *t == doc.tenant_id)
            && doc.deleted_at.is_some() == self.deleted
            && self
                .index
                .as_ref()
                .is_none_or(|(k, v)| doc.index.iter().any(|e| *e == index_entry(k, v)))
            && self
                .search
                .as_ref()
                .is_none_or(|q| doc.search.contains(&q.to_lowercase()))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub docs: Vec<Doc>,
    /// How many records match the filters in all (ignoring cursor, offset and limit).
    pub total: u64,
    /// The cursor for the next page, if more remain.
    pub next: Option<String>,
}

/// `"<index>=<value>"`, the form index entries are stored in.
pub fn index_entry(index: &str, value: &str) -> String {
    format!("{index}={value}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} `{id}` already exists")]
    AlreadyExists { kind: IdKind, id: String },
    #[error("{kind} `{id}` not found")]
    NotFound { kind: IdKind, id: String },
    #[error(
        "{kind} `{id}` was changed by someone else: expected version {expected}, found {actual}"
    )]
    Conflict {
        kind: IdKind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} `{id}` is {size} bytes; the limit is {limit}")]
    TooLarge {
        kind: IdKind,
        id: String,
        size: usize,
        limit: usize,
    },
    #[error("{kind} `{id}` is live: delete it before purging it")]
    NotDeleted { kind: IdKind, id: String },
    #[error(
        "the store was written by a newer Lintel (schema {found}; this one reads up to {supported}): upgrade Lintel, or restore a backup taken by this version"
    )]
    NewerData { found: u64, supported: u32 },
    #[error("the data directory {path} is in use by another Lintel process")]
    Locked { path: String },
    #[error("stored {kind} `{id}` is unreadable: {reason}")]
    Corrupt {
        kind: IdKind,
        id: String,
        reason: String,
    },
    #[error("bad listing: {0}")]
    BadQuery(String),
    #[error(transparent)]
    Invalid(#[from] lintel_model::ValidationError),
    #[error(transparent)]
    Migration(#[from] lintel_model::MigrationError),
    #[error("store backend timed out after {0} ms")]
    Timeout(u64),
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Configuration persistence. Every adapter passes `store/tests/conformance.rs`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One record of `kind` owned by `tenant_id` (tombstones included), or `None`.
    async fn get_doc(&self, kind: IdKind, tenant_id: &str, id: &str) -> Result<Option<Doc>>;

    /// Apply writes in order. The embedded store applies them atomically (all or none);
    /// Couchbase has no multi-document transactions in its Rust SDK, so it applies them
    /// one by one, each idempotently, and stops at the first failure.
    async fn commit(&self, writes: Vec<Write>) -> Result<()>;

    /// A page of a listing.
    async fn query(&self, query: Query) -> Result<Page>;

    /// Every record of every kind and tenant, tombstones included: what a backup holds.
    /// A consistent snapshot where the backend has snapshots (embedded).
    async fn export(&self) -> Result<Vec<Doc>>;

    /// Store an immutable blob (a driver component) under its content hash.
    async fn put_blob(&self, tenant_id: &str, hash: &str, bytes: Vec<u8>) -> Result<()>;
    async fn get_blob(&self, tenant_id: &str, hash: &str) -> Result<Option<Vec<u8>>>;

    /// Changes in commit order, after they are durable. A receiver that falls behind is
    /// told how many it missed (`RecvError::Lagged`) and should re-read what it watches.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Whether the backend answers (for readiness).
    async fn ping(&self) -> Result<()>;

    /// `embedded` or `couchbase`, for logs and backup headers.
    fn backend_name(&self) -> &'static str;
}

/// Refuse documents over [`MAX_DOC_BYTES`]; both adapters call this before writing.
pub(crate) fn check_size(doc: &Doc, encoded_len: usize) -> Result<()> {
    if encoded_len > MAX_DOC_BYTES {
        return Err(StoreError::TooLarge {
            kind: doc.kind,
            id: doc.id.clone(),
            size: encoded_len,
            limit: MAX_DOC_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn check_blob(hash: &str, len: usize) -> Result<()> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::BadQuery(format!(
            "blob key `{hash}` is not a SHA-256 hex digest"
        )));
    }
    if len > MAX_BLOB_BYTES {
        return Err(StoreError::TooLarge {
            kind: IdKind::Driver,
            id: hash.into(),
            size: len,
            limit: MAX_BLOB_BYTES,
        });
    }
    Ok(())
}

/// The change a successful write publishes, given the stored doc it replaced.
pub(crate) fn change_for(write: &Write, old: Option<&Doc>) -> Change {
    let (kind, tenant, id) = write.target();
    let (version, action) = match write {
        Write::Insert(d) => (d.version, AuditAction::Created),
        Write::Replace { doc, .. } => {
            let was_deleted = old.is_some_and(|o| o.deleted_at.is_some());
            let action = match (was_deleted, doc.deleted_at.is_some()) {
                (false, true) => AuditAction::Deleted,
                (true, false) => AuditAction::Restored,
                _ => AuditAction::Updated,
            };
            (doc.version, action)
        }
        Write::Purge {
            expected_version, ..
        } => (*expected_version, AuditAction::Purged),
    };
    Change {
        kind,
        tenant_id: tenant.to_string(),
        id: id.to_string(),
        version,
        action,
    }
}
