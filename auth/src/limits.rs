//! Login rate limits: one GCRA limiter per account (tenant + username) and one per client
//! address, both from the `governor` crate, with bounded memory.

use crate::AuthError;
use governor::clock::{Clock, DefaultClock, Reference as _};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{NotUntil, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// At most this many keys are tracked per limiter (accounts, clients). When a limiter is
/// full, stale keys are swept; if it is still full, attempts are refused until keys expire.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// Usernames and tenant ids longer than this (in bytes, after lowercasing) are keyed by
/// their SHA-256, so one key costs a bounded amount of memory.
pub const MAX_KEY_PART_BYTES: usize = 320;

/// A full limiter is swept at most this often, so that a flood cannot turn every check into
/// a scan of the whole table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Retry-after reported while a limiter is full of live keys.
const SATURATED_RETRY_SECS: u64 = 1;

/// Login attempt budgets. Zero is treated as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Sustained attempts per minute against one account (tenant + username).
    pub per_account_per_minute: u32,
    /// Attempts allowed at once against one account before the per-minute rate applies.
    pub per_account_burst: u32,
    /// Sustained attempts per minute from one client address.
    pub per_client_per_minute: u32,
    /// Attempts allowed at once from one client address.
    pub per_client_burst: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_account_per_minute: 10,
            per_account_burst: 5,
            per_client_per_minute: 60,
            per_client_burst: 20,
        }
    }
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(nz(per_minute)).allow_burst(nz(burst))
}

/// One component of an account key: as given, or hashed when too long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyPart {
    Plain(Box<str>),
    Hashed([u8; 32]),
}

