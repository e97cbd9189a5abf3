//! `hub` fans pushes out to WebSocket connections: it owns who is subscribed to what
//! (`images`, and each user's `reminders`), renders each push to its JSON frame once, and
//! puts the frame in every subscriber's [`Outbox`]. Outboxes are bounded: a slow reader
//! loses its oldest frames and is told how many, so a stalled client costs the server
//! at most `ws.queue` frames. The connections (`crate::ws`) join and leave by message; a
//! restarted hub starts empty, and each connection, seeing a new hub at its next heartbeat,
//! joins it again with its subscriptions.
//! Supervised by the root supervisor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use super::ActorSlot;
use crate::domain::ReminderUpdate;
use crate::domain::{Image, Reminder, UserId};
use crate::push;

/// One WebSocket connection, numbered by the process.
pub type ConnId = u64;

/// What a connection can subscribe to through the hub (`images.random` needs no hub:
/// each connection draws from the sample itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Images,
    Reminders(UserId),
}

pub enum HubMsg {
    Join {
        conn: ConnId,
        outbox: Arc<Outbox>,
    },
    Leave(ConnId),
    Subscribe {
        conn: ConnId,
        feed: Feed,
    },
    Unsubscribe {
        conn: ConnId,
        feed: Feed,
    },
    /// A new image was stored.
    ImageCreated(Box<Image>),
    /// One of a user's reminders changed.
    Reminder(ReminderUpdate, Box<Reminder>),
}

#[derive(Clone)]
pub struct HubArgs {
    /// Prefix of the image URLs in pushes (`http.public_url`).
    pub public_url: String,
}

pub struct Hub;

#[derive(Default)]
pub struct HubState {
    public_url: String,
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    images: HashSet<ConnId>,
    reminders: HashMap<UserId, HashSet<ConnId>>,
}

impl HubState {
    fn unsubscribe(&mut self, conn: ConnId, feed: Feed) {
        match feed {
            Feed::Images => {
                self.images.remove(&conn);
            }
            Feed::Reminders(user) => {
                if let Some(conns) = self.reminders.get_mut(&user) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        self.reminders.remove(&user);
                    }
                }
            }
        }
    }

    /// Sets `corral_ws_subscriptions{topic}` after a change.
    fn count_subscriptions(&self) {
        let reminders: usize = self.reminders.values().map(HashSet::len).sum();
        metrics::gauge!("corral_ws_subscriptions", "topic" => "images")
            .set(self.images.len() as f64);
        metrics::gauge!("corral_ws_subscriptions", "topic" => "reminders").set(reminders as f64);
    }

    fn push<'a>(&self, to: impl IntoIterator<Item = &'a ConnId>, frame: &Utf8Bytes) {
        for conn in to {
            if let Some(outbox) = self.outboxes.get(conn) {
                outbox.push(frame.clone());
            }
        }
    }
}

impl Actor for Hub {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = HubArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: HubArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Export the series at 0 so dashboards see them before the first event.
        metrics::counter!("corral_ws_lagged_total").increment(0);
        metrics::counter!("corral_ws_messages_sent_total").increment(0);
        metrics::gauge!("corral_ws_connections").increment(0.0);
        Ok(HubState {
            public_url: args.public_url,
            ..HubState::default()
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: HubMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HubMsg::Join { conn, outbox } => {
                state.outboxes.insert(conn, outbox);
            }
            HubMsg::Leave(conn) => {
                state.outboxes.remove(&conn);
                state.images.remove(&conn);
                state.reminders.retain(|_, conns| {
                    conns.remove(&conn);
                    !conns.is_empty()
                });
                state.count_subscriptions();
            }
            HubMsg::Subscribe { conn, feed } => {
                if state.outboxes.contains_key(&conn) {
                    match feed {
                        Feed::Images => {
                            state.images.insert(conn);
                        }
                        Feed::Reminders(user) => {
                            state.reminders.entry(user).or_default().insert(conn);
                        }
                    }
                    state.count_subscriptions();
                }
            }
            HubMsg::Unsubscribe { conn, feed } => {
                state.unsubscribe(conn, feed);
                state.count_subscriptions();
            }
            HubMsg::ImageCreated(image) => {
                if !state.images.is_empty() {
                    let frame = push::image_created(&image, &state.public_url);
                    state.push(&state.images, &frame);
                }
            }
            HubMsg::Reminder(update, reminder) => {
                if let Some(conns) = state.reminders.get(&reminder.user_id) {
                    let frame = push::reminder(update, &reminder);
                    state.push(conns, &frame);
                }
            }
        }
        Ok(())
    }
}

/// Sends `msg` to the hub if it is running; pushes are best effort.
pub fn publish(hub: &ActorSlot<HubMsg>, msg: HubMsg) {
    if let Some(hub) = hub.get() {
        let _ = hub.send_message(msg);
    }
}

/// A connection's bounded queue of frames: the hub pushes, the connection pops. When it
/// is full the oldest frame is dropped and counted; the connection reports the count
/// (`lagged`) before the next frame it sends.
pub struct Outbox {
    inner: Mutex<Queue>,
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    dropped: u64,
}

/// Slots an outbox keeps once drained; it starts with none and grows (to `ws.queue`
/// at most) only while frames wait.
const IDLE_SLOTS: usize = 4;

/// What a connection gets from its outbox.
pub enum Next {
    Frame(Utf8Bytes),
    /// This many frames were dropped since the last `Lagged`.
    Lagged(u64),
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Queue::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock guards plain data; a panic while holding it cannot leave it torn.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, frame: Utf8Bytes) {
        {
            let mut q = self.lock();
            if q.frames.len() >= self.capacity {
                q.frames.pop_front();
                q.dropped += 1;
                metrics::counter!("corral_ws_lagged_total").increment(1);
            }
            q.frames.push_back(frame);
        }
        self.ready.notify_one();
    }

    /// How many frames are waiting.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next thing to send, waiting for one.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut q = self.lock();
                if q.dropped > 0 {
                    return Next::Lagged(std::mem::take(&mut q.dropped));
                }
                if let Some(frame) = q.frames.pop_front() {
                    if q.frames.is_empty() && q.frames.capacity() > IDLE_SLOTS {
                        // Drained after a burst: give back the slots, so a connection
                        // at rest does not hold its busiest moment (up to `ws.queue`).
                        q.frames.shrink_to(IDLE_SLOTS);
                    }
                    return Next::Frame(frame);
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Counts open connections against `ws.max_connections`.
#[derive(Default)]
pub struct WsGate {
    open: Arc<AtomicUsize>,
}

/// One admitted connection; dropping it frees the place.
pub struct WsPermit(Arc<AtomicUsize>);

impl WsGate {
    pub fn admit(&self, max: usize) -> Option<WsPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("corral_ws_connections").increment(1.0);
        Some(WsPermit(self.open.clone()))
    }
}

impl Drop for WsPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("corral_ws_connections").decrement(1.0);
    }
}
