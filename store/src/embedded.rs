//! The embedded default: one redb file in the data directory.
//!
//! Layout:
//! - one table per record kind (`kind.name()`): key `"<tenant_id>/<id>"`, value = a small
//!   binary header (magic `L2`, version, schema, deleted-at, search text, index entries)
//!   followed by the JSON body. Ids are validated (no `/`), so a tenant's records are
//!   exactly the keys starting with `"<tenant_id>/"`.
//! - `index`: key `"<kind>\0<tenant>\0<index>=<value>\0<id>"`, maintained in the same
//!   transaction as the record.
//! - `blob`: key `"<tenant_id>/<sha256>"` → the bytes of a driver component.
//!
//! Every commit is one redb write transaction with `Durability::Immediate` (fsync before
//! the call returns); redb's copy-on-write B-trees make a crash at any point leave either
//! the old or the new state. Schema-1 values (8-byte version + JSON, written by the first
//! release) are migrated when the store opens.

use crate::doc::migrate_doc;
use crate::{
    Change, Doc, MAX_PAGE, Page, Query, Result, Store, StoreError, Write, change_for, check_blob,
    check_size,
};
use lintel_model::{IdKind, SCHEMA_VERSION};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const FILE_NAME: &str = "lintel.redb";
const CHANGE_FEED_CAPACITY: usize = 4096;
const MAGIC: &[u8; 2] = b"L2";
const INDEX: TableDefinition<'static, &'static str, ()> = TableDefinition::new("index");
const BLOB: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("blob");
/// `schema` → the schema version every document in the file has been migrated to.
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");

fn table(kind: IdKind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.name())
}

fn key(tenant_id: &str, id: &str) -> String {
    format!("{tenant_id}/{id}")
}

fn index_key(kind: IdKind, tenant_id: &str, entry: &str, id: &str) -> String {
    format!("{}\0{tenant_id}\0{entry}\0{id}", kind.name())
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(kind: IdKind, id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        kind,
        id: id.to_string(),
        reason: reason.into(),
    }
}

/// The stored form of a doc (everything but kind, tenant and id, which are the key).
fn encode_value(doc: &Doc) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(&doc.body).map_err(backend)?;
    check_size(doc, body.len())?;
    // Index entries, each length-prefixed (a value may hold any character).
    let mut index = Vec::new();
    for e in &doc.index {
        index.extend_from_slice(&(e.len() as u32).to_be_bytes());
        index.extend_from_slice(e.as_bytes());
    }
    let mut v = Vec::with_capacity(34 + doc.search.len() + index.len() + body.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&doc.version.to_be_bytes());
    v.extend_from_slice(&doc.schema.to_be_bytes());
    v.extend_from_slice(&doc.deleted_at.unwrap_or(i64::MIN).to_be_bytes());
    for part in [doc.search.as_bytes(), index.as_slice()] {
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part);
    }
    v.extend_from_slice(&body);
    Ok(v)
}

/// The header of a stored value, borrowed from it.
struct Header<'a> {
    version: u64,
    schema: u32,
    deleted_at: Option<i64>,
    search: &'a str,
    /// Length-prefixed entries (see [`index_entries`]).
    index: &'a [u8],
    body: &'a [u8],
}

fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if raw.len() < n {
        return None;
    }
    let (head, rest) = raw.split_at(n);
    *raw = rest;
    Some(head)
}

fn parse_header(raw: &[u8]) -> Option<Header<'_>> {
    let mut r = raw;
    if take(&mut r, 2)? != MAGIC {
        return None;
    }
    let version = u64::from_be_bytes(take(&mut r, 8)?.try_into().ok()?);
    let schema = u32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?);
    let deleted = i64::from_be_bytes(take(&mut r, 8)?.try_into().ok()?);
    let mut part = || -> Option<&[u8]> {
        let n = u32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        take(&mut r, n)
    };
    let search = std::str::from_utf8(part()?).ok()?;
    let index = part()?;
    index_entries(index).try_for_each(|e| e.map(drop))?;
    Some(Header {
        version,
        schema,
        deleted_at: (deleted != i64::MIN).then_some(deleted),
        search,
        index,
        body: r,
    })
}

