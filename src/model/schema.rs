//! The schema registry: the event types a job knows, their versions, payload fields
//! and upcasts, compiled from the job's `[[events]]` sections.
//!
//! Each type has a canonical field set (field names after `rename`); every version
//! maps its payload onto it. Fields the features read are *carried* on the
//! [`crate::model::event::Event`] in slot order; the others are validated and dropped.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::model::event::Value;

/// The name features use for the envelope's `event_time`.
pub const EVENT_TIME: &str = "event_time";

/// The JSON type a payload field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON number (not a bool).
    Number,
    /// A JSON bool.
    Bool,
    /// A JSON array of strings.
    StringList,
    /// A JSON object.
    Object,
    /// Any JSON value.
    Any,
}

impl FieldType {
    /// The name job files use for this type.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Bool => "bool",
            FieldType::StringList => "string_list",
            FieldType::Object => "object",
            FieldType::Any => "any",
        }
    }
}

/// The schemas a job knows.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<EventType>,
}

/// One event type and its versions.
#[derive(Debug, Clone)]
pub struct EventType {
    /// The `event_type` string.
    pub name: String,
    /// Supported MAJOR versions, ascending.
    pub versions: Vec<VersionSchema>,
    /// Canonical fields and their types.
    pub canonical: BTreeMap<String, FieldType>,
    /// Canonical fields carried on events, in slot order.
    pub carried: Vec<String>,
}

/// The payload schema of one MAJOR version.
#[derive(Debug, Clone)]
pub struct VersionSchema {
    /// The MAJOR version.
    pub major: u32,
    /// Payload fields, in name order.
    pub fields: Vec<PayloadField>,
}

/// One payload field of a version.
#[derive(Debug, Clone)]
pub struct PayloadField {
    /// The name in the payload.
    pub name: String,
    /// `payload.<name>`, as failure details name it.
    pub path: String,
    /// The canonical name after upcasting.
    pub canonical: String,
    /// Its JSON type.
    pub ty: FieldType,
    /// Whether it must be present and non-null.
    pub required: bool,
    /// The value an absent optional field takes.
    pub default: Option<Value>,
    /// Its slot on the event, when carried.
    pub slot: Option<usize>,
}

impl VersionSchema {
    /// Whether the payload must be present.
    pub fn payload_required(&self) -> bool {
        self.fields.iter().any(|f| f.required)
    }
}

/// How a feature refers to an event's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef {
    /// The envelope's `event_time`.
    EventTime,
    /// A carried payload field.
    Slot(usize),
}

impl Registry {
    /// A registry of these types (the job front end compiles them).
    pub fn from_types(types: Vec<EventType>) -> Registry {
        Registry { types }
    }

    /// The event types, in declaration order of their first schema.
    pub fn types(&self) -> &[EventType] {
        &self.types
    }

    /// The index of an event type by name.
    pub fn type_index(&self, name: &str) -> Option<u16> {
        self.types.iter().position(|t| t.name == name).map(|i| i as u16)
    }

    /// The schema for a MAJOR version of a type.
    pub fn version(&self, event_type: u16, major: u32) -> Option<&VersionSchema> {
        self.types[event_type as usize]
            .versions
            .iter()
            .find(|v| v.major == major)
    }

    /// Resolves `field` of `event_type` for a feature and makes sure it is carried.
    /// Returns the reference and the field's type.
    pub fn carry(&mut self, event_type: u16, field: &str) -> Result<(FieldRef, FieldType), String> {
        if field == EVENT_TIME {
            return Ok((FieldRef::EventTime, FieldType::Number));
        }
        let ty = &mut self.types[event_type as usize];
        let Some(&field_type) = ty.canonical.get(field) else {
            let known: Vec<_> = ty.canonical.keys().map(String::as_str).collect();
            return Err(format!(
                "event type `{}` has no field `{field}` (it has: {}; and `event_time`)",
                ty.name,
                if known.is_empty() {
                    "no payload fields".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        let slot = match ty.carried.iter().position(|c| c == field) {
            Some(slot) => slot,
            None => {
                ty.carried.push(field.to_owned());
                let slot = ty.carried.len() - 1;
                for version in &mut ty.versions {
                    for f in &mut version.fields {
                        if f.canonical == field {
                            f.slot = Some(slot);
                        }
                    }
                }
                slot
            }
        };
        Ok((FieldRef::Slot(slot), field_type))
    }
}
