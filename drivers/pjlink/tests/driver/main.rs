//! Tests of the PJLink driver: `harness` (a scripted projector in virtual time) and `live`
//! (the real engine against `lintel_simulators::pjlink::PjlinkSimulator` on a loopback
//! TCP port).

mod harness;
mod live;
