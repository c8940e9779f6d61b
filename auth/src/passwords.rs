use crate::AuthError;
use rand::Rng;
use scrypt::password_hash::phc::PasswordHash;
use scrypt::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use scrypt::{Params, Scrypt};
use std::sync::Arc;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// scrypt work factor: N = 2^17, r = 8, p = 1 (≈128 MiB and a fraction of a second each).
pub const LOG_N: u8 = 17;

/// Longer passwords are refused outright, before any hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Stored hashes whose parameters would need more memory than this are refused rather than
/// verified, so one bad record cannot defeat the concurrency bound (1 GiB: ln=20 at r=8).
const MAX_STORED_MEMORY_BYTES: u128 = 1 << 30;
/// ... or more passes than this.
const MAX_STORED_P: u32 = 16;

/// The outcome of a successful [`PasswordHasher::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The stored hash was made with other parameters than the hasher's current ones:
    /// hash the password again and store the new hash.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords with scrypt, at most `concurrency` at a time, so a burst
/// of logins cannot exhaust memory (each hash holds ~128 MiB).
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    concurrency: usize,
    params: Params,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("concurrency", &self.concurrency)
            .field("log_n", &self.params.log_n())
            .field("r", &self.params.r())
            .field("p", &self.params.p())
            .finish()
    }
}

fn malformed() -> AuthError {
    AuthError::Internal("stored password hash is malformed".into())
}

/// (ln, r, p) of a stored scrypt PHC string, or `None` if it is not one.
fn stored_params(phc: &str) -> Option<(u8, u32, u32)> {
    let parsed = PasswordHash::new(phc).ok()?;
    if parsed.algorithm.as_str() != "scrypt" {
        return None;
    }
    let params = Params::try_from(&parsed).ok()?;
    Some((params.log_n(), params.r(), params.p()))
}

