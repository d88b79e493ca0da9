//! Which partitions this member serves: every [`ASSIGN_EVERY`] it lists the group's live
//! members (the NATS Services API, as [`crate::Bus::members`]) and takes the partitions
//! [`partitions_of`] gives it, letting go of the others. Views may differ for a moment
//! (a member just joined, one just died): two members may then both pull a partition,
//! but its consumer is pinned to one of them and the [`super::barrier`] keeps order
//! while the pin moves, so a differing view costs a hand-over, never order.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::partition::{self, Lane, Lanes};

/// How often a member looks at who is in the group.
pub(crate) const ASSIGN_EVERY: Duration = Duration::from_secs(1);

/// The partitions of `me` among `members` (their ids, in any order): partition `p` goes
/// to the `p mod n`-th member in id order. `None` when `me` is not among them (it has
/// not shown up in the listing yet).
pub(crate) fn partitions_of(members: &[String], me: &str, partitions: u32) -> Option<Vec<u32>> {
    let mut ids: Vec<&str> = members.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let index = ids.iter().position(|id| *id == me)?;
    let n = ids.len() as u32;
    Some((0..partitions).filter(|p| p % n == index as u32).collect())
}

pub(crate) async fn run(lanes: Lanes, me: String, cancel: CancellationToken) {
    let shared = lanes.shared.clone();
    let mut owned: HashMap<u32, CancellationToken> = HashMap::new();
    let mut tick = tokio::time::interval(ASSIGN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let members = match shared.bus.members(Some(&shared.name)).await {
            Ok(members) => members.into_iter().map(|m| m.id).collect::<Vec<_>>(),
            Err(e) => {
                tracing::debug!(group = %shared.name, error = %e, "listing the group's members failed");
                continue;
            }
        };
        let Some(mine) = partitions_of(&members, &me, shared.partitions) else {
            continue;
        };
        owned.retain(|p, token| {
            let keep = mine.contains(p);
            if !keep {
                tracing::debug!(group = %shared.name, partition = p, "handing a partition over");
                token.cancel();
            }
            keep
        });
        for p in mine {
            owned.entry(p).or_insert_with(|| {
                tracing::debug!(group = %shared.name, partition = p, "taking a partition");
                let token = cancel.child_token();
                lanes.tracker.spawn(partition::run(
                    lanes.clone(),
                    Lane::Partition(p),
                    token.clone(),
                ));
                token
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn given_members_should_share_every_partition_once() {
        let members = ids(&["c", "a", "b"]);
        let mut all: Vec<u32> = ["a", "b", "c"]
            .iter()
            .flat_map(|m| partitions_of(&members, m, 16).unwrap_or_default())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        assert_eq!(partitions_of(&members, "a", 16).map(|p| p.len()), Some(6));
        assert_eq!(partitions_of(&members, "c", 16).map(|p| p.len()), Some(5));
    }

    #[test]
    fn given_a_member_not_listed_should_take_nothing() {
        assert_eq!(partitions_of(&ids(&["a"]), "b", 4), None);
        assert_eq!(
            partitions_of(&ids(&["a", "a"]), "a", 3),
            Some(vec![0, 1, 2])
        );
    }
}
