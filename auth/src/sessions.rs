//! Sign-in sessions and their rotating refresh tokens, with reuse detection: a refresh
//! token works once; presenting one that was already exchanged means it leaked, and the
//! whole session (every token of the family, access tokens included) is revoked.

use crate::AuthError;
use base64::Engine as _;
use lintel_model::{AuditAction, IdKind, SESSION_USED_HASHES, Session, new_id, now_unix};
use lintel_store::{Actor, Event, Store, StoreError, StoreExt};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Longest refresh token accepted (anything longer is refused before any work).
const MAX_REFRESH_TOKEN: usize = 256;

/// What exchanging a refresh token did.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The token was current: here is the session and the next refresh token.
    Rotated {
        session: Box<Session>,
        refresh_token: String,
    },
    /// The token had already been exchanged: the session is now revoked.
    Reused,
}

/// Creates, rotates and revokes sign-in sessions in the Store.
pub struct Sessions {
    store: Arc<dyn Store>,
    lifetime: Duration,
    /// Sessions as access tokens name them on every request; emptied by any session
    /// change through this process (a refresh, a logout, a revocation), else kept 5 s.
    live: lintel_store::FeedCache<(String, String), Option<Session>>,
}

fn internal(e: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(e.to_string())
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `<tenant id>.<session id>.<secret>`: ids are `[A-Za-z0-9_-]`, so `.` separates.
fn format_token(tenant_id: &str, session_id: &str, secret: &str) -> String {
    format!("{tenant_id}.{session_id}.{secret}")
}

/// The tenant and session a refresh token names, and its secret; `None` if malformed.
pub fn parse_refresh_token(token: &str) -> Option<(&str, &str, &str)> {
    if token.len() > MAX_REFRESH_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (t, s, secret) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none()
        && IdKind::Tenant.is_valid_id(t)
        && IdKind::Session.is_valid_id(s)
        && !secret.is_empty())
    .then_some((t, s, secret))
}

impl Sessions {
    /// `lifetime`: how long a session lasts from sign-in, however often it refreshes.
    pub fn new(store: Arc<dyn Store>, lifetime: Duration) -> Self {
        let live = lintel_store::FeedCache::new(
            store.changes(),
            &[lintel_model::IdKind::Session],
            Duration::from_secs(5),
            10_000,
        );
        Sessions {
            store,
            lifetime,
            live,
        }
    }

    /// Start a session for a user who just signed in; returns it and its first refresh
    /// token (shown to the client once; only its hash is stored).
    pub async fn start(
        &self,
        tenant_id: &str,
        user_id: &str,
        method: &str,
    ) -> Result<(Session, String), AuthError> {
        let secret = new_secret();
        let now = now_unix();
        let session = Session {
            id: new_id(IdKind::Session),
            tenant_id: tenant_id.into(),
            user_id: user_id.into(),
            method: method.into(),
            refresh_hash: digest(&secret),
            expires_at: now + self.lifetime.as_secs() as i64,
            last_used_at: now,
            ..Default::default()
        };
        let session = self
            .store
            .create(&Actor::of(user_id), session)
            .await
            .map_err(internal)?;
        let token = format_token(tenant_id, &session.id, &secret);
        Ok((session, token))
    }

    /// Whether the session is live (exists, not revoked, not expired).
    pub async fn check(&self, tenant_id: &str, session_id: &str) -> Result<Session, AuthError> {
        let key = (tenant_id.to_owned(), session_id.to_owned());
        let found = match self.live.get(&key) {
            Ok(found) => found,
            Err(ticket) => {
                let found: Option<Session> = self
                    .store
                    .get(tenant_id, session_id)
                    .await
                    .map_err(internal)?;
                self.live.insert(key, found.clone(), ticket);
                found
            }
        };
        let session =
            found.ok_or_else(|| AuthError::InvalidToken("the session has ended".into()))?;
        if session.revoked_at.is_some() {
            return Err(AuthError::InvalidToken("the session was revoked".into()));
        }
        if session.expires_at <= now_unix() {
            return Err(AuthError::InvalidToken("the session has expired".into()));
        }
        Ok(session)
    }

