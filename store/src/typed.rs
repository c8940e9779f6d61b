//! Typed access on top of any [`Store`]: validation, the audit trail, soft delete.

use crate::doc::{decode, encode};
use crate::{Doc, MAX_PAGE, Query, Result, Store, StoreError, Write};
use lintel_model::{
    AuditAction, AuditEntry, IdKind, Record, new_time_ordered_id, now_unix, now_unix_ms,
};
use serde_json::Value;

/// Who makes a change, as audit entries record it: `user-…`, `key-…`, or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// Lintel itself (first-run set-up, migrations, retention purges).
    pub fn system() -> Self {
        Actor("system".into())
    }
    /// A user or API key, by id.
    pub fn of(id: &str) -> Self {
        Actor(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Filters and paging for a typed listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListOptions {
    /// `(index, value)`: e.g. `("system", "sys-…")` for a system's modules.
    pub index: Option<(String, String)>,
    pub search: Option<String>,
    /// List tombstones (soft-deleted, not yet purged) instead of live records.
    pub deleted: bool,
    pub after: Option<String>,
    pub offset: usize,
    /// 0 means the default of 100.
    pub limit: usize,
}

impl ListOptions {
    pub fn by(index: &str, value: &str) -> Self {
        ListOptions {
            index: Some((index.into(), value.into())),
            ..Default::default()
        }
    }
}

/// One page of typed records.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage<R> {
    pub items: Vec<R>,
    pub total: u64,
    pub next: Option<String>,
}

fn audit_write<R: Record>(
    actor: &Actor,
    action: AuditAction,
    before: Option<&R>,
    after: Option<&R>,
    version: u64,
    tenant_id: &str,
    id: &str,
) -> Result<Write> {
    let diff = lintel_model::diff(
        before.map(Record::redacted).as_ref(),
        after.map(Record::redacted).as_ref(),
    );
    audit_entry(actor, action, R::KIND, tenant_id, id, version, diff)
}

/// The audit entry of one change, as a write.
fn audit_entry(
    actor: &Actor,
    action: AuditAction,
    kind: IdKind,
    tenant_id: &str,
    id: &str,
    version: u64,
    diff: Value,
) -> Result<Write> {
    let at = now_unix_ms();
    let entry = AuditEntry {
        id: new_time_ordered_id(IdKind::Audit, at),
        tenant_id: tenant_id.into(),
        at,
        actor: actor.as_str().into(),
        record_kind: kind.name().into(),
        record_id: id.into(),
        record_version: version,
        action,
        diff,
        created_at: at / 1000,
        updated_at: at / 1000,
        version: 1,
    };
    Ok(Write::Insert(encode(&entry, None)?))
}

/// An audited event that is not a record change: who, what happened, to which record,
/// and details (never secrets).
pub struct Event<'a> {
    pub actor: &'a Actor,
    pub action: AuditAction,
    pub kind: IdKind,
    /// The record concerned, or `unknown` (a sign-in with an unknown user name).
    pub record_id: &'a str,
    pub details: Value,
}

/// The writes of one audited change: replace the record (CAS on `expected`, the new
/// version is `record.version()`) and record the audit entry.
fn audited_replace<R: Record>(
    actor: &Actor,
    action: AuditAction,
    record: &R,
    before: Option<&R>,
    deleted_at: Option<i64>,
    expected: u64,
) -> Result<Vec<Write>> {
    let mut writes = vec![Write::Replace {
        doc: encode(record, deleted_at)?,
        expected_version: expected,
    }];
    if R::KIND.audited() {
        let after = deleted_at.is_none().then_some(record);
        writes.push(audit_write(
            actor,
            action,
            before,
            after,
            record.version(),
            record.tenant_id(),
            record.id(),
        )?);
    }
    Ok(writes)
}

fn page_of<R: Record>(page: crate::Page) -> Result<ListPage<R>> {
    Ok(ListPage {
        items: page.docs.iter().map(decode).collect::<Result<_>>()?,
        total: page.total,
        next: page.next,
    })
}

