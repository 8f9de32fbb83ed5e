//! Reading views back from a view store: a SQLite file, a JSONL snapshot, or Redis
//! (a URL and the key prefix), for `diff --views` and `views get`.
//!
//! A record that is not a view (a Redis key of another kind, a line that is not a
//! view object) is reported with where it stands, never a reason to stop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use compact_str::CompactString;
use serde_json::Value;

/// Why a store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store names something that cannot be read.
    #[error("{store}: {problem}")]
    Unreadable {
        /// The store as given.
        store: String,
        /// What went wrong.
        problem: String,
    },
}

/// A view store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// A SQLite file with the `user_features` table.
    Sqlite(PathBuf),
    /// A JSONL snapshot, one view per line.
    Jsonl(PathBuf),
    /// Redis: views at `<prefix><user_id>`.
    Redis {
        /// The connection URL, without the `prefix` parameter.
        url: String,
        /// The key prefix.
        prefix: String,
    },
}

/// A view read back from a store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredView {
    /// The user.
    pub user_id: CompactString,
    /// The whole view as a JSON object.
    pub view: Value,
}

/// Everything a store holds.
#[derive(Debug, Default)]
pub struct StoreViews {
    /// Its views.
    pub views: Vec<StoredView>,
    /// Records that are not views, with where they stand.
    pub not_views: Vec<String>,
}

const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Reads a store's name: `redis://host:port[/db][?prefix=P]` (default prefix
    /// `user_state:`), a `.jsonl` file, or a SQLite file.
    pub fn parse(spec: &str) -> Result<Store, StoreError> {
        if spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("redis+unix://")
        {
            let (base, query) = spec.split_once('?').unwrap_or((spec, ""));
            let mut prefix = crate::job::defaults::DEFAULT_REDIS_KEY_PREFIX.to_owned();
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.strip_prefix("prefix=") {
                    Some(p) => prefix = p.to_owned(),
                    None => kept.push(pair),
                }
            }
            let url = if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            return Ok(Store::Redis { url, prefix });
        }
        let path = PathBuf::from(spec);
        let unreadable = |problem: String| StoreError::Unreadable {
            store: spec.to_owned(),
            problem,
        };
        if !path.is_file() {
            return Err(unreadable(
                "no such file (a view store is a SQLite file, a .jsonl snapshot, or redis://host:port?prefix=P)".into(),
            ));
        }
        let mut head = [0u8; 16];
        let sqlite = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .map_err(|e| unreadable(e.to_string()))?;
        if sqlite == 16 && &head == b"SQLite format 3\0" {
            Ok(Store::Sqlite(path))
        } else {
            Ok(Store::Jsonl(path))
        }
    }

    /// The store as a person would name it.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(path) | Store::Jsonl(path) => path.display().to_string(),
            Store::Redis { url, prefix } => format!("{url} (keys {prefix}*)"),
        }
    }

    fn unreadable(&self, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Unreadable {
            store: self.describe(),
            problem: problem.to_string(),
        }
    }

    /// Every view the store holds, sorted by user.
    pub fn read_all(&self) -> Result<StoreViews, StoreError> {
        let mut all = match self {
            Store::Sqlite(path) => self.sqlite(path, None)?,
            Store::Jsonl(path) => self.jsonl(path, None)?,
            Store::Redis { url, prefix } => self.redis(url, prefix, None)?,
        };
        all.views.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(all)
    }

    /// One user's view, when the store has it; and what stood in its place when that
    /// was not a view.
    pub fn get(&self, user: &str) -> Result<StoreViews, StoreError> {
        match self {
            Store::Sqlite(path) => self.sqlite(path, Some(user)),
            Store::Jsonl(path) => self.jsonl(path, Some(user)),
            Store::Redis { url, prefix } => self.redis(url, prefix, Some(user)),
        }
    }

    fn sqlite(&self, path: &Path, user: Option<&str>) -> Result<StoreViews, StoreError> {
        use rusqlite::OpenFlags;
        let db = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| self.unreadable(e))?;
        let sql = match user {
            Some(_) => "SELECT user_id, as_of, features, state FROM user_features WHERE user_id = ?1",
            None => "SELECT user_id, as_of, features, state FROM user_features",
        };
        let mut statement = db.prepare(sql).map_err(|e| self.unreadable(e))?;
        let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<(String, Option<f64>, String, String)> {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        };
        let rows = match user {
            Some(user) => statement.query_map([user], read),
            None => statement.query_map([], read),
        }
        .map_err(|e| self.unreadable(e))?;
        let mut out = StoreViews::default();
        for row in rows {
            let (user_id, as_of, features, state) = row.map_err(|e| self.unreadable(e))?;
            let parse = |text: &str| serde_json::from_str::<Value>(text);
            match (parse(&features), parse(&state)) {
                (Ok(features @ Value::Object(_)), Ok(state)) => out.views.push(StoredView {
                    user_id: CompactString::from(user_id.as_str()),
                    view: serde_json::json!({
                        "user_id": user_id, "as_of": as_of, "features": features, "state": state
                    }),
                }),
                _ => out.not_views.push(format!(
                    "row {user_id}: its features or state are not JSON objects"
                )),
            }
        }
        Ok(out)
    }

    fn jsonl(&self, path: &Path, user: Option<&str>) -> Result<StoreViews, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| self.unreadable(e))?;
        let mut out = StoreViews::default();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match view_of(line.as_bytes()) {
                Ok(view) if user.is_none_or(|u| view.user_id == u) => out.views.push(view),
                Ok(_) => {}
                Err(problem) => out
                    .not_views
                    .push(format!("{}:{}: {problem}", path.display(), n + 1)),
            }
        }
        Ok(out)
    }

    fn redis(&self, url: &str, prefix: &str, user: Option<&str>) -> Result<StoreViews, StoreError> {
        let client = redis::Client::open(url).map_err(|e| self.unreadable(e))?;
        let mut connection = client
            .get_connection_with_timeout(REDIS_TIMEOUT)
            .map_err(|e| self.unreadable(e))?;
        let keys: Vec<Vec<u8>> = match user {
            Some(user) => vec![format!("{prefix}{user}").into_bytes()],
            None => {
                let mut keys = Vec::new();
                let mut cursor: u64 = 0;
                let pattern = format!("{}*", glob_escape(prefix));
                loop {
                    let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query(&mut connection)
                        .map_err(|e| self.unreadable(e))?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                keys.sort();
                keys.dedup();
                keys
            }
        };
        let mut out = StoreViews::default();
        for chunk in keys.chunks(1000) {
            // MGET answers nil for a key that holds no string (a hash, a list).
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query(&mut connection)
                .map_err(|e| self.unreadable(e))?;
            for (key, value) in chunk.iter().zip(values) {
                let name = String::from_utf8_lossy(key);
                let expected = name.strip_prefix(prefix).unwrap_or(&name);
                match value.map(|v| view_of(&v)) {
                    None if user.is_some() => {
                        if redis::cmd("EXISTS")
                            .arg(key)
                            .query::<bool>(&mut connection)
                            .unwrap_or(false)
                        {
                            out.not_views
                                .push(format!("key {name}: not a string, so not a view"));
                        }
                    }
                    None => out
                        .not_views
                        .push(format!("key {name}: not a string, so not a view")),
                    Some(Ok(view)) if view.user_id == expected => out.views.push(view),
                    Some(Ok(view)) => out
                        .not_views
                        .push(format!("key {name}: holds the view of user {}", view.user_id)),
                    Some(Err(problem)) => out.not_views.push(format!("key {name}: {problem}")),
                }
            }
        }
        Ok(out)
    }
}

