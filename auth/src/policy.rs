//! Who may do what: the permission matrix of roles × resources × actions. The API asks
//! [`Access::check`] for every route (its one enforcement point); `docs/permissions.md`
//! shows [`markdown`]'s output, and a test keeps the two equal.

use crate::{AuthError, Principal};
use lintel_model::{EncryptionLevel, Role};

/// What a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Tenants (PlaceOS authorities). Everyone reads their own; sysadmins manage all.
    Tenants,
    Zones,
    Systems,
    Modules,
    Drivers,
    /// Settings documents; reading a value back also needs [`may_read_setting`].
    Settings,
    Metadata,
    Triggers,
    Users,
    ApiKeys,
    IdentityProviders,
    /// MQTT brokers the tenant's live state is published to (their passwords are sealed).
    Brokers,
    /// The audit trail.
    Audit,
    /// Live device state (status keys).
    State,
    /// Calling driver functions (`exec`).
    Control,
}

/// What is done to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    /// Create, update, delete, restore.
    Write,
}

impl Resource {
    pub const ALL: [Resource; 15] = [
        Resource::Tenants,
        Resource::Zones,
        Resource::Systems,
        Resource::Modules,
        Resource::Drivers,
        Resource::Settings,
        Resource::Metadata,
        Resource::Triggers,
        Resource::Users,
        Resource::ApiKeys,
        Resource::IdentityProviders,
        Resource::Brokers,
        Resource::Audit,
        Resource::State,
        Resource::Control,
    ];

    /// The name used in API-key scopes (`systems.read`) and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Tenants => "tenants",
            Resource::Zones => "zones",
            Resource::Systems => "systems",
            Resource::Modules => "modules",
            Resource::Drivers => "drivers",
            Resource::Settings => "settings",
            Resource::Metadata => "metadata",
            Resource::Triggers => "triggers",
            Resource::Users => "users",
            Resource::ApiKeys => "api_keys",
            Resource::IdentityProviders => "identity_providers",
            Resource::Brokers => "brokers",
            Resource::Audit => "audit",
            Resource::State => "state",
            Resource::Control => "control",
        }
    }
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }
}

/// The matrix. Roles are cumulative (each has what the one below has, and more), and
/// `sysadmin` is `admin` in every tenant plus tenant management.
pub fn allows(role: Role, resource: Resource, action: Action) -> bool {
    use Action::*;
    use Resource::*;
    use Role::*;
    match (resource, action) {
        // Room panels and staff apps: find rooms, see their state, control them.
        (Zones | Systems | Metadata | State, Read) | (Control, Write) => true,
        // Support diagnoses: every configuration readable (settings up to `support`).
        (Modules | Drivers | Settings | Triggers | Users | Audit | Tenants, Read) => {
            role >= Support
        }
        // Admins configure their tenant, its people, keys, sign-in and brokers.
        (Zones | Systems | Modules | Drivers | Settings | Metadata | Triggers | Users, Write)
        | (ApiKeys | IdentityProviders | Brokers, _) => role >= Admin,
        (Tenants, Write) => role >= Sysadmin,
        (State | Control | Audit, _) => false,
    }
}

/// Whether `role` may read back a setting sealed at `level`. `never_display` values are
/// for drivers only: no role reads them.
pub fn may_read_setting(role: Role, level: EncryptionLevel) -> bool {
    match level {
        EncryptionLevel::None => role >= Role::Support,
        EncryptionLevel::Support => role >= Role::Support,
        EncryptionLevel::Admin => role >= Role::Admin,
        EncryptionLevel::NeverDisplay => false,
    }
}

/// Whether an API-key scope list allows `resource`/`action`: empty allows everything the
/// role does; `systems` allows both actions, `systems.read` only reading.
pub fn scopes_allow(scopes: &[String], resource: Resource, action: Action) -> bool {
    scopes.is_empty()
        || scopes.iter().any(|s| match s.split_once('.') {
            None => s == resource.name(),
            Some((r, a)) => r == resource.name() && a == action.name(),
        })
}

/// Whether `scope` is a scope this matrix knows (`systems`, `state.read`, …).
pub fn is_known_scope(scope: &str) -> bool {
    let (r, a) = scope.split_once('.').unwrap_or((scope, ""));
    Resource::ALL.iter().any(|res| res.name() == r) && ["", "read", "write"].contains(&a)
}

/// The enforcement point's question, asked of a principal.
pub trait Access {
    fn check(&self, resource: Resource, action: Action) -> Result<(), AuthError>;
}

impl Access for Principal {
    fn check(&self, resource: Resource, action: Action) -> Result<(), AuthError> {
        let role_ok = self
            .role()
            .is_some_and(|role| allows(role, resource, action));
        if role_ok && scopes_allow(&self.scopes, resource, action) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "not allowed to {} {}",
                action.name(),
                resource.name()
            )))
        }
    }
}

