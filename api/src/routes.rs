use crate::auth::Authenticated;
use crate::resources;
use crate::{ApiError, AppState};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_auth::{Action, Credential, RefreshOutcome, Resource};
use lintel_model::{
    ApiKey, AuditAction, ControlSystem, DriverRecord, IdKind, IdentityProvider, Metadata, Module,
    Settings, Tenant, Trigger, User, Zone,
};
use lintel_store::{ListOptions, StoreExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

const V2: &str = "/api/engine/v2";

/// What a route needs: a resource and action, or `None` for any authenticated caller.
pub(crate) type Permission = Option<(Resource, Action)>;

/// Every authenticated route's permission: `(method, route pattern, resource/action)`;
/// `None` = any authenticated caller. The `Authenticated` extractor refuses a route
/// missing here, and a test calls every entry with every role.
pub(crate) const PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("POST", "/auth/logout", None),
    ("GET", "/api/engine/v2/users/current", None),
    (
        "GET",
        "/api/engine/v2/systems/{id}/{module}",
        Some((Resource::State, Action::Read)),
    ),
    (
        "GET",
        "/api/engine/v2/systems/{id}/{module}/{key}",
        Some((Resource::State, Action::Read)),
    ),
    (
        "POST",
        "/api/engine/v2/systems/{id}/{module}/{key}",
        Some((Resource::Control, Action::Write)),
    ),
    (
        "GET",
        "/api/engine/v2/audit",
        Some((Resource::Audit, Action::Read)),
    ),
    (
        "GET",
        "/api/engine/v2/tenants",
        Some((Resource::Tenants, Action::Read)),
    ),
    (
        "POST",
        "/api/engine/v2/tenants",
        Some((Resource::Tenants, Action::Write)),
    ),
    (
        "GET",
        "/api/engine/v2/tenants/{id}",
        Some((Resource::Tenants, Action::Read)),
    ),
    (
        "GET",
        "/api/engine/v2/api_keys",
        Some((Resource::ApiKeys, Action::Read)),
    ),
    (
        "POST",
        "/api/engine/v2/api_keys",
        Some((Resource::ApiKeys, Action::Write)),
    ),
    (
        "GET",
        "/api/engine/v2/api_keys/{id}",
        Some((Resource::ApiKeys, Action::Read)),
    ),
    (
        "PATCH",
        "/api/engine/v2/api_keys/{id}",
        Some((Resource::ApiKeys, Action::Write)),
    ),
    (
        "DELETE",
        "/api/engine/v2/api_keys/{id}",
        Some((Resource::ApiKeys, Action::Write)),
    ),
];

/// The resources with the five CRUD routes (list, create, show, update, delete).
pub(crate) const CRUD: &[(&str, Resource)] = &[
    ("zones", Resource::Zones),
    ("systems", Resource::Systems),
    ("modules", Resource::Modules),
    ("drivers", Resource::Drivers),
    ("settings", Resource::Settings),
    ("metadata", Resource::Metadata),
    ("triggers", Resource::Triggers),
    ("users", Resource::Users),
    ("identity_providers", Resource::IdentityProviders),
];