impl KeyPart {
    fn new(s: String) -> Self {
        if s.len() > MAX_KEY_PART_BYTES {
            KeyPart::Hashed(Sha256::digest(s.as_bytes()).into())
        } else {
            KeyPart::Plain(s.into_boxed_str())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccountKey {
    tenant: KeyPart,
    user: KeyPart,
}

impl AccountKey {
    fn new(tenant_id: &str, username: &str) -> Self {
        AccountKey {
            tenant: KeyPart::new(tenant_id.to_owned()),
            user: KeyPart::new(username.to_lowercase()),
        }
    }
}

/// The key for a client address: IPv4 (including IPv4-mapped IPv6) as is; other IPv6
/// addresses by their /64 prefix, since one host can usually use a whole /64.
fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Whole seconds to wait (rounded up, at least 1).
fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Limits login attempts per account and per client address.
///
/// `C` is the time source; production uses the default, tests use governor's
/// `FakeRelativeClock` through [`LoginLimiter::with_clock`].
pub struct LoginLimiter<C: Clock = DefaultClock> {
    accounts: Keyed<AccountKey, C>,
    clients: Keyed<IpAddr, C>,
    clock: C,
    max_keys: usize,
    last_sweep: Mutex<Option<C::Instant>>,
    saturated: AtomicBool,
}

impl<C: Clock> std::fmt::Debug for LoginLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter")
            .field("tracked_accounts", &self.accounts.len())
            .field("tracked_clients", &self.clients.len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LoginLimits::default())
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    /// A limiter reading time from `clock` (for tests: `governor::clock::FakeRelativeClock`).
    pub fn with_clock(limits: LoginLimits, clock: C) -> Self {
        Self::with_capacity(limits, clock, MAX_TRACKED_KEYS)
    }

    fn with_capacity(limits: LoginLimits, clock: C, max_keys: usize) -> Self {
        LoginLimiter {
            accounts: RateLimiter::new(
                quota(limits.per_account_per_minute, limits.per_account_burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clients: RateLimiter::new(
                quota(limits.per_client_per_minute, limits.per_client_burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
            max_keys: max_keys.max(1),
            last_sweep: Mutex::new(None),
            saturated: AtomicBool::new(false),
        }
    }
}

impl<C: Clock> LoginLimiter<C> {
    /// Count one login attempt. `Err(AuthError::RateLimited(secs))` if the client address
    /// or the account (tenant + case-insensitive username) is over its budget. The client
    /// is checked first, and a refused client does not use up the account's budget.
    pub fn check(&self, tenant_id: &str, username: &str, client: IpAddr) -> Result<(), AuthError> {
        let client = client_key(client);
        self.make_room(&self.clients)?;
        self.clients
            .check_key(&client)
            .map_err(|denied| self.denied(&denied))?;
        let account = AccountKey::new(tenant_id, username);
        self.make_room(&self.accounts)?;
        self.accounts
            .check_key(&account)
            .map_err(|denied| self.denied(&denied))
    }

    /// Drop keys whose state is indistinguishable from fresh and release the memory. Run it
    /// periodically (e.g. every minute); `check` also runs it when a limiter is full.
    pub fn housekeeping(&self) {
        self.accounts.retain_recent();
        self.clients.retain_recent();
        self.accounts.shrink_to_fit();
        self.clients.shrink_to_fit();
        if let Ok(mut last) = self.last_sweep.lock() {
            *last = Some(self.clock.now());
        }
    }

    /// Number of keys currently tracked (accounts + clients).
    pub fn tracked_keys(&self) -> usize {
        self.accounts.len() + self.clients.len()
    }

    fn denied(&self, denied: &NotUntil<C::Instant>) -> AuthError {
        AuthError::RateLimited(retry_secs(denied.wait_time_from(self.clock.now())))
    }

    /// Make sure `limiter` can take one more key: sweep it if it is full (at most once per
    /// `SWEEP_INTERVAL`), and refuse the attempt if it is still full.
    fn make_room<K: Hash + Eq + Clone>(&self, limiter: &Keyed<K, C>) -> Result<(), AuthError> {
        if limiter.len() < self.max_keys {
            return Ok(());
        }
        self.sweep_if_due();
        if limiter.len() < self.max_keys {
            if self.saturated.swap(false, Ordering::Relaxed) {
                tracing::info!("login rate limiter has room again");
            }
            return Ok(());
        }
        if !self.saturated.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_keys = self.max_keys,
                "login rate limiter is full of recent keys; refusing logins until they expire"
            );
        }
        Err(AuthError::RateLimited(SATURATED_RETRY_SECS))
    }

    fn sweep_if_due(&self) {
        let now = self.clock.now();
        {
            // Someone else sweeping right now is as good as sweeping.
            let Ok(mut last) = self.last_sweep.try_lock() else {
                return;
            };
            if let Some(at) = *last
                && Duration::from(now.duration_since(at)) < SWEEP_INTERVAL
            {
                return;
            }
            *last = Some(now);
        }
        self.housekeeping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv4Addr;

    const LIMITS: LoginLimits = LoginLimits {
        per_account_per_minute: 6, // one every 10 s
        per_account_burst: 3,
        per_client_per_minute: 30, // one every 2 s
        per_client_burst: 5,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn fake(limits: LoginLimits) -> (LoginLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LoginLimiter::with_clock(limits, clock.clone()), clock)
    }

    fn retry_after(r: Result<(), AuthError>) -> u64 {
        match r {
            Err(AuthError::RateLimited(s)) => s,
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_sensible() {
        let d = LoginLimits::default();
        assert_eq!(
            (d.per_account_per_minute, d.per_account_burst),
            (10, 5),
            "{d:?}"
        );
        assert_eq!((d.per_client_per_minute, d.per_client_burst), (60, 20));
    }

    #[test]
    fn account_burst_then_denied_with_retry_after() {
        let (l, _clock) = fake(LIMITS);
        for i in 0..3 {
            l.check("t1", "alice", ip(1))
                .unwrap_or_else(|e| panic!("{i}: {e}"));
        }
        // Burst of 3 used up; the next cell arrives 10 s after the first.
        let secs = retry_after(l.check("t1", "alice", ip(1)));
        assert_eq!(secs, 10);
        // Same account from another address is still limited (account limit).
        assert_eq!(retry_after(l.check("t1", "alice", ip(2))), 10);
    }

    #[test]
    fn usernames_are_case_insensitive() {
        let (l, _clock) = fake(LIMITS);
        l.check("t1", "Alice", ip(1)).unwrap();
        l.check("t1", "ALICE", ip(2)).unwrap();
        l.check("t1", "alice", ip(3)).unwrap();
        retry_after(l.check("t1", "aLiCe", ip(4)));
    }

    #[test]
    fn other_accounts_tenants_and_clients_are_unaffected() {
        let (l, _clock) = fake(LIMITS);
        for _ in 0..3 {
            l.check("t1", "alice", ip(1)).unwrap();
        }
        retry_after(l.check("t1", "alice", ip(1)));
        // (From other addresses: ip(1) has one attempt left of its burst of 5.)
        l.check("t1", "bob", ip(2)).unwrap();
        l.check("t2", "alice", ip(3)).unwrap();
        l.check("t1", "carol", ip(1)).unwrap();

        // Exhaust one client address across many accounts (a sprayer).
        let (l, _clock) = fake(LIMITS);
        for i in 0..5 {
            l.check("t1", &format!("user{i}"), ip(9)).unwrap();
        }
        assert_eq!(retry_after(l.check("t1", "fresh", ip(9))), 2);
        // Other clients are fine, even for the same tenant.
        l.check("t1", "fresh", ip(10)).unwrap();
    }

    #[test]
    fn denied_client_does_not_use_the_account_budget() {
        let (l, _clock) = fake(LIMITS);
        for i in 0..5 {
            l.check("t1", &format!("user{i}"), ip(9)).unwrap();
        }
        // The client is over budget: these must not reach alice's account limiter.
        for _ in 0..10 {
            retry_after(l.check("t1", "alice", ip(9)));
        }
        for last in 20..23 {
            l.check("t1", "alice", ip(last)).unwrap();
        }
    }

    #[test]
    fn budget_replenishes_as_time_passes() {
        let (l, clock) = fake(LIMITS);
        for _ in 0..3 {
            l.check("t1", "alice", ip(1)).unwrap();
        }
        assert_eq!(retry_after(l.check("t1", "alice", ip(1))), 10);
        clock.advance(Duration::from_secs(4));
        assert_eq!(retry_after(l.check("t1", "alice", ip(1))), 6);
        clock.advance(Duration::from_millis(5_500));
        // 0.5 s left: rounded up to 1, never 0.
        assert_eq!(retry_after(l.check("t1", "alice", ip(1))), 1);
        clock.advance(Duration::from_millis(500));
        l.check("t1", "alice", ip(1)).unwrap();
        retry_after(l.check("t1", "alice", ip(1)));
        // After a full minute the whole burst is back.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            l.check("t1", "alice", ip(1)).unwrap();
        }
        retry_after(l.check("t1", "alice", ip(1)));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let (l, _clock) = fake(LIMITS);
        for i in 0..5u16 {
            let a: Ipv6Addr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            l.check("t1", &format!("u{i}"), IpAddr::V6(a)).unwrap();
        }
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        retry_after(l.check("t1", "x", IpAddr::V6(same_64)));
        let other_64: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        l.check("t1", "x", IpAddr::V6(other_64)).unwrap();

        // IPv4-mapped IPv6 is the IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(client_key(mapped), ip(7));
        assert_eq!(
            client_key(IpAddr::V6(same_64)),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn long_usernames_are_hashed_but_still_limited() {
        let long = "A".repeat(10_000);
        let key = AccountKey::new("t1", &long);
        assert!(matches!(key.user, KeyPart::Hashed(_)));
        // Case-insensitive even when hashed.
        assert_eq!(key, AccountKey::new("t1", &long.to_lowercase()));
        assert_ne!(key, AccountKey::new("t1", &"a".repeat(10_001)));
        // Exactly at the bound: kept as given (lowercased).
        let edge = "B".repeat(MAX_KEY_PART_BYTES);
        assert_eq!(
            AccountKey::new("t1", &edge).user,
            KeyPart::Plain("b".repeat(MAX_KEY_PART_BYTES).into())
        );
        assert!(matches!(
            AccountKey::new(&"t".repeat(MAX_KEY_PART_BYTES + 1), "x").tenant,
            KeyPart::Hashed(_)
        ));

        let (l, _clock) = fake(LIMITS);
        for last in 0..3 {
            l.check("t1", &long, ip(last)).unwrap();
        }
        retry_after(l.check("t1", &long, ip(3)));
        // A different long name is a different account.
        l.check("t1", &"z".repeat(10_000), ip(4)).unwrap();
    }

    #[test]
    fn key_count_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let l = LoginLimiter::with_capacity(LIMITS, clock.clone(), 10);
        for i in 0..10u8 {
            l.check("t1", &format!("u{i}"), ip(i)).unwrap();
        }
        assert_eq!((l.accounts.len(), l.clients.len()), (10, 10));
        // Full of recent keys: a new client is refused rather than tracked.
        assert_eq!(retry_after(l.check("t1", "new", ip(200))), 1);
        assert!(l.accounts.len() <= 10 && l.clients.len() <= 10);

        // Once the old keys are stale, a full limiter sweeps them and admits new ones.
        clock.advance(Duration::from_secs(120));
        for i in 100..150u8 {
            l.check("t1", &format!("u{i}"), ip(i))
                .unwrap_or_else(|e| panic!("{i}: {e}"));
            assert!(l.accounts.len() <= 10, "{}", l.accounts.len());
            assert!(l.clients.len() <= 10, "{}", l.clients.len());
            clock.advance(Duration::from_secs(30));
        }
    }

    #[test]
    fn housekeeping_forgets_stale_keys_only() {
        let (l, clock) = fake(LIMITS);
        for i in 0..50u8 {
            l.check("t1", &format!("u{i}"), ip(i)).unwrap();
        }
        assert_eq!(l.tracked_keys(), 100);
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 100, "recent keys are kept");

        // An account that used its burst is remembered until its budget is whole again.
        for _ in 0..3 {
            l.check("t1", "alice", ip(251)).unwrap();
        }
        clock.advance(Duration::from_secs(25));
        l.housekeeping();
        assert_eq!(l.accounts.len(), 1, "only alice has history worth keeping");
        assert_eq!(l.clients.len(), 0);
        // 25 s after a burst of 3 (one cell per 10 s), alice has 2 attempts, not a fresh 3.
        l.check("t1", "alice", ip(252)).unwrap();
        l.check("t1", "alice", ip(252)).unwrap();
        retry_after(l.check("t1", "alice", ip(252)));

        clock.advance(Duration::from_secs(120));
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn zero_limits_mean_one() {
        let (l, _clock) = fake(LoginLimits {
            per_account_per_minute: 0,
            per_account_burst: 0,
            per_client_per_minute: 0,
            per_client_burst: 0,
        });
        l.check("t1", "alice", ip(1)).unwrap();
        assert_eq!(retry_after(l.check("t1", "alice", ip(2))), 60);
    }

    #[test]
    fn real_clock_limiter_works() {
        let l = LoginLimiter::new(LoginLimits {
            per_account_per_minute: 1,
            per_account_burst: 2,
            ..LoginLimits::default()
        });
        l.check("t1", "alice", ip(1)).unwrap();
        l.check("t1", "alice", ip(1)).unwrap();
        let secs = retry_after(l.check("t1", "alice", ip(1)));
        assert!((1..=60).contains(&secs), "{secs}");
        assert!(format!("{l:?}").contains("tracked_accounts: 1"));
    }

    #[test]
    fn limiter_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<LoginLimiter>();
        let l = std::sync::Arc::new(LoginLimiter::default());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .filter(|_| l.check("t1", "alice", ip(t)).is_ok())
                        .count()
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The default account burst is 5, whichever threads got there first.
        assert_eq!(allowed, 5);
    }

    #[test]
    fn retry_secs_rounds_up_to_at_least_one() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_secs(Duration::from_millis(2001)), 3);
    }
}
