//! Command line: `iiifd serve`, `iiifd --version`. Start-up only: parse flags, load the configuration,
//! set up logging, bind, and run the server until SIGINT or SIGTERM.

use crate::config::{Config, Overrides};
use crate::service::App;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A fast IIIF Image API server.
#[derive(Parser, Debug)]
#[command(name = "iiifd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every command that reads the configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (see examples/config.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the derivative store.
    #[arg(long, value_name = "DIR")]
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
            let cfg = match Config::load_from_process(config.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("iiifd: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&cfg);
            match serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("iiifd: {e}");
                    ExitCode::FAILURE
                }
            }
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

fn serve(cfg: Config) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("iiifd-async")
        .build()?;
    runtime.block_on(async move {
        let app = Arc::new(App::new(cfg.clone())?);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
        let addr = listener.local_addr()?;
        // One line on stdout with the real address, so scripts and tests using port 0 can find it.
        println!("iiifd listening on http://{addr}{}/", cfg.prefix);
        tracing::info!(%addr, images = %cfg.images.display(), workers = app.pool().size(), "iiifd started");
        crate::http::serve(Arc::clone(&app), listener, shutdown_signal()).await;
        app.pool().shutdown();
        tracing::info!("iiifd stopped");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
