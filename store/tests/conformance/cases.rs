//! The cases every backend must pass.

use crate::fixture::{Fixture, open_for_child};
use lintel_model::{
    AuditAction, AuditEntry, ControlSystem, DriverRecord, EncryptionLevel, IdKind, Metadata,
    Module, REDACTED, Record, RefreshToken, SealedValue, Settings, SettingsBody, Tenant, User,
    Zone, new_id,
};
use lintel_store::{
    Actor, Change, ListOptions, Store, StoreError, StoreExt, purge_expired, restore, write_backup,
};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::sync::Arc;

fn actor() -> Actor {
    Actor::of("user-conformance")
}

fn tenant() -> Tenant {
    let id = new_id(IdKind::Tenant);
    Tenant {
        name: "Acme".into(),
        domain: format!("{}.example", id.to_lowercase()),
        id,
        ..Default::default()
    }
}

fn system(tenant_id: &str, name: &str) -> ControlSystem {
    ControlSystem {
        id: new_id(IdKind::System),
        tenant_id: tenant_id.into(),
        name: name.into(),
        capacity: 4,
        bookable: true,
        ..Default::default()
    }
}

fn zone(tenant_id: &str, name: &str, tag: &str) -> Zone {
    Zone {
        id: new_id(IdKind::Zone),
        tenant_id: tenant_id.into(),
        name: name.into(),
        tags: vec![tag.into()],
        ..Default::default()
    }
}

fn module(tenant_id: &str, driver_id: &str, system_id: Option<&str>) -> Module {
    Module {
        id: new_id(IdKind::Module),
        tenant_id: tenant_id.into(),
        driver_id: driver_id.into(),
        control_system_id: system_id.map(String::from),
        uri: Some("tcp://10.0.0.5:4352".into()),
        ..Default::default()
    }
}

fn driver(tenant_id: &str, component: &[u8]) -> DriverRecord {
    use sha2::Digest;
    DriverRecord {
        id: new_id(IdKind::Driver),
        tenant_id: tenant_id.into(),
        name: "Display".into(),
        module_name: "Display".into(),
        component_hash: hex::encode(sha2::Sha256::digest(component)),
        default_settings: json!({}),
        ..Default::default()
    }
}

fn metadata(tenant_id: &str, parent_id: &str, name: &str) -> Metadata {
    Metadata {
        id: new_id(IdKind::Metadata),
        tenant_id: tenant_id.into(),
        parent_id: parent_id.into(),
        name: name.into(),
        ..Default::default()
    }
}

async fn new_tenant(s: &dyn Store) -> Tenant {
    s.create(&actor(), tenant()).await.unwrap()
}

async fn audit_actions(s: &dyn Store, tenant_id: &str, record_id: &str) -> Vec<AuditAction> {
    s.audit_log(tenant_id, Some(record_id), None, 1000)
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| e.action)
        .collect()
}

