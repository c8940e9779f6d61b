//! MQTT sensor driver: a sensor that publishes its readings as JSON objects to an MQTT
//! broker, in the style of Zigbee2MQTT (and Tasmota/Shelly bridges set to JSON).
//!
//! The module's address is the broker, `mqtt://host[:port]` or `mqtts://host[:port]`; the
//! engine owns the connection (credentials and client id in the module's `mqtt` setting,
//! see `docs/drivers/mqtt-sensor.md`).
//!
//! Settings:
//! - `base_topic` (default `zigbee2mqtt`): the bridge's base topic.
//! - `device`: the sensor's friendly name. The driver follows `<base_topic>/<device>`,
//!   whose JSON object payload (`{"temperature": 21.5, "humidity": 40, "occupancy":
//!   true}`) becomes one status per key, and `<base_topic>/<device>/availability`
//!   (`online`/`offline`, or `{"state": "online"}`), which becomes the status `available`.
//! - `keys` (default: every key): only these payload keys become statuses.
//!
//! A payload that is not a JSON object, or a key that cannot be a status, is logged and
//! skipped; the rest of the payload is still applied.

use lintel_driver_sdk::prelude::*;
use lintel_driver_sdk::serde_json;

/// The sensor's settings.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// The bridge's base topic (Zigbee2MQTT's `base_topic`).
    pub base_topic: String,
    /// The sensor's friendly name: its topic is `<base_topic>/<device>`.
    pub device: String,
    /// Only these payload keys become statuses (empty: every key).
    pub keys: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_topic: "zigbee2mqtt".into(),
            device: String::new(),
            keys: Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct MqttSensor {
    state_topic: String,
    availability_topic: String,
    keys: Vec<String>,
}

/// A topic level must not hold wildcards (they would follow other devices' topics).
fn topic_part(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("setting `{name}` must be set"));
    }
    if value.contains(['+', '#', '\0']) {
        return Err(format!(
            "setting `{name}` must not contain MQTT wildcards (`+`, `#`)"
        ));
    }
    Ok(())
}

/// Whether an availability payload says the device is online.
fn availability(payload: &str) -> Option<bool> {
    let state = match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(o)) => o.get("state")?.as_str()?.to_string(),
        Ok(Value::String(s)) => s,
        _ => payload.trim().to_string(),
    };
    match state.to_ascii_lowercase().as_str() {
        "online" => Some(true),
        "offline" => Some(false),
        _ => None,
    }
}

/// The statuses a state payload sets: its keys (or those `keys` names).
fn readings(payload: &[u8], keys: &[String]) -> Result<Vec<(String, Value)>, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("payload is not a JSON object".into());
    };
    Ok(object
        .into_iter()
        .filter(|(k, _)| keys.is_empty() || keys.contains(k))
        .collect())
}

impl Driver for MqttSensor {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        topic_part("base_topic", &settings.base_topic)?;
        topic_part("device", &settings.device)?;
        self.state_topic = format!("{}/{}", settings.base_topic, settings.device);
        self.availability_topic = format!("{}/availability", self.state_topic);
        self.keys = settings.keys;
        host::mqtt_subscribe(&self.state_topic)?;
        host::mqtt_subscribe(&self.availability_topic)
    }

    fn on_update(&mut self, settings: Settings) -> Result<(), String> {
        self.on_load(settings)
    }

    fn on_event(&mut self, event: HostEvent) {
        let HostEvent::MqttMessage { topic, payload } = event else {
            return;
        };
        if topic == self.availability_topic {
            match availability(&String::from_utf8_lossy(&payload)) {
                Some(online) => {
                    if let Err(e) = host::set_status("available", &online) {
                        host::error(&format!("status `available` not published: {e}"));
                    }
                }
                None => host::warn("availability payload is neither online nor offline"),
            }
        } else if topic == self.state_topic {
            match readings(&payload, &self.keys) {
                Ok(readings) => {
                    for (key, value) in readings {
                        if let Err(e) = host::set_status(&key, &value) {
                            host::warn(&format!("reading `{key}` skipped: {e}"));
                        }
                    }
                }
                Err(e) => host::warn(&format!("message on `{topic}` skipped: {e}")),
            }
        }
    }
}

#[driver(
    name = "MQTT Sensor (Zigbee2MQTT JSON)",
    module_name = "Sensor",
    description = "A sensor that publishes JSON readings to an MQTT broker, Zigbee2MQTT style",
    transport = "mqtt"
)]
impl MqttSensor {}

export_driver!(MqttSensor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let mut all = readings(br#"{"temperature": 21.5, "occupancy": true}"#, &[]).unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            all,
            vec![
                ("occupancy".to_string(), json!(true)),
                ("temperature".to_string(), json!(21.5))
            ]
        );
        assert_eq!(
            readings(
                br#"{"temperature": 21.5, "linkquality": 90}"#,
                &["temperature".into()]
            ),
            Ok(vec![("temperature".to_string(), json!(21.5))])
        );
        assert!(
            readings(b"21.5", &[])
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(readings(b"{oops", &[]).unwrap_err().contains("not JSON"));
        assert_eq!(availability("online"), Some(true));
        assert_eq!(availability(r#"{"state":"offline"}"#), Some(false));
        assert_eq!(availability("\"ONLINE\""), Some(true));
        assert_eq!(availability("maybe"), None);
        assert!(topic_part("device", "a/+").is_err());
        assert!(topic_part("device", "").is_err());
        assert!(topic_part("device", "living room/sensor").is_ok());
    }
}
