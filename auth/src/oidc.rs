//! OpenID Connect single sign-on (the relying party), with the `openidconnect` crate:
//! authorization-code flow with PKCE (S256), `state` and `nonce`. The flow's secrets travel
//! sealed in a short-lived cookie (any API replica can finish a flow another began); the ID
//! token's signature, issuer, audience, expiry and nonce are verified before any claim is
//! read. Entra ID's `tid` and Google's `hd` are checked against the provider's allow-lists.

use crate::{AuthError, Keyring, SealContext};
use base64::Engine as _;
use lintel_model::{IdentityProvider, Role, User, new_id};
use lintel_store::{Actor, ListOptions, Store, StoreExt};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a sign-in may take between leaving for the provider and coming back.
pub const FLOW_TTL_SECS: i64 = 600;
/// How long discovered provider metadata (endpoints, keys) is reused.
const METADATA_TTL: Duration = Duration::from_secs(600);
/// Every call to a provider is bounded.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What Lintel remembers between sending the browser to the provider and its return:
/// sealed into a cookie, so it cannot be read or altered by the browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignInFlow {
    pub tenant_id: String,
    pub idp_id: String,
    state: String,
    nonce: String,
    pkce_verifier: String,
    pub redirect_uri: String,
    /// Where to send the browser afterwards (a path on this server).
    pub continue_to: String,
    started_at: i64,
}

/// Who the provider says signed in, after every check.
#[derive(Debug, Clone)]
pub struct SsoIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// The identity-provider adapter: begin a sign-in, finish it.
pub struct OidcClient {
    http: reqwest::Client,
    keyring: Keyring,
    metadata: Mutex<HashMap<String, (Instant, CoreProviderMetadata)>>,
}

fn refused(msg: impl Into<String>) -> AuthError {
    AuthError::SignInRefused(msg.into())
}

fn flow_ctx<'a>(tenant_id: &'a str, idp_id: &'a str) -> SealContext<'a> {
    SealContext {
        tenant_id,
        record_id: idp_id,
        field: "sign_in_flow",
    }
}

fn secret_ctx(idp: &IdentityProvider) -> SealContext<'_> {
    SealContext::client_secret(&idp.tenant_id, &idp.id)
}

impl OidcClient {
    pub fn new(keyring: Keyring) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            // The OIDC spec forbids following redirects on these calls (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| AuthError::Internal(format!("HTTP client: {e}")))?;
        Ok(OidcClient {
            http,
            keyring,
            metadata: Mutex::new(HashMap::new()),
        })
    }

    /// Seal a client secret for storage in `idp`.
    pub fn seal_client_secret(
        &self,
        idp: &IdentityProvider,
        secret: &str,
    ) -> Result<lintel_model::SealedValue, AuthError> {
        self.keyring
            .current()
            .seal(&secret_ctx(idp), secret.as_bytes())
    }

    async fn metadata(&self, issuer: &str) -> Result<CoreProviderMetadata, AuthError> {
        if let Some((at, m)) = self.metadata.lock().expect("lock").get(issuer)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let url = IssuerUrl::new(issuer.to_owned())
            .map_err(|_| AuthError::Invalid(format!("issuer `{issuer}` is not a URL")))?;
        let m = CoreProviderMetadata::discover_async(url, &self.http)
            .await
            .map_err(|e| {
                AuthError::Upstream(format!("discovery of {issuer} failed: {}", error_chain(&e)))
            })?;
        let mut cache = self.metadata.lock().expect("lock");
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(issuer.to_owned(), (Instant::now(), m.clone()));
        Ok(m)
    }

    async fn client(
        &self,
        idp: &IdentityProvider,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        AuthError,
    > {
        let metadata = self.metadata(&idp.issuer).await?;
        let secret = match &idp.client_secret {
            Some(sealed) => {
                let bytes = self.keyring.current().open(&secret_ctx(idp), sealed)?;
                Some(ClientSecret::new(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| AuthError::Internal("client secret is not UTF-8".into()))?,
                ))
            }
            None => None,
        };
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|_| AuthError::Invalid("bad redirect URI".into()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(idp.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect))
    }

    /// Start a sign-in: the provider URL to send the browser to, and the flow to keep
    /// (sealed) until it returns.
    pub async fn begin(
        &self,
        idp: &IdentityProvider,
        redirect_uri: &str,
        continue_to: &str,
    ) -> Result<(String, String), AuthError> {
        if !idp.enabled {
            return Err(refused("this sign-in method is disabled"));
        }
        let client = self.client(idp, redirect_uri).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &idp.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        let flow = SignInFlow {
            tenant_id: idp.tenant_id.clone(),
            idp_id: idp.id.clone(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            redirect_uri: redirect_uri.into(),
            continue_to: continue_to.into(),
            started_at: lintel_model::now_unix(),
        };
        Ok((url.to_string(), self.seal_flow(&flow)?))
    }

    /// The flow, sealed into an opaque string (for a cookie).
    fn seal_flow(&self, flow: &SignInFlow) -> Result<String, AuthError> {
        let value = serde_json::to_value(flow).map_err(|e| AuthError::Internal(e.to_string()))?;
        let sealed = self
            .keyring
            .current()
            .seal_json(&flow_ctx(&flow.tenant_id, &flow.idp_id), &value)?;
        let json = serde_json::to_vec(&(flow.tenant_id.as_str(), flow.idp_id.as_str(), sealed))
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    /// Open a sealed flow (from the cookie); refused if altered or too old.
    pub fn open_flow(&self, sealed: &str) -> Result<SignInFlow, AuthError> {
        let bad = || refused("the sign-in could not be matched to one started here; start again");
        if sealed.len() > 8192 {
            return Err(bad());
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| bad())?;
        let (tenant_id, idp_id, value): (String, String, lintel_model::SealedValue) =
            serde_json::from_slice(&json).map_err(|_| bad())?;
        let flow: SignInFlow = self
            .keyring
            .current()
            .open_json(&flow_ctx(&tenant_id, &idp_id), &value)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(bad)?;
        if lintel_model::now_unix() - flow.started_at > FLOW_TTL_SECS {
            return Err(refused("the sign-in took too long; start again"));
        }
        Ok(flow)
    }

    /// Finish a sign-in: check `state`, exchange the code (with the PKCE verifier),
    /// verify the ID token (signature, issuer, audience, expiry, nonce), then apply the
    /// provider's `tid`/`hd` allow-lists and read the user's claims.
    pub async fn finish(
        &self,
        idp: &IdentityProvider,
        flow: &SignInFlow,
        state: &str,
        code: &str,
    ) -> Result<SsoIdentity, AuthError> {
        use subtle::ConstantTimeEq;
        if flow.idp_id != idp.id || flow.tenant_id != idp.tenant_id {
            return Err(refused("the sign-in does not match its provider"));
        }
        if !bool::from(state.as_bytes().ct_eq(flow.state.as_bytes())) {
            return Err(refused(
                "the sign-in state does not match (possible CSRF); start again",
            ));
        }
        let client = self.client(idp, &flow.redirect_uri).await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| AuthError::Upstream("the provider has no token endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                AuthError::Upstream(format!("the code exchange failed: {}", error_chain(&e)))
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| AuthError::Upstream("the provider returned no ID token".into()))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(flow.nonce.clone()))
            .map_err(|e| refused(format!("the ID token was refused: {e}")))?;
        // Verified above; now read the claims the typed struct does not carry.
        let raw = raw_claims(&id_token.to_string())?;
        check_directory(idp, &raw)?;
        Ok(SsoIdentity {
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            groups: groups(&raw, &idp.groups_claim),
        })
    }
}

