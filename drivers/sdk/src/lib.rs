//! The Lintel driver SDK.
//!
//! A driver is a Rust type implementing [`Driver`], with its exec functions declared by
//! the [`driver`] attribute, compiled to a WebAssembly component for `wasm32-wasip2` and
//! exported with [`export_driver!`]. The engine runs each module in its own sandbox and
//! owns the device connection: the driver talks to its device only through [`host::send`]
//! and the messages handed to [`Driver::received`].
//!
//! The contract is the WIT world `lintel:driver@0.1.0` in `wit/driver.wit`, owned by this
//! crate ([`ABI_VERSION`]).
//!
//! # A driver in full
//!
//! ```
//! use lintel_driver_sdk::prelude::*;
//!
//! /// The lamp's settings: a JSON object, missing keys take their defaults.
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! #[serde(crate = "lintel_driver_sdk::serde", default)]
//! pub struct Settings {
//!     /// How often to ask the lamp for its state, in milliseconds.
//!     poll_ms: u64,
//! }
//!
//! impl Default for Settings {
//!     fn default() -> Self {
//!         Settings { poll_ms: 30_000 }
//!     }
//! }
//!
//! /// A brightness level (its schema says 0..=100; the lamp refuses more).
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(crate = "lintel_driver_sdk::serde")]
//! pub struct Level(#[schemars(range(min = 0, max = 100))] u8);
//!
//! #[derive(Default)]
//! pub struct Lamp {
//!     poll_ms: u64,
//! }
//!
//! impl Driver for Lamp {
//!     type Settings = Settings;
//!
//!     fn on_load(&mut self, settings: Settings) -> Result<(), String> {
//!         self.poll_ms = settings.poll_ms;
//!         Ok(())
//!     }
//!
//!     fn connected(&mut self) {
//!         let _ = host::send(b"STATE?\r\n"); // the answer arrives in `received`
//!         if let Err(e) = host::schedule_every(1, self.poll_ms) {
//!             host::warn(&format!("no polling: {e}"));
//!         }
//!     }
//!
//!     fn received(&mut self, line: &[u8], _waiting: Option<CommandId>) -> Verdict {
//!         match line {
//!             b"ON" | b"OFF" => {
//!                 let _ = host::set_status("power", &(line == b"ON")); // published if changed
//!                 Verdict::Done
//!             }
//!             b"ERR" => Verdict::Fail("the lamp refused".into()),
//!             _ => Verdict::Ignore,
//!         }
//!     }
//!
//!     fn on_timer(&mut self, _id: u32) {
//!         let _ = host::send(b"STATE?\r\n");
//!     }
//! }
//!
//! #[driver(name = "Example Lamp", module_name = "Lamp", transport = "tcp", delimiter = "\r\n")]
//! impl Lamp {
//!     /// Switch the lamp on or off.
//!     #[function]
//!     fn power(&mut self, on: bool) -> Result<(), String> {
//!         let line: &[u8] = if on { b"ON\r\n" } else { b"OFF\r\n" };
//!         // A newer `power` command replaces one still queued.
//!         host::send_with(line, SendOptions::default().name("power"))?;
//!         Ok(())
//!     }
//!
//!     /// Set the brightness, optionally fading over `fade_ms`.
//!     #[function]
//!     fn brightness(&mut self, level: Level, fade_ms: Option<u32>) -> Result<(), String> {
//!         if level.0 > 100 {
//!             return Err(format!("level must be 0..=100, got {}", level.0));
//!         }
//!         let line = format!("DIM {} {}\r\n", level.0, fade_ms.unwrap_or(0));
//!         host::send(line.as_bytes()).map(drop)
//!     }
//!
//!     /// Not a function: an ordinary method.
//!     fn helper(&self) {}
//! }
//!
//! export_driver!(Lamp);
//! ```
//!
//! The crate needs `crate-type = ["cdylib", "rlib"]` and only `lintel-driver-sdk` as a
//! dependency. Build it with
//! `cargo build --target wasm32-wasip2 --profile wasm-driver -p my-driver`.
//!
//! # The `#[driver]` attribute
//!
//! Put it on an inherent `impl` block of the driver type (which also implements
//! [`Driver`]). Its keys:
//!
//! | key | meaning |
//! |---|---|
//! | `name = "..."` | required: the driver's name shown to operators |
//! | `module_name = "..."` | required: the name its modules take in a system (`Display` → `Display_1`) |
//! | `description = "..."` | what the driver is for (default empty) |
//! | `version = "1.2.0"` | the driver's version (default: the crate's `CARGO_PKG_VERSION`; any `&str` expression) |
//! | `transport = "tcp"` | `none` (default), `tcp`, `udp`, `tls`, `http`, `websocket` or `mqtt` |
//! | `delimiter = "\r\n"` | framing: messages end with these 1..=16 bytes (a string or byte string) |
//! | `fixed_length = 8` | framing: every message has this many bytes |
//! | `length_prefix = 2` | framing: a big-endian length header of 1, 2 or 4 bytes |
//! | `secrets = ["password"]` | setting keys holding secrets, read with [`host::secret`] |
//!
//! With no framing key the framing is raw. Methods marked `#[function]` (or
//! `#[function(name = "exec_name")]`) become exec functions:
//!
//! - The method takes `&mut self`; its doc comment is the function's description.
//! - Each further parameter is a positional argument deserialized with serde; its JSON
//!   Schema comes from its type with schemars (refine it with a newtype deriving
//!   `JsonSchema`, e.g. `#[schemars(range(min = 0, max = 100))]` on its field, or an enum).
//!   A wrong argument fails with e.g. ``argument `level`: invalid type: string "x",
//!   expected u8``.
//! - `Option<T>` parameters are optional and must come last.
//! - A first parameter of type [`CallId`] receives the exec call's id.
//! - The result is `R`, `Result<R, E: Display>`, [`Answer<R>`] or `Result<Answer<R>, E>`,
//!   with `R: Serialize + JsonSchema` (`()` is `null`). [`Answer::Later`] answers later
//!   through [`host::reply`].
//!
//! # serde and schemars through the SDK
//!
//! The SDK re-exports [`serde`] and [`schemars`] so a driver crate needs no other
//! dependency. serde's derives need to be told where serde is:
//! `#[serde(crate = "lintel_driver_sdk::serde")]` on each type deriving `Serialize` or
//! `Deserialize`. schemars' derive finds `schemars` through `use
//! lintel_driver_sdk::prelude::*`; without the prelude import, add
//! `#[schemars(crate = "lintel_driver_sdk::schemars")]`.
//!
//! # Events and time
//!
//! Every [`Driver`] method and every function runs on the module's single thread, one at
//! a time, under the engine's time budget: return promptly. Nothing in [`host`] blocks:
//! slow work returns an id and its outcome arrives later in [`Driver::on_event`].

