//! Demo occupancy sensor driver: a people-counting sensor that pushes readings.
//!
//! Device protocol (each line ends with `\n`): the sensor sends
//! `PRESENCE=<0|1> PEOPLE=<n>` whenever its reading changes, and answers `STATE?` with
//! the same line.

use lintel_driver_sdk::prelude::*;

#[derive(Default)]
pub struct DemoOccupancy;

fn parse(line: &str) -> Result<(bool, u32), String> {
    let mut presence = None;
    let mut people = None;
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("PRESENCE", v)) => presence = Some(v == "1"),
            Some(("PEOPLE", v)) => {
                people = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("PEOPLE `{v}` is not a count"))?,
                )
            }
            _ => return Err(format!("unexpected field `{field}`")),
        }
    }
    match (presence, people) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err("reading lacks PRESENCE or PEOPLE".into()),
    }
}

impl Driver for DemoOccupancy {
    type Settings = NoSettings;

    fn connected(&mut self) {
        if let Err(e) = host::send(b"STATE?\n") {
            host::warn(&format!("state query not sent: {e}"));
        }
    }

    fn received(&mut self, data: &[u8], _waiting: Option<CommandId>) -> Verdict {
        let line = String::from_utf8_lossy(data);
        match parse(line.trim()) {
            Ok((presence, people)) => {
                let published = host::set_status("presence", &presence)
                    .and_then(|()| host::set_status("people_count", &people));
                if let Err(e) = published {
                    host::error(&format!("status not published: {e}"));
                }
            }
            Err(e) => host::warn(&format!("ignored reading `{}`: {e}", line.trim())),
        }
        Verdict::Ignore
    }
}

#[driver(
    name = "Demo Occupancy Sensor",
    module_name = "Occupancy",
    description = "A people-counting occupancy sensor that pushes readings (demo line protocol)",
    transport = "tcp",
    delimiter = "\n"
)]
impl DemoOccupancy {
    /// Ask the sensor for its current reading.
    #[function]
    fn refresh(&mut self) -> Result<(), String> {
        host::send(b"STATE?\n").map(drop)
    }
}

export_driver!(DemoOccupancy);

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn readings_parse() {
        assert_eq!(parse("PRESENCE=1 PEOPLE=3"), Ok((true, 3)));
        assert_eq!(parse("PRESENCE=0 PEOPLE=0"), Ok((false, 0)));
        assert!(parse("PRESENCE=1").is_err());
        assert!(parse("PRESENCE=1 PEOPLE=-2").is_err());
        assert!(parse("HELLO").is_err());
    }
}
