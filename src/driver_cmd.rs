//! `lintel driver`: scaffold a driver crate (`new`), upload a built or bundled component
//! to a running server (`upload`), list the bundled drivers (`catalog`).

use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DriverCommand {
    /// Create a driver crate: a small line-protocol device driver with typed settings, a
    /// status, a poll timer and tests against a scripted device that pass as generated.
    New {
        /// The crate name: lowercase letters, digits and `-`, starting with a letter.
        name: String,
        /// Where to create it [default: ./NAME]; must not exist or be empty.
        #[arg(long)]
        path: Option<PathBuf>,
        /// The Lintel source checkout the crate takes `lintel-driver-sdk` and
        /// `lintel-driver-harness` from (path dependencies). Defaults to the checkout this
        /// `lintel` was built from; out of tree, point it at your Lintel checkout.
        #[arg(long, value_name = "DIR")]
        lintel_src: Option<PathBuf>,
    },
    /// Upload a driver component (a `.wasm` built for wasm32-wasip2) to the running
    /// `lintel serve` of this data directory, through its admin socket. With `--driver`
    /// it upgrades that driver and hot-reloads its running modules.
    Upload {
        /// The component file.
        #[arg(required_unless_present = "bundled", conflicts_with = "bundled")]
        file: Option<PathBuf>,
        /// Upload a driver shipped inside this `lintel` instead of a file (see
        /// `lintel driver catalog`), e.g. `--bundled pjlink`.
        #[arg(long, value_name = "NAME")]
        bundled: Option<String>,
        /// Upgrade this existing driver (its id) instead of creating a new one.
        #[arg(long, value_name = "ID")]
        driver: Option<String>,
        /// The tenant (its id) [default: the only tenant, if there is exactly one].
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
    },
    /// List the drivers shipped inside this `lintel` (the catalog, docs/drivers/), which
    /// `lintel driver upload --bundled NAME` installs.
    Catalog,
}

/// The largest component `lintel driver upload` sends.
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;

/// Where `lintel driver new` takes the SDK and the harness from unless told otherwise.
const DEFAULT_LINTEL_SRC: &str = env!("CARGO_MANIFEST_DIR");

/// The scaffold: (path in the new crate, template text).
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/driver/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/driver/src/lib.rs.tmpl"),
    ),
    (
        "tests/driver.rs",
        include_str!("../templates/driver/tests/driver.rs.tmpl"),
    ),
    (
        "README.md",
        include_str!("../templates/driver/README.md.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../templates/driver/gitignore.tmpl"),
    ),
    // The toolchain Lintel is built with (it has the wasm32-wasip2 target).
    (
        "rust-toolchain.toml",
        include_str!("../rust-toolchain.toml"),
    ),
];

/// Checks a crate name for `lintel driver new`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid driver crate name: use lowercase letters, digits and \
             single `-` (at most 64 characters), starting with a letter, e.g. `acme-lamp`"
        ))
    }
}

/// `acme-lamp` → `AcmeLamp`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `acme-lamp` → `Acme Lamp`.
fn display_name(name: &str) -> String {
    name.split('-').map(type_name).collect::<Vec<_>>().join(" ")
}