#![deny(missing_docs)]

extern crate self as lintel_driver_sdk;

pub use lintel_driver_sdk_macros::driver;
pub use schemars;
pub use serde;
pub use serde_json::{self, Value, json};

/// The WIT world's version: what the engine checks a component against.
pub const ABI_VERSION: &str = "0.1.0";

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "driver",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "::lintel_driver_sdk::bindings",
        runtime_path: "::lintel_driver_sdk::__private::wit_bindgen::rt",
    });
}

pub mod host;
mod types;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use types::{
    Answer, CallId, CommandId, Framing, Function, HostEvent, HttpRequest, HttpResponse, LogLevel,
    Metadata, ModuleRef, NoSettings, Parameter, Schedule, SendOptions, StatusRef, SystemInfo,
    SystemModule, Transport, Verdict,
};

/// Everything a driver needs: `use lintel_driver_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Answer, CallId, CommandId, Driver, Framing, HostEvent, HttpRequest, HttpResponse, LogLevel,
        ModuleRef, NoSettings, Schedule, SendOptions, StatusRef, SystemInfo, SystemModule,
        Transport, Value, Verdict, driver, export_driver, host, json, schemars, serde,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

/// A device driver. One value of this type lives per module, inside its own sandbox.
///
/// Every method runs on the module's single thread, one event at a time, under a time
/// budget set by the engine: return promptly and let the engine wait for the device.
/// Its exec functions come from the [`driver`] attribute on an inherent `impl` block.
pub trait Driver: Default + 'static {
    /// The module's settings: a JSON object deserialized with serde. Its `Default` is the
    /// driver's default settings and its JSON Schema (schemars) is published with the
    /// driver. Use [`NoSettings`] when there are none.
    type Settings: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + Default;

    /// The module starts with its merged settings (secrets left out, see
    /// [`host::secret`]). An error stops the module and is shown to operators.
    fn on_load(&mut self, settings: Self::Settings) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    /// Settings changed while the module runs (default: [`Driver::on_load`]).
    fn on_update(&mut self, settings: Self::Settings) -> Result<(), String> {
        self.on_load(settings)
    }

    /// The transport connected to the device.
    fn connected(&mut self) {}

    /// The transport lost the device; the engine reconnects with backoff.
    fn disconnected(&mut self) {}

    /// One framed message from the device. `waiting` is the outstanding `wait` command
    /// (see [`SendOptions::wait`]), if any; the verdict says whether this message answers
    /// it (default: [`Verdict::Ignore`]).
    fn received(&mut self, data: &[u8], waiting: Option<CommandId>) -> Verdict {
        let _ = (data, waiting);
        Verdict::Ignore
    }

    /// A timer set with [`host::schedule`] fired.
    fn on_timer(&mut self, id: u32) {
        let _ = id;
    }

    /// The outcome of earlier slow host work (a `wait` command, an HTTP request, a call,
    /// a subscription, an MQTT message).
    fn on_event(&mut self, event: HostEvent) {
        let _ = event;
    }
}

