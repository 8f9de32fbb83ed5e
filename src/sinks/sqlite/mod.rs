//! The embedded default view store: a SQLite file with the table
//! `user_features(user_id TEXT PRIMARY KEY, as_of REAL, features TEXT, state TEXT)`.
//!
//! One writer thread per process owns the connection; workers hand it batches and go
//! on rendering. Rows are upserted in large transactions; [`ViewSink::flush`] returns
//! once everything the worker sent before it is committed. The [`Journal`] says how
//! commits are made safe: streaming runs use WAL, so that readers never wait for the
//! writer; backfills use a rollback journal, see [`Journal::Rollback`].
//!
//! A streaming run's store is an online store (DESIGN.md section 6): its rows may be
//! provisional views, so its table has a fifth column, `provisional_through` (NULL for a
//! final view). A backfill writes the four columns of the contract, and NULL into the
//! fifth when the file already has it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{Durability, SinkError, ViewSink, create_parent};
use crate::dlq::letter::DeadLetter;
use crate::metrics::Metrics;
use crate::model::view::ViewRecord;

/// Rows per transaction while batches keep coming.
const ROWS_PER_COMMIT: usize = 65_536;
/// Batches that may wait for the writer before workers block.
const QUEUE: usize = 4;

/// One row of `user_features`.
struct Row {
    user_id: String,
    as_of: f64,
    provisional_through: Option<f64>,
    features: String,
    state: String,
    /// The view's freshness (see [`ViewRecord::fresh_from`]), reported once committed.
    fresh_from: Option<f64>,
}

enum Command {
    Rows(Vec<Row>),
    Flush(SyncSender<Result<(), String>>),
}

/// How the store makes its commits atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    /// Write-ahead log (`synchronous=NORMAL`): readers and the writer never block each
    /// other. Every page is written twice, to the log and then back into the file.
    Wal,
    /// Rollback journal (`DELETE`, `synchronous=FULL`), for runs that write their
    /// views once at the end (backfills): pages that did not exist before a transaction
    /// need no journal, so a backfill into a new file writes each page once (a quarter
    /// less time than WAL for the 5M-event bench's end-of-run write). A file already in
    /// WAL mode stays so: switching would need every other connection closed.
    Rollback,
}

