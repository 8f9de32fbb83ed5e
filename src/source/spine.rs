//! A spine from a file (DESIGN.md section 10): an entity table of `(row_id, user_id,
//! ts[, item_id])` rows in Parquet, CSV or JSONL, as a feature store takes one, for
//! point-in-time features of rows the log does not hold. `ts` is epoch seconds, UTC.
//!
//! A row that cannot be used (a missing column, an unparsable time, an empty user) is
//! dead-lettered as `invalid_spine_row` with its file and line; nothing else stops.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use compact_str::CompactString;
use serde_json::Value as Json;

use crate::model::event::key_hash;
use crate::source::SourceError;

/// The latest `ts` a row may have: the year 10000, as for event times.
const MAX_TS: f64 = 253_402_300_800.0;

/// One row of a spine file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpineRow {
    /// The row id.
    pub row_id: CompactString,
    /// The user.
    pub user_id: CompactString,
    /// Its key hash (which worker holds the user).
    pub user_hash: u64,
    /// When, epoch seconds.
    pub ts: f64,
    /// The item, when the file has the column.
    pub item_id: Option<CompactString>,
    /// Its 1-based line (row for Parquet), for order between equal times.
    pub line: u64,
}

/// A row of a spine file that cannot be used (it becomes an `invalid_spine_row`
/// dead letter).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// Its 1-based line (row for Parquet).
    pub line: u64,
    /// Its text (for Parquet, its fields as JSON).
    pub raw: String,
    /// What is wrong, with the file and line.
    pub problem: String,
}

/// What a spine file held.
#[derive(Debug, Default)]
pub struct Spine {
    /// Its usable rows, sorted by `ts`, then line.
    pub rows: Vec<SpineRow>,
    /// Its unusable ones.
    pub bad: Vec<BadRow>,
}

/// One row's fields as read, before they are checked.
struct Fields {
    row_id: Option<String>,
    user_id: Option<String>,
    ts: Option<Result<f64, String>>,
    item_id: Option<String>,
}

/// Reads the spine file at `path` (by its extension: `.parquet`, `.csv`, `.jsonl`).
pub fn read_spine(path: &Path) -> Result<Spine, SourceError> {
    let name = path.display().to_string();
    let io = |line: i64| {
        let name = name.clone();
        move |source| SourceError::Io {
            path: name,
            line,
            source,
        }
    };
    if path.is_dir() {
        return Err(SourceError::Spine(format!(
            "{name} is a directory: give one file (.parquet, .csv or .jsonl)"
        )));
    }
    let mut spine = Spine::default();
    let mut take = |line: u64, fields: Fields, raw: &str| match check(fields) {
        Ok((row_id, user_id, ts, item_id)) => spine.rows.push(SpineRow {
            user_hash: key_hash(&user_id),
            row_id: row_id.into(),
            user_id: user_id.into(),
            ts,
            item_id: item_id.map(Into::into),
            line,
        }),
        Err(problem) => spine.bad.push(BadRow {
            line,
            raw: raw.to_owned(),
            problem: format!("{name}:{line}: {problem}"),
        }),
    };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match extension {
        "parquet" => {
            let file = std::fs::File::open(path).map_err(io(0))?;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| SourceError::Spine(format!("{name}: {e}")))?;
            let mut line = 0;
            for batch in reader {
                let batch = batch.map_err(|e| SourceError::Spine(format!("{name}: {e}")))?;
                for fields in parquet_rows(&batch) {
                    line += 1;
                    let raw = describe(&fields);
                    take(line, fields, &raw);
                }
            }
        }
        "csv" => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_path(path)
                .map_err(|e| SourceError::Spine(format!("{name}: {e}")))?;
            let headers = reader
                .headers()
                .map_err(|e| SourceError::Spine(format!("{name}: {e}")))?
                .clone();
            let column = |wanted: &str| headers.iter().position(|h| h.trim() == wanted);
            let (row_id, user_id, ts, item_id) = (
                column("row_id"),
                column("user_id"),
                column("ts"),
                column("item_id"),
            );
            for (index, record) in reader.records().enumerate() {
                // The header is line 1.
                let line = index as u64 + 2;
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        take(line, Fields::empty(), &format!("unreadable CSV record: {e}"));
                        continue;
                    }
                };
                let get = |i: Option<usize>| i.and_then(|i| record.get(i)).map(|v| v.trim().to_owned());
                let fields = Fields {
                    row_id: get(row_id),
                    user_id: get(user_id),
                    ts: get(ts).map(|t| {
                        t.parse::<f64>()
                            .map_err(|_| format!("`ts` {t:?} is not a number"))
                    }),
                    item_id: get(item_id).filter(|i| !i.is_empty()),
                };
                take(line, fields, &record.iter().collect::<Vec<_>>().join(","));
            }
        }
        _ => {
            let text = std::fs::read_to_string(path).map_err(io(0))?;
            for (index, text) in text.lines().enumerate() {
                let line = index as u64 + 1;
                if text.trim().is_empty() {
                    continue;
                }
                let fields = match serde_json::from_str::<Json>(text) {
                    Ok(Json::Object(map)) => {
                        let string = |key: &str| map.get(key).and_then(Json::as_str).map(str::to_owned);
                        Fields {
                            row_id: string("row_id"),
                            user_id: string("user_id"),
                            ts: map.get("ts").map(|t| match t {
                                Json::Number(n) => {
                                    n.as_f64().ok_or_else(|| format!("`ts` {n} is not a number"))
                                }
                                Json::String(s) => {
                                    s.parse().map_err(|_| format!("`ts` {s:?} is not a number"))
                                }
                                other => Err(format!("`ts` {other} is not a number")),
                            }),
                            item_id: string("item_id"),
                        }
                    }
                    _ => Fields::empty(),
                };
                take(line, fields, text);
            }
        }
    }
    spine
        .rows
        .sort_by(|a, b| a.ts.total_cmp(&b.ts).then(a.line.cmp(&b.line)));
    Ok(spine)
}

