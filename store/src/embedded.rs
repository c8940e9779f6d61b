//! The embedded default: one redb file in the data directory.
//!
//! Layout: one table per record kind; key `"<tenant_id>/<id>"`; value = 8-byte big-endian
//! version followed by the JSON body. Ids are validated (no `/`), so a tenant's records
//! are exactly the keys starting with `"<tenant_id>/"`.

use crate::{Change, Doc, Result, Store, StoreError};
use lintel_model::IdKind;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

const FILE_NAME: &str = "lintel.redb";
const CHANGE_FEED_CAPACITY: usize = 1024;

fn table(kind: IdKind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.name())
}

fn key(tenant_id: &str, id: &str) -> String {
    format!("{tenant_id}/{id}")
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn split_value(kind: IdKind, id: &str, raw: &[u8]) -> Result<(u64, Vec<u8>)> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt {
            kind,
            id: id.to_string(),
            reason: "value shorter than its version header".into(),
        });
    }
    let (v, body) = raw.split_at(8);
    let version = u64::from_be_bytes(v.try_into().expect("split_at(8) gives 8 bytes"));
    Ok((version, body.to_vec()))
}

fn join_value(version: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    changes: broadcast::Sender<Change>,
}

impl EmbeddedStore {
    /// Open (or create) the store in `data_dir`. Fails with [`StoreError::Locked`] if
    /// another process has it open.
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
        let txn = db.begin_write().map_err(backend)?;
        for kind in IdKind::ALL {
            txn.open_table(table(kind)).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            changes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| backend(format!("store task failed: {e}")))?
    }

    fn publish(&self, docs: impl IntoIterator<Item = Change>) {
        for c in docs {
            // No receivers is fine: nobody is watching yet.
            let _ = self.changes.send(c);
        }
    }
}

fn change_of(d: &Doc) -> Change {
    Change {
        kind: d.kind,
        tenant_id: d.tenant_id.clone(),
        id: d.id.clone(),
        version: d.version,
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get_doc(&self, kind: IdKind, tenant_id: &str, id: &str) -> Result<Option<Doc>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table(kind)).map_err(backend)?;
        let Some(raw) = t.get(key(tenant_id, id).as_str()).map_err(backend)? else {
            return Ok(None);
        };
        let (version, body) = split_value(kind, id, raw.value())?;
        Ok(Some(Doc {
            kind,
            tenant_id: tenant_id.to_string(),
            id: id.to_string(),
            version,
            body,
        }))
    }

    async fn insert_docs(&self, docs: Vec<Doc>) -> Result<()> {
        let changes: Vec<Change> = docs.iter().map(change_of).collect();
        self.write(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            for d in &docs {
                let mut t = txn.open_table(table(d.kind)).map_err(backend)?;
                let k = key(&d.tenant_id, &d.id);
                if t.get(k.as_str()).map_err(backend)?.is_some() {
                    // Dropping `txn` without commit aborts it: nothing is written.
                    return Err(StoreError::AlreadyExists {
                        kind: d.kind,
                        id: d.id.clone(),
                    });
                }
                t.insert(k.as_str(), join_value(d.version, &d.body).as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await?;
        self.publish(changes);
        Ok(())
    }

    async fn replace_doc(&self, doc: Doc, expected_version: u64) -> Result<()> {
        let change = change_of(&doc);
        self.write(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut t = txn.open_table(table(doc.kind)).map_err(backend)?;
                let k = key(&doc.tenant_id, &doc.id);
                let actual = match t.get(k.as_str()).map_err(backend)? {
                    Some(raw) => split_value(doc.kind, &doc.id, raw.value())?.0,
                    None => {
                        return Err(StoreError::NotFound {
                            kind: doc.kind,
                            id: doc.id.clone(),
                        });
                    }
                };
                if actual != expected_version {
                    return Err(StoreError::Conflict {
                        kind: doc.kind,
                        id: doc.id.clone(),
                        expected: expected_version,
                        actual,
                    });
                }
                t.insert(k.as_str(), join_value(doc.version, &doc.body).as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await?;
        self.publish([change]);
        Ok(())
    }

    async fn list_docs(&self, kind: IdKind, tenant_id: Option<&str>) -> Result<Vec<Doc>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table(kind)).map_err(backend)?;
        let mut out = Vec::new();
        let mut push = |k: &str, v: &[u8]| -> Result<()> {
            let (tenant, id) = k.split_once('/').ok_or_else(|| StoreError::Corrupt {
                kind,
                id: k.to_string(),
                reason: "key without a tenant".into(),
            })?;
            let (version, body) = split_value(kind, id, v)?;
            out.push(Doc {
                kind,
                tenant_id: tenant.to_string(),
                id: id.to_string(),
                version,
                body,
            });
            Ok(())
        };
        match tenant_id {
            Some(tenant) => {
                // '0' sorts right after '/', so this is exactly the tenant's key prefix.
                let (lo, hi) = (format!("{tenant}/"), format!("{tenant}0"));
                for entry in t.range(lo.as_str()..hi.as_str()).map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    push(k.value(), v.value())?;
                }
            }
            None => {
                for entry in t.iter().map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    push(k.value(), v.value())?;
                }
            }
        }
        Ok(out)
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        self.db.begin_read().map(drop).map_err(backend)
    }
}

