use crate::auth::Authenticated;
use crate::{ApiError, AppState};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_auth::{Credential, RefreshOutcome};
use lintel_model::{AuditAction, IdKind, Tenant, User};
use lintel_store::{ListOptions, StoreExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

/// A list response with PlaceOS's headers: `X-Total-Count`, `Content-Range:
/// <kind> <offset>-<offset+count>/<total>`, and `Link: <…?offset=…&limit=…>; rel="next"`
/// while more remain (the request's other parameters kept). Lintel adds `X-Next-Cursor`,
/// a cursor for `?after=` that stays stable while records are written.
pub(crate) fn paged(
    req: &HttpRequest,
    kind: IdKind,
    opts: &ListOptions,
    count: usize,
    total: u64,
    next: Option<&str>,
) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    let from = if opts.after.is_some() { 0 } else { opts.offset };
    let end = from + count;
    res.insert_header(("X-Total-Count", total.to_string()));
    res.insert_header((
        "Content-Range",
        format!("{} {from}-{end}/{total}", kind.prefix()),
    ));
    if let Some(next) = next {
        res.insert_header(("X-Next-Cursor", next));
        let mut params: Vec<(String, String)> =
            serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
        params.retain(|(k, _)| k != "bearer_token" && k != "after");
        let limit = if opts.limit == 0 { 100 } else { opts.limit };
        for (k, v) in [("offset", end), ("limit", limit)] {
            match params.iter_mut().find(|(n, _)| n == k) {
                Some(p) => p.1 = v.to_string(),
                None => params.push((k.into(), v.to_string())),
            }
        }
        if let Ok(q) = serde_urlencoded::to_string(&params) {
            res.insert_header(("Link", format!("<{}?{q}>; rel=\"next\"", req.path())));
        }
    }
    res
}

pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": state.version}))
}

/// Ready when the store answers and the engine has started its modules. An MQTT broker
/// that cannot be reached makes it `degraded`, still 200: the API and the engine work
/// without it (and taking the pod out of service would not bring the broker back).
pub(crate) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store = state.engine.store_ok().await;
    let engine = state.engine.is_ready();
    let mqtt = match &state.mqtt {
        None => "off",
        Some(p) if p.brokers() == 0 => "off",
        Some(p) if p.disconnected() == 0 => "ok",
        Some(_) => "degraded",
    };
    let body = json!({
        "ready": store && engine,
        "status": if !(store && engine) { "unavailable" } else if mqtt == "degraded" { "degraded" } else { "ok" },
        "checks": {
            "store": if store { "ok" } else { "unavailable" },
            "engine": if engine { "ok" } else { "starting" },
            "mqtt": mqtt,
        },
        "modules_running": state.engine.running_modules(),
        "mqtt_brokers_disconnected": state.mqtt.as_ref().map_or(0, |p| p.disconnected()),
    });
    if store && engine {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().finish(),
    }
}

/// The tenant's public signing keys (`?authority=`, else the tenant of the Host).
pub(crate) async fn jwks(
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
pub(crate) async fn authority(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse> {
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
pub(crate) async fn token(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
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
pub(crate) async fn logout(
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

/// For any route that does not exist: the same error format.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
