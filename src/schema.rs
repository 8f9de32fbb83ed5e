//! The schema registry: the event types a job knows, their versions, payload fields
//! and upcasts, compiled from the job's `[[events]]` sections.
//!
//! Each type has a canonical field set (field names after `rename`); every version
//! maps its payload onto it. Fields the features read are *carried* on the
//! [`crate::event::Event`] in slot order; the others are validated and dropped.

use std::collections::BTreeMap;

use compact_str::CompactString;

use crate::event::Value;
use crate::job::file::{EventDecl, FieldType};
use crate::job::{Located, Problems, SourceFile};

/// The name features use for the envelope's `event_time`.
pub const EVENT_TIME: &str = "event_time";

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

    /// Compiles the `[[events]]` sections, reporting problems.
    pub fn compile(
        events: &Located<Vec<EventDecl>>,
        files: &[SourceFile],
        problems: &mut Problems,
    ) -> Registry {
        let file = &files[events.file];
        let mut registry = Registry::default();
        for (index, decl) in events.value.iter().enumerate() {
            let key = format!("events[{index}]");
            let type_index = match registry.type_index(decl.event_type.get_ref()) {
                Some(i) => i as usize,
                None => {
                    if decl.event_type.get_ref().is_empty() {
                        problems.at(
                            file,
                            decl.event_type.span(),
                            &format!("{key}.type"),
                            "event type must not be empty",
                        );
                    }
                    registry.types.push(EventType {
                        name: decl.event_type.get_ref().clone(),
                        versions: Vec::new(),
                        canonical: BTreeMap::new(),
                        carried: Vec::new(),
                    });
                    registry.types.len() - 1
                }
            };
            let ty = &mut registry.types[type_index];
            let major = *decl.version.get_ref();
            if ty.versions.iter().any(|v| v.major == major) {
                problems.at(
                    file,
                    decl.version.span(),
                    &format!("{key}.version"),
                    format!("`{}` version {major} is declared twice", ty.name),
                );
                continue;
            }
            let mut fields = Vec::new();
            let mut canonical_seen = BTreeMap::new();
            for (name, field) in &decl.fields {
                let field_key = format!("{key}.fields.{}", name.get_ref());
                let spec = field.get_ref();
                let canonical = spec
                    .rename
                    .as_ref()
                    .map_or_else(|| name.get_ref().clone(), |r| r.get_ref().clone());
                if canonical == EVENT_TIME || canonical.is_empty() {
                    problems.at(
                        file,
                        name.span(),
                        &field_key,
                        format!("`{canonical}` cannot name a payload field"),
                    );
                }
                if let Some(other) = canonical_seen.insert(canonical.clone(), name.get_ref().clone()) {
                    problems.at(
                        file,
                        name.span(),
                        &field_key,
                        format!(
                            "fields `{other}` and `{}` both become `{canonical}`",
                            name.get_ref()
                        ),
                    );
                }
                match ty.canonical.get(&canonical) {
                    Some(existing) if *existing != spec.ty => problems.at(
                        file,
                        field.span(),
                        &field_key,
                        format!(
                            "`{canonical}` is a {} in another version of `{}` but a {} here",
                            existing.name(),
                            ty.name,
                            spec.ty.name()
                        ),
                    ),
                    _ => {
                        ty.canonical.insert(canonical.clone(), spec.ty);
                    }
                }
                let default = match &spec.default {
                    None => None,
                    Some(value) if spec.required => {
                        problems.at(
                            file,
                            value.span(),
                            &format!("{field_key}.default"),
                            "a required field takes no default",
                        );
                        None
                    }
                    Some(value) => match default_value(value.get_ref(), spec.ty) {
                        Ok(v) => Some(v),
                        Err(message) => {
                            problems.at(file, value.span(), &format!("{field_key}.default"), message);
                            None
                        }
                    },
                };
                fields.push(PayloadField {
                    name: name.get_ref().clone(),
                    path: format!("payload.{}", name.get_ref()),
                    canonical,
                    ty: spec.ty,
                    required: spec.required,
                    default,
                    slot: None,
                });
            }
            ty.versions.push(VersionSchema { major, fields });
            ty.versions.sort_by_key(|v| v.major);
        }
        registry
    }
}

fn default_value(value: &toml::Value, ty: FieldType) -> Result<Value, String> {
    let mismatch = || format!("default must be a {} like the field", ty.name());
    Ok(match (ty, value) {
        (FieldType::String | FieldType::Any, toml::Value::String(s)) => {
            Value::Str(CompactString::from(s.as_str()))
        }
        (FieldType::Number | FieldType::Any, toml::Value::Integer(i)) => Value::Num(*i as f64),
        (FieldType::Number | FieldType::Any, toml::Value::Float(f)) => Value::Num(*f),
        (FieldType::Bool | FieldType::Any, toml::Value::Boolean(b)) => Value::Bool(*b),
        (FieldType::StringList, toml::Value::Array(items)) => Value::List(
            items
                .iter()
                .map(|item| item.as_str().map(CompactString::from).ok_or_else(mismatch))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(mismatch()),
    })
}