/// The payload of a JWT whose signature was already verified.
fn raw_claims(jwt: &str) -> Result<Map<String, Value>, AuthError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok());
    payload.ok_or_else(|| AuthError::Upstream("the ID token payload is unreadable".into()))
}

/// Entra ID (`tid`: the directory) and Google Workspace (`hd`: the hosted domain) checks.
/// A claim that is required by an allow-list but absent (a personal Microsoft or Gmail
/// account) is refused.
pub fn check_directory(
    idp: &IdentityProvider,
    claims: &Map<String, Value>,
) -> Result<(), AuthError> {
    let check = |list: &[String], claim: &str, what: &str| {
        if list.is_empty() {
            return Ok(());
        }
        match claims.get(claim).and_then(Value::as_str) {
            Some(v) if list.iter().any(|a| a.eq_ignore_ascii_case(v)) => Ok(()),
            Some(v) => Err(refused(format!(
                "{what} `{v}` is not allowed to sign in here"
            ))),
            None => Err(refused(format!(
                "the account has no {what} (`{claim}` claim); only listed ones may sign in"
            ))),
        }
    };
    check(&idp.allowed_tids, "tid", "directory")?;
    check(&idp.allowed_hosted_domains, "hd", "hosted domain")
}

/// The user's groups from `claim`: an array of strings, or one string.
fn groups(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .take(1024)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The roles the provider's mapping grants for these groups; `default_role` when none
/// maps; refused when there is neither.
pub fn map_roles(idp: &IdentityProvider, groups: &[String]) -> Result<Vec<Role>, AuthError> {
    let mut roles: Vec<Role> = idp
        .role_mappings
        .iter()
        .filter(|m| groups.iter().any(|g| g == &m.group))
        .map(|m| m.role)
        .collect();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        roles.extend(idp.default_role);
    }
    if roles.is_empty() {
        return Err(refused("none of your groups may use Lintel here"));
    }
    Ok(roles)
}

