//! `corral-bench`: the seeds' load scenarios, measured side by side with a reference on
//! the same machine. `cargo run -p corral-bench --release -- <scenario> [--full]`.

mod load;
mod report;
mod scenarios;
mod servers;
#[allow(dead_code)]
#[path = "../../tests/api/common/smtp.rs"]
mod smtp;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// The same allocator as the `corral` binary, so `serve-corral` runs as it does (and the
/// references get it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};

use scenarios::Sizes;

#[derive(Parser)]
#[command(about = "Load scenarios for Corral, each beside a reference on the same machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Random,
    Files,
    Uploads,
    Events,
    Reminders,
    Ws,
    /// Server memory per idle WebSocket connection.
    WsIdle,
    Scale,
    /// A 256 px WebP variant: made on first request, then served.
    Variants,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario (or `all` of those that exist).
    Run {
        #[arg(value_enum)]
        scenario: Vec<Scenario>,
        /// The seeds' sizes (longer runs, more data).
        #[arg(long)]
        full: bool,
        /// Tiny sizes: only shows that every step works.
        #[arg(long, conflicts_with = "full")]
        smoke: bool,
        /// Where the JSON and SVG go.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// (Internal) serve Corral on a data dir, with the bench admin account.
    #[command(hide = true)]
    ServeCorral {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        bind: SocketAddr,
    },
    /// (Internal) the reference: a bare axum handler answering every GET with one body.
    #[command(hide = true)]
    Reference {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        body_file: PathBuf,
        #[arg(long)]
        content_type: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                scenario,
                full,
                smoke,
                out,
            } => run(scenario, full, smoke, &out).await,
            Command::ServeCorral { data_dir, bind } => serve_corral(data_dir, bind).await,
            Command::Reference {
                bind,
                body_file,
                content_type,
            } => reference(bind, body_file, content_type).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    scenarios: Vec<Scenario>,
    full: bool,
    smoke: bool,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let sizes = if smoke {
        Sizes::smoke()
    } else if full {
        Sizes::full()
    } else {
        Sizes::default_run()
    };
    let scenarios = if scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        scenarios
    };
    for scenario in scenarios {
        let name = scenario.to_possible_value().map_or_else(
            || format!("{scenario:?}").to_lowercase(),
            |v| v.get_name().to_owned(),
        );
        let size = if full {
            " --full"
        } else if smoke {
            " --smoke"
        } else {
            ""
        };
        let command = format!("cargo run -p corral-bench --release -- run {name}{size}");
        let report = match scenario {
            Scenario::Random => scenarios::random(sizes, &command).await?,
            Scenario::Files => scenarios::files(sizes, &command).await?,
            Scenario::Events => scenarios::events(sizes, &command).await?,
            Scenario::Uploads => scenarios::uploads(sizes, &command).await?,
            Scenario::Reminders => scenarios::reminders(sizes, &command).await?,
            Scenario::Scale => scenarios::scale(sizes, &command).await?,
            Scenario::Variants => scenarios::variants(sizes, &command).await?,
            Scenario::Ws => scenarios::ws::ws(sizes, &command).await?,
            Scenario::WsIdle => {
                let clients = if smoke {
                    30
                } else {
                    scenarios::ws::IDLE_CONNECTIONS
                };
                scenarios::ws::idle(clients, &command).await?
            }
        };
        report.print();
        let (json, svg) = report.write(out)?;
        println!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(())
}

async fn serve_corral(data_dir: PathBuf, bind: SocketAddr) -> anyhow::Result<()> {
    use corral::config::{Overrides, Settings};
    use corral::domain::{Email, Password, Username};
    let overrides = Overrides {
        bind: Some(bind),
        data_dir: Some(data_dir),
    };
    let settings = Settings::load(None, &overrides)?;
    corral::telemetry::init_tracing(&settings.log.filter, settings.log.format);
    let app = corral::App::start(settings.clone()).await?;
    app.accounts()
        .create_or_promote_admin(
            Username::parse(servers::ADMIN.0)?,
            Email::parse("bench@example.com")?,
            Password::parse(servers::ADMIN.1.into())?,
        )
        .await?;
    app.shutdown().await?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    corral::run(settings, listener, term).await?;
    Ok(())
}

async fn reference(
    bind: SocketAddr,
    body_file: PathBuf,
    content_type: String,
) -> anyhow::Result<()> {
    let body = bytes::Bytes::from(std::fs::read(body_file)?);
    let handler = move || {
        let (body, content_type) = (body.clone(), content_type.clone());
        async move { ([(axum::http::header::CONTENT_TYPE, content_type)], body) }
    };
    let app = axum::Router::new().fallback(axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
