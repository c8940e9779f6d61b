//! The demo building's devices: in-process simulators reachable as `sim://<name>`.

use crate::bootstrap::DEMO_ROOMS;
use lintel_engine::Engine;
use lintel_simulators::{DisplaySimulator, OccupancySimulator};
use std::sync::Arc;
use std::time::Duration;

/// Start the simulators and make them reachable by the demo modules.
pub fn start_simulators(engine: &Engine) {
    for (i, (_, _, display, occupancy)) in DEMO_ROOMS.iter().enumerate() {
        let d = DisplaySimulator::default();
        engine.register_endpoint(display, Arc::new(move || d.connect()));
        // Rooms change at different rhythms so the demo looks alive.
        let o = OccupancySimulator::new(Some(Duration::from_millis(2_000 + 1_000 * i as u64)));
        engine.register_endpoint(occupancy, Arc::new(move || o.connect()));
    }
}
