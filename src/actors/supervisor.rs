//! The root supervisor: starts every child linked to itself and restarts a child that
//! panics or stops unexpectedly, with its state rebuilt from the store. ractor has no
//! restart strategies of its own, so the budget lives here: more than `max_restarts`
//! restarts of one child within `restart_window` and the supervisor stops trying and
//! fails, which `/readyz` reports. Restarts are counted in `corral_actor_restarts_total`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::hub::{Hub, HubArgs};
use super::image_pool::{ImagePool, ImagePoolArgs};
use super::mailer::{Mailer, MailerArgs};
use super::optimizer::{Optimizer, OptimizerArgs};
use super::relay::{Relay, RelayArgs};
use super::scheduler::{Scheduler, SchedulerArgs};
use super::sweeper::{Sweeper, SweeperArgs};
use super::uploads::{self, UploadDeps};
use super::{ActorSlot, Actors};
use crate::store::SharedStore;

/// How long each child may take to stop when the supervisor stops.
const CHILD_STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Hub,
    ImagePool,
    Uploads,
    Mailer,
    Scheduler,
    Optimizer,
    Sweeper,
    Relay,
}

impl Child {
    /// In start order; they stop in reverse.
    const ALL: [Child; 8] = [
        Child::Hub,
        Child::Relay,
        Child::ImagePool,
        Child::Uploads,
        Child::Mailer,
        Child::Scheduler,
        Child::Optimizer,
        Child::Sweeper,
    ];

    fn name(self) -> &'static str {
        match self {
            Child::Hub => "hub",
            Child::ImagePool => "image_pool",
            Child::Uploads => "uploads",
            Child::Mailer => "mailer",
            Child::Scheduler => "scheduler",
            Child::Optimizer => "optimizer",
            Child::Sweeper => "sweeper",
            Child::Relay => "relay",
        }
    }
}

/// How often a child may be restarted before the supervisor gives up.
#[derive(Debug, Clone, Copy)]
pub struct RestartBudget {
    pub max_restarts: u32,
    pub window: Duration,
}

/// Everything the children are built from; kept so a restart builds them the same way.
pub struct SupervisorArgs {
    pub store: SharedStore,
    pub actors: Actors,
    pub reservoir_capacity: usize,
    pub upload_deps: UploadDeps,
    pub upload_workers: usize,
    pub hub: HubArgs,
    pub mailer: MailerArgs,
    pub scheduler: SchedulerArgs,
    pub optimizer: OptimizerArgs,
    pub sweeper: SweeperArgs,
    pub relay: RelayArgs,
    pub budget: RestartBudget,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    restarts: HashMap<Child, VecDeque<Instant>>,
}

pub struct Supervisor;

/// Delay before another try when a child failed to restart.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

pub enum SupervisorMsg {
    /// Try to start this child again (after a restart that failed).
    Restart(Child),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            children: HashMap::new(),
            restarts: HashMap::new(),
        };
        for child in Child::ALL {
            // Export the series at 0 so dashboards see it before the first restart.
            metrics::counter!("corral_actor_restarts_total", "actor" => child.name()).increment(0);
            start_child(&mut state, child, myself.get_cell()).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stop in reverse start order: the scheduler before the mailer it feeds, uploads
        // before the pool they tell, then the relay (appending what it was told) and the
        // hub (which everyone tells) last.
        let actors = &state.args.actors;
        stop(&actors.sweeper).await;
        stop(&actors.optimizer).await;
        stop(&actors.scheduler).await;
        stop(&actors.mailer).await;
        stop(&actors.uploads).await;
        stop(&actors.image_pool).await;
        stop(&actors.relay).await;
        stop(&actors.hub).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                (cell, format!("panicked or failed: {err}"))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::error!(actor = child.name(), "child {why}");
        restart(state, child, &myself).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Restart(child) = msg;
        restart(state, child, &myself).await;
        Ok(())
    }
}

