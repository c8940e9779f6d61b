//! Access tokens: EdDSA-signed JWTs with PlaceOS-shaped claims, signed by per-tenant keys
//! kept in the Store (private halves sealed by the keyring). Keys rotate without logging
//! anyone out: a new key signs, older ones keep verifying until every token they signed
//! has expired, then retire.

use crate::{AuthError, Keyring, SealContext};
use base64::Engine as _;
use ed25519_dalek::SigningKey as Ed25519Key;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lintel_model::{IdKind, Role, SigningKey, Tenant, User, new_id, now_unix};
use lintel_store::{Actor, ListOptions, Store, StoreExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The `iss` of every token Lintel issues.
pub const ISSUER: &str = "lintel";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// How long a cached key (and a tenant's choice of signing key) is trusted before it is
/// read again, so a key rotated or retired by another process is picked up.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Keys cached for verification, at most (keys are few: a handful per tenant).
const MAX_CACHED_KEYS: usize = 10_000;

/// The user inside the token, as PlaceOS puts it (`u`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserClaim {
    pub n: String,
    pub e: String,
    pub r: Vec<Role>,
}

/// PlaceOS-shaped access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    /// The tenant's domain.
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub scope: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub u: UserClaim,
    /// The sign-in session (refresh-token family) the token belongs to: logging out or a
    /// reused refresh token revokes it, and with it this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// A verified token: its claims and the tenant whose key signed it (and whose domain is
/// its audience).
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: AccessClaims,
    pub tenant_id: String,
}

struct CachedKey {
    tenant_id: String,
    domain: String,
    decoding: DecodingKey,
    retire_at: Option<i64>,
    loaded: Instant,
}

struct ActiveKey {
    kid: String,
    encoding: EncodingKey,
    loaded: Instant,
}

/// Issues and verifies access tokens; manages the tenants' signing keys.
pub struct TokenService {
    store: Arc<dyn Store>,
    keyring: Keyring,
    ttl: Duration,
    key_max_age: Duration,
    verify_keys: RwLock<HashMap<String, Arc<CachedKey>>>,
    signing: RwLock<HashMap<String, Arc<ActiveKey>>>,
    /// Tokens already verified (a client sends the same one with every request): the
    /// signature is checked once per token and 5 s. Emptied by any signing-key change;
    /// `exp` is checked on every use.
    verified: lintel_store::FeedCache<String, VerifiedToken>,
}

fn internal(e: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(e.to_string())
}

fn invalid(msg: impl Into<String>) -> AuthError {
    AuthError::InvalidToken(msg.into())
}

