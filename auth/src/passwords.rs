use crate::AuthError;
use rand::Rng;
use scrypt::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use scrypt::{Params, Scrypt};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// scrypt work factor: N = 2^17, r = 8, p = 1 (≈128 MiB and a fraction of a second each).
pub const LOG_N: u8 = 17;

/// Hashes and verifies passwords with scrypt, at most `concurrency` at a time, so a burst
/// of logins cannot exhaust memory (each hash holds ~128 MiB).
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    params: Params,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> Self {
        Self::with_log_n(concurrency, LOG_N)
    }

    /// A cheaper work factor, for tests only.
    pub fn with_log_n(concurrency: usize, log_n: u8) -> Self {
        PasswordHasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            params: Params::new(log_n, 8, 1).expect("r=8, p=1 are valid scrypt parameters"),
        }
    }

    /// A PHC string: `$scrypt$ln=17,r=8,p=1$<salt>$<hash>` (parameters stored with it).
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let password = password.to_owned();
        let hasher = Scrypt::from(self.params);
        tokio::task::spawn_blocking(move || {
            hasher
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Internal(e.to_string()))
        })
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
    }

    /// Constant-time verification against a stored PHC string, with its own parameters.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<(), AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let (password, phc) = (password.to_owned(), phc.to_owned());
        tokio::task::spawn_blocking(move || {
            let parsed = scrypt::password_hash::phc::PasswordHash::new(&phc)
                .map_err(|_| AuthError::Internal("stored password hash is malformed".into()))?;
            Scrypt::default()
                .verify_password(password.as_bytes(), &parsed)
                .map_err(|_| AuthError::InvalidCredentials)
        })
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
    }
}

/// A random password of `len` letters and digits.
pub fn generate_password(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        let h = PasswordHasher::with_log_n(2, 10);
        let phc = h.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$scrypt$ln=10,r=8,p=1$"), "{phc}");
        h.verify("correct horse", &phc).await.unwrap();
        assert!(matches!(
            h.verify("wrong", &phc).await,
            Err(AuthError::InvalidCredentials)
        ));
        // Verification uses the parameters stored in the hash, not the hasher's.
        PasswordHasher::with_log_n(1, 11)
            .verify("correct horse", &phc)
            .await
            .unwrap();
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, h.hash("correct horse").await.unwrap());
    }

    #[tokio::test]
    async fn production_work_factor_is_n_2_17() {
        let phc = PasswordHasher::new(1).hash("x").await.unwrap();
        assert!(phc.starts_with("$scrypt$ln=17,r=8,p=1$"), "{phc}");
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let (a, b) = (generate_password(24), generate_password(24));
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
