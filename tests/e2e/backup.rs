use crate::harness::*;
use serde_json::{Value, json};

fn run(mut cmd: std::process::Command) -> (bool, String, String) {
    let out = cmd.output().expect("run lintel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lintel backup` while the server runs (through its admin socket), `lintel restore`
/// into an empty data directory, and a server on the restored directory that signs in
/// with the same password and runs the same modules, with driver components coming from
/// the store alone.
#[test]
fn backup_while_serving_then_restore_into_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b, data_c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let mut cmd = command(&data_a);
    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()));
    let a = Lintel::start(cmd);
    let token_a = a.token(PASSWORD);
    let systems_a: Value = a.get(&token_a, "/api/engine/v2/systems").json().unwrap();

    let file = dir.path().join("lintel.backup");
    let mut backup = command(&data_a);
    backup.args(["backup", "--out"]).arg(&file);
    let (ok, stdout, stderr) = run(backup);
    assert!(ok, "backup failed: {stdout} {stderr}");
    assert!(stdout.contains("backup written"), "{stdout}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "backups hold hashes and sealed secrets"
        );
        let sock_dir = std::fs::metadata(data_a.join("admin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(sock_dir & 0o777, 0o700);
    }
    // A backup of a directory with no store is an error, not an empty backup.
    let mut none = command(&dir.path().join("nothing-here"));
    none.args(["backup", "--out"])
        .arg(dir.path().join("empty.backup"));
    let (ok, _, stderr) = run(none);
    assert!(!ok && stderr.contains("no Lintel store"), "{stderr}");
    assert!(
        !dir.path().join("nothing-here").exists(),
        "backup must not create a store"
    );
    // The server carried on serving.
    assert_eq!(a.get(&token_a, "/api/engine/v2/systems").status(), 200);
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(PASSWORD),
        "the admin password is stored hashed"
    );
    assert!(
        !text.contains("demo-client-secret") && !text.contains("demo-refresh-token"),
        "the demo calendars' OAuth credentials are stored sealed"
    );

    // A damaged copy is refused before the target is even created.
    let damaged = dir.path().join("damaged.backup");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    let mut restore = command(&data_c);
    restore.arg("restore").arg(&damaged);
    let (ok, _, stderr) = run(restore);
    assert!(!ok);
    assert!(
        stderr.contains("corrupted") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(!data_c.join("lintel.redb").exists());

    // Restoring over the running server's data is refused.
    let mut over = command(&data_a);
    over.arg("restore").arg(&file);
    let (ok, _, stderr) = run(over);
    assert!(!ok);
    assert!(stderr.contains("stop Lintel before restoring"), "{stderr}");

    let mut restore = command(&data_b);
    restore.arg("restore").arg(&file);
    let (ok, stdout, stderr) = run(restore);
    assert!(ok, "restore failed: {stdout} {stderr}");
    // The demo building's drivers: two demo devices and eight from the catalog.
    assert!(stdout.contains("10 driver components"), "{stdout}");
    let (status, _) = a.terminate();
    assert!(status.success());

    // Nothing but the store: components must come from it, not from a driver cache.
    assert!(!data_b.join("drivers").exists() && !data_b.join("cache").exists());
    let b = Lintel::start(command(&data_b));
    let token_b = b.token(PASSWORD);
    let systems_b: Value = b.get(&token_b, "/api/engine/v2/systems").json().unwrap();
    assert_eq!(systems_a, systems_b);
    let sys = systems_b[0]["id"].as_str().unwrap().to_string();
    eventually("the restored display to connect", || {
        let s: Value = b
            .get(&token_b, &format!("/api/engine/v2/systems/{sys}/Display_1"))
            .json()
            .ok()?;
        (s["connected"] == json!(true)).then_some(())
    });
    let (status, _) = b.terminate();
    assert!(status.success());
}