impl TokenService {
    /// `ttl`: access-token lifetime. `key_max_age`: a tenant's signing key is replaced
    /// when it is older than this (at the next token issued).
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        ttl: Duration,
        key_max_age: Duration,
    ) -> Self {
        TokenService {
            keyring,
            ttl,
            key_max_age,
            verify_keys: RwLock::new(HashMap::new()),
            signing: RwLock::new(HashMap::new()),
            verified: lintel_store::FeedCache::new(
                store.changes(),
                &[IdKind::SigningKey],
                Duration::from_secs(5),
                10_000,
            ),
            store,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// An access token for `user` of `tenant`, optionally tied to a sign-in session.
    pub async fn issue(
        &self,
        tenant: &Tenant,
        user: &User,
        session_id: Option<&str>,
    ) -> Result<String, AuthError> {
        let key = self.active_key(&tenant.id).await?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            aud: tenant.domain.clone(),
            sub: user.id.clone(),
            scope: vec!["public".into()],
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            u: UserClaim {
                n: user.name.clone(),
                e: user.email.clone(),
                r: user.roles.clone(),
            },
            sid: session_id.map(str::to_owned),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(internal)
    }

    /// Verify a token: the algorithm is pinned to EdDSA, the `kid` must name a live key,
    /// the signature must verify with it, `iss` must be Lintel, `aud` the domain of the
    /// key's tenant, and `exp`/`nbf` hold within [`LEEWAY_SECS`].
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let ticket = match self.verified.get(&token.to_owned()) {
            Ok(v) if v.claims.exp + LEEWAY_SECS > now_unix() as u64 => return Ok(v),
            Ok(_) => return Err(invalid("the token has expired")),
            Err(ticket) => ticket,
        };
        let verified = self.verify_signed(token).await?;
        self.verified
            .insert(token.to_owned(), verified.clone(), ticket);
        Ok(verified)
    }

    async fn verify_signed(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a well-formed JWT"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted (only EdDSA)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .filter(|k| IdKind::SigningKey.is_valid_id(k))
            .ok_or_else(|| invalid("the token names no signing key"))?;
        let key = self
            .verify_key(&kid)
            .await?
            .ok_or_else(|| invalid("unknown signing key"))?;
        if key.retire_at.is_some_and(|t| t <= now_unix()) {
            return Err(invalid("the signing key is retired"));
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[key.domain.as_str()]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "sub", "iss"]);
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &v)
            .map_err(|e| invalid(describe(&e)))?
            .claims;
        Ok(VerifiedToken {
            claims,
            tenant_id: key.tenant_id.clone(),
        })
    }

    /// The tenant's public keys that still verify, as a JWKS document.
    pub async fn jwks(&self, tenant_id: &str) -> Result<serde_json::Value, AuthError> {
        let now = now_unix();
        let keys: Vec<SigningKey> = self
            .store
            .list_all(tenant_id, ListOptions::default())
            .await
            .map_err(internal)?;
        let jwks: Vec<serde_json::Value> = keys
            .iter()
            .filter(|k| k.retire_at.is_none_or(|t| t > now))
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.id, "x": k.public_key,
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": jwks }))
    }

    /// Start signing the tenant's tokens with a new key. Older keys keep verifying until
    /// every token they signed has expired (`ttl` + leeway from now), then retire.
    pub async fn rotate(&self, tenant_id: &str) -> Result<String, AuthError> {
        Ok(self.rotate_key(tenant_id).await?.id)
    }

    /// [`rotate`](Self::rotate), returning the new key.
    async fn rotate_key(&self, tenant_id: &str) -> Result<SigningKey, AuthError> {
        let retire_at = now_unix() + (self.ttl.as_secs() + LEEWAY_SECS) as i64;
        let existing: Vec<SigningKey> = self
            .store
            .list_all(tenant_id, ListOptions::default())
            .await
            .map_err(internal)?;
        let created = self.create_key(tenant_id).await?;
        for mut old in existing {
            if old.retire_at.is_none() {
                old.retire_at = Some(retire_at);
                self.store
                    .update(&Actor::system(), old)
                    .await
                    .map_err(internal)?;
            }
        }
        self.signing.write().expect("lock").remove(tenant_id);
        self.verify_keys.write().expect("lock").clear();
        Ok(created)
    }

    /// Delete keys retired more than a day ago (tokens they signed expired long since).
    pub async fn remove_retired(&self) -> Result<usize, AuthError> {
        let cutoff = now_unix() - 86_400;
        let keys: Vec<SigningKey> = self
            .store
            .list_all_scoped(None, ListOptions::default())
            .await
            .map_err(internal)?;
        let mut removed = 0;
        for k in keys
            .iter()
            .filter(|k| k.retire_at.is_some_and(|t| t < cutoff))
        {
            self.store
                .delete::<SigningKey>(&Actor::system(), &k.tenant_id, &k.id, Some(k.version))
                .await
                .map_err(internal)?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn active_key(&self, tenant_id: &str) -> Result<Arc<ActiveKey>, AuthError> {
        if let Some(k) = self.signing.read().expect("lock").get(tenant_id)
            && k.loaded.elapsed() < CACHE_TTL
        {
            return Ok(k.clone());
        }
        let keys: Vec<SigningKey> = self
            .store
            .list_all(tenant_id, ListOptions::default())
            .await
            .map_err(internal)?;
        let newest = keys
            .into_iter()
            .filter(|k| k.retire_at.is_none())
            .max_by_key(|k| (k.created_at, k.id.clone()));
        let max_age = self.key_max_age.as_secs() as i64;
        let key = match newest {
            Some(k) if now_unix() - k.created_at < max_age => k,
            Some(_) => self.rotate_key(tenant_id).await?,
            None => self.create_key(tenant_id).await?,
        };
        let der = self.keyring.current().open(
            &SealContext::private_key(tenant_id, &key.id),
            &key.private_key,
        )?;
        let active = Arc::new(ActiveKey {
            kid: key.id.clone(),
            encoding: EncodingKey::from_ed_der(&der),
            loaded: Instant::now(),
        });
        self.signing
            .write()
            .expect("lock")
            .insert(tenant_id.to_owned(), active.clone());
        Ok(active)
    }

    async fn create_key(&self, tenant_id: &str) -> Result<SigningKey, AuthError> {
        let key = Ed25519Key::generate(&mut rand::rngs::OsRng);
        let der =
            zeroize::Zeroizing::new(key.to_pkcs8_der().map_err(internal)?.as_bytes().to_vec());
        let id = new_id(IdKind::SigningKey);
        let sealed = self
            .keyring
            .current()
            .seal(&SealContext::private_key(tenant_id, &id), &der)?;
        let record = SigningKey {
            id,
            tenant_id: tenant_id.into(),
            algorithm: "EdDSA".into(),
            public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key.verifying_key().to_bytes()),
            private_key: sealed,
            ..Default::default()
        };
        self.store
            .create(&Actor::system(), record)
            .await
            .map_err(internal)
    }

    async fn verify_key(&self, kid: &str) -> Result<Option<Arc<CachedKey>>, AuthError> {
        if let Some(k) = self.verify_keys.read().expect("lock").get(kid)
            && k.loaded.elapsed() < CACHE_TTL
        {
            return Ok(Some(k.clone()));
        }
        let page = self
            .store
            .list_scoped::<SigningKey>(None, ListOptions::by("id", kid))
            .await
            .map_err(internal)?;
        let Some(key) = page.items.into_iter().next() else {
            self.verify_keys.write().expect("lock").remove(kid);
            return Ok(None);
        };
        let tenant: Tenant = self
            .store
            .get(&key.tenant_id, &key.tenant_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| invalid("the signing key's tenant no longer exists"))?;
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&key.public_key)
            .map_err(|_| internal(format!("signing key {} has a malformed public key", key.id)))?;
        let cached = Arc::new(CachedKey {
            tenant_id: key.tenant_id,
            domain: tenant.domain,
            decoding: DecodingKey::from_ed_der(&public),
            retire_at: key.retire_at,
            loaded: Instant::now(),
        });
        let mut cache = self.verify_keys.write().expect("lock");
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(kid.to_owned(), cached.clone());
        Ok(Some(cached))
    }
}

