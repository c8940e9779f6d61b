//! Python test peers (pymodbus, Radicale, bacpypes3) run from the checkout's virtualenv, `.venv`,
//! which `scripts/test` creates from `tests/peers/requirements.txt`.

use std::path::PathBuf;
use std::process::{Child, Command};

/// The virtualenv's Python; panics with how to create it when it is missing (never a
/// silent skip).
pub fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf();
    let python = root.join(".venv").join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (or `python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt`)",
        python.display()
    );
    python
}

/// Run blocking `work` (waiting for a peer's answer, `kill`) without taking a worker of a
/// multi-thread tokio runtime from the engine under test (`block_in_place`).
pub(crate) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Send `signal` (`STOP`, `CONT`) to a peer's process.
pub(crate) fn signal(child: &Child, signal: &str) {
    let status = blocking(|| {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
    })
    .expect("running kill");
    assert!(status.success(), "kill -{signal} failed");
}
