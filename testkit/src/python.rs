//! Python test peers (pymodbus, Radicale) run from the checkout's virtualenv, `.venv`,
//! which `scripts/test` creates from `tests/peers/requirements.txt`.

use std::path::PathBuf;

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
