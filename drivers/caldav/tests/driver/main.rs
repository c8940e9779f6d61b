//! The CalDAV driver's tests: `harness` scripts the server's HTTP answers in virtual time;
//! `live` runs the driver in the real engine against a real Radicale 3.9 server.

mod harness;
mod live;
