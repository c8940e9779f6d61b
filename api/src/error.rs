//! The one mapping from domain errors to HTTP responses.

use crate::ws::{ErrorCode, WsError};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use lintel_auth::AuthError;
use lintel_engine::EngineError;
use lintel_store::StoreError;
use serde::Serialize;

/// Every error the API returns: `{"error": "<code>", "message": "<what happened>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds the {0}-byte limit")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A WebSocket route called without the upgrade.
    #[error("{0}")]
    UpgradeRequired(String),
    #[error("{0}")]
    Driver(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Too many attempts; retry after this many seconds.
    #[error("too many attempts; retry in {0} s")]
    TooManyRequests(u64),
    /// A system Lintel depends on (an identity provider) failed.
    #[error("{0}")]
    BadGateway(String),
    /// Details are logged, never sent: they may name internals.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
pub(crate) struct Body<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    /// The error's JSON body.
    pub(crate) fn body(&self) -> Body<'static> {
        Body {
            error: self.code(),
            message: self.to_string(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UpgradeRequired(_) => "upgrade_required",
            ApiError::Driver(_) => "driver_error",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::Driver(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let mut r = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                r.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::UpgradeRequired(_) => {
                r.insert_header((header::UPGRADE, "websocket"));
            }
            ApiError::Unavailable(_) => {
                r.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::TooManyRequests(secs) => {
                r.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            _ => {}
        }
        r.json(Body {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::SystemNotFound(_)
            | EngineError::ModuleNotFound(_)
            | EngineError::ModuleNotRunning(_)
            | EngineError::FunctionNotFound { .. } => ApiError::NotFound(e.to_string()),
            EngineError::BadArguments { .. }
            | EngineError::InvalidDriver(_)
            | EngineError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            EngineError::Driver(m) => ApiError::Driver(m),
            EngineError::Timeout(_) => ApiError::Timeout(e.to_string()),
            EngineError::Busy => ApiError::Unavailable(e.to_string()),
            EngineError::Store(s) => s.into(),
            EngineError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The WebSocket's side of the mapping: PlaceOS's error code, with the HTTP status the
/// same error has on REST as `code`.
impl From<ApiError> for WsError {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => ErrorCode::AccessDenied,
            ApiError::NotFound(_) => ErrorCode::ModuleNotFound,
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::UpgradeRequired(_) => ErrorCode::BadRequest,
            ApiError::Conflict(_)
            | ApiError::Driver(_)
            | ApiError::Timeout(_)
            | ApiError::TooManyRequests(_) => ErrorCode::RequestFailed,
            ApiError::Unavailable(_) | ApiError::BadGateway(_) | ApiError::Internal(_) => {
                ErrorCode::UnexpectedFailure
            }
        };
        if let ApiError::Internal(detail) = &e {
            tracing::error!(%detail, "internal error");
        }
        WsError::new(code, e.status_code().as_u16(), e.to_string())
    }
}

/// An engine error on the WebSocket: as on REST, but a missing system and a missing module
/// have their own PlaceOS codes, and a driver's failure reads as PlaceOS words it.
pub(crate) fn ws_error(e: EngineError) -> WsError {
    let (code, status) = match &e {
        EngineError::SystemNotFound(_) => (ErrorCode::SystemNotFound, 404),
        EngineError::ModuleNotFound(_) | EngineError::ModuleNotRunning(_) => {
            (ErrorCode::ModuleNotFound, 404)
        }
        EngineError::FunctionNotFound { .. } => (ErrorCode::BadRequest, 404),
        EngineError::Driver(m) => {
            return WsError::new(ErrorCode::RequestFailed, 500, format!("module raised: {m}"));
        }
        _ => return ApiError::from(e).into(),
    };
    WsError::new(code, status, e.to_string())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::NotDeleted { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Invalid(v) => ApiError::BadRequest(v.to_string()),
            StoreError::BadQuery(m) => ApiError::BadRequest(m),
            StoreError::TooLarge { limit, .. } => ApiError::PayloadTooLarge(limit),
            StoreError::Timeout(_) => ApiError::Timeout("the store did not answer in time".into()),
            StoreError::Locked { .. } | StoreError::Backend(_) => {
                ApiError::Unavailable("the store is unavailable".into())
            }
            StoreError::Corrupt { .. }
            | StoreError::Migration(_)
            | StoreError::NewerData { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials | AuthError::InvalidToken(_) => {
                ApiError::Unauthorized(e.to_string())
            }
            AuthError::SignInRefused(_) | AuthError::Forbidden(_) => {
                ApiError::Forbidden(e.to_string())
            }
            AuthError::Invalid(m) => ApiError::BadRequest(m),
            AuthError::RateLimited(secs) => ApiError::TooManyRequests(secs),
            AuthError::Upstream(m) => ApiError::BadGateway(m),
            AuthError::Sealed(m) | AuthError::Keys(m) | AuthError::Internal(m) => {
                ApiError::Internal(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_domain_error_has_one_status() {
        let cases: Vec<(ApiError, u16)> = vec![
            (EngineError::ModuleNotFound("x".into()).into(), 404),
            (EngineError::SystemNotFound("x".into()).into(), 404),
            (
                EngineError::BadArguments {
                    function: "f".into(),
                    message: "m".into(),
                }
                .into(),
                400,
            ),
            (EngineError::Driver("boom".into()).into(), 500),
            (EngineError::Timeout(5000).into(), 504),
            (EngineError::Busy.into(), 503),
            (
                StoreError::Conflict {
                    kind: lintel_model::IdKind::System,
                    id: "sys-a".into(),
                    expected: 1,
                    actual: 2,
                }
                .into(),
                409,
            ),
            (AuthError::InvalidCredentials.into(), 401),
            (AuthError::InvalidToken("x".into()).into(), 401),
            (AuthError::Forbidden("x".into()).into(), 403),
            (AuthError::RateLimited(3).into(), 429),
            (AuthError::Invalid("x".into()).into(), 400),
            (AuthError::Upstream("x".into()).into(), 502),
            (AuthError::Sealed("x".into()).into(), 500),
            (ApiError::PayloadTooLarge(10), 413),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
        }
    }

    #[test]
    fn internal_details_are_not_sent() {
        let e = ApiError::Internal("/var/lib/lintel/secret path".into());
        assert_eq!(e.to_string(), "internal error");
    }
}
