//! Erasures as the job applies them: the users of every request `shopstream store
//! forget` recorded in the store ([`shopstream_sinks::forget::erasure_records`]) lose
//! their keyed state when the job starts (before any event) and, for requests recorded
//! while it runs, at its next checkpoint (before the state is written). Each request is
//! applied once per process: a user seen again afterwards builds new state.

use std::collections::BTreeSet;

use shopstream_config::Config;
use shopstream_sinks::storage::Storage;

use super::PipelineError;

/// The erasure records of one store, and which of them this process applied.
pub(super) struct Erasures {
    storage: Storage,
    applied: BTreeSet<String>,
    /// The users of every request applied.
    users: BTreeSet<String>,
}

impl Erasures {
    /// The records of `config`'s store.
    pub(super) fn open(config: &Config) -> Result<Self, PipelineError> {
        Ok(Self {
            storage: shopstream_sinks::store::open_storage(&config.store)?,
            applied: BTreeSet::new(),
            users: BTreeSet::new(),
        })
    }

    /// The users of the requests recorded since the last call (all of them at the first),
    /// now counted as applied.
    pub(super) fn take_new(&mut self) -> Result<BTreeSet<String>, PipelineError> {
        let mut users = BTreeSet::new();
        for (key, record) in shopstream_sinks::forget::erasure_records(&self.storage)? {
            if self.applied.insert(key) {
                users.extend(record.users);
            }
        }
        self.users.extend(users.iter().cloned());
        Ok(users)
    }

    /// The users of every request applied so far (for state loaded later from a
    /// checkpoint that may predate them).
    pub(super) fn applied_users(&self) -> &BTreeSet<String> {
        &self.users
    }
}

/// Logs what an erasure dropped.
pub(super) fn report(users: &BTreeSet<String>, entries: usize) {
    if !users.is_empty() {
        tracing::info!(
            users = users.len(),
            entries,
            "erasure: dropped the keyed state of the users `store forget` recorded"
        );
    }
}
