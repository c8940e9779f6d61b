//! The demo building's devices: in-process simulators reachable as `sim://<name>` (byte
//! streams for the TCP devices; HTTP servers on loopback ports for the panel and the
//! calendar, registered under their names so the records never hold a port).

use crate::bootstrap::{DEMO_CALENDAR_PATH, DEMO_ROOMS, DemoDevice};
use anyhow::Context;
use lintel_engine::Engine;
use lintel_simulators::{
    DisplaySimulator, OccupancySimulator,
    caldav::{CaldavSimulator, event_ics},
    modbus::ModbusSimulator,
    pjlink::PjlinkSimulator,
    room_panel::PanelSimulator,
    samsung_mdc::MdcSimulator,
};
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
                DemoDevice::Calendar => {
                    let addr = demo_calendar(i)
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

/// Room `room`'s calendar (0-based): bookings around now, so a newcomer sees the states at
/// once — room 1 has a meeting that started a minute ago with nobody checked in and nobody
/// there (pending; the room logic releases it ten minutes after its start), room 2 one that
/// started a quarter of an hour ago in a room with people in it (busy) — then a new booking
/// every half hour, kept for a day.
fn demo_calendar(room: usize) -> CaldavSimulator {
    let sim = CaldavSimulator::new(DEMO_CALENDAR_PATH);
    let now = lintel_model::now_unix();
    let started = if room == 0 { 60 } else { 15 * 60 };
    let first = now - started;
    // 48 half-hour slots a day, reused: the calendar never grows past a day of bookings.
    let slot = move |n: i64, sim: &CaldavSimulator| {
        let start = first + n * 1800;
        let title = TITLES[(n as usize + room) % TITLES.len()];
        let uid = format!("demo-{room}-{n}@lintel");
        sim.put(
            &format!("slot-{}.ics", n.rem_euclid(48)),
            &event_ics(
                &uid,
                start,
                start + 25 * 60,
                title,
                "ORGANIZER;CN=Demo Organiser:mailto:organiser@demo.example\r\n",
            ),
        );
    };
    // The current booking, then one an hour from now: free time in between.
    slot(0, &sim);
    slot(2, &sim);
    let refill = sim.clone();
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
    sim
}
