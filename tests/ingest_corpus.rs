//! The bad-input corpus against a real broker: every hostile message lands on the
//! dead-letter topic with the expected reason, one for one, nothing panics, and the counts
//! reconcile exactly: consumed == valid + dead-lettered + duplicates.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;

use shopstream_ingest::decode::Reason;
use shopstream_ingest::event::InputTopic;
use shopstream_ingest::generator::{
    DEFAULT_START_MS, Generator, GeneratorOptions, world::WorldSize,
};
use shopstream_job::generate::publish_traffic;
use shopstream_kafka::client::input_topic_name;
use shopstream_kafka::sink::Publisher;
use support::{Broker, read_topic};

/// What the pipeline must do with a corpus message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Accept,
    Reject(Reason),
    Duplicate,
}

struct Case {
    name: &'static str,
    topic: InputTopic,
    key: String,
    payload: Vec<u8>,
    expect: Expect,
}

fn case(
    name: &'static str,
    topic: InputTopic,
    key: &str,
    payload: impl Into<Vec<u8>>,
    expect: Expect,
) -> Case {
    Case {
        name,
        topic,
        key: key.to_string(),
        payload: payload.into(),
        expect,
    }
}

/// A valid click of user `u` (key `u`) at `ts`, with `extra` JSON fields spliced in.
fn click(id: &str, user: &str, ts: i64, extra: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":{ts},"user_id":"{user}","session_id":"cs","type":"impression","item_id":"sku1","scenario":"home_feed","position":1,"device":"web","price":3.5{extra}}}"#
    )
}