/// The permission of a route, `None` if the route has no entry (refused).
pub(crate) fn permission(method: &Method, pattern: Option<&str>) -> Option<Permission> {
    let pattern = pattern?;
    if let Some((_, _, p)) = PERMISSIONS
        .iter()
        .find(|(m, path, _)| *m == method.as_str() && *path == pattern)
    {
        return Some(*p);
    }
    let rest = pattern.strip_prefix(V2)?.strip_prefix('/')?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (_, resource) = CRUD.iter().find(|(n, _)| *n == name)?;
    let action = match (method.as_str(), tail) {
        ("GET", "" | "{id}") => Action::Read,
        ("POST", "") | ("PATCH" | "PUT" | "DELETE", "{id}") => Action::Write,
        _ => return None,
    };
    Some(Some((*resource, action)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/.well-known/jwks.json", web::get().to(jwks))
        .route("/auth/authority", web::get().to(authority))
        .route("/auth/oauth/token", web::post().to(token))
        .route("/auth/token", web::post().to(token))
        .route("/auth/logout", web::post().to(logout))
        .route("/auth/oidc/{idp}/login", web::get().to(crate::sso::login))
        .route("/auth/oidc/callback", web::get().to(crate::sso::callback))
        .service(web::scope(V2).configure(|c| {
            c.route("/health", web::get().to(health))
                .route("/ready", web::get().to(ready))
                .route("/users/current", web::get().to(resources::current_user))
                .route("/users", web::post().to(resources::create_user))
                .route("/users/{id}", web::patch().to(resources::update_user))
                .route("/users/{id}", web::put().to(resources::update_user))
                .route("/api_keys", web::post().to(resources::create_api_key))
                .route(
                    "/api_keys/{id}",
                    web::delete().to(resources::delete_api_key),
                )
                .route("/api_keys", web::get().to(resources::list::<ApiKey>))
                .route("/api_keys/{id}", web::get().to(resources::show::<ApiKey>))
                .route(
                    "/api_keys/{id}",
                    web::patch().to(resources::update::<ApiKey>),
                )
                .route("/tenants", web::get().to(resources::list_tenants))
                .route("/tenants", web::post().to(resources::create_tenant))
                .route("/tenants/{id}", web::get().to(resources::show_tenant))
                .route("/audit", web::get().to(resources::audit))
                .route("/systems/{id}/{module}", web::get().to(module_state))
                .route(
                    "/systems/{id}/{module}/{key}",
                    web::get().to(module_state_key),
                )
                .route("/systems/{id}/{module}/{key}", web::post().to(exec));
            resources::crud::<Zone>(c, "/zones");
            resources::crud::<ControlSystem>(c, "/systems");
            resources::crud::<Module>(c, "/modules");
            resources::crud::<DriverRecord>(c, "/drivers");
            resources::crud::<Settings>(c, "/settings");
            resources::crud::<Metadata>(c, "/metadata");
            resources::crud::<Trigger>(c, "/triggers");
            resources::crud::<User>(c, "/users");
            resources::crud::<IdentityProvider>(c, "/identity_providers");
        }));
}

/// A list response: `X-Total-Count`, and `X-Next-Cursor` while more remain.
pub(crate) fn paged(total: u64, next: Option<&str>) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header(("X-Total-Count", total.to_string()));
    if let Some(next) = next {
        res.insert_header(("X-Next-Cursor", next));
    }
    res
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": state.version}))
}

/// Ready when the store answers and the engine has started its modules.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store = state.engine.store_ok().await;
    let engine = state.engine.is_ready();
    let body = json!({
        "ready": store && engine,
        "checks": {
            "store": if store { "ok" } else { "unavailable" },
            "engine": if engine { "ok" } else { "starting" },
        },
        "modules_running": state.engine.running_modules(),
    });
    if store && engine {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().finish(),
    }
}

/// The tenant's public signing keys (`?authority=`, else the tenant of the Host).
async fn jwks(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let t = tenant_for(&state, &req, params.get("authority").map(String::as_str)).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "max-age=300"))
        .json(state.tokens.jwks(&t.id).await?))
}

/// The tenant a browser-facing auth request is for: by `authority` id, by the Host the
/// client used, or the only tenant there is.
pub(crate) async fn tenant_for(
    state: &AppState,
    req: &HttpRequest,
    authority: Option<&str>,
) -> Result<Tenant> {
    if let Some(id) = authority {
        return state
            .store
            .get::<Tenant>(id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound("unknown authority".into()));
    }
    let host = req
        .connection_info()
        .host()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    if let Some(t) = crate::auth::tenant_by_domain(state, &host).await? {
        return Ok(t);
    }
    let opts = ListOptions {
        limit: 2,
        ..Default::default()
    };
    let page = state.store.list_scoped::<Tenant>(None, opts).await?;
    match <[Tenant; 1]>::try_from(page.items) {
        Ok([only]) => Ok(only),
        Err(_) => Err(ApiError::NotFound(format!("no tenant for host `{host}`"))),
    }
}

