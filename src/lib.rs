//! Corral: one server, built from supervised actors, that stores and serves images.
//!
//! Layout: `config` (typed settings), `domain` (plain types, no I/O), `media` (bytes on
//! disk), `store` (metadata backends behind query-shaped traits), `actors` (the supervised
//! workers), `http` (the API). [`App`] wires them together; `main.rs` only parses flags.

pub mod accounts;
pub mod actors;
pub mod app;
pub mod catalogue;
pub mod config;
pub mod domain;
pub mod http;
pub mod images;
pub mod links;
pub mod mail;
pub mod media;
pub mod problem;
pub mod push;
pub mod reminders;
pub mod seed;
pub mod store;
pub mod telemetry;
pub mod views;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use accounts::{AccountRules, Accounts};
use actors::hub::HubArgs;
use actors::mailer::MailerArgs;
use actors::optimizer::OptimizerArgs;
use actors::relay::RelayArgs;
use actors::scheduler::SchedulerArgs;
use actors::supervisor::{RestartBudget, SupervisorArgs, SupervisorMsg};
use actors::sweeper::{Sweeper, SweeperArgs};
use actors::uploads::UploadDeps;
use actors::{Actors, Supervisor};
use config::{Backend, Settings};
use mail::{Composer, RetryPolicy, Transport};
use media::{DecodeLimits, MediaRoot, Variants};
use store::scylla::ScyllaTarget;
use store::{EmbeddedStore, ScyllaStore, SharedStore, StoreError};

/// How long the supervisor may take to stop its children at shutdown.
const ACTOR_STOP_WAIT: Duration = Duration::from_secs(15);

