//! `shopstream check-config`: the effective configuration, or every problem in it.

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
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
