//! Backup and restore: a versioned, checksummed archive of every record and blob.
//!
//! Format (`lintel-backup`, format version 1): JSON lines.
//! ```text
//! {"format":"lintel-backup","format_version":1,"schema":2,"created_at":<ms>,"lintel":"0.1.0","backend":"embedded"}
//! {"doc":{"kind":"zone","tenant_id":"authority-…","id":"zone-…","version":3,"schema":2,"deleted_at":null,"body":{…}}}
//! {"blob":{"tenant_id":"authority-…","hash":"<sha256>","data":"<base64>"}}
//! {"end":{"docs":<n>,"blobs":<m>,"sha256":"<hex of every byte before this line>"}}
//! ```
//! Records are copied as stored: sealed secrets stay sealed and password hashes stay
//! hashes. A restore checks the whole file (header, every line, counts, checksum)
//! before it writes anything, and only into an empty store.

use crate::doc::{doc_from_body, migrate_doc};
use crate::{Doc, Query, Store, StoreError, Write};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lintel_model::{IdKind, SCHEMA_VERSION, now_unix_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

const FORMAT: &str = "lintel-backup";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    format_version: u32,
    schema: u32,
    created_at: i64,
    lintel: String,
    backend: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocLine {
    kind: String,
    tenant_id: String,
    id: String,
    version: u64,
    schema: u32,
    deleted_at: Option<i64>,
    body: Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobLine {
    tenant_id: String,
    hash: String,
    data: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    docs: u64,
    blobs: u64,
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Doc(DocLine),
    Blob(BlobLine),
    End(End),
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub docs: u64,
    pub blobs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the backup is truncated: its end marker is missing (was the copy interrupted?); nothing was written"
    )]
    Truncated,
    #[error("the backup is corrupted: {0}; nothing was written")]
    Corrupted(String),
    #[error("not a Lintel backup, or a newer format than this Lintel reads: {0}")]
    Format(String),
    #[error(
        "the target store is not empty: restore only into an empty data directory (or an empty Couchbase bucket)"
    )]
    NotEmpty,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the backup: {0}")]
    Io(#[from] std::io::Error),
}

fn line_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Write a backup of everything in `store` to `out`. On the embedded store the records
/// come from one read transaction: a consistent snapshot taken while Lintel serves.
pub async fn write_backup<S: Store + ?Sized>(
    store: &S,
    out: &mut (dyn std::io::Write + Send),
) -> Result<BackupSummary, RestoreError> {
    let docs = store.export().await?;
    let mut hasher = Sha256::new();
    let mut emit = |bytes: Vec<u8>, out: &mut (dyn std::io::Write + Send)| {
        hasher.update(&bytes);
        out.write_all(&bytes)
    };
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        schema: SCHEMA_VERSION,
        created_at: now_unix_ms(),
        lintel: env!("CARGO_PKG_VERSION").into(),
        backend: store.backend_name().into(),
    };
    emit(line_json(&header)?, out)?;
    let mut blobs = BTreeSet::new();
    for d in &docs {
        if d.kind == IdKind::Driver
            && let Some(hash) = d.body.get("component_hash").and_then(Value::as_str)
        {
            blobs.insert((d.tenant_id.clone(), hash.to_ascii_lowercase()));
        }
        let line = Line::Doc(DocLine {
            kind: d.kind.name().into(),
            tenant_id: d.tenant_id.clone(),
            id: d.id.clone(),
            version: d.version,
            schema: d.schema,
            deleted_at: d.deleted_at,
            body: d.body.clone(),
        });
        emit(line_json(&line)?, out)?;
    }
    let mut blob_count = 0;
    for (tenant, hash) in blobs {
        // A driver whose component was never stored (older data dirs keep components
        // on disk only) is backed up without it; the engine re-installs bundled ones.
        let Some(bytes) = store.get_blob(&tenant, &hash).await? else {
            tracing::warn!(tenant = %tenant, hash = %hash, "driver component not in the store; not in the backup");
            continue;
        };
        let line = Line::Blob(BlobLine {
            tenant_id: tenant,
            hash,
            data: B64.encode(bytes),
        });
        emit(line_json(&line)?, out)?;
        blob_count += 1;
    }
    let end = Line::End(End {
        docs: docs.len() as u64,
        blobs: blob_count,
        sha256: hex::encode(hasher.finalize()),
    });
    out.write_all(&line_json(&end)?)?;
    out.flush()?;
    Ok(BackupSummary {
        docs: docs.len() as u64,
        blobs: blob_count,
    })
}

/// Everything a verified backup holds, ready to write.
struct Verified {
    docs: Vec<Doc>,
    blobs: Vec<(String, String, Vec<u8>)>,
}