fn header<'a>(kind: IdKind, id: &str, raw: &'a [u8]) -> Result<Header<'a>> {
    parse_header(raw).ok_or_else(|| corrupt(kind, id, "damaged value header"))
}

/// The entries of a header's index part (`None` items mark damage).
fn index_entries(mut raw: &[u8]) -> impl Iterator<Item = Option<&str>> {
    std::iter::from_fn(move || {
        if raw.is_empty() {
            return None;
        }
        let entry = (|| {
            let n = u32::from_be_bytes(take(&mut raw, 4)?.try_into().ok()?) as usize;
            std::str::from_utf8(take(&mut raw, n)?).ok()
        })();
        if entry.is_none() {
            raw = &[]; // stop after reporting the damage once
        }
        Some(entry)
    })
}

fn index_list(index: &[u8]) -> Vec<String> {
    index_entries(index).flatten().map(String::from).collect()
}

fn decode_value(kind: IdKind, tenant_id: &str, id: &str, raw: &[u8]) -> Result<Doc> {
    let h = header(kind, id, raw)?;
    Ok(Doc {
        kind,
        tenant_id: tenant_id.to_string(),
        id: id.to_string(),
        version: h.version,
        schema: h.schema,
        deleted_at: h.deleted_at,
        index: index_list(h.index),
        search: h.search.to_string(),
        body: serde_json::from_slice(h.body).map_err(|e| corrupt(kind, id, e.to_string()))?,
    })
}

fn split_key(kind: IdKind, k: &str) -> Result<(&str, &str)> {
    k.split_once('/')
        .ok_or_else(|| corrupt(kind, k, "key without a tenant"))
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Held from the start of a write transaction until its changes are published, so
    /// the feed carries changes in commit order.
    write_lock: Arc<Mutex<()>>,
    changes: broadcast::Sender<Change>,
}

impl EmbeddedStore {
    /// Open (or create) the store in `data_dir`, migrating older documents. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: data_dir.display().to_string(),
            },
            other => backend(format!("cannot open {}: {other}", path.display())),
        })?;
        let migrated = upgrade(&db)?;
        if migrated > 0 {
            tracing::info!(documents = migrated, "migrated schema-1 documents");
        }
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            write_lock: Arc::new(Mutex::new(())),
            changes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `data_dir` holds a store (without opening or creating it).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(FILE_NAME).is_file()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| backend(format!("store task failed: {e}")))?
    }
}

