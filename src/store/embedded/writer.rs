//! Group commit for the embedded store: one thread runs every write transaction.
//!
//! Each call's writes still commit as their own redb transaction, so a failing call
//! leaves nothing behind and never disturbs its neighbours. What is shared is the fsync:
//! the thread commits each transaction with `Durability::None`, then makes the whole
//! batch durable with one `Durability::Immediate` commit, and only then answers the
//! callers. Writes that arrive while an fsync runs form the next batch, so a lone write
//! waits for exactly one fsync (as before) and concurrent writes share one.
//!
//! A reader may see a write a moment before it is durable (between its own commit and
//! the batch's fsync). Its caller has not been answered yet, and a crash in that window
//! loses it, as it would have lost any write whose commit had not returned.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// How many queued writes one durable commit covers at most.
const MAX_BATCH: usize = 256;

/// How many writes may wait for the writer before callers wait to queue.
const QUEUE: usize = 1024;

/// A queued write. It runs its own transaction and, if that committed, returns how to
/// answer its caller once the batch is durable.
type Job = Box<dyn FnOnce(&Database) -> Option<Answer> + Send>;

/// Answers one caller with the outcome of the batch's durable commit.
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The handle callers queue writes on. Dropping every clone stops the thread once the
/// queue is worked off; the thread then drops its handle on the database.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread for `db`.
    pub(super) fn start(db: Arc<Database>) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("corral-store-writer".into())
            .spawn(move || run(&db, queue))
            .map_err(|e| StoreError::Embedded(format!("cannot start the writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Whether the thread is gone (writes and commits that panic are caught, so this is a
    /// last line of defence).
    pub(super) fn stopped(&self) -> bool {
        self.jobs.is_closed()
    }

    /// Runs `f` in its own write transaction and returns once that is durable.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, outcome) = oneshot::channel();
        let job: Job = Box::new(move |db| match commit_quietly(db, f) {
            Ok(out) => Some(Box::new(move |durable: Result<(), String>| {
                let _ = answer.send(durable.map(|()| out).map_err(StoreError::Embedded));
            })),
            Err(e) => {
                let _ = answer.send(Err(e));
                None
            }
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        outcome
            .await
            .map_err(|_| StoreError::Embedded("the write failed in the store writer".into()))?
    }
}

/// Commits `f`'s writes without waiting for the disk.
fn commit_quietly<T>(
    db: &Database,
    f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// The writer thread: takes whatever writes are queued, commits each, fsyncs once, answers.
fn run(db: &Database, mut queue: mpsc::Receiver<Job>) {
    let mut answers: Vec<Answer> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            taken += 1;
            // A panicking write drops its answer, which its caller reads as a failure; the
            // thread carries on with the others.
            if let Ok(Some(answer)) = catch_unwind(AssertUnwindSafe(|| job(db))) {
                answers.push(answer);
            }
            if taken < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if answers.is_empty() {
            continue;
        }
        let durable = match catch_unwind(AssertUnwindSafe(|| make_durable(db))) {
            Ok(done) => done.map_err(|e| e.to_string()),
            Err(_) => Err("the durable commit panicked".to_owned()),
        };
        for answer in answers.drain(..) {
            answer(durable.clone());
        }
    }
}

/// An empty commit with immediate durability: it fsyncs every commit before it.
fn make_durable(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.commit()?;
    Ok(())
}
