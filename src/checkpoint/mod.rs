//! Checkpoints: what every worker's state was at one consistent cut of the dataflow,
//! written so a crash loses nothing and applies nothing twice.
//!
//! A checkpoint is a directory `<dir>/ckpt-<epoch>/` with one part per worker
//! (`part-<worker>.bin`: a header with the payload's length and checksum, then the
//! bincode payload) and a `MANIFEST.json` written last. Every file is written under a
//! temporary name, synced, and renamed. A checkpoint without a manifest is incomplete;
//! one whose parts are missing, short or fail their checksum is corrupt; restore skips
//! both, says why, and falls back to the previous complete one. How the cut is agreed
//! between workers is in [`protocol`].

pub mod protocol;

mod format;
mod restore;
mod store;

pub use format::*;
pub use restore::*;
pub use store::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::summary::Counts;

    fn part(epoch: u64, worker: usize) -> WorkerPart {
        WorkerPart {
            epoch,
            cut: 1000,
            worker,
            workers: 2,
            partitions: vec![PartitionState {
                name: format!("p{worker}"),
                position: 42,
                max_seen: Some(1.5),
                finished: false,
                digest: None,
            }],
            ingest_counts: Counts {
                read: 42,
                ..Counts::default()
            },
            fold: FoldSnapshot {
                strings: vec!["books".into()],
                ..FoldSnapshot::default()
            },
            fold_counts: Counts::default(),
        }
    }

    fn complete(dir: &Path, epoch: u64) {
        let parts: Vec<PartEntry> = (0..2)
            .map(|w| write_part(dir, &part(epoch, w)).unwrap())
            .collect();
        let manifest = Manifest {
            job: "j".into(),
            epoch,
            cut: 1000,
            workers: 2,
            completed_at: 0.0,
            took_s: 0.0,
            features: String::new(),
            time: String::new(),
            parts,
        };
        write_manifest(dir, &manifest).unwrap();
    }

    #[test]
    fn parts_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path(), 1);
        let restored = load(dir.path(), 1).unwrap();
        assert_eq!(restored.parts[1], part(1, 1));
        assert_eq!(positions(&restored)["p0"].position, 42);

        let file = epoch_dir(dir.path(), 1).join(part_name(1));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let error = load(dir.path(), 1).unwrap_err().to_string();
        assert!(
            error.contains("corrupt") && error.contains("truncated"),
            "{error}"
        );
        let mut older = bytes.clone();
        older[7] = b'1';
        std::fs::write(&file, &older).unwrap();
        let error = load(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("format version 1"), "{error}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&file, &flipped).unwrap();
        assert!(
            load(dir.path(), 1)
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
    }

    #[test]
    fn the_latest_intact_checkpoint_wins_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for epoch in 1..=4 {
            complete(dir.path(), epoch);
        }
        write_part(dir.path(), &part(5, 0)).unwrap(); // incomplete: no manifest
        std::fs::write(epoch_dir(dir.path(), 4).join(part_name(0)), b"garbage").unwrap();
        let (restored, refused) = latest(dir.path());
        assert_eq!(restored.unwrap().manifest.epoch, 3);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].to_string().contains("incomplete"), "{}", refused[0]);
        assert!(refused[1].to_string().contains("bad header"), "{}", refused[1]);
        prune(dir.path(), 2).unwrap();
        assert_eq!(epochs(dir.path()), vec![3, 4, 5]);
        let listing = list(dir.path());
        assert_eq!(listing.iter().map(|l| l.epoch).collect::<Vec<_>>(), vec![5, 4, 3]);
        assert_eq!(listing[2].status, "complete");
    }
}
