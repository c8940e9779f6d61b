//! The local admin socket: `<data_dir>/admin/lintel.sock`, in a 0700 directory.
//!
//! While `lintel serve` holds the embedded store (one process only), `lintel backup`
//! asks the server for the snapshot through this socket instead of opening the store.
//! Access: the directory admits only the user Lintel runs as (and root), and the server
//! also checks the connecting process's uid (`SO_PEERCRED`).
//!
//! `lintel keys rotate` asks it to reload the master keyring, re-seal every secret under
//! its primary key and start new token-signing keys, online.
//!
//! Protocol: the client sends one line (`backup` or `rotate-keys`); the server answers
//! `ok\n` followed by the result (the backup; a JSON report), or `error: <reason>\n`.

use lintel_store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const SOCKET_DIR: &str = "admin";
const SOCKET: &str = "lintel.sock";
/// How long `lintel backup` waits for the server's snapshot.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REQUEST: u64 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_DIR).join(SOCKET)
}

/// What the admin socket needs to rotate keys.
#[derive(Clone)]
pub struct KeyAdmin {
    pub config: Arc<crate::config::Config>,
    pub keyring: lintel_auth::Keyring,
    pub tokens: Arc<lintel_auth::TokenService>,
}

impl KeyAdmin {
    /// Reload the keyring from its source, re-seal everything under its primary key, and
    /// give every tenant a new token-signing key (old ones verify until their tokens end).
    pub async fn rotate(&self, store: &Arc<dyn Store>) -> anyhow::Result<serde_json::Value> {
        use lintel_store::StoreExt;
        let fresh = self.config.keyring()?;
        let primary = fresh.primary_id().to_owned();
        self.keyring.replace(fresh);
        let report = lintel_auth::reseal_all(store, &self.keyring).await?;
        let mut signing = 0;
        for t in store.tenants().await? {
            self.tokens.rotate(&t.id).await?;
            signing += 1;
        }
        tracing::info!(primary = %primary, examined = report.examined, resealed = report.resealed, retried = report.retried, signing_keys = signing, "keys rotated");
        Ok(serde_json::json!({
            "primary_key": primary,
            "sealed_values": report.examined,
            "resealed_records": report.resealed,
            "retried": report.retried,
            "new_signing_keys": signing,
        }))
    }
}

/// Listen on the admin socket until the returned task is aborted.
pub fn listen(
    data_dir: &Path,
    store: Arc<dyn Store>,
    keys: KeyAdmin,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = data_dir.join(SOCKET_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // An existing directory keeps its mode: make sure it is ours alone before binding.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let owner = std::fs::metadata(&dir)?.uid();
    let path = socket_path(data_dir);
    // A socket file left by a process that died; the store lock already proved that no
    // other Lintel serves this data directory.
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
        loop {
            let (conn, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match conn.peer_cred() {
                Ok(cred) if cred.uid() == owner || cred.uid() == 0 => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        "admin socket: connection from another user refused"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: cannot identify the peer; refused");
                    continue;
                }
            }
            let (store, keys) = (store.clone(), keys.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(conn, store, keys).await {
                    tracing::warn!(error = %e, "admin socket request failed");
                }
            });
        }
    }))
}

async fn handle(conn: UnixStream, store: Arc<dyn Store>, keys: KeyAdmin) -> anyhow::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await??;
    match line.trim_end() {
        "backup" => {
            let mut bytes = Vec::new();
            match lintel_store::write_backup(store.as_ref(), &mut bytes).await {
                Ok(summary) => {
                    tracing::info!(
                        records = summary.docs,
                        blobs = summary.blobs,
                        "backup taken over the admin socket"
                    );
                    write.write_all(b"ok\n").await?;
                    write.write_all(&bytes).await?;
                }
                Err(e) => {
                    write.write_all(format!("error: {e}\n").as_bytes()).await?;
                }
            }
        }
        "rotate-keys" => match keys.rotate(&store).await {
            Ok(report) => {
                write.write_all(b"ok\n").await?;
                write.write_all(report.to_string().as_bytes()).await?;
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "key rotation failed");
                write
                    .write_all(format!("error: {e:#}\n").as_bytes())
                    .await?;
            }
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            write
                .write_all(format!("error: unknown request `{shown}`\n").as_bytes())
                .await?;
        }
    }
    write.shutdown().await?;
    Ok(())
}

/// Ask the server on `data_dir` for a backup; returns its bytes.
pub async fn request_backup(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    request(
        data_dir,
        "backup",
        "the data directory is in use, but its server",
    )
    .await
}

/// Ask the running server on `data_dir` to rotate keys; returns its JSON report.
pub async fn request_rotation(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    request(data_dir, "rotate-keys", "keys rotate online: the server").await
}

async fn request(data_dir: &Path, what: &str, who: &str) -> anyhow::Result<Vec<u8>> {
    let path = socket_path(data_dir);
    let mut conn = UnixStream::connect(&path)
        .await
        .map_err(|e| anyhow::anyhow!("{who} does not answer on {}: {e}", path.display()))?;
    conn.write_all(format!("{what}\n").as_bytes()).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(BACKUP_TIMEOUT, conn.read_to_end(&mut reply))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the server did not answer `{what}` within {BACKUP_TIMEOUT:?}")
        })??;
    match reply.strip_prefix(b"ok\n") {
        Some(bytes) => Ok(bytes.to_vec()),
        None => {
            let text = String::from_utf8_lossy(&reply[..reply.len().min(512)]);
            anyhow::bail!("the server refused `{what}`: {}", text.trim_end())
        }
    }
}
