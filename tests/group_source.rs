//! The source in group mode (`KafkaSource::connect_group`) against a real broker: two
//! instances of one group split the click and order partitions, partition *i* of both
//! topics on one instance, each reads what it holds to the end (end-of-partition events
//! name their topic), and the partitions move when an instance joins or leaves.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use shopstream_config::Config;
use shopstream_ingest::event::InputTopic;
use shopstream_kafka::client::ensure_topics;
use shopstream_kafka::source::{AssignmentStarts, KafkaSource, SourceMessage};
use support::Broker;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 25;

/// What one instance's source told it.
#[derive(Debug, Default)]
struct Seen {
    /// Partitions held now.
    held: BTreeSet<(InputTopic, i32)>,
    /// Offsets read since each partition was last assigned.
    read: BTreeMap<(InputTopic, i32), BTreeSet<i64>>,
    /// Partitions at their end since last assigned.
    at_end: BTreeSet<(InputTopic, i32)>,
}

impl Seen {
    /// Whether every held partition was read whole, to its end.
    fn read_all_held(&self) -> bool {
        !self.held.is_empty()
            && self.held.iter().all(|k| {
                self.at_end.contains(k)
                    && self.read.get(k).is_some_and(|o| {
                        o.len() as i64 == PER_PARTITION && o.iter().copied().eq(0..PER_PARTITION)
                    })
            })
    }

    /// The partition numbers held, checked to be the same for clicks and orders.
    fn numbers(&self) -> BTreeSet<i32> {
        let of = |topic| -> BTreeSet<i32> {
            self.held
                .iter()
                .filter(|(t, _)| *t == topic)
                .map(|(_, p)| *p)
                .collect()
        };
        let clicks = of(InputTopic::Clicks);
        assert_eq!(clicks, of(InputTopic::Orders), "co-partitioned: {self:?}");
        clicks
    }
}

/// One instance's source, running until `cancel`, recording into the returned [`Seen`].
async fn instance(config: &Config, cancel: CancellationToken) -> Arc<Mutex<Seen>> {
    instance_with_processor(config, cancel, None).await.0
}

/// [`instance`], with the task that processes (records) the source's messages: aborting
/// it drops the source's receiver.
async fn instance_with_processor(
    config: &Config,
    cancel: CancellationToken,
    starts: Option<Arc<dyn AssignmentStarts>>,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let (source, _committer) = KafkaSource::connect_group(&config.kafka, &config.topics, starts)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let options = support::source_options(true);
    tokio::spawn(source.run(tx, cancel, options));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let processor = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let mut seen = record.lock().unwrap();
            match message {
                SourceMessage::Assigned(partitions) => {
                    for key in partitions {
                        seen.held.insert(key);
                        seen.read.remove(&key);
                        seen.at_end.remove(&key);
                    }
                }
                SourceMessage::Revoked(partitions) => {
                    for key in partitions {
                        seen.held.remove(&key);
                    }
                }
                SourceMessage::PartitionEof { topic, partition } => {
                    seen.at_end.insert((topic, partition));
                }
                SourceMessage::Event { meta, .. } | SourceMessage::Rejected { meta, .. } => {
                    let key = (meta.topic, meta.partition);
                    assert!(seen.held.contains(&key), "read {key:?} without holding it");
                    seen.read.entry(key).or_default().insert(meta.offset);
                }
                SourceMessage::CaughtUp => panic!("a group source never stops by itself"),
            }
        }
    });
    (seen, processor)
}

