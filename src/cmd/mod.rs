//! One file per command family: its clap arguments and the few lines that turn them into
//! a call into a stage crate and print the result.

pub(crate) mod check_config;
pub(crate) mod demo;
pub(crate) mod drift;
pub(crate) mod generate;
pub(crate) mod import;
pub(crate) mod model;
pub(crate) mod parse;
pub(crate) mod progress;
pub(crate) mod run;
pub(crate) mod store;