/// PlaceOS clients fetch this first (`@placeos/ts-client` `setup()`).
async fn authority(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let t = tenant_for(&state, &req, None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "domain": t.domain,
        "login_url": "/login?continue={{url}}",
        "logout_url": "/auth/logout",
        "session": false,
        "production": true,
        "config": {},
        "version": "2.0.0",
    })))
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    authority: Option<String>,
    refresh_token: Option<String>,
}

/// An RFC 6749 error response.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"error": error, "error_description": description}))
}

/// Longest user name accepted (an email address).
const MAX_USERNAME: usize = 320;

/// OAuth2 token endpoint: `grant_type=password` and `refresh_token`. Accepts the form body
/// or, as the PlaceOS client sends it, the query string (which is never logged).
async fn token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let parsed = if body.is_empty() {
        serde_urlencoded::from_str::<TokenRequest>(req.query_string())
    } else {
        serde_urlencoded::from_bytes::<TokenRequest>(&body)
    };
    let Ok(r) = parsed else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed form parameters",
        );
    };
    let result = match r.grant_type.as_deref() {
        Some("password") => password_grant(&state, &req, r).await,
        Some("refresh_token") => refresh_grant(&state, r).await,
        _ => Err(TokenError::Grant(
            "unsupported_grant_type",
            "grant_type must be password or refresh_token".into(),
        )),
    };
    match result {
        Ok(body) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(body),
        Err(TokenError::Grant(code, msg)) => {
            let status = if code == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            oauth_error(status, code, &msg)
        }
        Err(TokenError::Api(ApiError::TooManyRequests(secs))) => {
            let mut res = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                &format!("too many sign-in attempts; retry in {secs} s"),
            );
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, v);
            }
            res
        }
        Err(TokenError::Api(e)) => actix_web::ResponseError::error_response(&e),
    }
}

enum TokenError {
    /// An OAuth2 error code and description.
    Grant(&'static str, String),
    Api(ApiError),
}
impl<E: Into<ApiError>> From<E> for TokenError {
    fn from(e: E) -> Self {
        TokenError::Api(e.into())
    }
}

/// The token response for a user in a session.
async fn token_response(
    state: &AppState,
    tenant: &Tenant,
    user: &User,
    session_id: &str,
    refresh_token: &str,
) -> std::result::Result<Value, TokenError> {
    let access_token = state.tokens.issue(tenant, user, Some(session_id)).await?;
    Ok(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.tokens.ttl().as_secs(),
        "refresh_token": refresh_token,
        "scope": "public",
    }))
}

