//! Authentication and authorization: the one place a request becomes a [`Principal`] and
//! the one place its permission for the route is decided (the route's entry in
//! [`crate::endpoints::ENDPOINTS`]; a route without one is refused, so none is forgotten).

use crate::{ApiError, AppState};
use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use futures_util::future::LocalBoxFuture;
use lintel_auth::{API_KEY_HEADER, Access, Credential, Principal};
use lintel_model::{IdKind, Role, Tenant, User};
use lintel_store::{ListOptions, StoreExt};

/// An authenticated caller, allowed to use the route it called. Taking this as a handler
/// argument makes the route require `Authorization: Bearer <token>` (or `?bearer_token=`,
/// for WebSocket upgrades and downloads) or `X-API-Key: <key>`.
pub struct Authenticated(pub Principal);

/// Longest credential looked at; longer ones are refused unread.
const MAX_CREDENTIAL: usize = 8 * 1024;
/// Header a sysadmin sets to act in another tenant.
pub const TENANT_HEADER: &str = "X-Tenant-Id";

/// The credential a request presented (kept by a WebSocket session to check, on every
/// bind and exec, that it is still good; zeroed when dropped).
pub(crate) enum Presented {
    Bearer(zeroize::Zeroizing<String>),
    ApiKey(zeroize::Zeroizing<String>),
}

/// Where a credential may come from besides the headers.
#[derive(Clone, Copy)]
pub(crate) enum Sources {
    /// REST: `Authorization`, `X-API-Key`, or `?bearer_token=`.
    Rest,
    /// The WebSocket handshake also takes `?api-key=` and the `bearer_token` / `api-key`
    /// cookies, as `@placeos/ts-client` sends them (browsers cannot set headers on a
    /// WebSocket); the handshake's Origin check is what makes cookies safe there.
    WebSocket,
}

pub(crate) fn presented(
    headers: &header::HeaderMap,
    query: &str,
    sources: Sources,
) -> Result<Presented, ApiError> {
    let secret = |s: &str| zeroize::Zeroizing::new(s.trim().to_owned());
    if let Some(h) = headers.get(API_KEY_HEADER) {
        let v = h
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed API key".into()))?;
        return Ok(Presented::ApiKey(secret(v)));
    }
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let v = h
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let (scheme, token) = v
            .split_once(' ')
            .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized(
                "only Bearer authorization is accepted".into(),
            ));
        }
        return Ok(Presented::Bearer(secret(token)));
    }
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| secret(v))
    };
    if let Some(t) = param("bearer_token") {
        return Ok(Presented::Bearer(t));
    }
    if let Sources::WebSocket = sources {
        if let Some(k) = param("api-key") {
            return Ok(Presented::ApiKey(k));
        }
        for h in headers.get_all(header::COOKIE) {
            let Ok(h) = h.to_str() else { continue };
            for c in h
                .split(';')
                .filter_map(|c| cookie::Cookie::parse(c.trim()).ok())
            {
                match c.name() {
                    "bearer_token" => return Ok(Presented::Bearer(secret(c.value()))),
                    "api-key" => return Ok(Presented::ApiKey(secret(c.value()))),
                    _ => {}
                }
            }
        }
    }
    Err(ApiError::Unauthorized(
        "missing bearer token or API key".into(),
    ))
}

/// Who presented `credential`, acting in `switch_tenant` when given (sysadmins only).
pub(crate) async fn authenticate(
    state: &AppState,
    credential: &Presented,
    switch_tenant: Option<&str>,
) -> Result<Principal, ApiError> {
    let mut principal = match credential {
        Presented::Bearer(t) | Presented::ApiKey(t) if t.len() > MAX_CREDENTIAL => {
            return Err(ApiError::Unauthorized("credential too large".into()));
        }
        Presented::Bearer(t) => from_token(state, t).await?,
        Presented::ApiKey(k) => from_api_key(state, k).await?,
    };
    if let Some(tenant) = switch_tenant {
        act_in_tenant(state, &mut principal, tenant).await?;
    }
    Ok(principal)
}

