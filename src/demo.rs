//! The demo building's devices: in-process simulators reachable as `sim://<name>` (byte
//! streams for the TCP devices; HTTP servers on loopback ports for the panels and the
//! calendars — CalDAV, Microsoft Graph and Google Calendar with their OAuth token
//! endpoints — registered under their names so the records never hold a port).

use crate::bootstrap::{DEMO_CALENDAR_PATH, DEMO_ROOMS, DemoDevice, demo_identity};
use anyhow::Context;
use lintel_engine::Engine;
use lintel_simulators::{
    DisplaySimulator, OccupancySimulator,
    caldav::{CaldavSimulator, event_ics},
    google_calendar::{GoogleCalendarSimulator, rfc3339},
    modbus::ModbusSimulator,
    msgraph::{MsGraphSimulator, event as graph_event},
    pjlink::PjlinkSimulator,
    room_panel::PanelSimulator,
    samsung_mdc::MdcSimulator,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Start the simulators and make them reachable by the demo modules.
pub async fn start_simulators(engine: &Engine) -> anyhow::Result<()> {
    for (i, (_, _, devices)) in DEMO_ROOMS.iter().enumerate() {
        for device in devices.iter() {
            let Some(name) = device.sim(i + 1) else {
                continue;
            };
            match device {
                DemoDevice::Display => {
                    let d = DisplaySimulator::default();
                    engine.register_endpoint(&name, Arc::new(move || d.connect()));
                }
                DemoDevice::Occupancy => {
                    let o = demo_occupancy(i);
                    engine.register_endpoint(&name, Arc::new(move || o.connect()));
                }
                DemoDevice::Projector => {
                    let p = PjlinkSimulator::default();
                    engine.register_endpoint(&name, Arc::new(move || p.connect()));
                }
                DemoDevice::SamsungDisplay => {
                    let d = MdcSimulator::new(1);
                    engine.register_endpoint(&name, Arc::new(move || d.connect()));
                }
                DemoDevice::RoomSensor => {
                    let m = ModbusSimulator::new(Some(Duration::from_secs(5)));
                    engine.register_endpoint(&name, Arc::new(move || m.connect()));
                }
                DemoDevice::Panel => {
                    let addr = PanelSimulator::new()
                        .serve()
                        .await
                        .with_context(|| format!("demo panel simulator {name}"))?;
                    engine.register_http_endpoint(&name, &format!("http://{addr}"));
                }
                DemoDevice::Calendar | DemoDevice::GraphCalendar | DemoDevice::GoogleCalendar => {
                    let addr = demo_calendar(i, DemoCalendar::new(*device, i + 1))
                        .serve()
                        .await
                        .with_context(|| format!("demo calendar simulator {name}"))?;
                    engine.register_http_endpoint(&name, &format!("http://{addr}"));
                }
                DemoDevice::Bookings => {}
            }
        }
    }
    Ok(())
}

/// Room `room`'s occupancy sensor (0-based). People come and go at a different rhythm in
/// each room so the demo looks alive; the huddle room stays empty for its first quarter of
/// an hour, so its first booking (nobody checks in, nobody is detected) is released by the
/// room logic after ten minutes.
fn demo_occupancy(room: usize) -> OccupancySimulator {
    let period = Duration::from_millis(2_000 + 1_000 * room as u64);
    if room != 0 {
        return OccupancySimulator::new(Some(period));
    }
    let sensor = OccupancySimulator::new(None);
    let walk = sensor.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15 * 60)).await;
        let mut tick = tokio::time::interval(period);
        let mut people: i32 = 0;
        loop {
            tick.tick().await;
            people = (people + rand::random::<u8>() as i32 % 3 - 1).clamp(0, 4);
            walk.set_people(people as u32);
        }
    });
    sensor
}

/// Meeting titles the demo calendars cycle through.
const TITLES: [&str; 6] = [
    "Weekly sync",
    "Design review",
    "Customer call",
    "Sprint planning",
    "1:1",
    "Interview",
];

/// A demo room's calendar service.
#[derive(Clone)]
enum DemoCalendar {
    Caldav(CaldavSimulator),
    /// A Microsoft 365 room mailbox, and the token endpoint of its app registration.
    Graph(MsGraphSimulator),
    /// A Google Workspace room calendar (its id), and the OAuth token endpoint.
    Google(GoogleCalendarSimulator, String),
}

