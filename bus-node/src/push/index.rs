//! The clients of a node by what they asked for, so that finding who an event reaches is
//! one lookup of its type: the clients of each type are computed once (from the distinct
//! patterns, never by visiting every client) and kept until a client comes, goes or
//! changes its patterns. The cache holds at most [`MAX_CACHED_TYPES`] types (cleared when
//! full: publishers choose types, and must not grow a node's memory without bound).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bus_core::{EventPattern, EventType};

/// Types whose clients are remembered at once.
pub const MAX_CACHED_TYPES: usize = 4096;

/// A client of this node (unique for the node's life).
pub type ClientId = u64;

#[derive(Debug, Default)]
pub struct ClientIndex {
    /// Each distinct pattern and the clients that asked for it.
    by_pattern: HashMap<String, (EventPattern, HashSet<ClientId>)>,
    /// Each client's patterns.
    by_client: HashMap<ClientId, Vec<EventPattern>>,
    cache: HashMap<String, Arc<[ClientId]>>,
}

impl ClientIndex {
    /// Sets `client`'s patterns (adding it if new).
    pub fn set(&mut self, client: ClientId, patterns: Vec<EventPattern>) {
        self.remove(client);
        for p in &patterns {
            self.by_pattern
                .entry(p.as_str().to_owned())
                .or_insert_with(|| (p.clone(), HashSet::new()))
                .1
                .insert(client);
        }
        self.by_client.insert(client, patterns);
        self.cache.clear();
    }

    pub fn remove(&mut self, client: ClientId) {
        let Some(patterns) = self.by_client.remove(&client) else {
            return;
        };
        for p in patterns {
            if let Some((_, clients)) = self.by_pattern.get_mut(p.as_str()) {
                clients.remove(&client);
                if clients.is_empty() {
                    self.by_pattern.remove(p.as_str());
                }
            }
        }
        self.cache.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The clients whose patterns match `event_type`, each once, in id order.
    pub fn reached_by(&mut self, event_type: &EventType) -> Arc<[ClientId]> {
        if let Some(hit) = self.cache.get(event_type.as_str()) {
            return hit.clone();
        }
        let mut clients: Vec<ClientId> = self
            .by_pattern
            .values()
            .filter(|(p, _)| p.matches(event_type))
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        clients.sort_unstable();
        clients.dedup();
        let clients: Arc<[ClientId]> = clients.into();
        if self.cache.len() >= MAX_CACHED_TYPES {
            self.cache.clear();
        }
        self.cache
            .insert(event_type.as_str().to_owned(), clients.clone());
        clients
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(p: &[&str]) -> Vec<EventPattern> {
        p.iter()
            .filter_map(|p| EventPattern::new(*p).ok())
            .collect()
    }

    fn reached(index: &mut ClientIndex, t: &str) -> Vec<ClientId> {
        EventType::new(t)
            .map(|t| index.reached_by(&t).to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn an_event_reaches_each_matching_client_once_and_changes_are_seen() {
        let mut index = ClientIndex::default();
        index.set(1, patterns(&["shop.*", "shop.order"]));
        index.set(2, patterns(&[">"]));
        index.set(3, patterns(&["billing.>"]));
        assert_eq!(reached(&mut index, "shop.order"), vec![1, 2]);
        assert_eq!(reached(&mut index, "billing.a.b"), vec![2, 3]);
        index.set(1, patterns(&["billing.a.*"]));
        assert_eq!(reached(&mut index, "shop.order"), vec![2]);
        assert_eq!(reached(&mut index, "billing.a.b"), vec![1, 2, 3]);
        index.remove(2);
        index.remove(3);
        assert_eq!(reached(&mut index, "billing.a.b"), vec![1]);
        assert_eq!(index.len(), 1);
        assert_eq!(index.by_pattern.len(), 1);
    }
}
