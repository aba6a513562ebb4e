#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;

use super::*;
use crate::decode::{DecodeLimits, decode};
use crate::mapping::builtin;

#[path = "taobao_reference.rs"]
mod taobao_reference;

fn taobao() -> Mapping {
    Mapping::parse(builtin("taobao").unwrap(), "taobao").unwrap()
}

fn with_run_rows(mapping: &Mapping, run_rows: usize) -> Mapping {
    let mut m = mapping.clone();
    m.spec.source.sort_run_rows = run_rows;
    m
}

fn import(mapping: &Mapping, path: &Path) -> (Vec<GeneratedMessage>, ImportReport) {
    let mut importer = Importer::open(mapping, path, None).unwrap();
    let messages: Vec<_> = importer.by_ref().collect();
    (messages, importer.finish().unwrap())
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn shared_sample(name: &str) -> PathBuf {
    reference_log(name).unwrap_or_else(|e| panic!("{e}"))
}

fn same_messages(got: &[GeneratedMessage], want: &[GeneratedMessage]) {
    assert_eq!(got.len(), want.len(), "message count");
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            (g.topic, &g.key, g.ts, &g.payload),
            (w.topic, &w.key, w.ts, &w.payload),
            "message {n}: {} vs {}",
            String::from_utf8_lossy(&g.payload),
            String::from_utf8_lossy(&w.payload)
        );
    }
}

#[test]
fn taobao_mapping_publishes_exactly_what_the_hard_coded_importer_did() {
    let sample = shared_sample("taobao-userbehavior-sample.csv");
    let (want, old) =
        taobao_reference::import_taobao(std::io::BufReader::new(File::open(&sample).unwrap()))
            .unwrap();
    let mapping = taobao();
    // In memory, and sorted in runs on disk of several sizes: the same bytes.
    for run_rows in [1_000_000, 1_000, 97] {
        let (got, report) = import(&with_run_rows(&mapping, run_rows), &sample);
        same_messages(&got, &want);
        assert_eq!(report.rows, old.rows);
        assert_eq!(report.per_behavior, old.per_behavior);
        assert_eq!(report.items, old.items);
        assert_eq!(report.messages_per_topic, old.messages_per_topic);
        assert_eq!(
            (report.first_ts, report.last_ts),
            (old.first_ts, old.last_ts)
        );
        assert_eq!(report.rejected_rows, 0);
    }
}