impl Fields {
    fn empty() -> Fields {
        Fields {
            row_id: None,
            user_id: None,
            ts: None,
            item_id: None,
        }
    }
}

/// The row's parts, or what is wrong with it.
fn check(fields: Fields) -> Result<(String, String, f64, Option<String>), String> {
    let row_id = fields.row_id.filter(|r| !r.is_empty()).ok_or("no `row_id`")?;
    let user_id = fields
        .user_id
        .filter(|u| !u.is_empty())
        .ok_or("no `user_id` (or an empty one)")?;
    let ts = fields.ts.ok_or("no `ts`")??;
    if !(ts.is_finite() && (0.0..MAX_TS).contains(&ts)) {
        // `1e300`, not its three hundred digits.
        let shown = if ts.abs() < 1e16 {
            ts.to_string()
        } else {
            format!("{ts:e}")
        };
        return Err(format!(
            "`ts` {shown} is not a time between 1970 and the year 10000"
        ));
    }
    Ok((row_id, user_id, ts, fields.item_id))
}

/// A Parquet row as the text of its dead letter.
fn describe(fields: &Fields) -> String {
    serde_json::json!({
        "row_id": fields.row_id,
        "user_id": fields.user_id,
        "ts": fields.ts.as_ref().and_then(|t| t.as_ref().ok()),
        "item_id": fields.item_id,
    })
    .to_string()
}

/// The rows of a record batch: strings by name, `ts` as seconds from an integer,
/// float or timestamp column.
fn parquet_rows(batch: &RecordBatch) -> Vec<Fields> {
    let strings = |name: &str| -> Option<Arc<dyn Array>> {
        let column = batch.column_by_name(name)?;
        arrow_cast_utf8(column)
    };
    let (row_id, user_id, item_id) = (strings("row_id"), strings("user_id"), strings("item_id"));
    let ts = batch.column_by_name("ts").cloned();
    (0..batch.num_rows())
        .map(|i| {
            let string = |column: &Option<Arc<dyn Array>>| {
                column.as_ref().and_then(|c| {
                    let c = c.as_any().downcast_ref::<StringArray>()?;
                    (!c.is_null(i)).then(|| c.value(i).to_owned())
                })
            };
            Fields {
                row_id: string(&row_id),
                user_id: string(&user_id),
                ts: ts.as_ref().map(|c| seconds(c.as_ref(), i)),
                item_id: string(&item_id),
            }
        })
        .collect()
}