    /// Exchange a refresh token for the next one. A token already exchanged revokes the
    /// session ([`RefreshOutcome::Reused`]); an unknown, expired or revoked one is an
    /// `InvalidToken` error.
    pub async fn refresh(&self, token: &str) -> Result<RefreshOutcome, AuthError> {
        let (tenant_id, session_id, secret) = parse_refresh_token(token)
            .ok_or_else(|| AuthError::InvalidToken("malformed refresh token".into()))?;
        let presented = digest(secret);
        // One retry: a concurrent exchange may have rotated the session under us, in
        // which case the second look sees this token as already used.
        for _ in 0..2 {
            let mut session = self.check(tenant_id, session_id).await?;
            if bool::from(presented.as_bytes().ct_eq(session.refresh_hash.as_bytes())) {
                let next = new_secret();
                let old = std::mem::replace(&mut session.refresh_hash, digest(&next));
                session.used_hashes.push(old);
                let excess = session
                    .used_hashes
                    .len()
                    .saturating_sub(SESSION_USED_HASHES);
                session.used_hashes.drain(..excess);
                session.last_used_at = now_unix();
                match self
                    .store
                    .update(&Actor::of(&session.user_id), session)
                    .await
                {
                    Ok(session) => {
                        let refresh_token = format_token(tenant_id, session_id, &next);
                        return Ok(RefreshOutcome::Rotated {
                            session: Box::new(session),
                            refresh_token,
                        });
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(internal(e)),
                }
            }
            let reused = session
                .used_hashes
                .iter()
                .any(|h| bool::from(h.as_bytes().ct_eq(presented.as_bytes())));
            if reused {
                tracing::warn!(
                    tenant = tenant_id,
                    session = session_id,
                    "refresh token reused: revoking the session"
                );
                self.revoke(tenant_id, session_id, "refresh token reused", None)
                    .await?;
                return Ok(RefreshOutcome::Reused);
            }
            return Err(AuthError::InvalidToken("unknown refresh token".into()));
        }
        Err(AuthError::InvalidToken(
            "the refresh token was exchanged concurrently".into(),
        ))
    }

    /// End a session (logout, reuse, an administrator). Idempotent. `by` is the actor
    /// when a person ends it (logout); `None` means Lintel revoked it.
    pub async fn revoke(
        &self,
        tenant_id: &str,
        session_id: &str,
        reason: &str,
        by: Option<&Actor>,
    ) -> Result<(), AuthError> {
        loop {
            let Some(mut session) = self
                .store
                .get::<Session>(tenant_id, session_id)
                .await
                .map_err(internal)?
            else {
                return Ok(());
            };
            if session.revoked_at.is_some() {
                return Ok(());
            }
            session.revoked_at = Some(now_unix());
            session.revoked_reason = Some(reason.into());
            let user_id = session.user_id.clone();
            match self.store.update(&Actor::system(), session).await {
                Ok(_) => {
                    let action = if by.is_some() {
                        AuditAction::SignedOut
                    } else {
                        AuditAction::SessionRevoked
                    };
                    let system = Actor::system();
                    self.store
                        .record_event(
                            tenant_id,
                            Event {
                                actor: by.unwrap_or(&system),
                                action,
                                kind: IdKind::User,
                                record_id: &user_id,
                                details: serde_json::json!({"session": session_id, "reason": reason}),
                            },
                        )
                        .await
                        .map_err(internal)?;
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
    }

    /// Delete sessions that ended (expired or revoked) more than a day ago; they only
    /// matter for reuse detection while their refresh tokens could still be presented.
    pub async fn remove_ended(&self) -> Result<usize, AuthError> {
        let cutoff = now_unix() - 86_400;
        let mut removed = 0;
        let all: Vec<Session> = self
            .store
            .list_all_scoped(None, lintel_store::ListOptions::default())
            .await
            .map_err(internal)?;
        for s in all {
            let ended = s.revoked_at.unwrap_or(s.expires_at).min(s.expires_at);
            if ended < cutoff {
                match self
                    .store
                    .delete::<Session>(&Actor::system(), &s.tenant_id, &s.id, Some(s.version))
                    .await
                {
                    Ok(()) => removed += 1,
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(internal(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Revoke every live session of a user (password change, user disabled).
    pub async fn revoke_all(
        &self,
        tenant_id: &str,
        user_id: &str,
        reason: &str,
    ) -> Result<usize, AuthError> {
        let sessions: Vec<Session> = self
            .store
            .list_all(tenant_id, lintel_store::ListOptions::by("user", user_id))
            .await
            .map_err(internal)?;
        let mut n = 0;
        for s in sessions.iter().filter(|s| s.revoked_at.is_none()) {
            self.revoke(tenant_id, &s.id, reason, None).await?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKeys, Keyring, NewApiKey, SealContext, SecretKeyring, reseal_all};
    use lintel_model::{Broker, EncryptionLevel, Settings, SettingsBody};
    use lintel_store::ListOptions;

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>, String) {
        let (dir, store) = crate::testing::store();
        let t = crate::testing::tenant(&store, "a.example").await;
        (dir, store, t.id)
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
        let (_d, store, tenant) = store().await;
        let sessions = Sessions::new(store.clone(), Duration::from_secs(3600));
        let (session, first) = sessions.start(&tenant, "user-a", "password").await.unwrap();
        let RefreshOutcome::Rotated {
            refresh_token: second,
            ..
        } = sessions.refresh(&first).await.unwrap()
        else {
            panic!("first exchange must rotate")
        };
        assert_ne!(first, second);
        // The first token again: reuse. The session dies, the newest token with it.
        assert!(matches!(
            sessions.refresh(&first).await.unwrap(),
            RefreshOutcome::Reused
        ));
        let e = sessions.refresh(&second).await.unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
        let e = sessions.check(&tenant, &session.id).await.unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
        // A forged secret for a live session is refused without revoking it.
        let (s2, _t) = sessions.start(&tenant, "user-a", "password").await.unwrap();
        let forged = format!("{tenant}.{}.{}", s2.id, "A".repeat(43));
        assert!(sessions.refresh(&forged).await.is_err());
        sessions.check(&tenant, &s2.id).await.unwrap();
        // Malformed and oversized tokens.
        assert!(sessions.refresh("nonsense").await.is_err());
        assert!(sessions.refresh(&"x".repeat(10_000)).await.is_err());
        // Ended sessions are cleaned up a day later, live ones never.
        assert_eq!(sessions.remove_ended().await.unwrap(), 0);
        let mut old: Session = store.require(&tenant, &session.id).await.unwrap();
        old.revoked_at = Some(now_unix() - 2 * 86_400);
        store.update(&Actor::system(), old).await.unwrap();
        assert_eq!(sessions.remove_ended().await.unwrap(), 1);
        sessions.check(&tenant, &s2.id).await.unwrap();
        // Logout revokes, and is audited.
        sessions
            .revoke(&tenant, &s2.id, "logout", Some(&Actor::of("user-a")))
            .await
            .unwrap();
        assert!(sessions.check(&tenant, &s2.id).await.is_err());
        let log = store
            .audit_log(&tenant, Some("user-a"), None, 100)
            .await
            .unwrap();
        let actions: Vec<_> = log.items.iter().map(|e| e.action).collect();
        assert!(
            actions.contains(&AuditAction::SessionRevoked),
            "{actions:?}"
        );
        assert!(actions.contains(&AuditAction::SignedOut), "{actions:?}");
    }

    #[tokio::test]
    async fn api_keys_are_hashed_and_stop_at_revocation() {
        let (_d, store, tenant) = store().await;
        let keys = ApiKeys::new(store.clone());
        let actor = Actor::of("user-a");
        let (key, presented) = keys
            .create(
                &actor,
                &tenant,
                NewApiKey {
                    name: "bi".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            !key.secret_hash
                .contains(presented.split_once('.').unwrap().1)
        );
        let used = keys.authenticate(&presented).await.unwrap();
        assert!(used.last_used_at.is_some());
        let wrong = format!("{}.{}", key.id, "B".repeat(43));
        assert_eq!(
            keys.authenticate(&wrong).await.unwrap_err().to_string(),
            "invalid token: invalid API key"
        );
        keys.revoke(&actor, &tenant, &key.id).await.unwrap();
        let e = keys.authenticate(&presented).await.unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
        assert!(keys.authenticate(&"k".repeat(5000)).await.is_err());
    }

    fn sealed_setting(keyring: &SecretKeyring, tenant: &str, value: &str) -> Settings {
        let id = new_id(IdKind::Settings);
        let body = keyring
            .seal_settings(tenant, &id, &serde_json::json!({ "secret": value }))
            .unwrap();
        Settings {
            id,
            tenant_id: tenant.into(),
            parent_id: new_id(IdKind::Module),
            encryption_level: EncryptionLevel::Admin,
            body: SettingsBody::Sealed(body),
            ..Default::default()
        }
    }

    fn open(keyring: &SecretKeyring, s: &Settings) -> serde_json::Value {
        keyring.open_settings(s).unwrap()
    }

    #[tokio::test]
    async fn rotation_reseals_everything_even_records_written_meanwhile() {
        let (_d, store, tenant) = store().await;
        let old_line = SecretKeyring::generate_line();
        let old = SecretKeyring::parse(&old_line).unwrap();
        for i in 0..50 {
            store
                .create(
                    &Actor::system(),
                    sealed_setting(&old, &tenant, &format!("v{i}")),
                )
                .await
                .unwrap();
        }
        // A broker's password, sealed with the old key too.
        let broker_id = new_id(IdKind::Broker);
        let password = old
            .seal(
                &SealContext::broker_password(&tenant, &broker_id),
                b"broker-password",
            )
            .unwrap();
        let broker = Broker {
            id: broker_id.clone(),
            tenant_id: tenant.clone(),
            name: "Site broker".into(),
            host: "broker.local".into(),
            username: Some("lintel".into()),
            password: Some(password),
            ..Default::default()
        };
        store.create(&Actor::system(), broker).await.unwrap();
        // A module's kept OAuth refresh token, likewise.
        let module_id = new_id(IdKind::Module);
        let token_id = lintel_model::RefreshToken::id_for(&module_id).unwrap();
        let refresh_token = old
            .seal(
                &SealContext::refresh_token(&tenant, &token_id),
                b"refresh-token",
            )
            .unwrap();
        let token = lintel_model::RefreshToken {
            id: token_id.clone(),
            tenant_id: tenant.clone(),
            module_id,
            configured: "0".repeat(64),
            refresh_token,
            ..Default::default()
        };
        store.create(&Actor::system(), token).await.unwrap();
        let new_line = SecretKeyring::generate_line();
        let both = SecretKeyring::parse(&format!("{new_line}\n{old_line}")).unwrap();
        let keyring = Keyring::new(both);
        // A writer keeps changing one record (sealed with the old key) during the pass.
        let all: Vec<Settings> = store
            .list_all(&tenant, ListOptions::default())
            .await
            .unwrap();
        let target = all[25].id.clone();
        let writer = {
            let (store, tenant, target) = (store.clone(), tenant.clone(), target.clone());
            let old = SecretKeyring::parse(&old_line).unwrap();
            tokio::spawn(async move {
                for i in 0..20 {
                    let mut s: Settings = store.require(&tenant, &target).await.unwrap();
                    let fresh = sealed_setting(&old, &tenant, &format!("w{i}"));
                    let SettingsBody::Sealed(v) = fresh.body else {
                        unreachable!()
                    };
                    // Re-seal for this record id (AAD binds it).
                    let value = old
                        .open_json(&SealContext::settings_body(&tenant, &fresh.id), &v)
                        .unwrap();
                    s.body = SettingsBody::Sealed(
                        old.seal_json(&SealContext::settings_body(&tenant, &target), &value)
                            .unwrap(),
                    );
                    match store.update(&Actor::system(), s).await {
                        Ok(_) | Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let report = reseal_all(&store, &keyring).await.unwrap();
        writer.await.unwrap();
        // Anything the writer sealed under the old key after the pass: a second pass.
        reseal_all(&store, &keyring).await.unwrap();
        assert!(report.resealed >= 52, "{report:?}");
        let current = keyring.current();
        let new_only = SecretKeyring::parse(&new_line).unwrap();
        for s in store
            .list_all::<Settings>(&tenant, ListOptions::default())
            .await
            .unwrap()
        {
            let SettingsBody::Sealed(v) = &s.body else {
                panic!()
            };
            assert_eq!(v.key_id, current.primary_id(), "{}", s.id);
            // Opens without the old key at all.
            let value = open(&new_only, &s);
            assert!(value["secret"].as_str().unwrap().starts_with(['v', 'w']));
        }
        let broker: Broker = store.require(&tenant, &broker_id).await.unwrap();
        let password = broker.password.expect("the password is kept");
        assert_eq!(password.key_id, current.primary_id());
        let opened = new_only
            .open(
                &SealContext::broker_password(&tenant, &broker_id),
                &password,
            )
            .unwrap();
        assert_eq!(opened.as_slice(), b"broker-password");
        let token: lintel_model::RefreshToken = store.require(&tenant, &token_id).await.unwrap();
        assert_eq!(token.refresh_token.key_id, current.primary_id());
        let opened = new_only
            .open(
                &SealContext::refresh_token(&tenant, &token_id),
                &token.refresh_token,
            )
            .unwrap();
        assert_eq!(opened.as_slice(), b"refresh-token");
        let last: Settings = store.require(&tenant, &target).await.unwrap();
        assert!(
            open(&new_only, &last)["secret"]
                .as_str()
                .unwrap()
                .starts_with('w'),
            "the writer's change survived"
        );
    }
}
