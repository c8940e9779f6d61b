//! The real `@placeos/ts-client` (npm, 4.7.7) against a running `lintel serve`: sign in with
//! the client's own password grant, list and page systems, show one, read state by system
//! and by module, execute functions, list functions and types; then over the WebSocket
//! (authenticated by the cookie the client sets, as in a browser): bind, exec, notify,
//! unbind, debug, and a server restart the client must reconnect and rebind across
//! (`tests/placeos-client/`).

use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let mut l = Lintel::start(cmd);
    let port = l.base.rsplit(':').next().unwrap().to_owned();
    let mut node = Command::new("node");
    node.arg("compat.mjs")
        .current_dir(&dir_of_test)
        .env("LINTEL_URL", l.url(""))
        .env("LINTEL_USER", ADMIN)
        .env("LINTEL_PASSWORD", PASSWORD)
        .env("LINTEL_COMPAT_RESTART", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = node.spawn().expect("node");
    let (tx, rx) = mpsc::channel::<String>();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut restarted = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if line == "RESTART LINTEL" {
                    // SIGTERM: the client is told (1001) before the server goes.
                    let (status, logs) = l.terminate();
                    assert!(status.success(), "lintel stopped with {status}");
                    assert!(
                        logs.iter()
                            .any(|l| l.contains("WebSocket closed") && l.contains("1001")),
                        "no WebSocket session was closed with 1001 at shutdown: {logs:?}"
                    );
                    let mut cmd = command(&dir.path().join("data"));
                    cmd.env("LINTEL_ADMIN_PASSWORD_FILE", password_file(dir.path()))
                        .env("LINTEL_HTTP__PORT", &port);
                    l = Lintel::start(cmd);
                    writeln!(stdin, "restarted").unwrap();
                    restarted = true;
                }
                out.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the PlaceOS client did not finish:\n{}", out.join("\n"));
                }
            }
        }
    }
    let code = child.wait().unwrap().code();
    let out = out.join("\n");
    println!("{out}");
    assert_eq!(
        code,
        Some(0),
        "the PlaceOS client found differences:\n{out}"
    );
    assert!(restarted, "the client never asked for the restart:\n{out}");
    for check in [
        "bind() on Display_1",
        "execute(\"power\"",
        "unbind()",
        "debug()",
        "reconnects and rebinds",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok - ") && l.contains(check)),
            "check `{check}` did not pass:\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
}
