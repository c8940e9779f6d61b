//! End-to-end tier: the real `lintel` binary, started on a free port with a temporary data
//! directory, driven over HTTP like a user or a BI tool would.

mod auth;
mod backup;
mod bad_input;
mod driver_scaffold;
mod harness;
mod idp;
mod mqtt;
mod placeos_client;
mod rest;
mod secrets;
mod serve;