/// Why the app could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the store in {}", .path.display())]
    OpenStore {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("data directory {}: {source}", .path.display())]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("actors failed to start: {0}")]
    Actors(String),
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    #[error(transparent)]
    Mail(#[from] mail::MailError),
    #[error("settling the uploads a crash interrupted: {0}")]
    Intents(#[from] actors::uploads::IngestError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// A started application: store open, actors running, ready to serve.
pub struct App {
    state: app::AppState,
    supervisor: ActorRef<SupervisorMsg>,
    owns_store: bool,
}

impl App {
    /// Opens the store and media root and starts the supervised actors.
    pub async fn start(settings: Settings) -> Result<Self, AppError> {
        let store = open_store(&settings).await?;
        Self::start_on(settings, store, true).await
    }

    /// Starts another node over a store this process has open already, as a second node
    /// sharing one Scylla cluster would (for tests of the scheduler leases). Give it its
    /// own data dir and `node.id`; shutting it down leaves the store open.
    pub async fn start_sharing(settings: Settings, store: SharedStore) -> Result<Self, AppError> {
        Self::start_on(settings, store, false).await
    }

    async fn start_on(
        settings: Settings,
        store: SharedStore,
        owns_store: bool,
    ) -> Result<Self, AppError> {
        // The recorder first: the actors register their series as they start.
        let metrics = telemetry::metrics();
        let node = node_id(&settings)?;
        let links = links::Links::new(
            &settings.http.public_url,
            link_secret(&settings)?.as_bytes(),
        );
        let composer = Composer::new(&settings.mail.from, node.clone(), links.clone())?;
        let transport = Transport::from_settings(&settings.mail, &settings.outbox_dir())?;
        let cache = settings.images.file_cache_mib.saturating_mul(1024 * 1024);
        let media = MediaRoot::open(&settings.storage.data_dir, cache)
            .map_err(data_dir(&settings.storage.data_dir))?;
        let orphans = actors::uploads::settle_intents(&media, &store).await?;
        if orphans > 0 {
            tracing::warn!(orphans, "removed files a crash left without a record");
        }
        let actors = Actors::default();
        let u = &settings.uploads;
        let decode_limits = DecodeLimits {
            max_width: u.max_width,
            max_height: u.max_height,
            max_pixels: u.max_pixels,
            max_alloc: u.max_decode_bytes,
        };
        let variants = Variants::new(media.clone(), decode_limits, settings.variant_makers());
        let decode_slots = Arc::new(Semaphore::new(settings.upload_decoders()));
        let o = &settings.optimizer;
        let eager = o
            .eager
            .iter()
            .cloned()
            .zip(settings.eager_variants()?)
            .collect();
        let draft_ttl = Duration::from_secs(settings.uploads.draft_ttl_secs);
        let images = images::Images::new(
            store.clone(),
            actors.uploads.clone(),
            actors.notices(),
            settings.uploads.max_in_flight,
            images::UploadRules {
                max_in_flight_per_client: settings.uploads.max_in_flight_per_client,
                process_timeout: Duration::from_secs(settings.uploads.process_timeout_secs),
                draft_ttl,
            },
        );
        let args = SupervisorArgs {
            store: store.clone(),
            actors: actors.clone(),
            reservoir_capacity: settings.images.reservoir_capacity,
            upload_deps: UploadDeps {
                store: store.clone(),
                media: media.clone(),
                limits: decode_limits,
                decode_slots: decode_slots.clone(),
                notices: actors.notices(),
                names: actors::uploads::NameLocks::default(),
            },
            hub: HubArgs {
                public_url: settings.http.public_url.clone(),
            },
            upload_workers: u.max_in_flight,
            mailer: MailerArgs {
                store: store.clone(),
                transport,
                composer: composer.clone(),
                policy: RetryPolicy::from_settings(&settings.mail),
                concurrency: settings.mail.concurrency,
                notices: actors.notices(),
            },
            scheduler: SchedulerArgs {
                store: store.clone(),
                composer: composer.clone(),
                mailer: actors.mailer.clone(),
                lookahead: Duration::from_secs(settings.reminders.lookahead_secs),
                tick: Duration::from_millis(settings.reminders.tick_ms),
                lease: Duration::from_secs(settings.reminders.lease_secs),
            },
            optimizer: OptimizerArgs {
                store: store.clone(),
                variants: variants.clone(),
                eager,
                window: o.window,
                batch: o.batch,
                pause: Duration::from_millis(o.pause_ms),
                rest: Duration::from_secs(o.rest_secs),
                media: media.clone(),
                limits: decode_limits,
                recompress: o.recompress,
                notices: actors.notices(),
                cursor_path: settings.storage.data_dir.join("optimizer.json"),
                decode_slots,
                decoders: settings.upload_decoders(),
            },
            sweeper: SweeperArgs {
                images: images.clone(),
                every: Sweeper::pace(draft_ttl),
            },
            relay: RelayArgs {
                store: store.clone(),
                node: node.clone(),
                notices: actors.notices(),
                poll: Duration::from_millis(settings.ws.feed_poll_ms),
            },
            budget: RestartBudget {
                max_restarts: settings.actors.max_restarts,
                window: Duration::from_secs(settings.actors.restart_window_secs),
            },
        };
        let (supervisor, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| AppError::Actors(e.to_string()))?;
        let reminders = reminders::Reminders::new(
            store.clone(),
            actors.scheduler.clone(),
            actors.notices(),
            links,
        );
        let accounts = Accounts::new(
            store.clone(),
            images.clone(),
            reminders.clone(),
            account_rules(&settings),
        );
        let proxies = app::client_ip::TrustedProxies::new(settings.http.trusted_proxies.clone());
        let state = app::AppState::new(app::Shared {
            proxies,
            accounts,
            images,
            reminders,
            settings: Arc::new(settings),
            store,
            media,
            variants,
            actors,
            composer,
            metrics,
            ws_gate: actors::hub::WsGate::default(),
            stopping: tokio::sync::watch::Sender::new(false),
        });
        Ok(Self {
            state,
            supervisor,
            owns_store,
        })
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
        let http = &self.state.settings.http;
        if let Ok(addr) = listener.local_addr() {
            let data_dir = self.state.settings.storage.data_dir.display();
            tracing::info!(%addr, %data_dir, "corral listening");
        }
        let grace = Duration::from_secs(http.shutdown_grace_secs);
        let fd_limit = http::serve::raise_fd_limit();
        let limits = http::serve::ConnLimits {
            header_read_timeout: Duration::from_secs(http.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(http.idle_timeout_secs),
            max_connections: http::serve::connection_cap(http.max_connections, fd_limit),
            max_per_address: http.max_connections_per_address,
        };
        if limits.max_connections < http.max_connections {
            tracing::info!(
                configured = http.max_connections,
                fd_limit,
                max_connections = limits.max_connections,
                "http.max_connections lowered to stay below the open-file limit"
            );
        }
        let router = http::router(self.state.clone());
        let mut server = std::pin::pin!(http::serve::serve(
            listener,
            router,
            limits,
            self.state.stopping.subscribe()
        ));
        tokio::select! {
            () = &mut server => {}
            () = shutdown => {
                // One flag for every connection: plain ones finish their request in flight
                // and close, WebSockets close with 1001.
                self.state.stopping.send_replace(true);
                if tokio::time::timeout(grace, server).await.is_err() {
                    tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
                }
            }
        }
        tracing::info!("http stopped; stopping actors");
        self.shutdown().await
    }

    /// Stops the actors and closes the store (the second half of an ordered shutdown).
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.state.stopping.send_replace(true);
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(ACTOR_STOP_WAIT))
            .await;
        let store = self.state.store.clone();
        drop(self.state);
        if self.owns_store {
            store.close().await?;
            tracing::info!("store closed");
        }
        Ok(())
    }
}

/// This node's id: `node.id`, or a random one kept in `<data_dir>/node_id`.
fn node_id(settings: &Settings) -> Result<String, AppError> {
    kept(settings, &settings.node.id, "node_id", || {
        uuid::Uuid::now_v7().simple().to_string()
    })
}

/// The key of the links in mails: `mail.link_secret`, or a random one kept in
/// `<data_dir>/link_secret` (nodes answering each other's links must share one).
fn link_secret(settings: &Settings) -> Result<String, AppError> {
    kept(
        settings,
        &settings.mail.link_secret.0,
        "link_secret",
        || hex::encode(rand::random::<[u8; 32]>()),
    )
}

/// `configured` if set, else the random value kept in `<data_dir>/<file>` (made once).
fn kept(
    settings: &Settings,
    configured: &str,
    file: &str,
    make: fn() -> String,
) -> Result<String, AppError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let dir = &settings.storage.data_dir;
    std::fs::create_dir_all(dir).map_err(data_dir(dir))?;
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(value) if !value.trim().is_empty() => {
            // Files kept by older versions were world-readable.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
            Ok(value.trim().to_owned())
        }
        Ok(_) => keep_new(&path, make()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => keep_new(&path, make()),
        Err(e) => Err(data_dir(&path)(e)),
    }
}