async fn password_grant(
    state: &AppState,
    req: &HttpRequest,
    r: TokenRequest,
) -> std::result::Result<Value, TokenError> {
    let (Some(username), Some(password)) = (r.username, r.password) else {
        return Err(TokenError::Grant(
            "invalid_request",
            "username and password are required".into(),
        ));
    };
    if username.len() > MAX_USERNAME || password.len() > lintel_auth::MAX_PASSWORD_BYTES {
        return Err(TokenError::Grant(
            "invalid_request",
            format!(
                "username (at most {MAX_USERNAME} bytes) or password (at most {} bytes) is too long",
                lintel_auth::MAX_PASSWORD_BYTES
            ),
        ));
    }
    let tenant = tenant_for(state, req, r.authority.as_deref())
        .await
        .map_err(|_| TokenError::Grant("invalid_request", "unknown authority".into()))?;
    let client = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let username = username.to_ascii_lowercase();
    state.limiter.check(&tenant.id, &username, client)?;
    let users = lintel_auth::users_by_email(state.store.as_ref(), &tenant.id, &username).await?;
    let user = users.into_iter().next();
    // Hash even for an unknown user, so timing does not reveal which emails exist.
    let phc = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| crate::DUMMY_HASH.to_string());
    let verified = state.passwords.verify(&password, &phc).await;
    let user = match (user, verified) {
        (Some(u), Ok(v)) if !u.disabled && u.password_hash.is_some() => {
            if v.needs_rehash {
                lintel_auth::upgrade_password_hash(&state.store, &state.passwords, &u, &password)
                    .await;
            }
            u
        }
        (user, result) => {
            let reason = match (&user, &result) {
                (None, _) => "unknown user",
                (Some(u), _) if u.disabled => "account disabled",
                (Some(_), Err(lintel_auth::AuthError::InvalidCredentials)) => "wrong password",
                (Some(_), Err(_)) => "password check failed",
                (Some(_), Ok(_)) => "no password set",
            };
            sign_in_event(
                state,
                &tenant.id,
                user.as_ref().map(|u| u.id.as_str()),
                false,
                reason,
                client,
            )
            .await;
            if let Err(e) = result
                && !matches!(e, lintel_auth::AuthError::InvalidCredentials)
            {
                tracing::error!(tenant = %tenant.id, error = %e, "password verification failed");
            }
            tracing::warn!(tenant = %tenant.id, %client, "sign-in failed");
            return Err(TokenError::Grant(
                "invalid_grant",
                "invalid username or password".into(),
            ));
        }
    };
    let (session, refresh) = state
        .sessions
        .start(&tenant.id, &user.id, "password")
        .await?;
    sign_in_event(state, &tenant.id, Some(&user.id), true, "password", client).await;
    tracing::info!(tenant = %tenant.id, user = %user.id, "sign-in succeeded");
    token_response(state, &tenant, &user, &session.id, &refresh).await
}

/// A sign-in (or refusal) in the tenant's audit trail. Never the password; the user name
/// only as the record it names.
pub(crate) async fn sign_in_event(
    state: &AppState,
    tenant_id: &str,
    user_id: Option<&str>,
    ok: bool,
    detail: &str,
    client: std::net::IpAddr,
) {
    let actor = lintel_store::Actor::of(user_id.unwrap_or("anonymous"));
    let event = lintel_store::Event {
        actor: &actor,
        action: if ok {
            AuditAction::SignedIn
        } else {
            AuditAction::SignInFailed
        },
        kind: IdKind::User,
        record_id: user_id.unwrap_or("unknown"),
        details: json!({ if ok { "method" } else { "reason" }: detail, "client": client.to_string() }),
    };
    if let Err(e) = state.store.record_event(tenant_id, event).await {
        tracing::error!(error = %e, "could not record the sign-in in the audit trail");
    }
}

async fn refresh_grant(
    state: &AppState,
    r: TokenRequest,
) -> std::result::Result<Value, TokenError> {
    let Some(token) = r.refresh_token else {
        return Err(TokenError::Grant(
            "invalid_request",
            "refresh_token is required".into(),
        ));
    };
    let invalid = |m: &str| TokenError::Grant("invalid_grant", m.into());
    match state.sessions.refresh(&token).await {
        Ok(RefreshOutcome::Rotated {
            session,
            refresh_token,
        }) => {
            let tenant: Tenant = state
                .store
                .get(&session.tenant_id, &session.tenant_id)
                .await?
                .ok_or_else(|| invalid("the session's tenant no longer exists"))?;
            let user: User = state
                .store
                .get(&session.tenant_id, &session.user_id)
                .await?
                .filter(|u: &User| !u.disabled)
                .ok_or_else(|| invalid("the session's user can no longer sign in"))?;
            token_response(state, &tenant, &user, &session.id, &refresh_token).await
        }
        Ok(RefreshOutcome::Reused) => Err(invalid(
            "refresh token already used: the session was revoked; sign in again",
        )),
        Err(lintel_auth::AuthError::InvalidToken(m)) => Err(invalid(&m)),
        Err(e) => Err(e.into()),
    }
}

