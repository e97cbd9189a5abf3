//! `sweeper` removes drafts nobody attached. A draft is gone for every reader from the
//! moment it expires (reads check its expiry); the sweeper then deletes its record, and
//! its file once no other draft shares it, through the upload workers like any delete.
//! It reads the store's index of drafts by expiry, never a scan of every image, and
//! deletes only drafts expired for one sweep interval at least, so an attach that read a
//! draft just before its expiry has landed first. Supervised by the root supervisor.

use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::Alarm;
use crate::images::Images;

/// Drafts deleted per store read.
const SWEEP_PAGE: usize = 100;

pub enum SweeperMsg {
    Sweep,
}

#[derive(Clone)]
pub struct SweeperArgs {
    pub images: Images,
    /// Between sweeps; also how long a draft stays expired before it is deleted.
    pub every: Duration,
}

pub struct Sweeper;

pub struct SweeperState {
    args: SweeperArgs,
    alarm: Alarm<SweeperMsg>,
}

impl Sweeper {
    /// The pace for a draft lifetime: a quarter of it, between a quarter second and a
    /// minute.
    pub fn pace(draft_ttl: Duration) -> Duration {
        (draft_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
    }
}

impl Actor for Sweeper {
    type Msg = SweeperMsg;
    type State = SweeperState;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SweeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut alarm = Alarm::default();
        alarm.set(&myself, args.every, || SweeperMsg::Sweep);
        Ok(SweeperState { args, alarm })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.alarm.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SweeperMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SweeperMsg::Sweep => {
                // One page per message, so a stop never waits for a long backlog: a full
                // page that removed something is followed at once by the next.
                let next = match sweep(&state.args).await {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => state.args.every,
                    Err(e) => {
                        // The drafts are still indexed; the next sweep tries again.
                        tracing::warn!(error = %e, "sweeping expired drafts failed");
                        state.args.every
                    }
                };
                state.alarm.set(&myself, next, || SweeperMsg::Sweep);
            }
        }
        Ok(())
    }
}

/// Deletes one page of expired drafts; whether there may be more now.
#[tracing::instrument(name = "sweeper.sweep", skip_all)]
async fn sweep(args: &SweeperArgs) -> Result<bool, crate::images::ImagesError> {
    let grace = chrono::Duration::from_std(args.every).unwrap_or(chrono::Duration::MAX);
    let before = Utc::now() - grace;
    let ids = args
        .images
        .store()
        .expired_drafts(before, SWEEP_PAGE)
        .await?;
    let full = ids.len() == SWEEP_PAGE;
    let mut deleted = 0;
    let mut failed = None;
    for id in ids {
        // One draft that cannot be deleted now does not hold up the rest of the page.
        match args.images.delete_expired(id, before).await {
            Ok(gone) => deleted += u64::from(gone),
            Err(e) => failed = Some(e),
        }
    }
    metrics::counter!("corral_drafts_expired_total").increment(deleted);
    if deleted > 0 {
        tracing::info!(deleted, "expired drafts removed");
    }
    if let Some(e) = failed {
        return Err(e);
    }
    // A full page where nothing went would be read again and again: wait for the next
    // sweep then.
    Ok(full && deleted > 0)
}
