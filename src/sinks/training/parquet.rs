//! The export's Parquet files: rows as Arrow record batches, written with zstd and
//! dictionary-encoded strings, one open file per date partition, each under a
//! temporary name until it is closed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, NullBufferBuilder,
    OffsetBufferBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, Float64Array, ListArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::columns::{Column, Columns, top_k, typed};
use crate::model::event::Value;
use crate::model::features::FeatureValue;
use crate::model::schema::FieldType;
use crate::model::served::Served;
use crate::model::training::{FeatureKind, LabelFn, LabelValue, Parsed, SpineRows, TrainingRow};
use crate::sinks::SinkError;

/// Rows per row group: bounds what a writer holds before it encodes a group. At
/// 16k rows the busy string columns' dictionaries (user ids, top-k keys) stay within
/// the 1 MiB dictionary page, where at 64k they overflowed it and fell back to plain
/// encoding for the rest of the group: on the 5M bench's export (2.44M rows) 16k-row
/// groups took 83 MB against 90 MB, and 35-60 MiB less peak RSS.
pub const ROW_GROUP_ROWS: usize = 16_384;

/// Columns written without min/max statistics: ids drawn at random, which no range
/// of a file or page narrows down.
const NO_STATISTICS: [&str; 4] = ["row_id", "event_id", "user_id", "item_id"];

fn top_k_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
    ])
}