/// Create missing tables and, unless the file says it is already at the current schema,
/// rewrite older documents at the current schema (schema-1 values have no header: an
/// 8-byte version and the JSON body), in one transaction. Refuses a file written by a
/// newer Lintel. Returns how many documents were rewritten.
fn upgrade(db: &Database) -> Result<usize> {
    let txn = db.begin_write().map_err(backend)?;
    txn.open_table(INDEX).map_err(backend)?;
    txn.open_table(BLOB).map_err(backend)?;
    let stored = txn
        .open_table(META)
        .map_err(backend)?
        .get("schema")
        .map_err(backend)?
        .map(|v| v.value());
    match stored {
        Some(s) if s == u64::from(SCHEMA_VERSION) => {
            txn.commit().map_err(backend)?;
            return Ok(0);
        }
        Some(s) if s > u64::from(SCHEMA_VERSION) => {
            return Err(StoreError::NewerData {
                found: s,
                supported: SCHEMA_VERSION,
            });
        }
        _ => {}
    }
    let mut rewritten = 0;
    for kind in IdKind::ALL {
        let old: Vec<Doc> = {
            let t = txn.open_table(table(kind)).map_err(backend)?;
            let mut old = Vec::new();
            for entry in t.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let (tenant, id) = split_key(kind, k.value())?;
                let raw = v.value();
                if raw.starts_with(MAGIC) {
                    let doc = decode_value(kind, tenant, id, raw)?;
                    if doc.schema > SCHEMA_VERSION {
                        return Err(StoreError::NewerData {
                            found: doc.schema.into(),
                            supported: SCHEMA_VERSION,
                        });
                    }
                    if doc.schema < SCHEMA_VERSION {
                        old.push(doc);
                    }
                    continue;
                }
                if raw.len() < 8 {
                    return Err(corrupt(kind, id, "schema-1 value shorter than its header"));
                }
                let (v, body) = raw.split_at(8);
                old.push(Doc {
                    kind,
                    tenant_id: tenant.into(),
                    id: id.into(),
                    version: u64::from_be_bytes(v.try_into().expect("8 bytes")),
                    schema: 1,
                    deleted_at: None,
                    index: Vec::new(),
                    search: String::new(),
                    body: serde_json::from_slice(body)
                        .map_err(|e| corrupt(kind, id, e.to_string()))?,
                });
            }
            old
        };
        for doc in old {
            let mut ix = txn.open_table(INDEX).map_err(backend)?;
            for e in &doc.index {
                ix.remove(index_key(doc.kind, &doc.tenant_id, e, &doc.id).as_str())
                    .map_err(backend)?;
            }
            drop(ix);
            for d in migrate_doc(doc)? {
                let mut t = txn.open_table(table(d.kind)).map_err(backend)?;
                t.insert(
                    key(&d.tenant_id, &d.id).as_str(),
                    encode_value(&d)?.as_slice(),
                )
                .map_err(backend)?;
                let mut ix = txn.open_table(INDEX).map_err(backend)?;
                for e in &d.index {
                    ix.insert(index_key(d.kind, &d.tenant_id, e, &d.id).as_str(), ())
                        .map_err(backend)?;
                }
                rewritten += 1;
            }
        }
    }
    txn.open_table(META)
        .map_err(backend)?
        .insert("schema", u64::from(SCHEMA_VERSION))
        .map_err(backend)?;
    txn.commit().map_err(backend)?;
    Ok(rewritten)
}

/// Apply one write inside a transaction; returns the stored doc it replaced.
fn apply(txn: &redb::WriteTransaction, w: &Write) -> Result<Option<Doc>> {
    let (kind, tenant, id) = w.target();
    let k = key(tenant, id);
    let mut t = txn.open_table(table(kind)).map_err(backend)?;
    let old = match t.get(k.as_str()).map_err(backend)? {
        Some(raw) => Some(decode_value(kind, tenant, id, raw.value())?),
        None => None,
    };
    let exists = || StoreError::AlreadyExists {
        kind,
        id: id.to_string(),
    };
    let not_found = || StoreError::NotFound {
        kind,
        id: id.to_string(),
    };
    let check_version = |old: &Doc, expected: u64| {
        if old.version == expected {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                kind,
                id: id.to_string(),
                expected,
                actual: old.version,
            })
        }
    };
    let new = match w {
        Write::Insert(doc) => {
            if old.is_some() {
                return Err(exists());
            }
            Some(doc)
        }
        Write::Replace {
            doc,
            expected_version,
        } => {
            check_version(old.as_ref().ok_or_else(not_found)?, *expected_version)?;
            Some(doc)
        }
        Write::Purge {
            expected_version, ..
        } => {
            let o = old.as_ref().ok_or_else(not_found)?;
            check_version(o, *expected_version)?;
            if o.deleted_at.is_none() {
                return Err(StoreError::NotDeleted {
                    kind,
                    id: id.to_string(),
                });
            }
            None
        }
    };
    let mut ix = txn.open_table(INDEX).map_err(backend)?;
    if let Some(o) = &old {
        for e in &o.index {
            ix.remove(index_key(kind, tenant, e, id).as_str())
                .map_err(backend)?;
        }
    }
    match new {
        Some(doc) => {
            t.insert(k.as_str(), encode_value(doc)?.as_slice())
                .map_err(backend)?;
            for e in &doc.index {
                ix.insert(index_key(kind, tenant, e, id).as_str(), ())
                    .map_err(backend)?;
            }
        }
        None => {
            t.remove(k.as_str()).map_err(backend)?;
        }
    }
    Ok(old)
}