/// The matrix as a Markdown table (the body of `docs/permissions.md`'s matrix).
pub fn markdown() -> String {
    let roles = [Role::Staff, Role::Support, Role::Admin, Role::Sysadmin];
    let mut out =
        String::from("| resource | staff | support | admin | sysadmin |\n|---|---|---|---|---|\n");
    for r in Resource::ALL {
        let cells: Vec<&str> = roles
            .iter()
            .map(|&role| {
                match (
                    allows(role, r, Action::Read),
                    allows(role, r, Action::Write),
                ) {
                    (true, true) => "read, write",
                    (true, false) => "read",
                    (false, true) => "write",
                    (false, false) => "—",
                }
            })
            .collect();
        out.push_str(&format!("| `{}` | {} |\n", r.name(), cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credential;

    fn principal(role: Role, scopes: &[&str]) -> Principal {
        Principal {
            tenant_id: "authority-a".into(),
            user_id: "user-a".into(),
            roles: vec![role],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            credential: Credential::Token { session_id: None },
        }
    }

    #[test]
    fn roles_are_cumulative() {
        let roles = [Role::Staff, Role::Support, Role::Admin, Role::Sysadmin];
        for r in Resource::ALL {
            for a in [Action::Read, Action::Write] {
                for w in roles.windows(2) {
                    assert!(
                        !allows(w[0], r, a) || allows(w[1], r, a),
                        "{:?} may {a:?} {r:?} but {:?} may not",
                        w[0],
                        w[1]
                    );
                }
            }
        }
    }

    #[test]
    fn the_matrix_says_what_the_docs_say() {
        let docs = include_str!("../../docs/permissions.md");
        assert!(
            docs.contains(&markdown()),
            "docs/permissions.md is out of date; its matrix must read:\n{}",
            markdown()
        );
    }

    #[test]
    fn staff_use_rooms_but_configure_nothing() {
        let p = principal(Role::Staff, &[]);
        p.check(Resource::Systems, Action::Read).unwrap();
        p.check(Resource::Control, Action::Write).unwrap();
        for r in [Resource::Settings, Resource::ApiKeys, Resource::Users] {
            assert!(p.check(r, Action::Read).is_err(), "{r:?}");
        }
        assert!(p.check(Resource::Systems, Action::Write).is_err());
        let e = p.check(Resource::ApiKeys, Action::Write).unwrap_err();
        assert_eq!(e.to_string(), "not allowed to write api_keys");
    }

    #[test]
    fn sign_in_and_brokers_are_for_admins_only() {
        for r in [Resource::IdentityProviders, Resource::Brokers] {
            for a in [Action::Read, Action::Write] {
                assert!(!allows(Role::Staff, r, a), "staff {a:?} {r:?}");
                assert!(!allows(Role::Support, r, a), "support {a:?} {r:?}");
                assert!(allows(Role::Admin, r, a), "admin {a:?} {r:?}");
                assert!(allows(Role::Sysadmin, r, a), "sysadmin {a:?} {r:?}");
            }
        }
        assert!(is_known_scope("brokers") && is_known_scope("brokers.write"));
        let e = principal(Role::Support, &[])
            .check(Resource::Brokers, Action::Read)
            .unwrap_err();
        assert_eq!(e.to_string(), "not allowed to read brokers");
    }

    #[test]
    fn tenants_are_managed_by_sysadmins_only() {
        assert!(!allows(Role::Admin, Resource::Tenants, Action::Write));
        assert!(allows(Role::Sysadmin, Resource::Tenants, Action::Write));
    }

    #[test]
    fn scopes_narrow_a_role_and_never_widen_it() {
        let bi = principal(Role::Admin, &["state.read", "systems"]);
        bi.check(Resource::State, Action::Read).unwrap();
        bi.check(Resource::Systems, Action::Write).unwrap();
        assert!(bi.check(Resource::Control, Action::Write).is_err());
        assert!(bi.check(Resource::Users, Action::Read).is_err());
        let staff = principal(Role::Staff, &["settings"]);
        assert!(staff.check(Resource::Settings, Action::Read).is_err());
        assert!(is_known_scope("systems.read") && is_known_scope("state"));
        assert!(!is_known_scope("systems.delete") && !is_known_scope("everything"));
    }

    #[test]
    fn setting_levels_decide_who_reads_a_value_back() {
        use EncryptionLevel::*;
        let cases = [
            (Role::Staff, None, false),
            (Role::Support, Support, true),
            (Role::Support, Admin, false),
            (Role::Admin, Admin, true),
            (Role::Sysadmin, NeverDisplay, false),
        ];
        for (role, level, ok) in cases {
            assert_eq!(may_read_setting(role, level), ok, "{role:?} {level:?}");
        }
    }

    #[test]
    fn a_principal_without_roles_may_do_nothing() {
        let mut p = principal(Role::Staff, &[]);
        p.roles.clear();
        assert!(p.check(Resource::Systems, Action::Read).is_err());
    }
}