fn check_length(password: &str) -> Result<(), AuthError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::InvalidCredentials);
    }
    Ok(())
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> Self {
        Self::with_log_n(concurrency, LOG_N)
    }

    /// A cheaper work factor, for tests only.
    pub fn with_log_n(concurrency: usize, log_n: u8) -> Self {
        let concurrency = concurrency.max(1);
        PasswordHasher {
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            params: Params::new(log_n, 8, 1).expect("r=8, p=1 are valid scrypt parameters"),
        }
    }

    /// How many hashes may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn current(&self) -> (u8, u32, u32) {
        (self.params.log_n(), self.params.r(), self.params.p())
    }

    /// Whether a stored PHC string was made with other parameters than this hasher's (also
    /// true if it is not a readable scrypt hash).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        stored_params(phc) != Some(self.current())
    }

    /// A PHC string: `$scrypt$ln=17,r=8,p=1$<salt>$<hash>` (parameters stored with it).
    /// Passwords over [`MAX_PASSWORD_BYTES`] are refused with `InvalidCredentials`.
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        check_length(password)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let password = Zeroizing::new(password.to_owned());
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
    /// `needs_rehash` in the result says whether those differ from this hasher's.
    /// Passwords over [`MAX_PASSWORD_BYTES`] are refused with `InvalidCredentials` at once;
    /// an unreadable stored hash is `Internal` (without the hash in the message).
    pub async fn verify(&self, password: &str, phc: &str) -> Result<Verified, AuthError> {
        check_length(password)?;
        let parsed = PasswordHash::new(phc).map_err(|_| malformed())?;
        let params = Params::try_from(&parsed).map_err(|_| malformed())?;
        let memory = 128 * u128::from(params.r()) * (1u128 << params.log_n());
        if parsed.algorithm.as_str() != "scrypt"
            || memory > MAX_STORED_MEMORY_BYTES
            || params.p() > MAX_STORED_P
        {
            return Err(AuthError::Internal(
                "stored password hash has unsupported parameters".into(),
            ));
        }
        let needs_rehash = (params.log_n(), params.r(), params.p()) != self.current();

        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let password = Zeroizing::new(password.to_owned());
        tokio::task::spawn_blocking(move || {
            match Scrypt::default().verify_password(password.as_bytes(), &parsed) {
                Ok(()) => Ok(Verified { needs_rehash }),
                Err(scrypt::password_hash::Error::PasswordInvalid) => {
                    Err(AuthError::InvalidCredentials)
                }
                Err(_) => Err(malformed()),
            }
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

/// After a successful sign-in (the only time the password is known): re-hash it with the
/// current parameters and store the new hash. A failed upgrade is logged, not an error:
/// the sign-in stands, and the next one tries again.
pub async fn upgrade_password_hash(
    store: &std::sync::Arc<dyn lintel_store::Store>,
    hasher: &PasswordHasher,
    user: &lintel_model::User,
    password: &str,
) {
    use lintel_store::StoreExt;
    let upgraded = async {
        let mut u = user.clone();
        u.password_hash = Some(hasher.hash(password).await?);
        store
            .update_bookkeeping(u)
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))
    };
    match upgraded.await {
        Ok(_) => {
            tracing::info!(user = %user.id, "password hash upgraded to the current parameters")
        }
        Err(e) => tracing::warn!(user = %user.id, error = %e, "password hash upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn hashes_verify_and_carry_their_parameters() {
        let h = PasswordHasher::with_log_n(2, 10);
        let phc = h.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$scrypt$ln=10,r=8,p=1$"), "{phc}");
        assert_eq!(
            h.verify("correct horse", &phc).await.unwrap(),
            Verified {
                needs_rehash: false
            }
        );
        assert!(matches!(
            h.verify("wrong", &phc).await,
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            h.verify("", &phc).await,
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
        let h = PasswordHasher::new(1);
        let phc = h.hash("x").await.unwrap();
        assert!(phc.starts_with("$scrypt$ln=17,r=8,p=1$"), "{phc}");
        assert!(!h.needs_rehash(&phc));
    }

    #[tokio::test]
    async fn older_parameters_need_a_rehash() {
        let old = PasswordHasher::with_log_n(1, 10);
        let new = PasswordHasher::with_log_n(1, 11);
        let phc = old.hash("pw").await.unwrap();
        let v = new.verify("pw", &phc).await.unwrap();
        assert!(v.needs_rehash);
        assert!(new.needs_rehash(&phc));
        // The same parameters: no rehash.
        assert!(!old.verify("pw", &phc).await.unwrap().needs_rehash);
        assert!(!old.needs_rehash(&phc));
        // The upgraded hash is current for the new hasher.
        let upgraded = new.hash("pw").await.unwrap();
        assert!(!new.verify("pw", &upgraded).await.unwrap().needs_rehash);
        // Stronger stored parameters also differ from the current ones.
        assert!(old.needs_rehash(&upgraded));
        // A wrong password is still wrong, whatever the parameters.
        assert!(matches!(
            new.verify("nope", &phc).await,
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn needs_rehash_reads_r_and_p_too() {
        let h = PasswordHasher::with_log_n(1, 10);
        let salt_and_hash = "$c2FsdHNhbHRzYWx0c2FsdA$bm90IGEgcmVhbCBoYXNoIGJ1dCAzMiBieXRlcyE";
        assert!(!h.needs_rehash(&format!("$scrypt$ln=10,r=8,p=1{salt_and_hash}")));
        assert!(h.needs_rehash(&format!("$scrypt$ln=10,r=4,p=1{salt_and_hash}")));
        assert!(h.needs_rehash(&format!("$scrypt$ln=10,r=8,p=2{salt_and_hash}")));
        assert!(h.needs_rehash(&format!("$scrypt$ln=9,r=8,p=1{salt_and_hash}")));
        // Unreadable hashes cannot be current.
        assert!(h.needs_rehash("not a phc string"));
        assert!(h.needs_rehash(""));
        assert!(h.needs_rehash(&format!("$argon2id$v=19$m=19456,t=2,p=1{salt_and_hash}")));
    }

    #[tokio::test]
    async fn malformed_stored_hashes_are_internal_errors_without_the_hash() {
        let h = PasswordHasher::with_log_n(1, 10);
        let good = h.hash("pw").await.unwrap();
        let hash_part = good.rsplit('$').next().unwrap().to_owned();
        let truncated = good[..good.len() - 10].to_owned();
        let cases = [
            "not-a-phc-secretish".to_owned(),
            String::new(),
            format!("$scrypt$ln=abc,r=8,p=1$c2FsdHNhbHQ${hash_part}"),
            format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${hash_part}"),
            good.replace("$scrypt$", "$scrypt$x=1,"),
            truncated,
        ];
        for phc in &cases {
            match h.verify("pw", phc).await {
                Err(AuthError::Internal(m)) => {
                    assert!(!m.contains(&hash_part), "{m}");
                    assert!(phc.is_empty() || !m.contains(phc.as_str()), "{m}");
                    assert!(!m.contains("secretish"), "{m}");
                }
                other => panic!("{phc}: expected Internal, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn absurd_stored_parameters_are_refused_before_hashing() {
        let h = PasswordHasher::with_log_n(1, 10);
        let good = h.hash("pw").await.unwrap();
        // ln=30 would need 128 GiB.
        let huge = good.replace("ln=10", "ln=30");
        let started = Instant::now();
        assert!(matches!(
            h.verify("pw", &huge).await,
            Err(AuthError::Internal(_))
        ));
        assert!(started.elapsed() < Duration::from_millis(50));
        let many_p = good.replace("p=1", "p=1000");
        assert!(matches!(
            h.verify("pw", &many_p).await,
            Err(AuthError::Internal(_))
        ));
    }

    #[tokio::test]
    async fn oversized_passwords_are_refused_fast_and_without_a_permit() {
        // Production work factor: hashing would take far longer than 50 ms.
        let h = PasswordHasher::new(1);
        let phc =
            "$scrypt$ln=17,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$bm90IGEgcmVhbCBoYXNoIGJ1dCAzMiBieXRlcyE";
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        // Hold the only permit: a refusal that waited for it would hang.
        let _held = h.permits.clone().acquire_owned().await.unwrap();
        let started = Instant::now();
        let hashed = tokio::time::timeout(Duration::from_secs(5), h.hash(&long)).await;
        let verified = tokio::time::timeout(Duration::from_secs(5), h.verify(&long, phc)).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(hashed, Ok(Err(AuthError::InvalidCredentials))),
            "{hashed:?}"
        );
        assert!(
            matches!(verified, Ok(Err(AuthError::InvalidCredentials))),
            "{verified:?}"
        );
        assert!(elapsed < Duration::from_millis(50), "{elapsed:?}");
        // Multi-byte characters count in bytes.
        let wide = "é".repeat(MAX_PASSWORD_BYTES / 2 + 1);
        assert!(matches!(
            h.hash(&wide).await,
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[tokio::test]
    async fn the_longest_allowed_password_works() {
        let h = PasswordHasher::with_log_n(1, 10);
        let max = "y".repeat(MAX_PASSWORD_BYTES);
        let phc = h.hash(&max).await.unwrap();
        assert!(!h.verify(&max, &phc).await.unwrap().needs_rehash);
        assert!(matches!(
            h.verify(&max[1..], &phc).await,
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[tokio::test]
    async fn hashing_is_bounded_by_the_semaphore() {
        let h = PasswordHasher::with_log_n(2, 10);
        assert_eq!(h.concurrency(), 2);
        assert_eq!(PasswordHasher::with_log_n(0, 10).concurrency(), 1);
        // With both permits held, hashing waits.
        let a = h.permits.clone().acquire_owned().await.unwrap();
        let _b = h.permits.clone().acquire_owned().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), h.hash("pw"))
                .await
                .is_err()
        );
        drop(a);
        let phc = tokio::time::timeout(Duration::from_secs(10), h.hash("pw"))
            .await
            .expect("runs once a permit is free")
            .unwrap();
        // Clones share the bound.
        let c = h.clone();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), async {
                let _p1 = c.permits.acquire().await.unwrap();
                let _p2 = c.permits.acquire().await.unwrap();
            })
            .await
            .is_err()
        );
        c.verify("pw", &phc).await.unwrap();
    }

    #[test]
    fn debug_shows_parameters() {
        let dbg = format!("{:?}", PasswordHasher::with_log_n(3, 10));
        assert!(
            dbg.contains("concurrency: 3") && dbg.contains("log_n: 10"),
            "{dbg}"
        );
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let (a, b) = (generate_password(24), generate_password(24));
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[tokio::test]
    async fn a_sign_in_upgrades_an_old_hash_in_the_store() {
        use lintel_model::{IdKind, User, new_id};
        use lintel_store::{Actor, StoreExt};
        let (_dir, store) = crate::testing::store();
        let tenant = crate::testing::tenant(&store, "t.example").await;
        let old = PasswordHasher::with_log_n(1, 10);
        let user = store
            .create(
                &Actor::system(),
                User {
                    id: new_id(IdKind::User),
                    tenant_id: tenant.id.clone(),
                    name: "U".into(),
                    email: "u@t.example".into(),
                    password_hash: Some(old.hash("a long passphrase").await.unwrap()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let current = PasswordHasher::with_log_n(1, 11);
        let v = current
            .verify("a long passphrase", user.password_hash.as_deref().unwrap())
            .await
            .unwrap();
        assert!(v.needs_rehash);
        upgrade_password_hash(&store, &current, &user, "a long passphrase").await;
        let stored: User = store.require(&tenant.id, &user.id).await.unwrap();
        let phc = stored.password_hash.unwrap();
        assert!(phc.starts_with("$scrypt$ln=11,r=8,p=1$"), "{phc}");
        let v = current.verify("a long passphrase", &phc).await.unwrap();
        assert!(!v.needs_rehash);
        // The upgrade is bookkeeping: no audit entry.
        let log = store
            .audit_log(&tenant.id, Some(&user.id), None, 10)
            .await
            .unwrap();
        assert_eq!(log.items.len(), 1, "only the creation is audited");
    }
}
