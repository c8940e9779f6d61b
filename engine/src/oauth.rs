//! OAuth 2.0 access tokens for HTTP modules: the engine-owned `oauth2` module setting.
//!
//! Cloud calendars (Microsoft Graph, Google Calendar) take a bearer token that expires
//! within the hour. The engine gets it from the provider's token endpoint, keeps it, gets
//! a new one before it expires and adds it to every request of the module; the driver
//! never sees the credentials or the token. Three grants:
//!
//! - `client_credentials` (RFC 6749 §4.4): an application's own identity (Microsoft
//!   Graph application permissions);
//! - `refresh_token` (RFC 6749 §6): delegated access, from a refresh token an administrator
//!   obtained by signing in once (Google and Microsoft user consent);
//! - `jwt_bearer` (RFC 7523 §2.1): a Google service account signs an assertion with its
//!   key (optionally impersonating `subject`, Google Workspace domain-wide delegation).
//!
//! The token request is one form POST and its answer one JSON object (RFC 6749 §5.1 and
//! §5.2), written here rather than with the `oauth2` crate because that crate offers
//! neither the JWT-bearer grant nor the `Retry-After` of a busy token endpoint.
//!
//! Failures never hammer the provider: a refused request waits 60 s before the next try, a
//! busy or unreachable endpoint its `Retry-After` or a growing back-off (5 s … 5 min);
//! meanwhile requests fail at once with the reason. A token that could not be renewed is
//! still used until it expires. Reasons never carry a secret.
//!
//! A provider that rotates refresh tokens (Microsoft's identity platform answers each
//! renewal with a new one; providers with reuse detection revoke the whole chain when an
//! old one is presented again) needs the latest one to survive a restart: the engine
//! keeps it in the module's [`RefreshToken`] record, sealed by the keyring, and a module
//! (re)started with the same configured credentials goes on from it.

use lintel_model::RefreshToken;
use lintel_store::{Actor, Store, StoreError, StoreExt};
use parking_lot::Mutex;
use reqwest::header::HeaderValue;
use serde_json::Value;
use sha2::Digest;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a token request may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is renewed this long before it expires (a quarter of its life if shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime assumed when the answer gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Bounds of the lifetime a token is kept for: a shorter `expires_in` would mean a token
/// request per service request, a longer one is not believed (and cannot overflow).
const MIN_LIFETIME: Duration = Duration::from_secs(60);
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
/// A 401 from the service drops the token at most this often: a service that refuses
/// every token (a wrong scope or audience) must not turn each request into a token request.
const FORCED_RENEWAL_EVERY: Duration = Duration::from_secs(60);
/// Pause after the endpoint refused the request (bad credentials need a person).
const REFUSED_PAUSE: Duration = Duration::from_secs(60);
/// Back-off of a busy or unreachable endpoint without `Retry-After`.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Longest provider error description quoted in a reason.
const MAX_DESCRIPTION: usize = 300;
/// Lifetime of a JWT-bearer assertion (Google accepts at most one hour).
const ASSERTION_LIFETIME: u64 = 3600;

/// How a module's HTTP requests are authorised by OAuth 2.0: parsed from its `oauth2`
/// setting by [`OAuth2::from_setting`].
pub(crate) struct OAuth2 {
    grant: Grant,
    token_url: reqwest::Url,
    scope: Option<String>,
    client: reqwest::Client,
    /// One token request at a time; the others wait for its outcome.
    fetch: tokio::sync::Mutex<()>,
    state: Mutex<TokenState>,
    /// Where a rotated refresh token is kept (the `refresh_token` grant, with a store and
    /// a keyring); set once, before the first token request.
    keeper: OnceLock<Keeper>,
}

/// Where an engine keeps the refresh tokens its modules are issued: a module's
/// [`RefreshToken`] record, sealed with the keyring.
pub(crate) struct TokenStore {
    pub store: Arc<dyn Store>,
    pub sealer: Arc<dyn crate::Sealer>,
    pub tenant_id: String,
    pub module_id: String,
}

struct Keeper {
    at: TokenStore,
    record_id: String,
    /// [`RefreshToken::configured`] of this module's settings.
    configured: String,
    /// Whether the kept token was looked for (before the first token request).
    restored: tokio::sync::OnceCell<()>,
}

enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: String,
    },
    RefreshToken {
        client_id: String,
        client_secret: Option<String>,
        /// The latest refresh token: a provider may issue a new one with each token.
        refresh_token: Mutex<String>,
        /// The one in the settings (kept out of reasons even after a rotation).
        configured: String,
    },
    JwtBearer {
        client_email: String,
        key_id: Option<String>,
        key: Box<jsonwebtoken::EncodingKey>,
        subject: Option<String>,
    },
}