fn verify(bytes: &[u8]) -> Result<Verified, RestoreError> {
    let corrupted =
        |line: usize, why: String| RestoreError::Corrupted(format!("line {line}: {why}"));
    // The end marker is the last line; everything before it is covered by its checksum.
    let body_end = match bytes.strip_suffix(b"\n") {
        Some(b) => b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1),
        None => return Err(RestoreError::Truncated),
    };
    let end: End = match serde_json::from_slice::<Line>(&bytes[body_end..]) {
        Ok(Line::End(end)) => end,
        _ => return Err(RestoreError::Truncated),
    };
    let actual = hex::encode(Sha256::digest(&bytes[..body_end]));
    if actual != end.sha256 {
        return Err(RestoreError::Corrupted(format!(
            "checksum mismatch (recorded {}, computed {actual})",
            end.sha256
        )));
    }
    let mut lines = bytes[..body_end].split(|&c| c == b'\n').enumerate();
    let header: Header = match lines.next() {
        Some((_, l)) => {
            serde_json::from_slice(l).map_err(|e| RestoreError::Format(e.to_string()))?
        }
        None => return Err(RestoreError::Format("empty file".into())),
    };
    if header.schema > SCHEMA_VERSION {
        return Err(RestoreError::Format(format!(
            "the backup was taken by a newer Lintel (schema {}; this one reads up to {SCHEMA_VERSION})",
            header.schema
        )));
    }
    if header.format != FORMAT || header.format_version > FORMAT_VERSION {
        return Err(RestoreError::Format(format!(
            "format `{}` version {}",
            header.format, header.format_version
        )));
    }
    let mut out = Verified {
        docs: Vec::new(),
        blobs: Vec::new(),
    };
    let mut doc_lines = 0u64;
    for (n, l) in lines {
        if l.is_empty() {
            continue; // the split after the last newline
        }
        let line: Line = serde_json::from_slice(l).map_err(|e| corrupted(n + 1, e.to_string()))?;
        match line {
            Line::Doc(d) => {
                doc_lines += 1;
                let kind = IdKind::from_name(&d.kind)
                    .ok_or_else(|| corrupted(n + 1, format!("unknown kind `{}`", d.kind)))?;
                let raw = Doc {
                    kind,
                    tenant_id: d.tenant_id,
                    id: d.id,
                    version: d.version,
                    schema: d.schema,
                    deleted_at: d.deleted_at,
                    index: Vec::new(),
                    search: String::new(),
                    body: d.body,
                };
                let docs = if raw.schema == SCHEMA_VERSION {
                    let (tenant, id, deleted) =
                        (raw.tenant_id.clone(), raw.id.clone(), raw.deleted_at);
                    let doc = doc_from_body(kind, raw.body, deleted)
                        .map_err(|e| corrupted(n + 1, e.to_string()))?;
                    if doc.tenant_id != tenant || doc.id != id {
                        return Err(corrupted(n + 1, "body does not match its key".into()));
                    }
                    vec![doc]
                } else {
                    migrate_doc(raw).map_err(|e| corrupted(n + 1, e.to_string()))?
                };
                out.docs.extend(docs);
            }
            Line::Blob(b) => {
                let bytes = B64
                    .decode(&b.data)
                    .map_err(|e| corrupted(n + 1, format!("blob data: {e}")))?;
                if hex::encode(Sha256::digest(&bytes)) != b.hash.to_ascii_lowercase() {
                    return Err(corrupted(n + 1, "blob does not match its hash".into()));
                }
                out.blobs.push((b.tenant_id, b.hash, bytes));
            }
            Line::End(_) => return Err(corrupted(n + 1, "end marker before the end".into())),
        }
    }
    // Everything the write would refuse is refused here, before anything is written.
    let mut keys = std::collections::HashSet::new();
    for d in &out.docs {
        if !keys.insert((d.kind, d.tenant_id.as_str(), d.id.as_str())) {
            return Err(RestoreError::Corrupted(format!(
                "{} `{}` appears twice",
                d.kind, d.id
            )));
        }
        let size = serde_json::to_vec(&d.body)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        crate::check_size(d, size).map_err(|e| RestoreError::Corrupted(e.to_string()))?;
    }
    for (_, hash, bytes) in &out.blobs {
        crate::check_blob(hash, bytes.len()).map_err(|e| RestoreError::Corrupted(e.to_string()))?;
    }
    if doc_lines != end.docs || out.blobs.len() as u64 != end.blobs {
        return Err(RestoreError::Corrupted(format!(
            "the end marker counts {} records and {} blobs, the file holds {} and {}",
            end.docs,
            end.blobs,
            doc_lines,
            out.blobs.len()
        )));
    }
    Ok(out)
}

/// Check a backup completely (header, every line, counts, checksum) without writing.
pub fn check_backup(bytes: &[u8]) -> Result<BackupSummary, RestoreError> {
    let v = verify(bytes)?;
    Ok(BackupSummary {
        docs: v.docs.len() as u64,
        blobs: v.blobs.len() as u64,
    })
}

/// Load a backup into an empty store. The whole file is verified first; a damaged or
/// truncated file writes nothing. Older-schema records are migrated on the way in.
pub async fn restore<S: Store + ?Sized>(
    store: &S,
    bytes: &[u8],
) -> Result<BackupSummary, RestoreError> {
    let verified = verify(bytes)?;
    for kind in IdKind::ALL {
        let mut q = Query::new(kind, None);
        q.limit = 1;
        let live = store.query(q.clone()).await?.total;
        q.deleted = true;
        if live + store.query(q).await?.total > 0 {
            return Err(RestoreError::NotEmpty);
        }
    }
    let summary = BackupSummary {
        docs: verified.docs.len() as u64,
        blobs: verified.blobs.len() as u64,
    };
    for (tenant, hash, bytes) in verified.blobs {
        store.put_blob(&tenant, &hash, bytes).await?;
    }
    store
        .commit(verified.docs.into_iter().map(Write::Insert).collect())
        .await?;
    Ok(summary)
}
