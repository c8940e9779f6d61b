//! The demo building's devices: in-process simulators reachable as `sim://<name>`.

use crate::bootstrap::DEMO_ROOMS;
use lintel_engine::{Engine, InProcessEndpoint};
use lintel_simulators::{DisplaySimulator, OccupancySimulator};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::DuplexStream;

struct Display(DisplaySimulator);
impl InProcessEndpoint for Display {
    fn connect(&self) -> DuplexStream {
        self.0.connect()
    }
}

struct Occupancy(OccupancySimulator);
impl InProcessEndpoint for Occupancy {
    fn connect(&self) -> DuplexStream {
        self.0.connect()
    }
}

/// Start the simulators and make them reachable by the demo modules.
pub fn start_simulators(engine: &Engine) {
    for (i, (_, _, display, occupancy)) in DEMO_ROOMS.iter().enumerate() {
        engine.register_endpoint(display, Arc::new(Display(DisplaySimulator::default())));
        // Rooms change at different rhythms so the demo looks alive.
        let period = Duration::from_millis(2_000 + 1_000 * i as u64);
        engine.register_endpoint(
            occupancy,
            Arc::new(Occupancy(OccupancySimulator::new(Some(period)))),
        );
    }
}
