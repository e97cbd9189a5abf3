//! Corral: one server, built from supervised actors, that stores and serves images.
//!
//! Layout: `config` (typed settings), `domain` (plain types, no I/O), `media` (bytes on
//! disk), `store` (metadata backends behind query-shaped traits), `actors` (the supervised
//! workers), `http` (the API). [`App`] wires them together; `main.rs` only parses flags.

pub mod accounts;
pub mod actors;
pub mod catalogue;
pub mod config;
pub mod domain;
pub mod http;
pub mod media;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use accounts::{AccountRules, Accounts};
use actors::supervisor::{RestartBudget, SupervisorArgs, SupervisorMsg};
use actors::uploads::UploadDeps;
use actors::{Actors, Supervisor};
use config::{Backend, Settings};
use media::{DecodeLimits, MediaRoot};
use store::scylla::ScyllaTarget;
use store::{EmbeddedStore, ScyllaStore, SharedStore, StoreError};

/// How long the supervisor may take to stop its children at shutdown.
const ACTOR_STOP_WAIT: Duration = Duration::from_secs(15);

/// Why the app could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("data directory: {0}")]
    DataDir(std::io::Error),
    #[error("actors failed to start: {0}")]
    Actors(String),
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
}

/// A started application: store open, actors running, ready to serve.
pub struct App {
    state: http::AppState,
    supervisor: ActorRef<SupervisorMsg>,
}

impl App {
    /// Opens the store and media root and starts the supervised actors.
    pub async fn start(settings: Settings) -> Result<Self, AppError> {
        let store = open_store(&settings).await?;
        let media = MediaRoot::open(&settings.storage.data_dir).map_err(AppError::DataDir)?;
        let actors = Actors::default();
        let u = &settings.uploads;
        let args = SupervisorArgs {
            store: store.clone(),
            actors: actors.clone(),
            reservoir_capacity: settings.images.reservoir_capacity,
            upload_deps: UploadDeps {
                store: store.clone(),
                media: media.clone(),
                limits: DecodeLimits {
                    max_width: u.max_width,
                    max_height: u.max_height,
                    max_pixels: u.max_pixels,
                    max_alloc: u.max_decode_bytes,
                },
                image_pool: actors.image_pool.clone(),
            },
            upload_workers: settings.upload_workers(),
            budget: RestartBudget {
                max_restarts: settings.actors.max_restarts,
                window: Duration::from_secs(settings.actors.restart_window_secs),
            },
        };
        let (supervisor, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| AppError::Actors(e.to_string()))?;
        let accounts = Accounts::new(
            store.clone(),
            AccountRules {
                session_ttl: Duration::from_secs(settings.accounts.session_ttl_secs),
                cache_ttl: Duration::from_secs(settings.accounts.cache_ttl_secs),
                max_secondary_emails: settings.accounts.max_secondary_emails,
            },
        );
        let state = http::AppState {
            accounts,
            limits: http::RateLimits::new(&settings.rate_limits),
            upload_slots: Arc::new(Semaphore::new(settings.uploads.max_in_flight)),
            settings: Arc::new(settings),
            store,
            media,
            actors,
            metrics: telemetry::metrics(),
        };
        Ok(Self { state, supervisor })
    }

    /// Handles to the actors (for tests and tools).
    pub fn actors(&self) -> &Actors {
        &self.state.actors
    }

    /// The accounts module (for tools such as `corral admin create`).
    pub fn accounts(&self) -> &Accounts {
        &self.state.accounts
    }

    /// The store the app uses (for tests and tools).
    pub fn store(&self) -> SharedStore {
        self.state.store.clone()
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then shuts down in order:
    /// stop accepting, let in-flight requests finish (bounded by `shutdown_grace_secs`),
    /// stop the actors, close the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let grace = Duration::from_secs(self.state.settings.http.shutdown_grace_secs);
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let router = http::router(self.state.clone());
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        // Without TCP_NODELAY, a streamed body written after its headers waits on the
        // client's delayed ACK (~40 ms per response on keep-alive connections).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, service).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        });
        let deadline = async move {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            result = server => result.map_err(AppError::Serve),
            () = deadline => {
                tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
                Ok(())
            }
        };
        tracing::info!("http stopped; stopping actors");
        self.shutdown().await?;
        served
    }

    /// Stops the actors and closes the store (the second half of an ordered shutdown).
    pub async fn shutdown(self) -> Result<(), AppError> {
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(ACTOR_STOP_WAIT))
            .await;
        let store = self.state.store.clone();
        drop(self.state);
        store.close().await?;
        tracing::info!("store closed");
        Ok(())
    }
}

async fn open_store(settings: &Settings) -> Result<SharedStore, AppError> {
    Ok(match settings.storage.backend {
        Backend::Embedded => Arc::new(EmbeddedStore::open(&settings.storage.data_dir)?),
        Backend::Scylla => Arc::new(ScyllaStore::connect(&scylla_target(settings)).await?),
    })
}

/// The Scylla cluster the settings name.
pub fn scylla_target(settings: &Settings) -> ScyllaTarget {
    ScyllaTarget {
        nodes: settings.scylla.nodes.clone(),
        keyspace: settings.scylla.keyspace.clone(),
        replication_factor: settings.scylla.replication_factor,
    }
}

/// Starts the app and serves until `shutdown` completes.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    App::start(settings).await?.serve(listener, shutdown).await
}