#[derive(Default)]
struct TokenState {
    token: Option<Token>,
    /// No token request before this instant; requests fail with the reason meanwhile.
    paused: Option<(Instant, String)>,
    /// Failed requests in a row (for the back-off).
    failures: u32,
    /// When a 401 last dropped the token.
    last_forced: Option<Instant>,
}

/// What [`OAuth2::current`] found.
enum Current {
    /// The kept token, fresh enough.
    Use(HeaderValue),
    /// A token request is due; the kept token, if it has not expired, can still serve.
    Renew(Option<HeaderValue>),
}

#[derive(Clone)]
struct Token {
    header: HeaderValue,
    renew_at: Instant,
    expires_at: Instant,
}

/// Why a token request failed, and how long at least to wait before the next (the
/// back-off applies when it is longer).
struct Failure {
    reason: String,
    wait: Duration,
}

impl OAuth2 {
    /// Read the `oauth2` setting; an error names the key at fault, never a value.
    pub fn from_setting(setting: &Value, client: reqwest::Client) -> Result<OAuth2, String> {
        let obj = setting
            .as_object()
            .ok_or("setting `oauth2` must be an object")?;
        // Trimmed: a secret pasted with a trailing newline would be refused by the provider
        // with nothing to show why.
        let text = |key: &str| -> Result<Option<String>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(_) => Err(format!("setting `oauth2.{key}` must be a non-empty string")),
            }
        };
        let required = |key: &str| {
            text(key)?.ok_or_else(|| format!("setting `oauth2.{key}` is required for this grant"))
        };
        let known: &[&str] = &[
            "grant",
            "token_url",
            "client_id",
            "client_secret",
            "scope",
            "refresh_token",
            "service_account",
            "subject",
        ];
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "setting `oauth2.{k}` is not known (known: {})",
                known.join(", ")
            ));
        }
        let scope = text("scope")?;
        let grant_name = text("grant")?.unwrap_or_else(|| "client_credentials".into());
        let for_grant: &[&str] = match grant_name.as_str() {
            "client_credentials" => &["grant", "token_url", "client_id", "client_secret", "scope"],
            "refresh_token" => &[
                "grant",
                "token_url",
                "client_id",
                "client_secret",
                "scope",
                "refresh_token",
            ],
            "jwt_bearer" => &["grant", "token_url", "scope", "service_account", "subject"],
            _ => known,
        };
        if let Some(k) = obj.keys().find(|k| !for_grant.contains(&k.as_str())) {
            return Err(format!(
                "setting `oauth2.{k}` does not belong to grant {grant_name} (it takes {})",
                for_grant.join(", ")
            ));
        }
        let (grant, token_url) = match grant_name.as_str() {
            "client_credentials" => (
                Grant::ClientCredentials {
                    client_id: required("client_id")?,
                    client_secret: required("client_secret")?,
                },
                required("token_url")?,
            ),
            "refresh_token" => (
                {
                    let refresh_token = required("refresh_token")?;
                    Grant::RefreshToken {
                        client_id: required("client_id")?,
                        client_secret: text("client_secret")?,
                        refresh_token: Mutex::new(refresh_token.clone()),
                        configured: refresh_token,
                    }
                },
                required("token_url")?,
            ),
            "jwt_bearer" => {
                // The key file as Google gives it: an object, or its text pasted as a string.
                let pasted;
                let account = match obj.get("service_account") {
                    Some(Value::Object(o)) => o,
                    Some(Value::String(text)) => {
                        pasted = serde_json::from_str::<Value>(text).ok();
                        pasted.as_ref().and_then(Value::as_object).ok_or(
                            "setting `oauth2.service_account` must be the service account's JSON key (an object, or its text)",
                        )?
                    }
                    None | Some(Value::Null) => {
                        return Err("setting `oauth2.service_account` (a service account key: an object with client_email and private_key) is required for grant jwt_bearer".into());
                    }
                    Some(_) => {
                        return Err("setting `oauth2.service_account` must be the service account's JSON key (an object, or its text)".into());
                    }
                };
                let field = |key: &str| match account.get(key) {
                    Some(Value::String(s)) if !s.trim().is_empty() => {
                        Ok(Some(s.trim().to_string()))
                    }
                    None | Some(Value::Null) => Ok(None),
                    Some(_) => Err(format!(
                        "setting `oauth2.service_account.{key}` must be a non-empty string"
                    )),
                };
                let client_email = field("client_email")?
                    .ok_or("setting `oauth2.service_account.client_email` is required")?;
                let pem = field("private_key")?
                    .ok_or("setting `oauth2.service_account.private_key` is required")?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                    "setting `oauth2.service_account.private_key` is not an RSA private key in PEM"
                        .to_string()
                })?;
                let token_url = match text("token_url")? {
                    Some(u) => u,
                    None => field("token_uri")?.ok_or(
                        "setting `oauth2.token_url` (or the service account's token_uri) is required",
                    )?,
                };
                if scope.is_none() {
                    return Err("setting `oauth2.scope` is required for grant jwt_bearer".into());
                }
                (
                    Grant::JwtBearer {
                        client_email,
                        key_id: field("private_key_id")?,
                        key: Box::new(key),
                        subject: text("subject")?,
                    },
                    token_url,
                )
            }
            other => {
                return Err(format!(
                    "setting `oauth2.grant` `{other}` is not one of client_credentials, refresh_token, jwt_bearer"
                ));
            }
        };
        let token_url = reqwest::Url::parse(&token_url)
            .map_err(|e| format!("setting `oauth2.token_url`: {e}"))?;
        check_secure(&token_url, "oauth2.token_url")?;
        Ok(OAuth2 {
            grant,
            token_url,
            scope,
            client,
            fetch: tokio::sync::Mutex::new(()),
            state: Mutex::new(TokenState::default()),
            keeper: OnceLock::new(),
        })
    }

    /// Keep rotated refresh tokens in `at` and start from the one kept there, if it
    /// descends from the configured credentials. Only the `refresh_token` grant has any;
    /// for the others this does nothing.
    pub fn keep_tokens_in(&self, at: TokenStore) {
        let Grant::RefreshToken {
            client_id,
            configured,
            ..
        } = &self.grant
        else {
            return;
        };
        let Some(record_id) = RefreshToken::id_for(&at.module_id) else {
            return;
        };
        let mut digest = sha2::Sha256::new();
        for part in [self.token_url.as_str(), client_id, configured] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        let _ = self.keeper.set(Keeper {
            at,
            record_id,
            configured: hex::encode(digest.finalize()),
            restored: tokio::sync::OnceCell::new(),
        });
    }

    /// The `Authorization` value for the next request: the kept token, or a new one.
    /// The error is the reason no token can be had (it starts with `oauth2: `).
    ///
    /// One token request at a time. While a token that has not expired is kept, its
    /// renewal never holds a request up: a request that finds the renewal under way uses
    /// the kept token.
    pub async fn authorization(&self) -> Result<HeaderValue, String> {
        let guard = match self.current(Instant::now())? {
            Current::Use(header) => return Ok(header),
            Current::Renew(Some(kept)) => match self.fetch.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(kept),
            },
            Current::Renew(None) => self.fetch.lock().await,
        };
        // Another request may have got a token (or failed) just before.
        if let Current::Use(header) = self.current(Instant::now())? {
            return Ok(header);
        }
        let _one_at_a_time = guard;
        match self.request_token().await {
            Ok(token) => {
                let mut state = self.state.lock();
                state.failures = 0;
                state.paused = None;
                let header = token.header.clone();
                state.token = Some(token);
                Ok(header)
            }
            Err(failure) => {
                let mut state = self.state.lock();
                state.failures = state.failures.saturating_add(1);
                // Never sooner than the back-off, whatever `Retry-After` says (0, a past
                // date): a failing endpoint is not asked again with every request.
                let wait = failure.wait.max(backoff(state.failures));
                let reason = format!(
                    "oauth2: {}; next try in {} s",
                    failure.reason,
                    wait.as_secs().max(1)
                );
                tracing::warn!(token_url = %redacted(&self.token_url), "{reason}");
                state.paused = Some((Instant::now() + wait, failure.reason.clone()));
                // A token that could not be renewed still works until it expires.
                match &state.token {
                    Some(t) if Instant::now() < t.expires_at => Ok(t.header.clone()),
                    _ => Err(reason),
                }
            }
        }
    }

    /// The kept token if it needs no renewal; `Err` while token requests are paused and no
    /// unexpired token is kept.
    fn current(&self, now: Instant) -> Result<Current, String> {
        let state = self.state.lock();
        let usable = state
            .token
            .as_ref()
            .filter(|t| now < t.expires_at)
            .map(|t| (t.header.clone(), now < t.renew_at));
        match (usable, &state.paused) {
            (Some((header, true)), _) => Ok(Current::Use(header)),
            // Renewal failed a moment ago: the kept token serves until the pause ends.
            (Some((header, false)), Some((until, _))) if now < *until => Ok(Current::Use(header)),
            (None, Some((until, reason))) if now < *until => Err(format!(
                "oauth2: {reason}; next try in {} s",
                (*until - now).as_secs().max(1)
            )),
            (usable, _) => Ok(Current::Renew(usable.map(|(header, _)| header))),
        }
    }

    /// The service refused `used` (HTTP 401). Answers whether sending the request again
    /// is worth it: the token is dropped (the next request gets a new one) unless a 401
    /// dropped one less than a minute ago, and a token renewed meanwhile by another
    /// request is kept. Token requests paused after a failure stay paused.
    pub fn reject(&self, used: &HeaderValue) -> bool {
        let mut state = self.state.lock();
        if state.token.as_ref().is_none_or(|t| t.header != *used) {
            return state.token.is_some();
        }
        let now = Instant::now();
        if state
            .last_forced
            .is_some_and(|at| now.duration_since(at) < FORCED_RENEWAL_EVERY)
        {
            return false;
        }
        state.last_forced = Some(now);
        state.token = None;
        true
    }

    /// Move the last 401-forced renewal back by `by` (tests).
    #[cfg(test)]
    pub fn age_forced(&self, by: Duration) {
        if let Some(at) = self.state.lock().last_forced.as_mut() {
            *at -= by;
        }
    }

    /// Make the kept token older by `by` (tests of renewal and expiry).
    #[cfg(test)]
    pub fn age(&self, by: Duration) {
        if let Some(t) = self.state.lock().token.as_mut() {
            t.renew_at -= by;
            t.expires_at -= by;
        }
    }

    async fn request_token(&self) -> Result<Token, Failure> {
        if let (Some(keeper), Grant::RefreshToken { refresh_token, .. }) =
            (self.keeper.get(), &self.grant)
        {
            keeper
                .restored
                .get_or_init(|| async {
                    if let Some(kept) = keeper.load().await {
                        *refresh_token.lock() = kept;
                    }
                })
                .await;
        }
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
            } => {
                form.push(("grant_type", "client_credentials".into()));
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", client_secret.clone()));
            }
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
                ..
            } => {
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh_token.lock().clone()));
                form.push(("client_id", client_id.clone()));
                if let Some(s) = client_secret {
                    form.push(("client_secret", s.clone()));
                }
            }
            Grant::JwtBearer { .. } => {
                form.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ));
                form.push(("assertion", self.assertion()?));
            }
        }
        // The JWT carries the scope of a service account; the other grants send it.
        if let (Some(scope), false) = (&self.scope, matches!(self.grant, Grant::JwtBearer { .. })) {
            form.push(("scope", scope.clone()));
        }
        let sent = Instant::now();
        let resp = self
            .client
            .post(self.token_url.clone())
            .timeout(TOKEN_TIMEOUT)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Failure {
                reason: if e.is_timeout() {
                    format!(
                        "the token endpoint did not answer within {} s",
                        TOKEN_TIMEOUT.as_secs()
                    )
                } else {
                    format!(
                        "cannot reach the token endpoint {}: {}",
                        self.token_url.host_str().unwrap_or_default(),
                        crate::links::error_chain(&e)
                    )
                },
                wait: Duration::ZERO,
            })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let body = read_capped(resp).await.map_err(|reason| Failure {
            reason: format!("{reason} (HTTP {status})"),
            wait: retry_after.unwrap_or_default(),
        })?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        match status {
            200 => {
                let json = json.ok_or_else(|| Failure {
                    reason: "the token endpoint's answer is not JSON".into(),
                    wait: Duration::ZERO,
                })?;
                let token = self.accept(&json, sent)?;
                if let Some(new) = self.rotate(&json) {
                    match self.keeper.get() {
                        Some(keeper) => keeper.save(&new).await,
                        None => tracing::info!(
                            "oauth2: the token endpoint issued a new refresh token; it is used from now on (kept in memory only: this engine has no keyring to seal it with, or the endpoint is an in-process simulator)"
                        ),
                    }
                }
                Ok(token)
            }
            429 | 500..=599 => Err(Failure {
                reason: if status == 429 {
                    "the token endpoint is busy (HTTP 429)".into()
                } else {
                    format!("the token endpoint failed (HTTP {status})")
                },
                wait: retry_after.unwrap_or_default(),
            }),
            _ => {
                let error = json
                    .as_ref()
                    .and_then(|j| j.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let Some(error) = error else {
                    return Err(Failure {
                        reason: format!(
                            "the token endpoint answered HTTP {status} without an OAuth error"
                        ),
                        wait: retry_after.unwrap_or_default(),
                    });
                };
                let description = json
                    .as_ref()
                    .and_then(|j| j.get("error_description"))
                    .and_then(Value::as_str)
                    .map(|d| format!(": {}", self.scrub(d)))
                    .unwrap_or_default();
                Err(Failure {
                    reason: format!(
                        "the token endpoint refused the request ({}{description}); {}",
                        self.scrub(&error),
                        self.hint(&error)
                    ),
                    wait: retry_after.unwrap_or_default().max(REFUSED_PAUSE),
                })
            }
        }
    }

    /// A successful token response (RFC 6749 §5.1).
    fn accept(&self, json: &Value, sent: Instant) -> Result<Token, Failure> {
        let bad = |why: &str| Failure {
            reason: format!("the token endpoint's answer {why}"),
            wait: Duration::ZERO,
        };
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("has no access_token"))?;
        match json.get("token_type").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err(bad("is not a bearer token")),
            None => return Err(bad("has no token_type")),
        }
        let lifetime = match json.get("expires_in") {
            None | Some(Value::Null) => DEFAULT_LIFETIME,
            Some(v) => {
                // Some providers send it as a string.
                let secs = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| bad("has an expires_in that is not a number of seconds"))?;
                let lifetime = Duration::from_secs(secs);
                if lifetime < MIN_LIFETIME {
                    tracing::warn!(
                        expires_in = secs,
                        "oauth2: the token endpoint gives tokens shorter than {} s; each is kept {} s (a 401 renews it sooner)",
                        MIN_LIFETIME.as_secs(),
                        MIN_LIFETIME.as_secs()
                    );
                }
                lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME)
            }
        };
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("holds an access_token a header cannot carry"))?;
        header.set_sensitive(true);
        // Counted from when the request was sent: the answer's travel time is not the
        // token's.
        Ok(Token {
            header,
            renew_at: sent + lifetime - (lifetime / 4).min(RENEW_MARGIN),
            expires_at: sent + lifetime,
        })
    }

    /// The new refresh token of a token response that carries one (RFC 6749 §6): from now
    /// on it is the one used. `None` when the answer repeats the current one or has none.
    fn rotate(&self, json: &Value) -> Option<String> {
        let Grant::RefreshToken { refresh_token, .. } = &self.grant else {
            return None;
        };
        let new = json
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())?;
        let mut kept = refresh_token.lock();
        (*kept != new).then(|| {
            *kept = new.to_string();
            new.to_string()
        })
    }

    /// The signed assertion of the JWT-bearer grant (RFC 7523 §3, Google's service
    /// account flow).
    fn assertion(&self) -> Result<String, Failure> {
        let Grant::JwtBearer {
            client_email,
            key_id,
            key,
            subject,
        } = &self.grant
        else {
            unreachable!("only the JWT-bearer grant signs an assertion")
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": client_email,
            "scope": self.scope,
            "aud": self.token_url.as_str(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        if let Some(sub) = subject {
            claims["sub"] = Value::String(sub.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = key_id.clone();
        jsonwebtoken::encode(&header, &claims, key).map_err(|_| Failure {
            reason: "the service account key cannot sign an assertion".into(),
            wait: REFUSED_PAUSE,
        })
    }

    /// What an operator should check for a refusal `error` (RFC 6749 §5.2).
    fn hint(&self, error: &str) -> &'static str {
        match (error, &self.grant) {
            ("invalid_client", Grant::JwtBearer { .. }) => {
                "check oauth2.service_account (the key may be deleted or disabled)"
            }
            ("invalid_client", _) => "check oauth2.client_id and oauth2.client_secret",
            ("unauthorized_client", Grant::JwtBearer { .. }) => {
                "the service account may not act for oauth2.subject with these scopes: grant it domain-wide delegation for oauth2.scope in the Google Workspace admin console"
            }
            ("invalid_grant", Grant::RefreshToken { .. }) => {
                "the refresh token expired or was revoked: sign in again and store a new oauth2.refresh_token"
            }
            ("invalid_grant", Grant::JwtBearer { .. }) => {
                "check the service account key, its domain-wide delegation and oauth2.subject"
            }
            ("invalid_scope", _) => "check oauth2.scope",
            ("unauthorized_client", _) => "the client may not use this grant",
            _ => "check the module's oauth2 settings",
        }
    }

    /// Provider text fit for a log line: no credential of this module (some endpoints
    /// echo what they were sent), no control characters, at most a few hundred characters.
    fn scrub(&self, text: &str) -> String {
        let mut secrets = Vec::new();
        match &self.grant {
            Grant::ClientCredentials { client_secret, .. } => secrets.push(client_secret.clone()),
            Grant::RefreshToken {
                client_secret,
                refresh_token,
                configured,
                ..
            } => {
                secrets.extend(client_secret.clone());
                secrets.push(refresh_token.lock().clone());
                secrets.push(configured.clone());
            }
            Grant::JwtBearer { .. } => {}
        }
        // Replaced before the text is cut, so no part of a secret survives the cut.
        let mut out = text.to_string();
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            out = out.replace(s.as_str(), "[redacted]");
        }
        out.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_DESCRIPTION)
            .collect()
    }
}

