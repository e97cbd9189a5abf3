//! `GET /v1/ws`: live pushes over WebSocket. Each connection runs one task that reads the
//! client's messages, sends what the `hub` actor queued for it (see
//! [`crate::actors::hub::Outbox`]), ticks its own `images.random` stream from the sample,
//! and pings the client; a client silent for `ws.idle_secs` is closed. Connections over
//! `ws.max_connections` are refused with 503 before the upgrade.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use ractor::ActorId;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::actors::hub::{ConnId, Feed, HubMsg, Next, Outbox};
use crate::app::AppState;
use crate::app::extract::{MaybeUser, bearer};
use crate::domain::User;
use crate::problem::{ApiError, ProblemDoc, echo};
use crate::push::{self, ClientMsg, Topic};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(connect))
}

/// Live pushes over WebSocket.
///
/// Upgrade to a WebSocket, then send JSON text frames: `{"op":"subscribe","topic":"images"}`
/// (every new upload), `{"op":"subscribe","topic":"images.random","interval_ms":1000}` (a
/// random image every interval, at least 100 ms), `{"op":"subscribe","topic":"reminders"}`
/// (your reminders' updates; needs a session), `{"op":"unsubscribe","topic":...}`, and
/// `{"op":"auth","token":...}` (or send `Authorization: Bearer` with the upgrade). The
/// server sends `{"topic":...,"event":...,"data":...}`; see the README for the events.
#[utoipa::path(
    get, path = "/v1/ws", tag = "push",
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "The bearer token is invalid or expired", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Too many open connections; see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])),
)]
async fn connect(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!(
            "this route takes a WebSocket upgrade (GET with Upgrade: websocket): {}",
            e.body_text()
        ))
    })?;
    let limits = &state.settings.ws;
    let permit =
        state
            .ws_gate
            .admit(limits.max_connections)
            .ok_or_else(|| ApiError::Overloaded {
                detail: "too many open WebSocket connections; retry shortly".into(),
                retry_after_secs: 5,
            })?;
    let max = limits.max_message_bytes;
    let token = user.as_ref().and(bearer(&headers)).map(str::to_owned);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            Connection::new(state, user, token).run(socket).await;
        }))
}

/// The read buffer each connection allocates (and fills) at its first read, and keeps.
/// tungstenite's default, 128 KiB, was nearly all of an idle connection's memory. Clients
/// send small JSON messages; one up to `ws.max_message_bytes` grows the buffer to fit as
/// it is read. (The write buffer needs no setting: it starts empty, grows to the largest
/// frame sent, and every send here flushes it.)
const READ_BUFFER: usize = 1024;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Leaves the hub when the connection ends, however it ends.
struct Membership {
    hub: crate::actors::ActorSlot<HubMsg>,
    conn: ConnId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        crate::actors::hub::publish(&self.hub, HubMsg::Leave(self.conn));
    }
}

/// A connection's subscriptions and what it needs to serve them.
struct Connection {
    id: ConnId,
    state: AppState,
    user: Option<Arc<User>>,
    /// The session `user` came from, checked again at every heartbeat.
    token: Option<String>,
    outbox: Arc<Outbox>,
    /// The hub this connection joined (a restarted hub has a new id).
    hub: Option<ActorId>,
    images: bool,
    reminders: bool,
    random: Option<Interval>,
}

/// Why the loop ended: with a close frame to send, or because the client went away.
type Ending = Option<CloseFrame>;

