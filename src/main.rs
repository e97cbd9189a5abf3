//! The `corral` command: parse flags, load settings, hand over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corral::config::{Overrides, Settings};

/// mimalloc rather than glibc's malloc: a request allocates and frees many small
/// buffers across threads, and glibc's allocator was a seventh of /random's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Corral: images (uploads, files, random samples), an events catalogue with mail \
             reminders, accounts and live push, from one server of supervised actors",
    long_about = None
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the database and image files live (storage.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve {
        /// Address to listen on (http.bind).
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Apply schema/*.cql, in order, to the Scylla cluster in [scylla].
    Migrate,
    /// Write generated images and events straight through the store (for demos and the
    /// scale benchmark). On the embedded store, run it while the server is stopped.
    Seed {
        /// Image rows to write (they share 16 real files).
        #[arg(long, default_value_t = 0)]
        images: u64,
        /// Events to write, spread over the next two months in four cities.
        #[arg(long, default_value_t = 0)]
        events: u64,
    },
    /// Manage accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin account, or promote the existing user with that username.
    Create {
        /// The admin's username (3 to 32 letters, digits, '-', '_' or '.').
        #[arg(long)]
        username: String,
        /// The admin's email address.
        #[arg(long)]
        email: String,
        /// The password (8 to 128 characters). Prefer the CORRAL_ADMIN_PASSWORD variable,
        /// which does not show in the process list; one of the two is needed.
        #[arg(long, env = "CORRAL_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corral: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Everything that must be durable is by now (the actors stopped, the store closed). A
    // blocking task still running, say an image being recompressed (its output goes to
    // data/tmp, emptied at start), must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let bind = match &cli.command {
        Some(Command::Serve { bind }) => *bind,
        _ => None,
    };
    if let Some(path) = &cli.config
        && let Err(e) = std::fs::File::open(path)
    {
        eprintln!("corral: --config {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let overrides = Overrides {
        bind,
        data_dir: cli.data_dir.clone(),
    };
    let settings = match Settings::load(cli.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            // figment breaks its message over lines; one line reads better in a log.
            let said = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("corral: {said}");
            return ExitCode::from(2);
        }
    };
    corral::telemetry::init_tracing(&settings.log.filter, settings.log.format);
    let result = match cli.command.unwrap_or(Command::Serve { bind: None }) {
        Command::Serve { .. } => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::Seed { images, events } => corral::seed::seed(&settings, images, events)
            .await
            .map_err(Into::into),
        Command::Admin { command } => admin(settings, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, each cause once (many errors repeat their source in their own text).
            eprintln!("corral: {}", corral::problem::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let bind = settings.http.bind;
    let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| {
        format!("cannot listen on {bind} (http.bind): is another server using it? Choose another with --bind")
    })?;
    corral::run(settings, listener, shutdown_signal()).await?;
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let done = corral::store::scylla::migrate(&corral::scylla_target(&settings)).await?;
    println!(
        "keyspace {}: applied {}; already applied before: {}",
        settings.scylla.keyspace,
        done.applied.join(", "),
        if done.already.is_empty() {
            "none".to_owned()
        } else {
            done.already.join(", ")
        }
    );
    println!(
        "account claims: {} looked at, {} released (no account listed them)",
        done.accounts.claims, done.accounts.released
    );
    Ok(())
}

async fn admin(settings: Settings, command: AdminCommand) -> anyhow::Result<()> {
    use corral::domain::{Email, Password, Username};
    let AdminCommand::Create {
        username,
        email,
        password,
    } = command;
    let password = password.ok_or_else(|| {
        anyhow::anyhow!(
            "admin create needs a password: set CORRAL_ADMIN_PASSWORD (or pass --password)"
        )
    })?;
    let username =
        Username::parse(&username).with_context(|| format!("--username {username:?}"))?;
    let email = Email::parse(&email).with_context(|| format!("--email {email:?}"))?;
    let password = Password::parse(password)?;
    // The same store, config and data dir as `serve`; the server must not be running on an
    // embedded store (its file is locked while open). No actors start: nothing is sent.
    let user = corral::create_admin(&settings, username, email, password).await?;
    println!("{} ({}) is an admin", user.username.as_str(), user.id);
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
/// Resolves on SIGINT or SIGTERM. The handlers are installed here, before the app starts,
/// so a signal that arrives while it starts or as soon as it answers still stops it in
/// order (an async fn would install them only when first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! { () = int => {}, () = term => {} }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}
