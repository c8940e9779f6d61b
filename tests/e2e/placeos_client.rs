//! The real `@placeos/ts-client` (npm, 4.7.7) against a running `lintel serve`: sign in with
//! the client's own password grant, list and page systems, show one, read state by system
//! and by module, execute functions, list functions and types (`tests/placeos-client/`).

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_placeos_typescript_client_works_unchanged() {
    let dir_of_test = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/placeos-client");
    assert!(
        dir_of_test.join("node_modules/@placeos/ts-client").is_dir(),
        "tests/placeos-client/node_modules is missing: run `npm ci --prefix tests/placeos-client` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("data"));
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let l = Lintel::start(cmd);
    let mut node = Command::new("node");
    node.arg("compat.mjs")
        .current_dir(&dir_of_test)
        .env("LINTEL_URL", l.url(""))
        .env("LINTEL_USER", ADMIN)
        .env("LINTEL_PASSWORD", PASSWORD);
    let (code, out) = run_to_exit(node, Duration::from_secs(90));
    println!("{out}");
    assert_eq!(
        code,
        Some(0),
        "the PlaceOS client found differences:\n{out}"
    );
    assert!(out.contains("ok - "), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}
