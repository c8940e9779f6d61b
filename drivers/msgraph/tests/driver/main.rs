//! The Microsoft Graph driver's tests: `harness` scripts Graph's HTTP answers in virtual
//! time (no authentication involved: the harness answers for the engine); `live` runs the
//! driver in the real engine, with the engine's `oauth2` client-credentials setting,
//! against `lintel_simulators::msgraph` (a local server serving Graph's documented
//! response shapes and a token endpoint) on a loopback port.

mod harness;
mod live;