/// The conformance suite every `Store` adapter must pass, run here on the embedded store.
#[cfg(test)]
mod conformance {
    use super::*;
    use crate::StoreExt;
    use lintel_model::{ControlSystem, Tenant, Zone, new_id, now_unix};

    fn tenant() -> Tenant {
        Tenant {
            id: new_id(IdKind::Tenant),
            name: "Acme".into(),
            domain: "acme.example".into(),
            created_at: now_unix(),
            updated_at: now_unix(),
            version: 0,
        }
    }

    fn system(tenant_id: &str, name: &str) -> ControlSystem {
        ControlSystem {
            id: new_id(IdKind::System),
            tenant_id: tenant_id.into(),
            name: name.into(),
            description: String::new(),
            email: None,
            capacity: 4,
            bookable: true,
            timezone: None,
            zones: vec![],
            modules: vec![],
            created_at: now_unix(),
            updated_at: now_unix(),
            version: 0,
        }
    }

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn insert_get_and_duplicate() {
        let (_d, s) = open();
        let t = s.insert(tenant()).await.unwrap();
        assert_eq!(t.version, 1);
        let back: Tenant = s.require(&t.id, &t.id).await.unwrap();
        assert_eq!(back, t);
        let err = s.insert(t.clone()).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    }

    #[tokio::test]
    async fn replace_is_compare_and_swap() {
        let (_d, s) = open();
        let t = s.insert(tenant()).await.unwrap();
        let sys = s.insert(system(&t.id, "Room 1")).await.unwrap();
        let mut a = sys.clone();
        a.name = "Room One".into();
        let a = s.update(a).await.unwrap();
        assert_eq!(a.version, 2);
        // A writer still holding version 1 loses, and its change is not applied.
        let mut stale = sys.clone();
        stale.name = "Stale".into();
        let err = s.update(stale).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    actual: 2,
                    ..
                }
            ),
            "{err}"
        );
        let now: ControlSystem = s.require(&t.id, &sys.id).await.unwrap();
        assert_eq!(now.name, "Room One");
    }

    #[tokio::test]
    async fn tenants_cannot_see_each_other() {
        let (_d, s) = open();
        let (a, b) = (
            s.insert(tenant()).await.unwrap(),
            s.insert(tenant()).await.unwrap(),
        );
        let sys_a = s.insert(system(&a.id, "A room")).await.unwrap();
        s.insert(system(&b.id, "B room")).await.unwrap();
        let got: Option<ControlSystem> = s.get(&b.id, &sys_a.id).await.unwrap();
        assert!(got.is_none());
        let listed: Vec<ControlSystem> = s.list(&b.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "B room");
        let tenants: Vec<Tenant> = s.list("").await.unwrap();
        assert_eq!(tenants.len(), 2);
    }

    #[tokio::test]
    async fn batch_insert_is_all_or_nothing() {
        let (_d, s) = open();
        let t = s.insert(tenant()).await.unwrap();
        let existing = s.insert(system(&t.id, "Existing")).await.unwrap();
        let fresh = system(&t.id, "Fresh");
        let zone = Zone {
            id: new_id(IdKind::Zone),
            tenant_id: t.id.clone(),
            name: "Level 1".into(),
            description: String::new(),
            tags: vec!["level".into()],
            parent_id: None,
            created_at: 0,
            updated_at: 0,
            version: 0,
        };
        let err = s
            .insert_all(vec![
                Box::new(fresh.clone()),
                Box::new(zone.clone()),
                Box::new(existing),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }));
        assert!(
            s.get::<ControlSystem>(&t.id, &fresh.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get::<Zone>(&t.id, &zone.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn invalid_records_are_rejected_naming_the_field() {
        let (_d, s) = open();
        let t = s.insert(tenant()).await.unwrap();
        let mut sys = system(&t.id, "Room");
        sys.zones = vec!["nope".into()];
        let err = s.insert(sys).await.unwrap_err();
        assert!(err.to_string().contains("`zones`"), "{err}");
    }

    #[tokio::test]
    async fn changes_are_published_after_writes() {
        let (_d, s) = open();
        let mut feed = s.changes();
        let t = s.insert(tenant()).await.unwrap();
        let c = feed.recv().await.unwrap();
        assert_eq!(
            (c.kind, c.id.as_str(), c.version),
            (IdKind::Tenant, t.id.as_str(), 1)
        );
    }

    #[tokio::test]
    async fn data_survives_reopen_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            let t = s.insert(tenant()).await.unwrap();
            let err = EmbeddedStore::open(dir.path())
                .err()
                .expect("second open must fail");
            assert!(matches!(err, StoreError::Locked { .. }), "{err}");
            t
        };
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let back: Tenant = s.require(&t.id, &t.id).await.unwrap();
        assert_eq!(back, t);
    }

    #[tokio::test]
    async fn malformed_ids_find_nothing() {
        let (_d, s) = open();
        let t = s.insert(tenant()).await.unwrap();
        for id in ["", "sys-", "../sys-x", "sys-a/b", "mod-abc"] {
            assert!(
                s.get::<ControlSystem>(&t.id, id).await.unwrap().is_none(),
                "{id}"
            );
        }
    }
}