fn keep_new(path: &std::path::Path, value: String) -> Result<String, AppError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create(true).truncate(true);
    // Readable by this user only: the link secret signs unsubscribe links.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    file.open(&tmp)
        .and_then(|mut f| f.write_all(value.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(data_dir(&tmp))?;
    std::fs::rename(&tmp, path).map_err(data_dir(path))?;
    Ok(value)
}

/// The accounts module's settings.
fn account_rules(settings: &Settings) -> AccountRules {
    AccountRules {
        session_ttl: Duration::from_secs(settings.accounts.session_ttl_secs),
        cache_ttl: Duration::from_secs(settings.accounts.cache_ttl_secs),
        max_secondary_emails: settings.accounts.max_secondary_emails,
    }
}

/// Creates an admin, or promotes the existing user of that name: straight through the
/// store, with no actors, so a tool run on a stopped server's data dir fires no reminder
/// and sends no mail.
pub async fn create_admin(
    settings: &Settings,
    username: domain::Username,
    email: domain::Email,
    password: domain::Password,
) -> Result<domain::User, AppError> {
    let store = open_store(settings).await?;
    // The services a deletion would use are never called here; their actors stay unset.
    let images = images::Images::new(
        store.clone(),
        Default::default(),
        Default::default(),
        1,
        images::UploadRules {
            max_in_flight_per_client: 1,
            process_timeout: Duration::from_secs(1),
            draft_ttl: Duration::from_secs(settings.uploads.draft_ttl_secs),
        },
    );
    let links = links::Links::new("", b"");
    let reminders =
        reminders::Reminders::new(store.clone(), Default::default(), Default::default(), links);
    let accounts = Accounts::new(store.clone(), images, reminders, account_rules(settings));
    let user = accounts
        .create_or_promote_admin(username, email, password)
        .await;
    store.close().await?;
    Ok(user?)
}

/// An I/O failure on `path` in the data directory, naming it.
pub(crate) fn data_dir(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AppError + '_ {
    move |source| AppError::DataDir {
        path: path.to_owned(),
        source,
    }
}

pub(crate) async fn open_store(settings: &Settings) -> Result<SharedStore, AppError> {
    Ok(match settings.storage.backend {
        Backend::Embedded => {
            let cache = settings.storage.cache_mib.saturating_mul(1024 * 1024);
            let cache = usize::try_from(cache).unwrap_or(usize::MAX);
            let dir = &settings.storage.data_dir;
            let store = EmbeddedStore::open_with_cache(dir, cache).map_err(|source| {
                AppError::OpenStore {
                    path: dir.clone(),
                    source,
                }
            })?;
            Arc::new(store)
        }
        Backend::Scylla => Arc::new(ScyllaStore::connect(&scylla_target(settings)).await?),
    })
}

/// The Scylla cluster the settings name.
pub fn scylla_target(settings: &Settings) -> ScyllaTarget {
    ScyllaTarget {
        nodes: settings.scylla.nodes.clone(),
        keyspace: settings.scylla.keyspace.clone(),
        replication_factor: settings.scylla.replication_factor,
        datacenter: Some(settings.scylla.datacenter.clone()).filter(|dc| !dc.is_empty()),
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
