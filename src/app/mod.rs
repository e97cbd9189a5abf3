//! What both frontends (`http` and `ws`) stand on: the state every handler reaches and
//! the extractors for the signed-in user and JSON bodies. The problem+json error is
//! `crate::problem`.

pub mod client_ip;
pub mod extract;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accounts::Accounts;
use crate::actors::Actors;
use crate::config::Settings;
use crate::images::Images;
use crate::media::MediaRoot;
use crate::reminders::Reminders;
use crate::store::SharedStore;

/// What every handler can reach: one `Arc`, so the clones every extractor and layer
/// make per request cost one reference count (cloning the fields, moka caches included,
/// was a fifth of the server's CPU time under load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    pub media: MediaRoot,
    /// Makes and opens image variants (`GET /i/{name}?w=`).
    pub variants: crate::media::Variants,
    pub actors: Actors,
    pub accounts: Accounts,
    pub images: Images,
    pub reminders: Reminders,
    /// Renders the mails this node queues.
    pub composer: crate::mail::Composer,
    pub metrics: PrometheusHandle,
    /// Open WebSocket connections, against `ws.max_connections`.
    pub ws_gate: crate::actors::hub::WsGate,
    /// Reverse proxies whose forwarding headers name the client (`http.trusted_proxies`).
    pub proxies: client_ip::TrustedProxies,
    /// Set when the server starts shutting down; open WebSockets close (1001).
    pub stopping: tokio::sync::watch::Sender<bool>,
}