/// `POST /auth/logout`: ends the caller's session (its refresh tokens and access tokens).
async fn logout(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
) -> Result<HttpResponse> {
    match &p.credential {
        Credential::Token {
            session_id: Some(sid),
        } => {
            state
                .sessions
                .revoke(&p.tenant_id, sid, "logout", Some(&p.actor()))
                .await?;
            Ok(HttpResponse::NoContent().finish())
        }
        _ => Err(ApiError::BadRequest(
            "only a session's access token can log out (API keys are revoked instead)".into(),
        )),
    }
}

/// One query-string parameter, parsed; a bad value is a 400 naming it.
fn param<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    expected: &str,
) -> Result<Option<T>> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            let shown: String = v.chars().take(40).collect();
            ApiError::BadRequest(format!("`{name}` must be {expected}, got `{shown}`"))
        }),
    }
}

/// PlaceOS list parameters (`?q=&limit=&offset=`) plus `after`, Lintel's stable cursor
/// (from the `X-Next-Cursor` header). Other parameters (e.g. `bearer_token`) are
/// ignored, as PlaceOS does.
pub(crate) fn list_options(params: &HashMap<String, String>) -> Result<ListOptions> {
    let limit: usize = param(params, "limit", "a whole number")?.unwrap_or(100);
    if !(1..=lintel_store::MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1–{}",
            lintel_store::MAX_PAGE
        )));
    }
    Ok(ListOptions {
        search: params.get("q").filter(|q| !q.is_empty()).cloned(),
        after: params.get("after").cloned(),
        offset: param(params, "offset", "a whole number")?.unwrap_or(0),
        limit,
        ..Default::default()
    })
}

async fn module_state(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (sys, module) = path.into_inner();
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    Ok(HttpResponse::Ok().json(state.engine.state(&p.tenant_id, &id)?))
}

async fn module_state_key(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (sys, module, key) = path.into_inner();
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    // PlaceOS answers `null` for a key the driver has not set.
    let value = state
        .engine
        .state_key(&p.tenant_id, &id, &key)?
        .unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(value))
}

/// `POST /systems/:id/Display_1/power` with a JSON array of arguments.
async fn exec(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (sys, module, function) = path.into_inner();
    let args: Vec<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("body must be a JSON array of arguments: {e}"))
        })?
    };
    let id = state.engine.resolve(&p.tenant_id, &sys, &module).await?;
    let result = state
        .engine
        .exec(&p.tenant_id, &id, &function, args)
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

/// For any route that does not exist: the same error format.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_group_resolves_to_a_permission_and_unknown_ones_to_none() {
        let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
        for (name, resource) in CRUD {
            let base = format!("{V2}/{name}");
            let one = format!("{base}/{{id}}");
            let cases = [
                ("GET", &base, Action::Read),
                ("POST", &base, Action::Write),
                ("GET", &one, Action::Read),
                ("PATCH", &one, Action::Write),
                ("PUT", &one, Action::Write),
                ("DELETE", &one, Action::Write),
            ];
            for (method, path, action) in cases {
                assert_eq!(
                    permission(&m(method), Some(path)),
                    Some(Some((*resource, action))),
                    "{method} {path}"
                );
            }
        }
        for (method, path, p) in PERMISSIONS {
            assert_eq!(
                permission(&m(method), Some(path)),
                Some(*p),
                "{method} {path}"
            );
        }
        // Fail closed: anything not listed has no permission (the extractor refuses it).
        assert_eq!(permission(&m("GET"), Some("/api/engine/v2/secrets")), None);
        assert_eq!(permission(&m("DELETE"), Some("/api/engine/v2/zones")), None);
        assert_eq!(
            permission(&m("POST"), Some("/api/engine/v2/tenants/{id}")),
            None
        );
        assert_eq!(permission(&m("GET"), None), None);
    }
}
