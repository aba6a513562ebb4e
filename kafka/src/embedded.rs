//! librdkafka's in-process mock cluster, so the demo runs without a broker. It keeps at
//! most 5 MiB or 100,000 messages per partition and has no admin API: topics are created
//! here, up front.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// The embedded cluster could not be started or set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EmbeddedClusterError(String);

/// A running mock cluster; it stops when dropped.
pub struct EmbeddedCluster {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedCluster {
    /// One broker holding `topics`, each with `partitions` partitions.
    pub fn start<'t>(
        topics: impl IntoIterator<Item = &'t str>,
        partitions: i32,
    ) -> Result<Self, EmbeddedClusterError> {
        let cluster = MockCluster::new(1).map_err(|e| EmbeddedClusterError(e.to_string()))?;
        for topic in topics {
            cluster
                .create_topic(topic, partitions, 1)
                .map_err(|e| EmbeddedClusterError(format!("creating {topic}: {e}")))?;
        }
        Ok(Self { cluster })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
