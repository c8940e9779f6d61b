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
//! `lintel driver upload` sends a driver component to the engine (`upload-driver`).
//!
//! Protocol: the client sends one line (`backup`, `rotate-keys` or `upload-driver`); the
//! server answers `ok\n` followed by the result (the backup; a JSON report), or
//! `error: <reason>\n`. `upload-driver` is followed by a JSON header line
//! (`{"tenant": id|null, "driver": id|null, "size": bytes}`) and the component, base64,
//! up to the end of the client's stream (at most 32 MiB decoded).

use lintel_store::Store;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const SOCKET_DIR: &str = "admin";
const SOCKET: &str = "lintel.sock";
/// How long `lintel backup` waits for the server's snapshot.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REQUEST: u64 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest driver component `upload-driver` takes.
pub const MAX_DRIVER_BYTES: usize = crate::driver_cmd::MAX_COMPONENT_BYTES;
/// Its base64 text, with room for a line end.
const MAX_DRIVER_BASE64: usize = MAX_DRIVER_BYTES.div_ceil(3) * 4 + 2;
const MAX_UPLOAD_HEADER: usize = 4096;
/// How long the server waits for an upload's bytes.
const UPLOAD_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine `upload-driver` talks to, once `serve` has started it (see
/// [`attach_engine`]). Weak: the admin socket never keeps a stopped engine alive.
static ENGINE: OnceLock<Weak<lintel_engine::Engine>> = OnceLock::new();

/// Let the admin socket reach the engine (for `lintel driver upload`). Once per process.
pub fn attach_engine(engine: &Arc<lintel_engine::Engine>) {
    let _ = ENGINE.set(Arc::downgrade(engine));
}

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
        "upload-driver" => {
            reader
                .get_mut()
                .set_limit((MAX_UPLOAD_HEADER + MAX_DRIVER_BASE64 + 1) as u64);
            let answer = match read_upload(&mut reader).await {
                Ok((header, body)) => upload_driver(&store, &header, &body).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(report) => {
                    write.write_all(b"ok\n").await?;
                    write.write_all(report.to_string().as_bytes()).await?;
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "driver upload refused");
                    write
                        .write_all(format!("error: {e:#}\n").as_bytes())
                        .await?;
                }
            }
        }
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

/// The header line and the base64 text of an `upload-driver` request.
async fn read_upload<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> anyhow::Result<(String, Vec<u8>)> {
    let mut header = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut header))
        .await
        .map_err(|_| anyhow::anyhow!("no upload header within {REQUEST_TIMEOUT:?}"))??;
    if header.len() > MAX_UPLOAD_HEADER {
        anyhow::bail!("the upload header is longer than {MAX_UPLOAD_HEADER} bytes");
    }
    let mut body = Vec::new();
    tokio::time::timeout(UPLOAD_READ_TIMEOUT, reader.read_to_end(&mut body))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the component did not arrive within {UPLOAD_READ_TIMEOUT:?}")
        })??;
    Ok((header, body))
}

#[derive(serde::Deserialize, serde::Serialize)]
struct UploadHeader {
    tenant: Option<String>,
    driver: Option<String>,
    size: usize,
}

/// Decode, check and hand an uploaded component to the engine; the JSON report.
async fn upload_driver(
    store: &Arc<dyn Store>,
    header: &str,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    use lintel_store::StoreExt;
    let header: UploadHeader = serde_json::from_str(header.trim())
        .map_err(|e| anyhow::anyhow!("bad upload header: {e}"))?;
    let text = body.trim_ascii();
    if header.size > MAX_DRIVER_BYTES || text.len() > MAX_DRIVER_BASE64 {
        anyhow::bail!(
            "the component is larger than 32 MiB ({MAX_DRIVER_BYTES} bytes), the upload limit"
        );
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| anyhow::anyhow!("the component is not valid base64: {e}"))?;
    if bytes.len() != header.size {
        anyhow::bail!(
            "the upload is incomplete: {} of {} bytes arrived",
            bytes.len(),
            header.size
        );
    }
    let engine = ENGINE
        .get()
        .and_then(Weak::upgrade)
        .ok_or_else(|| anyhow::anyhow!("the engine is not running (yet); try again"))?;
    let tenants = store.tenants().await?;
    let tenant = match header.tenant {
        Some(t) => {
            if !tenants.iter().any(|x| x.id == t) {
                anyhow::bail!("there is no tenant `{t}`");
            }
            t
        }
        None => match tenants.as_slice() {
            [only] => only.id.clone(),
            [] => anyhow::bail!("there is no tenant yet"),
            many => {
                let ids: Vec<String> = many
                    .iter()
                    .map(|t| format!("{} ({})", t.id, t.domain))
                    .collect();
                anyhow::bail!(
                    "{} tenants: choose one with --tenant: {}",
                    many.len(),
                    ids.join(", ")
                )
            }
        },
    };
    let created = header.driver.is_none();
    let report = engine
        .upload_driver(
            &lintel_store::Actor::system(),
            &tenant,
            bytes,
            header.driver.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        tenant = %tenant,
        driver = %report.driver.id,
        name = %report.info.name,
        version = %report.info.version,
        hash = %report.driver.component_hash,
        created,
        modules = report.modules.len(),
        "driver uploaded over the admin socket"
    );
    Ok(report.summary(&tenant, created))
}

