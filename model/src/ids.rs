use rand::Rng;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The kinds of record, each with the id prefix PlaceOS clients expect (`sys-…`, `mod-…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    Tenant,
    Zone,
    System,
    Module,
    Driver,
    Settings,
    User,
    ApiKey,
    Trigger,
    Metadata,
    Audit,
    Session,
    IdentityProvider,
    SigningKey,
    Broker,
    RefreshToken,
}

impl IdKind {
    pub const ALL: [IdKind; 16] = [
        IdKind::Tenant,
        IdKind::Zone,
        IdKind::System,
        IdKind::Module,
        IdKind::Driver,
        IdKind::Settings,
        IdKind::User,
        IdKind::ApiKey,
        IdKind::Trigger,
        IdKind::Metadata,
        IdKind::Audit,
        IdKind::Session,
        IdKind::IdentityProvider,
        IdKind::SigningKey,
        IdKind::Broker,
        IdKind::RefreshToken,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Tenant => "authority",
            IdKind::Zone => "zone",
            IdKind::System => "sys",
            IdKind::Module => "mod",
            IdKind::Driver => "driver",
            IdKind::Settings => "settings",
            IdKind::User => "user",
            IdKind::ApiKey => "key",
            IdKind::Trigger => "trigger",
            IdKind::Metadata => "metadata",
            IdKind::Audit => "audit",
            IdKind::Session => "session",
            IdKind::IdentityProvider => "idp",
            IdKind::SigningKey => "sigkey",
            IdKind::Broker => "broker",
            IdKind::RefreshToken => "rtoken",
        }
    }

    /// A stable name for the kind, used as a storage table name.
    pub fn name(self) -> &'static str {
        match self {
            IdKind::Tenant => "tenant",
            IdKind::Zone => "zone",
            IdKind::System => "control_system",
            IdKind::Module => "module",
            IdKind::Driver => "driver",
            IdKind::Settings => "settings",
            IdKind::User => "user",
            IdKind::ApiKey => "api_key",
            IdKind::Trigger => "trigger",
            IdKind::Metadata => "metadata",
            IdKind::Audit => "audit",
            IdKind::Session => "session",
            IdKind::IdentityProvider => "identity_provider",
            IdKind::SigningKey => "signing_key",
            IdKind::Broker => "broker",
            IdKind::RefreshToken => "refresh_token",
        }
    }

    /// Whether changes to records of this kind leave audit entries. Configuration does;
    /// bookkeeping that changes on every use (sign-in sessions, the refresh tokens an
    /// OAuth provider rotates with every access token) does not.
    pub const fn audited(self) -> bool {
        !matches!(self, IdKind::Session | IdKind::Audit | IdKind::RefreshToken)
    }

    /// The kind whose stable [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind an id belongs to, from its prefix (`sys-…` → `System`).
    pub fn of_id(id: &str) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| k.is_valid_id(id))
    }

    /// Whether `id` is well formed for this kind: the prefix, a dash, then 1–64 ASCII
    /// letters, digits, `_` or `-`. Nothing else (no `/`, `.`, spaces) so an id can never
    /// traverse a path or a key space.
    pub fn is_valid_id(self, id: &str) -> bool {
        let Some(rest) = id
            .strip_prefix(self.prefix())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A new random id with the kind's prefix, e.g. `sys-Xq3b9LkP0aZr`.
pub fn new_id(kind: IdKind) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..12)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect();
    format!("{}-{}", kind.prefix(), suffix)
}

/// An id that sorts by creation time: the prefix, 12 hex digits of milliseconds since the
/// epoch, 4 hex digits of a sequence within that millisecond, then random characters. Used
/// for audit entries so that id order is time order: within one process, each id sorts
/// after the one before, even in the same millisecond (or with the clock stepped back);
/// across processes, ids of the same millisecond are ordered arbitrarily.
pub fn new_time_ordered_id(kind: IdKind, unix_ms: i64) -> String {
    static LAST: std::sync::Mutex<(i64, u32)> = std::sync::Mutex::new((0, 0));
    let (ms, seq) = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let ms = unix_ms.max(0);
        *last = if ms > last.0 {
            (ms, 0)
        } else if last.1 < 0xffff {
            (last.0, last.1 + 1)
        } else {
            // 65,536 ids in one millisecond: borrow the next one.
            (last.0 + 1, 0)
        };
        *last
    };
    let mut rng = rand::thread_rng();
    let suffix: String = (0..4)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect();
    format!("{}-{ms:012x}{seq:04x}{suffix}", kind.prefix())
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, as PlaceOS stores `created_at`/`updated_at`.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A module addressed inside a system as PlaceOS does: `Display_1` is the first module
/// named `Display` in the system's ordered module list. A bare `Display` means index 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSlug {
    pub name: String,
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("module reference is empty")]
    Empty,
    #[error("module index must be 1 or more, got {0}")]
    ZeroIndex(String),
    #[error("module reference `{0}` has characters other than letters, digits and `_`")]
    BadCharacters(String),
}

impl ModuleSlug {
    pub fn parse(s: &str) -> Result<Self, SlugError> {
        if s.is_empty() {
            return Err(SlugError::Empty);
        }
        if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(SlugError::BadCharacters(s.chars().take(128).collect()));
        }
        if let Some((name, idx)) = s.rsplit_once('_')
            && !name.is_empty()
            && !idx.is_empty()
            && idx.bytes().all(|b| b.is_ascii_digit())
        {
            let index: u32 = idx
                .parse()
                .map_err(|_| SlugError::BadCharacters(s.to_string()))?;
            if index == 0 {
                return Err(SlugError::ZeroIndex(s.to_string()));
            }
            return Ok(ModuleSlug {
                name: name.to_string(),
                index,
            });
        }
        Ok(ModuleSlug {
            name: s.to_string(),
            index: 1,
        })
    }
}

impl fmt::Display for ModuleSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.name, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_validate() {
        for kind in IdKind::ALL {
            let id = new_id(kind);
            assert!(id.starts_with(&format!("{}-", kind.prefix())), "{id}");
            assert!(kind.is_valid_id(&id), "{id}");
        }
        assert_eq!(IdKind::of_id("sys-abc"), Some(IdKind::System));
        assert_eq!(IdKind::of_id("nope-abc"), None);
        for kind in IdKind::ALL {
            assert_eq!(IdKind::from_name(kind.name()), Some(kind));
        }
        let (a, b) = (
            new_time_ordered_id(IdKind::Audit, 1_000),
            new_time_ordered_id(IdKind::Audit, 2_000),
        );
        assert!(a < b && IdKind::Audit.is_valid_id(&a), "{a} {b}");
        // Within one millisecond, and with the clock stepped back, ids still grow.
        let mut prev = new_time_ordered_id(IdKind::Audit, 5_000);
        for ms in [5_000, 5_000, 4_000, 5_000]
            .into_iter()
            .cycle()
            .take(100_000)
        {
            let next = new_time_ordered_id(IdKind::Audit, ms);
            assert!(next > prev, "{prev} then {next}");
            prev = next;
        }
        assert!(!IdKind::System.is_valid_id("mod-abc"));
        assert!(!IdKind::System.is_valid_id("sys-"));
        assert!(!IdKind::System.is_valid_id("sys-../../etc"));
        assert!(!IdKind::System.is_valid_id("sys-a/b"));
        assert!(!IdKind::System.is_valid_id(&format!("sys-{}", "a".repeat(65))));
    }

    #[test]
    fn module_slugs_parse_like_placeos() {
        assert_eq!(
            ModuleSlug::parse("Display_1").unwrap(),
            ModuleSlug {
                name: "Display".into(),
                index: 1
            }
        );
        assert_eq!(ModuleSlug::parse("Display_12").unwrap().index, 12);
        assert_eq!(ModuleSlug::parse("Display").unwrap().index, 1);
        // an underscore inside the name is part of the name
        let s = ModuleSlug::parse("Room_Logic_2").unwrap();
        assert_eq!((s.name.as_str(), s.index), ("Room_Logic", 2));
        let s = ModuleSlug::parse("Room_Logic").unwrap();
        assert_eq!((s.name.as_str(), s.index), ("Room_Logic", 1));
        assert_eq!(
            ModuleSlug::parse("Display_0"),
            Err(SlugError::ZeroIndex("Display_0".into()))
        );
        assert!(ModuleSlug::parse("").is_err());
        assert!(ModuleSlug::parse("../x").is_err());
        assert!(ModuleSlug::parse("Display_99999999999").is_err());
    }
}