/// Restarts `child` if its budget allows. A restart that fails is retried after a pause
/// (and counts against the budget); once the budget is spent the child stays down, the
/// others keep running, and `/readyz` reports it.
async fn restart(state: &mut SupervisorState, child: Child, myself: &ActorRef<SupervisorMsg>) {
    if !within_budget(state, child) {
        tracing::error!(
            actor = child.name(),
            "restart budget spent; the child stays down"
        );
        match child {
            Child::Hub => state.args.actors.hub.set(None),
            Child::ImagePool => state.args.actors.image_pool.set(None),
            Child::Uploads => state.args.actors.uploads.set(None),
            Child::Mailer => state.args.actors.mailer.set(None),
            Child::Scheduler => state.args.actors.scheduler.set(None),
            Child::Optimizer => state.args.actors.optimizer.set(None),
            Child::Sweeper => state.args.actors.sweeper.set(None),
            Child::Relay => state.args.actors.relay.set(None),
        }
        return;
    }
    metrics::counter!("corral_actor_restarts_total", "actor" => child.name()).increment(1);
    match start_child(state, child, myself.get_cell()).await {
        Ok(()) => tracing::warn!(actor = child.name(), "child restarted"),
        Err(e) => {
            tracing::error!(actor = child.name(), error = %e, "restart failed; retrying");
            myself.send_after(RETRY_BACKOFF, move || SupervisorMsg::Restart(child));
        }
    }
}

/// Records a restart and says whether it is still within the budget.
fn within_budget(state: &mut SupervisorState, child: Child) -> bool {
    let budget = state.args.budget;
    let now = Instant::now();
    let history = state.restarts.entry(child).or_default();
    while history
        .front()
        .is_some_and(|t| now.duration_since(*t) > budget.window)
    {
        history.pop_front();
    }
    history.push_back(now);
    history.len() <= budget.max_restarts as usize
}

async fn start_child(
    state: &mut SupervisorState,
    child: Child,
    me: ActorCell,
) -> Result<(), ActorProcessingErr> {
    let args = &state.args;
    let cell = match child {
        Child::Hub => {
            let (hub, _) = Actor::spawn_linked(None, Hub, args.hub.clone(), me).await?;
            args.actors.hub.set(Some(hub.clone()));
            hub.get_cell()
        }
        Child::ImagePool => {
            let pool_args = ImagePoolArgs {
                store: args.store.clone(),
                capacity: args.reservoir_capacity,
                sample: args.actors.sample.clone(),
            };
            let (pool, _) = Actor::spawn_linked(None, ImagePool, pool_args, me).await?;
            args.actors.image_pool.set(Some(pool.clone()));
            pool.get_cell()
        }
        Child::Uploads => {
            let factory = uploads::spawn(args.upload_deps.clone(), args.upload_workers, me).await?;
            args.actors.uploads.set(Some(factory.clone()));
            factory.get_cell()
        }
        Child::Mailer => {
            let (mailer, _) = Actor::spawn_linked(None, Mailer, args.mailer.clone(), me).await?;
            args.actors.mailer.set(Some(mailer.clone()));
            mailer.get_cell()
        }
        Child::Scheduler => {
            let (scheduler, _) =
                Actor::spawn_linked(None, Scheduler, args.scheduler.clone(), me).await?;
            args.actors.scheduler.set(Some(scheduler.clone()));
            scheduler.get_cell()
        }
        Child::Optimizer => {
            let (optimizer, _) =
                Actor::spawn_linked(None, Optimizer, args.optimizer.clone(), me).await?;
            args.actors.optimizer.set(Some(optimizer.clone()));
            optimizer.get_cell()
        }
        Child::Relay => {
            let (relay, _) = Actor::spawn_linked(None, Relay, args.relay.clone(), me).await?;
            args.actors.relay.set(Some(relay.clone()));
            relay.get_cell()
        }
        Child::Sweeper => {
            let (sweeper, _) = Actor::spawn_linked(None, Sweeper, args.sweeper.clone(), me).await?;
            args.actors.sweeper.set(Some(sweeper.clone()));
            sweeper.get_cell()
        }
    };
    state.children.insert(cell.get_id(), child);
    Ok(())
}

async fn stop<M: ractor::Message>(slot: &ActorSlot<M>) {
    if let Some(actor) = slot.get() {
        let _ = actor.stop_and_wait(None, Some(CHILD_STOP_WAIT)).await;
    }
    slot.set(None);
}