/// Walks candidates in key order, counting every match and keeping one page.
struct Pager<'q> {
    q: &'q Query,
    total: u64,
    skipped: usize,
    docs: Vec<Doc>,
    more: bool,
}

impl<'q> Pager<'q> {
    fn new(q: &'q Query) -> Self {
        Pager {
            q,
            total: 0,
            skipped: 0,
            docs: Vec::new(),
            more: false,
        }
    }

    /// Offer a candidate (already in key order). `full` decodes it when it is kept.
    fn offer(
        &mut self,
        cursor: &str,
        h: &Header<'_>,
        full: impl FnOnce() -> Result<Doc>,
    ) -> Result<()> {
        let q = self.q;
        if h.deleted_at.is_some() != q.deleted {
            return Ok(());
        }
        if let Some(s) = &q.search
            && !h.search.contains(&s.to_lowercase())
        {
            return Ok(());
        }
        if let Some((name, value)) = &q.index {
            let want = crate::index_entry(name, value);
            if !index_entries(h.index).any(|e| e == Some(want.as_str())) {
                return Ok(());
            }
        }
        self.total += 1;
        if q.after.as_deref().is_some_and(|a| cursor <= a) {
            return Ok(());
        }
        if self.skipped < q.offset {
            self.skipped += 1;
            return Ok(());
        }
        if self.docs.len() < q.limit {
            self.docs.push(full()?);
        } else {
            self.more = true;
        }
        Ok(())
    }

    fn finish(self) -> Page {
        let next = if self.more {
            self.docs.last().map(Doc::cursor)
        } else {
            None
        };
        Page {
            docs: self.docs,
            total: self.total,
            next,
        }
    }
}