#[test]
fn taobao_bad_rows_are_reported_with_their_line_and_never_published() {
    let csv = "1,10,100,pv,1511544070\n1,10,100,buy,1511544000\n2,11,100,cart,1511544071\n\
               \n2,11,100,fav,1511544072\nbad row\n3,12,7,teleport,1511544073\n\
               4,x1,7,pv,1511544074\n5,13,7,pv,yesterday\n";
    let f = file(csv);
    let (got, report) = import(&taobao(), f.path());
    let (want, old) = taobao_reference::import_taobao(csv.as_bytes()).unwrap();
    same_messages(&got, &want);
    assert_eq!(report.rows, 8);
    assert_eq!(report.rejected_rows, 4);
    let lines: Vec<u64> = report.rejected.iter().map(|r| r.0).collect();
    assert_eq!(lines, old.rejected.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(lines, vec![6, 7, 8, 9]);
    let reasons: Vec<&str> = report.rejected.iter().map(|r| r.1.as_str()).collect();
    assert!(
        reasons[0].contains("expected 5 comma-separated fields, found 1"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("`teleport` is not one of buy, cart, fav, pv"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("item_id `x1` is not a number"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].contains("`yesterday` is not epoch seconds"),
        "{reasons:?}"
    );
    let mut last = Millis::MIN;
    for m in &got {
        let event = decode(
            m.topic,
            Some(m.key.as_bytes()),
            &m.payload,
            DecodeLimits::default(),
        )
        .expect("imported messages follow the contract");
        assert!(event.ts() >= last, "event-time order");
        last = event.ts();
    }
}

fn rees46() -> Mapping {
    Mapping::parse(builtin("rees46").unwrap(), "rees46").unwrap()
}

#[test]
fn rees46_sample_reconciles_row_for_row() {
    let sample = shared_sample("rees46-2019oct-sample.csv");
    let (messages, report) = import(&rees46(), &sample);
    let text = std::fs::read_to_string(&sample).unwrap();
    let mut per_type: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        *per_type
            .entry(line.split(',').nth(1).unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(report.rejected, vec![]);
    assert_eq!(report.per_behavior, per_type);
    assert_eq!(report.rows, per_type.values().sum::<u64>());
    let n = |k: &str| per_type.get(k).copied().unwrap_or(0);
    let topic = |t: &str| messages.iter().filter(|m| m.topic.as_str() == t).count() as u64;
    assert_eq!(
        topic("clicks"),
        2 * n("view") + n("cart") + n("remove_from_cart")
    );
    assert_eq!(topic("orders"), n("purchase"));
    assert!(topic("inventory") >= report.items && report.items > 0);
    for m in &messages {
        let event = decode(
            m.topic,
            Some(m.key.as_bytes()),
            &m.payload,
            DecodeLimits::default(),
        );
        assert!(
            event.is_ok(),
            "{:?}: {}",
            event.err(),
            String::from_utf8_lossy(&m.payload)
        );
    }
    // A purchase is an order at the row's price, in the row's session's user.
    let first_purchase = text
        .lines()
        .position(|l| l.split(',').nth(1) == Some("purchase"))
        .expect("the sample has purchases");
    let fields: Vec<&str> = text
        .lines()
        .nth(first_purchase)
        .unwrap()
        .split(',')
        .collect();
    let order = messages
        .iter()
        .find(|m| m.topic.as_str() == "orders")
        .unwrap();
    let order: serde_json::Value = serde_json::from_slice(&order.payload).unwrap();
    assert_eq!(order["order_id"], format!("r46-o{}", first_purchase + 1));
    assert_eq!(order["user_id"], fields[7]);
    assert_eq!(order["lines"][0]["item_id"], fields[2]);
    assert_eq!(
        order["lines"][0]["unit_price"].as_f64(),
        fields[6].parse::<f64>().ok()
    );
}

#[test]
fn a_header_without_the_mapped_columns_is_refused_naming_them() {
    let f = file("event_time,event_type,product_id,user_id\n");
    let Err(e) = Importer::open(&rees46(), f.path(), None) else {
        panic!("accepted a header without price");
    };
    let e = e.to_string();
    for col in [
        "`price` (fields.price)",
        "`user_session`",
        "`category_code`",
    ] {
        assert!(e.contains(col), "{e}");
    }
}

#[test]
fn json_lines_map_nested_fields_and_stream_in_file_order() {
    let mapping = Mapping::parse(
        r#"
        [source]
        format = "jsonl"
        sorted = true
        id_prefix = "j"
        [fields]
        time = { path = "at", type = "epoch_us" }
        user_id = "user.id"
        kind = "type"
        item_id = "item.sku"
        scenario = "where"
        position = { path = "rank", type = "integer" }
        query = "q"
        [events]
        shown = [{ emit = "impression" }]
        open = [{ emit = "click" }]
        find = [{ emit = "search" }]
        "#,
        "inline",
    )
    .unwrap();
    let f = file(
        "{\"at\":1000000,\"user\":{\"id\":\"u1\"},\"type\":\"shown\",\"item\":{\"sku\":\"i9\"},\"where\":\"home_feed\",\"rank\":2}\n\
         {\"at\":2000000,\"user\":{\"id\":\"u1\"},\"type\":\"open\",\"item\":{\"sku\":\"i9\"},\"where\":\"home_feed\"}\n\
         not json\n\
         {\"at\":3000000,\"user\":{\"id\":\"u1\"},\"type\":\"find\",\"q\":\"red shoes\",\"where\":\"search\"}\n",
    );
    let (messages, report) = import(&mapping, f.path());
    assert_eq!(report.rows, 4);
    assert_eq!(report.rejected_rows, 1);
    assert_eq!(report.rejected[0].0, 3);
    let events: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["ts"], 1000);
    assert_eq!(events[0]["scenario"], "home_feed");
    assert_eq!(events[0]["position"], 2);
    assert_eq!(events[0]["event_id"], "j1i");
    assert_eq!(events[2]["type"], "search");
    assert_eq!(events[2]["query"], "red shoes");
    assert_eq!(events[2]["item_id"], serde_json::Value::Null);
}