impl DemoCalendar {
    /// The service of `device` (a calendar) in room `room` (1-based), accepting the
    /// credentials its module's settings hold.
    fn new(device: DemoDevice, room: usize) -> DemoCalendar {
        let id = demo_identity(room);
        match device {
            DemoDevice::GraphCalendar => {
                DemoCalendar::Graph(MsGraphSimulator::new(&id.mailbox, id.client_id, id.secret))
            }
            DemoDevice::GoogleCalendar => {
                let sim = GoogleCalendarSimulator::new(id.client_id, id.secret);
                sim.set_refresh_token(id.refresh_token);
                sim.add_calendar(&id.mailbox, "Europe/London");
                DemoCalendar::Google(sim, id.mailbox)
            }
            _ => DemoCalendar::Caldav(CaldavSimulator::new(DEMO_CALENDAR_PATH)),
        }
    }

    /// Put a booking in slot `slot` (replacing the one there).
    fn put(&self, slot: i64, uid: &str, start: i64, end: i64, title: &str) {
        const ORGANIZER: &str = "organiser@demo.example";
        match self {
            DemoCalendar::Caldav(sim) => {
                sim.put(
                    &format!("slot-{slot}.ics"),
                    &event_ics(
                        uid,
                        start,
                        end,
                        title,
                        &format!("ORGANIZER;CN=Demo Organiser:mailto:{ORGANIZER}\r\n"),
                    ),
                );
            }
            DemoCalendar::Graph(sim) => {
                sim.add_event(graph_event(&format!("slot-{slot}"), start, end, title, ORGANIZER))
            }
            DemoCalendar::Google(sim, room) => sim.add_event(
                room,
                serde_json::json!({
                    "id": format!("slot{slot}"),
                    "iCalUID": uid,
                    "summary": title,
                    "start": {"dateTime": rfc3339(start)},
                    "end": {"dateTime": rfc3339(end)},
                    "organizer": {"email": ORGANIZER, "displayName": "Demo Organiser"},
                    "attendees": [
                        {"email": ORGANIZER, "organizer": true, "responseStatus": "accepted"},
                        {"email": room, "resource": true, "self": true, "responseStatus": "accepted"}
                    ]
                }),
            ),
        }
    }

    async fn serve(&self) -> std::io::Result<SocketAddr> {
        match self {
            DemoCalendar::Caldav(sim) => sim.serve().await,
            DemoCalendar::Graph(sim) => sim.serve().await,
            DemoCalendar::Google(sim, _) => sim.serve().await,
        }
    }
}

/// Room `room`'s calendar (0-based): bookings around now, so a newcomer sees the states at
/// once — room 1 has a meeting that started a minute ago with nobody checked in and nobody
/// there (pending; the room logic releases it ten minutes after its start), room 2 one that
/// started a quarter of an hour ago in a room with people in it (busy), room 3 is free for
/// the next forty minutes, room 4's meeting started five minutes ago — then a new booking
/// every half hour, kept for a day.
fn demo_calendar(room: usize, cal: DemoCalendar) -> DemoCalendar {
    let now = lintel_model::now_unix();
    let first = match room {
        0 => now - 60,
        1 => now - 15 * 60,
        2 => now + 40 * 60,
        _ => now - 5 * 60,
    };
    // 48 half-hour slots a day, reused: the calendar never grows past a day of bookings.
    let slot = move |n: i64, cal: &DemoCalendar| {
        let start = first + n * 1800;
        let title = TITLES[(n as usize + room) % TITLES.len()];
        let uid = format!("demo-{room}-{n}@lintel");
        cal.put(n.rem_euclid(48), &uid, start, start + 25 * 60, title);
    };
    // The first booking, then one an hour later: free time in between.
    slot(0, &cal);
    slot(2, &cal);
    let refill = cal.clone();
    tokio::spawn(async move {
        let mut n = 3;
        let mut tick = tokio::time::interval(Duration::from_secs(1800));
        tick.tick().await;
        loop {
            tick.tick().await;
            slot(n, &refill);
            n += 1;
        }
    });
    cal
}
