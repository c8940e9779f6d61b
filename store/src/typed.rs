use crate::{Doc, Result, Store, StoreError};
use lintel_model::{IdKind, Record, now_unix};

fn encode<R: Record>(record: &R) -> Result<Doc> {
    let body = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(Doc {
        kind: R::KIND,
        tenant_id: record.tenant_id().to_string(),
        id: record.id().to_string(),
        version: record.version(),
        body,
    })
}

fn decode<R: Record>(doc: &Doc) -> Result<R> {
    serde_json::from_slice(&doc.body).map_err(|e| StoreError::Corrupt {
        kind: doc.kind,
        id: doc.id.clone(),
        reason: e.to_string(),
    })
}

/// Typed access to any [`Store`]: records are validated before they are written.
#[async_trait::async_trait]
pub trait StoreExt: Store {
    async fn get<R: Record>(&self, tenant_id: &str, id: &str) -> Result<Option<R>> {
        if !R::KIND.is_valid_id(id) {
            // A malformed id can never name a record: answer as for a missing one.
            return Ok(None);
        }
        match self.get_doc(R::KIND, tenant_id, id).await? {
            Some(doc) => Ok(Some(decode(&doc)?)),
            None => Ok(None),
        }
    }

    async fn require<R: Record>(&self, tenant_id: &str, id: &str) -> Result<R> {
        self.get(tenant_id, id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: R::KIND,
                id: id.to_string(),
            })
    }

    async fn list<R: Record>(&self, tenant_id: &str) -> Result<Vec<R>> {
        let scope = (R::KIND != IdKind::Tenant).then_some(tenant_id);
        self.list_docs(R::KIND, scope)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// Insert new records atomically (all or none). Each gets version 1.
    async fn insert_all(&self, records: Vec<Box<dyn ErasedRecord>>) -> Result<()> {
        let mut docs = Vec::with_capacity(records.len());
        for mut r in records {
            r.prepare_insert()?;
            docs.push(r.to_doc()?);
        }
        self.insert_docs(docs).await
    }

    /// Insert one new record; returns it with its version set.
    async fn insert<R: Record>(&self, mut record: R) -> Result<R> {
        record.validate()?;
        record.set_version(1);
        self.insert_docs(vec![encode(&record)?]).await?;
        Ok(record)
    }

    /// Replace a record whose stored version is `record.version()`; returns it with the
    /// next version. A stale version is a `Conflict`.
    async fn update<R: Record>(&self, mut record: R) -> Result<R> {
        record.validate()?;
        let expected = record.version();
        record.set_version(expected + 1);
        record.set_updated_at(now_unix());
        self.replace_doc(encode(&record)?, expected).await?;
        Ok(record)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// A record of any kind, for atomic multi-kind inserts.
pub trait ErasedRecord: Send {
    fn prepare_insert(&mut self) -> Result<()>;
    fn to_doc(&self) -> Result<Doc>;
}

impl<R: Record> ErasedRecord for R {
    fn prepare_insert(&mut self) -> Result<()> {
        self.validate()?;
        self.set_version(1);
        Ok(())
    }
    fn to_doc(&self) -> Result<Doc> {
        encode(self)
    }
}
