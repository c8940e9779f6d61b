//! `lintel`: the building-automation engine.

mod admin;
mod bootstrap;
mod config;
mod demo;
mod driver_cmd;
mod serve;
mod store;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Lintel: a self-hosted building-automation engine with sandboxed WebAssembly drivers
/// and a PlaceOS-compatible API.
#[derive(Parser)]
#[command(name = "lintel", version, about)]
struct Cli {
    /// Configuration file [default: ./lintel.toml, if present]
    #[arg(long, global = true, env = "LINTEL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the engine and the embedded store in one process.
    Serve,
    /// Print the version and the driver ABI it supports.
    Version,
    /// Check the configuration and print the effective values (secrets left out).
    Config,
    /// Write a consistent backup of all configuration (also while Lintel serves).
    Backup {
        /// The backup file to write (it appears only once complete and verified).
        #[arg(long)]
        out: PathBuf,
    },
    /// Load a backup into an empty data directory (or an empty Couchbase scope).
    Restore {
        /// A file written by `lintel backup`.
        file: PathBuf,
    },
    /// The master keyring that seals secrets at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Driver development: scaffold a driver crate, upload a built component.
    #[command(subcommand)]
    Driver(driver_cmd::DriverCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new master key line (`<id>:<base64>`), or write it to a new file (0600).
    /// A keyring file lists keys one per line; the first seals, all open.
    Generate {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Online, through the running server: reload the keyring from its file, re-seal every
    /// secret under its first key, and start new token-signing keys. Afterwards older keys
    /// can be removed from the file.
    Rotate,
}

/// A multi-threaded runtime (`workers` threads, default one per core).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Run a one-shot store command on a small runtime; prints its outcome.
fn run_store_command<F>(cli: &Cli, what: &str, f: F) -> ExitCode
where
    F: AsyncFnOnce(config::Config) -> anyhow::Result<lintel_store::BackupSummary>,
{
    let cfg = match load_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime(Some(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(f(cfg)) {
        Ok(s) => {
            println!("{what}: {} records, {} driver components", s.docs, s.blobs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<config::Config, ExitCode> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("lintel.toml"), false),
    };
    config::Config::load(&path, required).map_err(|e| {
        eprintln!("error: configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!(
                "lintel {} (driver ABI lintel:driver@{})",
                env!("CARGO_PKG_VERSION"),
                lintel_engine::DRIVER_ABI
            );
            ExitCode::SUCCESS
        }
        Command::Config => match load_config(&cli) {
            Ok(cfg) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cfg).expect("config serialises")
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Backup { ref out } => {
            let out = out.clone();
            run_store_command(
                &cli,
                &format!("backup written to {}", out.display()),
                async move |cfg| store::backup(&cfg, &out).await,
            )
        }
        Command::Restore { ref file } => {
            let file = file.clone();
            run_store_command(&cli, "restored", async move |cfg| {
                store::restore(&cfg, &file).await
            })
        }
        Command::Keys(KeysCommand::Generate { ref out }) => {
            let line = lintel_auth::SecretKeyring::generate_line();
            match out.as_deref() {
                None => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Some(path) if path.exists() => {
                    eprintln!(
                        "error: {} exists; a key is never overwritten (add the new line at the top of the file by hand)",
                        path.display()
                    );
                    ExitCode::FAILURE
                }
                Some(path) => match store::write_private(path, format!("{line}\n").as_bytes()) {
                    Ok(()) => {
                        println!("master key written to {} (mode 0600)", path.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                },
            }
        }
        Command::Keys(KeysCommand::Rotate) => {
            let cfg = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime(Some(1)) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(admin::request_rotation(&cfg.data_dir)) {
                Ok(report) => {
                    println!("{}", String::from_utf8_lossy(&report));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Driver(driver_cmd::DriverCommand::New {
            ref name,
            ref path,
            ref lintel_src,
        }) => driver_cmd::new(name, path.as_deref(), lintel_src.as_deref()),
        Command::Driver(driver_cmd::DriverCommand::Upload {
            ref file,
            ref bundled,
            ref driver,
            ref tenant,
        }) => match load_config(&cli) {
            Ok(cfg) => {
                let component = match (file, bundled) {
                    (Some(file), _) => driver_cmd::Component::File(file),
                    (None, Some(name)) => driver_cmd::Component::Bundled(name),
                    (None, None) => {
                        eprintln!("error: give a component file or --bundled NAME");
                        return ExitCode::FAILURE;
                    }
                };
                driver_cmd::upload(
                    &cfg.data_dir,
                    component,
                    driver.as_deref(),
                    tenant.as_deref(),
                )
            }
            Err(code) => code,
        },
        Command::Driver(driver_cmd::DriverCommand::Catalog) => driver_cmd::catalog(),
        Command::Serve => {
            let cfg = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            serve::init_logging(&cfg);
            let metrics =
                match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics disabled");
                        None
                    }
                };
            let rt = match runtime(None) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(serve::serve(cfg, metrics)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "lintel serve failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