/// A long-lived connection's credential checked again: the user still exists, is enabled
/// and has these roles now; the sign-in session or API key is not revoked. A token's
/// expiry is not checked again (PlaceOS keeps a WebSocket open past it, and its client
/// does not reconnect to present a new token). Answers the principal with its roles now,
/// in `tenant` (the one the connection acts in).
pub(crate) async fn revalidate(
    state: &AppState,
    credential: &Presented,
    home: &Principal,
    tenant: &str,
) -> Result<Principal, ApiError> {
    let mut principal = match (credential, &home.credential) {
        (Presented::ApiKey(k), _) => from_api_key(state, k).await?,
        (Presented::Bearer(_), Credential::Token { session_id }) => {
            let user = live_user(state, &home.tenant_id, &home.user_id).await?;
            if let Some(sid) = session_id {
                state.sessions.check(&home.tenant_id, sid).await?;
            }
            Principal {
                roles: user.roles,
                ..home.clone()
            }
        }
        (Presented::Bearer(_), Credential::ApiKey { .. }) => {
            return Err(ApiError::Unauthorized("credential changed".into()));
        }
    };
    act_in_tenant(state, &mut principal, tenant).await?;
    Ok(principal)
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let credential = presented(req.headers(), req.query_string(), Sources::Rest);
        let permission = crate::endpoints::permission(req.method(), req.match_pattern().as_deref());
        let switch_tenant = req
            .headers()
            .get(TENANT_HEADER)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("app state missing".into()))?;
            let credential = credential?;
            let switch_tenant = switch_tenant
                .transpose()
                .map_err(|_| ApiError::BadRequest(format!("malformed {TENANT_HEADER}")))?;
            let principal = authenticate(&state, &credential, switch_tenant.as_deref()).await?;
            authorize(&principal, permission)?;
            Ok(Authenticated(principal))
        })
    }
}

/// Whether `principal` may use a route with this permission entry (`None`: the route has
/// no entry, and is refused).
pub(crate) fn authorize(
    principal: &Principal,
    permission: Option<Option<(lintel_auth::Resource, lintel_auth::Action)>>,
) -> Result<(), ApiError> {
    match permission {
        None => Err(ApiError::Internal("route has no permission entry".into())),
        Some(None) => Ok(()),
        Some(Some((resource, action))) => Ok(principal.check(resource, action)?),
    }
}

async fn from_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let verified = state.tokens.verify(token).await?;
    let claims = verified.claims;
    let user = live_user(state, &verified.tenant_id, &claims.sub).await?;
    if let Some(sid) = &claims.sid {
        state.sessions.check(&verified.tenant_id, sid).await?;
    }
    Ok(Principal {
        tenant_id: verified.tenant_id,
        user_id: user.id,
        // The user's roles now, not when the token was issued: a demotion is immediate.
        roles: user.roles,
        scopes: Vec::new(),
        credential: Credential::Token {
            session_id: claims.sid,
        },
    })
}

async fn from_api_key(state: &AppState, presented: &str) -> Result<Principal, ApiError> {
    let key = state.api_keys.authenticate(presented).await?;
    let mut role = key.role;
    if let Some(user_id) = &key.user_id {
        // A key never outranks the user it acts for, whose rights may have changed.
        let user = live_user(state, &key.tenant_id, user_id).await?;
        role = role.min(user.roles.iter().copied().max().unwrap_or(Role::Staff));
        if user.roles.is_empty() {
            return Err(ApiError::Forbidden("the key's user has no role".into()));
        }
    }
    Ok(Principal {
        tenant_id: key.tenant_id,
        user_id: key.user_id.unwrap_or_else(|| key.id.clone()),
        roles: vec![role],
        scopes: key.scopes,
        credential: Credential::ApiKey { key_id: key.id },
    })
}

/// The user a credential names, if it still exists and may sign in (read through the
/// users cache: a change through this process is seen at once, another's within 5 s).
async fn live_user(state: &AppState, tenant_id: &str, user_id: &str) -> Result<User, ApiError> {
    let key = (tenant_id.to_owned(), user_id.to_owned());
    let found = match state.users.get(&key) {
        Ok(found) => found,
        Err(ticket) => {
            let found: Option<User> = state.store.get(tenant_id, user_id).await?;
            state.users.insert(key, found.clone(), ticket);
            found
        }
    };
    let user = found
        .ok_or_else(|| ApiError::Unauthorized("the credential's user no longer exists".into()))?;
    if user.disabled {
        return Err(ApiError::Unauthorized("the account is disabled".into()));
    }
    Ok(user)
}

/// A sysadmin acting in another tenant (`X-Tenant-Id`). Anyone else naming a tenant other
/// than their own gets the answer a missing tenant gets.
async fn act_in_tenant(
    state: &AppState,
    principal: &mut Principal,
    tenant_id: &str,
) -> Result<(), ApiError> {
    if tenant_id == principal.tenant_id {
        return Ok(());
    }
    let not_found = || ApiError::NotFound(format!("tenant `{tenant_id}` not found"));
    if principal.role() != Some(Role::Sysadmin) || !IdKind::Tenant.is_valid_id(tenant_id) {
        return Err(not_found());
    }
    state
        .store
        .get::<Tenant>(tenant_id, tenant_id)
        .await?
        .ok_or_else(not_found)?;
    principal.tenant_id = tenant_id.to_owned();
    Ok(())
}

pub(crate) async fn tenant_by_domain(
    state: &AppState,
    domain: &str,
) -> Result<Option<Tenant>, ApiError> {
    let page = state
        .store
        .list_scoped::<Tenant>(
            None,
            ListOptions::by("domain", &domain.to_ascii_lowercase()),
        )
        .await?;
    Ok(page.items.into_iter().next())
}
