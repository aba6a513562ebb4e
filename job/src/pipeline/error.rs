//! Why the job stops with an error.

use shopstream_kafka::client::KafkaSetupError;
use shopstream_kafka::sink::PublishError;
use shopstream_kafka::source::SourceError;
use shopstream_sinks::store::StoreError;

/// Why the job stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Kafka set-up failed (unreachable broker, missing topic, bad properties).
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Publishing predictions or dead letters failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] shopstream_sinks::checkpoint::CheckpointError),
    /// Building a record batch failed (internal).
    #[error("cannot build the examples batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The alert webhook could not be set up.
    #[error(transparent)]
    Webhook(#[from] shopstream_drift::webhook::WebhookError),
    /// The HTTP endpoints could not listen (user: http.listen; or the port is taken).
    #[error(
        "cannot serve HTTP on {listen}: {source}; change http.listen or set http.enabled = false"
    )]
    Http {
        /// The configured address.
        listen: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Group mode: an internal topic could not be written or read.
    #[error(transparent)]
    InternalTopic(Box<shopstream_kafka::log::LogError>),
    /// Group mode: the model broadcast topic could not be written or read.
    #[error(transparent)]
    ModelBroadcast(Box<shopstream_kafka::latest::LatestError>),
    /// Group mode: the trainer lease could not be joined.
    #[error(transparent)]
    Lease(Box<shopstream_kafka::lease::LeaseError>),
    /// Group mode: a message between instances could not be encoded or read.
    #[error(transparent)]
    Protocol(#[from] shopstream_features::protocol::ProtocolError),
    /// Group mode: two instances answered a close differently (internal).
    #[error(transparent)]
    Merge(#[from] shopstream_features::MergeQueueError),
    /// An input mapping file is unreadable or invalid (user).
    #[error(transparent)]
    Mapping(#[from] shopstream_ingest::mapping::MappingError),
    /// A setting the run cannot work with (user).
    #[error("{0}")]
    Unsupported(String),
    /// A task panicked (internal).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<shopstream_kafka::log::LogError> for PipelineError {
    fn from(e: shopstream_kafka::log::LogError) -> Self {
        Self::InternalTopic(Box::new(e))
    }
}

impl From<shopstream_kafka::latest::LatestError> for PipelineError {
    fn from(e: shopstream_kafka::latest::LatestError) -> Self {
        Self::ModelBroadcast(Box::new(e))
    }
}

impl From<shopstream_kafka::lease::LeaseError> for PipelineError {
    fn from(e: shopstream_kafka::lease::LeaseError) -> Self {
        Self::Lease(Box::new(e))
    }
}
