//! Group commit for the embedded store: one thread runs every write, and the writes
//! queued together share one transaction and one fsync.
//!
//! The thread takes whatever writes are queued (up to `MAX_BATCH`), runs them in order in
//! one redb transaction, commits it with immediate durability and only then answers their
//! callers. Writes that arrive meanwhile form the next batch, so a lone write waits for
//! exactly one commit and concurrent writes share one, and a transaction's bookkeeping
//! (system tree, allocator state, page checksums) is paid once per batch, not per write.
//!
//! A write that fails must leave nothing behind and must not take its neighbours with it.
//! redb refuses savepoints in a transaction that has written, so a failure aborts the
//! whole transaction: the writes before it run again on their own in a new transaction,
//! then the rest, and the failing write is answered with its error once they are durable.
//! Each write runs in the same order and sees the same state as it would have alone, so
//! it reaches the same outcome; this is why a write is a `Fn` (it may run twice), and why
//! it must touch nothing but the transaction. Readers only ever see committed, durable
//! writes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Cause, StoreError};

fn cause(message: &str) -> Cause {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(message))
}

/// How many queued writes one transaction covers at most.
const MAX_BATCH: usize = 256;

/// How many writes may wait for the writer before callers wait to queue.
const QUEUE: usize = 1024;

/// A queued write and its caller.
trait Job: Send {
    /// Runs the write in `tx`, keeping its result for `answer`.
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller once the transaction the write last ran in has committed.
    fn answer(self: Box<Self>, committed: Result<(), Cause>);
    /// Answers the caller with the write's own failure.
    fn fail(self: Box<Self>, error: StoreError);
}

struct Call<F, T> {
    write: F,
    out: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for Call<F, T>
where
    F: Fn(&WriteTransaction) -> Result<T, StoreError> + Send,
    T: Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), StoreError> {
        self.out = Some((self.write)(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, committed: Result<(), Cause>) {
        let result = match (committed, self.out) {
            (Ok(()), Some(out)) => Ok(out),
            (Ok(()), None) => Err(StoreError::embedded("the write never ran")),
            (Err(e), _) => Err(StoreError::Embedded(e)),
        };
        let _ = self.reply.send(result);
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// The handle callers queue writes on. Dropping every clone stops the thread once the
/// queue is worked off; the thread then drops its handle on the database.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread for `db`.
    pub(super) fn start(db: Arc<Database>) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("corral-store-writer".into())
            .spawn(move || run(&db, queue))
            .map_err(StoreError::embedded)?;
        Ok(Self { jobs })
    }

    /// Whether the thread is gone (writes and commits that panic are caught, so this is a
    /// last line of defence).
    pub(super) fn stopped(&self) -> bool {
        self.jobs.is_closed()
    }

    /// Runs `write` in a write transaction and returns once that transaction is durable.
    /// `write` may run more than once (see the module's documentation).
    pub(super) async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        let job = Box::new(Call {
            write,
            out: None,
            reply,
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        outcome
            .await
            .map_err(|_| StoreError::embedded("the write failed in the store writer"))?
    }
}

/// The writer thread: takes whatever writes are queued and commits them together.
fn run(db: &Database, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(db, &mut batch);
    }
}

/// Runs and commits every write in `batch`, answering each caller; leaves it empty.
fn commit_batch(db: &Database, batch: &mut Vec<Box<dyn Job>>) {
    // How many of the batch's first writes the next round runs: after a failure, only the
    // writes before it, so that none runs more than twice.
    let mut limit = usize::MAX;
    // Failed writes are answered last, once the writes that ran before them are durable:
    // a caller told "changed meanwhile" then reads what changed.
    let mut failed_writes: Vec<(Box<dyn Job>, StoreError)> = Vec::new();
    while !batch.is_empty() {
        let round = limit.min(batch.len());
        let tx = match begin(db) {
            Ok(tx) => tx,
            Err(e) => {
                let e = match e {
                    StoreError::Embedded(cause) => cause,
                    other => Arc::new(other),
                };
                batch
                    .drain(..)
                    .for_each(|job| job.fail(StoreError::Embedded(e.clone())));
                break;
            }
        };
        let mut failed = None;
        for (at, job) in batch[..round].iter_mut().enumerate() {
            // A panicking write fails only its own caller.
            let ran = catch_unwind(AssertUnwindSafe(|| job.run(&tx)))
                .unwrap_or_else(|_| Err(StoreError::embedded("the write panicked")));
            if let Err(e) = ran {
                failed = Some((at, e));
                break;
            }
        }
        match failed {
            Some((at, e)) => {
                // Nothing of this round stays; the failing write waits to be answered,
                // the others run again.
                let _ = catch_unwind(AssertUnwindSafe(|| tx.abort()));
                failed_writes.push((batch.remove(at), e));
                limit = if at > 0 { at } else { usize::MAX };
            }
            None => {
                let started = std::time::Instant::now();
                let committed = match catch_unwind(AssertUnwindSafe(|| tx.commit())) {
                    Ok(done) => done.map_err(|e| -> Cause { Arc::new(e) }),
                    Err(_) => Err(cause("the commit panicked")),
                };
                metrics::histogram!("corral_store_commit_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("corral_store_commit_batch_writes").record(round as f64);
                batch
                    .drain(..round)
                    .for_each(|job| job.answer(committed.clone()));
                limit = usize::MAX;
            }
        }
    }
    for (job, e) in failed_writes {
        job.fail(e);
    }
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    Ok(tx)
}
