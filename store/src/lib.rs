//! The `Store`: where Lintel keeps configuration and secrets.
//!
//! One trait, [`Store`], with an adapter per backend. The embedded adapter
//! ([`EmbeddedStore`], redb) is the default: one file in the data directory, durable when a
//! call returns, locked against a second process. Every call is scoped to a tenant: the
//! tenant id is part of every key, so no call can reach another tenant's records.

mod embedded;
mod typed;

pub use embedded::EmbeddedStore;
pub use typed::{ErasedRecord, StoreExt};

use lintel_model::IdKind;
use tokio::sync::broadcast;

/// A stored record: its identity, version and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub kind: IdKind,
    pub tenant_id: String,
    pub id: String,
    pub version: u64,
    pub body: Vec<u8>,
}

/// What changed, published on the change feed after the write is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: IdKind,
    pub tenant_id: String,
    pub id: String,
    pub version: u64,
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
    #[error("the data directory {path} is in use by another Lintel process")]
    Locked { path: String },
    #[error("stored {kind} `{id}` is unreadable: {reason}")]
    Corrupt {
        kind: IdKind,
        id: String,
        reason: String,
    },
    #[error(transparent)]
    Invalid(#[from] lintel_model::ValidationError),
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Configuration persistence. Implementations must pass the conformance tests in
/// `store/src/embedded.rs` (`mod conformance`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One record of `kind` owned by `tenant_id`, or `None`.
    async fn get_doc(&self, kind: IdKind, tenant_id: &str, id: &str) -> Result<Option<Doc>>;

    /// Insert records atomically: all or none. Fails with `AlreadyExists` if any id is
    /// taken. Versions are stored as given.
    async fn insert_docs(&self, docs: Vec<Doc>) -> Result<()>;

    /// Replace a record if its stored version is still `expected_version`
    /// (compare-and-swap); otherwise `Conflict`. The new version is `doc.version`.
    async fn replace_doc(&self, doc: Doc, expected_version: u64) -> Result<()>;

    /// All records of `kind` owned by `tenant_id`, in id order. For tenants themselves,
    /// `tenant_id = None` lists every tenant.
    async fn list_docs(&self, kind: IdKind, tenant_id: Option<&str>) -> Result<Vec<Doc>>;

    /// Changes after they are durable. A receiver that falls behind is told how many it
    /// missed (`RecvError::Lagged`) and should re-read what it watches.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Whether the backend answers (for readiness).
    async fn ping(&self) -> Result<()>;
}