fn corpus() -> Vec<Case> {
    use Expect::*;
    use InputTopic::*;
    use Reason::*;
    let t = DEFAULT_START_MS + 500;
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let huge = format!(
        r#"{{"event_id":"big","ts":{t},"user_id":"cu9","session_id":"s","type":"search","scenario":"search","query":"{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    vec![
        case(
            "valid click",
            Clicks,
            "cu1",
            click("c-ok", "cu1", t, ""),
            Accept,
        ),
        case(
            "exact duplicate",
            Clicks,
            "cu1",
            click("c-ok", "cu1", t, ""),
            Duplicate,
        ),
        case(
            "duplicate id, new content",
            Clicks,
            "cu1",
            click("c-ok", "cu1", t + 5, r#","query":"retry""#),
            Duplicate,
        ),
        case(
            "truncated json",
            Clicks,
            "cu1",
            &click("c-trunc", "cu1", t, "")[..40],
            Reject(MalformedJson),
        ),
        case(
            "not json",
            Clicks,
            "cu1",
            "hello, world",
            Reject(MalformedJson),
        ),
        case("empty message", Clicks, "cu1", "", Reject(MalformedJson)),
        case(
            "whitespace only",
            Orders,
            "cu1",
            "  \n ",
            Reject(MalformedJson),
        ),
        case(
            "invalid utf-8",
            Clicks,
            "cu1",
            b"{\"event_id\":\"\xc3\x28\"}".to_vec(),
            Reject(InvalidUtf8),
        ),
        case(
            "NaN literal",
            Clicks,
            "cu1",
            click("c-nan", "cu1", t, "").replace("3.5", "NaN"),
            Reject(MalformedJson),
        ),
        case(
            "Infinity literal",
            Clicks,
            "cu1",
            click("c-inf", "cu1", t, "").replace("3.5", "Infinity"),
            Reject(MalformedJson),
        ),
        case(
            "number overflow",
            Clicks,
            "cu1",
            click("c-ovf", "cu1", t, "").replace("3.5", "1e999"),
            Reject(OutOfRange),
        ),
        case(
            "deeply nested, valid JSON",
            Clicks,
            "cu1",
            format!(r#"{{"event_id":{deep}}}"#),
            Reject(SchemaViolation),
        ),
        case(
            "deeply nested, past the parser's depth",
            Clicks,
            "cu1",
            format!("{deep}{deep}"),
            Reject(MalformedJson),
        ),
        case(
            "wrong type",
            Clicks,
            "cu1",
            click("c-type", "cu1", t, "").replace(r#""position":1"#, r#""position":"top""#),
            Reject(SchemaViolation),
        ),
        case(
            "null required",
            Clicks,
            "cu1",
            click("c-null", "cu1", t, "").replace(r#""session_id":"cs""#, r#""session_id":null"#),
            Reject(SchemaViolation),
        ),
        case(
            "unknown enum",
            Clicks,
            "cu1",
            click("c-enum", "cu1", t, "").replace("home_feed", "billboard"),
            Reject(SchemaViolation),
        ),
        case(
            "json array",
            Clicks,
            "cu1",
            "[1,2,3]",
            Reject(SchemaViolation),
        ),
        case(
            "key disagrees",
            Clicks,
            "someone-else",
            click("c-key", "cu1", t, ""),
            Reject(SchemaViolation),
        ),
        case(
            "negative price",
            Clicks,
            "cu1",
            click("c-neg", "cu1", t, "").replace("3.5", "-3.5"),
            Reject(OutOfRange),
        ),
        case(
            "year 1970",
            Clicks,
            "cu1",
            click("c-1970", "cu1", 0, ""),
            Reject(OutOfRange),
        ),
        case(
            "year 9999",
            Clicks,
            "cu1",
            click("c-9999", "cu1", 253_402_300_799_000, ""),
            Reject(OutOfRange),
        ),
        case(
            "three days ahead of its partition",
            Clicks,
            "cu1",
            click("c-skew", "cu1", t + 3 * 86_400_000, ""),
            Reject(OutOfRange),
        ),
        case("10 MB string", Clicks, "cu9", huge, Reject(TooLarge)),
        case(
            "negative quantity",
            Orders,
            "cu1",
            format!(
                r#"{{"order_id":"co1","ts":{t},"user_id":"cu1","status":"placed","lines":[{{"item_id":"sku1","quantity":-2,"unit_price":1.0}}],"currency":"EUR"}}"#
            ),
            Reject(OutOfRange),
        ),
        case(
            "order without lines",
            Orders,
            "cu1",
            format!(
                r#"{{"order_id":"co2","ts":{t},"user_id":"cu1","status":"placed","lines":[],"currency":"EUR"}}"#
            ),
            Reject(SchemaViolation),
        ),
        case(
            "negative stock",
            Inventory,
            "sku1",
            format!(
                r#"{{"event_id":"cv1","ts":{t},"item_id":"sku1","kind":"snapshot","on_hand":-1}}"#
            ),
            Reject(OutOfRange),
        ),
        case(
            "valid inventory, mixed-case enum",
            Inventory,
            "sku1",
            format!(
                r#"{{"event_id":"cv2","ts":{t},"item_id":"sku1","kind":" Snapshot ","on_hand":4}}"#
            ),
            Accept,
        ),
        case(
            "inventory replayed",
            Inventory,
            "sku1",
            format!(
                r#"{{"event_id":"cv2","ts":{t},"item_id":"sku1","kind":"snapshot","on_hand":4}}"#
            ),
            Duplicate,
        ),
    ]
}

type DeadLetters = BTreeMap<(String, Vec<u8>, String), u64>;

/// Entries of `a` that `b` lacks, shortened for a readable failure message.
fn absent_from(a: &DeadLetters, b: &DeadLetters) -> Vec<(String, String, String)> {
    a.keys()
        .filter(|k| !b.contains_key(*k))
        .map(|(topic, payload, reason)| {
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).to_string();
            (topic.clone(), shown, reason.clone())
        })
        .collect()
}

/// Guards "nothing silently dropped": hostile input and generator noise are dead-lettered
/// with the expected reason, one for one, and all counts reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_and_noisy_traffic_reconcile_one_for_one() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let mut config = broker.config("corpus", store.path());
    config.kafka.topic_partitions = 2;
    let topic_name = |t: InputTopic| input_topic_name(&config.topics, t).to_string();
    let inputs: Vec<String> = InputTopic::ALL.into_iter().map(topic_name).collect();
    shopstream_kafka::client::ensure_topics(&config.kafka, &inputs)
        .await
        .unwrap();

    // The corpus goes first, so its events are not behind the generator's watermark.
    let corpus = corpus();
    let mut publisher = Publisher::new(&config.kafka).unwrap();
    for c in &corpus {
        publisher
            .send(
                "corpus",
                &topic_name(c.topic),
                c.key.as_bytes(),
                &c.payload,
                None,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("producing {}: {e}", c.name));
    }
    publisher.flush().await.unwrap();

    let traffic = GeneratorOptions {
        seed: 21,
        max_events: Some(4_000),
        size: WorldSize {
            users: 200,
            items: 300,
            categories: 10,
        },
        malformed_fraction: 0.01,
        ..GeneratorOptions::default()
    };
    let report = publish_traffic(&config, traffic.clone(), None, None)
        .await
        .unwrap();
    assert!(report.malformed_total > 10, "{report:?}");

    let summary = support::run_to_end(&config).await;

    // Expected dead letters: (source topic, original bytes, reason), as a multiset.
    let mut expected = DeadLetters::new();
    for c in &corpus {
        if let Expect::Reject(reason) = c.expect {
            *expected
                .entry((
                    topic_name(c.topic),
                    c.payload.clone(),
                    reason.as_str().to_string(),
                ))
                .or_default() += 1;
        }
    }
    for m in Generator::new(traffic).filter(|m| m.malformed.is_some()) {
        let reason = m.malformed.unwrap().as_str().to_string();
        *expected
            .entry((topic_name(m.topic), m.payload, reason))
            .or_default() += 1;
    }
    let mut actual = DeadLetters::new();
    for r in read_topic(&broker.bootstrap, &config.topics.dead_letter) {
        let key = (
            r.headers["shopstream.source.topic"].clone(),
            r.payload,
            r.headers["shopstream.reason"].clone(),
        );
        *actual.entry(key).or_default() += 1;
    }
    let missing = absent_from(&expected, &actual);
    let unexpected = absent_from(&actual, &expected);
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing {missing:#?}\nunexpected {unexpected:#?}"
    );
    assert_eq!(actual, expected);

    // Exact reconciliation.
    let corpus_count =
        |e: fn(&Expect) -> bool| corpus.iter().filter(|c| e(&c.expect)).count() as u64;
    let accepted = corpus_count(|e| *e == Expect::Accept);
    let duplicates = corpus_count(|e| *e == Expect::Duplicate);
    let rejected = corpus_count(|e| matches!(e, Expect::Reject(_)));
    let consumed: u64 = summary.consumed.values().sum();
    let valid: u64 = summary.valid.values().sum();
    let dead: u64 = summary.dead_lettered.values().sum();
    let dup: u64 = summary.duplicates.values().sum();
    assert_eq!(
        consumed,
        corpus.len() as u64 + report.valid_total + report.malformed_total
    );
    assert_eq!(valid, accepted + report.valid_total);
    assert_eq!(dead, rejected + report.malformed_total);
    assert_eq!(dup, duplicates);
    assert_eq!(consumed, valid + dead + dup);
    for topic in ["clicks", "orders", "inventory"] {
        let get = |m: &BTreeMap<String, u64>| m.get(topic).copied().unwrap_or(0);
        assert_eq!(
            get(&summary.consumed),
            get(&summary.valid) + get(&summary.dead_lettered_per_topic) + get(&summary.duplicates),
            "{topic}"
        );
    }
    assert_eq!(summary.dead_letters_published, dead);
    eprintln!(
        "reconciled: consumed {consumed} = valid {valid} + dead-lettered {dead} + duplicates {dup}; \
         corpus {} cases ({rejected} rejected, {duplicates} duplicates), generator malformed {}",
        corpus.len(),
        report.malformed_total
    );
}
