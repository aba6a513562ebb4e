//! Where a record came from: its input topic, partition and offset. Events are ordered
//! by it within a window, and replays and checkpoints name positions with it.

use crate::event::InputTopic;

/// Where a record came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RecordMeta {
    /// Input topic.
    pub topic: InputTopic,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}
