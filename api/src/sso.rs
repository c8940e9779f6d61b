//! Single sign-on endpoints (OpenID Connect, authorization-code flow with PKCE):
//! `GET /auth/oidc/:idp/login?continue=/path` sends the browser to the provider;
//! `GET /auth/oidc/callback` finishes, signs the user in and sends the browser to
//! `continue` with the tokens in the URL fragment (never sent to a server, never logged).

use crate::routes::{sign_in_event, tenant_for};
use crate::{ApiError, AppState};
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use lintel_auth::oidc::{FLOW_TTL_SECS, provision_user};
use lintel_model::{IdKind, IdentityProvider, Tenant};
use lintel_store::StoreExt;
use std::collections::HashMap;

type Result<T> = std::result::Result<T, ApiError>;

const FLOW_COOKIE: &str = "lintel_sso";
const CALLBACK: &str = "/auth/oidc/callback";

/// The callback URL the provider sends the browser back to.
fn redirect_uri(state: &AppState, req: &HttpRequest) -> String {
    match &state.public_url {
        Some(base) => format!("{}{CALLBACK}", base.trim_end_matches('/')),
        None => {
            let info = req.connection_info();
            format!("{}://{}{CALLBACK}", info.scheme(), info.host())
        }
    }
}

/// Only a path on this server (no scheme, no `//host`): never an open redirect.
fn safe_continue(target: Option<&String>) -> Result<String> {
    let t = target.map(String::as_str).unwrap_or("/");
    let ok = t.starts_with('/')
        && !t.starts_with("//")
        && !t.contains('\\')
        && !t.contains('#')
        && t.len() <= 2048
        && !t.chars().any(char::is_control);
    if ok {
        Ok(t.to_owned())
    } else {
        Err(ApiError::BadRequest(
            "`continue` must be a path on this server".into(),
        ))
    }
}

pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    idp_id: web::Path<String>,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let tenant = tenant_for(&state, &req, params.get("authority").map(String::as_str)).await?;
    let idp = find_idp(&state, &tenant.id, &idp_id).await?;
    let continue_to = safe_continue(params.get("continue"))?;
    let (url, flow) = state
        .oidc
        .begin(&idp, &redirect_uri(&state, &req), &continue_to)
        .await?;
    let cookie = Cookie::build(FLOW_COOKIE, flow)
        .path("/auth/oidc")
        .http_only(true)
        .secure(req.connection_info().scheme() == "https")
        // Lax: sent on the provider's top-level redirect back to us, not on cross-site posts.
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(FLOW_TTL_SECS))
        .finish();
    Ok(HttpResponse::Found()
        .cookie(cookie)
        .insert_header((header::LOCATION, url))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

async fn find_idp(state: &AppState, tenant_id: &str, id: &str) -> Result<IdentityProvider> {
    let missing = || ApiError::NotFound(format!("identity provider `{id}` not found"));
    if !IdKind::IdentityProvider.is_valid_id(id) {
        return Err(missing());
    }
    state
        .store
        .get::<IdentityProvider>(tenant_id, id)
        .await?
        .ok_or_else(missing)
}

pub async fn callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse> {
    let flow_cookie = req
        .cookie(FLOW_COOKIE)
        .ok_or_else(|| ApiError::BadRequest("no sign-in in progress here; start again".into()))?;
    let flow = state.oidc.open_flow(flow_cookie.value())?;
    let client = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let result = async {
        if let Some(error) = params.get("error") {
            let shown: String = error.chars().take(64).collect();
            return Err(ApiError::Forbidden(format!(
                "the identity provider refused the sign-in: {shown}"
            )));
        }
        let (Some(code), Some(st)) = (params.get("code"), params.get("state")) else {
            return Err(ApiError::BadRequest(
                "`code` and `state` are required".into(),
            ));
        };
        let idp = find_idp(&state, &flow.tenant_id, &flow.idp_id).await?;
        let identity = state.oidc.finish(&idp, &flow, st, code).await?;
        let user = provision_user(&state.store, &idp, &identity).await?;
        Ok::<_, ApiError>((idp, user))
    }
    .await;
    let (idp, user) = match result {
        Ok(v) => v,
        Err(e) => {
            sign_in_event(&state, &flow.tenant_id, None, false, &e.to_string(), client).await;
            return Err(e);
        }
    };
    let tenant: Tenant = state
        .store
        .require(&flow.tenant_id, &flow.tenant_id)
        .await?;
    let method = format!("oidc:{}", idp.id);
    let (session, refresh) = state.sessions.start(&tenant.id, &user.id, &method).await?;
    let access = state
        .tokens
        .issue(&tenant, &user, Some(&session.id))
        .await?;
    sign_in_event(&state, &tenant.id, Some(&user.id), true, &method, client).await;
    let fragment = serde_urlencoded::to_string([
        ("access_token", access.as_str()),
        ("refresh_token", refresh.as_str()),
        ("token_type", "Bearer"),
        ("expires_in", &state.tokens.ttl().as_secs().to_string()),
    ])
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut gone = Cookie::build(FLOW_COOKIE, "").path("/auth/oidc").finish();
    gone.make_removal();
    Ok(HttpResponse::Found()
        .cookie(gone)
        .insert_header((header::LOCATION, format!("{}#{fragment}", flow.continue_to)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_is_only_a_local_path() {
        let ok = |s: &str| safe_continue(Some(&s.to_string())).is_ok();
        assert!(ok("/") && ok("/app/rooms?x=1"));
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil",
            "app",
            "/a#b",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert_eq!(safe_continue(None).unwrap(), "/");
    }
}
