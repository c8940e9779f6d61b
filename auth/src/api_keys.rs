//! API keys for BI tools and integrations: `X-API-Key: <key id>.<secret>`. The secret is
//! 256 random bits, shown once; only its SHA-256 is stored (a slow hash adds nothing to a
//! secret that cannot be guessed, and keys are checked on every request).

use crate::AuthError;
use base64::Engine as _;
use lintel_model::{ApiKey, IdKind, Role, new_id, now_unix};
use lintel_store::{Actor, ListOptions, Store, StoreError, StoreExt};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header API keys arrive in.
pub const API_KEY_HEADER: &str = "X-API-Key";
/// Longest key accepted (anything longer is refused before any work).
const MAX_PRESENTED: usize = 256;
/// `last_used_at` is written at most this often per key (seconds).
const LAST_USED_RESOLUTION: i64 = 60;
const HASH_PREFIX: &str = "$sha256$";

/// What a caller asks for when creating a key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub name: String,
    pub description: String,
    pub user_id: Option<String>,
    pub role: Role,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

pub struct ApiKeys {
    store: Arc<dyn Store>,
    /// Key records by id, so a request does not query the store. A change to any key
    /// (revoked, edited, last use recorded) through this process empties it at once;
    /// another process's change is seen within `KEY_CACHE_TTL`.
    cache: lintel_store::FeedCache<String, Option<ApiKey>>,
}

/// How long a key record read from the store is trusted without a change seen on the feed.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

fn hash(secret: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(secret.as_bytes()))
    )
}

fn refused() -> AuthError {
    AuthError::InvalidToken("invalid API key".into())
}

impl ApiKeys {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let cache = lintel_store::FeedCache::new(
            store.changes(),
            &[lintel_model::IdKind::ApiKey],
            KEY_CACHE_TTL,
            10_000,
        );
        ApiKeys { store, cache }
    }

    /// Create a key; returns the record and the value to present (shown once).
    pub async fn create(
        &self,
        actor: &Actor,
        tenant_id: &str,
        new: NewApiKey,
    ) -> Result<(ApiKey, String), AuthError> {
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let key = ApiKey {
            id: new_id(IdKind::ApiKey),
            tenant_id: tenant_id.into(),
            name: new.name,
            description: new.description,
            user_id: new.user_id,
            role: new.role,
            scopes: new.scopes,
            secret_hash: hash(&secret),
            expires_at: new.expires_at,
            ..Default::default()
        };
        let key = self.store.create(actor, key).await.map_err(|e| match e {
            StoreError::Invalid(v) => AuthError::Invalid(v.to_string()),
            e => AuthError::Internal(e.to_string()),
        })?;
        let presented = format!("{}.{secret}", key.id);
        Ok((key, presented))
    }

    /// The key a request presents, if it is valid: known, secret matching (constant
    /// time), not revoked, not expired. Records the last-used time.
    pub async fn authenticate(&self, presented: &str) -> Result<ApiKey, AuthError> {
        if presented.len() > MAX_PRESENTED {
            return Err(refused());
        }
        let (id, secret) = presented.trim().split_once('.').ok_or_else(refused)?;
        if !IdKind::ApiKey.is_valid_id(id) {
            return Err(refused());
        }
        let found = match self.cache.get(&id.to_owned()) {
            Ok(found) => found,
            Err(ticket) => {
                let page = self
                    .store
                    .list_scoped::<ApiKey>(None, ListOptions::by("id", id))
                    .await
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                let found = page.items.into_iter().next();
                self.cache.insert(id.to_owned(), found.clone(), ticket);
                found
            }
        };
        // Hash even when the id is unknown, so timing does not tell ids apart.
        let presented_hash = hash(secret);
        let Some(mut key) = found else {
            return Err(refused());
        };
        if !bool::from(presented_hash.as_bytes().ct_eq(key.secret_hash.as_bytes())) {
            return Err(refused());
        }
        let now = now_unix();
        if key.revoked_at.is_some() {
            return Err(AuthError::InvalidToken("the API key was revoked".into()));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::InvalidToken("the API key has expired".into()));
        }
        if key
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_RESOLUTION)
        {
            key.last_used_at = Some(now);
            match self.store.update_bookkeeping(key.clone()).await {
                Ok(updated) => key = updated,
                // Another request recorded it first: fine.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => tracing::warn!(key = %key.id, error = %e, "could not record API key use"),
            }
        }
        Ok(key)
    }

    /// Revoke a key (it stops working at once). Idempotent.
    pub async fn revoke(
        &self,
        actor: &Actor,
        tenant_id: &str,
        id: &str,
    ) -> Result<ApiKey, StoreError> {
        loop {
            let mut key: ApiKey = self.store.require(tenant_id, id).await?;
            if key.revoked_at.is_some() {
                return Ok(key);
            }
            key.revoked_at = Some(now_unix());
            match self.store.update(actor, key).await {
                Err(StoreError::Conflict { .. }) => continue,
                other => return other,
            }
        }
    }
}
