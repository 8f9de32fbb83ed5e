//! The `skewless` command's subcommands, one file each, and what they share.

pub mod checkpoint;
pub mod diff;
pub mod dlq;
pub mod explain;
pub mod generate;
pub mod lag;
pub mod produce;
pub mod run;
pub mod skew;
pub mod validate;
pub mod views;

use std::path::PathBuf;

/// A `key=value` librdkafka setting.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got `{text}`"))
}

/// A path, where an empty one turns a sink off.
pub fn any_path(text: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(text))
}
