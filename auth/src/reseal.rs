//! Re-sealing every secret under the keyring's primary key (`lintel keys rotate`), online:
//! each record is re-read, re-sealed and written back with compare-and-swap, so a record
//! changed meanwhile is simply done again from its new content, never overwritten.

use crate::{AuthError, Keyring, SealContext, SecretKeyring};
use lintel_model::{
    Broker, IdentityProvider, Record, RefreshToken, SealedValue, Settings, SettingsBody, SigningKey,
};
use lintel_store::{Actor, ListOptions, Store, StoreError, StoreExt};
use std::sync::Arc;

/// What a re-seal pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResealReport {
    /// Sealed values looked at.
    pub examined: usize,
    /// Values moved to the primary key.
    pub resealed: usize,
    /// Records changed by someone else mid-pass and redone.
    pub retried: usize,
}

/// Where a sealed field belongs (tenant id, record id → context): a [`SealContext`]
/// constructor.
type Field = for<'a> fn(&'a str, &'a str) -> SealContext<'a>;

/// The sealed values of a record, with the context each is sealed under.
trait Sealed: Record {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)>;
}

impl Sealed for Settings {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)> {
        match &mut self.body {
            SettingsBody::Sealed(v) => {
                vec![((|t, r| SealContext::settings_body(t, r)) as Field, v)]
            }
            SettingsBody::Plain(_) => Vec::new(),
        }
    }
}
impl Sealed for IdentityProvider {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)> {
        self.client_secret
            .as_mut()
            .map(|v| ((|t, r| SealContext::client_secret(t, r)) as Field, v))
            .into_iter()
            .collect()
    }
}
impl Sealed for Broker {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)> {
        self.password
            .as_mut()
            .map(|v| ((|t, r| SealContext::broker_password(t, r)) as Field, v))
            .into_iter()
            .collect()
    }
}
impl Sealed for SigningKey {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)> {
        vec![(
            (|t, r| SealContext::private_key(t, r)) as Field,
            &mut self.private_key,
        )]
    }
}

impl Sealed for RefreshToken {
    fn sealed_mut(&mut self) -> Vec<(Field, &mut SealedValue)> {
        vec![(
            (|t, r| SealContext::refresh_token(t, r)) as Field,
            &mut self.refresh_token,
        )]
    }
}

/// Re-seal every sealed value in the store (all tenants) under the primary key.
pub async fn reseal_all(
    store: &Arc<dyn Store>,
    keyring: &Keyring,
) -> Result<ResealReport, AuthError> {
    let keyring = keyring.current();
    let mut report = ResealReport::default();
    reseal_kind::<Settings>(store, &keyring, &mut report).await?;
    reseal_kind::<IdentityProvider>(store, &keyring, &mut report).await?;
    reseal_kind::<Broker>(store, &keyring, &mut report).await?;
    reseal_kind::<SigningKey>(store, &keyring, &mut report).await?;
    reseal_kind::<RefreshToken>(store, &keyring, &mut report).await?;
    Ok(report)
}

async fn reseal_kind<R: Sealed>(
    store: &Arc<dyn Store>,
    keyring: &SecretKeyring,
    report: &mut ResealReport,
) -> Result<(), AuthError> {
    let internal = |e: StoreError| AuthError::Internal(e.to_string());
    let records: Vec<R> = store
        .list_all_scoped(None, ListOptions::default())
        .await
        .map_err(internal)?;
    for record in records {
        report.examined += record.clone().sealed_mut().len();
        let mut current = record;
        loop {
            let (tenant_id, id) = (current.tenant_id().to_owned(), current.id().to_owned());
            let mut changed = false;
            for (field, value) in current.sealed_mut() {
                let ctx = field(&tenant_id, &id);
                if let Some(new) = keyring.reseal(&ctx, value)? {
                    *value = new;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            match store.update(&Actor::system(), current).await {
                Ok(_) => {
                    report.resealed += 1;
                    break;
                }
                Err(StoreError::Conflict { .. }) => {
                    // Written meanwhile: start again from what is there now.
                    report.retried += 1;
                    match store.get::<R>(&tenant_id, &id).await.map_err(internal)? {
                        Some(fresh) => current = fresh,
                        None => break,
                    }
                }
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(internal(e)),
            }
        }
    }
    Ok(())
}
