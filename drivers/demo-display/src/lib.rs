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
//! The engine's demo building runs this against an in-process simulator of the same
//! protocol; point a module's `uri` at `tcp://host:port` for a real device.

use lintel_driver_sdk::{
    Driver, Framing, Function, Metadata, Transport, Value, export_driver, host, json,
};

const POLL_TIMER: u32 = 1;
const INPUTS: [&str; 3] = ["HDMI1", "HDMI2", "DisplayPort"];

#[derive(Default)]
pub struct DemoDisplay {
    poll_ms: u32,
}

fn on_off(state: bool) -> &'static str {
    if state { "ON" } else { "OFF" }
}

fn arg<'a>(args: &'a [Value], index: usize, name: &str) -> Result<&'a Value, String> {
    args.get(index)
        .ok_or_else(|| format!("missing argument `{name}`"))
}

impl DemoDisplay {
    fn command(&self, line: &str) -> Result<Value, String> {
        host::send(format!("{line}\r\n").as_bytes())?;
        Ok(Value::Null)
    }

    fn apply(&self, key: &str, value: &str) {
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
}

impl Driver for DemoDisplay {
    fn metadata() -> Metadata {
        Metadata::new("Demo Display", "Display")
            .description("A room display with power, input, volume and mute (demo line protocol)")
            .transport(Transport::Tcp, Framing::Delimiter(b"\r\n".to_vec()))
            .default_settings(json!({ "poll_every_ms": 10000 }))
            .function(
                Function::new("power", "Switch the display on or off")
                    .param("state", json!({"type": "boolean"})),
            )
            .function(
                Function::new("input", "Select the input")
                    .param("input", json!({"type": "string", "enum": INPUTS})),
            )
            .function(Function::new("volume", "Set the volume").param(
                "level",
                json!({"type": "integer", "minimum": 0, "maximum": 100}),
            ))
            .function(
                Function::new("mute", "Mute or unmute audio")
                    .param("state", json!({"type": "boolean"})),
            )
    }

    fn on_load(&mut self, settings: &Value) -> Result<(), String> {
        let poll = settings
            .get("poll_every_ms")
            .and_then(Value::as_u64)
            .unwrap_or(10_000);
        if !(500..=3_600_000).contains(&poll) {
            return Err(format!("poll_every_ms must be 500..=3600000, got {poll}"));
        }
        self.poll_ms = poll as u32;
        Ok(())
    }

    fn connected(&mut self) {
        for query in ["POWER?", "INPUT?", "VOLUME?", "MUTE?"] {
            if let Err(e) = self.command(query) {
                host::warn(&format!("query {query} not sent: {e}"));
            }
        }
        host::schedule_every(POLL_TIMER, self.poll_ms.max(500));
    }

    fn disconnected(&mut self) {
        host::cancel_schedule(POLL_TIMER);
    }

    fn received(&mut self, data: &[u8]) {
        let line = String::from_utf8_lossy(data);
        let line = line.trim();
        if let Some(reason) = line.strip_prefix("ERR") {
            host::warn(&format!("display refused a command:{reason}"));
        } else if let Some((key, value)) = line.split_once('=') {
            self.apply(key, value);
        } else if !line.is_empty() {
            host::warn(&format!("unparseable reply `{line}`"));
        }
    }

    fn exec(&mut self, function: &str, args: Vec<Value>) -> Result<Value, String> {
        match function {
            "power" => {
                let state = arg(&args, 0, "state")?
                    .as_bool()
                    .ok_or("`state` must be a boolean")?;
                self.command(&format!("POWER {}", on_off(state)))
            }
            "mute" => {
                let state = arg(&args, 0, "state")?
                    .as_bool()
                    .ok_or("`state` must be a boolean")?;
                self.command(&format!("MUTE {}", on_off(state)))
            }
            "input" => {
                let input = arg(&args, 0, "input")?
                    .as_str()
                    .ok_or("`input` must be a string")?;
                if !INPUTS.contains(&input) {
                    return Err(format!("`input` must be one of {INPUTS:?}"));
                }
                self.command(&format!("INPUT {input}"))
            }
            "volume" => {
                let level = arg(&args, 0, "level")?
                    .as_u64()
                    .filter(|l| *l <= 100)
                    .ok_or("`level` must be an integer 0..=100")?;
                self.command(&format!("VOLUME {level}"))
            }
            other => Err(format!("unknown function `{other}`")),
        }
    }

    fn on_timer(&mut self, id: u32) {
        if id == POLL_TIMER
            && let Err(e) = self.command("POWER?")
        {
            host::debug(&format!("poll skipped: {e}"));
        }
    }
}

export_driver!(DemoDisplay);
