//! The topic scheme (PlaceOS `source`'s, see `docs/mqtt.md`) and payloads. Pure functions
//! over records: no broker, no I/O.
//!
//! - State: `<prefix>/<org>/state/<region>/<building>/<level>/<area>/<system>/<driver>/
//!   <module>/<index>/<key>`. The zone levels are the ids of the system's zones tagged
//!   `org`, `region`, `building`, `level` and `area` (`_` for a missing one; a system with
//!   no `org` zone is not published, as in PlaceOS). The module is its custom name or its
//!   driver's module name, the index counts modules of that name in the system's order.
//! - Metadata: `<prefix>/org/metadata/<id>` (PlaceOS writes the literal hierarchy name
//!   `org` there) for systems, zones and drivers: `{"time":…,"value":<record>}`, `value:
//!   null` once the record is gone.
//! - Payload: `{"time":<unix seconds>,"value":<JSON>}`.
//!
//! Names and keys are the one part that is not an id: a level holding `/`, `+`, `#`, `%`
//! or NUL would break the tree or the topic, so those bytes are percent-encoded (`%2F`,
//! `%2B`, `%23`, `%25`, `%00`). PlaceOS writes them as they are.

use lintel_model::{ControlSystem, DriverRecord, Module, Record, ZONE_TAGS, Zone};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One topic level from free text (a module name, a status key): the bytes MQTT or the
/// tree would misread are percent-encoded.
pub fn level(text: &str) -> Cow<'_, str> {
    if !text.contains(['/', '+', '#', '%', '\0']) && !text.is_empty() {
        return Cow::Borrowed(text);
    }
    if text.is_empty() {
        return Cow::Borrowed("%20");
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Where one module's keys go in one system: the state topic without the prefix and the
/// key, ending in `/` (`<org>/state/…/<module>/<index>/`).
pub type StateBase = Arc<str>;

/// A state topic.
pub fn state_topic(prefix: &str, base: &str, key: &str) -> String {
    let key = level(key);
    let mut t = String::with_capacity(prefix.len() + 1 + base.len() + key.len());
    t.push_str(prefix);
    t.push('/');
    t.push_str(base);
    t.push_str(&key);
    t
}

/// The metadata topic of a system, zone or driver.
pub fn metadata_topic(prefix: &str, id: &str) -> String {
    format!("{prefix}/org/metadata/{id}")
}

/// The topic Lintel's birth and last-will messages go to.
pub fn status_topic(prefix: &str, client_id: &str) -> String {
    format!("{prefix}/status/{client_id}")
}

/// `{"time":<unix s>,"value":<value>}`, `value` given as JSON text.
pub fn payload(time: i64, value_json: &str) -> bytes::Bytes {
    let mut s = String::with_capacity(value_json.len() + 32);
    s.push_str("{\"time\":");
    s.push_str(&time.to_string());
    s.push_str(",\"value\":");
    s.push_str(value_json);
    s.push('}');
    bytes::Bytes::from(s)
}

/// The tag of `zone` that places it in the hierarchy: its first tag that is one.
fn hierarchy_tag(zone: &Zone) -> Option<usize> {
    zone.tags
        .iter()
        .find_map(|t| ZONE_TAGS.iter().position(|h| h == t))
}

/// What one tenant publishes: the state bases of each module, and the metadata records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TenantTopics {
    /// Module id → the bases of its topics (one per system it is in, with an org zone).
    pub modules: HashMap<Arc<str>, Vec<StateBase>>,
    /// Record id → its JSON (systems with an org zone, every zone, their modules'
    /// drivers), ordered so zones come before systems.
    pub metadata: BTreeMap<String, Value>,
}

