use crate::auth::Authenticated;
use crate::{ApiError, AppState};
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_model::{ControlSystem, Tenant, User};
use lintel_store::{ListOptions, StoreExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/.well-known/jwks.json", web::get().to(jwks))
        .route("/auth/authority", web::get().to(authority))
        .route("/auth/oauth/token", web::post().to(token))
        .route("/auth/token", web::post().to(token))
        .service(
            web::scope("/api/engine/v2")
                .route("/health", web::get().to(health))
                .route("/ready", web::get().to(ready))
                .route("/systems", web::get().to(list_systems))
                .route("/systems/{sys}", web::get().to(get_system))
                .route("/systems/{sys}/{module}", web::get().to(module_state))
                .route(
                    "/systems/{sys}/{module}/{key}",
                    web::get().to(module_state_key),
                )
                .route("/systems/{sys}/{module}/{function}", web::post().to(exec)),
        );
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

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"keys": [state.tokens.public_jwk()]}))
}

/// The tenant a browser-facing auth request is for: by `authority` id, by the Host the
/// client used, or the only tenant there is.
async fn tenant_for(
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
}

/// OAuth2 token endpoint, password grant. Accepts the form body or, as the PlaceOS client
/// sends it, the query string (which is never logged).
async fn token(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let parsed = if body.is_empty() {
        serde_urlencoded::from_str::<TokenRequest>(req.query_string())
    } else {
        serde_urlencoded::from_bytes::<TokenRequest>(&body)
    };
    let oauth_error = |status: actix_web::http::StatusCode, error: &str, description: &str| {
        HttpResponse::build(status).json(json!({"error": error, "error_description": description}))
    };
    let bad = actix_web::http::StatusCode::BAD_REQUEST;
    let Ok(r) = parsed else {
        return oauth_error(bad, "invalid_request", "malformed form parameters");
    };
    if r.grant_type.as_deref() != Some("password") {
        return oauth_error(
            bad,
            "unsupported_grant_type",
            "only grant_type=password is supported",
        );
    }
    let (Some(username), Some(password)) = (r.username, r.password) else {
        return oauth_error(bad, "invalid_request", "username and password are required");
    };
    let tenant = match tenant_for(&state, &req, r.authority.as_deref()).await {
        Ok(t) => t,
        Err(_) => return oauth_error(bad, "invalid_request", "unknown authority"),
    };
    let issued = async {
        let users: Vec<User> = state
            .store
            .list_all(
                &tenant.id,
                ListOptions::by("email", &username.to_ascii_lowercase()),
            )
            .await?;
        let user = users.into_iter().next();
        // Hash even for an unknown user, so timing does not reveal which emails exist.
        let phc = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| crate::DUMMY_HASH.to_string());
        let verified = state.passwords.verify(&password, &phc).await;
        match (user, verified) {
            (Some(u), Ok(())) => Ok::<_, ApiError>(Some(state.tokens.issue(&u, &tenant.domain)?)),
            _ => Ok(None),
        }
    }
    .await;
    match issued {
        Ok(Some(access_token)) => {
            tracing::info!(tenant = %tenant.id, "login succeeded");
            HttpResponse::Ok()
                .insert_header(("Cache-Control", "no-store"))
                .json(json!({
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": state.tokens.ttl().as_secs(),
                    "scope": "public",
                }))
        }
        Ok(None) => {
            tracing::warn!(tenant = %tenant.id, "login failed");
            oauth_error(bad, "invalid_grant", "invalid username or password")
        }
        Err(e) => actix_web::ResponseError::error_response(&e),
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
fn list_options(params: &HashMap<String, String>) -> Result<ListOptions> {
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

/// `GET /systems` (`?zone_id=` too): `X-Total-Count`, and `X-Next-Cursor` while more remain.
async fn list_systems(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let mut opts = list_options(&params)?;
    opts.index = params
        .get("zone_id")
        .map(|z| ("zone".to_string(), z.clone()));
    let page = state
        .store
        .list::<ControlSystem>(&p.tenant_id, opts)
        .await?;
    let mut res = HttpResponse::Ok();
    res.insert_header(("X-Total-Count", page.total.to_string()));
    if let Some(next) = &page.next {
        res.insert_header(("X-Next-Cursor", next.as_str()));
    }
    Ok(res.json(page.items))
}

async fn get_system(
    state: web::Data<AppState>,
    Authenticated(p): Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let system: ControlSystem = state
        .store
        .get(&p.tenant_id, &path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("system `{path}` not found")))?;
    Ok(HttpResponse::Ok().json(system))
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
