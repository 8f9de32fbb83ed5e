//! The embedded default view store: a SQLite file with the table
//! `user_features(user_id TEXT PRIMARY KEY, as_of REAL, features TEXT, state TEXT)`.
//!
//! One connection per process, shared by its workers; each batch is one transaction
//! (WAL, `synchronous=NORMAL`), so a batch is durable once written.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::{SinkError, ViewSink, create_parent};
use crate::fold::ViewRecord;

/// A shared SQLite view store.
#[derive(Clone)]
pub struct SqliteViews {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

const UPSERT: &str = "INSERT INTO user_features (user_id, as_of, features, state) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT(user_id) DO UPDATE SET as_of = excluded.as_of, features = excluded.features, state = excluded.state";

impl SqliteViews {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteViews, SinkError> {
        create_parent(path)?;
        let err = |source| SinkError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open(path).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 10000;
                 CREATE TABLE IF NOT EXISTS user_features (
                     user_id TEXT PRIMARY KEY, as_of REAL, features TEXT, state TEXT);",
            )
            .map_err(err)?;
        Ok(SqliteViews {
            path: path.to_owned(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ViewSink for SqliteViews {
    fn write(&mut self, views: &[ViewRecord]) -> Result<(), SinkError> {
        if !views.iter().any(|v| v.changed) {
            return Ok(());
        }
        let err = |source| SinkError::Sqlite {
            path: self.path.display().to_string(),
            source,
        };
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let transaction = connection.transaction().map_err(err)?;
        {
            let mut upsert = transaction.prepare_cached(UPSERT).map_err(err)?;
            for view in views.iter().filter(|v| v.changed) {
                upsert
                    .execute(params![
                        view.user_id.as_str(),
                        view.as_of,
                        view.features,
                        view.state
                    ])
                    .map_err(err)?;
            }
        }
        transaction.commit().map_err(err)
    }
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
        }
    }

    #[test]
    fn upserts_changed_views_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/views.sqlite");
        let mut store = SqliteViews::open(&path).unwrap();
        store
            .write(&[view("a", 1.0, true), view("b", 1.0, false)])
            .unwrap();
        store.write(&[view("a", 2.5, true)]).unwrap();
        let connection = Connection::open(&path).unwrap();
        let rows: Vec<(String, f64, String)> = connection
            .prepare("SELECT user_id, as_of, features FROM user_features ORDER BY user_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![("a".to_owned(), 2.5, r#"{"n":1}"#.to_owned())]);
    }
}
