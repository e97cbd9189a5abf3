//! A keyed quota: how many of something each key (a client, an address) holds at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Places held per key; a key holds at most the `max` given to [`Quota::admit`]. Clones
/// share the count.
pub struct Quota<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for Quota<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for Quota<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// One place held by `key`; dropping it frees the place.
pub struct Held<K: Hash + Eq> {
    key: K,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> Quota<K> {
    /// A place for `key`, unless it holds `max` already.
    pub fn admit(&self, key: K, max: usize) -> Option<Held<K>> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            key,
            held: self.0.clone(),
        })
    }
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_places_and_frees_them_on_drop() {
        let quota = Quota::default();
        let a: Vec<_> = (0..2).filter_map(|_| quota.admit("a", 2)).collect();
        assert_eq!(a.len(), 2);
        assert!(quota.admit("a", 2).is_none());
        assert!(quota.admit("b", 2).is_some(), "other keys are not affected");
        drop(a);
        assert!(quota.admit("a", 2).is_some());
        assert!(
            quota.0.lock().unwrap().is_empty(),
            "freed keys are forgotten"
        );
    }
}