impl TenantTopics {
    /// From a tenant's records. Modules are taken in each system's order; a module whose
    /// record or driver is missing is left out (and not counted), as the WebSocket and
    /// REST resolution do.
    pub fn build(
        systems: &[ControlSystem],
        zones: &[Zone],
        modules: &[Module],
        drivers: &[DriverRecord],
    ) -> TenantTopics {
        let zones_by_id: HashMap<&str, &Zone> = zones.iter().map(|z| (z.id.as_str(), z)).collect();
        let modules_by_id: HashMap<&str, &Module> =
            modules.iter().map(|m| (m.id.as_str(), m)).collect();
        let drivers_by_id: HashMap<&str, &DriverRecord> =
            drivers.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut out = TenantTopics::default();
        for z in zones {
            out.metadata.insert(z.id.clone(), z.redacted());
        }
        for system in systems {
            // Tag → zone id; a later zone with the same tag wins.
            let mut levels: [Option<&str>; 5] = [None; 5];
            for zid in &system.zones {
                if let Some(z) = zones_by_id.get(zid.as_str())
                    && let Some(i) = hierarchy_tag(z)
                {
                    levels[i] = Some(z.id.as_str());
                }
            }
            let Some(org) = levels[0] else {
                continue;
            };
            out.metadata.insert(system.id.clone(), system.redacted());
            let mut zone_path = String::with_capacity(96);
            zone_path.push_str(org);
            zone_path.push_str("/state");
            for l in &levels[1..] {
                zone_path.push('/');
                zone_path.push_str(l.unwrap_or("_"));
            }
            let mut seen: HashMap<String, u32> = HashMap::new();
            for mid in &system.modules {
                let Some(m) = modules_by_id.get(mid.as_str()) else {
                    continue;
                };
                let Some(d) = drivers_by_id.get(m.driver_id.as_str()) else {
                    continue;
                };
                let name = m
                    .custom_name
                    .clone()
                    .unwrap_or_else(|| d.module_name.clone());
                let index = seen.entry(name.clone()).or_default();
                *index += 1;
                let base = format!(
                    "{zone_path}/{}/{}/{}/{}/",
                    system.id,
                    d.id,
                    level(&name),
                    index
                );
                out.modules
                    .entry(Arc::from(m.id.as_str()))
                    .or_default()
                    .push(Arc::from(base));
                out.metadata
                    .entry(d.id.clone())
                    .or_insert_with(|| driver_metadata(d));
            }
        }
        out
    }
}

/// A driver as its metadata topic shows it: the record without its compiled component
/// details (which can be large and say nothing to a subscriber).
fn driver_metadata(d: &DriverRecord) -> Value {
    let mut v = d.redacted();
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "id" | "tenant_id"
                    | "name"
                    | "description"
                    | "module_name"
                    | "role"
                    | "created_at"
                    | "updated_at"
            )
        });
    }
    v
}

/// A command topic, `<prefix>/command/<system>/<module>/<index>/<function>`, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTopic {
    pub system: String,
    pub module: String,
    pub index: u32,
    pub function: String,
}

impl CommandTopic {
    /// The filter Lintel subscribes to for commands.
    pub fn filter(prefix: &str) -> String {
        format!("{prefix}/command/+/+/+/+")
    }

    /// Where the answer to a command on `topic` goes: `…/reply/…` in place of
    /// `…/command/…`. `None` when the topic does not have the command's shape.
    pub fn reply_topic(prefix: &str, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(prefix)?.strip_prefix("/command/")?;
        (rest.split('/').count() == 4).then(|| format!("{prefix}/reply/{rest}"))
    }

