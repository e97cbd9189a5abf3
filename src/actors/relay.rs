//! `relay` carries notices between the nodes that share one store. What happens on this
//! node is told here at once ([`Notices::announce`]: the hub pushes it, the sample takes
//! it) and handed to the relay, which appends it to the store's push feed. The relay also
//! tails the feed, every `ws.feed_poll_ms`, from a watermark, and tells this node what
//! the other nodes published (skipping its own entries and any it has seen).
//!
//! Ids are v7 UUIDs made by each node's clock as the entries are appended, so an entry
//! can land in the feed with an id a little older than ones already read (clock skew, a
//! slow write). Each read therefore starts [`OVERLAP`] before now (or at the watermark
//! after a failed read, whichever is older) and the ids seen since then are remembered,
//! so a late entry is still read once and an early one not twice. Pushes are best effort: a notice the store could not
//! take is logged, counted and dropped. On the embedded store the feed is in memory
//! (one process holds the file), so the same path serves nodes that share a store in
//! one process, as the tests' do. Supervised by the root supervisor; a restarted relay
//! starts from now.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use uuid::Uuid;

use super::hub::HubMsg;
use super::image_pool::ImagePoolMsg;
use super::scheduler::SchedulerMsg;
use super::{ActorSlot, Alarm};
use crate::domain::v7_floor;
use crate::domain::{FeedEntry, Notice, ReminderUpdate};
use crate::store::SharedStore;

/// How far before now each read of the feed starts: room for clock skew between nodes,
/// for a write that took long to land (a retry, a slow replica) and for replication to
/// this node's datacenter. Each read re-reads this much of the feed; the seen ids make
/// that harmless.
pub const OVERLAP: Duration = Duration::from_secs(5);

/// Entries read from the feed per store call.
const READ_PAGE: usize = 500;

/// Notices waiting to be appended, at most; past it the oldest are dropped.
const MAX_PENDING: usize = 10_000;

/// Where notices go on this node: the hub, the sample, and the relay for the others;
/// the scheduler hears of other nodes' reminders. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notices {
    pub hub: ActorSlot<HubMsg>,
    pub image_pool: ActorSlot<ImagePoolMsg>,
    pub scheduler: ActorSlot<SchedulerMsg>,
    pub relay: ActorSlot<RelayMsg>,
}

impl Notices {
    /// Tells this node and, through the feed, every other node.
    pub fn announce(&self, notice: Notice) {
        self.deliver(&notice);
        if let Some(relay) = self.relay.get() {
            let _ = relay.send_message(RelayMsg::Publish(notice));
        }
    }

    /// Tells this node what another node published: as [`Notices::deliver`], and the
    /// scheduler of reminders made, moved or done there (its own it hears of directly),
    /// so a node holding the lease of a reminder's bucket loads it at once, not at its
    /// next tick.
    fn relayed(&self, notice: &Notice) {
        self.deliver(notice);
        if let (Notice::Reminder { update, reminder }, Some(scheduler)) =
            (notice, self.scheduler.get())
        {
            let msg = match update {
                ReminderUpdate::Scheduled | ReminderUpdate::Rescheduled => {
                    SchedulerMsg::Scheduled {
                        id: reminder.id,
                        remind_at: reminder.remind_at,
                    }
                }
                ReminderUpdate::Sent | ReminderUpdate::Failed | ReminderUpdate::Cancelled => {
                    SchedulerMsg::Cancelled(reminder.id)
                }
            };
            let _ = scheduler.send_message(msg);
        }
    }

    /// Tells this node only: its WebSocket subscribers and its sample.
    fn deliver(&self, notice: &Notice) {
        let pool = |msg| {
            if let Some(pool) = self.image_pool.get() {
                let _ = pool.cast(msg);
            }
        };
        let hub = |msg| {
            if let Some(hub) = self.hub.get() {
                let _ = hub.send_message(msg);
            }
        };
        match notice {
            Notice::ImageCreated { image } => {
                pool(ImagePoolMsg::Add(image.summary()));
                hub(HubMsg::ImageCreated(image.clone()));
            }
            Notice::ImageChanged { image } => pool(ImagePoolMsg::Update(image.summary())),
            Notice::ImageDeleted { id } => pool(ImagePoolMsg::Remove(*id)),
            Notice::Reminder { update, reminder } => {
                hub(HubMsg::Reminder(*update, reminder.clone()));
            }
        }
    }
}

