//! Typed configuration for shopstream.
//!
//! Configuration is layered: built-in defaults < a TOML file < environment variables named
//! `SHOPSTREAM__SECTION__KEY` (for example `SHOPSTREAM__KAFKA__BROKERS=10.0.0.1:9092`).
//! Every section rejects unknown keys, and [`Config::load`] reports *every* problem it finds
//! (unknown keys, wrong types, out-of-range values) in one [`ConfigError::Invalid`], so a
//! user fixes a broken file in one pass instead of one error per run.
//!
//! Start from [`Config::default`] in code, or from `config/shopstream.example.toml`, which
//! documents every key.

/// Directory below `store.path` that holds the checkpoints unless `checkpoint.dir` is set.
pub const DEFAULT_CHECKPOINT_DIR: &str = "_checkpoints";

pub mod kafka_properties;
mod layering;
mod sections;
mod validate;

pub use kafka_properties::{MANAGED_PROPERTIES, ManagedProperty, PropertyPolicy, managed_property};
pub use layering::ENV_PREFIX;
pub use sections::{
    CalibrationHistory, CheckpointConfig, Config, DriftConfig, DriftReference, DroppedField,
    InputConfig, InputMappingConfig, Instances, KafkaConfig, ModelConfig, PipelineConfig,
    PrivacyConfig, ServingConfig, StoreConfig, TopicsConfig, secs_to_ms,
};
pub use validate::Problem;

