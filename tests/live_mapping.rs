//! `[input.mapping]` on a live topic, against the real broker: a shop that publishes
//! clicks in its own JSON schema gets exactly the store it would get publishing contract
//! v1, and what the mapping cannot convert is dead-lettered with the reason and the field.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use shopstream_ingest::event::InputTopic;
use shopstream_ingest::generator::{GeneratedMessage, Generator};
use shopstream_job::generate::publish_messages;
use support::{Broker, assert_same_store, read_topic, run_to_end, small_shop};

/// The shop's own click schema: other names, nested objects, ISO times, its own words for
/// the kinds.
const SHOP_CLICKS: &str = r#"
[source]
format = "jsonl"

[fields]
event_id = "id"
time = { path = "when", type = "datetime", format = "%Y-%m-%dT%H:%M:%S%.3fZ" }
user_id = "visitor.id"
session_id = "visitor.session"
kind = "action"
item_id = "product.sku"
price = { path = "product.price", type = "number" }
scenario = "placement"
position = { path = "slot", type = "integer" }
device = "ua"
query = "q"

[events]
view = [{ emit = "impression" }]
open = [{ emit = "click" }]
basket_add = [{ emit = "add_to_cart" }]
basket_remove = [{ emit = "remove_from_cart" }]
like = [{ emit = "favorite" }]
find = [{ emit = "search" }]
"#;

/// A contract v1 click as the shop would publish it.
fn in_shop_schema(contract: &[u8]) -> Vec<u8> {
    let c: Value = serde_json::from_slice(contract).unwrap();
    let action = match c["type"].as_str().unwrap() {
        "impression" => "view",
        "click" => "open",
        "add_to_cart" => "basket_add",
        "remove_from_cart" => "basket_remove",
        "favorite" => "like",
        "search" => "find",
        other => panic!("unknown click type {other}"),
    };
    let when = chrono::DateTime::from_timestamp_millis(c["ts"].as_i64().unwrap())
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut shop = json!({
        "id": c["event_id"],
        "when": when,
        "visitor": { "id": c["user_id"], "session": c["session_id"] },
        "action": action,
        "placement": c["scenario"],
    });
    let mut product = serde_json::Map::new();
    for (from, to) in [("item_id", "sku"), ("price", "price")] {
        if !c[from].is_null() {
            product.insert(to.to_string(), c[from].clone());
        }
    }
    if !product.is_empty() {
        shop["product"] = Value::Object(product);
    }
    for (from, to) in [("position", "slot"), ("device", "ua"), ("query", "q")] {
        if !c[from].is_null() {
            shop[to] = c[from].clone();
        }
    }
    serde_json::to_vec(&shop).unwrap()
}

fn mapping_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("shop-clicks.toml");
    std::fs::write(&path, SHOP_CLICKS).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_in_the_shops_own_schema_give_the_store_of_contract_clicks() {
    let traffic: Vec<GeneratedMessage> = Generator::new(small_shop(23, 4_000))
        .filter(|m| m.malformed.is_none())
        .collect();
    let clicks = traffic
        .iter()
        .filter(|m| m.topic == InputTopic::Clicks)
        .count();
    assert!(clicks > 1_000, "{clicks} clicks");
    let broker = Broker::start();

    let contract_store = tempfile::tempdir().unwrap();
    let contract = broker.config("contract", contract_store.path());
    publish_messages(&contract, traffic.clone(), None)
        .await
        .unwrap();
    let contract_run = run_to_end(&contract).await;

    let shop_store = tempfile::tempdir().unwrap();
    let mut shop = broker.config("shop", shop_store.path());
    let files = tempfile::tempdir().unwrap();
    shop.input.mapping.clicks = Some(mapping_file(files.path()));
    let shop_traffic = traffic.into_iter().map(|mut m| {
        if m.topic == InputTopic::Clicks {
            m.payload = in_shop_schema(&m.payload);
        }
        m
    });
    publish_messages(&shop, shop_traffic, None).await.unwrap();
    let shop_run = run_to_end(&shop).await;

    assert_eq!(shop_run.consumed, contract_run.consumed);
    assert!(
        shop_run.dead_lettered.is_empty(),
        "{:?}",
        shop_run.dead_lettered
    );
    assert_eq!(shop_run.duplicates, contract_run.duplicates);
    let examples: usize = support::read_table(contract_store.path(), "examples")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(examples > 500, "{examples} examples");
    assert_same_store(
        "shop schema through the mapping vs contract v1",
        contract_store.path(),
        shop_store.path(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_mapping_cannot_convert_is_dead_lettered_with_reason_and_field() {
    let broker = Broker::start();
    let store = tempfile::tempdir().unwrap();
    let mut config = broker.config("shopbad", store.path());
    let files = tempfile::tempdir().unwrap();
    config.input.mapping.clicks = Some(mapping_file(files.path()));
    let message = |key: &str, payload: Value| GeneratedMessage {
        topic: InputTopic::Clicks,
        key: key.to_string(),
        payload: serde_json::to_vec(&payload).unwrap(),
        ts: 1_796_032_800_000,
        malformed: None,
    };
    let good = json!({"id": "e1", "when": "2026-11-30T10:00:00.000Z",
        "visitor": {"id": "u1", "session": "s1"}, "action": "view",
        "product": {"sku": "p1"}, "placement": "home_feed", "slot": 0});
    let mut bad_time = good.clone();
    bad_time["id"] = "e2".into();
    bad_time["when"] = "30/11/2026 10:00".into();
    let mut bad_action = good.clone();
    bad_action["id"] = "e3".into();
    bad_action["action"] = "teleport".into();
    let mut no_item = good.clone();
    no_item["id"] = "e4".into();
    no_item.as_object_mut().unwrap().remove("product");
    let sent = vec![
        message("u1", good),
        message("u1", bad_time),
        message("u1", bad_action),
        message("u1", no_item),
    ];
    publish_messages(&config, sent, None).await.unwrap();
    let summary = run_to_end(&config).await;
    let letters = read_topic(&broker.bootstrap, &config.topics.dead_letter);
    let fields: Vec<(String, String)> = letters
        .iter()
        .map(|r| {
            (
                r.headers["shopstream.reason"].clone(),
                r.headers
                    .get("shopstream.field")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            ("schema_violation".to_string(), "when".to_string()),
            ("schema_violation".to_string(), "action".to_string()),
            ("schema_violation".to_string(), "product.sku".to_string()),
        ],
        "{letters:?}"
    );
    for letter in &letters {
        let message = &letter.headers["shopstream.message"];
        assert!(message.contains("input.mapping.clicks"), "{message}");
    }
    assert_eq!(summary.consumed.values().sum::<u64>(), 4);
}