/// A view from its JSON text: an object with a string `user_id` and a `features`
/// object.
fn view_of(bytes: &[u8]) -> Result<StoredView, String> {
    let view: Value = serde_json::from_slice(bytes).map_err(|e| format!("not a view (not JSON: {e})"))?;
    let user_id = view
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or("not a view (no string `user_id`)")?;
    if !view.get("features").is_some_and(Value::is_object) {
        return Err("not a view (no `features` object)".into());
    }
    Ok(StoredView {
        user_id: CompactString::from(user_id),
        view,
    })
}

/// A Redis glob pattern matching `text` literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_named_by_url_or_file() {
        assert_eq!(
            Store::parse("redis://127.0.0.1:6379/2?prefix=feat:").unwrap(),
            Store::Redis {
                url: "redis://127.0.0.1:6379/2".into(),
                prefix: "feat:".into()
            }
        );
        assert_eq!(
            Store::parse("redis://h:1").unwrap(),
            Store::Redis {
                url: "redis://h:1".into(),
                prefix: "user_state:".into()
            }
        );
        let error = Store::parse("/no/such/views.sqlite").unwrap_err().to_string();
        assert!(
            error.starts_with("/no/such/views.sqlite: no such file"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("views.jsonl");
        std::fs::write(
            &jsonl,
            "{\"user_id\":\"u1\",\"as_of\":1,\"features\":{\"n\":1},\"state\":{}}\n[1]\n",
        )
        .unwrap();
        let store = Store::parse(jsonl.to_str().unwrap()).unwrap();
        let all = store.read_all().unwrap();
        assert_eq!(all.views.len(), 1);
        assert_eq!(all.not_views.len(), 1);
        assert!(all.not_views[0].ends_with("views.jsonl:2: not a view (no string `user_id`)"));
        assert_eq!(glob_escape("a*b"), "a\\*b");
    }
}
