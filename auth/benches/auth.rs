//! Auth benchmarks (`cargo bench -p lintel-auth`): access-token verifications per second
//! against raw `jsonwebtoken` EdDSA verification in the same run, and password sign-ins
//! per second with peak memory under a burst of 200 concurrent sign-ins (scrypt N=2^17,
//! bounded by the hashing semaphore).

use lintel_auth::{Keyring, PasswordHasher, SecretKeyring, TokenService};
use lintel_model::{IdKind, Role, Tenant, User, new_id};
use lintel_store::{Actor, EmbeddedStore, Store, StoreExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let keyring = Keyring::new(SecretKeyring::parse(&SecretKeyring::generate_line()).unwrap());
        let tokens = TokenService::new(
            store.clone(),
            keyring,
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
        );
        let tenant = store
            .create(
                &Actor::system(),
                Tenant {
                    id: new_id(IdKind::Tenant),
                    name: "Bench".into(),
                    domain: "bench.example".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let user = User {
            id: new_id(IdKind::User),
            tenant_id: tenant.id.clone(),
            name: "Ada".into(),
            email: "ada@bench.example".into(),
            roles: vec![Role::Staff],
            ..Default::default()
        };
        let token = tokens.issue(&tenant, &user, Some("session-x")).await.unwrap();
        tokens.verify(&token).await.unwrap();

        // Baseline: the same EdDSA verification with jsonwebtoken alone.
        let jwks = tokens.jwks(&tenant.id).await.unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let decoding = jsonwebtoken::DecodingKey::from_ed_components(&x).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["bench.example"]);
        const N: u32 = 20_000;
        let t = Instant::now();
        for _ in 0..N {
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v).unwrap();
        }
        let raw = f64::from(N) / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..N {
            tokens.verify(&token).await.unwrap();
        }
        let ours = f64::from(N) / t.elapsed().as_secs_f64();
        println!(
            "token verifications/s: lintel {ours:.0}, raw jsonwebtoken {raw:.0}, ratio {:.2}",
            ours / raw
        );

        // Sign-ins: 200 at once against one production-strength hash.
        let before = peak_rss_mib();
        let hasher = PasswordHasher::new(2);
        let phc = hasher.hash("correct horse battery staple").await.unwrap();
        let t = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (h, phc) = (hasher.clone(), phc.clone());
                tokio::spawn(async move { h.verify("correct horse battery staple", &phc).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "sign-ins: 200 concurrent in {secs:.1} s = {:.1}/s with {} hashing at once; peak RSS {:.0} MiB (before {:.0} MiB; unbounded would need ~{} MiB)",
            200.0 / secs,
            hasher.concurrency(),
            peak_rss_mib(),
            before,
            200 * 128
        );
    });
}
