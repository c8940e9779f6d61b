//! Identity for Lintel: password hashing (scrypt), access tokens (EdDSA-signed JWT with
//! PlaceOS-shaped claims) and the authenticated [`Principal`].

mod passwords;
mod tokens;

pub use passwords::{PasswordHasher, generate_password};
pub use tokens::{AccessClaims, TokenIssuer, UserClaim};

use lintel_model::Role;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("key material unusable: {0}")]
    Keys(String),
    #[error("auth internal error: {0}")]
    Internal(String),
}

/// Who is calling, after authentication: always within exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub user_id: String,
    pub roles: Vec<Role>,
}
