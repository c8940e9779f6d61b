//! Turning typed records into [`Doc`]s and back, for any kind chosen at run time
//! (migrations and restore only know a kind name and a JSON body).

use crate::{Doc, Result, StoreError, index_entry};
use lintel_model::{
    ApiKey, AuditEntry, ControlSystem, DriverRecord, IdKind, IdentityProvider, Metadata, Module,
    Record, SCHEMA_VERSION, Session, Settings, SigningKey, Tenant, Trigger, User, Zone,
};
use serde_json::Value;

/// A record's document at the current schema.
pub(crate) fn encode<R: Record>(record: &R, deleted_at: Option<i64>) -> Result<Doc> {
    let body = serde_json::to_value(record).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(Doc {
        kind: R::KIND,
        tenant_id: record.tenant_id().to_string(),
        id: record.id().to_string(),
        version: record.version(),
        schema: SCHEMA_VERSION,
        deleted_at,
        index: record
            .index_entries()
            .iter()
            .map(|(k, v)| index_entry(k, v))
            .collect(),
        search: record.search_text(),
        body,
    })
}

pub(crate) fn decode<R: Record>(doc: &Doc) -> Result<R> {
    if doc.schema != SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            kind: doc.kind,
            id: doc.id.clone(),
            reason: format!("schema {} was not migrated to {SCHEMA_VERSION}", doc.schema),
        });
    }
    R::deserialize(&doc.body).map_err(|e| StoreError::Corrupt {
        kind: doc.kind,
        id: doc.id.clone(),
        reason: e.to_string(),
    })
}

fn typed<R: Record>(body: Value, deleted_at: Option<i64>) -> Result<Doc> {
    let record: R = serde_json::from_value(body).map_err(|e| StoreError::Corrupt {
        kind: R::KIND,
        id: String::new(),
        reason: e.to_string(),
    })?;
    // Ids are keys: they must be well formed whatever else is wrong.
    let tenant_ok = R::KIND == IdKind::Tenant || IdKind::Tenant.is_valid_id(record.tenant_id());
    if !R::KIND.is_valid_id(record.id()) || !tenant_ok {
        return Err(StoreError::Corrupt {
            kind: R::KIND,
            id: record.id().chars().take(80).collect(),
            reason: "malformed id or tenant id".into(),
        });
    }
    // Rules get stricter over time; data written under older rules is kept (and shown
    // by the API) rather than refused. The next edit of the record must fix it.
    if let Err(e) = record.validate() {
        tracing::warn!(kind = %R::KIND, id = record.id(), error = %e, "stored record breaks a current validation rule; kept as is");
    }
    encode(&record, deleted_at)
}

/// A current-schema document of `kind` from its JSON body: decoded, with its index
/// entries and search text derived. Identity and version come from the body. Records
/// that break a validation rule added since they were written are kept (with a warning);
/// malformed ids are refused.
pub fn doc_from_body(kind: IdKind, body: Value, deleted_at: Option<i64>) -> Result<Doc> {
    match kind {
        IdKind::Tenant => typed::<Tenant>(body, deleted_at),
        IdKind::Zone => typed::<Zone>(body, deleted_at),
        IdKind::System => typed::<ControlSystem>(body, deleted_at),
        IdKind::Module => typed::<Module>(body, deleted_at),
        IdKind::Driver => typed::<DriverRecord>(body, deleted_at),
        IdKind::Settings => typed::<Settings>(body, deleted_at),
        IdKind::User => typed::<User>(body, deleted_at),
        IdKind::ApiKey => typed::<ApiKey>(body, deleted_at),
        IdKind::Trigger => typed::<Trigger>(body, deleted_at),
        IdKind::Metadata => typed::<Metadata>(body, deleted_at),
        IdKind::Audit => typed::<AuditEntry>(body, deleted_at),
        IdKind::Session => typed::<Session>(body, deleted_at),
        IdKind::IdentityProvider => typed::<IdentityProvider>(body, deleted_at),
        IdKind::SigningKey => typed::<SigningKey>(body, deleted_at),
        IdKind::Broker => typed::<lintel_model::Broker>(body, deleted_at),
        IdKind::RefreshToken => typed::<lintel_model::RefreshToken>(body, deleted_at),
    }
}

/// Bring a document to the current schema. Returns it (re-derived) followed by any
/// documents the migration split out of it, all at [`SCHEMA_VERSION`].
pub fn migrate_doc(doc: Doc) -> Result<Vec<Doc>> {
    if doc.schema == SCHEMA_VERSION {
        return Ok(vec![doc]);
    }
    let migrated = lintel_model::migrate(doc.kind, &doc.id, doc.schema, doc.body)?;
    let mut out = vec![check_identity(
        doc_from_body(doc.kind, migrated.body, doc.deleted_at),
        doc.kind,
        &doc.tenant_id,
        &doc.id,
    )?];
    for (kind, body) in migrated.extra {
        out.push(doc_from_body(kind, body, doc.deleted_at)?);
    }
    Ok(out)
}

/// A migrated body must still name the record it came from.
fn check_identity(doc: Result<Doc>, kind: IdKind, tenant_id: &str, id: &str) -> Result<Doc> {
    let doc = doc.map_err(|e| match e {
        StoreError::Corrupt { reason, .. } => StoreError::Corrupt {
            kind,
            id: id.into(),
            reason,
        },
        other => other,
    })?;
    if doc.tenant_id != tenant_id || doc.id != id {
        return Err(StoreError::Corrupt {
            kind,
            id: id.into(),
            reason: format!(
                "its body names {}/{} instead of {tenant_id}/{id}",
                doc.tenant_id, doc.id
            ),
        });
    }
    Ok(doc)
}
