//! Test harness for Lintel drivers.
//!
//! Runs a driver component in-process exactly as the engine runs it (the same sandbox,
//! host imports, command queue and timers) against a **scripted device**, in **virtual
//! time**: no hardware, no network, no engine process, no waiting.
//!
//! Add it as a dev-dependency of the driver crate (`lintel driver new` does this), build
//! the driver with [`driver_component!`] and script the device:
//!
//! ```no_run
//! use lintel_driver_harness::{Harness, driver_component, json};
//! use std::time::Duration;
//!
//! #[test]
//! fn power_on() {
//!     // Builds this crate for wasm32-wasip2 (once per test process).
//!     let mut h = Harness::builder(driver_component!())
//!         .settings(json!({"poll_every_ms": 5000}))
//!         .start()
//!         .expect("the driver starts");
//!
//!     // When the driver writes `POWER?\r\n`, the device answers `POWER=OFF\r\n`.
//!     h.expect(b"POWER?\r\n").respond(b"POWER=OFF\r\n");
//!     h.connect();
//!     h.assert_script_done();
//!     assert_eq!(h.status("power"), Some(json!(false)));
//!
//!     h.expect(b"POWER ON\r\n").respond(b"POWER=ON\r\n");
//!     assert_eq!(h.exec("power", json!([true])), Ok(json!(null)));
//!     assert_eq!(h.status("power"), Some(json!(true)));
//!
//!     // Virtual time: the poll timer fires without the test sleeping.
//!     h.expect(b"POWER?\r\n").respond(b"POWER=ON\r\n");
//!     h.advance(Duration::from_millis(5000));
//!     h.assert_script_done();
//! }
//! # fn main() {}
//! ```
//!
//! Everything of `lintel_engine::harness` is re-exported here ([`Harness`],
//! [`HarnessBuilder`], [`Expect`], [`PendingExec`]), with the types its methods take and
//! return, and `serde_json`'s [`json!`] and [`Value`]. The guide `docs/driver-guide.md`
//! in the Lintel repository walks through a driver and its tests.

pub mod live;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub use lintel_engine::harness::*;
pub use lintel_engine::{
    DRIVER_ERROR_KEY, DriverInfo, FunctionInfo, HttpAnswer, HttpCall, LogLevel, LogLine,
    OutputLimits, SandboxLimits,
};
pub use serde_json::{Value, json};
/// The async runtime [`live`] tests run on (`#[tokio::test]`).
pub use tokio;

/// The driver crate in the calling crate's directory, built for `wasm32-wasip2` with
/// [`build_driver`]: the component's bytes. Built once per test process (later calls
/// return a copy). Panics with cargo's reason when the build fails.
///
/// It is `cached_driver(env!("CARGO_MANIFEST_DIR"))`: use it in the driver crate's own
/// tests (`tests/*.rs`).
#[macro_export]
macro_rules! driver_component {
    () => {
        $crate::cached_driver(::std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
    };
}

/// Environment a nested `cargo` must not inherit from the `cargo test` that runs it: flags,
/// wrappers, target and target directory meant for the outer (host) build.
pub const OUTER_BUILD_ENV: [&str; 7] = [
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
];

/// [`build_driver`] once per crate directory and process; panics when the build fails.
/// Prefer [`driver_component!`].
pub fn cached_driver(manifest_dir: &Path) -> Vec<u8> {
    type Built = HashMap<PathBuf, Result<Vec<u8>, String>>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    // Held while building: parallel tests wait for the first build instead of racing it.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let result = built
        .entry(manifest_dir.to_path_buf())
        .or_insert_with(|| build_driver(manifest_dir));
    match result {
        Ok(bytes) => bytes.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Build the driver crate at `manifest_dir` for `wasm32-wasip2` (`cargo build --release
/// --target wasm32-wasip2 --lib`) and return its component's bytes.
///
/// The nested build uses its own target directory, `<target-dir>/wasm-driver-build`
/// (`<target-dir>` is `CARGO_TARGET_DIR` or `<manifest_dir>/target`), so it never waits
/// for the lock of the `cargo test` that runs it, and it drops the outer build's
/// `RUSTFLAGS`, wrappers and target, which are meant for the host.
pub fn build_driver(manifest_dir: &Path) -> Result<Vec<u8>, String> {
    let manifest = manifest_dir.join("Cargo.toml");
    let toml = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let lib_name = lib_name(&toml).ok_or_else(|| {
        format!(
            "{} names no package (expected `[package]` with `name = \"...\"`)",
            manifest.display()
        )
    })?;
    let outer = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                manifest_dir.join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let target_dir = outer.join("wasm-driver-build");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--lib"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    for var in OUTER_BUILD_ENV {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the driver: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "building {} for wasm32-wasip2 failed ({}):\n{}\n\
             (is the target installed? `rustup target add wasm32-wasip2`)",
            manifest_dir.display(),
            out.status,
            stderr.trim_end()
        ));
    }
    let wasm = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{lib_name}.wasm"));
    std::fs::read(&wasm).map_err(|e| {
        format!(
            "cannot read the built component {}: {e} (does the crate have \
             `crate-type = [\"cdylib\", \"rlib\"]`?)",
            wasm.display()
        )
    })
}

/// The library's name from a Cargo.toml: `[lib] name`, else `[package] name` with `-`
/// as `_`.
fn lib_name(toml: &str) -> Option<String> {
    let mut section = String::new();
    let (mut package, mut lib) = (None, None);
    for line in toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_owned();
        match section.as_str() {
            "package" => package = Some(value),
            "lib" => lib = Some(value),
            _ => {}
        }
    }
    lib.or(package).map(|n| n.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::lib_name;

    #[test]
    fn lib_names() {
        let toml = "[package]\nname = \"acme-lamp\" # the crate\nversion = \"0.1.0\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n";
        assert_eq!(lib_name(toml).as_deref(), Some("acme_lamp"));
        let toml = "[package]\nname = \"acme-lamp\"\n[lib]\nname = \"lamp\"\n[dependencies]\nname = \"x\"\n";
        assert_eq!(lib_name(toml).as_deref(), Some("lamp"));
        assert_eq!(lib_name("[workspace]\n"), None);
    }
}
