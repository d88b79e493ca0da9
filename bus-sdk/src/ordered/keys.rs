//! The keys of one partition: at most one handling per key at a time, the key's later
//! deliveries waiting in arrival order behind it. Bounded by the partition's window:
//! JetStream hands an owner no more deliveries than that before it acks.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub(crate) struct KeyQueues<T> {
    /// Keys with a handling running, and what waits behind it.
    busy: HashMap<String, VecDeque<T>>,
}

impl<T> Default for KeyQueues<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
        }
    }
}

impl<T> KeyQueues<T> {
    /// Adds `item` for `key`: handed back to start now when nothing of its key runs,
    /// else queued behind it.
    pub(crate) fn push(&mut self, key: &str, item: T) -> Option<T> {
        match self.busy.get_mut(key) {
            Some(waiting) => {
                waiting.push_back(item);
                None
            }
            None => {
                self.busy.insert(key.to_owned(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running handling of `key` settled: its next item, to start now, if any.
    pub(crate) fn settled(&mut self, key: &str) -> Option<T> {
        let next = self.busy.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.busy.remove(key);
        }
        next
    }

    /// Takes `key` out: what waits behind it, in order; the key is free again.
    pub(crate) fn take(&mut self, key: &str) -> VecDeque<T> {
        self.busy.remove(key).unwrap_or_default()
    }

    /// Every item waiting (not running), emptied out; their keys stay busy until their
    /// running handling settles.
    pub(crate) fn take_waiting(&mut self) -> Vec<T> {
        self.busy.values_mut().flat_map(std::mem::take).collect()
    }

    /// The items waiting.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &T> {
        self.busy.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_busy_key_should_queue_its_items_in_order_and_free_others() {
        let mut keys = KeyQueues::default();
        assert_eq!(keys.push("a", 1), Some(1));
        assert_eq!(keys.push("a", 2), None);
        assert_eq!(keys.push("b", 3), Some(3));
        assert_eq!(keys.push("a", 4), None);
        assert_eq!(keys.waiting().count(), 2);
        assert_eq!(keys.settled("a"), Some(2));
        assert_eq!(keys.settled("b"), None);
        assert_eq!(keys.push("b", 5), Some(5));
        assert_eq!(keys.settled("a"), Some(4));
        assert_eq!(keys.settled("a"), None);
        assert_eq!(keys.push("a", 6), Some(6));
    }

    #[test]
    fn given_waiting_items_should_take_them_and_keep_the_keys_busy() {
        let mut keys = KeyQueues::default();
        keys.push("a", 1);
        keys.push("a", 2);
        keys.push("a", 3);
        let mut taken = keys.take_waiting();
        taken.sort();
        assert_eq!(taken, vec![2, 3]);
        assert_eq!(keys.push("a", 4), None);
        assert_eq!(keys.settled("a"), Some(4));
    }

    #[test]
    fn given_a_key_taken_out_should_hand_back_its_waiting_items_and_free_it() {
        let mut keys = KeyQueues::default();
        keys.push("a", 1);
        keys.push("a", 2);
        keys.push("a", 3);
        keys.push("b", 4);
        assert_eq!(Vec::from(keys.take("a")), vec![2, 3]);
        assert_eq!(keys.waiting().count(), 0);
        assert_eq!(keys.push("a", 5), Some(5));
        assert!(keys.take("c").is_empty());
    }
}