    /// Parse a topic received on [`CommandTopic::filter`]; the error says what is wrong.
    pub fn parse(prefix: &str, topic: &str) -> Result<CommandTopic, String> {
        let rest = topic
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("/command/"))
            .ok_or_else(|| format!("`{topic}` is not under `{prefix}/command/`"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [system, module, index, function] = parts[..] else {
            return Err(format!(
                "`{topic}` must be {prefix}/command/<system>/<module>/<index>/<function>"
            ));
        };
        if !lintel_model::IdKind::System.is_valid_id(system) {
            return Err(format!("`{system}` is not a system id (`sys-…`)"));
        }
        let index: u32 = index
            .parse()
            .ok()
            .filter(|i| *i >= 1)
            .ok_or_else(|| format!("module index `{index}` must be a number from 1"))?;
        for (what, v) in [("module", module), ("function", function)] {
            if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
                return Err(format!("the {what} name must be 1–128 printable bytes"));
            }
        }
        Ok(CommandTopic {
            system: system.to_string(),
            module: module.to_string(),
            index,
            function: function.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str, tag: &str) -> Zone {
        Zone {
            id: id.into(),
            tags: vec![tag.into()],
            ..Zone::default()
        }
    }

    fn module(id: &str, driver: &str, custom: Option<&str>) -> Module {
        Module {
            id: id.into(),
            driver_id: driver.into(),
            custom_name: custom.map(Into::into),
            ..Module::default()
        }
    }

    #[test]
    fn levels_are_escaped_only_where_needed() {
        assert!(matches!(level("power"), Cow::Borrowed("power")));
        assert_eq!(level("a/b+c#d%e\0"), "a%2Fb%2Bc%23d%25e%00");
        assert_eq!(level(""), "%20");
        assert_eq!(
            state_topic(
                "placeos",
                "zone-o/state/_/_/_/_/sys-1/driver-1/Display/1/",
                "a/b"
            ),
            "placeos/zone-o/state/_/_/_/_/sys-1/driver-1/Display/1/a%2Fb"
        );
        assert_eq!(&payload(12, "true")[..], br#"{"time":12,"value":true}"#);
    }

    /// The PlaceOS shape: zone ids by tag with `_` for gaps, the later zone of a tag
    /// winning; indexes by name in the system's order; missing records skipped; no org
    /// zone, no topics.
    #[test]
    fn topics_follow_the_zone_tags_and_module_order() {
        let zones = vec![
            zone("zone-org", "org"),
            zone("zone-b1", "building"),
            zone("zone-b2", "building"),
            zone("zone-l", "level"),
            Zone {
                id: "zone-x".into(),
                tags: vec!["meeting".into(), "area".into()],
                ..Zone::default()
            },
        ];
        let drivers = vec![
            DriverRecord {
                id: "driver-d".into(),
                module_name: "Display".into(),
                ..DriverRecord::default()
            },
            DriverRecord {
                id: "driver-s".into(),
                module_name: "Sensor".into(),
                ..DriverRecord::default()
            },
        ];
        let modules = vec![
            module("mod-1", "driver-d", None),
            module("mod-2", "driver-s", None),
            module("mod-3", "driver-d", None),
            module("mod-4", "driver-d", Some("Pro/jector")),
            module("mod-orphan", "driver-gone", None),
        ];
        let room = ControlSystem {
            id: "sys-room".into(),
            zones: vec![
                "zone-org".into(),
                "zone-b1".into(),
                "zone-b2".into(),
                "zone-x".into(),
            ],
            modules: vec![
                "mod-1".into(),
                "mod-orphan".into(),
                "mod-missing".into(),
                "mod-2".into(),
                "mod-3".into(),
                "mod-4".into(),
            ],
            ..ControlSystem::default()
        };
        let nowhere = ControlSystem {
            id: "sys-nowhere".into(),
            zones: vec!["zone-l".into()],
            modules: vec!["mod-1".into()],
            ..ControlSystem::default()
        };
        let t = TenantTopics::build(&[room, nowhere], &zones, &modules, &drivers);
        let base = |m: &str| {
            t.modules[m]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            base("mod-1"),
            ["zone-org/state/_/zone-b2/_/zone-x/sys-room/driver-d/Display/1/"]
        );
        assert_eq!(
            base("mod-3"),
            ["zone-org/state/_/zone-b2/_/zone-x/sys-room/driver-d/Display/2/"]
        );
        assert_eq!(
            base("mod-2"),
            ["zone-org/state/_/zone-b2/_/zone-x/sys-room/driver-s/Sensor/1/"]
        );
        assert_eq!(
            base("mod-4"),
            ["zone-org/state/_/zone-b2/_/zone-x/sys-room/driver-d/Pro%2Fjector/1/"]
        );
        assert!(!t.modules.contains_key("mod-orphan"));
        // Metadata: every zone, the published system, its drivers; not the system
        // without an org zone.
        let ids: Vec<&str> = t.metadata.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "driver-d", "driver-s", "sys-room", "zone-b1", "zone-b2", "zone-l", "zone-org",
                "zone-x"
            ]
        );
        assert!(t.metadata["driver-d"].get("module_name").is_some());
    }

    #[test]
    fn command_topics_parse_or_say_why_not() {
        let ok = CommandTopic::parse("placeos", "placeos/command/sys-a1/Display/2/power").unwrap();
        assert_eq!(
            ok,
            CommandTopic {
                system: "sys-a1".into(),
                module: "Display".into(),
                index: 2,
                function: "power".into()
            }
        );
        assert_eq!(
            CommandTopic::reply_topic("placeos", "placeos/command/sys-a1/Display/2/power")
                .as_deref(),
            Some("placeos/reply/sys-a1/Display/2/power")
        );
        for (bad, why) in [
            (
                "placeos/command/sys-a1/Display/2",
                "must be placeos/command/",
            ),
            ("placeos/command/zone-a/Display/1/power", "not a system id"),
            ("placeos/command/sys-a1/Display/0/power", "number from 1"),
            ("placeos/command/sys-a1/Display/x/power", "number from 1"),
            ("other/command/sys-a1/Display/1/power", "is not under"),
        ] {
            let e = CommandTopic::parse("placeos", bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            CommandTopic::reply_topic("placeos", "placeos/command/x"),
            None
        );
    }
}
