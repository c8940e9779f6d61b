//! Demo display driver: a room display speaking a small line protocol over TCP.
//!
//! Device protocol (each line ends with `\r\n`):
//!
//! | command | reply |
//! |---|---|
//! | `POWER ON`, `POWER OFF`, `POWER?` | `POWER=ON` / `POWER=OFF` |
//! | `INPUT HDMI1`, `INPUT?` | `INPUT=HDMI1` |
//! | `VOLUME 0..100`, `VOLUME?` | `VOLUME=40` |
//! | `MUTE ON`, `MUTE OFF`, `MUTE?` | `MUTE=ON` / `MUTE=OFF` |
//! | anything else | `ERR <reason>` |
//!
//! Functions: `power(state: bool)`, `input(input: "HDMI1" | "HDMI2" | "DisplayPort")`,
//! `volume(level: 0..=100)`, `mute(state: bool)`. Commands are fire and forget: every
//! reply (`KEY=VALUE`) updates the statuses `power`, `input`, `volume` and `mute`, whoever
//! asked. Settings: `poll_every_ms` (default 10000, 500..=3600000), how often the driver
//! polls `POWER?` while connected.
//!
//! The engine's demo building runs this against an in-process simulator of the same
//! protocol; point a module's `uri` at `tcp://host:port` for a real device.

use lintel_driver_sdk::prelude::*;

const POLL_TIMER: u32 = 1;

/// The display's settings.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde", default)]
pub struct Settings {
    /// How often to poll the display's power state while connected, in milliseconds
    /// (500..=3600000).
    pub poll_every_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_every_ms: 10_000,
        }
    }
}

/// A video input of the display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "lintel_driver_sdk::serde")]
pub enum Input {
    #[serde(rename = "HDMI1")]
    Hdmi1,
    #[serde(rename = "HDMI2")]
    Hdmi2,
    DisplayPort,
}

impl Input {
    fn as_str(self) -> &'static str {
        match self {
            Input::Hdmi1 => "HDMI1",
            Input::Hdmi2 => "HDMI2",
            Input::DisplayPort => "DisplayPort",
        }
    }
}

/// A volume level, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub struct Level(#[schemars(range(min = 0, max = 100))] u8);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u8::try_from(n) {
            Ok(level) if level <= 100 => Ok(Level(level)),
            _ => Err(serde::de::Error::custom(format!(
                "volume must be an integer 0..=100, got {n}"
            ))),
        }
    }
}

#[derive(Default)]
pub struct DemoDisplay {
    poll_ms: u64,
}

fn on_off(state: bool) -> &'static str {
    if state { "ON" } else { "OFF" }
}

fn command(line: &str) -> Result<(), String> {
    host::send(format!("{line}\r\n").as_bytes()).map(drop)
}

fn apply(key: &str, value: &str) {
    let result = match key {
        "POWER" | "MUTE" => host::set_status(&key.to_ascii_lowercase(), &(value == "ON")),
        "INPUT" => host::set_status("input", value),
        "VOLUME" => match value.parse::<u8>() {
            Ok(v) => host::set_status("volume", &v),
            Err(_) => Err(format!("volume `{value}` is not a number")),
        },
        other => Err(format!("unexpected field `{other}`")),
    };
    if let Err(e) = result {
        host::warn(&format!("ignored reply {key}={value}: {e}"));
    }
}

impl Driver for DemoDisplay {
    type Settings = Settings;

    fn on_load(&mut self, settings: Settings) -> Result<(), String> {
        let poll = settings.poll_every_ms;
        if !(500..=3_600_000).contains(&poll) {
            return Err(format!("poll_every_ms must be 500..=3600000, got {poll}"));
        }
        self.poll_ms = poll;
        Ok(())
    }

    fn connected(&mut self) {
        for query in ["POWER?", "INPUT?", "VOLUME?", "MUTE?"] {
            if let Err(e) = command(query) {
                host::warn(&format!("query {query} not sent: {e}"));
            }
        }
        if let Err(e) = host::schedule_every(POLL_TIMER, self.poll_ms.max(500)) {
            host::warn(&format!("polling not scheduled: {e}"));
        }
    }

