//! Tests of the shipped component: `harness` (every answer shape of the Google Calendar API
//! scripted, in virtual time) and `live` (the real engine, real loopback HTTP, the
//! engine's oauth2 token handling, against `lintel_simulators::google_calendar`).

mod harness;
mod live;
