//! Compiles the `[[events]]` sections into the model's schema [`Registry`]: each
//! type's versions, payload fields, renames (upcasts) and defaults, with every problem
//! reported by file, line and key.

use std::collections::BTreeMap;

use compact_str::CompactString;

use crate::job::file::EventDecl;
use crate::job::{Located, Problems, SourceFile};
use crate::model::event::Value;
use crate::model::schema::{EVENT_TIME, EventType, FieldType, PayloadField, Registry, VersionSchema};

/// Compiles the `[[events]]` sections, reporting problems.
pub fn registry(events: &Located<Vec<EventDecl>>, files: &[SourceFile], problems: &mut Problems) -> Registry {
    let file = &files[events.file];
    let mut types: Vec<EventType> = Vec::new();
    for (index, decl) in events.value.iter().enumerate() {
        let key = format!("events[{index}]");
        let type_index = match types.iter().position(|t| &t.name == decl.event_type.get_ref()) {
            Some(i) => i,
            None => {
                if decl.event_type.get_ref().is_empty() {
                    problems.at(
                        file,
                        decl.event_type.span(),
                        &format!("{key}.type"),
                        "event type must not be empty",
                    );
                }
                types.push(EventType {
                    name: decl.event_type.get_ref().clone(),
                    versions: Vec::new(),
                    canonical: BTreeMap::new(),
                    carried: Vec::new(),
                });
                types.len() - 1
            }
        };
        let ty = &mut types[type_index];
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
    Registry::from_types(types)
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