/// The Lintel user for a verified identity: the one linked to it, else the one with its
/// (verified) email, which gets linked; else a new one if the provider may create users.
/// Roles follow the provider's mapping at every sign-in; `sysadmin`, never granted by a
/// mapping, is kept if it was assigned.
pub async fn provision_user(
    store: &Arc<dyn Store>,
    idp: &IdentityProvider,
    identity: &SsoIdentity,
) -> Result<User, AuthError> {
    let internal = |e: lintel_store::StoreError| AuthError::Internal(e.to_string());
    let mut roles = map_roles(idp, &identity.groups)?;
    let link = format!("{}|{}", idp.id, identity.subject);
    let linked: Vec<User> = store
        .list_all(&idp.tenant_id, ListOptions::by("sso_subject", &link))
        .await
        .map_err(internal)?;
    let existing = match linked.into_iter().next() {
        Some(u) => Some(u),
        None => match (&identity.email, identity.email_verified) {
            (Some(email), true) => crate::users_by_email(store.as_ref(), &idp.tenant_id, email)
                .await
                .map_err(internal)?
                .into_iter()
                .next(),
            _ => None,
        },
    };
    let actor = Actor::of(&idp.id);
    match existing {
        Some(mut user) => {
            if user.disabled {
                return Err(refused("this account is disabled"));
            }
            if user.sso_subject.as_deref().is_some_and(|s| s != link) {
                return Err(refused("this email is linked to another sign-in"));
            }
            if user.roles.contains(&Role::Sysadmin) {
                roles.push(Role::Sysadmin);
            }
            let unchanged = user.sso_subject.as_deref() == Some(link.as_str())
                && user.roles == roles
                && user.groups == identity.groups;
            if unchanged {
                return Ok(user);
            }
            user.sso_subject = Some(link);
            user.roles = roles;
            user.groups = identity.groups.clone();
            store.update(&actor, user).await.map_err(internal)
        }
        None if idp.create_users => {
            let email = match (&identity.email, identity.email_verified) {
                (Some(e), true) => e.clone(),
                _ => {
                    return Err(refused(
                        "the provider did not give a verified email address",
                    ));
                }
            };
            let user = User {
                id: new_id(lintel_model::IdKind::User),
                tenant_id: idp.tenant_id.clone(),
                name: identity.name.clone().unwrap_or_else(|| email.clone()),
                email,
                roles,
                groups: identity.groups.clone(),
                sso_subject: Some(link),
                ..Default::default()
            };
            store
                .create(&actor, user)
                .await
                .map_err(|e| AuthError::Invalid(e.to_string()))
        }
        None => Err(refused("no Lintel account matches this sign-in")),
    }
}

/// An error and its causes, one line (provider errors nest).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_model::RoleMapping;
    use serde_json::json;

    fn idp() -> IdentityProvider {
        IdentityProvider {
            id: "idp-a".into(),
            tenant_id: "authority-a".into(),
            role_mappings: vec![
                RoleMapping {
                    group: "building-admins".into(),
                    role: Role::Admin,
                },
                RoleMapping {
                    group: "helpdesk".into(),
                    role: Role::Support,
                },
            ],
            default_role: None,
            ..Default::default()
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn groups_map_to_roles_and_unmapped_users_are_refused_without_a_default() {
        let p = idp();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            map_roles(&p, &g(&["helpdesk", "building-admins", "x"])).unwrap(),
            vec![Role::Support, Role::Admin]
        );
        let e = map_roles(&p, &g(&["x"])).unwrap_err();
        assert!(e.to_string().contains("none of your groups"), "{e}");
        let staff = IdentityProvider {
            default_role: Some(Role::Staff),
            ..idp()
        };
        assert_eq!(map_roles(&staff, &[]).unwrap(), vec![Role::Staff]);
    }

    #[test]
    fn entra_tid_and_google_hd_are_checked_when_listed() {
        let mut p = idp();
        check_directory(&p, &claims(json!({}))).unwrap();
        p.allowed_tids = vec!["9188040d-6c67-4c5b-b112-36a304b66dad".into()];
        check_directory(
            &p,
            &claims(json!({"tid": "9188040D-6C67-4C5B-B112-36A304B66DAD"})),
        )
        .unwrap();
        let e = check_directory(&p, &claims(json!({"tid": "other"}))).unwrap_err();
        assert!(e.to_string().contains("directory `other`"), "{e}");
        assert!(check_directory(&p, &claims(json!({}))).is_err());
        p.allowed_tids.clear();
        p.allowed_hosted_domains = vec!["acme.example".into()];
        check_directory(&p, &claims(json!({"hd": "acme.example"}))).unwrap();
        // A personal Gmail account has no `hd`.
        let e = check_directory(&p, &claims(json!({"email": "x@gmail.com"}))).unwrap_err();
        assert!(e.to_string().contains("`hd` claim"), "{e}");
        assert!(check_directory(&p, &claims(json!({"hd": "evil.example"}))).is_err());
    }

    #[test]
    fn groups_come_from_the_configured_claim() {
        let c = claims(json!({"groups": ["a", "b", 3], "roles": "single"}));
        assert_eq!(groups(&c, "groups"), vec!["a", "b"]);
        assert_eq!(groups(&c, "roles"), vec!["single"]);
        assert!(groups(&c, "missing").is_empty());
    }
}
