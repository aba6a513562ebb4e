//! The topic transport of scale-out (`shopstream_kafka::log`) against a real broker:
//! messages larger than a record are split and put together again, writers that append
//! at once interleave without mixing their messages, and a reader reopened at its resume
//! offset gets every message it had not finished.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shopstream_config::KafkaConfig;
use shopstream_kafka::log::{
    DEFAULT_FRAGMENT_BYTES, FRAGMENT_HEADER, LogEntry, LogError, LogOptions, LogReader, LogWriter,
};
use support::Broker;

/// Bytes that differ at every position, so a fragment out of place shows.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn options(topic: &str, writer: &str, fragment_bytes: usize) -> LogOptions {
    LogOptions {
        topic: topic.to_string(),
        writer: writer.to_string(),
        fragment_bytes,
    }
}

async fn next(reader: &mut LogReader) -> LogEntry {
    tokio::time::timeout(Duration::from_secs(60), reader.next())
        .await
        .expect("a message within 60 s")
        .unwrap()
}

/// Appends one raw record to `topic`, as a writer's fragment `label` of message `key`.
async fn raw(kafka: &KafkaConfig, topic: &str, key: &str, label: Option<&str>, body: &[u8]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let mut record = FutureRecord::to(topic).key(key).payload(body).partition(0);
    if let Some(label) = label {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: FRAGMENT_HEADER,
            value: Some(label),
        }));
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_concurrent_writers_come_back_whole_and_in_each_writers_order() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("log-concurrent", store.path()).kafka;
    let topic = format!("{}.parts", kafka.group_id);
    // Small fragments: a 5,500-byte message goes as 6 records.
    let mut first = LogWriter::create(&kafka, options(&topic, "a-1", 1_000))
        .await
        .unwrap();
    let mut second = LogWriter::create(&kafka, options(&topic, "b-1", 1_000))
        .await
        .unwrap();
    let sent_a: Vec<Vec<u8>> = (0..4).map(|i| payload(i, 5_500 - usize::from(i))).collect();
    let sent_b: Vec<Vec<u8>> = (0..12)
        .map(|i| payload(100 + i, 10 + usize::from(i)))
        .collect();
    let (a, b) = tokio::join!(
        async {
            for message in &sent_a {
                first.append(message).await.unwrap();
            }
        },
        async {
            for message in &sent_b {
                second.append(message).await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    );
    let ((), ()) = (a, b);

    let mut reader = LogReader::open(&kafka, &topic, 0).await.unwrap();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut last_offset = -1;
    while got_a.len() + got_b.len() < sent_a.len() + sent_b.len() {
        let entry = next(&mut reader).await;
        assert!(entry.offset > last_offset, "messages in log order");
        last_offset = entry.offset;
        match entry.writer.as_str() {
            "a-1" => got_a.push(entry.payload),
            "b-1" => got_b.push(entry.payload),
            other => panic!("a message of writer {other}"),
        }
    }
    assert_eq!(got_a, sent_a, "the large messages, whole and in order");
    assert_eq!(got_b, sent_b, "the small messages, whole and in order");
    // 4 messages of 6 fragments and 12 of one: 36 records.
    assert_eq!(reader.resume_offset(), 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_the_1_mb_record_limit_goes_in_default_fragments() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("log-large", store.path()).kafka;
    let topic = format!("{}.closes", kafka.group_id);
    let mut writer = LogWriter::create(
        &kafka,
        options(&topic, "coordinator-1", DEFAULT_FRAGMENT_BYTES),
    )
    .await
    .unwrap();
    // 2.5 MB: above the 1 MB limit of a record.
    let large = payload(7, 2_500_000);
    let last = writer.append(&large).await.unwrap();
    assert_eq!(last, 2, "three fragments at offsets 0 to 2");
    writer.append(b"after").await.unwrap();
    let mut reader = LogReader::open(&kafka, &topic, 0).await.unwrap();
    let entry = next(&mut reader).await;
    assert_eq!((entry.offset, entry.payload.len()), (2, large.len()));
    assert!(entry.payload == large, "the bytes put together again");
    assert_eq!(next(&mut reader).await.payload, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reopened_at_its_resume_offset_loses_no_message_it_had_not_finished() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("log-resume", store.path()).kafka;
    let topic = format!("{}.progress", kafka.group_id);
    let mut reader = LogReader::open(&kafka, &topic, 0).await.unwrap();
    // Writer a's message 0 in two fragments around writer b's whole message.
    raw(&kafka, &topic, "a/0", Some("0/2"), b"hello ").await;
    raw(&kafka, &topic, "b/0", Some("0/1"), b"between").await;
    raw(&kafka, &topic, "a/0", Some("1/2"), b"world").await;
    raw(&kafka, &topic, "b/1", Some("0/1"), b"last").await;

    let between = next(&mut reader).await;
    assert_eq!((between.writer.as_str(), between.offset), ("b", 1));
    // a/0 is half read: reopening must start at its first fragment.
    assert_eq!(reader.resume_offset(), 0);
    let mut reopened = LogReader::open(&kafka, &topic, reader.resume_offset())
        .await
        .unwrap();
    let again = next(&mut reopened).await;
    assert_eq!(
        again, between,
        "a message completed after the resume offset comes again"
    );
    let whole = next(&mut reopened).await;
    assert_eq!((whole.writer.as_str(), whole.offset), ("a", 2));
    assert_eq!(whole.payload, b"hello world");
    assert_eq!(reopened.resume_offset(), 3);
    // Reopened past every finished message: only what follows.
    let mut tail = LogReader::open(&kafka, &topic, 3).await.unwrap();
    assert_eq!(next(&mut tail).await.payload, b"last");
}

/// Guards the coordinator checkpoint's shards position: a writer that died mid-message
/// (its message never completes) must not hold the position back, and a reader reopened
/// at its position returns exactly what the first one would have, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reopened_at_its_position_goes_on_past_a_writer_that_died_mid_message() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("log-position", store.path()).kafka;
    let topic = format!("{}.shards", kafka.group_id);
    let mut reader = LogReader::open(&kafka, &topic, 0).await.unwrap();
    // Writer d dies after the first of three fragments; writer a's message straddles
    // the point where the position is taken.
    raw(&kafka, &topic, "d/0", Some("0/3"), b"never ").await;
    raw(&kafka, &topic, "a/0", Some("0/2"), b"hello ").await;
    raw(&kafka, &topic, "b/0", Some("0/1"), b"between").await;
    let between = next(&mut reader).await;
    assert_eq!((between.writer.as_str(), between.offset), ("b", 2));
    let position = reader.position();
    assert_eq!(position.next_offset(), 3);
    // (The resume offset stays at the dead writer's fragment.)
    assert_eq!(reader.resume_offset(), 0);
    raw(&kafka, &topic, "a/0", Some("1/2"), b"world").await;
    raw(&kafka, &topic, "b/1", Some("0/1"), b"last").await;

    let mut reopened = LogReader::open_at(&kafka, &topic, position).await.unwrap();
    let whole = next(&mut reopened).await;
    assert_eq!((whole.writer.as_str(), whole.offset), ("a", 3));
    assert_eq!(whole.payload, b"hello world");
    assert_eq!(next(&mut reopened).await.payload, b"last");
    assert_eq!(reopened.position().next_offset(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_no_writer_wrote_is_an_error_naming_its_offset() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("log-foreign", store.path()).kafka;
    let topic = format!("{}.closes", kafka.group_id);
    let mut reader = LogReader::open(&kafka, &topic, 0).await.unwrap();
    raw(&kafka, &topic, "a/0", Some("0/1"), b"fine").await;
    raw(&kafka, &topic, "someone", None, b"not ours").await;
    assert_eq!(next(&mut reader).await.payload, b"fine");
    let error = tokio::time::timeout(Duration::from_secs(60), reader.next())
        .await
        .expect("an answer within 60 s");
    match error {
        Err(e @ LogError::Foreign { offset: 1, .. }) => {
            assert!(
                e.to_string().contains("must be used by shopstream alone"),
                "{e}"
            );
        }
        other => panic!("expected a foreign-record error at offset 1, got {other:?}"),
    }
}

/// The model broadcast's topic (`shopstream_kafka::latest`): created compacted with one
/// partition, a reader opened late reads every value from the start in order, and one
/// opened early sees values as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_value_topic_gives_every_reader_the_values_in_order() {
    use shopstream_kafka::latest::{LatestReader, LatestWriter};
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let kafka = broker.config("latest", store.path()).kafka;
    let topic = format!("{}.model", kafka.group_id);
    let writer = LatestWriter::create(&kafka, &topic, "model").await.unwrap();
    let mut early = LatestReader::open(&kafka, &topic).await.unwrap();
    for value in [b"v1", b"v2"] {
        writer.publish(value).await.unwrap();
    }
    let mut late = LatestReader::open(&kafka, &topic).await.unwrap();
    writer.publish(b"v3").await.unwrap();
    for reader in [&mut early, &mut late] {
        for expected in [b"v1", b"v2", b"v3"] {
            let value = tokio::time::timeout(Duration::from_secs(60), reader.next())
                .await
                .expect("a value within 60 s")
                .unwrap();
            assert_eq!(value, expected);
        }
    }
    let counts = shopstream_kafka::client::partition_counts(&kafka, std::slice::from_ref(&topic))
        .await
        .unwrap();
    assert_eq!(counts.get(&topic), Some(&1), "one partition");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()
            .unwrap();
    let described = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&topic)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let policy = resource.get("cleanup.policy").and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"), "{:?}", resource.entries);
}

/// Guards "a log keeps every message": a coordinator that takes a run over reads the
/// closes log from its start, so the log topics are created without time or size
/// retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_topic_is_created_to_keep_every_message() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let broker = Broker::start();
    let config = broker.config("log-retention", std::path::Path::new("unused"));
    let topic = format!("{}.closes", config.kafka.group_id);
    LogWriter::create(&config.kafka, options(&topic, "w", DEFAULT_FRAGMENT_BYTES))
        .await
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    for key in ["retention.ms", "retention.bytes"] {
        let value = resource.get(key).and_then(|e| e.value.clone());
        assert_eq!(
            value.as_deref(),
            Some("-1"),
            "{key} of {topic}: {resource:?}"
        );
    }
}
