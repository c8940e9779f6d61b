use crate::AuthError;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lintel_model::{Role, User};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ISSUER: &str = "lintel";
const LEEWAY_SECS: u64 = 30;

/// The user inside the token, as PlaceOS puts it (`u`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserClaim {
    pub n: String,
    pub e: String,
    pub r: Vec<Role>,
}

/// PlaceOS-shaped access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    /// The tenant's domain.
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub scope: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub u: UserClaim,
}

/// Signs and verifies access tokens with an Ed25519 key kept in the data directory.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: [u8; 32],
    kid: String,
    ttl: Duration,
}

fn keys_err(e: impl std::fmt::Display) -> AuthError {
    AuthError::Keys(e.to_string())
}

impl TokenIssuer {
    /// Load the signing key from `<data_dir>/keys/jwt-ed25519.pem`, creating it (mode 0600)
    /// on first use.
    pub fn load_or_create(data_dir: &Path, ttl: Duration) -> Result<Self, AuthError> {
        let dir = data_dir.join("keys");
        let path = dir.join("jwt-ed25519.pem");
        let key = if path.exists() {
            let pem = std::fs::read_to_string(&path).map_err(keys_err)?;
            SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| keys_err(format!("{}: {e}", path.display())))?
        } else {
            std::fs::create_dir_all(&dir).map_err(keys_err)?;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            write_private(
                &path,
                key.to_pkcs8_pem(Default::default())
                    .map_err(keys_err)?
                    .as_bytes(),
            )?;
            key
        };
        Self::from_key(&key, ttl)
    }

    fn from_key(key: &SigningKey, ttl: Duration) -> Result<Self, AuthError> {
        let der = key.to_pkcs8_der().map_err(keys_err)?;
        let public = key.verifying_key().to_bytes();
        let kid = hex::encode(&Sha256::digest(public)[..8]);
        Ok(TokenIssuer {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            public,
            kid,
            ttl,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The public key as a JWK (for a JWKS document).
    pub fn public_jwk(&self) -> serde_json::Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public);
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid, "x": x})
    }

    /// An access token for `user` in the tenant reached by `domain`.
    pub fn issue(&self, user: &User, domain: &str) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            aud: domain.into(),
            sub: user.id.clone(),
            scope: vec!["public".into()],
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            u: UserClaim {
                n: user.name.clone(),
                e: user.email.clone(),
                r: user.roles.clone(),
            },
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(e.to_string()))
    }

    /// Verify signature (EdDSA only), issuer, `exp` and `nbf`. The audience (tenant) is
    /// returned for the caller to resolve and check against the user.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(AuthError::InvalidToken("unknown signing key".into()));
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.validate_aud = false; // checked by the caller against the tenant it resolves
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "sub", "iss"]);
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| keys_err(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(keys_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_model::{IdKind, new_id};

    fn user() -> User {
        User {
            id: new_id(IdKind::User),
            tenant_id: new_id(IdKind::Tenant),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            password_hash: None,
            roles: vec![Role::Admin],
            ..Default::default()
        }
    }

    #[test]
    fn issued_tokens_verify_and_the_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenIssuer::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        let u = user();
        let token = a.issue(&u, "acme.example").unwrap();
        let c = a.verify(&token).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.aud.as_str()),
            (u.id.as_str(), "acme.example")
        );
        assert_eq!(c.u.r, vec![Role::Admin]);
        // Same key after a restart: tokens stay valid.
        let b = TokenIssuer::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(a.kid(), b.kid());
        b.verify(&token).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/jwt-ed25519.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn forged_and_tampered_tokens_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        let token = issuer.issue(&user(), "acme.example").unwrap();
        // Another key with the same claims.
        let other = TokenIssuer::from_key(
            &SigningKey::generate(&mut rand::rngs::OsRng),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            issuer
                .verify(&other.issue(&user(), "acme.example").unwrap())
                .is_err()
        );
        // Tampered payload.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
        claims["u"]["r"] = serde_json::json!(["sysadmin"]);
        parts[1] = b64.encode(claims.to_string());
        assert!(issuer.verify(&parts.join(".")).is_err());
        // alg: none
        let none_header = b64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.kid()));
        assert!(
            issuer
                .verify(&format!("{none_header}.{}.", parts[1]))
                .is_err()
        );
        // HS256 signed with the public key as the secret.
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(issuer.kid().into()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(&issuer.public),
        )
        .unwrap();
        let e = issuer.verify(&hs).unwrap_err();
        assert!(e.to_string().contains("not accepted"), "{e}");
        assert!(issuer.verify("garbage").is_err());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path(), Duration::from_secs(0)).unwrap();
        let mut claims = issuer.verify(&issuer.issue(&user(), "a").unwrap()).unwrap();
        claims.exp -= 3600;
        claims.nbf -= 3600;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(issuer.kid().into());
        let old = jsonwebtoken::encode(&header, &claims, &issuer.encoding).unwrap();
        let e = issuer.verify(&old).unwrap_err();
        assert!(e.to_string().contains("Expired"), "{e}");
    }
}
