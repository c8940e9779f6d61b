//! First run: on an empty store, create the tenant, the admin account and (optionally) the
//! demo building, all in one atomic write, so a crash leaves either everything or nothing.

use crate::config::Config;
use lintel_auth::{Keyring, PasswordHasher, generate_password};
use lintel_engine::Engine;
use lintel_model::{
    ControlSystem, DriverRole, EncryptionLevel, IdKind, Module, Role, Settings, SettingsBody,
    Tenant, User, Zone, new_id, now_unix,
};
use lintel_store::{Actor, ErasedRecord, ListOptions, Store, StoreExt};

/// The demo building's rooms: (name, capacity, devices). Each device is a module of a
/// bundled catalog driver; those with a simulator reach it at `sim://<sim name>`
/// (started by `crate::demo`). Every room has a `Display_1` and an `Occupancy_1`: the
/// end-to-end tests use whichever room the API lists first.
pub const DEMO_ROOMS: [(&str, u32, &[DemoDevice]); 4] = [
    (
        "Room 1.01 Huddle",
        4,
        &[
            DemoDevice::Display,
            DemoDevice::Occupancy,
            DemoDevice::RoomSensor,
            DemoDevice::Calendar,
            DemoDevice::Panel,
            DemoDevice::Bookings,
        ],
    ),
    (
        "Room 1.02 Boardroom",
        12,
        &[
            DemoDevice::Display,
            DemoDevice::Occupancy,
            DemoDevice::Projector,
            DemoDevice::SamsungDisplay,
            DemoDevice::Calendar,
            DemoDevice::Panel,
            DemoDevice::Bookings,
        ],
    ),
    (
        "Room 1.03 Focus",
        6,
        &[
            DemoDevice::Display,
            DemoDevice::Occupancy,
            DemoDevice::GraphCalendar,
            DemoDevice::Panel,
            DemoDevice::Bookings,
        ],
    ),
    (
        "Room 1.04 Studio",
        8,
        &[
            DemoDevice::Display,
            DemoDevice::Occupancy,
            DemoDevice::RoomSensor,
            DemoDevice::GoogleCalendar,
            DemoDevice::Panel,
            DemoDevice::Bookings,
        ],
    ),
];

/// Where the demo calendars keep their bookings (the simulators serve this collection).
pub const DEMO_CALENDAR_PATH: &str = "/demo/room/";

/// A device of the demo building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoDevice {
    /// The demo display (`Display_1`): line protocol.
    Display,
    /// The demo occupancy sensor (`Occupancy_1`): people count and presence.
    Occupancy,
    /// A PJLink projector (`Projector_1`).
    Projector,
    /// A Samsung display over MDC (`Display_2`).
    SamsungDisplay,
    /// A Modbus TCP room sensor (`Modbus_1`): temperature, humidity, CO2, occupancy.
    RoomSensor,
    /// The room's CalDAV calendar (`Calendar_1`).
    Calendar,
    /// The room's Microsoft 365 calendar over Microsoft Graph (`Calendar_1`): OAuth 2.0
    /// client credentials, as an app registration with application permissions has.
    GraphCalendar,
    /// The room's Google Calendar (`Calendar_1`): OAuth 2.0 with a delegated refresh
    /// token, as a Workspace user's consent gives.
    GoogleCalendar,
    /// The booking panel by the door (`Panel_1`).
    Panel,
    /// The room logic (`Bookings_1`): no device.
    Bookings,
}

impl DemoDevice {
    pub fn driver(self) -> lintel_bundled_drivers::BundledDriver {
        use lintel_bundled_drivers as b;
        match self {
            DemoDevice::Display => b::DEMO_DISPLAY,
            DemoDevice::Occupancy => b::DEMO_OCCUPANCY,
            DemoDevice::Projector => b::PJLINK,
            DemoDevice::SamsungDisplay => b::SAMSUNG_MDC,
            DemoDevice::RoomSensor => b::MODBUS,
            DemoDevice::Calendar => b::CALDAV,
            DemoDevice::GraphCalendar => b::MSGRAPH,
            DemoDevice::GoogleCalendar => b::GOOGLE_CALENDAR,
            DemoDevice::Panel => b::ROOM_PANEL,
            DemoDevice::Bookings => b::BOOKINGS,
        }
    }

    /// Its simulator's in-process name in room `room` (1-based), if it has a device.
    pub fn sim(self, room: usize) -> Option<String> {
        let kind = match self {
            DemoDevice::Display => "display",
            DemoDevice::Occupancy => "occupancy",
            DemoDevice::Projector => "projector",
            DemoDevice::SamsungDisplay => "samsung",
            DemoDevice::RoomSensor => "modbus",
            DemoDevice::Calendar | DemoDevice::GraphCalendar | DemoDevice::GoogleCalendar => {
                "calendar"
            }
            DemoDevice::Panel => "panel",
            DemoDevice::Bookings => return None,
        };
        Some(format!("demo-{kind}-{room}"))
    }

    /// Its driver's role, as PlaceOS names them: HTTP services, the logic, devices.
    fn role(self) -> DriverRole {
        match self {
            DemoDevice::Calendar
            | DemoDevice::GraphCalendar
            | DemoDevice::GoogleCalendar
            | DemoDevice::Panel => DriverRole::Service,
            DemoDevice::Bookings => DriverRole::Logic,
            _ => DriverRole::Device,
        }
    }

