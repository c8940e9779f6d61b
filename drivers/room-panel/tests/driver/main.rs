//! The room-panel driver's tests: `harness` scripts the panel's HTTP answers in virtual
//! time; `live` runs the driver in the real engine against `PanelSimulator`, a real HTTP
//! server on a loopback port.

mod harness;
mod live;
