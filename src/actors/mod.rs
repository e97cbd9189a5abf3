//! The supervised actors and the handles the HTTP layer uses to reach them.
//!
//! ```text
//! supervisor (root)
//! ├── image_pool   reservoir sample of all images; publishes a snapshot /random reads
//! └── uploads      factory of upload workers: inspect, commit, record, tell image_pool
//! ```

pub mod image_pool;
pub mod supervisor;
pub mod uploads;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ractor::{ACTIVE_STATES, ActorRef, Message};

pub use image_pool::{ImagePoolMsg, Sample};
pub use supervisor::Supervisor;
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
    /// The random sample `image_pool` publishes; read without messaging the actor.
    pub sample: Sample,
}

impl Actors {
    /// Whether every actor is running (for `/readyz`).
    pub fn all_running(&self) -> bool {
        self.image_pool.get().is_some() && self.uploads.get().is_some()
    }
}