fn kind_type(kind: FeatureKind) -> DataType {
    match kind {
        FeatureKind::Int64 => DataType::Int64,
        FeatureKind::Float64 => DataType::Float64,
        FeatureKind::Bool => DataType::Boolean,
        FeatureKind::Utf8 | FeatureKind::Json => DataType::Utf8,
        FeatureKind::TopK => DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(top_k_fields()),
            true,
        ))),
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow schema of the export's columns.
pub fn schema(columns: &Columns) -> SchemaRef {
    let fields: Vec<Field> = columns
        .list
        .iter()
        .map(|(name, column)| {
            let (ty, nullable) = match column {
                Column::RowId | Column::UserId | Column::EventId => (DataType::Utf8, false),
                Column::Ts => (timestamp(), false),
                Column::Carried(_, FieldType::Number) => (DataType::Float64, true),
                Column::Carried(_, FieldType::Bool) => (DataType::Boolean, true),
                Column::Carried(..) => (DataType::Utf8, true),
                Column::Position => (DataType::Int32, false),
                Column::ItemId => (DataType::Utf8, false),
                Column::Feature(_, kind) => (kind_type(*kind), true),
                Column::Label(_, LabelFn::Any) => (DataType::Boolean, false),
                Column::Label(_, LabelFn::Count) => (DataType::Int64, false),
                Column::Label(_, LabelFn::Sum) => (DataType::Float64, false),
                Column::Label(_, LabelFn::FirstAfter) => (DataType::Float64, true),
                Column::Complete => (DataType::Boolean, false),
                Column::Served(_, kind) => (kind_type(*kind), true),
                Column::ServedAsOf => (timestamp(), true),
            };
            Field::new(name, ty, nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn builder(ty: &DataType, capacity: usize) -> Box<dyn ArrayBuilder> {
    match ty {
        DataType::Utf8 => Box::new(StringBuilder::with_capacity(capacity, capacity * 16)),
        DataType::Int64 => Box::new(Int64Builder::with_capacity(capacity)),
        DataType::Int32 => Box::new(Int32Builder::with_capacity(capacity)),
        DataType::Float64 => Box::new(Float64Builder::with_capacity(capacity)),
        DataType::Boolean => Box::new(BooleanBuilder::with_capacity(capacity)),
        DataType::Timestamp(..) => {
            Box::new(TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"))
        }
        other => unreachable!("the export builds no {other} column this way"),
    }
}

fn get<T: 'static>(builder: &mut Box<dyn ArrayBuilder>) -> &mut T {
    builder
        .as_any_mut()
        .downcast_mut::<T>()
        .expect("builders match the schema")
}

fn seconds_to_millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// A `top_k` column (a list of `{key, score}`) built from its parts: keys, scores
/// and list offsets, with no builder looked up per value.
struct Pairs {
    keys: StringBuilder,
    scores: Vec<f64>,
    offsets: OffsetBufferBuilder<i32>,
    nulls: NullBufferBuilder,
}

impl Pairs {
    fn with_capacity(rows: usize) -> Pairs {
        Pairs {
            keys: StringBuilder::with_capacity(rows * 5, rows * 40),
            scores: Vec::with_capacity(rows * 5),
            offsets: OffsetBufferBuilder::new(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// Appends one row's pairs, or a null.
    fn push<'a>(&mut self, pairs: Option<impl Iterator<Item = (&'a str, f64)>>) {
        let before = self.scores.len();
        match pairs {
            Some(pairs) => {
                for (key, score) in pairs {
                    self.keys.append_value(key);
                    self.scores.push(score);
                }
                self.nulls.append_non_null();
            }
            None => self.nulls.append_null(),
        }
        self.offsets.push_length(self.scores.len() - before);
    }

    fn finish(mut self, ty: &DataType) -> ArrayRef {
        let DataType::List(item) = ty else {
            unreachable!("a top_k column is a list")
        };
        let values = StructArray::new(
            top_k_fields(),
            vec![
                Arc::new(self.keys.finish()),
                Arc::new(Float64Array::from(self.scores)),
            ],
            None,
        );
        Arc::new(ListArray::new(
            Arc::clone(item),
            self.offsets.finish(),
            Arc::new(values),
            self.nulls.finish(),
        ))
    }
}

/// A feature value as a column of its kind reads it: `None` (null) where it does
/// not fit. Computed values ([`FeatureValue`]) and served ones ([`Served`], already checked
/// against the kind by [`typed`]) are written by the same [`feature_column`].
trait KindValue {
    fn int64(&self) -> Option<i64>;
    fn float64(&self) -> Option<f64>;
    fn boolean(&self) -> Option<bool>;
    fn utf8(&self) -> Option<&str>;
    /// The JSON text of a `Json`-kind value; `None` when null.
    fn json(&self) -> Option<String>;
}

impl KindValue for FeatureValue {
    fn int64(&self) -> Option<i64> {
        match self {
            FeatureValue::UInt(n) => i64::try_from(*n).ok(),
            _ => None,
        }
    }
    fn float64(&self) -> Option<f64> {
        self.number()
    }
    fn boolean(&self) -> Option<bool> {
        match self {
            FeatureValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn utf8(&self) -> Option<&str> {
        match self {
            FeatureValue::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn json(&self) -> Option<String> {
        (!self.is_null()).then(|| self.to_json_string())
    }
}

impl KindValue for Served {
    fn int64(&self) -> Option<i64> {
        match self {
            Served::Number(n) => n.as_i64(),
            _ => None,
        }
    }
    fn float64(&self) -> Option<f64> {
        self.as_f64()
    }
    fn boolean(&self) -> Option<bool> {
        match self {
            Served::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn utf8(&self) -> Option<&str> {
        match self {
            Served::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn json(&self) -> Option<String> {
        (!self.is_null()).then(|| serde_json::to_string(self).expect("a served value serializes"))
    }
}

/// Appends a feature's column, each value read as the feature's kind. The builder is
/// looked up once per column, not once per value.
fn feature_column<'a, V: KindValue + 'a>(
    builder: &mut Box<dyn ArrayBuilder>,
    kind: FeatureKind,
    values: impl Iterator<Item = &'a V>,
) {
    match kind {
        FeatureKind::Int64 => {
            let b = get::<Int64Builder>(builder);
            values.for_each(|v| b.append_option(v.int64()));
        }
        FeatureKind::Float64 => {
            let b = get::<Float64Builder>(builder);
            values.for_each(|v| b.append_option(v.float64()));
        }
        FeatureKind::Bool => {
            let b = get::<BooleanBuilder>(builder);
            values.for_each(|v| b.append_option(v.boolean()));
        }
        FeatureKind::Utf8 => {
            let b = get::<StringBuilder>(builder);
            values.for_each(|v| b.append_option(v.utf8()));
        }
        FeatureKind::Json => {
            let b = get::<StringBuilder>(builder);
            values.for_each(|v| b.append_option(v.json()));
        }
        FeatureKind::TopK => unreachable!("top_k columns are built as pairs"),
    }
}

/// A computed `top_k` value's pairs; `None` (null) when it is not one, or when a
/// score is not finite (the view writes it as `null`, which is not a pair).
fn computed_pairs(value: &FeatureValue) -> Option<impl Iterator<Item = (&str, f64)>> {
    match value {
        FeatureValue::TopK(pairs) if pairs.iter().all(|(_, s)| s.is_finite()) => {
            Some(pairs.iter().map(|(k, s)| (k.as_str(), *s)))
        }
        _ => None,
    }
}

/// The rows of `spines` as one record batch, built column by column (one builder
/// looked up per column, not per value).
pub fn batch(columns: &Columns, schema: &SchemaRef, spines: &mut [SpineRows]) -> RecordBatch {
    let capacity: usize = spines.iter().map(SpineRows::len).sum();
    for spine in spines.iter_mut() {
        spine.parsed(&columns.features);
    }
    let spines = &*spines;
    // The rows, and each one's parsed served values, laid out once: every column
    // walks them.
    let (all_rows, all_parsed): (Vec<TrainingRow<'_>>, Vec<&Parsed>) = spines
        .iter()
        .flat_map(|s| {
            let parsed = s.parsed.as_deref().expect("parsed above");
            s.rows().map(move |r| (r, parsed))
        })
        .unzip();
    let rows = || all_rows.iter();
    let per_row = || all_parsed.iter().copied();
    let arrays: Vec<ArrayRef> = columns
        .list
        .iter()
        .zip(schema.fields().iter())
        .map(|((_, column), field)| {
            match column {
                Column::Feature(i, FeatureKind::TopK) => {
                    let mut pairs = Pairs::with_capacity(capacity);
                    rows().for_each(|r| pairs.push(computed_pairs(&r.spine.features[*i])));
                    return pairs.finish(field.data_type());
                }
                Column::Served(i, FeatureKind::TopK) => {
                    let mut pairs = Pairs::with_capacity(capacity);
                    per_row().for_each(|p| pairs.push(p.served[*i].as_ref().and_then(top_k)));
                    return pairs.finish(field.data_type());
                }
                _ => {}
            }
            let mut b = builder(field.data_type(), capacity);
            let strings = |b: &mut Box<dyn ArrayBuilder>, values: &mut dyn Iterator<Item = &str>| {
                let b = get::<StringBuilder>(b);
                values.for_each(|v| b.append_value(v));
            };
            match column {
                Column::RowId => strings(&mut b, &mut rows().map(|r| r.spine.row_id.as_str())),
                Column::UserId => strings(&mut b, &mut rows().map(|r| r.spine.user_id.as_str())),
                Column::EventId => strings(&mut b, &mut rows().map(|r| r.spine.event_id.as_str())),
                Column::ItemId => strings(&mut b, &mut rows().map(|r| r.item.map_or("", |i| i.1))),
                Column::Ts => {
                    let b = get::<TimestampMillisecondBuilder>(&mut b);
                    rows().for_each(|r| b.append_value(seconds_to_millis(r.spine.ts)));
                }
                Column::Position => {
                    let b = get::<Int32Builder>(&mut b);
                    rows().for_each(|r| b.append_value(r.item.map_or(0, |i| i.0)));
                }
                Column::Carried(i, ty) => {
                    let values = rows().map(|r| &r.spine.carried[*i]);
                    match ty {
                        FieldType::Number => {
                            let b = get::<Float64Builder>(&mut b);
                            values.for_each(|v| {
                                b.append_option(if let Value::Num(n) = v { Some(*n) } else { None })
                            });
                        }
                        FieldType::Bool => {
                            let b = get::<BooleanBuilder>(&mut b);
                            values.for_each(|v| {
                                b.append_option(if let Value::Bool(x) = v { Some(*x) } else { None })
                            });
                        }
                        _ => {
                            let b = get::<StringBuilder>(&mut b);
                            values.for_each(|v| {
                                b.append_option(if let Value::Str(s) = v {
                                    Some(s.as_str())
                                } else {
                                    None
                                })
                            });
                        }
                    }
                }
                Column::Feature(i, kind) => {
                    feature_column(&mut b, *kind, rows().map(|r| &r.spine.features[*i]))
                }
                Column::Served(i, kind) => feature_column(
                    &mut b,
                    *kind,
                    per_row().map(|p| typed(p.served[*i].as_ref(), *kind)),
                ),
                Column::ServedAsOf => {
                    let b = get::<TimestampMillisecondBuilder>(&mut b);
                    per_row().for_each(|p| b.append_option(p.served_as_of.map(seconds_to_millis)));
                }
                Column::Complete => {
                    let b = get::<BooleanBuilder>(&mut b);
                    rows().for_each(|r| b.append_value(r.labels_complete));
                }
                Column::Label(i, func) => {
                    let labels = rows().map(|r| r.labels[*i]);
                    match func {
                        LabelFn::Any => {
                            let b = get::<BooleanBuilder>(&mut b);
                            labels.for_each(|l| b.append_value(matches!(l, LabelValue::Any(true))));
                        }
                        LabelFn::Count => {
                            let b = get::<Int64Builder>(&mut b);
                            labels.for_each(|l| {
                                b.append_value(if let LabelValue::Count(n) = l { n as i64 } else { 0 })
                            });
                        }
                        LabelFn::Sum => {
                            let b = get::<Float64Builder>(&mut b);
                            labels.for_each(|l| {
                                b.append_value(if let LabelValue::Sum(s) = l { s } else { 0.0 })
                            });
                        }
                        LabelFn::FirstAfter => {
                            let b = get::<Float64Builder>(&mut b);
                            labels.for_each(|l| {
                                b.append_option(if let LabelValue::FirstAfter(f) = l {
                                    f
                                } else {
                                    None
                                })
                            });
                        }
                    }
                }
            }
            b.finish()
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), arrays).expect("arrays match the schema")
}

/// One Parquet file being written: under a temporary name until it is closed.
pub struct ParquetFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parquet_error(path: &Path, error: parquet::errors::ParquetError) -> SinkError {
    SinkError::Store(format!("writing {}: {error}", path.display()))
}

impl ParquetFile {
    /// Creates `path` (written as `.<name>.tmp` beside it), with `metadata`.
    pub fn create(
        path: PathBuf,
        schema: &SchemaRef,
        metadata: &[(String, String)],
    ) -> Result<ParquetFile, SinkError> {
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_dictionary_enabled(true);
        // Ids unique to a spine event: a dictionary would hash every value to find
        // no repeats beyond the event's own rows, which zstd finds anyway. Numbers,
        // booleans and times are written plain too: on the bench export (2.44M rows)
        // the files took 73 MB against 83 MB with their dictionaries, in the same time.
        let plain = schema.fields().iter().filter(|field| {
            ["row_id", "event_id"].contains(&field.name().as_str())
                || !matches!(field.data_type(), DataType::Utf8 | DataType::List(_))
        });
        for field in plain {
            properties =
                properties.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
        // Min/max statistics only where a reader can prune with them (times, numbers,
        // labels, model versions): those of random ids and of the values inside top-k
        // lists prune nothing, and comparing every string to find them took a tenth
        // of the writer's instructions on the bench export (callgrind).
        for field in schema.fields() {
            let leaves: Vec<ColumnPath> = match field.data_type() {
                // arrow-rs names a list's repeated group `list`.
                DataType::List(item) => top_k_fields()
                    .iter()
                    .map(|leaf| {
                        ColumnPath::new(vec![
                            field.name().clone(),
                            "list".into(),
                            item.name().clone(),
                            leaf.name().clone(),
                        ])
                    })
                    .collect(),
                _ if NO_STATISTICS.contains(&field.name().as_str()) => {
                    vec![ColumnPath::from(field.name().as_str())]
                }
                _ => Vec::new(),
            };
            for leaf in leaves {
                properties = properties.set_column_statistics_enabled(leaf, EnabledStatistics::None);
            }
        }
        let properties = properties
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(
                metadata
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect(),
            ))
            .build();
        let writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(properties))
            .map_err(|e| parquet_error(&tmp, e))?;
        Ok(ParquetFile { writer, tmp, path })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.writer.write(batch).map_err(|e| parquet_error(&self.tmp, e))
    }

    /// Bytes written so far (encoded, not counting the open row group).
    pub fn bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Writes the footer, syncs, and renames the file to its name.
    pub fn close(self) -> Result<PathBuf, SinkError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&self.tmp, e))?;
        file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{StringArray, TimestampMillisecondArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn statistics_are_kept_where_they_prune_and_skipped_for_ids_and_list_values() {
        let dir = tempfile::tempdir().unwrap();
        let list = kind_type(FeatureKind::TopK);
        let schema = Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::Utf8, false),
            Field::new("ts", timestamp(), false),
            Field::new("top_categories", list.clone(), true),
        ]));
        let mut pairs = Pairs::with_capacity(2);
        pairs.push(Some([("books", 2.0), ("toys", 1.0)].into_iter()));
        pairs.push(None::<std::array::IntoIter<(&str, f64), 0>>);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["r2", "r1"])),
                Arc::new(TimestampMillisecondArray::from(vec![2000, 1000]).with_timezone("UTC")),
                pairs.finish(&list),
            ],
        )
        .unwrap();
        let path = dir.path().join("part.parquet");
        let mut file = ParquetFile::create(path.clone(), &schema, &[]).unwrap();
        file.write(&batch).unwrap();
        file.close().unwrap();

        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let with_statistics: Vec<(String, bool)> = group
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), c.statistics().is_some()))
            .collect();
        assert_eq!(
            with_statistics,
            [
                ("row_id".to_owned(), false),
                ("ts".to_owned(), true),
                ("top_categories.list.item.key".to_owned(), false),
                ("top_categories.list.item.score".to_owned(), false),
            ]
        );
    }
}
