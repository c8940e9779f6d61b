//! Authentication: the one place a request becomes a [`Principal`].

use crate::{ApiError, AppState};
use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use futures_util::future::LocalBoxFuture;
use lintel_auth::Principal;
use lintel_model::{Tenant, User};
use lintel_store::{ListOptions, StoreExt};

/// An authenticated caller. Taking this as a handler argument makes the route require
/// `Authorization: Bearer <token>` (or `?bearer_token=`, for WebSocket upgrades and
/// downloads).
pub struct Authenticated(pub Principal);

fn bearer(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        let v = h.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("bearer_token").cloned())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("app state missing".into()))?;
            let token =
                token.ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
            let claims = state.tokens.verify(&token)?;
            let tenant = tenant_by_domain(&state, &claims.aud)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized("token audience is not a tenant here".into())
                })?;
            let user: User = state
                .store
                .get(&tenant.id, &claims.sub)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized("token subject is not a user of its tenant".into())
                })?;
            Ok(Authenticated(Principal {
                tenant_id: tenant.id,
                user_id: user.id,
                roles: user.roles,
            }))
        })
    }
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
