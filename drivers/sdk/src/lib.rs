//! The Lintel driver SDK.
//!
//! A driver is a Rust type implementing [`Driver`], compiled to a WebAssembly component
//! for `wasm32-wasip2` and exported with [`export_driver!`]. The engine runs each module
//! in its own sandbox and owns the device connection: the driver talks to its device only
//! through [`host::send`] and the bytes handed to [`Driver::received`].
//!
//! The contract is the WIT world `lintel:driver@0.1.0` in `wit/driver.wit`, owned by this
//! crate. See `docs/drivers.md` for a walkthrough.
//!
//! ```ignore
//! use lintel_driver_sdk::{Driver, Metadata, Function, export_driver, host, json, Value};
//!
//! #[derive(Default)]
//! struct Lamp;
//! impl Driver for Lamp {
//!     fn metadata() -> Metadata {
//!         Metadata::new("Lamp", "Lamp").function(Function::new("power", "Switch on/off").param("on", json!({"type": "boolean"})))
//!     }
//!     fn exec(&mut self, function: &str, args: Vec<Value>) -> Result<Value, String> {
//!         host::send(b"ON\r\n")?;
//!         Ok(Value::Null)
//!     }
//! }
//! export_driver!(Lamp);
//! ```

extern crate self as lintel_driver_sdk;

pub use serde_json::{Value, json};

/// The WIT world's version: what the engine checks a component against.
pub const ABI_VERSION: &str = "0.1.0";

#[doc(hidden)]
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

mod metadata;
pub use metadata::{Framing, Function, Metadata, Transport};

/// A device driver. One value of this type lives per module, inside its own sandbox.
///
/// Every method runs on the module's single thread, one event at a time, under a time
/// budget set by the engine: return promptly and let the engine wait for the device.
pub trait Driver: Default + 'static {
    /// What the driver is and which functions it offers (called once per load).
    fn metadata() -> Metadata;

    /// The module starts with its merged settings (a JSON object).
    fn on_load(&mut self, _settings: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Settings changed while the module runs.
    fn on_update(&mut self, settings: &Value) -> Result<(), String> {
        self.on_load(settings)
    }

    /// The transport connected to the device.
    fn connected(&mut self) {}

    /// The transport lost the device; the engine reconnects with backoff.
    fn disconnected(&mut self) {}

    /// One framed message from the device.
    fn received(&mut self, _data: &[u8]) {}

    /// Run `function` with the arguments given by the caller (already checked for count).
    fn exec(&mut self, function: &str, args: Vec<Value>) -> Result<Value, String>;

    /// A timer set with [`host::schedule_every`] or [`host::schedule_in`] fired.
    fn on_timer(&mut self, _id: u32) {}
}

/// What a driver may ask of the engine. None of these block.
pub mod host {
    use crate::bindings::lintel::driver::host as raw;
    use crate::bindings::lintel::driver::types::LogLevel;

    /// Queue bytes for the device. Fails when disconnected or when the queue is full.
    pub fn send(data: &[u8]) -> Result<(), String> {
        raw::send(data)
    }

    /// Publish a status value. Unchanged values are not re-published by the engine.
    pub fn set_status<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<(), String> {
        let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
        raw::set_status(key, &json)
    }

    pub fn debug(message: &str) {
        raw::log(LogLevel::Debug, message)
    }
    pub fn info(message: &str) {
        raw::log(LogLevel::Info, message)
    }
    pub fn warn(message: &str) {
        raw::log(LogLevel::Warn, message)
    }
    pub fn error(message: &str) {
        raw::log(LogLevel::Error, message)
    }

    /// Fire [`crate::Driver::on_timer`] with `id` every `period_ms`.
    pub fn schedule_every(id: u32, period_ms: u32) {
        raw::schedule_every(id, period_ms)
    }
    /// Fire [`crate::Driver::on_timer`] with `id` once, after `delay_ms`.
    pub fn schedule_in(id: u32, delay_ms: u32) {
        raw::schedule_in(id, delay_ms)
    }
    pub fn cancel_schedule(id: u32) {
        raw::cancel_schedule(id)
    }
}

/// Export a [`Driver`] type as this component's implementation of `lintel:driver/guest`.
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        #[doc(hidden)]
        #[allow(dead_code)] // exported only when built for wasm
        pub struct __LintelGuest;

        impl $crate::bindings::exports::lintel::driver::guest::Guest for __LintelGuest {
            fn metadata() -> $crate::bindings::lintel::driver::types::DriverMetadata {
                <$driver as $crate::Driver>::metadata().into_wit()
            }
            fn on_load(settings: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::on_load::<$driver>(&settings)
            }
            fn on_update(settings: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::on_update::<$driver>(&settings)
            }
            fn connected() {
                $crate::__private::with::<$driver, _>(|d| d.connected())
            }
            fn disconnected() {
                $crate::__private::with::<$driver, _>(|d| d.disconnected())
            }
            fn received(data: ::std::vec::Vec<u8>) {
                $crate::__private::with::<$driver, _>(|d| d.received(&data))
            }
            fn exec(
                function: ::std::string::String,
                args: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                $crate::__private::exec::<$driver>(&function, &args)
            }
            fn on_timer(id: u32) {
                $crate::__private::with::<$driver, _>(|d| d.on_timer(id))
            }
        }

        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // still type-checks the glue above.
        #[cfg(target_family = "wasm")]
        $crate::bindings::export_bindings!(__LintelGuest with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::{Driver, Value};
    use std::any::Any;
    use std::cell::RefCell;

    pub use wit_bindgen;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Run `f` on the module's driver value, creating it on first use.
    pub fn with<D: Driver, R>(f: impl FnOnce(&mut D) -> R) -> R {
        INSTANCE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let boxed = slot.get_or_insert_with(|| Box::new(D::default()));
            let driver = boxed
                .downcast_mut::<D>()
                .expect("one driver type per component");
            f(driver)
        })
    }

    fn parse_settings(settings: &str) -> Result<Value, String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err("settings: expected a JSON object".into())
        }
    }

    pub fn on_load<D: Driver>(settings: &str) -> Result<(), String> {
        let v = parse_settings(settings)?;
        with::<D, _>(|d| d.on_load(&v))
    }

    pub fn on_update<D: Driver>(settings: &str) -> Result<(), String> {
        let v = parse_settings(settings)?;
        with::<D, _>(|d| d.on_update(&v))
    }

    pub fn exec<D: Driver>(function: &str, args: &str) -> Result<String, String> {
        let args: Vec<Value> = serde_json::from_str(args)
            .map_err(|e| format!("arguments must be a JSON array: {e}"))?;
        let result = with::<D, _>(|d| d.exec(function, args))?;
        serde_json::to_string(&result).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn abi_version_matches_the_wit_package() {
        let wit = include_str!("../wit/driver.wit");
        assert!(wit.contains(&format!("package lintel:driver@{};", super::ABI_VERSION)));
    }
}