/// Send a driver component to the server on `data_dir` (`lintel driver upload`); returns
/// its JSON report.
pub async fn request_upload(
    data_dir: &Path,
    component: &[u8],
    driver: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    if component.len() > MAX_DRIVER_BYTES {
        anyhow::bail!(
            "the component is {} bytes; the upload limit is 32 MiB ({MAX_DRIVER_BYTES} bytes)",
            component.len()
        );
    }
    let header = UploadHeader {
        tenant: tenant.map(str::to_owned),
        driver: driver.map(str::to_owned),
        size: component.len(),
    };
    let mut body = serde_json::to_string(&header)?;
    body.push('\n');
    body.push_str(&base64::engine::general_purpose::STANDARD.encode(component));
    body.push('\n');
    exchange(
        data_dir,
        "upload-driver",
        body.as_bytes(),
        "driver upload: the server",
    )
    .await
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
    exchange(data_dir, what, b"", who).await
}

/// Send the request line `what` and then `body`, close our side, read the answer.
async fn exchange(data_dir: &Path, what: &str, body: &[u8], who: &str) -> anyhow::Result<Vec<u8>> {
    let path = socket_path(data_dir);
    let mut conn = UnixStream::connect(&path)
        .await
        .map_err(|e| anyhow::anyhow!("{who} does not answer on {}: {e}", path.display()))?;
    conn.write_all(format!("{what}\n").as_bytes()).await?;
    if !body.is_empty() {
        conn.write_all(body).await?;
        // The server reads the body to its end.
        conn.shutdown().await?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_store::StoreExt;

    /// `lintel driver upload`'s request through a real admin socket: a new driver, an
    /// upgrade of it, and the refusals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_driver_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(lintel_store::EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let keyring = lintel_auth::Keyring::new(
            lintel_auth::SecretKeyring::parse(&lintel_auth::SecretKeyring::generate_line())
                .unwrap(),
        );
        let keys = KeyAdmin {
            config: Arc::new(crate::config::Config::default()),
            keyring: keyring.clone(),
            tokens: Arc::new(lintel_auth::TokenService::new(
                store.clone(),
                keyring,
                Duration::from_secs(60),
                Duration::from_secs(86_400),
            )),
        };
        let server = listen(dir.path(), store.clone(), keys).unwrap();
        let component = lintel_bundled_drivers::DEMO_DISPLAY.component;

        // Before the engine runs, and before there is a tenant.
        let e = request_upload(dir.path(), component, None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("engine is not running"), "{e}");
        let engine = Arc::new(
            lintel_engine::Engine::new(
                lintel_engine::EngineConfig::new(dir.path().join("engine")),
                store.clone(),
            )
            .unwrap(),
        );
        attach_engine(&engine);
        let e = request_upload(dir.path(), component, None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no tenant yet"), "{e}");

        let tenant = store
            .create(
                &lintel_store::Actor::system(),
                lintel_model::Tenant {
                    id: lintel_model::new_id(lintel_model::IdKind::Tenant),
                    name: "T".into(),
                    domain: "t.example".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(
            &request_upload(dir.path(), component, None, None)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(report["tenant"], tenant.id.as_str());
        assert_eq!(report["created"], true);
        assert_eq!(report["driver"]["name"], "Demo Display");
        assert_eq!(
            report["driver"]["hash"],
            lintel_engine::sha256_hex(component).as_str()
        );
        assert_eq!(report["modules"], serde_json::json!([]));
        let id = report["driver"]["id"].as_str().unwrap().to_owned();

        let report: serde_json::Value = serde_json::from_slice(
            &request_upload(dir.path(), component, Some(&id), Some(&tenant.id))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (&report["created"], &report["driver"]["id"]),
            (&serde_json::json!(false), &serde_json::json!(id))
        );

        let e = request_upload(dir.path(), component, None, Some("nope"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no tenant `nope`"), "{e}");
        let e = request_upload(dir.path(), b"\0asm not really", None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused `upload-driver`"), "{e}");
        let e = request_upload(dir.path(), &vec![0; MAX_DRIVER_BYTES + 1], None, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("32 MiB"), "{e}");
        server.abort();
        engine.shutdown().await;
    }
}
