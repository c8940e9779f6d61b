//! Identity and secrets for Lintel: password hashing (scrypt), login rate limits, access
//! and refresh tokens (EdDSA-signed JWT with PlaceOS-shaped claims), the secret keyring
//! (AES-256-GCM), and the authenticated [`Principal`].

mod api_keys;
mod limits;
pub mod oidc;
mod passwords;
pub mod policy;
mod reseal;
mod secrets;
mod sessions;
mod tokens;

pub use api_keys::{API_KEY_HEADER, ApiKeys, NewApiKey};
pub use limits::*;
pub use oidc::{OidcClient, SignInFlow, SsoIdentity};
pub use passwords::*;
pub use policy::{Access, Action, Resource};
pub use reseal::{ResealReport, reseal_all};
pub use secrets::*;
pub use sessions::{RefreshOutcome, Sessions};
pub use tokens::{AccessClaims, ISSUER, LEEWAY_SECS, TokenService, UserClaim, VerifiedToken};

use lintel_model::Role;
use std::sync::{Arc, RwLock};

/// The keyring in use, shared by everything that seals or opens secrets and replaceable
/// at run time (`lintel keys rotate` reloads it from its source).
#[derive(Clone)]
pub struct Keyring(Arc<RwLock<Arc<SecretKeyring>>>);

impl Keyring {
    pub fn new(keyring: SecretKeyring) -> Self {
        Keyring(Arc::new(RwLock::new(Arc::new(keyring))))
    }
    pub fn current(&self) -> Arc<SecretKeyring> {
        self.0.read().expect("keyring lock").clone()
    }
    pub fn replace(&self, keyring: SecretKeyring) {
        *self.0.write().expect("keyring lock") = Arc::new(keyring);
    }

    /// Seal an MQTT broker's password for the broker record `broker_id`.
    pub fn seal_broker_password(
        &self,
        tenant_id: &str,
        broker_id: &str,
        password: &str,
    ) -> Result<lintel_model::SealedValue, AuthError> {
        self.current().seal(
            &SealContext::broker_password(tenant_id, broker_id),
            password.as_bytes(),
        )
    }

    /// Open a broker's sealed password (`None` when it has none).
    pub fn open_broker_password(
        &self,
        broker: &lintel_model::Broker,
    ) -> Result<Option<zeroize::Zeroizing<String>>, AuthError> {
        let Some(sealed) = &broker.password else {
            return Ok(None);
        };
        let bytes = self.current().open(
            &SealContext::broker_password(&broker.tenant_id, &broker.id),
            sealed,
        )?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| AuthError::Sealed("the password is not UTF-8".into()))?;
        Ok(Some(zeroize::Zeroizing::new(text.to_owned())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A sealed value could not be opened or sealed (unknown key id, tag mismatch, wrong
    /// record). Never carries plaintext or key material.
    #[error("sealed secret: {0}")]
    Sealed(String),
    /// A request the caller can fix (a field that fails validation, a role above their
    /// own); the message names what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// Authenticated, but the role or scopes do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A single sign-on the provider or Lintel's rules refused; the reason is safe to
    /// show the user.
    #[error("sign-in refused: {0}")]
    SignInRefused(String),
    /// An identity provider failed or could not be reached.
    #[error("identity provider: {0}")]
    Upstream(String),
    /// Too many attempts; retry after this many seconds.
    #[error("too many attempts, retry in {0} s")]
    RateLimited(u64),
    #[error("key material unusable: {0}")]
    Keys(String),
    #[error("auth internal error: {0}")]
    Internal(String),
}

/// A tenant's users with this email address, compared case-insensitively as the `email`
/// index stores it (password sign-in, single-sign-on linking and the uniqueness check all
/// look users up this way).
pub async fn users_by_email(
    store: &dyn lintel_store::Store,
    tenant_id: &str,
    email: &str,
) -> Result<Vec<lintel_model::User>, lintel_store::StoreError> {
    use lintel_store::StoreExt;
    store
        .list_all(
            tenant_id,
            lintel_store::ListOptions::by("email", &email.to_ascii_lowercase()),
        )
        .await
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token, from a sign-in session (`sid`) or none (tokens issued before
    /// sessions).
    Token { session_id: Option<String> },
    /// An API key (`X-API-Key`), with its scopes.
    ApiKey { key_id: String },
}

/// Who is calling, after authentication: always within exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    /// The user (`user-…`), or for an API key without a user, the key (`key-…`).
    pub user_id: String,
    pub roles: Vec<Role>,
    /// Narrower permissions than the roles (API keys); empty = the roles' own.
    pub scopes: Vec<String>,
    pub credential: Credential,
}

impl Principal {
    /// The highest role held (roles are ordered staff < support < admin < sysadmin).
    pub fn role(&self) -> Option<Role> {
        self.roles.iter().copied().max()
    }

    /// The audit actor: the user, or the API key acting.
    pub fn actor(&self) -> lintel_store::Actor {
        match &self.credential {
            Credential::ApiKey { key_id } => lintel_store::Actor::of(key_id),
            Credential::Token { .. } => lintel_store::Actor::of(&self.user_id),
        }
    }
}

/// Test fixtures shared by the crate's store-backed tests.
#[cfg(test)]
pub(crate) mod testing {
    use lintel_model::{IdKind, Tenant, new_id};
    use lintel_store::{Actor, EmbeddedStore, Store, StoreExt};
    use std::sync::Arc;

    /// An embedded store in a temporary directory (kept alive by the returned guard).
    pub fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        (dir, store)
    }

    /// A new tenant reached by `domain`.
    pub async fn tenant(store: &Arc<dyn Store>, domain: &str) -> Tenant {
        let t = Tenant {
            id: new_id(IdKind::Tenant),
            name: domain.into(),
            domain: domain.into(),
            ..Default::default()
        };
        store.create(&Actor::system(), t).await.unwrap()
    }
}
