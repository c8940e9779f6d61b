//! Schema versions and the migrations between them.
//!
//! Every stored document carries the schema version it was written with. Reading code
//! only understands [`SCHEMA_VERSION`]; older documents are upgraded by [`migrate`]
//! (when the store opens, and when a backup is restored) before anything reads them.
//!
//! | schema | change |
//! |---|---|
//! | 1 | the first release (issue 3): module settings inline in `Module.settings` |
//! | 2 | settings become their own records (`Settings`, parent = the module) with an encryption level; new fields everywhere take their defaults |

use crate::ids::{IdKind, new_id};
use serde_json::{Value, json};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "{kind} `{id}` has schema {found}, newer than this Lintel understands ({SCHEMA_VERSION}): upgrade Lintel"
    )]
    TooNew {
        kind: IdKind,
        id: String,
        found: u32,
    },
    #[error("{kind} `{id}` (schema {from}) cannot be migrated: {reason}")]
    Malformed {
        kind: IdKind,
        id: String,
        from: u32,
        reason: String,
    },
}

/// One document brought to the current schema, plus any new documents the migration
/// split out of it (kind, JSON body).
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    pub body: Value,
    pub extra: Vec<(IdKind, Value)>,
}

/// Upgrade a document of `kind` from schema `from` to [`SCHEMA_VERSION`].
pub fn migrate(kind: IdKind, id: &str, from: u32, body: Value) -> Result<Migrated, MigrationError> {
    if from > SCHEMA_VERSION {
        return Err(MigrationError::TooNew {
            kind,
            id: id.into(),
            found: from,
        });
    }
    let mut out = Migrated {
        body,
        extra: Vec::new(),
    };
    if from < 2 {
        v1_to_v2(kind, id, &mut out)?;
    }
    Ok(out)
}

fn v1_to_v2(kind: IdKind, id: &str, doc: &mut Migrated) -> Result<(), MigrationError> {
    let malformed = |reason: &str| MigrationError::Malformed {
        kind,
        id: id.into(),
        from: 1,
        reason: reason.into(),
    };
    let Some(obj) = doc.body.as_object_mut() else {
        return Err(malformed("not a JSON object"));
    };
    if kind == IdKind::Module {
        let settings = obj.remove("settings").unwrap_or(Value::Null);
        match settings {
            Value::Null => {}
            Value::Object(map) if map.is_empty() => {}
            Value::Object(map) => {
                let tenant = obj
                    .get("tenant_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("module without tenant_id"))?;
                let at = obj.get("updated_at").cloned().unwrap_or(json!(0));
                doc.extra.push((
                    IdKind::Settings,
                    json!({
                        "id": new_id(IdKind::Settings),
                        "tenant_id": tenant,
                        "parent_id": id,
                        "encryption_level": "none",
                        "body": {"plain": map},
                        "created_at": at,
                        "updated_at": at,
                        "version": 1,
                    }),
                ));
            }
            _ => return Err(malformed("`settings` is not a JSON object")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Module, Record, Settings, SettingsBody};

    #[test]
    fn v1_module_settings_become_a_settings_record() {
        let v1 = json!({
            "id": "mod-abc", "tenant_id": "authority-t", "driver_id": "driver-d",
            "control_system_id": "sys-s", "custom_name": null, "uri": "tcp://10.0.0.9:23",
            "running": true, "notes": "", "settings": {"input": "hdmi1"},
            "created_at": 5, "updated_at": 7, "version": 3
        });
        let m = migrate(IdKind::Module, "mod-abc", 1, v1).unwrap();
        let module: Module = serde_json::from_value(m.body).unwrap();
        assert_eq!(module.validate(), Ok(()));
        assert_eq!(module.version, 3);
        let [(IdKind::Settings, s)] = m.extra.as_slice() else {
            panic!("one settings record expected: {:?}", m.extra)
        };
        let s: Settings = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.parent_id, "mod-abc");
        assert_eq!(s.body, SettingsBody::Plain(json!({"input": "hdmi1"})));
    }

    #[test]
    fn empty_settings_add_nothing_and_newer_schemas_are_refused() {
        let m = migrate(IdKind::Module, "mod-a", 1, json!({"settings": {}})).unwrap();
        assert!(m.extra.is_empty());
        let err = migrate(IdKind::Zone, "zone-a", SCHEMA_VERSION + 1, json!({})).unwrap_err();
        assert!(err.to_string().contains("upgrade Lintel"), "{err}");
        let err = migrate(IdKind::Module, "mod-a", 1, json!({"settings": [1]})).unwrap_err();
        assert!(err.to_string().contains("settings"), "{err}");
    }
}