/// Export a [`Driver`] type (with a [`driver`] `impl` block) as this component's
/// implementation of `lintel:driver/guest`. Use it once per driver crate.
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        #[doc(hidden)]
        #[allow(dead_code)] // exported only when built for wasm
        pub struct __LintelGuest;

        impl $crate::bindings::exports::lintel::driver::guest::Guest for __LintelGuest {
            fn metadata() -> $crate::bindings::lintel::driver::types::DriverMetadata {
                $crate::__private::metadata::<$driver>()
            }
            fn on_load(
                settings: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::on_load::<$driver>(&settings)
            }
            fn on_update(
                settings: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::on_update::<$driver>(&settings)
            }
            fn connected() {
                $crate::__private::with::<$driver, _>(|d| $crate::Driver::connected(d))
            }
            fn disconnected() {
                $crate::__private::with::<$driver, _>(|d| $crate::Driver::disconnected(d))
            }
            fn received(
                data: ::std::vec::Vec<u8>,
                waiting: ::std::option::Option<u64>,
            ) -> $crate::bindings::lintel::driver::types::Verdict {
                $crate::__private::received::<$driver>(&data, waiting)
            }
            fn exec(
                call: u64,
                function: ::std::string::String,
                args: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::option::Option<::std::string::String>,
                ::std::string::String,
            > {
                $crate::__private::exec::<$driver>(call, &function, &args)
            }
            fn on_timer(id: u32) {
                $crate::__private::with::<$driver, _>(|d| $crate::Driver::on_timer(d, id))
            }
            fn on_event(event: $crate::bindings::lintel::driver::types::HostEvent) {
                $crate::__private::on_event::<$driver>(event)
            }
        }

        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // still type-checks the glue above.
        #[cfg(target_family = "wasm")]
        $crate::bindings::export_bindings!(__LintelGuest with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn abi_version_matches_the_wit_package() {
        let wit = include_str!("../wit/driver.wit");
        assert!(wit.contains(&format!("package lintel:driver@{};", super::ABI_VERSION)));
    }
}
