//! The command line as a user meets it: help texts and configuration errors.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn shopstream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
}

/// `shopstream check-config` on a file holding `toml`, with `env` set: (exit code,
/// stdout, stderr).
fn check_config(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let output = shopstream()
        .arg("check-config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn check_config_reports_three_mistakes_at_once_and_exits_2() {
    let (code, _, stderr) = check_config(
        "[kafka]\nbrokres = \"localhost:9092\"\n\n[pipeline]\nwindow_secs = \"sixty\"\n\n[store]\nzstd_level = 99\n",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    for key in ["kafka.brokres", "pipeline.window_secs", "store.zstd_level"] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn check_config_prints_the_effective_config_with_env_overrides() {
    let (code, stdout, stderr) = check_config(
        "[kafka]\nbrokers = \"file:9092\"\n",
        &[("SHOPSTREAM__PIPELINE__WINDOW_SECS", "120")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("brokers = \"file:9092\""), "{stdout}");
    assert!(stdout.contains("window_secs = 120"), "{stdout}");
}

#[test]
fn check_config_checks_the_privacy_key_without_printing_it() {
    let toml = "[privacy]\nenabled = true\nkey_env = \"SHOP_TEST_KEY\"\n";
    let (code, _, stderr) = check_config(toml, &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("$SHOP_TEST_KEY is empty or unset"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(toml, &[("SHOP_TEST_KEY", "too short")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("fewer than 16"), "{stderr}");
    let key = "a secret of thirty-two bytes, ok";
    let (code, stdout, stderr) = check_config(toml, &[("SHOP_TEST_KEY", key)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("# privacy: key found in $SHOP_TEST_KEY"),
        "{stdout}"
    );
    assert!(!stdout.contains(key) && !stderr.contains(key));
}

#[test]
fn check_config_refuses_kafka_properties_shopstream_needs_and_honours_the_rest() {
    let (code, _, stderr) = check_config(
        r#"[kafka]
brokers = "127.0.0.1:9092"

[kafka.properties]
"acks" = "1"
"message.timeout.ms" = "5000"
"auto.offset.reset" = "latest"
"partition.assignment.strategy" = "roundrobin"
"enable.partition.eof" = "true"
"statistics.interval.ms" = "0"
"linger.ms" = "20"
"message.max.bytes" = "2000000"
"#,
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("6 problem(s)"), "{stderr}");
    for (key, reason) in [
        ("acks", "an acknowledged message can be lost"),
        ("message.timeout.ms", "set kafka.produce_timeout_ms"),
        ("auto.offset.reset", "--reset-offsets --to-latest"),
        ("partition.assignment.strategy", "co-partitioned"),
        ("enable.partition.eof", "--stop-at-end"),
        (
            "statistics.interval.ms",
            "consumer lag on /metrics and /readyz",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("kafka.properties.\"{key}\"")))
            .unwrap_or_else(|| panic!("{key} missing from: {stderr}"));
        assert!(line.contains(reason), "{key}: {line}");
    }
    assert!(!stderr.contains("linger.ms"), "{stderr}");
    assert!(!stderr.contains("message.max.bytes"), "{stderr}");

    // The honoured ones, from the file and the environment, are printed as given.
    let (code, stdout, stderr) = check_config(
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[kafka.properties]\n\"acks\" = \"all\"\n\"message.max.bytes\" = \"2000000\"\n",
        &[
            ("SHOPSTREAM__KAFKA__PROPERTIES__LINGER_MS", "20"),
            (
                "SHOPSTREAM__KAFKA__PROPERTIES__STATISTICS_INTERVAL_MS",
                "1000",
            ),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "acks = \"all\"",
        "\"linger.ms\" = \"20\"",
        "\"message.max.bytes\" = \"2000000\"",
        "\"statistics.interval.ms\" = \"1000\"",
    ] {
        assert!(stdout.contains(line), "{line} missing from: {stdout}");
    }
}

#[test]
fn every_command_explains_itself() {
    for command in [
        "run",
        "generate",
        "demo",
        "check-config",
        "query",
        "training-set",
        "replay",
        "import",
    ] {
        let output = shopstream().args([command, "--help"]).output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.len() > 200 && text.contains("Usage:"),
            "{command}: {text}"
        );
    }
}

#[test]
fn run_without_brokers_says_how_to_fix_it() {
    let output = shopstream()
        .args(["run", "--stop-at-end"])
        .env_remove("SHOPSTREAM__KAFKA__BROKERS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no Kafka brokers configured"), "{stderr}");
}

#[test]
fn the_sasl_ssl_example_is_valid_and_its_password_is_masked() {
    let output = shopstream()
        .args(["check-config", "config/examples/sasl-ssl.toml"])
        .env(
            "SHOPSTREAM__KAFKA__PROPERTIES__SASL_PASSWORD",
            "hunter2-secret",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("SASL_SSL"), "{stdout}");
    assert!(stdout.contains("sasl.password"), "{stdout}");
    assert!(
        !stdout.contains("hunter2-secret"),
        "password printed: {stdout}"
    );
}

#[test]
fn query_on_an_empty_store_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let output = shopstream()
        .args(["query", "--store"])
        .arg(dir.path())
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no tables yet"), "{stderr}");
}

#[test]
fn import_lists_every_problem_of_a_mapping_at_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("bad.toml");
    std::fs::write(
        &mapping,
        "[source]\nformat = \"csv\"\n[fields]\ntime = { path = \"t\", type = \"datetime\" }\n\
         user_id = \"u\"\nkind = \"k\"\n[events]\nview = [{ emit = \"click\" }]\n",
    )
    .unwrap();
    let out = shopstream()
        .args(["import", "--check", "--mapping"])
        .arg(&mapping)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    for needle in [
        "needs a `format`",
        "`columns` list",
        "fields.item_id is not mapped",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    let out = shopstream()
        .args(["import", "--check", "--mapping", "rees46"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_live_mapping_that_cannot_serve_its_topic_fails_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("orders.toml");
    std::fs::write(
        &mapping,
        "[source]\nformat = \"jsonl\"\n[fields]\ntime = { path = \"t\", type = \"epoch_ms\" }\n\
         user_id = \"u\"\nkind = \"k\"\nitem_id = \"i\"\n[events]\nview = [{ emit = \"impression\" }]\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(
        &format!(
            "[input.mapping]\norders = {:?}\n",
            mapping.display().to_string()
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`impression` is not an event of the orders topic"),
        "{stderr}"
    );
}

#[test]
fn an_import_that_cannot_sort_on_disk_says_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log.csv");
    std::fs::write(&data, "1,2,3,pv,1511544070\n1,2,3,pv,1511544000\n").unwrap();
    let mapping = dir.path().join("taobao-small-runs.toml");
    let taobao = shopstream_ingest::mapping::builtin("taobao").unwrap();
    std::fs::write(
        &mapping,
        taobao.replace("sorted = false", "sorted = false\nsort_run_rows = 1"),
    )
    .unwrap();
    let out = shopstream()
        .args(["import", "--output", "/dev/null", "--mapping"])
        .arg(&mapping)
        .arg(&data)
        .env("TMPDIR", dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot sort"), "{stderr}");
    assert!(stderr.contains("set TMPDIR"), "{stderr}");
}

/// Guards the upgrade path: `run` on a store an older build wrote (examples of schema
/// version 1) stops before connecting or writing, naming both versions and the way out.
#[test]
fn run_on_a_store_of_an_older_examples_schema_says_to_replay_into_a_new_store() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    let dir = tempfile::tempdir().unwrap();
    let store = shopstream_sinks::store::ParquetStore::open(&shopstream_config::StoreConfig {
        path: dir.path().to_path_buf(),
        ..shopstream_config::StoreConfig::default()
    })
    .unwrap();
    let schema = Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    let ts = 1_767_571_200_000_i64;
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec!["u1"])),
            Arc::new(TimestampMicrosecondArray::from(vec![ts * 1000]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    let metadata = BTreeMap::from([(
        shopstream_features::SCHEMA_VERSION_KEY.to_string(),
        "1".to_string(),
    )]);
    store
        .write(
            "examples",
            &format!("window-{ts}"),
            &batch,
            &metadata,
            &BTreeMap::new(),
        )
        .unwrap();
    let before = walk(dir.path());

    let output = shopstream()
        .args(["run", "--stop-at-end"])
        .env("SHOPSTREAM__STORE__PATH", dir.path())
        .env("SHOPSTREAM__KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "schema version 1, and this build writes version {}",
            shopstream_features::EXAMPLES_SCHEMA_VERSION
        )),
        "{stderr}"
    );
    assert!(stderr.contains("shopstream replay"), "{stderr}");
    assert_eq!(
        walk(dir.path()),
        before,
        "nothing written beside the old files"
    );
}

/// Every file below `root`, relative, sorted.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
