//! The export's columns (DESIGN.md section 10) and a row's values in them: one
//! description that both the Parquet batches and the JSONL lines are written from,
//! so the two forms cannot disagree.

use serde::ser::{SerializeMap, Serializer};
use serde_json::Value as Json;

use crate::model::event::Value;
use crate::model::features::{AsJson, FeatureSpec};
use crate::model::schema::FieldType;
use crate::model::served::Served;
use crate::model::training::{ExportSpec, FeatureKind, LabelFn, LabelValue, Parsed, TrainingRow};

/// One column of the export.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `row_id`.
    RowId,
    /// `user_id`.
    UserId,
    /// `ts`.
    Ts,
    /// `event_id`.
    EventId,
    /// A carried spine field.
    Carried(usize, FieldType),
    /// `position`.
    Position,
    /// `item_id`.
    ItemId,
    /// A feature at the spine event.
    Feature(usize, FeatureKind),
    /// A label.
    Label(usize, LabelFn),
    /// `labels_complete`.
    Complete,
    /// A served feature.
    Served(usize, FeatureKind),
    /// `served_as_of`.
    ServedAsOf,
}

/// The export's columns, in order, with their names.
#[derive(Debug, Clone)]
pub struct Columns {
    /// `(name, column)` in order.
    pub list: Vec<(String, Column)>,
    /// Feature names, in the spec's order.
    pub features: Vec<String>,
}

impl Columns {
    /// The columns of an export of the features `features` declares.
    pub fn of(features: &FeatureSpec, spec: &ExportSpec) -> Columns {
        let mut list = vec![
            ("row_id".to_owned(), Column::RowId),
            ("user_id".to_owned(), Column::UserId),
            ("ts".to_owned(), Column::Ts),
            ("event_id".to_owned(), Column::EventId),
        ];
        for (i, c) in spec.carry.iter().enumerate() {
            list.push((c.name.clone(), Column::Carried(i, c.ty)));
        }
        if spec.explode.is_some() {
            list.push(("position".into(), Column::Position));
            list.push(("item_id".into(), Column::ItemId));
        }
        let features: Vec<String> = features.features.iter().map(|f| f.name.clone()).collect();
        for (i, (name, kind)) in features.iter().zip(&spec.feature_kinds).enumerate() {
            list.push((name.clone(), Column::Feature(i, *kind)));
        }
        for (i, label) in spec.labels.iter().enumerate() {
            list.push((format!("label_{}", label.name), Column::Label(i, label.func)));
        }
        list.push(("labels_complete".into(), Column::Complete));
        if spec.snapshot.is_some() {
            for (i, (name, kind)) in features.iter().zip(&spec.feature_kinds).enumerate() {
                list.push((format!("served__{name}"), Column::Served(i, *kind)));
            }
            list.push(("served_as_of".into(), Column::ServedAsOf));
        }
        Columns { list, features }
    }
}

/// A served value as its feature's type: null when absent or of another type.
pub fn typed(value: Option<&Served>, kind: FeatureKind) -> &Served {
    const NULL: &Served = &Served::Null;
    let Some(value) = value else { return NULL };
    let fits = match (kind, value) {
        (FeatureKind::Int64, Served::Number(n)) => n.is_i64() || n.is_u64(),
        (FeatureKind::Float64, Served::Number(_))
        | (FeatureKind::Bool, Served::Bool(_))
        | (FeatureKind::Utf8, Served::Str(_))
        | (FeatureKind::TopK, Served::Pairs(_))
        | (FeatureKind::Json, _) => true,
        _ => false,
    };
    if fits { value } else { NULL }
}

/// A `top_k` value's `(key, score)` pairs: the view writes `[[key, score], ...]`.
pub fn top_k(value: &Served) -> Option<impl Iterator<Item = (&str, f64)> + '_> {
    match value {
        Served::Pairs(pairs) => Some(
            pairs
                .iter()
                .map(|(key, score)| (key.as_str(), score.as_f64().unwrap_or(f64::NAN))),
        ),
        _ => None,
    }
}

/// The JSON value of a carried field.
pub fn carried(value: &Value) -> Json {
    match value {
        Value::Str(s) => Json::String(s.to_string()),
        Value::Num(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::Bool(b) => Json::Bool(*b),
        _ => Json::Null,
    }
}

/// A label's JSON value.
pub fn label(value: &LabelValue) -> Json {
    match *value {
        LabelValue::Any(b) => Json::Bool(b),
        LabelValue::Count(n) => Json::from(n),
        LabelValue::Sum(s) => serde_json::Number::from_f64(s).map_or(Json::Null, Json::Number),
        LabelValue::FirstAfter(f) => f
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
    }
}

/// A row as one JSON object, columns in order (a line of the JSONL form; `ts` and
/// `served_as_of` in epoch seconds).
pub fn json_line(columns: &Columns, kinds: &[FeatureKind], row: TrainingRow<'_>, parsed: &Parsed) -> String {
    struct Line<'a>(&'a Columns, &'a [FeatureKind], TrainingRow<'a>, &'a Parsed);
    impl serde::Serialize for Line<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let Line(columns, kinds, row, parsed) = *self;
            let spine = row.spine;
            let mut map = serializer.serialize_map(Some(columns.list.len()))?;
            for (name, column) in &columns.list {
                match column {
                    Column::RowId => map.serialize_entry(name, spine.row_id.as_str())?,
                    Column::UserId => map.serialize_entry(name, spine.user_id.as_str())?,
                    Column::Ts => map.serialize_entry(name, &spine.ts)?,
                    Column::EventId => map.serialize_entry(name, spine.event_id.as_str())?,
                    Column::Carried(i, _) => map.serialize_entry(name, &carried(&spine.carried[*i]))?,
                    Column::Position => map.serialize_entry(name, &row.item.map(|i| i.0))?,
                    Column::ItemId => map.serialize_entry(name, &row.item.map(|i| i.1))?,
                    Column::Feature(i, _) => map.serialize_entry(name, &AsJson(&spine.features[*i]))?,
                    Column::Label(i, _) => map.serialize_entry(name, &label(&row.labels[*i]))?,
                    Column::Complete => map.serialize_entry(name, &row.labels_complete)?,
                    Column::Served(i, _) => {
                        map.serialize_entry(name, typed(parsed.served[*i].as_ref(), kinds[*i]))?
                    }
                    Column::ServedAsOf => map.serialize_entry(name, &parsed.served_as_of)?,
                }
            }
            map.end()
        }
    }
    serde_json::to_string(&Line(columns, kinds, row, parsed)).expect("a row serializes")
}
