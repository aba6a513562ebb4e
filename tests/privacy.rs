//! `[privacy]` at ingest: a job run with pseudonyms on leaves no raw user or session id,
//! and no search text, in the store, the topics it writes (predictions, dead letters),
//! its checkpoints or its logs; and pseudonymisation changes no behaviour: the store
//! holds the same rows as a run without it, with every user id replaced by its pseudonym.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use arrow::array::{Array, StringArray};
use shopstream_config::DroppedField;
use shopstream_ingest::decode::{DecodeLimits, decode};
use shopstream_ingest::event::Event;
use shopstream_ingest::generator::Generator;
use shopstream_ingest::privacy::{Minimise, Privacy};

mod support;

const KEY: &str = "a test key that is long enough, 44 bytes";

/// Every string value of every committed file of every table of `store`, by table and
/// column.
fn store_strings(store: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let storage = shopstream_sinks::storage::Storage::local(store);
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for table in shopstream_sinks::manifest::tables(&storage).unwrap() {
        for file in shopstream_sinks::manifest::live_files(&storage, &table).unwrap() {
            let (_, batches) = shopstream_sinks::read::read_object(&storage, &file.key).unwrap();
            for batch in batches {
                for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                    if let Some(values) = column.as_any().downcast_ref::<StringArray>() {
                        out.entry((table.clone(), field.name().clone()))
                            .or_default()
                            .extend(values.iter().flatten().map(str::to_string));
                    }
                }
            }
        }
    }
    out
}

/// The words of `text`: runs of letters, digits, `_` and `-`.
fn words(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The decompressed MessagePack of every checkpoint file below `dir`.
fn checkpoint_payloads(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(checkpoint_payloads(&path));
        } else if path.extension().is_some_and(|e| e == "ckpt") {
            let bytes = std::fs::read(&path).unwrap();
            // Two header lines, then zstd(MessagePack(state)).
            let mut lines = bytes.splitn(3, |b| *b == b'\n');
            let (_, _, payload) = (lines.next(), lines.next(), lines.next().unwrap());
            out.push(zstd::stream::decode_all(payload).unwrap());
        }
    }
    out
}