pub async fn crud_and_duplicate_ids(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    assert_eq!(t.version, 1);
    let back: Tenant = s.require(&t.id, &t.id).await.unwrap();
    assert_eq!(back, t);
    let sys = s.create(&actor(), system(&t.id, "Room 1")).await.unwrap();
    assert!(sys.created_at > 0 && sys.updated_at > 0);
    let err = s.create(&actor(), sys.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    let mut renamed = sys.clone();
    renamed.name = "Room One".into();
    let renamed = s.update(&actor(), renamed).await.unwrap();
    assert_eq!(renamed.version, 2);
    assert_eq!(renamed.created_at, sys.created_at);
    let listed = s
        .list::<ControlSystem>(&t.id, ListOptions::default())
        .await
        .unwrap();
    assert_eq!((listed.total, listed.items), (1, vec![renamed.clone()]));
    // Malformed ids can never name a record.
    for id in ["", "sys-", "../sys-x", "sys-a/b", "mod-abc"] {
        assert!(
            s.get::<ControlSystem>(&t.id, id).await.unwrap().is_none(),
            "{id}"
        );
    }
    // Invalid records are refused naming the field, and nothing is written.
    let mut bad = system(&t.id, "Bad");
    bad.zones = vec!["nope".into()];
    let err = s.create(&actor(), bad.clone()).await.unwrap_err();
    assert!(err.to_string().contains("`zones`"), "{err}");
    assert!(
        s.get::<ControlSystem>(&t.id, &bad.id)
            .await
            .unwrap()
            .is_none()
    );
    // A batch is all or nothing.
    let fresh = system(&t.id, "Fresh");
    let z = zone(&t.id, "Level 1", "level");
    let err = s
        .create_all(
            &actor(),
            vec![
                Box::new(fresh.clone()),
                Box::new(z.clone()),
                Box::new(sys.clone()),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    if fx.exclusive() {
        // Only the embedded store has multi-document transactions.
        assert!(
            s.get::<ControlSystem>(&t.id, &fresh.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get::<Zone>(&t.id, &z.id).await.unwrap().is_none());
    }
}

pub async fn compare_and_swap_conflict(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let sys = s.create(&actor(), system(&t.id, "Room 1")).await.unwrap();
    let mut a = sys.clone();
    a.name = "Room One".into();
    s.update(&actor(), a).await.unwrap();
    let mut stale = sys.clone();
    stale.name = "Stale".into();
    let err = s.update(&actor(), stale).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    let now: ControlSystem = s.require(&t.id, &sys.id).await.unwrap();
    assert_eq!(now.name, "Room One");
    // A stale delete loses too.
    let err = s
        .delete::<ControlSystem>(&actor(), &t.id, &sys.id, Some(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        audit_actions(&*s, &t.id, &sys.id).await,
        [AuditAction::Created, AuditAction::Updated],
        "failed writes leave no audit entry"
    );
}

pub async fn concurrent_writers_lose_no_update(fx: &dyn Fixture) {
    const WRITERS: u32 = 8;
    const EACH: u32 = 10;
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let sys = s.create(&actor(), system(&t.id, "Counter")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (s, tid, id) = (s.clone(), t.id.clone(), sys.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..EACH {
                loop {
                    let mut cur: ControlSystem = s.require(&tid, &id).await.unwrap();
                    cur.capacity += 1;
                    match s.update(&actor(), cur).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let end: ControlSystem = s.require(&t.id, &sys.id).await.unwrap();
    assert_eq!(
        end.capacity,
        4 + WRITERS * EACH,
        "{conflicts} conflicts retried"
    );
    assert_eq!(end.version, 1 + (WRITERS * EACH) as u64);
}

pub async fn tenant_isolation(fx: &dyn Fixture) {
    let s = fx.open().await;
    let (a, b) = (new_tenant(&*s).await, new_tenant(&*s).await);
    let sys_a = s.create(&actor(), system(&a.id, "A room")).await.unwrap();
    s.create(&actor(), system(&b.id, "B room")).await.unwrap();
    let z = s
        .create(&actor(), zone(&a.id, "A zone", "level"))
        .await
        .unwrap();
    let mut in_zone = system(&a.id, "A zoned");
    in_zone.zones = vec![z.id.clone()];
    s.create(&actor(), in_zone).await.unwrap();

    assert!(
        s.get::<ControlSystem>(&b.id, &sys_a.id)
            .await
            .unwrap()
            .is_none()
    );
    let listed = s
        .list::<ControlSystem>(&b.id, ListOptions::default())
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.items[0].name, "B room");
    let by_zone = s
        .list::<ControlSystem>(&b.id, ListOptions::by("zone", &z.id))
        .await
        .unwrap();
    assert_eq!(
        by_zone.total, 0,
        "an index query in B never sees A's records"
    );
    let searched = s
        .list::<ControlSystem>(
            &b.id,
            ListOptions {
                search: Some("A room".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(searched.total, 0);
    // A crafted cursor naming A's keys stays inside B.
    for after in [
        format!("{}/", a.id),
        format!("{}/sys-", a.id),
        "".into(),
        "~".into(),
    ] {
        let page = s
            .list::<ControlSystem>(
                &b.id,
                ListOptions {
                    after: Some(after.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            page.items.iter().all(|r| r.tenant_id == b.id),
            "cursor {after}"
        );
    }
    // Writing A's record under B's tenant finds nothing to replace or delete.
    let mut moved = sys_a.clone();
    moved.tenant_id = b.id.clone();
    let err = s.update(&actor(), moved).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = s
        .delete::<ControlSystem>(&actor(), &b.id, &sys_a.id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(
        s.get::<ControlSystem>(&a.id, &sys_a.id)
            .await
            .unwrap()
            .is_some()
    );
    // Audit trails are per tenant too.
    let b_log = s
        .audit_log(&b.id, Some(&sys_a.id), None, 100)
        .await
        .unwrap();
    assert_eq!(b_log.total, 0);
    let tenants = s.tenants().await.unwrap();
    assert!(tenants.iter().any(|t| t.id == a.id) && tenants.iter().any(|t| t.id == b.id));
}

pub async fn soft_delete_restore_and_purge(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let sys = s.create(&actor(), system(&t.id, "Doomed")).await.unwrap();
    let keep = s.create(&actor(), system(&t.id, "Kept")).await.unwrap();
    s.delete::<ControlSystem>(&actor(), &t.id, &sys.id, Some(1))
        .await
        .unwrap();
    assert!(
        s.get::<ControlSystem>(&t.id, &sys.id)
            .await
            .unwrap()
            .is_none()
    );
    let live = s
        .list::<ControlSystem>(&t.id, ListOptions::default())
        .await
        .unwrap();
    assert_eq!(live.items, vec![keep.clone()]);
    let trash = s
        .list::<ControlSystem>(
            &t.id,
            ListOptions {
                deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(trash.items.len(), 1);
    assert_eq!(trash.items[0].id, sys.id);
    // The id stays taken while the tombstone exists.
    let err = s.create(&actor(), sys.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");

    let back = s
        .restore::<ControlSystem>(&actor(), &t.id, &sys.id)
        .await
        .unwrap();
    assert_eq!((back.name.as_str(), back.version), ("Doomed", 3));
    assert!(
        s.get::<ControlSystem>(&t.id, &sys.id)
            .await
            .unwrap()
            .is_some()
    );

    s.delete::<ControlSystem>(&actor(), &t.id, &sys.id, None)
        .await
        .unwrap();
    let (_, deleted_at) = s
        .get_with_tombstone::<ControlSystem>(&t.id, &sys.id)
        .await
        .unwrap()
        .expect("tombstone");
    let deleted_at = deleted_at.expect("deleted_at set");
    // Inside the retention window nothing is purged…
    assert_eq!(purge_expired(&*s, deleted_at).await.unwrap(), 0);
    assert!(
        s.get_with_tombstone::<ControlSystem>(&t.id, &sys.id)
            .await
            .unwrap()
            .is_some()
    );
    // …after it, the tombstone goes for good; live records are untouched.
    let purged = purge_expired(&*s, deleted_at + 1).await.unwrap();
    assert!(purged >= 1, "{purged}");
    assert!(
        s.get_with_tombstone::<ControlSystem>(&t.id, &sys.id)
            .await
            .unwrap()
            .is_none()
    );
    let err = s
        .restore::<ControlSystem>(&actor(), &t.id, &sys.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(
        s.get::<ControlSystem>(&t.id, &keep.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        audit_actions(&*s, &t.id, &sys.id).await,
        [
            AuditAction::Created,
            AuditAction::Deleted,
            AuditAction::Restored,
            AuditAction::Deleted,
            AuditAction::Purged
        ]
    );
}

/// A module's kept OAuth refresh token is bookkeeping (no audit entries), outlives the
/// module's tombstone (a restored module goes on with it) and is purged with the module.
pub async fn refresh_tokens_are_purged_with_their_module(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let token_of = |m: &Module, ciphertext: &str| RefreshToken {
        id: RefreshToken::id_for(&m.id).unwrap(),
        tenant_id: t.id.clone(),
        module_id: m.id.clone(),
        configured: "ab".repeat(32),
        refresh_token: SealedValue {
            key_id: "k1".into(),
            nonce: "bm9uY2U=".into(),
            ciphertext: ciphertext.into(),
        },
        ..Default::default()
    };
    let doomed = s
        .create(&actor(), module(&t.id, "driver-x", None))
        .await
        .unwrap();
    let kept = s
        .create(&actor(), module(&t.id, "driver-x", None))
        .await
        .unwrap();
    let token = s
        .create(&Actor::system(), token_of(&doomed, "Zmlyc3Q="))
        .await
        .unwrap();
    s.create(&Actor::system(), token_of(&kept, "a2VwdA=="))
        .await
        .unwrap();
    let rotated = s
        .update_bookkeeping(RefreshToken {
            refresh_token: SealedValue {
                ciphertext: "c2Vjb25k".into(),
                ..token.refresh_token.clone()
            },
            ..token.clone()
        })
        .await
        .unwrap();
    assert_eq!(rotated.version, 2);
    assert!(audit_actions(&*s, &t.id, &token.id).await.is_empty());
    // A malformed token record is refused.
    let err = s
        .create(
            &Actor::system(),
            RefreshToken {
                id: RefreshToken::id_for(&kept.id).unwrap(),
                ..token_of(&doomed, "eA==")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");

    s.delete::<Module>(&actor(), &t.id, &doomed.id, None)
        .await
        .unwrap();
    let (_, deleted_at) = s
        .get_with_tombstone::<Module>(&t.id, &doomed.id)
        .await
        .unwrap()
        .unwrap();
    // The module can still be restored: its token stays.
    purge_expired(&*s, deleted_at.unwrap()).await.unwrap();
    let still = s.get::<RefreshToken>(&t.id, &token.id).await.unwrap();
    assert_eq!(
        still.map(|r| r.refresh_token.ciphertext),
        Some("c2Vjb25k".into())
    );
    // Purged with the module; the other module's token is untouched.
    purge_expired(&*s, deleted_at.unwrap() + 1).await.unwrap();
    assert!(
        s.get_with_tombstone::<RefreshToken>(&t.id, &token.id)
            .await
            .unwrap()
            .is_none()
    );
    let other = RefreshToken::id_for(&kept.id).unwrap();
    assert!(
        s.get::<RefreshToken>(&t.id, &other)
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn pagination_is_stable_under_concurrent_inserts(fx: &dyn Fixture) {
    const BEFORE: usize = 230;
    const DURING: usize = 150;
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let batch: Vec<Box<dyn lintel_store::ErasedRecord>> = (0..BEFORE)
        .map(|i| Box::new(system(&t.id, &format!("Room {i}"))) as _)
        .collect();
    let originals: HashSet<String> = s
        .create_all(&actor(), batch)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();

    let writer = {
        let (s, tid) = (s.clone(), t.id.clone());
        tokio::spawn(async move {
            for i in 0..DURING {
                s.create(&actor(), system(&tid, &format!("New {i}")))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut opts = ListOptions {
        limit: 25,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = s.list::<ControlSystem>(&t.id, opts.clone()).await.unwrap();
        assert!(page.total as usize >= BEFORE);
        assert!(page.items.len() <= 25);
        seen.extend(page.items.into_iter().map(|r| r.id));
        pages += 1;
        match page.next {
            Some(next) => opts.after = Some(next),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no record appears twice across pages"
    );
    for id in &originals {
        assert!(
            unique.contains(id),
            "record {id} present before paging was skipped"
        );
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages come in id order");
    assert!(pages >= BEFORE / 25);
    let end = s
        .list::<ControlSystem>(
            &t.id,
            ListOptions {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(end.total as usize, BEFORE + DURING);
    // Offsets work too (PlaceOS `offset`), and an over-large page is refused.
    let third = s
        .list::<ControlSystem>(
            &t.id,
            ListOptions {
                offset: 2,
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first3 = s
        .list::<ControlSystem>(
            &t.id,
            ListOptions {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(third.items[0], first3.items[2]);
    let err = s
        .list::<ControlSystem>(
            &t.id,
            ListOptions {
                limit: lintel_store::MAX_PAGE + 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadQuery(_)), "{err}");
}

pub async fn secondary_indexes_and_search(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let d1 = s.create(&actor(), driver(&t.id, b"one")).await.unwrap();
    let d2 = s.create(&actor(), driver(&t.id, b"two")).await.unwrap();
    let level = s
        .create(&actor(), zone(&t.id, "Level 2", "level"))
        .await
        .unwrap();
    let mut boardroom = system(&t.id, "Boardroom");
    boardroom.zones = vec![level.id.clone()];
    boardroom.features = vec!["projector".into()];
    let boardroom = s.create(&actor(), boardroom).await.unwrap();
    let huddle = s.create(&actor(), system(&t.id, "Huddle")).await.unwrap();
    let m1 = s
        .create(&actor(), module(&t.id, &d1.id, Some(&boardroom.id)))
        .await
        .unwrap();
    let m2 = s
        .create(&actor(), module(&t.id, &d2.id, Some(&boardroom.id)))
        .await
        .unwrap();
    let m3 = s
        .create(&actor(), module(&t.id, &d1.id, Some(&huddle.id)))
        .await
        .unwrap();
    let settings = s
        .create(
            &actor(),
            Settings {
                id: new_id(IdKind::Settings),
                tenant_id: t.id.clone(),
                parent_id: m1.id.clone(),
                body: SettingsBody::Plain(json!({"input": "hdmi"})),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let ids = |items: Vec<Module>| -> HashSet<String> { items.into_iter().map(|m| m.id).collect() };
    let by_sys = s
        .list_all::<Module>(&t.id, ListOptions::by("system", &boardroom.id))
        .await
        .unwrap();
    assert_eq!(ids(by_sys), HashSet::from([m1.id.clone(), m2.id.clone()]));
    let by_driver = s
        .list_all::<Module>(&t.id, ListOptions::by("driver", &d1.id))
        .await
        .unwrap();
    assert_eq!(
        ids(by_driver),
        HashSet::from([m1.id.clone(), m3.id.clone()])
    );
    let by_zone = s
        .list_all::<ControlSystem>(&t.id, ListOptions::by("zone", &level.id))
        .await
        .unwrap();
    assert_eq!(by_zone, vec![boardroom.clone()]);
    let by_parent = s
        .list_all::<Settings>(&t.id, ListOptions::by("parent", &m1.id))
        .await
        .unwrap();
    assert_eq!(by_parent, vec![settings]);
    let by_tag = s
        .list_all::<Zone>(&t.id, ListOptions::by("tag", "level"))
        .await
        .unwrap();
    assert_eq!(by_tag.len(), 1);

    // Indexes follow updates and deletes.
    let mut moved = m3.clone();
    moved.control_system_id = Some(boardroom.id.clone());
    s.update(&actor(), moved).await.unwrap();
    let by_sys = s
        .list::<Module>(&t.id, ListOptions::by("system", &boardroom.id))
        .await
        .unwrap();
    assert_eq!(by_sys.total, 3);
    assert_eq!(
        s.list::<Module>(&t.id, ListOptions::by("system", &huddle.id))
            .await
            .unwrap()
            .total,
        0
    );
    s.delete::<Module>(&actor(), &t.id, &m2.id, None)
        .await
        .unwrap();
    assert_eq!(
        s.list::<Module>(&t.id, ListOptions::by("system", &boardroom.id))
            .await
            .unwrap()
            .total,
        2
    );

    // Search is case-insensitive over names, descriptions, features.
    let q = |text: &str| ListOptions {
        search: Some(text.into()),
        ..Default::default()
    };
    let found = s.list::<ControlSystem>(&t.id, q("BOARD")).await.unwrap();
    assert_eq!(found.items, vec![boardroom.clone()]);
    assert_eq!(
        s.list::<ControlSystem>(&t.id, q("projector"))
            .await
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        s.list::<ControlSystem>(&t.id, q("nothing-like-this"))
            .await
            .unwrap()
            .total,
        0
    );
    // Index values may hold any character (names are index values).
    let odd = s
        .create(&actor(), metadata(&t.id, &boardroom.id, "Floor\nplan"))
        .await
        .unwrap();
    let plain = s
        .create(&actor(), metadata(&t.id, &boardroom.id, "Floor"))
        .await
        .unwrap();
    let named = |n: &str| ListOptions::by("name", n);
    assert_eq!(
        s.list_all::<Metadata>(&t.id, named("Floor\nplan"))
            .await
            .unwrap(),
        vec![odd.clone()]
    );
    assert_eq!(
        s.list_all::<Metadata>(&t.id, named("Floor")).await.unwrap(),
        vec![plain]
    );
    s.delete::<Metadata>(&actor(), &t.id, &odd.id, None)
        .await
        .unwrap();
    purge_expired(&*s, i64::MAX).await.unwrap();
    assert!(
        s.list_all::<Metadata>(&t.id, named("Floor\nplan"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_all::<Metadata>(&t.id, named("Floor"))
            .await
            .unwrap()
            .len(),
        1
    );
    // Tenants are found by domain across tenants.
    let by_domain = s
        .list_scoped::<Tenant>(None, ListOptions::by("domain", &t.domain))
        .await
        .unwrap();
    assert_eq!(by_domain.items, vec![t.clone()]);
}

pub async fn change_feed_delivers_every_change_in_order_per_key(fx: &dyn Fixture) {
    const RECORDS: usize = 6;
    const UPDATES: u64 = 15;
    const CONTENDERS: u64 = 4;
    let s = fx.open().await;
    let mut feed = s.changes();
    let t = new_tenant(&*s).await;
    let mut ids = Vec::new();
    for i in 0..RECORDS {
        ids.push(
            s.create(&actor(), system(&t.id, &format!("R{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let shared = s
        .create(&actor(), system(&t.id, "Shared"))
        .await
        .unwrap()
        .id;
    let mut tasks = Vec::new();
    // One writer per record…
    for id in ids.clone() {
        let (s, tid) = (s.clone(), t.id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..UPDATES {
                let mut r: ControlSystem = s.require(&tid, &id).await.unwrap();
                r.capacity += 1;
                s.update(&actor(), r).await.unwrap();
            }
            s.delete::<ControlSystem>(&actor(), &tid, &id, None)
                .await
                .unwrap();
        }));
    }
    // …and several racing on one record (retrying conflicts).
    for _ in 0..CONTENDERS {
        let (s, tid, id) = (s.clone(), t.id.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < UPDATES {
                let mut r: ControlSystem = s.require(&tid, &id).await.unwrap();
                r.capacity += 1;
                match s.update(&actor(), r).await {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut per_key: BTreeMap<String, Vec<(u64, AuditAction)>> = BTreeMap::new();
    let want = RECORDS * (UPDATES as usize + 2) + 1 + (CONTENDERS * UPDATES) as usize;
    let mut got = 0;
    while got < want {
        let c: Change = tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
            .await
            .expect("change feed stalled")
            .expect("feed lagged");
        if c.kind == IdKind::System && c.tenant_id == t.id {
            per_key
                .entry(c.id.clone())
                .or_default()
                .push((c.version, c.action));
            got += 1;
        }
    }
    for id in &ids {
        let seen = &per_key[id];
        let versions: Vec<u64> = seen.iter().map(|(v, _)| *v).collect();
        let expect: Vec<u64> = (1..=UPDATES + 2).collect();
        assert_eq!(versions, expect, "every version of {id}, in order");
        assert_eq!(seen.first().unwrap().1, AuditAction::Created);
        assert_eq!(seen.last().unwrap().1, AuditAction::Deleted);
    }
    let versions: Vec<u64> = per_key[&shared].iter().map(|(v, _)| *v).collect();
    let expect: Vec<u64> = (1..=1 + CONTENDERS * UPDATES).collect();
    assert_eq!(
        versions, expect,
        "racing writers: every version of one key, in order"
    );
}

pub async fn document_size_limit(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let big = Metadata {
        id: new_id(IdKind::Metadata),
        tenant_id: t.id.clone(),
        parent_id: t.id.clone(),
        name: "floorplan".into(),
        details: json!({"svg": "x".repeat(lintel_store::MAX_DOC_BYTES + 1)}),
        ..Default::default()
    };
    let err = s.create(&actor(), big.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&big.id) && msg.contains(&lintel_store::MAX_DOC_BYTES.to_string()),
        "{msg}"
    );
    assert!(s.get::<Metadata>(&t.id, &big.id).await.unwrap().is_none());
    // Just under the limit is fine.
    let mut ok = big.clone();
    ok.details = json!({"svg": "x".repeat(lintel_store::MAX_DOC_BYTES - 4096)});
    s.create(&actor(), ok).await.unwrap();
}

pub async fn persistence_across_reopen(fx: &dyn Fixture) {
    let (t, sys) = {
        let s = fx.open().await;
        let t = new_tenant(&*s).await;
        let sys = s.create(&actor(), system(&t.id, "Durable")).await.unwrap();
        s.delete::<ControlSystem>(&actor(), &t.id, &sys.id, None)
            .await
            .unwrap();
        (t, sys)
    };
    let s = fx.open().await;
    let back: Tenant = s.require(&t.id, &t.id).await.unwrap();
    assert_eq!(back, t);
    let (r, deleted) = s
        .get_with_tombstone::<ControlSystem>(&t.id, &sys.id)
        .await
        .unwrap()
        .expect("tombstone survives reopen");
    assert_eq!(r.name, "Durable");
    assert!(deleted.is_some());
    assert_eq!(audit_actions(&*s, &t.id, &sys.id).await.len(), 2);
}

pub async fn audit_trail_redacts_secrets(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let user = s
        .create(
            &Actor::system(),
            User {
                id: new_id(IdKind::User),
                tenant_id: t.id.clone(),
                name: "Ada".into(),
                email: "ada@example.com".into(),
                password_hash: Some("$scrypt$canary-old-hash".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut changed = user.clone();
    changed.password_hash = Some("$scrypt$canary-new-hash".into());
    changed.name = "Ada L.".into();
    s.update(&Actor::of(&user.id), changed).await.unwrap();
    let sealed = s
        .create(
            &actor(),
            Settings {
                id: new_id(IdKind::Settings),
                tenant_id: t.id.clone(),
                parent_id: new_id(IdKind::Module),
                encryption_level: EncryptionLevel::Admin,
                body: SettingsBody::Sealed(SealedValue {
                    key_id: "k1".into(),
                    nonce: "bm9uY2U=".into(),
                    ciphertext: "canary-ciphertext".into(),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let log = s.audit_log(&t.id, Some(&user.id), None, 100).await.unwrap();
    let entries: Vec<&AuditEntry> = log.items.iter().collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].actor, "system");
    assert_eq!(entries[1].actor, user.id);
    assert_eq!(entries[1].record_kind, "user");
    assert_eq!(entries[1].record_version, 2);
    assert_eq!(
        entries[1].diff["name"],
        json!({"from": "Ada", "to": "Ada L."})
    );
    // The hash changed but both sides are redacted, so the diff shows no change to it.
    let all = serde_json::to_string(&log.items).unwrap();
    assert!(!all.contains("canary"), "{all}");
    let sealed_log = s
        .audit_log(&t.id, Some(&sealed.id), None, 100)
        .await
        .unwrap();
    assert_eq!(sealed_log.items[0].diff["body"]["to"], json!(REDACTED));
    assert!(
        !serde_json::to_string(&sealed_log.items)
            .unwrap()
            .contains("canary")
    );
    // The whole tenant's trail is in time order.
    let whole = s.audit_log(&t.id, None, None, 1000).await.unwrap();
    let times: Vec<i64> = whole.items.iter().map(|e| e.at).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert!(whole.total >= 4);
}

pub async fn blobs_round_trip_and_are_bounded(fx: &dyn Fixture) {
    use sha2::Digest;
    let s = fx.open().await;
    let t = new_tenant(&*s).await;
    let bytes = b"\0asm component bytes".to_vec();
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    s.put_blob(&t.id, &hash, bytes.clone()).await.unwrap();
    s.put_blob(&t.id, &hash, bytes.clone()).await.unwrap(); // idempotent
    assert_eq!(s.get_blob(&t.id, &hash).await.unwrap(), Some(bytes));
    let other = new_tenant(&*s).await;
    assert_eq!(s.get_blob(&other.id, &hash).await.unwrap(), None);
    let err = s.put_blob(&t.id, "../etc", vec![1]).await.unwrap_err();
    assert!(matches!(err, StoreError::BadQuery(_)), "{err}");
    let err = s
        .put_blob(&t.id, &hash, vec![0; lintel_store::MAX_BLOB_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
}

/// A small building with every kind of record, a tombstone and a blob.
async fn populate(s: &dyn Store) -> Tenant {
    let t = new_tenant(s).await;
    let component = b"\0asm demo".to_vec();
    let d = s.create(&actor(), driver(&t.id, &component)).await.unwrap();
    s.put_blob(&t.id, &d.component_hash, component)
        .await
        .unwrap();
    let z = s
        .create(&actor(), zone(&t.id, "HQ", "building"))
        .await
        .unwrap();
    let mut sys = system(&t.id, "Room");
    sys.zones = vec![z.id.clone()];
    let sys = s.create(&actor(), sys).await.unwrap();
    let m = s
        .create(&actor(), module(&t.id, &d.id, Some(&sys.id)))
        .await
        .unwrap();
    s.create(
        &actor(),
        Settings {
            id: new_id(IdKind::Settings),
            tenant_id: t.id.clone(),
            parent_id: m.id.clone(),
            encryption_level: EncryptionLevel::NeverDisplay,
            body: SettingsBody::Sealed(SealedValue {
                key_id: "k1".into(),
                nonce: "bm9uY2U=".into(),
                ciphertext: "c2VhbGVk".into(),
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gone = s.create(&actor(), system(&t.id, "Gone")).await.unwrap();
    s.delete::<ControlSystem>(&actor(), &t.id, &gone.id, None)
        .await
        .unwrap();
    t
}

fn sorted_export(mut docs: Vec<lintel_store::Doc>) -> Vec<lintel_store::Doc> {
    docs.sort_by(|a, b| (a.kind, &a.tenant_id, &a.id).cmp(&(b.kind, &b.tenant_id, &b.id)));
    docs
}

pub async fn backup_restore_round_trip(fx: &dyn Fixture) {
    let s = fx.open().await;
    let t = populate(&*s).await;
    let mut bytes = Vec::new();
    let summary = write_backup(&*s, &mut bytes).await.unwrap();
    assert!(summary.docs >= 7 && summary.blobs == 1, "{summary:?}");
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("c2VhbGVk"), "sealed values are copied sealed");
    let target = fx.open_empty().await;
    let restored = restore(&*target, &bytes).await.unwrap();
    assert_eq!(restored, summary);
    assert_eq!(
        sorted_export(target.export().await.unwrap()),
        sorted_export(s.export().await.unwrap())
    );
    let d = target
        .list_all::<DriverRecord>(&t.id, ListOptions::default())
        .await
        .unwrap();
    assert!(
        target
            .get_blob(&t.id, &d[0].component_hash)
            .await
            .unwrap()
            .is_some()
    );
    // Indexes work in the restored store.
    let m = target
        .list_all::<Module>(&t.id, ListOptions::by("driver", &d[0].id))
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    // Restoring into a store that has data is refused.
    let err = restore(&*target, &bytes).await.unwrap_err();
    assert!(matches!(err, lintel_store::RestoreError::NotEmpty), "{err}");
    // Taking a backup while writers carry on still yields a valid, restorable file.
    let writer = {
        let (s, tid) = (s.clone(), t.id.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                s.create(&actor(), system(&tid, &format!("busy {i}")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut during = Vec::new();
    write_backup(&*s, &mut during).await.unwrap();
    writer.await.unwrap();
    restore(&*fx.open_empty().await, &during).await.unwrap();
}

pub async fn damaged_backups_write_nothing(fx: &dyn Fixture) {
    let s = fx.open().await;
    populate(&*s).await;
    let mut bytes = Vec::new();
    write_backup(&*s, &mut bytes).await.unwrap();
    let target = fx.open_empty().await;
    let is_empty = |t: Arc<dyn Store>| async move { t.export().await.unwrap().is_empty() };

    let truncated = &bytes[..bytes.len() * 2 / 3];
    let err = restore(&*target, truncated).await.unwrap_err();
    assert!(
        matches!(err, lintel_store::RestoreError::Truncated),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was written"));

    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    let err = restore(&*target, &flipped).await.unwrap_err();
    assert!(
        matches!(err, lintel_store::RestoreError::Corrupted(_)),
        "{err}"
    );

    let err = restore(&*target, b"not a backup\n").await.unwrap_err();
    assert!(
        matches!(err, lintel_store::RestoreError::Truncated),
        "{err}"
    );
    let err = restore(&*target, b"").await.unwrap_err();
    assert!(
        matches!(err, lintel_store::RestoreError::Truncated),
        "{err}"
    );
    assert!(
        is_empty(target.clone()).await,
        "a damaged backup wrote something"
    );
    let (tenant, hash) = blob_of(&*s).await;
    assert!(
        target.get_blob(&tenant, &hash).await.unwrap().is_none(),
        "no blob either"
    );
    restore(&*target, &bytes).await.unwrap();
    assert!(target.get_blob(&tenant, &hash).await.unwrap().is_some());
}

/// The tenant and hash of a driver component stored in `s`.
async fn blob_of(s: &dyn Store) -> (String, String) {
    let d = s
        .export()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.kind == IdKind::Driver)
        .expect("a driver");
    let hash = d.body["component_hash"].as_str().unwrap().to_string();
    (d.tenant_id, hash)
}

const CHILD_TEST: &str = "crash_child";

pub async fn sigkill_during_write_burst_loses_no_acknowledged_write(fx: &dyn Fixture) {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(fx.child_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut tenant = None;
    for line in out.lines() {
        let line = line.unwrap();
        // libtest may print `test crash_child ... ` in front of the first line.
        if let Some((_, t)) = line.split_once("TENANT ") {
            tenant = Some(t.to_string());
        } else if let Some((_, id)) = line.split_once("ACK ") {
            acked.push(id.to_string());
            if acked.len() == 150 {
                child.kill().unwrap(); // SIGKILL: no destructors, no flush
                break;
            }
        }
    }
    child.wait().unwrap();
    let tenant = tenant.expect("the child names its tenant");
    assert_eq!(acked.len(), 150, "the child stopped early");
    let s = fx.open().await;
    for id in &acked {
        let got: Option<Zone> = s.get(&tenant, id).await.unwrap();
        assert!(got.is_some(), "acknowledged write {id} lost");
    }
    // Nothing is corrupt: every record decodes, and the store still takes writes.
    s.export().await.expect("every stored record decodes");
    s.create(&actor(), zone(&tenant, "after the crash", "area"))
        .await
        .unwrap();
}

pub async fn crash_child_main() {
    let s = open_for_child().await;
    let t = new_tenant(&*s).await;
    println!("TENANT {}", t.id);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (s, tid) = (s.clone(), t.id.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let z = s
                    .create(&actor(), zone(&tid, &format!("w{w} #{i}"), "area"))
                    .await
                    .unwrap();
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {}", z.id).unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The fixture holds records as the first release stored them (8-byte version + JSON).
pub async fn schema_1_fixture_is_migrated() {
    #[derive(serde::Deserialize)]
    struct Fixture1 {
        kind: String,
        key: String,
        version: u64,
        body: serde_json::Value,
    }
    let fixture: Vec<Fixture1> =
        serde_json::from_str(include_str!("../fixtures/schema-1.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("lintel.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        for f in &fixture {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(&f.kind);
            let mut t = txn.open_table(def).unwrap();
            let mut v = f.version.to_be_bytes().to_vec();
            v.extend(serde_json::to_vec(&f.body).unwrap());
            t.insert(f.key.as_str(), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = lintel_store::EmbeddedStore::open(dir.path()).unwrap();
    let tenants = s.tenants().await.unwrap();
    assert_eq!(tenants.len(), 1);
    let t = &tenants[0];
    let modules = s
        .list_all::<Module>(&t.id, ListOptions::default())
        .await
        .unwrap();
    assert_eq!(modules.len(), 2);
    let with_settings = modules
        .iter()
        .find(|m| m.id == "mod-fixtureDisp01")
        .unwrap();
    assert_eq!(with_settings.version, 2, "versions are kept");
    // The inline settings became a Settings record, found through the new index.
    let settings = s
        .list_all::<Settings>(&t.id, ListOptions::by("parent", &with_settings.id))
        .await
        .unwrap();
    assert_eq!(settings.len(), 1);
    assert_eq!(
        settings[0].body,
        SettingsBody::Plain(json!({"input": "hdmi2"}))
    );
    let other = modules.iter().find(|m| m.id != with_settings.id).unwrap();
    assert!(
        s.list_all::<Settings>(&t.id, ListOptions::by("parent", &other.id))
            .await
            .unwrap()
            .is_empty()
    );
    // Indexes were built for migrated records.
    let room = s
        .list_all::<ControlSystem>(&t.id, ListOptions::default())
        .await
        .unwrap();
    let in_room = s
        .list_all::<Module>(&t.id, ListOptions::by("system", &room[0].id))
        .await
        .unwrap();
    assert_eq!(in_room.len(), 2);
    let user: User = s.require(&t.id, "user-fixtureAdmin1").await.unwrap();
    assert_eq!(user.email, "admin@lintel.local");
    // Values the first release accepted and today's rules refuse (a custom name with a
    // space, a tag with spaces) are kept, not a reason to refuse to open.
    let main = modules
        .iter()
        .find(|m| m.id == "mod-fixtureDisp02")
        .unwrap();
    assert_eq!(main.custom_name.as_deref(), Some("Main Display"));
    assert!(
        main.validate().is_err(),
        "the fixture must hold a now-invalid value"
    );
    let level: Zone = s.require(&t.id, "zone-fixtureLvl001").await.unwrap();
    assert_eq!(level.tags, ["level", "Level 1 (west)"]);
    // Editing such a record must fix it first.
    let err = s.update(&actor(), main.clone()).await.unwrap_err();
    assert!(err.to_string().contains("`custom_name`"), "{err}");
    // Reopening changes nothing.
    let before = sorted_export(s.export().await.unwrap());
    drop(s);
    let s = lintel_store::EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(sorted_export(s.export().await.unwrap()), before);
}