/// A handle on the process's SQLite view store; cheap to clone, one per worker.
#[derive(Clone)]
pub struct SqliteViews {
    path: PathBuf,
    commands: SyncSender<Command>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

const UPSERT: &str = "INSERT INTO user_features (user_id, as_of, features, state) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT(user_id) DO UPDATE SET as_of = excluded.as_of, features = excluded.features, state = excluded.state";
/// The upsert of a table with the `provisional_through` column.
const UPSERT_ONLINE: &str = "INSERT INTO user_features (user_id, as_of, features, state, provisional_through) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(user_id) DO UPDATE SET as_of = excluded.as_of, \
     features = excluded.features, state = excluded.state, provisional_through = excluded.provisional_through";

impl SqliteViews {
    /// Opens (creating if needed) the store at `path` and starts its writer. A WAL
    /// store is a streaming run's online store: it gets the `provisional_through`
    /// column, and reports freshness to `metrics`.
    pub fn open(
        path: &Path,
        journal: Journal,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<SqliteViews, SinkError> {
        create_parent(path)?;
        let err = |source| SinkError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open(path).map_err(err)?;
        // WITHOUT ROWID: rows live in the primary key's b-tree, so an upsert touches one
        // b-tree instead of two (the rowid table and the key's index); views (~0.5 KiB)
        // are well under the size where that stops paying.
        // Views are ~0.5 KiB; 16 KiB pages keep several per page and cut b-tree work on
        // the end-of-run write (5M-event bench). The page size applies to new files only.
        // The processes of a cluster open one file together; switching a new file to
        // WAL can fail at once with "locked" instead of waiting, so that is retried.
        connection.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let setup = connection
                .query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))
                .and_then(|mode| {
                    let journal = match journal {
                        Journal::Rollback if !mode.eq_ignore_ascii_case("wal") => {
                            "PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;"
                        }
                        _ => "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
                    };
                    connection.execute_batch(&format!(
                        "PRAGMA page_size = 16384;
                         {journal}
                         PRAGMA cache_size = -16384;
                         CREATE TABLE IF NOT EXISTS user_features (
                             user_id TEXT PRIMARY KEY, as_of REAL, features TEXT, state TEXT)
                             WITHOUT ROWID;"
                    ))
                });
            match setup {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(e)),
            }
        }
        let online = online_column(&connection, journal == Journal::Wal).map_err(err)?;
        let (commands, receiver) = sync_channel(QUEUE);
        let name = path.display().to_string();
        let writer = std::thread::Builder::new()
            .name("sqlite-views".into())
            .spawn(move || write_loop(connection, receiver, name, online, metrics))
            .map_err(|source| SinkError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SqliteViews {
            path: path.to_owned(),
            commands,
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn gone(&self) -> SinkError {
        SinkError::Store(format!(
            "SQLite views at {}: the writer stopped",
            self.path.display()
        ))
    }
}

impl ViewSink for SqliteViews {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn write(&mut self, views: &[ViewRecord], _dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        let rows: Vec<Row> = views
            .iter()
            .filter(|v| v.changed)
            .map(|v| Row {
                user_id: v.user_id.to_string(),
                as_of: v.as_of,
                provisional_through: v.provisional_through,
                features: v.features.clone(),
                state: v.state.clone(),
                fresh_from: v.fresh_from,
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.commands.send(Command::Rows(rows)).map_err(|_| self.gone())
    }

    fn flush(&mut self, _dead: &mut Vec<DeadLetter>) -> Result<Durability, SinkError> {
        let (ack, done) = sync_channel(1);
        self.commands.send(Command::Flush(ack)).map_err(|_| self.gone())?;
        match done.recv() {
            Ok(Ok(())) => Ok(Durability::Done),
            Ok(Err(message)) => Err(SinkError::Store(message)),
            Err(_) => Err(self.gone()),
        }
    }
}

impl Drop for SqliteViews {
    fn drop(&mut self) {
        // The last handle closes the channel; wait for the writer to commit and exit.
        if Arc::strong_count(&self.writer) == 1 {
            let (dummy, _) = sync_channel(1);
            drop(std::mem::replace(&mut self.commands, dummy));
            if let Some(handle) = self.writer.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        }
    }
}

/// Whether the table has the `provisional_through` column, adding it when `add`.
fn online_column(connection: &Connection, add: bool) -> rusqlite::Result<bool> {
    let has = connection
        .prepare("SELECT 1 FROM pragma_table_info('user_features') WHERE name = 'provisional_through'")?
        .exists([])?;
    if !has && add {
        connection.execute_batch("ALTER TABLE user_features ADD COLUMN provisional_through REAL")?;
    }
    Ok(has || add)
}

/// The writer: upserts rows in transactions, commits when idle, on flush, or every
/// [`ROWS_PER_COMMIT`] rows. The first error is reported to every later flush.
fn write_loop(
    mut connection: Connection,
    commands: Receiver<Command>,
    path: String,
    online: bool,
    metrics: Option<Arc<Metrics>>,
) {
    let mut failed: Option<String> = None;
    let mut uncommitted = 0usize;
    let mut transaction_open = false;
    // Freshness of the rows not yet committed.
    let mut fresh: Vec<f64> = Vec::new();
    let commit =
        |connection: &mut Connection, open: &mut bool, failed: &mut Option<String>, fresh: &mut Vec<f64>| {
            if *open {
                if let Err(e) = connection.execute_batch("COMMIT") {
                    failed.get_or_insert(format!("SQLite views at {path}: {e}"));
                }
                *open = false;
            }
            if let Some(metrics) = &metrics {
                for t in fresh.drain(..) {
                    metrics.freshness("sqlite", t);
                }
            }
        };
    loop {
        // Commit whenever the queue runs dry, so that other processes of a cluster
        // writing to the same file never wait long for the lock.
        let command = match commands.try_recv() {
            Ok(command) => command,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                commit(&mut connection, &mut transaction_open, &mut failed, &mut fresh);
                uncommitted = 0;
                match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        match command {
            Command::Rows(rows) => {
                if failed.is_some() {
                    continue;
                }
                let result = (|| -> rusqlite::Result<()> {
                    if !transaction_open {
                        // IMMEDIATE takes the write lock now, waiting for it as long
                        // as busy_timeout says; a deferred transaction that upgrades
                        // from reading fails at once when another process wrote.
                        connection.execute_batch("BEGIN IMMEDIATE")?;
                        transaction_open = true;
                    }
                    if online {
                        let mut upsert = connection.prepare_cached(UPSERT_ONLINE)?;
                        for row in &rows {
                            upsert.execute(params![
                                row.user_id,
                                row.as_of,
                                row.features,
                                row.state,
                                row.provisional_through
                            ])?;
                        }
                    } else {
                        let mut upsert = connection.prepare_cached(UPSERT)?;
                        for row in &rows {
                            upsert.execute(params![row.user_id, row.as_of, row.features, row.state])?;
                        }
                    }
                    Ok(())
                })();
                match result {
                    Err(e) => failed = Some(format!("SQLite views: {e}")),
                    Ok(()) => uncommitted += rows.len(),
                }
                if metrics.is_some() {
                    fresh.extend(rows.iter().filter_map(|r| r.fresh_from));
                }
                if uncommitted >= ROWS_PER_COMMIT {
                    commit(&mut connection, &mut transaction_open, &mut failed, &mut fresh);
                    uncommitted = 0;
                }
            }
            Command::Flush(ack) => {
                commit(&mut connection, &mut transaction_open, &mut failed, &mut fresh);
                uncommitted = 0;
                let _ = ack.send(failed.clone().map_or(Ok(()), Err));
            }
        }
    }
    commit(&mut connection, &mut transaction_open, &mut failed, &mut fresh);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(user: &str, as_of: f64, changed: bool) -> ViewRecord {
        ViewRecord {
            user_id: user.into(),
            as_of,
            features: r#"{"n":1}"#.into(),
            state: "{}".into(),
            changed,
            snapshot: false,
            ..ViewRecord::default()
        }
    }

    #[test]
    fn upserts_changed_views_only_and_flush_makes_them_visible() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/views.sqlite");
        let mut store = SqliteViews::open(&path, Journal::Wal, None).unwrap();
        let mut other_worker = store.clone();
        store
            .write(&[view("a", 1.0, true), view("b", 1.0, false)], &mut Vec::new())
            .unwrap();
        other_worker
            .write(&[view("a", 2.5, true), view("c", 2.0, true)], &mut Vec::new())
            .unwrap();
        other_worker.flush(&mut Vec::new()).unwrap();
        store.flush(&mut Vec::new()).unwrap();
        let connection = Connection::open(&path).unwrap();
        let rows: Vec<(String, f64, String)> = connection
            .prepare("SELECT user_id, as_of, features FROM user_features ORDER BY user_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("a".to_owned(), 2.5, r#"{"n":1}"#.to_owned()),
                ("c".to_owned(), 2.0, r#"{"n":1}"#.to_owned())
            ]
        );
    }

    fn journal_mode(path: &Path) -> String {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn backfills_use_a_rollback_journal_unless_the_file_is_already_wal() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.sqlite");
        let mut store = SqliteViews::open(&fresh, Journal::Rollback, None).unwrap();
        store.write(&[view("a", 1.0, true)], &mut Vec::new()).unwrap();
        store.flush(&mut Vec::new()).unwrap();
        drop(store);
        assert_eq!(journal_mode(&fresh), "delete", "a rollback-journal file on disk");

        let streamed = dir.path().join("streamed.sqlite");
        drop(SqliteViews::open(&streamed, Journal::Wal, None).unwrap());
        let mut store = SqliteViews::open(&streamed, Journal::Rollback, None).unwrap();
        store.write(&[view("a", 1.0, true)], &mut Vec::new()).unwrap();
        store.flush(&mut Vec::new()).unwrap();
        drop(store);
        assert_eq!(journal_mode(&streamed), "wal");
    }
}