impl Connection {
    fn new(state: AppState, user: Option<Arc<User>>, token: Option<String>) -> Self {
        let queue = state.settings.ws.queue;
        Self {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            state,
            user,
            token,
            outbox: Arc::new(Outbox::new(queue)),
            hub: None,
            images: false,
            reminders: false,
            random: None,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let limits = self.state.settings.ws.clone();
        let ping_every = Duration::from_secs(limits.ping_secs);
        let idle = Duration::from_secs(limits.idle_secs);
        let (mut sink, mut stream) = socket.split();
        let _member = Membership {
            hub: self.state.actors.hub.clone(),
            conn: self.id,
        };
        let mut stopping = self.state.stopping.subscribe();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let ending: Ending = loop {
            // Cheap (one atomic load) unless the hub restarted since the last turn.
            self.join();
            let out = tokio::select! {
                incoming = stream.next() => {
                    heard = Instant::now();
                    match incoming {
                        None | Some(Ok(Message::Close(_))) => break None,
                        Some(Err(e)) => break too_big(e).then(|| CloseFrame {
                            code: close_code::SIZE,
                            reason: "message too big".into(),
                        }),
                        // Boxed, like the session check below: both wait on the
                        // store, and their futures would otherwise sit inline, at
                        // rest, in every connection's task.
                        Some(Ok(Message::Text(text))) => Box::pin(self.handle(&text)).await,
                        Some(Ok(Message::Binary(_))) => Some(push::error(
                            None,
                            "send JSON text frames, not binary ones",
                        )),
                        Some(Ok(_)) => None, // ping or pong: only `heard` matters
                    }
                }
                next = self.outbox.next() => Some(match next {
                    Next::Frame(frame) => frame,
                    Next::Lagged(missed) => push::lagged(missed),
                }),
                () = tick(&mut self.random) => {
                    let public_url = &self.state.settings.http.public_url;
                    self.state
                        .actors
                        .sample
                        .pick(1)
                        .first()
                        .map(|entry| push::random_image(entry, public_url))
                }
                _ = ping.tick() => {
                    if heard.elapsed() >= idle {
                        break Some(CloseFrame {
                            code: close_code::AWAY,
                            reason: "idle: nothing heard from the client".into(),
                        });
                    }
                    if !send(&mut sink, idle, Message::Ping(Default::default())).await {
                        break None;
                    }
                    Box::pin(self.recheck_session()).await
                }
                () = shutting_down(&mut stopping) => break Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "the server is shutting down".into(),
                }),
            };
            if let Some(frame) = out {
                if !send(&mut sink, idle, Message::Text(frame)).await {
                    break None;
                }
                metrics::counter!("corral_ws_messages_sent_total").increment(1);
            }
        };
        // Send our close frame, or flush the reply to the client's, then close.
        let bye = async {
            if let Some(close) = ending {
                let _ = sink.send(Message::Close(Some(close))).await;
            }
            let _ = sink.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    }

    /// Whether the session this connection acts for still holds (it may have signed
    /// out or expired); if not, the connection stops acting for it.
    async fn recheck_session(&mut self) -> Option<Utf8Bytes> {
        let token = self.token.as_deref()?;
        match self.state.accounts.authenticate(token).await {
            Ok(Some(_)) | Err(_) => None,
            Ok(None) => {
                if let (true, Some(user)) = (self.reminders, &self.user) {
                    self.hub_send(HubMsg::Unsubscribe {
                        conn: self.id,
                        feed: Feed::Reminders(user.id),
                    });
                }
                self.reminders = false;
                self.user = None;
                self.token = None;
                Some(push::error(
                    Some(Topic::Reminders),
                    "the session ended (signed out or expired); send auth again to follow your reminders",
                ))
            }
        }
    }

    /// Joins the running hub if it is not the one joined before (first call, or the hub
    /// restarted), subscribing again to what this connection follows.
    fn join(&mut self) {
        let Some(hub) = self.state.actors.hub.get() else {
            self.hub = None;
            return;
        };
        if self.hub == Some(hub.get_id()) {
            return;
        }
        let _ = hub.send_message(HubMsg::Join {
            conn: self.id,
            outbox: self.outbox.clone(),
        });
        for feed in self.feeds() {
            let _ = hub.send_message(HubMsg::Subscribe {
                conn: self.id,
                feed,
            });
        }
        self.hub = Some(hub.get_id());
    }

    fn feeds(&self) -> Vec<Feed> {
        let mut feeds = Vec::new();
        if self.images {
            feeds.push(Feed::Images);
        }
        if let (true, Some(user)) = (self.reminders, &self.user) {
            feeds.push(Feed::Reminders(user.id));
        }
        feeds
    }

    fn hub_send(&self, msg: HubMsg) {
        crate::actors::hub::publish(&self.state.actors.hub, msg);
    }

