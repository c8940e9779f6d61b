//! `lintel driver new`: the scaffolded crate builds and its tests pass as generated (a
//! real `cargo test` in it, compiling wasmtime for the harness: the slowest e2e test), and
//! `lintel driver upload` into a running server.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lintel(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(std::env::temp_dir());
    cmd
}

/// The target directory this test binary was built in (`<repo>/target` unless
/// `CARGO_TARGET_DIR` says otherwise).
fn target_dir() -> PathBuf {
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the lintel binary lies in <target>/<profile>/")
        .to_path_buf()
}

#[test]
fn scaffolded_driver_builds_and_passes_its_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("acme-lamp");
    let mut new = lintel(&["driver", "new", "acme-lamp", "--path"]);
    new.arg(&dir);
    let (ok, stdout, stderr) = run(new);
    assert!(ok, "driver new failed: {stdout} {stderr}");
    assert!(
        stdout.contains("created driver crate `acme-lamp`"),
        "{stdout}"
    );

    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/driver.rs",
        "README.md",
        ".gitignore",
        "rust-toolchain.toml",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"acme-lamp\""), "{manifest}");
    assert!(manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"));
    assert!(manifest.contains("\n[workspace]\n"), "builds standalone");
    let sdk = repo.join("drivers/sdk");
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "{manifest}"
    );
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("pub struct AcmeLamp"), "{lib}");
    assert!(lib.contains("name = \"Acme Lamp\""), "{lib}");
    assert!(!lib.contains("{{"), "a placeholder was left: {lib}");
    assert_eq!(
        std::fs::read_to_string(dir.join("rust-toolchain.toml")).unwrap(),
        std::fs::read_to_string(repo.join("rust-toolchain.toml")).unwrap()
    );

    // Refusals: an existing crate is never overwritten; names are checked.
    let mut again = lintel(&["driver", "new", "acme-lamp", "--path"]);
    again.arg(&dir);
    let (ok, _, stderr) = run(again);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
    let mut bad = lintel(&["driver", "new", "Acme_Lamp", "--path"]);
    bad.arg(tmp.path().join("bad"));
    let (ok, _, stderr) = run(bad);
    assert!(
        !ok && stderr.contains("not a valid driver crate name"),
        "{stderr}"
    );
    let mut wrong_src = lintel(&["driver", "new", "x", "--lintel-src"]);
    wrong_src
        .arg(tmp.path())
        .arg("--path")
        .arg(tmp.path().join("x"));
    let (ok, _, stderr) = run(wrong_src);
    assert!(!ok && stderr.contains("--lintel-src"), "{stderr}");

    // Its tests, as generated: build the component for wasm32-wasip2 and run it in the
    // harness. A target directory of its own next to ours: the registry's sources are
    // shared, our build's lock is not taken.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut test = Command::new(cargo);
    test.args(["test", "--offline"])
        .current_dir(&dir)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TERM_COLOR", "never");
    for var in lintel_driver_harness::OUTER_BUILD_ENV
        .into_iter()
        .chain(["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME"])
    {
        test.env_remove(var);
    }
    test.env("CARGO_TARGET_DIR", target_dir().join("scaffold"));
    let started = Instant::now();
    let (ok, stdout, stderr) = run(test);
    eprintln!(
        "cargo test of the scaffolded driver took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(ok, "cargo test failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("test result: ok. 5 passed; 0 failed"),
        "{stdout}"
    );
}

/// `lintel driver upload` through the admin socket: a new driver, then an upgrade of it;
/// oversized and non-wasm files are refused before anything is sent.
#[test]
fn upload_a_driver_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = command(&data);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let server = Lintel::start(cmd);
    let token = server.token(PASSWORD);

    let wasm = dir.path().join("display.wasm");
    std::fs::write(&wasm, lintel_bundled_drivers::DEMO_DISPLAY.component).unwrap();
    let mut up = command(&data);
    up.args(["driver", "upload"]).arg(&wasm);
    let (ok, stdout, stderr) = run(up);
    assert!(ok, "upload failed: {stdout} {stderr}");
    assert!(stdout.starts_with("created driver "), "{stdout}");
    assert!(stdout.contains(": Demo Display 0.1.0 (tenant "), "{stdout}");
    assert!(stdout.contains("no running module uses it"), "{stdout}");
    let hash = lintel_engine::sha256_hex(lintel_bundled_drivers::DEMO_DISPLAY.component);
    assert!(
        stdout.contains(&format!("component sha256 {hash}")),
        "{stdout}"
    );
    let id = stdout
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();

    // The API sees it.
    let driver: serde_json::Value = server
        .get(&token, &format!("/api/engine/v2/drivers/{id}"))
        .json()
        .unwrap();
    assert_eq!(driver["name"], "Demo Display", "{driver}");

    let mut again = command(&data);
    again.args(["driver", "upload", "--driver", &id]).arg(&wasm);
    let (ok, stdout, stderr) = run(again);
    assert!(ok, "upgrade failed: {stdout} {stderr}");
    assert!(
        stdout.starts_with(&format!("upgraded driver {id}: ")),
        "{stdout}"
    );

    let mut unknown = command(&data);
    unknown
        .args(["driver", "upload", "--tenant", "no-such-tenant"])
        .arg(&wasm);
    let (ok, _, stderr) = run(unknown);
    assert!(
        !ok && stderr.contains("no tenant `no-such-tenant`"),
        "{stderr}"
    );

    let big = dir.path().join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(32 * 1024 * 1024 + 1)
        .unwrap();
    let mut too_big = command(&data);
    too_big.args(["driver", "upload"]).arg(&big);
    let (ok, _, stderr) = run(too_big);
    assert!(!ok && stderr.contains("at most 32 MiB"), "{stderr}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a component").unwrap();
    let mut not_wasm = command(&data);
    not_wasm.args(["driver", "upload"]).arg(&text);
    let (ok, _, stderr) = run(not_wasm);
    assert!(!ok && stderr.contains("not a WebAssembly file"), "{stderr}");

    // The catalog ships inside the binary: listed, and uploaded by name.
    let mut catalog = command(&data);
    catalog.args(["driver", "catalog"]);
    let (ok, stdout, stderr) = run(catalog);
    assert!(ok, "{stderr}");
    for name in [
        "pjlink",
        "samsung-mdc",
        "modbus",
        "bacnet",
        "caldav",
        "msgraph",
        "google-calendar",
        "room-panel",
        "bookings",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.ends_with(&format!("docs/drivers/{name}.md"))),
            "{name} missing: {stdout}"
        );
    }
    let mut bundled = command(&data);
    bundled.args(["driver", "upload", "--bundled", "modbus"]);
    let (ok, stdout, stderr) = run(bundled);
    assert!(ok, "bundled upload failed: {stdout} {stderr}");
    assert!(
        stdout.starts_with("created driver ") && stdout.contains(": Modbus TCP Sensor "),
        "{stdout}"
    );
    let mut nope = command(&data);
    nope.args(["driver", "upload", "--bundled", "nope"]);
    let (ok, _, stderr) = run(nope);
    assert!(
        !ok && stderr.contains("no bundled driver `nope`") && stderr.contains("pjlink"),
        "{stderr}"
    );
    let mut both = command(&data);
    both.args(["driver", "upload", "--bundled", "modbus"])
        .arg(&wasm);
    let (ok, _, _) = run(both);
    assert!(!ok, "a file and --bundled together are refused");
    drop(server);
}
