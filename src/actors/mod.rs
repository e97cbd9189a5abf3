//! The supervised actors and the handles the HTTP layer uses to reach them.
//!
//! ```text
//! supervisor (root)
//! ├── hub          fans pushes out to WebSocket connections, each with a bounded queue
//! ├── image_pool   reservoir sample of all images; publishes a snapshot /random reads
//! ├── uploads      factory of upload workers: inspect, commit, record, tell image_pool
//! ├── mailer       delivers this node's persisted mail queue, retries, dead letters
//! ├── scheduler    leases due-reminder buckets, fires reminders on time into the mailer
//! ├── optimizer    off-peak, makes the eager variants of images that lack them
//! ├── sweeper      removes drafts that expired unattached
//! └── relay        appends this node's notices to the push feed, tells it the others'
//! ```

pub mod hub;
pub mod image_pool;
pub mod mailer;
pub mod optimizer;
pub mod relay;
pub mod scheduler;
pub mod supervisor;
pub mod sweeper;
pub mod uploads;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ractor::concurrency::JoinHandle;
use ractor::{ACTIVE_STATES, ActorRef, Message, MessagingErr};

pub use image_pool::{ImagePoolMsg, Sample};
pub use mailer::MailerMsg;
pub use optimizer::OptimizerMsg;
pub use scheduler::SchedulerMsg;
pub use supervisor::Supervisor;
pub use sweeper::SweeperMsg;
pub use uploads::{Ingested, UploadMsg, UploadsRef};

/// The current `ActorRef` of a supervised child. The supervisor swaps in the new ref
/// when it restarts the child, so holders of the slot always reach the live actor.
pub struct ActorSlot<M>(Arc<ArcSwapOption<ActorRef<M>>>);

impl<M> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for ActorSlot<M> {
    fn default() -> Self {
        Self(Arc::new(ArcSwapOption::empty()))
    }
}

impl<M: Message> ActorSlot<M> {
    /// The live actor, if it is starting or running (a starting actor queues messages).
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .load_full()
            .map(|r| ActorRef::clone(&r))
            .filter(|r| ACTIVE_STATES.contains(&r.get_status()))
    }

    pub(crate) fn set(&self, actor: Option<ActorRef<M>>) {
        self.0.store(actor.map(Arc::new));
    }
}

/// Handles to every actor, cheap to clone into the HTTP state and into tests.
#[derive(Clone, Default)]
pub struct Actors {
    pub image_pool: ActorSlot<ImagePoolMsg>,
    pub uploads: ActorSlot<uploads::UploadsMsg>,
    pub mailer: ActorSlot<MailerMsg>,
    pub scheduler: ActorSlot<SchedulerMsg>,
    pub optimizer: ActorSlot<OptimizerMsg>,
    pub sweeper: ActorSlot<SweeperMsg>,
    pub hub: ActorSlot<hub::HubMsg>,
    pub relay: ActorSlot<relay::RelayMsg>,
    /// The random sample `image_pool` publishes; read without messaging the actor.
    pub sample: Sample,
}

impl Actors {
    /// Where this node's notices go: the hub, the sample, the scheduler, the relay.
    pub fn notices(&self) -> relay::Notices {
        relay::Notices {
            hub: self.hub.clone(),
            image_pool: self.image_pool.clone(),
            scheduler: self.scheduler.clone(),
            relay: self.relay.clone(),
        }
    }

    /// Whether every actor is running (for `/readyz`).
    pub fn all_running(&self) -> bool {
        self.image_pool.get().is_some()
            && self.uploads.get().is_some()
            && self.mailer.get().is_some()
            && self.scheduler.get().is_some()
            && self.optimizer.get().is_some()
            && self.sweeper.get().is_some()
            && self.hub.get().is_some()
            && self.relay.get().is_some()
    }
}

/// One pending "wake me after this long" message to an actor; setting it again replaces
/// the pending one.
pub(crate) struct Alarm<M: Message>(Option<JoinHandle<Result<(), MessagingErr<M>>>>);

impl<M: Message> Default for Alarm<M> {
    fn default() -> Self {
        Self(None)
    }
}

impl<M: Message> Alarm<M> {
    pub(crate) fn set(
        &mut self,
        actor: &ActorRef<M>,
        after: std::time::Duration,
        msg: impl FnOnce() -> M + Send + 'static,
    ) {
        self.clear();
        self.0 = Some(actor.send_after(after, msg));
    }

    pub(crate) fn clear(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.abort();
        }
    }
}
