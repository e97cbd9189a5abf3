//! A uniform random sample of a changing set: items are added and deleted (Random
//! Pairing, Gemulla, Lehner and Haas, VLDB 2006; Vitter's Algorithm R while no deletion
//! is pending).
//!
//! Every item of the current set is in the sample with the same probability, as long as
//! what is deleted does not depend on what is sampled. A deletion is counted, sampled or
//! not, and each later offer is paired with one counted deletion: it takes a slot with
//! the chance that the deleted items were sampled. (So deleting a sampled item and adding
//! one right after puts the new one in its place: a swap, which cannot grow anyone's
//! share of the sample.)

use rand::{Rng, RngExt};

#[derive(Debug, Clone)]
pub struct Reservoir<T> {
    items: Vec<T>,
    capacity: usize,
    seen: u64,
    /// Items in the set now (offered, less deleted).
    population: u64,
    /// Deletions not yet paired with an offer: of sampled items, and of others.
    deleted_in: u64,
    deleted_out: u64,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            seen: 0,
            population: 0,
            deleted_in: 0,
            deleted_out: 0,
        }
    }

    /// Offers one new item of the set; returns whether the sample changed.
    pub fn offer<R: Rng + ?Sized>(&mut self, item: T, rng: &mut R) -> bool {
        self.seen += 1;
        self.population += 1;
        let pending = self.deleted_in + self.deleted_out;
        if pending > 0 {
            // Paired with a deletion: it takes a freed slot with the chance that the
            // deleted items were sampled.
            let taken = rng.random_range(0..pending) < self.deleted_in;
            match taken {
                true => {
                    self.deleted_in -= 1;
                    self.items.push(item);
                }
                false => self.deleted_out -= 1,
            }
            return taken;
        }
        let capacity = self.capacity as u64;
        let taken = self.population <= capacity || rng.random_range(0..self.population) < capacity;
        if !taken {
            return false;
        }
        if self.items.len() < self.capacity {
            self.items.push(item);
        } else {
            // The sample is full: the new item replaces an entry picked at random.
            let j = rng.random_range(0..self.items.len());
            self.items[j] = item;
        }
        true
    }

    /// Deletes one item of the set (sampled or not): drops it from the sample if it is
    /// there. Returns whether the sample changed.
    pub fn delete_where(&mut self, pred: impl Fn(&T) -> bool) -> bool {
        self.population = self.population.saturating_sub(1);
        let before = self.items.len();
        self.items.retain(|item| !pred(item));
        let dropped = self.items.len() != before;
        match dropped {
            true => self.deleted_in += 1,
            false => self.deleted_out += 1,
        }
        dropped
    }

    /// Replaces the first item matching `pred` with `item` (the same image, updated);
    /// returns whether one matched. The sample's membership is unchanged.
    pub fn replace_where(&mut self, pred: impl Fn(&T) -> bool, item: T) -> bool {
        match self.items.iter_mut().find(|t| pred(t)) {
            Some(slot) => {
                *slot = item;
                true
            }
            None => false,
        }
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// How many items have been offered in all.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_until_full_then_stays_at_capacity() {
        let mut rng = rand::rng();
        let mut r = Reservoir::new(10);
        for i in 0..10 {
            assert!(r.offer(i, &mut rng));
        }
        assert_eq!(r.items(), (0..10).collect::<Vec<_>>());
        for i in 10..1000 {
            r.offer(i, &mut rng);
        }
        assert_eq!(r.items().len(), 10);
        assert_eq!(r.seen(), 1000);
    }

    #[test]
    fn stays_uniform_over_the_current_set_when_items_are_deleted_and_added() {
        // 100 items, the first 30 deleted (sampled or not), 30 new ones added: over
        // 20,000 runs the 100 current items are each sampled about equally often, the new
        // ones as often as the old.
        let mut rng = rand::rng();
        let mut hits = [0u32; 130];
        for _ in 0..20_000 {
            let mut r = Reservoir::new(10);
            for i in 0..100 {
                r.offer(i, &mut rng);
            }
            for i in 0..30 {
                r.delete_where(|&x| x == i);
            }
            for i in 100..130 {
                r.offer(i, &mut rng);
            }
            for &i in r.items() {
                hits[i] += 1;
            }
        }
        assert!(hits[..30].iter().all(|&h| h == 0));
        let current = &hits[30..];
        let mean = current.iter().sum::<u32>() as f64 / current.len() as f64;
        assert!(
            current
                .iter()
                .all(|&h| (h as f64 - mean).abs() < 0.15 * mean),
            "mean {mean}: {hits:?}"
        );
        // Deleting items that are not sampled does not starve later ones: 10 of 40
        // sampled, 20 unsampled deleted, 20 added (paired with those deletions), then
        // one more is sampled with the chance of the others, 10 of 41, not less.
        let mut new_in = 0;
        for _ in 0..4_000 {
            let mut r = Reservoir::new(10);
            for i in 0..40 {
                r.offer(i, &mut rng);
            }
            let unsampled: Vec<usize> = (0..40).filter(|i| !r.items().contains(i)).collect();
            for &i in unsampled.iter().take(20) {
                r.delete_where(|&x| x == i);
            }
            // The 20 unsampled deletions are paired away by the next 20 offers.
            for i in 100..121 {
                r.offer(i, &mut rng);
            }
            new_in += u32::from(r.items().contains(&120));
        }
        // 10 of 41 after the pairing is used up: ~975 of 4,000.
        assert!((800..=1150).contains(&new_in), "{new_in}");
    }

    #[test]
    fn samples_uniformly() {
        // 20,000 runs of a 10-of-100 sample: each item should be picked ~2,000 times.
        let mut rng = rand::rng();
        let mut hits = [0u32; 100];
        for _ in 0..20_000 {
            let mut r = Reservoir::new(10);
            for i in 0..100 {
                r.offer(i, &mut rng);
            }
            for &i in r.items() {
                hits[i] += 1;
            }
        }
        // Binomial(20000, 0.1): sd ~ 42; 6 sd either side never fails by chance in practice.
        assert!(hits.iter().all(|&h| (1750..=2250).contains(&h)), "{hits:?}");
    }
}
