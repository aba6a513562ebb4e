//! Layering (defaults < file < environment) and error collection.
//!
//! serde stops at the first error, so a section is first checked one key at a time (each key
//! alone on top of the defaults); that way an unknown key in `[kafka]` does not hide a wrong
//! type in `[pipeline]`, and the user sees every problem at once.

use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::sections::{
    CheckpointConfig, Config, DriftConfig, HttpConfig, InputConfig, KafkaConfig, ModelConfig,
    PipelineConfig, PrivacyConfig, ServingConfig, StoreConfig, TopicsConfig,
};
use crate::{ConfigError, Problem};

/// Prefix of environment variables that override configuration keys:
/// `SHOPSTREAM__SECTION__KEY`.
pub const ENV_PREFIX: &str = "SHOPSTREAM__";

const SECTIONS: [&str; 11] = [
    "kafka",
    "topics",
    "pipeline",
    "store",
    "model",
    "http",
    "drift",
    "checkpoint",
    "input",
    "privacy",
    "serving",
];

pub(crate) fn parse_file(path: &Path, text: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Applies `SHOPSTREAM__A__B=value` as `a.b = value`. The value's TOML type is taken from the
/// default at the same key, so `SHOPSTREAM__KAFKA__GROUP_ID=123` stays a string while
/// `SHOPSTREAM__PIPELINE__WINDOW_SECS=120` becomes an integer. Under `kafka.properties`,
/// underscores in the key become dots (`..__PROPERTIES__SASL_PASSWORD` -> `sasl.password`),
/// since librdkafka property names use dots only.
pub(crate) fn apply_env(table: &mut Table, env: impl IntoIterator<Item = (String, String)>) {
    let defaults = Table::try_from(Config::default()).unwrap_or_default();
    let mut overrides: Vec<(Vec<String>, String)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            let mut path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.len() == 3 && path[0] == "kafka" && path[1] == "properties" {
                path[2] = path[2].replace('_', ".");
            }
            (!path.iter().any(String::is_empty)).then_some((path, value))
        })
        .collect();
    // Deterministic regardless of the environment's iteration order.
    overrides.sort();
    for (path, raw) in overrides {
        let value = typed_like_default(&defaults, &path, raw);
        insert_path(table, &path, value);
    }
}

fn typed_like_default(defaults: &Table, path: &[String], raw: String) -> Value {
    let mut node: Option<&Value> = None;
    let mut current = defaults;
    for (i, key) in path.iter().enumerate() {
        match current.get(key) {
            Some(Value::Table(t)) if i + 1 < path.len() => current = t,
            Some(v) if i + 1 == path.len() => node = Some(v),
            _ => break,
        }
    }
    let parsed = match node {
        Some(Value::Integer(_)) => raw.trim().parse::<i64>().ok().map(Value::Integer),
        Some(Value::Float(_)) => raw.trim().parse::<f64>().ok().map(Value::Float),
        Some(Value::Boolean(_)) => raw.trim().parse::<bool>().ok().map(Value::Boolean),
        Some(Value::String(_)) | None => None,
        Some(_) => format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v")),
    };
    // Unparseable values stay strings, so validation names the key and shows the value.
    parsed.unwrap_or(Value::String(raw))
}

fn insert_path(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { return };
        current = next;
    }
    current.insert(last.clone(), value);
}

/// Deserializes `table`, collecting every unknown key and wrong type. The keys that failed
/// are left out of the returned config (their defaults stand in), so semantic validation can
/// still run on the rest and report its problems in the same pass.
pub(crate) fn deserialize_reporting_all(table: &Table) -> (Config, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut good = Table::new();
    for (key, value) in table {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(Problem::new(
                key,
                format!(
                    "unknown section; known sections are {}",
                    SECTIONS.join(", ")
                ),
            ));
        } else if !value.is_table() {
            problems.push(Problem::new(key, format!("must be a table like [{key}]")));
        }
    }
    for section in SECTIONS {
        let Some(Value::Table(keys)) = table.get(section) else {
            continue;
        };
        let kept = match section {
            "kafka" => check_keys::<KafkaConfig>(section, keys, &mut problems),
            "topics" => check_keys::<TopicsConfig>(section, keys, &mut problems),
            "pipeline" => check_keys::<PipelineConfig>(section, keys, &mut problems),
            "store" => check_keys::<StoreConfig>(section, keys, &mut problems),
            "http" => check_keys::<HttpConfig>(section, keys, &mut problems),
            "drift" => check_keys::<DriftConfig>(section, keys, &mut problems),
            "checkpoint" => check_keys::<CheckpointConfig>(section, keys, &mut problems),
            "input" => check_keys::<InputConfig>(section, keys, &mut problems),
            "privacy" => check_keys::<PrivacyConfig>(section, keys, &mut problems),
            "serving" => check_keys::<ServingConfig>(section, keys, &mut problems),
            _ => check_keys::<ModelConfig>(section, keys, &mut problems),
        };
        good.insert(section.to_string(), Value::Table(kept));
    }
    let config = match Value::Table(good).try_into::<Config>() {
        Ok(config) => config,
        Err(e) => {
            problems.push(Problem::new("", e.message().to_string()));
            Config::default()
        }
    };
    (config, problems)
}

/// Deserializes each key of a section on its own (on top of the defaults) and records the
/// failures, so one bad key cannot hide the next.
fn check_keys<T: DeserializeOwned>(
    section: &str,
    keys: &Table,
    problems: &mut Vec<Problem>,
) -> Table {
    let mut kept = Table::new();
    for (key, value) in keys {
        let mut single = Table::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = Value::Table(single).try_into::<T>() {
            problems.push(Problem::new(
                format!("{section}.{key}"),
                e.message().trim().to_string(),
            ));
        } else {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept
}