use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions). A user error.
    #[error(
        "cannot read config file {path}: {source}; check the path or omit --config to use defaults"
    )]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML. A user error.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file that failed to parse.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The file parsed but one or more keys or values are wrong. A user error.
    #[error("{} problem(s) in the configuration:\n{}", .problems.len(), format_problems(.problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads defaults, then the optional TOML file, then `SHOPSTREAM__*` variables from the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] but with an explicit environment, so tests need not mutate the
    /// process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                layering::parse_file(path, &text)?
            }
            None => toml::Table::new(),
        };
        layering::apply_env(&mut table, env);
        Self::from_table(&table)
    }

    /// Parses and validates a configuration from TOML text (no environment layer).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table = layering::parse_file(Path::new("<string>"), text)?;
        Self::from_table(&table)
    }

    fn from_table(table: &toml::Table) -> Result<Config, ConfigError> {
        let (config, mut problems) = layering::deserialize_reporting_all(table);
        problems.extend(validate::validate(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// The effective configuration as TOML, for `shopstream check-config`. Values of Kafka
    /// properties whose names suggest secrets are masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = "********".to_string();
            }
        }
        for (key, value) in shown.store.options.iter_mut() {
            if is_secret_store_option(key) {
                *value = "********".to_string();
            }
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether a `store.options` key (object_store's) names a secret that must never be
/// printed or logged: keys, tokens, passwords, SAS, service-account credentials.
pub fn is_secret_store_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "access_key",
        "account_key",
        "service_account",
        "sas",
        "credential",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

/// Whether a librdkafka property carries a secret that must never be printed or logged.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "token",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `shopstream.toml` of each ConfigMap in `deploy/kubernetes/`, by file name.
    fn kubernetes_configs() -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
        let mut configs = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("example");
            let mut lines = text
                .lines()
                .skip_while(|l| !l.ends_with("shopstream.toml: |"));
            if lines.next().is_none() {
                continue;
            }
            let toml: String = lines
                .take_while(|l| l.is_empty() || l.starts_with("    "))
                .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
                .collect();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            configs.push((name.into_owned(), toml));
        }
        configs
    }

    #[test]
    fn the_kubernetes_examples_hold_valid_configurations() {
        let configs = kubernetes_configs();
        assert!(configs.len() >= 3, "{configs:?}");
        for (file, toml) in configs {
            let config = Config::from_toml_str(&toml)
                .unwrap_or_else(|e| panic!("deploy/kubernetes/{file}: {e}\n{toml}"));
            // The group examples are the ones whose pods share a run.
            assert_eq!(
                config.pipeline.instances == Instances::Group,
                file.contains("group") || file.contains("backfill"),
                "{file}"
            );
        }
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    /// Guards the one seconds-to-milliseconds conversion: exact for configured values,
    /// saturating instead of wrapping for absurd ones.
    #[test]
    fn pipeline_durations_in_ms_are_exact_and_saturate() {
        let pipeline = PipelineConfig::default();
        assert_eq!(pipeline.window_ms(), 60_000);
        assert_eq!(
            pipeline.label_maturity_ms(),
            secs_to_ms(pipeline.click_window_secs + pipeline.attribution_window_secs)
        );
        assert_eq!(secs_to_ms(u64::MAX), i64::MAX);
        assert_eq!(secs_to_ms(u64::MAX / 1000), i64::MAX);
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::load_with_env(None, no_env()).expect("defaults validate");
        assert_eq!(config, Config::default());
        assert_eq!(config.topics.clicks, "shop.clicks");
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = std::env::temp_dir().join(format!("shopstream-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("layered.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"file:9092\"\n[pipeline]\nwindow_secs = 30\n",
        )
        .expect("write config");
        let env = vec![
            (
                "SHOPSTREAM__KAFKA__BROKERS".to_string(),
                "env:9092".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = Config::load_with_env(Some(&path), env).expect("valid");
        assert_eq!(config.kafka.brokers, "env:9092");
        assert_eq!(config.pipeline.window_secs, 30);
        assert_eq!(config.pipeline.click_window_secs, 600);
    }

    #[test]
    fn three_distinct_mistakes_are_all_reported() {
        let text = r#"
            [kafka]
            brokres = "localhost:9092"
            [pipeline]
            window_secs = "sixty"
            [model]
            learning_rate = -1.0
        "#;
        let err = Config::from_toml_str(text).expect_err("three mistakes");
        let ConfigError::Invalid { problems } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "kafka.brokres",
                "pipeline.window_secs",
                "model.learning_rate"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn a_retention_of_zero_days_or_without_compaction_is_refused() {
        let err = Config::from_toml_str("[store]\nretention_days = 0\n").expect_err("0 days");
        assert!(err.to_string().contains("store.retention_days"), "{err}");
        let text = "[store]\nretention_days = 30\ncompact_closed_hours = false\n";
        let err = Config::from_toml_str(text).expect_err("no compaction");
        assert!(
            err.to_string().contains("compact_closed_hours = true"),
            "{err}"
        );
        let config = Config::from_toml_str("[store]\nretention_days = 30\n").expect("valid");
        assert_eq!(config.store.retention_days, Some(30));
    }

    #[test]
    fn unknown_section_is_reported_with_the_known_ones() {
        let err = Config::from_toml_str("[kafak]\nbrokers = \"x\"\n").expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("kafak"), "{text}");
        assert!(
            text.contains("kafka, topics, pipeline, store, model, http"),
            "{text}"
        );
    }

    #[test]
    fn env_values_are_typed() {
        let env = vec![
            (
                "SHOPSTREAM__PIPELINE__WINDOW_SECS".to_string(),
                "120".to_string(),
            ),
            (
                "SHOPSTREAM__KAFKA__CREATE_TOPICS".to_string(),
                "false".to_string(),
            ),
        ];
        let config = Config::load_with_env(None, env).expect("valid");
        assert_eq!(config.pipeline.window_secs, 120);
        assert!(!config.kafka.create_topics);
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        config
            .store
            .options
            .insert("aws_secret_access_key".into(), "wJalrXUtnFEMI".into());
        config
            .store
            .options
            .insert("aws_endpoint".into(), "http://127.0.0.1:9000".into());
        let shown = config.to_toml_masked();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:9000"), "{shown}");
        assert!(shown.contains("********"), "{shown}");
    }

    #[test]
    fn drift_section_reports_every_problem_and_reads_the_webhook_from_the_environment() {
        let text = r#"
            [drift]
            reference = "sliding"
            psi_warning = 0.3
            psi_critical = 0.2
            p_value_critical = 0.05
            webhook_url = "ftp://alerts"
            reference_windows = 2000
        "#;
        let err = Config::from_toml_str(text).expect_err("five mistakes");
        let ConfigError::Invalid { problems } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "drift.reference",
                "drift.reference_windows",
                "drift.psi_critical",
                "drift.p_value_critical",
                "drift.webhook_url",
            ],
            "{problems:?}"
        );
        let env = vec![
            (
                "SHOPSTREAM__DRIFT__WEBHOOK_URL".to_string(),
                "http://127.0.0.1:9000/hook".to_string(),
            ),
            (
                "SHOPSTREAM__DRIFT__REFERENCE".to_string(),
                "pinned".to_string(),
            ),
        ];
        let config = Config::load_with_env(None, env).expect("valid");
        assert_eq!(
            config.drift.webhook_url.as_deref(),
            Some("http://127.0.0.1:9000/hook")
        );
        assert_eq!(config.drift.reference, DriftReference::Pinned);
        assert!(Config::from_toml_str("[drift]\nwebhook_url = \"https://\"\n").is_err());
        // A pinned reference of 6 windows keeps 3 per-window statistics after the first
        // 3: too few for the design effect (5).
        let err = Config::from_toml_str("[drift]\nreference = \"pinned\"\nreference_windows = 6\n")
            .expect_err("too short to estimate the design effect");
        assert!(err.to_string().contains("at least 8"), "{err}");
    }

    #[test]
    fn example_file_is_valid_and_documents_every_key() {
        let text = include_str!("../shopstream.example.toml");
        let parsed = Config::from_toml_str(text).expect("example config validates");
        assert_eq!(parsed, Config::default(), "example must show the defaults");
        let rendered: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).expect("render")).expect("parse");
        for (section, value) in rendered {
            let keys = value.as_table().expect("sections are tables");
            for key in keys.keys() {
                let needle = format!("\n{key} =");
                let commented = format!("\n# {key} =");
                let sub_table = format!("\n[{section}.{key}]");
                assert!(
                    text.contains(&needle)
                        || text.contains(&commented)
                        || text.contains(&sub_table),
                    "example config does not document {section}.{key}"
                );
            }
        }
    }
}
