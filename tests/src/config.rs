//! The nats-server configuration file written for each node.

use std::path::{Path, PathBuf};

/// JetStream memory-store cap written into every node's config.
pub const DEFAULT_MAX_MEMORY_STORE: &str = "256MB";
/// JetStream file-store cap written into every node's config.
pub const DEFAULT_MAX_FILE_STORE: &str = "4GB";

/// One node's settings; the rendered text is what nats-server reads with `-c`.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) name: String,
    pub(crate) client_port: u16,
    pub(crate) monitor_port: u16,
    pub(crate) store_dir: PathBuf,
    /// `None` for a single JetStream node (no cluster block at all).
    pub(crate) cluster: Option<ClusterConfig>,
    /// Text appended as it is (accounts and the like).
    pub(crate) extra: String,
}

/// The cluster block of a node that is one of several.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) route_port: u16,
    /// Route ports of every other node.
    pub(crate) peer_route_ports: Vec<u16>,
}

impl NodeConfig {
    pub(crate) fn render(&self) -> String {
        let mut text = format!(
            "server_name: {name}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{monitor}\n\
             jetstream {{\n  \
               store_dir: {store}\n  \
               max_memory_store: {DEFAULT_MAX_MEMORY_STORE}\n  \
               max_file_store: {DEFAULT_MAX_FILE_STORE}\n\
             }}\n",
            name = quote(&self.name),
            client = self.client_port,
            monitor = self.monitor_port,
            store = quote_path(&self.store_dir),
        );
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .peer_route_ports
                .iter()
                .map(|p| format!("    nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  \
                   name: {name}\n  \
                   listen: 127.0.0.1:{port}\n  \
                   routes: [\n{routes}\n  ]\n\
                 }}\n",
                name = quote(&cluster.name),
                port = cluster.route_port,
                routes = routes.join("\n"),
            ));
        }
        if !self.extra.is_empty() {
            text.push_str(&self.extra);
            text.push('\n');
        }
        text
    }
}

/// nats-server's config syntax accepts JSON string literals.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_clustered_node_when_rendered_should_route_to_every_peer() {
        let config = NodeConfig {
            name: "n1".into(),
            client_port: 21001,
            monitor_port: 21002,
            store_dir: PathBuf::from("/tmp/x y/n1/store"),
            cluster: Some(ClusterConfig {
                name: "bus-test-1".into(),
                route_port: 21003,
                peer_route_ports: vec![21013, 21023],
            }),
            extra: String::new(),
        };
        let text = config.render();
        assert!(text.contains("server_name: \"n1\"\n"), "{text}");
        assert!(text.contains("listen: 127.0.0.1:21001\n"), "{text}");
        assert!(text.contains("http: 127.0.0.1:21002\n"), "{text}");
        assert!(text.contains("store_dir: \"/tmp/x y/n1/store\""), "{text}");
        assert!(text.contains("max_memory_store: 256MB"), "{text}");
        assert!(text.contains("max_file_store: 4GB"), "{text}");
        assert!(text.contains("listen: 127.0.0.1:21003\n"), "{text}");
        assert!(text.contains("nats-route://127.0.0.1:21013"), "{text}");
        assert!(text.contains("nats-route://127.0.0.1:21023"), "{text}");
        assert!(!text.contains("nats-route://127.0.0.1:21003"), "{text}");
    }

    /// A single node with `extra` appended.
    fn single(extra: &str) -> NodeConfig {
        NodeConfig {
            name: "n0".into(),
            client_port: 21001,
            monitor_port: 21002,
            store_dir: PathBuf::from("/tmp/n0/store"),
            cluster: None,
            extra: extra.into(),
        }
    }

    #[test]
    fn given_a_single_node_when_rendered_should_have_no_cluster_block() {
        assert!(!single("").render().contains("cluster"));
    }

    #[test]
    fn given_extra_text_when_rendered_should_end_with_it() {
        let text = single("no_auth_user: a").render();
        assert!(text.ends_with("}\nno_auth_user: a\n"), "{text}");
    }
}