    /// Handles one client message; returns the reply.
    async fn handle(&mut self, text: &str) -> Option<Utf8Bytes> {
        let msg = match serde_json::from_str::<ClientMsg>(text) {
            Ok(msg) => msg,
            Err(e) => {
                return Some(push::error(
                    None,
                    &format!(
                        "not a message this server understands ({e}); send {{\"op\": \"subscribe\" | \"unsubscribe\" | \"auth\", ...}}"
                    ),
                ));
            }
        };
        let topic_of = |name: &str| {
            Topic::parse(name).ok_or_else(|| {
                push::error(
                    None,
                    &format!(
                        "unknown topic {}; the topics are images, images.random and reminders",
                        echo(name)
                    ),
                )
            })
        };
        Some(match msg {
            ClientMsg::Auth { token } => self.auth(&token).await,
            ClientMsg::Subscribe { topic, interval_ms } => match topic_of(&topic) {
                Ok(topic) => self.subscribe(topic, interval_ms),
                Err(refusal) => refusal,
            },
            ClientMsg::Unsubscribe { topic } => match topic_of(&topic) {
                Ok(topic) => self.unsubscribe(topic),
                Err(refusal) => refusal,
            },
        })
    }

    async fn auth(&mut self, token: &str) -> Utf8Bytes {
        let user = match self.state.accounts.authenticate(token).await {
            Ok(Some(user)) => user,
            Ok(None) => {
                return push::error(None, "the session is invalid or has expired; sign in again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check a WebSocket session");
                return push::error(None, "could not check the session; try again");
            }
        };
        if self.reminders {
            // Follow the new user's reminders instead of the old one's.
            if let Some(old) = &self.user {
                self.hub_send(HubMsg::Unsubscribe {
                    conn: self.id,
                    feed: Feed::Reminders(old.id),
                });
            }
            self.hub_send(HubMsg::Subscribe {
                conn: self.id,
                feed: Feed::Reminders(user.id),
            });
        }
        let reply = push::authenticated(&user.id.to_string(), user.username.as_str());
        self.user = Some(user);
        self.token = Some(token.to_owned());
        reply
    }

    fn subscribe(&mut self, topic: Topic, interval_ms: Option<u64>) -> Utf8Bytes {
        match topic {
            Topic::Images => {
                self.images = true;
                self.hub_send(HubMsg::Subscribe {
                    conn: self.id,
                    feed: Feed::Images,
                });
            }
            Topic::ImagesRandom => {
                let ms = interval_ms.unwrap_or(push::DEFAULT_RANDOM_INTERVAL_MS);
                if !(push::MIN_RANDOM_INTERVAL_MS..=push::MAX_RANDOM_INTERVAL_MS).contains(&ms) {
                    return push::error(
                        Some(topic),
                        &format!(
                            "interval_ms must be {} to {}, not {ms}",
                            push::MIN_RANDOM_INTERVAL_MS,
                            push::MAX_RANDOM_INTERVAL_MS
                        ),
                    );
                }
                let every = Duration::from_millis(ms);
                let mut interval = tokio::time::interval_at(Instant::now() + every, every);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.random = Some(interval);
            }
            Topic::Reminders => {
                let Some(user) = &self.user else {
                    return push::error(
                        Some(topic),
                        "sign in first: send {\"op\": \"auth\", \"token\": ...} or connect with Authorization: Bearer",
                    );
                };
                self.reminders = true;
                self.hub_send(HubMsg::Subscribe {
                    conn: self.id,
                    feed: Feed::Reminders(user.id),
                });
            }
        }
        push::ack(topic, "subscribed")
    }

    fn unsubscribe(&mut self, topic: Topic) -> Utf8Bytes {
        match topic {
            Topic::Images => {
                self.images = false;
                self.hub_send(HubMsg::Unsubscribe {
                    conn: self.id,
                    feed: Feed::Images,
                });
            }
            Topic::ImagesRandom => self.random = None,
            Topic::Reminders => {
                if let (true, Some(user)) = (self.reminders, &self.user) {
                    self.hub_send(HubMsg::Unsubscribe {
                        conn: self.id,
                        feed: Feed::Reminders(user.id),
                    });
                }
                self.reminders = false;
            }
        }
        push::ack(topic, "unsubscribed")
    }
}

/// Sends one frame; false when the client is gone. A send that cannot complete within
/// `idle` (a client that stopped reading, its socket buffers full) counts as gone.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    idle: Duration,
    frame: Message,
) -> bool {
    matches!(
        tokio::time::timeout(idle, sink.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Waits until the server starts shutting down.
async fn shutting_down(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Waits for the interval's next tick, or forever without one.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether a read failed because the client's message was over the size limit.
fn too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}