/// Every string of MessagePack `packed` (map keys included; byte strings, where the
/// model's arrays are, skipped).
fn packed_strings(packed: &[u8]) -> BTreeSet<String> {
    fn be(bytes: &[u8], at: &mut usize, n: usize) -> usize {
        let v = bytes[*at..*at + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        *at += n;
        v
    }
    fn walk(bytes: &[u8], at: &mut usize, out: &mut BTreeSet<String>) {
        let tag = bytes[*at];
        *at += 1;
        let string = |at: &mut usize, len: usize, out: &mut BTreeSet<String>| {
            out.insert(String::from_utf8_lossy(&bytes[*at..*at + len]).into_owned());
            *at += len;
        };
        match tag {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
            0x80..=0x8f => {
                for _ in 0..2 * usize::from(tag & 0x0f) {
                    walk(bytes, at, out);
                }
            }
            0x90..=0x9f => {
                for _ in 0..usize::from(tag & 0x0f) {
                    walk(bytes, at, out);
                }
            }
            0xa0..=0xbf => string(at, usize::from(tag & 0x1f), out),
            0xd9..=0xdb => {
                let len = be(bytes, at, 1 << (tag - 0xd9));
                string(at, len, out);
            }
            0xc4..=0xc6 => {
                let len = be(bytes, at, 1 << (tag - 0xc4));
                *at += len;
            }
            0xc7..=0xc9 => {
                let len = be(bytes, at, 1 << (tag - 0xc7));
                *at += 1 + len;
            }
            0xca => *at += 4,
            0xcb => *at += 8,
            0xcc..=0xcf => *at += 1 << (tag - 0xcc),
            0xd0..=0xd3 => *at += 1 << (tag - 0xd0),
            0xd4..=0xd8 => *at += 1 + (1 << (tag - 0xd4)),
            0xdc | 0xdd => {
                let n = be(bytes, at, if tag == 0xdc { 2 } else { 4 });
                for _ in 0..n {
                    walk(bytes, at, out);
                }
            }
            0xde | 0xdf => {
                let n = be(bytes, at, if tag == 0xde { 2 } else { 4 });
                for _ in 0..2 * n {
                    walk(bytes, at, out);
                }
            }
            0xc1 => panic!("0xc1 is never used in MessagePack"),
        }
    }
    let mut out = BTreeSet::new();
    let mut at = 0;
    while at < packed.len() {
        walk(packed, &mut at, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_id_reaches_the_store_topics_checkpoints_or_logs_and_the_rows_are_the_same() {
    let broker = support::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker.config("privacy", &dir.path().join("private"));
    config.privacy.enabled = true;
    config.privacy.drop_fields = vec![DroppedField::Query, DroppedField::Device];
    let traffic = shopstream_ingest::generator::GeneratorOptions {
        malformed_fraction: 0.02,
        ..support::two_hour_traffic(41)
    };
    // What went in: every user and session id and every search text.
    let (mut raw_ids, mut queries) = (BTreeSet::new(), BTreeSet::new());
    for message in Generator::new(traffic.clone()) {
        if let Ok(event) = decode(
            message.topic,
            None,
            &message.payload,
            DecodeLimits::default(),
        ) {
            match event {
                Event::Click(c) => {
                    raw_ids.insert(c.user_id.to_string());
                    raw_ids.insert(c.session_id.to_string());
                    queries.extend(c.query.map(String::from));
                }
                Event::Order(o) => {
                    raw_ids.insert(o.user_id.to_string());
                }
                Event::Inventory(_) => {}
            }
        }
    }
    assert!(raw_ids.len() > 100 && !queries.is_empty());
    let (report, _, private_path) = support::publish_for_binary(&config, traffic, dir.path()).await;
    assert!(report.malformed_total > 0, "dead letters to check");
    let run = |config_path: &Path, key: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopstream"));
        command
            .args(["run", "--stop-at-end", "--config"])
            .arg(config_path)
            .env(
                "SHOPSTREAM_LOG",
                "info,shopstream_job=debug,shopstream_kafka=debug",
            )
            .env("SHOPSTREAM__HTTP__ENABLED", "false")
            .env_remove("SHOPSTREAM_PRIVACY_KEY");
        if let Some(key) = key {
            command.env("SHOPSTREAM_PRIVACY_KEY", key);
        }
        command.output().unwrap()
    };

    // Without its key the job refuses to start, and says where the key goes.
    let refused = run(&private_path, None);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("$SHOPSTREAM_PRIVACY_KEY is empty or unset"),
        "{said}"
    );

    let out = run(&private_path, Some(KEY));
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{logs}");
    let summary = String::from_utf8_lossy(&out.stdout).to_string();

    // The same traffic without [privacy], in a group of its own.
    let mut plain = config.clone();
    plain.privacy.enabled = false;
    plain.store.path = dir.path().join("plain");
    plain.kafka.group_id = format!("{}-plain", config.kafka.group_id);
    plain.topics.predictions = format!("{}-plain", config.topics.predictions);
    plain.topics.dead_letter = format!("{}-plain", config.topics.dead_letter);
    let plain_path = dir.path().join("plain.toml");
    std::fs::write(&plain_path, toml::to_string(&plain).unwrap()).unwrap();
    let plain_out = run(&plain_path, None);
    assert!(
        plain_out.status.success(),
        "{}",
        String::from_utf8_lossy(&plain_out.stderr)
    );

    let minimise = Minimise {
        sessions: true,
        query: true,
        device: true,
        price_step: None,
    };
    let privacy = Privacy::new(KEY.as_bytes(), minimise).unwrap();
    let leaks = |what: &str, text: &str| {
        let found: Vec<&str> = words(text)
            .into_iter()
            .filter(|w| raw_ids.contains(*w))
            .chain(
                queries
                    .iter()
                    .map(String::as_str)
                    .filter(|q| text.contains(q)),
            )
            .take(5)
            .collect();
        assert!(found.is_empty(), "{what} holds raw values {found:?}");
    };

    // The store: no raw id in any string column; user ids are the pseudonyms of the
    // plain run's, row for row.
    let private = store_strings(&dir.path().join("private"));
    let plain_strings = store_strings(&dir.path().join("plain"));
    for ((table, column), values) in &private {
        let found: Vec<&String> = values
            .iter()
            .filter(|v| raw_ids.contains(*v) || queries.contains(*v))
            .take(5)
            .collect();
        assert!(
            found.is_empty(),
            "{table}.{column} holds raw values {found:?}"
        );
    }
    let key = ("examples".to_string(), "user_id".to_string());
    let mut expected: Vec<String> = plain_strings[&key]
        .iter()
        .map(|u| privacy.pseudonym(u))
        .collect();
    let mut got = private[&key].clone();
    expected.sort();
    got.sort();
    assert!(!got.is_empty());
    assert_eq!(
        got, expected,
        "the same examples, each user under its pseudonym"
    );
    let events = ("examples".to_string(), "event_id".to_string());
    assert_eq!(
        private[&events].len(),
        plain_strings[&events].len(),
        "dedupe and joins work the same"
    );
    assert!(private[&("examples".to_string(), "device".to_string())].is_empty());

    // The topics the job wrote.
    for topic in [&config.topics.predictions, &config.topics.dead_letter] {
        let records = support::read_topic(&config.kafka.brokers, topic);
        assert!(!records.is_empty(), "{topic}");
        for record in records {
            leaks(topic, &String::from_utf8_lossy(&record.key));
            leaks(topic, &String::from_utf8_lossy(&record.payload));
            for value in record.headers.values() {
                leaks(topic, value);
            }
        }
    }

    // The checkpoints.
    let payloads = checkpoint_payloads(&dir.path().join("private/_checkpoints"));
    assert!(!payloads.is_empty());
    let strings: Vec<BTreeSet<String>> = payloads.iter().map(|p| packed_strings(p)).collect();
    for held in &strings {
        let found: Vec<&String> = held
            .iter()
            .filter(|s| raw_ids.contains(*s) || queries.contains(*s))
            .take(5)
            .collect();
        assert!(found.is_empty(), "a checkpoint holds raw values {found:?}");
    }
    // ... whose strings were all read: they hold the pseudonyms.
    let some_user = privacy.pseudonym(&plain_strings[&key][0]);
    assert!(strings.iter().any(|held| held.contains(&some_user)));

    // The logs and the run summary.
    assert!(logs.contains("dead-lettered"), "{logs}");
    leaks("the logs", &logs);
    leaks("the summary", &summary);

    // Erasure takes the raw id and erases (and records) its pseudonym.
    let raw_user = &plain_strings[&key][0];
    let forget = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["store", "forget", "--user", raw_user, "--config"])
        .arg(&private_path)
        .env("SHOPSTREAM_PRIVACY_KEY", KEY)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&forget.stdout).to_string();
    assert!(
        forget.status.success(),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    let removed = plain_strings[&key]
        .iter()
        .filter(|u| *u == raw_user)
        .count();
    assert!(
        said.contains(&format!("{removed} row(s) of 1 user(s) removed")),
        "{said}"
    );
    for record in std::fs::read_dir(dir.path().join("private/_erasures")).unwrap() {
        let text = std::fs::read_to_string(record.unwrap().path()).unwrap();
        assert!(text.contains(&privacy.pseudonym(raw_user)), "{text}");
        leaks("the erasure record", &text);
    }
}
