//! `shopstream check-config`: the effective configuration, or every problem in it; for a
//! store in a bucket, also whether its options are valid and the bucket can be reached.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use shopstream_config::Config;

#[derive(Args, Debug)]
pub(crate) struct CheckConfigArgs {
    /// The TOML file to check.
    pub(crate) file: PathBuf,
}

pub(crate) fn check_config(file: &Path) -> ExitCode {
    match Config::load(Some(file)) {
        Ok(config) => {
            println!(
                "# effective configuration of {} (defaults < file < environment)",
                file.display()
            );
            print!("{}", config.to_toml_masked());
            if let Err(error) = check_mappings(&config) {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
            // [privacy]: the key is in the environment, long enough (never printed).
            match shopstream_job::pipeline::privacy(&config.privacy) {
                Ok(Some(_)) => println!("# privacy: key found in ${}", config.privacy.key_env),
                Ok(None) => {}
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            }
            check_bucket(&config)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// Reads and validates the mapping files of `[input.mapping]`, reporting every problem.
fn check_mappings(config: &Config) -> Result<(), shopstream_ingest::mapping::MappingError> {
    for topic in shopstream_job::pipeline::input_mappings(config)?.keys() {
        println!("# input.mapping.{}: valid", topic.as_str());
    }
    Ok(())
}

/// For a store in a bucket: builds its client (unknown option keys and malformed URLs are
/// configuration errors, exit 2) and lists its root once, retrying for at most 10 s (a
/// missing bucket, wrong credentials or an unreachable endpoint: exit 1, saying which). A
/// local store is not touched.
fn check_bucket(config: &Config) -> ExitCode {
    use shopstream_sinks::storage::{Location, Storage};
    if !matches!(Location::parse(&config.store.path), Ok(Location::Bucket(_))) {
        return ExitCode::SUCCESS;
    }
    let timeout = std::time::Duration::from_secs(config.store.retry_timeout_secs.min(10));
    let storage = match Storage::open(&config.store.path, &config.store.options, timeout) {
        Ok(storage) => storage,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    match storage.check() {
        Ok(()) => {
            println!(
                "# store {}: reachable (listed in {} ms)",
                storage.root_display(),
                started.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "error: the configuration is valid, but the store cannot be reached: {error}"
            );
            ExitCode::from(1)
        }
    }
}
