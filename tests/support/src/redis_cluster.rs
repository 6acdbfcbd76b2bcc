//! A throw-away Redis Cluster for tests: three masters on loopback ports (no replicas), made
//! with `redis-cli --cluster create`, so the 16 384 hash slots are split three ways. Its nodes
//! are killed when it is dropped.

use crate::redis::RedisServer;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running test cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, joins them into a cluster and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Panics
    /// If a node does not start, `redis-cli --cluster create` fails, or the cluster is not
    /// ready within 20 s.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let t = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// `redis://127.0.0.1:PORT/0` of the first node (a seed: the client finds the others).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Kills node `i` (a master lost with no replica to take over).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// The nodes, each a master of a third of the slots.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