/// Typed access to any [`Store`]. Writes validate the record, bump its version and
/// record an audit entry in the same commit.
#[async_trait::async_trait]
pub trait StoreExt: Store {
    /// A live record, or `None` (also for tombstones and malformed ids).
    async fn get<R: Record>(&self, tenant_id: &str, id: &str) -> Result<Option<R>> {
        Ok(self.get_with_tombstone(tenant_id, id).await?.and_then(
            |(r, deleted_at)| match deleted_at {
                None => Some(r),
                Some(_) => None,
            },
        ))
    }

    /// A record and when it was soft-deleted, if it was.
    async fn get_with_tombstone<R: Record>(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(R, Option<i64>)>> {
        if !R::KIND.is_valid_id(id) {
            // A malformed id can never name a record: answer as for a missing one.
            return Ok(None);
        }
        match self.get_doc(R::KIND, tenant_id, id).await? {
            Some(doc) => Ok(Some((decode(&doc)?, doc.deleted_at))),
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

    /// A page of live records (or tombstones) of one tenant. (For `Tenant` itself, that
    /// is the tenant alone: listing every tenant is [`list_scoped`](Self::list_scoped).)
    async fn list<R: Record>(&self, tenant_id: &str, opts: ListOptions) -> Result<ListPage<R>> {
        self.list_scoped(Some(tenant_id), opts).await
    }

    /// A page across tenants when `tenant_id` is `None` (tenants themselves, sysadmin
    /// tooling).
    async fn list_scoped<R: Record>(
        &self,
        tenant_id: Option<&str>,
        opts: ListOptions,
    ) -> Result<ListPage<R>> {
        let limit = if opts.limit == 0 { 100 } else { opts.limit };
        if limit > MAX_PAGE {
            return Err(StoreError::BadQuery(format!(
                "limit {limit} is over the maximum of {MAX_PAGE}"
            )));
        }
        let page = self
            .query(Query {
                kind: R::KIND,
                tenant_id: tenant_id.map(String::from),
                index: opts.index,
                search: opts.search,
                deleted: opts.deleted,
                after: opts.after,
                offset: opts.offset,
                limit,
            })
            .await?;
        page_of(page)
    }

    /// Every live record of one tenant matching `opts` (all pages).
    async fn list_all<R: Record>(&self, tenant_id: &str, opts: ListOptions) -> Result<Vec<R>> {
        self.list_all_scoped(Some(tenant_id), opts).await
    }

    /// Every record matching `opts` (all pages), across tenants when `tenant_id` is `None`.
    async fn list_all_scoped<R: Record>(
        &self,
        tenant_id: Option<&str>,
        mut opts: ListOptions,
    ) -> Result<Vec<R>> {
        opts.limit = MAX_PAGE;
        let mut out = Vec::new();
        loop {
            let page = self.list_scoped::<R>(tenant_id, opts.clone()).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => opts.after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Every tenant.
    async fn tenants(&self) -> Result<Vec<lintel_model::Tenant>> {
        self.list_all_scoped(None, ListOptions::default()).await
    }

    /// Create one record (version 1); `AlreadyExists` if its id is taken.
    async fn create<R: Record>(&self, actor: &Actor, record: R) -> Result<R> {
        let mut created = self.create_all(actor, vec![Box::new(record)]).await?;
        let doc = created.pop().expect("one record in, one out");
        decode(&doc)
    }

    /// Create records atomically (all or none on the embedded store). Each gets
    /// version 1 and an audit entry.
    async fn create_all(
        &self,
        actor: &Actor,
        records: Vec<Box<dyn ErasedRecord>>,
    ) -> Result<Vec<Doc>> {
        let mut writes = Vec::with_capacity(records.len() * 2);
        let mut docs = Vec::with_capacity(records.len());
        for mut r in records {
            r.prepare_insert()?;
            let doc = r.to_doc()?;
            writes.push(Write::Insert(doc.clone()));
            writes.extend(r.audit(actor)?);
            docs.push(doc);
        }
        self.commit(writes).await?;
        Ok(docs)
    }

    /// Replace a record whose stored version is `record.version()`; returns it with the
    /// next version. A stale version is a `Conflict` and changes nothing.
    async fn update<R: Record>(&self, actor: &Actor, mut record: R) -> Result<R> {
        record.validate()?;
        let before: R = self.require(record.tenant_id(), record.id()).await?;
        let expected = record.version();
        record.set_version(expected + 1);
        record.set_created_at(before.created_at());
        record.set_updated_at(now_unix());
        let writes = audited_replace(
            actor,
            AuditAction::Updated,
            &record,
            Some(&before),
            None,
            expected,
        )?;
        self.commit(writes).await?;
        Ok(record)
    }

    /// Replace a record like [`update`](Self::update) but without an audit entry: for
    /// bookkeeping that is not configuration (an API key's last-used time). CAS applies.
    async fn update_bookkeeping<R: Record>(&self, mut record: R) -> Result<R> {
        record.validate()?;
        let expected = record.version();
        record.set_version(expected + 1);
        record.set_updated_at(now_unix());
        self.commit(vec![Write::Replace {
            doc: encode(&record, None)?,
            expected_version: expected,
        }])
        .await?;
        Ok(record)
    }

    /// Record an event that is not a record change (a sign-in, a failed sign-in, a
    /// revoked session) in the tenant's audit trail.
    async fn record_event(&self, tenant_id: &str, event: Event<'_>) -> Result<()> {
        let write = audit_entry(
            event.actor,
            event.action,
            event.kind,
            tenant_id,
            event.record_id,
            0,
            event.details,
        )?;
        self.commit(vec![write]).await
    }

    /// Soft delete: the record becomes a tombstone, hidden from reads and listings and
    /// restorable until purged. `expected_version` guards against deleting a record
    /// someone just changed; `None` deletes whatever version is current.
    async fn delete<R: Record>(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
        expected_version: Option<u64>,
    ) -> Result<()> {
        let mut record: R = self.require(tenant_id, id).await?;
        let current = record.version();
        let expected = expected_version.unwrap_or(current);
        let before = record.clone();
        record.set_version(expected + 1);
        let writes = audited_replace(
            actor,
            AuditAction::Deleted,
            &record,
            Some(&before),
            Some(now_unix()),
            expected,
        )?;
        self.commit(writes).await
    }

    /// Bring back a soft-deleted record (until it is purged).
    async fn restore<R: Record>(&self, actor: &Actor, tenant_id: &str, id: &str) -> Result<R> {
        let not_found = || StoreError::NotFound {
            kind: R::KIND,
            id: id.to_string(),
        };
        let (mut record, deleted_at) = self
            .get_with_tombstone::<R>(tenant_id, id)
            .await?
            .ok_or_else(not_found)?;
        if deleted_at.is_none() {
            return Ok(record);
        }
        let expected = record.version();
        record.set_version(expected + 1);
        record.set_updated_at(now_unix());
        let writes = audited_replace(actor, AuditAction::Restored, &record, None, None, expected)?;
        self.commit(writes).await?;
        Ok(record)
    }

    /// The audit trail of one tenant, oldest first; of one record if `record_id` is set.
    async fn audit_log(
        &self,
        tenant_id: &str,
        record_id: Option<&str>,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage<AuditEntry>> {
        let mut opts = match record_id {
            Some(id) => ListOptions::by("record", id),
            None => ListOptions::default(),
        };
        opts.after = after;
        opts.limit = limit;
        self.list(tenant_id, opts).await
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Purge tombstones deleted before `cutoff` (seconds since the epoch), in every tenant.
/// Each purge is audited as done by `system`. Returns how many records were purged.
pub async fn purge_expired<S: Store + ?Sized>(store: &S, cutoff: i64) -> Result<usize> {
    let mut purged = 0;
    for kind in IdKind::ALL {
        let mut after = None;
        loop {
            let mut q = Query::new(kind, None);
            (q.deleted, q.after, q.limit) = (true, after.take(), MAX_PAGE);
            let page = store.query(q).await?;
            let mut writes = Vec::new();
            for doc in &page.docs {
                if doc.deleted_at.is_some_and(|at| at < cutoff) {
                    writes.push(Write::Purge {
                        kind,
                        tenant_id: doc.tenant_id.clone(),
                        id: doc.id.clone(),
                        expected_version: doc.version,
                    });
                    if kind.audited() {
                        writes.push(purge_audit(doc)?);
                    }
                    purged += 1;
                }
            }
            if !writes.is_empty() {
                store.commit(writes).await?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(purged + purge_orphaned_refresh_tokens(store).await?)
}

/// A module's kept refresh token ([`lintel_model::RefreshToken`]) goes once the module is
/// purged (while it is a tombstone it can be restored, and the token with it): a sealed
/// credential is not kept for a module that no longer exists. Returns how many went.
async fn purge_orphaned_refresh_tokens<S: Store + ?Sized>(store: &S) -> Result<usize> {
    use lintel_model::RefreshToken;
    let mut purged = 0;
    let mut after = None;
    loop {
        let mut q = Query::new(IdKind::RefreshToken, None);
        (q.after, q.limit) = (after.take(), MAX_PAGE);
        let page = store.query(q).await?;
        for doc in &page.docs {
            let token: RefreshToken = decode(doc)?;
            if store
                .get_doc(IdKind::Module, &token.tenant_id, &token.module_id)
                .await?
                .is_some()
            {
                continue;
            }
            // A purge takes tombstones only: delete, then purge. A token written meanwhile
            // (a conflict) is left for the next sweep.
            let gone = store
                .delete::<RefreshToken>(
                    &Actor::system(),
                    &token.tenant_id,
                    &token.id,
                    Some(token.version),
                )
                .await;
            let purge = Write::Purge {
                kind: IdKind::RefreshToken,
                tenant_id: token.tenant_id.clone(),
                id: token.id.clone(),
                expected_version: token.version + 1,
            };
            match gone {
                Ok(()) => match store.commit(vec![purge]).await {
                    Ok(()) => purged += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                },
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(purged)
}

fn purge_audit(doc: &Doc) -> Result<Write> {
    audit_entry(
        &Actor::system(),
        AuditAction::Purged,
        doc.kind,
        &doc.tenant_id,
        &doc.id,
        doc.version,
        Value::Object(Default::default()),
    )
}

/// A record of any kind, for atomic multi-kind creates.
pub trait ErasedRecord: Send {
    fn prepare_insert(&mut self) -> Result<()>;
    fn to_doc(&self) -> Result<Doc>;
    fn audit(&self, actor: &Actor) -> Result<Option<Write>>;
}

impl<R: Record> ErasedRecord for R {
    fn prepare_insert(&mut self) -> Result<()> {
        self.validate()?;
        self.set_version(1);
        let now = now_unix();
        if self.created_at() == 0 {
            self.set_created_at(now);
        }
        self.set_updated_at(now);
        Ok(())
    }
    fn to_doc(&self) -> Result<Doc> {
        encode(self, None)
    }
    fn audit(&self, actor: &Actor) -> Result<Option<Write>> {
        if R::KIND == IdKind::Audit {
            return Err(StoreError::BadQuery(
                "audit entries are written by the store, not created directly".into(),
            ));
        }
        if !R::KIND.audited() {
            return Ok(None);
        }
        audit_write(
            actor,
            AuditAction::Created,
            None,
            Some(self),
            1,
            self.tenant_id(),
            self.id(),
        )
        .map(Some)
    }
}