/// A path as the inside of a TOML basic string.
fn toml_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// Create the driver crate `name` at `dir` from the template; the SDK and the harness come
/// from `lintel_src`. Returns the files written.
pub fn scaffold(name: &str, dir: &Path, lintel_src: &Path) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    let src = std::fs::canonicalize(lintel_src)
        .map_err(|e| format!("the Lintel source {}: {e}", lintel_src.display()))?;
    let sdk = src.join("drivers").join("sdk");
    let harness = src.join("drivers").join("harness");
    for (what, p) in [
        ("lintel-driver-sdk", &sdk),
        ("lintel-driver-harness", &harness),
    ] {
        if !p.join("Cargo.toml").is_file() {
            return Err(format!(
                "{} is not a Lintel source checkout (no {what} at {}); pass --lintel-src \
                 with the path of your Lintel checkout",
                src.display(),
                p.display()
            ));
        }
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} exists and is not empty; choose another --path",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }

    let lib_name = name.replace('-', "_");
    let vars = [
        ("{{crate_name}}", name.to_owned()),
        ("{{lib_name}}", lib_name),
        ("{{type_name}}", type_name(name)),
        ("{{display_name}}", display_name(name)),
        ("{{sdk_path}}", toml_path(&sdk)),
        ("{{harness_path}}", toml_path(&harness)),
        ("{{lintel_src}}", src.display().to_string()),
    ];
    let mut written = Vec::new();
    for (rel, template) in TEMPLATE {
        let mut text = (*template).to_owned();
        for (key, value) in &vars {
            text = text.replace(key, value);
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    // Lintel's lock file: the crate starts with the dependency versions Lintel is tested
    // with (and builds offline once Lintel has been built).
    let lock = src.join("Cargo.lock");
    if lock.is_file() {
        let to = dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

/// `lintel driver new`.
pub fn new(name: &str, path: Option<&Path>, lintel_src: Option<&Path>) -> ExitCode {
    let dir = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    let src = lintel_src.unwrap_or(Path::new(DEFAULT_LINTEL_SRC));
    match scaffold(name, &dir, src) {
        Ok(files) => {
            println!("created driver crate `{name}` in {}:", dir.display());
            for f in files {
                println!("  {}", f.strip_prefix(&dir).unwrap_or(&f).display());
            }
            println!(
                "\nnext:\n  cd {}\n  cargo test                                     # against a scripted device\n  cargo build --release --target wasm32-wasip2   # the component\n  lintel driver upload target/wasm32-wasip2/release/{}.wasm",
                dir.display(),
                name.replace('-', "_")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `lintel driver catalog`: the bundled drivers, one per line.
pub fn catalog() -> ExitCode {
    println!("{:<16} {:>9}  docs", "NAME", "SIZE");
    for d in lintel_bundled_drivers::ALL {
        println!(
            "{:<16} {:>6} KiB  docs/drivers/{}.md",
            d.name(),
            d.component.len().div_ceil(1024),
            d.name()
        );
    }
    ExitCode::SUCCESS
}

/// What `lintel driver upload` sends: a file, or a bundled driver by name.
pub enum Component<'a> {
    File(&'a Path),
    Bundled(&'a str),
}

/// `lintel driver upload`: sends the component over the admin socket of `data_dir`.
pub fn upload(
    data_dir: &Path,
    component: Component<'_>,
    driver: Option<&str>,
    tenant: Option<&str>,
) -> ExitCode {
    let bytes = match component {
        Component::File(file) => read_component(file),
        Component::Bundled(name) => lintel_bundled_drivers::find(name)
            .map(|d| d.component.to_vec())
            .ok_or_else(|| {
                let names: Vec<_> = lintel_bundled_drivers::ALL
                    .iter()
                    .map(|d| d.name())
                    .collect();
                anyhow::anyhow!("no bundled driver `{name}`; bundled: {}", names.join(", "))
            }),
    };
    match bytes.and_then(|bytes| upload_inner(data_dir, &bytes, driver, tenant)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A component file, checked for size and kind.
fn read_component(file: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if size > MAX_COMPONENT_BYTES as u64 {
        anyhow::bail!(
            "{} is {size} bytes; a driver component may be at most 32 MiB ({MAX_COMPONENT_BYTES} bytes)",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!(
            "{} is not a WebAssembly file (build the driver with `cargo build --release --target wasm32-wasip2`)",
            file.display()
        );
    }
    Ok(bytes)
}

fn upload_inner(
    data_dir: &Path,
    bytes: &[u8],
    driver: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(crate::admin::request_upload(
        data_dir, bytes, driver, tenant,
    ))?;
    let report: serde_json::Value =
        serde_json::from_slice(&reply).context("the server's report is not JSON")?;
    Ok(format_report(&report))
}

/// The upload report for the terminal.
fn format_report(r: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let d = &r["driver"];
    let mut out = format!(
        "{} driver {}: {} {} (tenant {})\n  component sha256 {}\n",
        if r["created"] == true {
            "created"
        } else {
            "upgraded"
        },
        s(&d["id"]),
        s(&d["name"]),
        s(&d["version"]),
        s(&r["tenant"]),
        s(&d["hash"]),
    );
    let modules = r["modules"].as_array().cloned().unwrap_or_default();
    if modules.is_empty() {
        out.push_str("  no running module uses it\n");
    }
    for m in modules {
        match m["error"].as_str() {
            None => out.push_str(&format!("  module {}: reloaded\n", s(&m["module"]))),
            Some(e) => out.push_str(&format!(
                "  module {}: kept the old version: {e}\n",
                s(&m["module"])
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["acme-lamp", "lamp", "l2", "acme-lamp-2"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "2lamp",
            "acme_lamp",
            "acme-",
            "a--b",
            "acme lamp",
            "-x",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(type_name("acme-lamp-2"), "AcmeLamp2");
        assert_eq!(display_name("acme-lamp"), "Acme Lamp");
    }

    #[test]
    fn scaffold_refuses_a_non_empty_directory_and_a_wrong_source() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), "").unwrap();
        let e = scaffold("acme-lamp", tmp.path(), Path::new(DEFAULT_LINTEL_SRC)).unwrap_err();
        assert!(e.contains("not empty"), "{e}");
        let e = scaffold("acme-lamp", &tmp.path().join("new"), tmp.path()).unwrap_err();
        assert!(e.contains("--lintel-src"), "{e}");
    }

    #[test]
    fn report() {
        let r = serde_json::json!({
            "tenant": "t1", "created": false,
            "driver": {"id": "drv-1", "name": "Lamp", "version": "1.0.0", "hash": "ab"},
            "modules": [{"module": "mod-1"}, {"module": "mod-2", "error": "bad settings"}],
        });
        assert_eq!(
            format_report(&r),
            "upgraded driver drv-1: Lamp 1.0.0 (tenant t1)\n  component sha256 ab\n  module mod-1: reloaded\n  module mod-2: kept the old version: bad settings\n"
        );
    }
}