/// A string column as a `StringArray` (others are not strings).
fn arrow_cast_utf8(column: &Arc<dyn Array>) -> Option<Arc<dyn Array>> {
    (column.data_type() == &DataType::Utf8).then(|| Arc::clone(column))
}

/// Row `i` of a time column, in seconds.
fn seconds(column: &dyn Array, i: usize) -> Result<f64, String> {
    if column.is_null(i) {
        return Err("`ts` is null".into());
    }
    let any = column.as_any();
    let scale = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 1.0,
        TimeUnit::Millisecond => 1e-3,
        TimeUnit::Microsecond => 1e-6,
        TimeUnit::Nanosecond => 1e-9,
    };
    match column.data_type() {
        DataType::Float64 => Ok(any
            .downcast_ref::<Float64Array>()
            .map_or(f64::NAN, |c| c.value(i))),
        DataType::Int64 => Ok(any
            .downcast_ref::<Int64Array>()
            .map_or(f64::NAN, |c| c.value(i) as f64)),
        DataType::Int32 => Ok(any
            .downcast_ref::<Int32Array>()
            .map_or(f64::NAN, |c| f64::from(c.value(i)))),
        DataType::Timestamp(unit, _) => {
            let data = column.to_data();
            let values = data.buffer::<i64>(0);
            Ok(values[data.offset() + i] as f64 * scale(unit))
        }
        other => Err(format!("`ts` is a {other} column, not seconds or a timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_named_as_one_and_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_spine(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn bad_rows_are_dead_lettered_with_file_and_line_and_the_rest_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("spine.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"row_id":"r2","user_id":"u1","ts":20,"item_id":"i1"}"#,
                "\n",
                r#"{"row_id":"r1","user_id":"u2","ts":"10"}"#,
                "\n",
                r#"{"row_id":"r3","user_id":"","ts":5}"#,
                "\n",
                r#"{"row_id":"r4","user_id":"u1","ts":"yesterday"}"#,
                "\n",
                r#"{"row_id":"r5","user_id":"u1"}"#,
                "\n",
                "not json\n",
            ),
        )
        .unwrap();
        let spine = read_spine(&jsonl).unwrap();
        let ids: Vec<&str> = spine.rows.iter().map(|r| r.row_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"], "sorted by ts");
        assert_eq!(spine.rows[1].item_id.as_deref(), Some("i1"));
        let lines: Vec<u64> = spine.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
        assert!(
            spine.bad[1].problem.contains("spine.jsonl:4: `ts` \"yesterday\""),
            "{}",
            spine.bad[1].problem
        );
        assert_eq!(spine.bad[0].raw, r#"{"row_id":"r3","user_id":"","ts":5}"#);

        let csv = dir.path().join("spine.csv");
        std::fs::write(
            &csv,
            "row_id,user_id,ts\nr1,u1,1.5\nr2,,2\nr3,u3,soon\nr4,u4,1e300\nr5,u5,-5\n",
        )
        .unwrap();
        let spine = read_spine(&csv).unwrap();
        assert_eq!(spine.rows.len(), 1);
        assert_eq!(spine.rows[0].ts, 1.5);
        let lines: Vec<u64> = spine.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
        let problems: Vec<&str> = spine.bad.iter().map(|b| b.problem.as_str()).collect();
        let not_a_time = " is not a time between 1970 and the year 10000";
        assert!(
            problems[2].ends_with(&format!("spine.csv:5: `ts` 1e300{not_a_time}")),
            "{problems:?}"
        );
        assert!(
            problems[3].ends_with(&format!("spine.csv:6: `ts` -5{not_a_time}")),
            "{problems:?}"
        );
    }
}
