//! The Bookings room logic: harness tests (virtual time, scripted peers) and live tests
//! (the real engine with real calendar and panel modules).

mod harness;
mod live;
