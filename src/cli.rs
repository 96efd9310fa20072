//! Command line: `iiifd serve`, `iiifd --version`. Start-up only: parse flags, load the configuration,
//! set up logging, bind, and run the server until SIGINT or SIGTERM.

use crate::config::{Config, Overrides};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// A fast IIIF Image API server.
#[derive(Parser, Debug)]
#[command(name = "iiifd", version = version_text(), about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every command that reads the configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (see examples/config.toml).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Directory of the derivative store.
    #[arg(long, value_name = "DIR", global = true)]
    pub store: Option<PathBuf>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the IIIF server.
    Serve {
        /// Configuration file and store.
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Directory of source images.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
    },
    /// Print the URL of an image or its info.json (Flask-IIIF's `iiif_image_url`), validated.
    Url {
        /// Configuration (for the public base URL and prefix).
        #[command(flatten)]
        config: ConfigArgs,
        /// What to address.
        #[command(flatten)]
        url: UrlArgs,
    },
    /// Pre-warm a running server's store (a crawl job on its admin listener) and follow its progress.
    Warm(crate::warm::WarmArgs),
    /// Maintain the derivative store offline (while no server uses it; a running server offers the same
    /// on its admin listener under /admin/store/).
    Store {
        /// Configuration file and store.
        #[command(flatten)]
        config: ConfigArgs,
        /// The operation.
        #[command(subcommand)]
        op: StoreOp,
    },
}

/// Arguments of `iiifd url`.
#[derive(clap::Args, Debug, Clone)]
pub struct UrlArgs {
    /// The identifier (a path below the image directory).
    pub id: String,
    /// Image API version: 3, 2 or 1.
    #[arg(long, default_value_t = 3)]
    pub version: u8,
    /// Region (default full).
    #[arg(long, default_value = "full")]
    pub region: String,
    /// Size (default max in 3, full in 2 and 1).
    #[arg(long)]
    pub size: Option<String>,
    /// Rotation (default 0).
    #[arg(long, default_value = "0")]
    pub rotation: String,
    /// Quality (default default; native in 1).
    #[arg(long)]
    pub quality: Option<String>,
    /// Format (default jpg).
    #[arg(long, default_value = "jpg")]
    pub format: String,
    /// Print the info.json URL instead.
    #[arg(long)]
    pub info: bool,
}

/// Store operations.
#[derive(Subcommand, Debug, Clone)]
pub enum StoreOp {
    /// Objects, bytes and budget.
    Stats,
    /// Check every object against its length and blake3; exit status 1 if any is bad.
    Verify,
    /// Remove temp files, dangling entries, index orphan files, enforce the budget.
    Gc,
    /// Rebuild the index from the object files.
    Reindex,
    /// Remove every derivative of one identifier.
    Purge {
        /// The identifier.
        #[arg(long)]
        id: String,
    },
}

/// `iiifd --version`: the release, then the codecs in use and what the build left out (a build without
/// `nasm` has no libjpeg SIMD code; that must be said plainly, not only in a build warning).
pub fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            crate::render::decode::jpeg::codec_description()
        )
    })
}

/// Exit status for configuration errors.
const EXIT_CONFIG: u8 = 2;

/// Parse the command line and run.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            images,
        } => {
            let overrides = Overrides {
                listen,
                images,
                store: config.store.clone(),
            };
            let cfg = match load_config(&config, &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            match crate::daemon::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("iiifd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Warm(args) => crate::warm::run(&args),
        Command::Url { config, url } => {
            let cfg = match load_config(&config, &Overrides::default()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match image_url(&cfg, &url) {
                Ok(u) => {
                    println!("{u}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("iiifd: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Store { config, op } => {
            let overrides = Overrides {
                store: config.store.clone(),
                ..Overrides::default()
            };
            let cfg = match load_config(&config, &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            store_command(&cfg, &op)
        }
    }
}

/// The URL `iiifd url` prints, after checking the parameters parse in the chosen version.
pub fn image_url(cfg: &Config, a: &UrlArgs) -> Result<String, String> {
    use crate::iiif::parse::{encode_identifier, parse_image_params};
    use crate::iiif::{ApiVersion, Format};
    let version = ApiVersion::from_path_segment(&a.version.to_string())
        .ok_or("--version must be 1, 2 or 3")?;
    let base = if cfg.public_base_url.is_empty() {
        format!("http://{}{}", cfg.listen, cfg.prefix)
    } else {
        cfg.public_base_url.clone()
    };
    let service = format!(
        "{base}/{}/{}",
        version.path_segment(),
        encode_identifier(&a.id)
    );
    if a.info {
        return Ok(format!("{service}/info.json"));
    }
    let size = a.size.clone().unwrap_or_else(|| {
        if version == ApiVersion::V3 {
            "max"
        } else {
            "full"
        }
        .into()
    });
    let quality = a.quality.clone().unwrap_or_else(|| {
        if version == ApiVersion::V1 {
            "native"
        } else {
            "default"
        }
        .into()
    });
    let qf = format!("{quality}.{}", a.format);
    parse_image_params(version, &a.region, &size, &a.rotation, &qf, Format::Jpg)
        .map_err(|e| e.to_string())?;
    Ok(format!("{service}/{}/{size}/{}/{qf}", a.region, a.rotation))
}

/// Load the configuration for a command; on failure print the message and give exit status 2.
fn load_config(args: &ConfigArgs, overrides: &Overrides) -> Result<Config, ExitCode> {
    Config::load_from_process(args.config.as_deref(), overrides).map_err(|e| {
        eprintln!("iiifd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("iiifd: {e}"),
    }
}

fn store_command(cfg: &Config, op: &StoreOp) -> ExitCode {
    use crate::store::maintenance::Maintenance;
    let (store, recovery) = match crate::store::Store::open(crate::app::store_settings(cfg)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("iiifd: store {}: {e}", cfg.store.path.display());
            return ExitCode::FAILURE;
        }
    };
    // Offline maintenance: pay a reconcile pass the store owes (a crash, a lost index) first, at
    // full speed, so every command answers from an index that agrees with the files.
    let reconciled = if store.needs_reconcile() {
        match store.reconcile(0) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("iiifd: store {}: reconcile: {e}", cfg.store.path.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let op = match op {
        StoreOp::Stats => Maintenance::Stats,
        StoreOp::Verify => Maintenance::Verify,
        StoreOp::Gc => Maintenance::Gc,
        StoreOp::Reindex => Maintenance::Reindex,
        StoreOp::Purge { id } => Maintenance::Purge(id.clone()),
    };
    let result = op
        .run(&store)
        .map(|(key, report)| {
            let mut v = serde_json::Map::new();
            v.insert(key.to_owned(), report);
            // What reads says how the store was found; what changes it, how it is left.
            if matches!(op, Maintenance::Stats | Maintenance::Verify) {
                v.insert("recovery".into(), serde_json::json!(recovery));
            } else {
                v.insert("stats".into(), serde_json::json!(store.stats()));
            }
            serde_json::Value::Object(v)
        })
        .map(|mut v| {
            if let Some(r) = reconciled {
                v["reconciled"] = serde_json::json!(r);
            }
            v
        });
    if let Err(e) = store.close() {
        eprintln!("iiifd: store {}: {e}", cfg.store.path.display());
    }
    match result {
        Ok(v) => {
            print_json(&v);
            if v["verify"]["bad"].as_u64().unwrap_or(0) > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("iiifd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