/// A short, fixed description of a verification failure (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet",
        K::InvalidAudience => "the token is for another tenant",
        K::InvalidIssuer => "the token was not issued by Lintel",
        K::InvalidSignature => "the token's signature does not verify",
        K::InvalidAlgorithm => "the token's algorithm is not accepted",
        K::MissingRequiredClaim(_) => "the token lacks a required claim",
        _ => "the token is malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKeyring;
    use lintel_model::new_id;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        tokens: TokenService,
        tenant: Tenant,
        other: Tenant,
        user: User,
    }

    async fn fixture(ttl: u64) -> Fixture {
        let (dir, store) = crate::testing::store();
        let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line()).unwrap());
        let tokens = TokenService::new(
            store.clone(),
            keyring,
            Duration::from_secs(ttl),
            Duration::from_secs(86_400),
        );
        let tenant = crate::testing::tenant(&store, "a.example").await;
        let other = crate::testing::tenant(&store, "b.example").await;
        let user = User {
            id: new_id(IdKind::User),
            tenant_id: tenant.id.clone(),
            name: "Ada".into(),
            email: "ada@a.example".into(),
            roles: vec![Role::Admin],
            ..Default::default()
        };
        Fixture {
            _dir: dir,
            store,
            tokens,
            tenant,
            other,
            user,
        }
    }

    fn b64() -> base64::engine::GeneralPurpose {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    }

    /// Re-sign `claims` with the tenant's own active key (a token Lintel could have made).
    async fn sign(f: &Fixture, tenant: &str, claims: &AccessClaims) -> String {
        let key = f.tokens.active_key(tenant).await.unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
    }

    #[tokio::test]
    async fn issued_tokens_verify_with_the_tenant_and_session() {
        let f = fixture(60).await;
        let t = f
            .tokens
            .issue(&f.tenant, &f.user, Some("session-x"))
            .await
            .unwrap();
        let v = f.tokens.verify(&t).await.unwrap();
        assert_eq!(v.tenant_id, f.tenant.id);
        assert_eq!(v.claims.aud, "a.example");
        assert_eq!(v.claims.sid.as_deref(), Some("session-x"));
        assert_eq!(v.claims.u.r, vec![Role::Admin]);
        let jwks = f.tokens.jwks(&f.tenant.id).await.unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        // The private key is sealed at rest.
        let keys: Vec<SigningKey> = f
            .store
            .list_all(&f.tenant.id, ListOptions::default())
            .await
            .unwrap();
        assert!(!serde_json::to_string(&keys[0]).unwrap().contains("PRIVATE"));
    }

    #[tokio::test]
    async fn every_forgery_is_refused_with_a_clear_reason() {
        let f = fixture(60).await;
        let good = f.tokens.issue(&f.tenant, &f.user, None).await.unwrap();
        let claims = f.tokens.verify(&good).await.unwrap().claims;
        let kid = f.tokens.active_key(&f.tenant.id).await.unwrap().kid.clone();
        let reason = |r: Result<VerifiedToken, AuthError>| r.unwrap_err().to_string();

        // alg: none
        let none = format!(
            "{}.{}.",
            b64().encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#)),
            good.split('.').nth(1).unwrap()
        );
        let e = reason(f.tokens.verify(&none).await);
        assert!(
            e.contains("well-formed") || e.contains("not accepted"),
            "{e}"
        );
        // HS256 signed with the public key as the HMAC secret.
        let jwks = f.tokens.jwks(&f.tenant.id).await.unwrap();
        let public = b64()
            .decode(jwks["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(kid.clone()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(reason(f.tokens.verify(&hs).await).contains("HS256"));
        // Tampered payload (roles raised).
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let mut c: serde_json::Value =
            serde_json::from_slice(&b64().decode(&parts[1]).unwrap()).unwrap();
        c["u"]["r"] = serde_json::json!(["sysadmin"]);
        parts[1] = b64().encode(c.to_string());
        assert!(reason(f.tokens.verify(&parts.join(".")).await).contains("signature"));
        // Unknown kid.
        let mut h: serde_json::Value =
            serde_json::from_slice(&b64().decode(&parts[0]).unwrap()).unwrap();
        h["kid"] = serde_json::json!(new_id(IdKind::SigningKey));
        let unknown = format!(
            "{}.{}",
            b64().encode(h.to_string()),
            good.split_once('.').unwrap().1
        );
        assert!(reason(f.tokens.verify(&unknown).await).contains("unknown signing key"));
        // Wrong audience: another tenant's domain, signed by this tenant's key.
        let mut other_aud = claims.clone();
        other_aud.aud = f.other.domain.clone();
        let t = sign(&f, &f.tenant.id, &other_aud).await;
        assert!(reason(f.tokens.verify(&t).await).contains("another tenant"));
        // Expired, and not yet valid (beyond the leeway).
        let now = jsonwebtoken::get_current_timestamp();
        let mut old = claims.clone();
        (old.iat, old.nbf, old.exp) = (now - 7200, now - 7200, now - 3600);
        assert!(
            reason(f.tokens.verify(&sign(&f, &f.tenant.id, &old).await).await).contains("expired")
        );
        let mut future = claims.clone();
        (future.nbf, future.exp) = (now + 600, now + 1200);
        assert!(
            reason(
                f.tokens
                    .verify(&sign(&f, &f.tenant.id, &future).await)
                    .await
            )
            .contains("not valid yet")
        );
        // Within the leeway, a skewed clock is fine.
        let mut skew = claims.clone();
        skew.nbf = now + 10;
        f.tokens
            .verify(&sign(&f, &f.tenant.id, &skew).await)
            .await
            .unwrap();
        assert!(reason(f.tokens.verify("garbage").await).contains("well-formed"));
    }

    #[tokio::test]
    async fn rotation_keeps_old_tokens_valid_until_they_expire() {
        let f = fixture(60).await;
        let before = f.tokens.issue(&f.tenant, &f.user, None).await.unwrap();
        let new_kid = f.tokens.rotate(&f.tenant.id).await.unwrap();
        let after = f.tokens.issue(&f.tenant, &f.user, None).await.unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&after).unwrap().kid.unwrap(),
            new_kid
        );
        f.tokens.verify(&before).await.unwrap();
        f.tokens.verify(&after).await.unwrap();
        let jwks = f.tokens.jwks(&f.tenant.id).await.unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
        // Once retired, the old key no longer verifies.
        let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();
        let mut old: SigningKey = f.store.require(&f.tenant.id, &old_kid).await.unwrap();
        old.retire_at = Some(now_unix() - 1);
        f.store.update(&Actor::system(), old).await.unwrap();
        f.tokens.verify_keys.write().unwrap().clear();
        let e = f.tokens.verify(&before).await.unwrap_err();
        assert!(e.to_string().contains("retired"), "{e}");
    }
}
