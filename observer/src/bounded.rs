//! A map keyed by process that cannot grow without bound: per-process state is kept
//! until the process exits, and if exits are missed (lost events) the oldest quarter is
//! dropped once the map is full.
use std::{collections::HashMap, hash::Hash};

pub struct BoundedMap<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    sequence: u64,
}

impl<K: Eq + Hash + Copy, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            sequence: 0,
        }
    }

    /// Inserts or replaces, returning the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.sequence += 1;
        let previous = self.entries.insert(key, (value, self.sequence));
        self.evict_if_full();
        previous.map(|(value, _)| value)
    }

    /// Inserts only if absent; returns whether it inserted.
    pub fn insert_new(&mut self, key: K, value: V) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.insert(key, value);
        true
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(value, _)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(key, (value, _))| (key, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(value, _)| value)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.values_mut().map(|(value, _)| value)
    }

    /// Removes and returns every value.
    pub fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.entries.drain().map(|(_, (value, _))| value)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(value, _)| value)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict_if_full(&mut self) {
        if self.entries.len() <= self.capacity {
            return;
        }
        let mut sequences: Vec<u64> = self.entries.values().map(|(_, seq)| *seq).collect();
        let cut = sequences.len() / 4;
        let (_, threshold, _) = sequences.select_nth_unstable(cut);
        let threshold = *threshold;
        self.entries.retain(|_, (_, seq)| *seq > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_when_full() {
        let mut map = BoundedMap::new(100);
        for key in 0..1000u32 {
            map.insert(key, key * 2);
        }
        assert!(map.len() <= 100);
        assert_eq!(map.get(&999), Some(&1998));
        assert_eq!(map.get(&0), None);
        assert!(!map.insert_new(999, 0));
        assert!(map.insert_new(5000, 1));
        assert_eq!(map.remove(&5000), Some(1));
    }
}
