//! First run: on an empty store, create the tenant, the admin account and (optionally) the
//! demo building, all in one atomic write, so a crash leaves either everything or nothing.

use crate::config::Config;
use lintel_auth::{PasswordHasher, generate_password};
use lintel_engine::Engine;
use lintel_model::{
    ControlSystem, DriverRole, IdKind, Module, Role, Tenant, User, Zone, new_id, now_unix,
};
use lintel_store::{Actor, ErasedRecord, ListOptions, Store, StoreExt};

/// The demo simulators' in-process names (`sim://<name>`), per room.
pub const DEMO_ROOMS: [(&str, u32, &str, &str); 2] = [
    ("Room 1.01 Huddle", 4, "demo-display-1", "demo-occupancy-1"),
    (
        "Room 1.02 Boardroom",
        12,
        "demo-display-2",
        "demo-occupancy-2",
    ),
];

pub struct FirstRun {
    pub tenant: Tenant,
    pub admin_email: String,
    /// Set when the password was generated (and must be shown once).
    pub generated_password: Option<String>,
}

/// Create the initial records if the store has no tenant yet. Returns `None` when the
/// store was already initialised (nothing is written).
pub async fn first_run(
    cfg: &Config,
    store: &dyn Store,
    engine: &Engine,
    passwords: &PasswordHasher,
) -> anyhow::Result<Option<FirstRun>> {
    // Any tenant, soft-deleted ones included: an installation is set up only once.
    for deleted in [false, true] {
        let any = ListOptions {
            limit: 1,
            deleted,
            ..Default::default()
        };
        if store.list_scoped::<Tenant>(None, any).await?.total > 0 {
            return Ok(None);
        }
    }
    let now = now_unix();
    let tenant = Tenant {
        id: new_id(IdKind::Tenant),
        name: cfg.bootstrap.tenant_name.clone(),
        domain: cfg.bootstrap.domain.clone(),
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    let (password, generated) = match &cfg.admin_password {
        Some(p) => (p.expose().to_string(), false),
        None => (generate_password(24), true),
    };
    let admin = User {
        id: new_id(IdKind::User),
        tenant_id: tenant.id.clone(),
        name: "Administrator".into(),
        email: cfg.bootstrap.admin_email.clone(),
        password_hash: Some(passwords.hash(&password).await?),
        roles: vec![Role::Sysadmin],
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    let mut records: Vec<Box<dyn ErasedRecord>> = vec![Box::new(admin)];
    if cfg.bootstrap.demo {
        records.extend(demo_building(&tenant.id, engine).await?);
    }
    // The tenant goes last: it marks the set-up as done. The embedded store commits the
    // batch atomically anyway; on Couchbase (one document at a time) a failure part-way
    // leaves no tenant, so the next start runs the set-up again.
    records.push(Box::new(tenant.clone()));
    store.create_all(&Actor::system(), records).await?;
    Ok(Some(FirstRun {
        tenant,
        admin_email: cfg.bootstrap.admin_email.clone(),
        generated_password: generated.then_some(password),
    }))
}

/// A zone tree (org → building → level) with two rooms, each with a display and an
/// occupancy sensor driven by the bundled demo drivers against in-process simulators.
async fn demo_building(
    tenant_id: &str,
    engine: &Engine,
) -> anyhow::Result<Vec<Box<dyn ErasedRecord>>> {
    let now = now_unix();
    let zone = |name: &str, tag: &str, parent: Option<&str>| Zone {
        id: new_id(IdKind::Zone),
        tenant_id: tenant_id.into(),
        name: name.into(),
        description: String::new(),
        tags: vec![tag.into()],
        parent_id: parent.map(String::from),
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    let org = zone("Demo Organisation", "org", None);
    let building = zone("Demo HQ", "building", Some(&org.id));
    let level = zone("Level 1", "level", Some(&building.id));
    let zones = vec![org.id.clone(), building.id.clone(), level.id.clone()];
    let mut out: Vec<Box<dyn ErasedRecord>> =
        vec![Box::new(org), Box::new(building), Box::new(level)];

    let mut drivers = Vec::new();
    for bundled in [
        lintel_bundled_drivers::DEMO_DISPLAY,
        lintel_bundled_drivers::DEMO_OCCUPANCY,
    ] {
        let (hash, info) = engine
            .install_component(tenant_id, bundled.component.to_vec())
            .await?;
        let record = info.to_record(tenant_id, hash, DriverRole::Device);
        drivers.push(record.id.clone());
        out.push(Box::new(record));
    }

    for (name, capacity, display_sim, occupancy_sim) in DEMO_ROOMS {
        let system_id = new_id(IdKind::System);
        let mut modules = Vec::new();
        for (driver_id, sim) in drivers.iter().zip([display_sim, occupancy_sim]) {
            let module = Module {
                id: new_id(IdKind::Module),
                tenant_id: tenant_id.into(),
                driver_id: driver_id.clone(),
                control_system_id: Some(system_id.clone()),
                uri: Some(format!("sim://{sim}")),
                running: true,
                notes: "Demo device (in-process simulator)".into(),
                created_at: now,
                updated_at: now,
                ..Default::default()
            };
            modules.push(module.id.clone());
            out.push(Box::new(module));
        }
        out.push(Box::new(ControlSystem {
            id: system_id,
            tenant_id: tenant_id.into(),
            name: name.into(),
            description: "Demo room with a display and an occupancy sensor".into(),
            email: None,
            capacity,
            bookable: true,
            zones: zones.clone(),
            modules,
            created_at: now,
            updated_at: now,
            ..Default::default()
        }));
    }
    Ok(out)
}
