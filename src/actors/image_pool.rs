//! `image_pool` owns the reservoir sample of all images. It fills it from the store when
//! it starts (so a restart rebuilds it), offers it every new upload, and publishes an
//! immutable snapshot that `/v1/images/random` reads with no message round trip.
//! Supervised by the root supervisor.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::domain::reservoir::Reservoir;
use crate::domain::{ImageId, ImageSummary};
use crate::store::SharedStore;

/// Up to `count` distinct positions in `0..len`, at random, or as a function of `seed`.
pub fn indices(len: usize, count: usize, seed: Option<&str>) -> rand::seq::index::IndexVec {
    let amount = count.min(len);
    match seed {
        None => rand::seq::index::sample(&mut rand::rng(), len, amount),
        Some(seed) => {
            use rand::SeedableRng;
            use sha1::Digest;
            let digest = sha1::Sha1::digest(seed.as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from_le_bytes(first));
            rand::seq::index::sample(&mut rng, len, amount)
        }
    }
}

/// Rows read per page while filling the reservoir at start.
const FILL_PAGE: usize = 1000;

/// The published sample: a snapshot swapped whole on every change.
#[derive(Clone, Default)]
pub struct Sample(Arc<ArcSwap<Snapshot>>, Arc<std::sync::atomic::AtomicBool>);

/// One state of the sample, and its entries by tag (made on the first draw by tag).
#[derive(Default)]
struct Snapshot {
    items: Vec<Arc<ImageSummary>>,
    by_tag: std::sync::OnceLock<HashMap<String, Vec<u32>>>,
}

impl Snapshot {
    /// The positions of the entries carrying `tag` (or of all, with no tag).
    fn tagged(&self, tag: &str) -> &[u32] {
        let by_tag = self.by_tag.get_or_init(|| {
            let mut by_tag: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, item) in self.items.iter().enumerate() {
                for t in item.tags.as_slice() {
                    by_tag.entry(t.clone()).or_default().push(i as u32);
                }
            }
            by_tag
        });
        by_tag.get(tag).map_or(&[], Vec::as_slice)
    }
}

impl Sample {
    /// Up to `count` distinct images, picked uniformly from the current snapshot.
    pub fn pick(&self, count: usize) -> Vec<Arc<ImageSummary>> {
        let mut out = Vec::with_capacity(count);
        self.pick_each(count, None, None, |s| out.push(s.clone()));
        out
    }

    /// Calls `each` on up to `count` distinct entries (carrying `tag`, when given),
    /// without cloning them (for the hot `/random` route). With a `seed` the pick is a
    /// function of the seed and the current snapshot: the same seed picks the same
    /// entries, in the same order, until the sample changes.
    pub fn pick_each(
        &self,
        count: usize,
        seed: Option<&str>,
        tag: Option<&str>,
        mut each: impl FnMut(&Arc<ImageSummary>),
    ) {
        let snapshot = self.0.load();
        match tag {
            None => {
                for i in indices(snapshot.items.len(), count, seed) {
                    each(&snapshot.items[i]);
                }
            }
            Some(tag) => {
                let tagged = snapshot.tagged(tag);
                for i in indices(tagged.len(), count, seed) {
                    each(&snapshot.items[tagged[i] as usize]);
                }
            }
        }
    }

    /// How many entries carry `tag`.
    pub fn count_tagged(&self, tag: &str) -> usize {
        self.0.load().tagged(tag).len()
    }

    /// One entry, picked as [`Sample::pick_each`] picks, if the sample has any.
    pub fn pick_one(&self, seed: Option<&str>, tag: Option<&str>) -> Option<Arc<ImageSummary>> {
        let mut picked = None;
        self.pick_each(1, seed, tag, |s| picked = Some(s.clone()));
        picked
    }

    /// Whether the sample has been filled from the store at least once (for `/readyz`).
    pub fn is_filled(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.0.load().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, items: &[Arc<ImageSummary>]) {
        self.0.store(Arc::new(Snapshot {
            items: items.to_vec(),
            by_tag: Default::default(),
        }));
        metrics::gauge!("corral_reservoir_size").set(items.len() as f64);
    }
}

pub enum ImagePoolMsg {
    /// A new image was stored: offer it to the sample.
    Add(ImageSummary),
    /// An image was deleted: drop it from the sample if it is there.
    Remove(ImageId),
    /// An image's summary changed (a placeholder filled in): update it if it is there.
    Update(ImageSummary),
    /// Fault injection for supervision tests and drills: the actor panics.
    Crash,
}

pub struct ImagePool;

pub struct ImagePoolArgs {
    pub store: SharedStore,
    pub capacity: usize,
    pub sample: Sample,
}

pub struct ImagePoolState {
    reservoir: Reservoir<Arc<ImageSummary>>,
    sample: Sample,
    store: SharedStore,
}

impl Actor for ImagePool {
    type Msg = ImagePoolMsg;
    type State = ImagePoolState;
    type Arguments = ImagePoolArgs;

    #[tracing::instrument(name = "image_pool.start", skip_all)]
    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ImagePoolArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The fill happens in post_start: by then the supervisor has published this actor,
        // so uploads and deletes made during the fill queue up instead of being lost.
        Ok(ImagePoolState {
            reservoir: Reservoir::new(args.capacity),
            sample: args.sample,
            store: args.store,
        })
    }

    #[tracing::instrument(name = "image_pool.fill", skip_all)]
    async fn post_start(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut after: Option<ImageId> = None;
        loop {
            let page = state.store.scan_images(after, FILL_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let mut rng = rand::rng();
            for image in page.iter().filter(|i| !i.is_draft()) {
                state.reservoir.offer(Arc::new(image.summary()), &mut rng);
            }
        }
        state.sample.publish(state.reservoir.items());
        state
            .sample
            .1
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(
            seen = state.reservoir.seen(),
            sampled = state.reservoir.items().len(),
            "image sample filled"
        );
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: ImagePoolMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // An upload made during the fill may also have been scanned: offer it once.
            ImagePoolMsg::Add(summary)
                if state.reservoir.items().iter().any(|s| s.id == summary.id) => {}
            ImagePoolMsg::Add(summary) => {
                if state.reservoir.offer(Arc::new(summary), &mut rand::rng()) {
                    state.sample.publish(state.reservoir.items());
                }
            }
            ImagePoolMsg::Remove(id) => {
                if state.reservoir.delete_where(|s| s.id == id) {
                    state.sample.publish(state.reservoir.items());
                }
            }
            ImagePoolMsg::Update(summary) => {
                let id = summary.id;
                if state
                    .reservoir
                    .replace_where(|s| s.id == id, Arc::new(summary))
                {
                    state.sample.publish(state.reservoir.items());
                }
            }
            ImagePoolMsg::Crash => panic!("image_pool was asked to crash"),
        }
        Ok(())
    }
}
