//! Reading nats-server's `/jsz` monitoring answer. Only the fields the harness needs,
//! navigated as JSON so a new server version adding fields changes nothing.
//!
//! Only a RAFT leader's view is authoritative: followers list their peers with
//! `current: false` and may still name a dead leader until the next election.

use serde_json::Value;

/// `/jsz` with per-stream details (state and cluster info) for every account.
pub(crate) const JSZ_STREAMS: &str = "/jsz?streams=true";
/// `/jsz` with the meta (JetStream API) cluster summary.
pub(crate) const JSZ: &str = "/jsz";

/// The meta leader's server name, if this node knows one.
pub(crate) fn meta_leader(jsz: &Value) -> Option<&str> {
    non_empty(&jsz["meta_cluster"]["leader"])
}

/// `meta_cluster.cluster_size`.
pub(crate) fn meta_cluster_size(jsz: &Value) -> Option<u64> {
    jsz["meta_cluster"]["cluster_size"].as_u64()
}

/// The `stream_detail` entry named `stream`, in any account.
pub(crate) fn find_stream<'a>(jsz: &'a Value, stream: &str) -> Option<&'a Value> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|detail| detail["name"].as_str() == Some(stream))
}

/// The stream's RAFT leader as this node sees it.
pub(crate) fn stream_leader(detail: &Value) -> Option<&str> {
    non_empty(&detail["cluster"]["leader"])
}

/// In a leader's `cluster` object (stream or meta), the replica entry for `server`.
pub(crate) fn replica<'a>(cluster: &'a Value, server: &str) -> Option<&'a Value> {
    cluster["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["name"].as_str() == Some(server))
}

/// Current, online and not lagging, as the leader reports it.
pub(crate) fn replica_is_current(replica: &Value) -> bool {
    replica["current"].as_bool() == Some(true)
        && replica["offline"].as_bool() != Some(true)
        && replica["lag"].as_u64().unwrap_or(0) == 0
}

fn non_empty(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leader_view() -> Value {
        json!({
            "meta_cluster": {"leader": "n2", "cluster_size": 3, "replicas": [
                {"name": "n0", "current": true, "active": 4},
                {"name": "n1", "current": false, "active": 0}
            ]},
            "account_details": [{"name": "$G", "stream_detail": [{
                "name": "ORDERS",
                "cluster": {"leader": "n0", "replicas": [
                    {"name": "n1", "current": true, "active": 1},
                    {"name": "n2", "current": true, "active": 1, "lag": 3},
                ]},
                "state": {"messages": 100}
            }]}]
        })
    }

    #[test]
    fn given_a_leader_view_when_read_should_find_leaders_and_replicas() {
        let jsz = leader_view();
        assert_eq!(meta_leader(&jsz), Some("n2"));
        assert_eq!(meta_cluster_size(&jsz), Some(3));
        let stream = find_stream(&jsz, "ORDERS");
        assert_eq!(stream.and_then(stream_leader), Some("n0"));
        assert!(find_stream(&jsz, "OTHER").is_none());
    }

    #[test]
    fn given_replica_entries_when_checked_should_need_current_online_and_no_lag() {
        let jsz = leader_view();
        let meta = &jsz["meta_cluster"];
        assert!(replica(meta, "n0").is_some_and(replica_is_current));
        assert!(!replica(meta, "n1").is_some_and(replica_is_current));
        let cluster = find_stream(&jsz, "ORDERS").map(|s| &s["cluster"]);
        assert!(
            cluster
                .and_then(|c| replica(c, "n1"))
                .is_some_and(replica_is_current)
        );
        assert!(
            !cluster
                .and_then(|c| replica(c, "n2"))
                .is_some_and(replica_is_current)
        );
        assert!(cluster.and_then(|c| replica(c, "n9")).is_none());
        assert!(
            replica(
                &json!({"replicas": [{"name": "n1", "current": true, "offline": true}]}),
                "n1"
            )
            .is_some_and(|r| !replica_is_current(r))
        );
    }

    #[test]
    fn given_no_leader_when_read_should_be_none() {
        let jsz = json!({"meta_cluster": {"leader": ""}});
        assert_eq!(meta_leader(&jsz), None);
        assert_eq!(meta_leader(&json!({})), None);
    }
}
