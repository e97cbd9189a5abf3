//! A uniform random sample of a stream of unknown length (Vitter's Algorithm R).
//!
//! After `n` offers, every offered item is in the sample with probability `capacity / n`.

use rand::{Rng, RngExt};

#[derive(Debug, Clone)]
pub struct Reservoir<T> {
    items: Vec<T>,
    capacity: usize,
    seen: u64,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            seen: 0,
        }
    }

    /// Offers one item; returns whether the sample changed.
    pub fn offer<R: Rng + ?Sized>(&mut self, item: T, rng: &mut R) -> bool {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
            return true;
        }
        let j = rng.random_range(0..self.seen);
        match usize::try_from(j) {
            Ok(j) if j < self.capacity => {
                self.items[j] = item;
                true
            }
            _ => false,
        }
    }

    /// Drops the items matching `pred` (deleted images); returns whether any was dropped.
    /// The slot frees up for later offers; `seen` is unchanged.
    pub fn remove_where(&mut self, pred: impl Fn(&T) -> bool) -> bool {
        let before = self.items.len();
        self.items.retain(|item| !pred(item));
        self.items.len() != before
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