pub enum RelayMsg {
    /// A notice of this node's, for the feed (its entry's id is given when it is
    /// appended, so the id's time is close to the time it lands).
    Publish(Notice),
    /// Append what is pending.
    Flush,
    /// Read the feed.
    Poll,
}

#[derive(Clone)]
pub struct RelayArgs {
    pub store: SharedStore,
    /// This node's `node.id`, written as each entry's origin.
    pub node: String,
    pub notices: Notices,
    /// Between reads of the feed (`ws.feed_poll_ms`).
    pub poll: Duration,
}

pub struct Relay;

pub struct RelayState {
    args: RelayArgs,
    pending: Vec<Notice>,
    /// Where this relay started: what was published before is not told.
    start: Uuid,
    /// The newest id read.
    watermark: Uuid,
    /// Ids read since the start of the last read, so none is told twice.
    seen: BTreeSet<Uuid>,
    alarm: Alarm<RelayMsg>,
}

impl Actor for Relay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RelayArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut alarm = Alarm::default();
        alarm.set(&myself, args.poll, || RelayMsg::Poll);
        let start = v7_floor(Utc::now());
        Ok(RelayState {
            args,
            pending: Vec::new(),
            start,
            watermark: start,
            seen: BTreeSet::new(),
            alarm,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.alarm.clear();
        // Notices queued before the stop still reach the other nodes.
        flush(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: RelayMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayMsg::Publish(notice) => {
                if state.pending.len() >= MAX_PENDING {
                    state.pending.remove(0);
                    metrics::counter!("corral_push_feed_errors_total", "op" => "append")
                        .increment(1);
                }
                state.pending.push(notice);
                // Notices that queue up behind this message share its append.
                if state.pending.len() == 1 {
                    let _ = myself.send_message(RelayMsg::Flush);
                }
            }
            RelayMsg::Flush => flush(state).await,
            RelayMsg::Poll => {
                poll(state).await;
                state.alarm.set(&myself, state.args.poll, || RelayMsg::Poll);
            }
        }
        Ok(())
    }
}

/// Appends the pending notices; on failure they are dropped (pushes are best effort).
async fn flush(state: &mut RelayState) {
    if state.pending.is_empty() {
        return;
    }
    let node = &state.args.node;
    let batch: Vec<FeedEntry> = std::mem::take(&mut state.pending)
        .into_iter()
        .map(|notice| FeedEntry::new(node, notice))
        .collect();
    if let Err(e) = state.args.store.append_feed(&batch).await {
        metrics::counter!("corral_push_feed_errors_total", "op" => "append").increment(1);
        tracing::warn!(notices = batch.len(), error = %e, "could not append to the push feed; other nodes miss these notices");
    }
}

/// Reads what the feed holds since the last read (less [`OVERLAP`]) and tells this node
/// of the other nodes' entries it has not seen.
async fn poll(state: &mut RelayState) {
    let overlap = chrono::Duration::from_std(OVERLAP).unwrap_or_default();
    let read_from = v7_floor(Utc::now() - overlap);
    let floor = state.watermark.min(read_from).max(state.start);
    // Ids below the floor are never read again.
    state.seen = state.seen.split_off(&floor);
    let mut after = floor;
    loop {
        let entries = match state.args.store.read_feed(after, READ_PAGE).await {
            Ok(entries) => entries,
            Err(e) => {
                metrics::counter!("corral_push_feed_errors_total", "op" => "read").increment(1);
                tracing::warn!(error = %e, "could not read the push feed; trying again at the next poll");
                return;
            }
        };
        let full = entries.len() == READ_PAGE;
        for entry in entries {
            after = entry.id;
            state.watermark = state.watermark.max(entry.id);
            if !state.seen.insert(entry.id) || entry.origin == state.args.node {
                continue;
            }
            metrics::counter!("corral_push_feed_relayed_total").increment(1);
            state.args.notices.relayed(&entry.notice);
        }
        if !full {
            // Read up to now: the next read need not reach further back than its own
            // overlap, however long the feed has been quiet.
            state.watermark = state.watermark.max(read_from);
            return;
        }
    }
}