impl Keeper {
    /// The kept refresh token, if one descends from the configured credentials. Whatever
    /// goes wrong, the configured token serves (and the log says why).
    async fn load(&self) -> Option<String> {
        let TokenStore {
            store,
            sealer,
            tenant_id,
            module_id,
        } = &self.at;
        let record = match store.get::<RefreshToken>(tenant_id, &self.record_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(module = %module_id, error = %e, "oauth2: the kept refresh token cannot be read; starting from the configured oauth2.refresh_token");
                return None;
            }
        };
        if record.configured != self.configured {
            tracing::info!(module = %module_id, "oauth2: oauth2.refresh_token (or the token_url or client_id) changed since a token was kept; starting from the configured one");
            return None;
        }
        match sealer.open_refresh_token(tenant_id, &self.record_id, &record.refresh_token) {
            Ok(token) if !token.trim().is_empty() => {
                tracing::info!(module = %module_id, "oauth2: going on from the refresh token the token endpoint issued last (kept sealed)");
                Some(token.trim().to_string())
            }
            Ok(_) => None,
            Err(why) => {
                tracing::warn!(module = %module_id, "oauth2: the kept refresh token cannot be opened ({why}); starting from the configured oauth2.refresh_token");
                None
            }
        }
    }

    /// Keep `token` (sealed) for the next start. A failure is logged: the token is still
    /// used from memory, but a restart would start again from the configured one.
    async fn save(&self, token: &str) {
        let TokenStore {
            store,
            sealer,
            tenant_id,
            module_id,
        } = &self.at;
        let sealed = match sealer.seal_refresh_token(tenant_id, &self.record_id, token) {
            Ok(sealed) => sealed,
            Err(why) => {
                tracing::warn!(module = %module_id, "oauth2: the token endpoint issued a new refresh token, which cannot be sealed ({why}); it is used from memory, and a restart would start again from the configured one");
                return;
            }
        };
        // Another engine may write it at the same moment (a module moving between
        // engines): compare-and-swap, a few times.
        let mut last = None;
        for _ in 0..3 {
            // A tombstone (left by a purge sweep cut short) is written over, not re-created.
            let written = match store
                .get_with_tombstone::<RefreshToken>(tenant_id, &self.record_id)
                .await
            {
                Ok(Some((record, _))) => store
                    .update_bookkeeping(RefreshToken {
                        configured: self.configured.clone(),
                        refresh_token: sealed.clone(),
                        ..record
                    })
                    .await
                    .map(drop),
                Ok(None) => store
                    .create(
                        &Actor::system(),
                        RefreshToken {
                            id: self.record_id.clone(),
                            tenant_id: tenant_id.clone(),
                            module_id: module_id.clone(),
                            configured: self.configured.clone(),
                            refresh_token: sealed.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => {
                    tracing::info!(module = %module_id, "oauth2: the token endpoint issued a new refresh token; it is used from now on and kept sealed for the next start");
                    return;
                }
                Err(e @ (StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })) => {
                    last = Some(e);
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = last {
            tracing::warn!(module = %module_id, error = %e, "oauth2: the token endpoint issued a new refresh token, which cannot be kept; it is used from memory, and a restart would start again from the configured one");
        }
    }
}

/// `https://`, or `http://` only to this machine (tests, a local proxy): a bearer token
/// or client secret never crosses a network in clear.
pub(crate) fn check_secure(url: &reqwest::Url, setting: &str) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "`{setting}` must be https:// (plain http:// only to a loopback address)"
        )),
    }
}

/// The token URL as logged: without its query or user part.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Back-off after `failures` failed requests in a row: 5 s, 10 s, … at most 5 min.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (BACKOFF_FIRST * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// A `Retry-After` value: seconds or an HTTP date (RFC 9110 §10.2.3), capped at an hour.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

async fn read_capped(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            format!(
                "reading the token endpoint's answer: {}",
                crate::links::error_chain(&e)
            )
        })?;
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(format!(
                "the token endpoint's answer exceeds {MAX_TOKEN_RESPONSE} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
