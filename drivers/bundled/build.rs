//! Compiles the bundled driver crates to `wasm32-wasip2` components with a nested cargo,
//! so `cargo build` of the engine always embeds drivers built from the sources in this
//! repository (no checked-in `.wasm`).
//!
//! The nested build uses its own target directory (`target/wasm-drivers`) so it never
//! waits on the outer build's lock, and strips the outer build's compiler wrappers and
//! flags, which are meant for the host target.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate name, wasm file stem)
const DRIVERS: &[(&str, &str)] = &[
    ("lintel-driver-demo-display", "lintel_driver_demo_display"),
    (
        "lintel-driver-demo-occupancy",
        "lintel_driver_demo_occupancy",
    ),
    ("lintel-driver-mqtt-sensor", "lintel_driver_mqtt_sensor"),
    ("lintel-driver-pjlink", "lintel_driver_pjlink"),
    ("lintel-driver-samsung-mdc", "lintel_driver_samsung_mdc"),
    ("lintel-driver-modbus", "lintel_driver_modbus"),
    ("lintel-driver-bacnet", "lintel_driver_bacnet"),
    ("lintel-driver-caldav", "lintel_driver_caldav"),
    ("lintel-driver-msgraph", "lintel_driver_msgraph"),
    (
        "lintel-driver-google-calendar",
        "lintel_driver_google_calendar",
    ),
    ("lintel-driver-room-panel", "lintel_driver_room_panel"),
    ("lintel-driver-bookings", "lintel_driver_bookings"),
];

/// Test fixtures, built only with the `fixtures` feature (never shipped in `lintel`).
const FIXTURES: &[(&str, &str)] = &[
    (
        "lintel-driver-fixture-misbehave",
        "lintel_driver_fixture_misbehave",
    ),
    (VERSIONED.0, VERSIONED.1),
];

/// The fixture built twice: as version 1 with the other drivers, then with its `v2`
/// feature in a second cargo invocation (features unify within one invocation). Both
/// share the target directory, so only the fixture crate itself is compiled twice.
const VERSIONED: (&str, &str) = (
    "lintel-driver-fixture-versioned",
    "lintel_driver_fixture_versioned",
);

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let drivers_dir = manifest_dir.parent().expect("drivers/bundled has a parent");
    let workspace = drivers_dir.parent().expect("drivers/ has a parent");
    for dir in [
        "sdk",
        "sdk-macros",
        "demo-display",
        "demo-occupancy",
        "mqtt-sensor",
        "pjlink",
        "samsung-mdc",
        "modbus",
        "bacnet",
        "caldav",
        "msgraph",
        "google-calendar",
        "room-panel",
        "bookings",
        "fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", drivers_dir.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    let target_dir = std::env::var_os("LINTEL_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("wasm-drivers"));
    println!("cargo:rerun-if-env-changed=LINTEL_WASM_TARGET_DIR");

    ensure_wasm_target();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let built = target_dir.join("wasm32-wasip2").join("wasm-driver");
    let fixtures = std::env::var_os("CARGO_FEATURE_FIXTURES").is_some();

    // Another build script (of an outer build with another target dir) may use the same
    // nested target dir: hold it while building and copying, since the two builds of the
    // versioned fixture leave their component at the same path in turn.
    std::fs::create_dir_all(&target_dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", target_dir.display()));
    let lock_path = target_dir.join("lintel-bundled.lock");
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));

    let mut drivers = DRIVERS.to_vec();
    if fixtures {
        drivers.extend_from_slice(FIXTURES);
    }
    build(workspace, &target_dir, &drivers, &[]);
    for (_, stem) in &drivers {
        copy(
            &built.join(format!("{stem}.wasm")),
            &out_dir.join(format!("{stem}.wasm")),
        );
    }

    if fixtures {
        // Version 2 of the versioned fixture; its file name is the same, so copy it out
        // before anything else overwrites it.
        let (krate, stem) = VERSIONED;
        build(
            workspace,
            &target_dir,
            &[VERSIONED],
            &[format!("{krate}/v2")],
        );
        copy(
            &built.join(format!("{stem}.wasm")),
            &out_dir.join(format!("{stem}_v2.wasm")),
        );
    }
}

/// One nested `cargo build` of `drivers` for wasm32-wasip2 with the `wasm-driver` profile.
fn build(workspace: &Path, target_dir: &Path, drivers: &[(&str, &str)], features: &[String]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "wasm-driver",
            "--target-dir",
        ])
        .arg(target_dir);
    for (krate, _) in drivers {
        cmd.args(["-p", krate]);
    }
    for feature in features {
        cmd.args(["--features", feature]);
    }
    // The outer build's flags, wrappers and target are for the host (the same list as
    // `lintel_driver_harness::OUTER_BUILD_ENV`, which a build script cannot depend on
    // without compiling wasmtime for it), plus LTO, which the drivers' profile sets.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the drivers: {e}"));
    if !status.success() {
        panic!(
            "building the bundled drivers for wasm32-wasip2 failed ({status}). \
             Is the target installed? Run `rustup toolchain install` in the repository \
             (rust-toolchain.toml lists it)."
        );
    }
}

/// rustup adds `rust-toolchain.toml`'s targets only when it installs the toolchain, so a
/// machine that already had this toolchain may lack `wasm32-wasip2`: add it.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib/wasm32-wasip2").exists()) {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        cmd.arg("--toolchain").arg(toolchain);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => println!(
            "cargo:warning=could not add the wasm32-wasip2 target ({other:?}); run `rustup target add wasm32-wasip2`"
        ),
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} → {}: {e}", from.display(), to.display()));
}
