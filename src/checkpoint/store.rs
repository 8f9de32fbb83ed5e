//! The checkpoint directory: where each epoch lives, which epochs exist, listing them
//! verified, and removing old or all of them.

use std::path::Path;

use serde::Serialize;

use super::format::{MANIFEST, Manifest, epoch_dir, io, read_manifest};
use super::{CheckpointError, load};

/// The epochs under `dir`, ascending.
pub fn epochs(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("ckpt-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Removes all but the newest `keep` complete checkpoints, and incomplete ones older
/// than the newest complete one.
pub fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let epochs = epochs(dir);
    let complete: Vec<u64> = epochs
        .iter()
        .copied()
        .filter(|&e| epoch_dir(dir, e).join(MANIFEST).exists())
        .collect();
    let Some(&newest) = complete.last() else {
        return Ok(());
    };
    let kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).copied().collect();
    for epoch in epochs {
        let stale = if epoch_dir(dir, epoch).join(MANIFEST).exists() {
            !kept.contains(&epoch)
        } else {
            epoch < newest
        };
        if stale {
            let path = epoch_dir(dir, epoch);
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Removes every checkpoint under `dir` (a finished run, or `--fresh`).
pub fn clear(dir: &Path) -> Result<(), CheckpointError> {
    for epoch in epochs(dir) {
        let path = epoch_dir(dir, epoch);
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// What `skewless checkpoint list` shows of one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The epoch.
    pub epoch: u64,
    /// `complete`, or why not.
    pub status: String,
    /// The manifest, when complete.
    pub manifest: Option<Manifest>,
}

/// Every checkpoint under `dir`, newest first, each verified.
pub fn list(dir: &Path) -> Vec<Listing> {
    epochs(dir)
        .into_iter()
        .rev()
        .map(|epoch| match load(dir, epoch) {
            Ok(restored) => Listing {
                epoch,
                status: "complete".into(),
                manifest: Some(restored.manifest),
            },
            Err(error) => Listing {
                epoch,
                status: error.to_string(),
                manifest: read_manifest(&epoch_dir(dir, epoch)).ok(),
            },
        })
        .collect()
}