fn run_query(db: &Database, q: &Query) -> Result<Page> {
    if q.limit == 0 || q.limit > MAX_PAGE {
        return Err(StoreError::BadQuery(format!(
            "limit must be 1–{MAX_PAGE}, got {}",
            q.limit
        )));
    }
    let kind = q.kind;
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(table(kind)).map_err(backend)?;
    let mut pager = Pager::new(q);
    match (&q.tenant_id, &q.index) {
        (Some(tenant), Some((name, value))) => {
            // Walk the index: ids in order, then point reads.
            let ix = txn.open_table(INDEX).map_err(backend)?;
            let prefix = index_key(kind, tenant, &crate::index_entry(name, value), "");
            let end = format!("{}\u{1}", &prefix[..prefix.len() - 1]);
            for entry in ix.range(prefix.as_str()..end.as_str()).map_err(backend)? {
                let (k, _) = entry.map_err(backend)?;
                let id = &k.value()[prefix.len()..];
                if id.contains('\0') {
                    // An entry that itself holds NUL and shares this prefix: not ours
                    // (ids never contain NUL).
                    continue;
                }
                let Some(raw) = t.get(key(tenant, id).as_str()).map_err(backend)? else {
                    return Err(corrupt(kind, id, "index entry without its record"));
                };
                let raw = raw.value();
                let h = header(kind, id, raw)?;
                pager.offer(&key(tenant, id), &h, || decode_value(kind, tenant, id, raw))?;
            }
        }
        (scope, _) => {
            let (lo, hi) = match scope {
                // '0' sorts right after '/', so this is exactly the tenant's key prefix.
                Some(tenant) => (
                    Bound::Included(format!("{tenant}/")),
                    Bound::Excluded(format!("{tenant}0")),
                ),
                None => (Bound::Unbounded, Bound::Unbounded),
            };
            let range = (
                lo.as_ref().map(String::as_str),
                hi.as_ref().map(String::as_str),
            );
            for entry in t.range::<&str>(range).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let (tenant, id) = split_key(kind, k.value())?;
                let raw = v.value();
                let h = header(kind, id, raw)?;
                pager.offer(k.value(), &h, || decode_value(kind, tenant, id, raw))?;
            }
        }
    }
    Ok(pager.finish())
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get_doc(&self, kind: IdKind, tenant_id: &str, id: &str) -> Result<Option<Doc>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table(kind)).map_err(backend)?;
        match t.get(key(tenant_id, id).as_str()).map_err(backend)? {
            Some(raw) => Ok(Some(decode_value(kind, tenant_id, id, raw.value())?)),
            None => Ok(None),
        }
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let lock = self.write_lock.clone();
        let feed = self.changes.clone();
        self.blocking(move |db| {
            let _serial = lock
                .lock()
                .map_err(|_| backend("store write lock poisoned"))?;
            let txn = db.begin_write().map_err(backend)?;
            let mut changes = Vec::with_capacity(writes.len());
            for w in &writes {
                // An error drops `txn` without commit: nothing of the batch is written.
                let old = apply(&txn, w)?;
                changes.push(change_for(w, old.as_ref()));
            }
            txn.commit().map_err(backend)?;
            for c in changes {
                // No receivers is fine: nobody is watching yet.
                let _ = feed.send(c);
            }
            Ok(())
        })
        .await
    }

    async fn query(&self, query: Query) -> Result<Page> {
        self.blocking(move |db| run_query(db, &query)).await
    }

    async fn export(&self) -> Result<Vec<Doc>> {
        self.blocking(|db| {
            // One read transaction: a consistent snapshot while writers carry on.
            let txn = db.begin_read().map_err(backend)?;
            let mut out = Vec::new();
            for kind in IdKind::ALL {
                let t = txn.open_table(table(kind)).map_err(backend)?;
                out.reserve(t.len().map_err(backend)? as usize);
                for entry in t.iter().map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    let (tenant, id) = split_key(kind, k.value())?;
                    out.push(decode_value(kind, tenant, id, v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_blob(&self, tenant_id: &str, hash: &str, bytes: Vec<u8>) -> Result<()> {
        check_blob(hash, bytes.len())?;
        let k = key(tenant_id, &hash.to_ascii_lowercase());
        let lock = self.write_lock.clone();
        self.blocking(move |db| {
            let _serial = lock
                .lock()
                .map_err(|_| backend("store write lock poisoned"))?;
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut t = txn.open_table(BLOB).map_err(backend)?;
                if t.get(k.as_str()).map_err(backend)?.is_some() {
                    return Ok(()); // content-addressed: already there
                }
                t.insert(k.as_str(), bytes.as_slice()).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get_blob(&self, tenant_id: &str, hash: &str) -> Result<Option<Vec<u8>>> {
        let k = key(tenant_id, &hash.to_ascii_lowercase());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = txn.open_table(BLOB).map_err(backend)?;
            Ok(t.get(k.as_str())
                .map_err(backend)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        self.db.begin_read().map(drop).map_err(backend)
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_header_round_trips_and_rejects_damage() {
        let doc = Doc {
            kind: IdKind::Zone,
            tenant_id: "authority-t".into(),
            id: "zone-z".into(),
            version: 7,
            schema: 2,
            deleted_at: Some(1_700_000_000),
            index: vec!["tag=level".into(), "name=Floor\nplan\0x".into()],
            search: "level 1".into(),
            body: serde_json::json!({"name": "Level 1"}),
        };
        let raw = encode_value(&doc).unwrap();
        assert_eq!(
            decode_value(IdKind::Zone, "authority-t", "zone-z", &raw).unwrap(),
            doc
        );
        for cut in [0, 1, 5, 20, 30] {
            assert!(parse_header(&raw[..cut]).is_none(), "cut at {cut}");
        }
    }
}