    /// The module's settings in room `room` (1-based) beyond the driver's defaults, and
    /// its secret settings (sealed, shown to admins only).
    fn settings(self, room: usize) -> (serde_json::Value, Option<serde_json::Value>) {
        use serde_json::json;
        let id = demo_identity(room);
        let sim = self.sim(room).unwrap_or_default();
        let public = match self {
            DemoDevice::Calendar => json!({"calendar_path": DEMO_CALENDAR_PATH}),
            DemoDevice::GraphCalendar => json!({"mailbox": id.mailbox}),
            DemoDevice::GoogleCalendar => json!({"calendar_id": id.mailbox}),
            DemoDevice::Bookings => json!({
                "calendar": "Calendar_1",
                "occupancy": "Occupancy_1.presence",
                "panel": "Panel_1"
            }),
            _ => json!({}),
        };
        // The token endpoints are the simulators' (`sim://`, so the records hold no port).
        let secret = match self {
            DemoDevice::GraphCalendar => Some(json!({"oauth2": {
                "grant": "client_credentials",
                "token_url": format!("sim://{sim}/demo.example/oauth2/v2.0/token"),
                "client_id": id.client_id,
                "client_secret": id.secret,
                "scope": "https://graph.microsoft.com/.default"
            }})),
            DemoDevice::GoogleCalendar => Some(json!({"oauth2": {
                "grant": "refresh_token",
                "token_url": format!("sim://{sim}/token"),
                "client_id": id.client_id,
                "client_secret": id.secret,
                "refresh_token": id.refresh_token
            }})),
            _ => None,
        };
        (public, secret)
    }
}

/// The identities of room `room`'s (1-based) demo calendar: its mailbox or calendar id,
/// and the OAuth client its module signs in as. The simulators accept these only: they
/// unlock nothing but the demo's own in-process calendars.
pub struct DemoIdentity {
    pub mailbox: String,
    pub client_id: &'static str,
    pub secret: &'static str,
    pub refresh_token: &'static str,
}

pub fn demo_identity(room: usize) -> DemoIdentity {
    DemoIdentity {
        mailbox: format!("room-1{room:02}@demo.example"),
        client_id: "lintel-demo-app",
        secret: "demo-client-secret",
        refresh_token: "demo-refresh-token",
    }
}

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
    keyring: &Keyring,
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
        records.extend(demo_building(&tenant.id, engine, keyring).await?);
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

/// A zone tree (org → building → level) with the rooms of [`DEMO_ROOMS`], their devices
/// driven by bundled catalog drivers against in-process simulators, and each room's logic.
async fn demo_building(
    tenant_id: &str,
    engine: &Engine,
    keyring: &Keyring,
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

    // One driver record per bundled driver the rooms use.
    let mut drivers: Vec<(&str, String)> = Vec::new();
    for (_, _, devices) in DEMO_ROOMS {
        for device in devices {
            let bundled = device.driver();
            if drivers.iter().any(|(name, _)| *name == bundled.crate_name) {
                continue;
            }
            let (hash, info) = engine
                .install_component(tenant_id, bundled.component.to_vec())
                .await?;
            let record = info.to_record(tenant_id, hash, device.role());
            drivers.push((bundled.crate_name, record.id.clone()));
            out.push(Box::new(record));
        }
    }

    for (room, (name, capacity, devices)) in DEMO_ROOMS.into_iter().enumerate() {
        let system_id = new_id(IdKind::System);
        let mut modules = Vec::new();
        for device in devices {
            let crate_name = device.driver().crate_name;
            let driver_id = drivers
                .iter()
                .find(|(name, _)| *name == crate_name)
                .map(|(_, id)| id.clone())
                .expect("every demo driver was installed above");
            let module = Module {
                id: new_id(IdKind::Module),
                tenant_id: tenant_id.into(),
                driver_id,
                control_system_id: Some(system_id.clone()),
                uri: device.sim(room + 1).map(|sim| format!("sim://{sim}")),
                running: true,
                notes: match device.sim(room + 1) {
                    Some(_) => "Demo device (in-process simulator)".into(),
                    None => "Demo room logic".into(),
                },
                created_at: now,
                updated_at: now,
                ..Default::default()
            };
            let (public, secret) = device.settings(room + 1);
            let record = |encryption_level, body| Settings {
                id: new_id(IdKind::Settings),
                tenant_id: tenant_id.into(),
                parent_id: module.id.clone(),
                encryption_level,
                body,
                created_at: now,
                updated_at: now,
                ..Default::default()
            };
            if public.as_object().is_some_and(|o| !o.is_empty()) {
                out.push(Box::new(record(
                    EncryptionLevel::None,
                    SettingsBody::Plain(public),
                )));
            }
            if let Some(secret) = secret {
                let mut sealed = record(EncryptionLevel::Admin, SettingsBody::default());
                let body = keyring
                    .current()
                    .seal_settings(tenant_id, &sealed.id, &secret)?;
                sealed.body = SettingsBody::Sealed(body);
                out.push(Box::new(sealed));
            }
            modules.push(module.id.clone());
            out.push(Box::new(module));
        }
        out.push(Box::new(ControlSystem {
            id: system_id,
            tenant_id: tenant_id.into(),
            name: name.into(),
            description: "Demo room: displays, sensors, a calendar, a booking panel and the room logic that ties them together".into(),
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