    fn disconnected(&mut self) {
        host::cancel_schedule(POLL_TIMER);
    }

    fn received(&mut self, data: &[u8], _waiting: Option<CommandId>) -> Verdict {
        let line = String::from_utf8_lossy(data);
        let line = line.trim();
        if let Some(reason) = line.strip_prefix("ERR") {
            host::warn(&format!("display refused a command:{reason}"));
        } else if let Some((key, value)) = line.split_once('=') {
            apply(key, value);
        } else if !line.is_empty() {
            host::warn(&format!("unparseable reply `{line}`"));
        }
        // Commands are fire and forget: replies only update statuses.
        Verdict::Ignore
    }

    fn on_timer(&mut self, id: u32) {
        if id == POLL_TIMER
            && let Err(e) = command("POWER?")
        {
            host::debug(&format!("poll skipped: {e}"));
        }
    }
}

#[driver(
    name = "Demo Display",
    module_name = "Display",
    description = "A room display with power, input, volume and mute (demo line protocol)",
    transport = "tcp",
    delimiter = "\r\n"
)]
impl DemoDisplay {
    /// Switch the display on or off.
    #[function]
    fn power(&mut self, state: bool) -> Result<(), String> {
        // A newer power command replaces one still waiting in the queue.
        let line = format!("POWER {}\r\n", on_off(state));
        host::send_with(line.as_bytes(), SendOptions::default().name("power")).map(drop)
    }

    /// Select the input.
    #[function]
    fn input(&mut self, input: Input) -> Result<(), String> {
        command(&format!("INPUT {}", input.as_str()))
    }

    /// Set the volume (0..=100).
    #[function]
    fn volume(&mut self, level: Level) -> Result<(), String> {
        command(&format!("VOLUME {}", level.0))
    }

    /// Mute or unmute audio.
    #[function]
    fn mute(&mut self, state: bool) -> Result<(), String> {
        command(&format!("MUTE {}", on_off(state)))
    }
}

export_driver!(DemoDisplay);

#[cfg(test)]
mod tests {
    use super::*;
    use lintel_driver_sdk::__private::{self, Functions};

    #[test]
    fn metadata() {
        let m = DemoDisplay::metadata();
        assert_eq!(
            (m.name.as_str(), m.module_name.as_str()),
            ("Demo Display", "Display")
        );
        assert_eq!(m.framing, Framing::Delimiter(b"\r\n".to_vec()));
        assert_eq!(m.default_settings, json!({"poll_every_ms": 10000}));
        let schemas: Vec<_> = m
            .functions
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.parameters[0].name.as_str(),
                    &f.parameters[0].schema,
                )
            })
            .collect();
        assert_eq!(schemas[0], ("power", "state", &json!({"type": "boolean"})));
        assert_eq!((schemas[1].0, schemas[1].1), ("input", "input"));
        assert_eq!(
            schemas[1].2,
            &json!({
                "type": "string",
                "enum": ["HDMI1", "HDMI2", "DisplayPort"],
                "description": "A video input of the display."
            })
        );
        assert_eq!(schemas[2].0, "volume");
        assert_eq!(schemas[2].2["type"], "integer");
        assert_eq!(
            (&schemas[2].2["minimum"], &schemas[2].2["maximum"]),
            (&json!(0), &json!(100))
        );
        assert_eq!(schemas[3], ("mute", "state", &json!({"type": "boolean"})));
    }

    #[test]
    fn refusals() {
        let mut d = DemoDisplay::default();
        for bad in [json!(500), json!(101), json!(-1)] {
            let e = d.dispatch(1, "volume", vec![bad]).unwrap_err();
            assert!(e.contains("0..=100"), "{e}");
        }
        let e = d.dispatch(1, "input", vec![json!("VGA")]).unwrap_err();
        assert!(e.contains("HDMI1"), "{e}");
        assert_eq!(
            __private::on_load::<DemoDisplay>(r#"{"poll_every_ms": 5}"#),
            Err("poll_every_ms must be 500..=3600000, got 5".into())
        );
        assert_eq!(__private::on_load::<DemoDisplay>("{}"), Ok(()));
        assert_eq!(__private::with::<DemoDisplay, _>(|d| d.poll_ms), 10_000);
    }
}
