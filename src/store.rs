//! Opening the configured store, and the `backup` / `restore` commands.

use crate::config::{Config, StoreBackend};
use anyhow::Context;
use lintel_store::{CouchbaseStore, EmbeddedStore, Store, StoreError};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The store `cfg` names: the embedded one in `data_dir`, or the Couchbase cluster.
pub async fn open(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match cfg.store.backend {
        StoreBackend::Embedded => Arc::new(EmbeddedStore::open(&cfg.data_dir)?),
        StoreBackend::Couchbase => Arc::new(CouchbaseStore::connect(cfg.couchbase()).await?),
    })
}

/// `lintel backup --out FILE`: a consistent snapshot, also while Lintel serves. The file
/// appears only once it is complete and verified, readable by its owner only (it holds
/// password hashes and sealed secrets).
pub async fn backup(cfg: &Config, out: &Path) -> anyhow::Result<lintel_store::BackupSummary> {
    if cfg.store.backend == StoreBackend::Embedded && !EmbeddedStore::exists(&cfg.data_dir) {
        anyhow::bail!(
            "no Lintel store in {} (check data_dir)",
            cfg.data_dir.display()
        );
    }
    let bytes = match open(cfg).await {
        Ok(store) => {
            let mut bytes = Vec::new();
            lintel_store::write_backup(store.as_ref(), &mut bytes).await?;
            bytes
        }
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::Locked { .. })) => {
            crate::admin::request_backup(&cfg.data_dir).await?
        }
        Err(e) => return Err(e.context("cannot open the store")),
    };
    let summary = lintel_store::check_backup(&bytes).context("the backup failed its own check")?;
    write_private(out, &bytes)?;
    Ok(summary)
}

/// Write `bytes` to `path` atomically (a temporary file in the same directory, fsynced,
/// renamed, the directory fsynced), mode 0600. Nothing is left behind on failure.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(".{}.partial", std::process::id()));
    let partial = dir.join(partial_name);
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `lintel restore FILE`: into an empty store only; a damaged file writes nothing.
pub async fn restore(cfg: &Config, file: &Path) -> anyhow::Result<lintel_store::BackupSummary> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Check the file before touching (or creating) the store.
    lintel_store::check_backup(&bytes)?;
    let store = match open(cfg).await {
        Err(e) if matches!(e.downcast_ref(), Some(StoreError::Locked { .. })) => {
            anyhow::bail!("{e}: stop Lintel before restoring")
        }
        other => other.context("cannot open the store")?,
    };
    Ok(lintel_store::restore(store.as_ref(), &bytes).await?)
}