async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a broker with the click and order topics of `name`, [`PER_PARTITION`]
/// undecodable messages in each partition.
async fn broker_with_inputs(name: &str) -> (Broker, tempfile::TempDir, Config) {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let config = broker.config(name, store.path());
    let inputs: Vec<String> = [&config.topics.clicks, &config.topics.orders]
        .map(String::clone)
        .to_vec();
    let counts = ensure_topics(&config.kafka, &inputs).await.unwrap();
    assert!(counts.values().all(|c| *c == PARTITIONS), "{counts:?}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    for topic in &inputs {
        for p in 0..PARTITIONS {
            for _ in 0..PER_PARTITION {
                let record = FutureRecord::to(topic)
                    .key("k")
                    .payload("not an event")
                    .partition(p);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
    }

    (broker, store, config)
}

/// Waits until `instance` alone holds all 8 partitions and has read each to its end.
async fn wait_holds_all(what: &str, instance: &Arc<Mutex<Seen>>) {
    wait_until(what, || {
        let seen = instance.lock().unwrap();
        seen.held.len() == 8 && seen.read_all_held()
    })
    .await;
}

/// Waits until `a` and `b` hold 2 partition numbers each and have read them to the end.
async fn wait_split(a: &Arc<Mutex<Seen>>, b: &Arc<Mutex<Seen>>) {
    wait_until(
        "two instances hold 2 partition numbers each, each read whole to its end",
        || {
            let (a, b) = (a.lock().unwrap(), b.lock().unwrap());
            a.held.len() == 4 && b.held.len() == 4 && a.read_all_held() && b.read_all_held()
        },
    )
    .await;
}

/// The first instance, alone in the group until it holds and has read all 8 partitions.
async fn first_alone(config: &Config) -> (Arc<Mutex<Seen>>, CancellationToken) {
    let cancel = CancellationToken::new();
    let first = instance(config, cancel.clone()).await;
    wait_holds_all("the only instance holds and reads all 8 partitions", &first).await;
    (first, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_a_group_split_co_partitioned_topics_and_read_them_to_the_end() {
    let (_broker, _store, config) = broker_with_inputs("group-source").await;

    let (first, first_cancel) = first_alone(&config).await;

    let second_cancel = CancellationToken::new();
    let second = instance(&config, second_cancel.clone()).await;
    wait_split(&first, &second).await;
    let (a, b) = (
        first.lock().unwrap().numbers(),
        second.lock().unwrap().numbers(),
    );
    assert!(a.is_disjoint(&b), "{a:?} and {b:?}");
    assert_eq!(a.union(&b).count(), PARTITIONS as usize);

    // The second instance leaves: the first takes its partitions back and reads them again.
    second_cancel.cancel();
    wait_holds_all("the first instance holds and reads all 8 again", &first).await;
    first_cancel.cancel();
}

/// Regression: a group source stopped only by its processor going away (the run's task
/// aborted, no cancel) while every partition it held was read to its end waited for the
/// next message forever, holding its partitions in the group; a bounded group run then
/// never finished (seen in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_processor_is_gone_leaves_the_group_even_when_idle() {
    let (_broker, _store, config) = broker_with_inputs("group-source-gone").await;
    let (first, first_cancel) = first_alone(&config).await;
    // Its source's token is never cancelled.
    let (second, processor) =
        instance_with_processor(&config, CancellationToken::new(), None).await;
    wait_split(&first, &second).await;
    // Idle now: nothing more to read. Its processor goes; the source is never cancelled.
    processor.abort();
    wait_holds_all("the first instance holds and reads all 8 again", &first).await;
    first_cancel.cancel();
}

/// Start offsets of a partition number: clicks at `10 + p`, orders at 5; every call
/// recorded.
#[derive(Default)]
struct Starts {
    asked: Mutex<Vec<i32>>,
}

impl AssignmentStarts for Starts {
    fn starts(&self, partition: i32) -> BTreeMap<InputTopic, i64> {
        self.asked.lock().unwrap().push(partition);
        [
            (InputTopic::Clicks, 10 + i64::from(partition)),
            (InputTopic::Orders, 5),
        ]
        .into()
    }
}

/// Guards "a resumed partition is not fetched again from its start": the source asks the
/// job where each partition number it is assigned starts (its checkpoint's offsets), once
/// per assignment, and reads from exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_source_reads_each_assigned_partition_from_where_the_job_says() {
    let (_broker, _store, mut config) = broker_with_inputs("group-source-starts").await;
    // Every message here is a record batch of its own, so the broker can start a fetch
    // at any offset (see kafka.seek_back_messages).
    config.kafka.seek_back_messages = 0;
    let starts = Arc::new(Starts::default());
    let cancel = CancellationToken::new();
    let (seen, _processor) = instance_with_processor(
        &config,
        cancel.clone(),
        Some(Arc::clone(&starts) as Arc<dyn AssignmentStarts>),
    )
    .await;
    wait_until(
        "the only instance holds all 8 partitions and reads them to the end",
        || {
            let seen = seen.lock().unwrap();
            seen.held.len() == 8 && seen.at_end.len() == 8
        },
    )
    .await;
    let seen = seen.lock().unwrap();
    for p in 0..PARTITIONS {
        let from = |topic| seen.read.get(&(topic, p)).and_then(|o| o.first()).copied();
        let count = |topic| seen.read.get(&(topic, p)).map_or(0, BTreeSet::len);
        assert_eq!(
            from(InputTopic::Clicks),
            Some(10 + i64::from(p)),
            "clicks {p}"
        );
        assert_eq!(
            count(InputTopic::Clicks) as i64,
            PER_PARTITION - 10 - i64::from(p)
        );
        assert_eq!(from(InputTopic::Orders), Some(5), "orders {p}");
        assert_eq!(count(InputTopic::Orders) as i64, PER_PARTITION - 5);
    }
    let mut asked = starts.asked.lock().unwrap().clone();
    asked.sort_unstable();
    assert_eq!(asked, [0, 1, 2, 3], "asked once per partition number");
    cancel.cancel();
}
