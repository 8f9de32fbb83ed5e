//! Compiles `[export]`, `[[labels]]` and `[skew]` into the model's
//! [`ExportSpec`]: the spine, its carried, exploded and snapshot fields, each label's
//! outcome fields (carried on the outcome events), and the skew thresholds, with
//! every problem reported by file, line and key.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use crate::job::defaults;
use crate::job::file::{ExportFormat, ExportSection, LabelDecl, SkewSection};
use crate::job::{Located, Problems, SourceFile};
use crate::model::features::{FeatureFn, FeatureSpec, StateKind};
use crate::model::schema::{FieldRef, FieldType, Registry};
use crate::model::training::{
    CarriedField, ExportFormats, ExportSpec, FeatureKind, LabelFn, LabelSpec, OutcomeFields, SkewSpec,
};

/// The default spine event type.
pub const DEFAULT_SPINE: &str = "recommendation.items_shown";
/// The default row id field.
pub const DEFAULT_ROW_ID: &str = "impression_id";
/// The default served-features field.
pub const DEFAULT_SNAPSHOT: &str = "features_snapshot";

/// The sections the export compiles from.
pub struct ExportDecls<'a> {
    /// `[export]`.
    pub export: &'a Located<ExportSection>,
    /// `[[labels]]`.
    pub labels: Option<&'a Located<Vec<LabelDecl>>>,
    /// `[skew]`.
    pub skew: Option<&'a Located<SkewSection>>,
}

/// Compiles the export, resolving its fields through `registry` (which then
/// carries them on events). Returns `None` after reporting a problem.
pub fn export(
    job_name: &str,
    registry: &mut Registry,
    features: &FeatureSpec,
    decls: ExportDecls<'_>,
    files: &[SourceFile],
    problems: &mut Problems,
) -> Option<ExportSpec> {
    let before = problems.list.len();
    let file = &files[decls.export.file];
    let section = &decls.export.value;
    // Problems of `[export]` itself, reported once its fields are resolved.
    let errors = std::cell::RefCell::new(Vec::new());
    let refuse = |span: Range<usize>, key: &str, message: String| {
        errors.borrow_mut().push((span, format!("export.{key}"), message));
    };
    let spine_name = section
        .spine
        .as_ref()
        .map_or(DEFAULT_SPINE, |s| s.get_ref().as_str())
        .to_owned();
    let spine_span = section.spine.as_ref().map_or(0..0, Spanned::span);
    let Some(spine) = registry.type_index(&spine_name) else {
        refuse(
            spine_span,
            "spine",
            format!("no `[[events]]` schema declares the spine type `{spine_name}`"),
        );
        report(file, errors.into_inner(), problems);
        return None;
    };
    // Resolves a spine field of one of `types`; reports and returns None otherwise.
    let field = |registry: &mut Registry,
                 name: &str,
                 span: Range<usize>,
                 key: &str,
                 types: &[FieldType]|
     -> Option<(FieldRef, FieldType)> {
        match registry.carry(spine, name) {
            Ok((r, ty)) if types.contains(&ty) => Some((r, ty)),
            Ok((_, ty)) => {
                let wanted: Vec<_> = types.iter().map(|t| t.name()).collect();
                refuse(
                    span,
                    key,
                    format!(
                        "`{name}` is a {}; it must be a {}",
                        ty.name(),
                        wanted.join(" or ")
                    ),
                );
                None
            }
            Err(message) => {
                refuse(span, key, message);
                None
            }
        }
    };
    let row_id = match &section.row_id {
        Some(name) => field(
            registry,
            name.get_ref(),
            name.span(),
            "row_id",
            &[FieldType::String],
        ),
        None => field(
            registry,
            DEFAULT_ROW_ID,
            spine_span.clone(),
            "row_id",
            &[FieldType::String],
        ),
    };
    let explode = section.explode.as_ref().and_then(|name| {
        field(
            registry,
            name.get_ref(),
            name.span(),
            "explode",
            &[FieldType::StringList],
        )
        .map(|f| f.0)
    });
    let scalars = [FieldType::String, FieldType::Number, FieldType::Bool];
    let mut carry = Vec::new();
    for (index, name) in section.carry.iter().flatten().enumerate() {
        let key = format!("carry[{index}]");
        if carry.iter().any(|c: &CarriedField| c.name == *name.get_ref()) {
            refuse(
                name.span(),
                &key,
                format!("`{}` is carried twice", name.get_ref()),
            );
            continue;
        }
        if let Some((r, ty)) = field(registry, name.get_ref(), name.span(), &key, &scalars) {
            carry.push(CarriedField {
                name: name.get_ref().clone(),
                field: r,
                ty,
            });
        }
    }
    let has_default_snapshot = registry.types()[spine as usize]
        .canonical
        .get(DEFAULT_SNAPSHOT)
        .is_some_and(|t| *t == FieldType::Object);
    let snapshot = match &section.snapshot {
        Some(name) if name.get_ref().is_empty() => None,
        Some(name) => field(
            registry,
            name.get_ref(),
            name.span(),
            "snapshot",
            &[FieldType::Object],
        )
        .map(|f| f.0),
        None if has_default_snapshot => registry.carry(spine, DEFAULT_SNAPSHOT).ok().map(|f| f.0),
        None => None,
    };
    let dir = match &section.dir {
        Some(dir) => PathBuf::from(dir),
        None => defaults::output_path(job_name, "training"),
    };
    let formats: Vec<ExportFormat> = section
        .formats
        .as_ref()
        .map_or_else(|| vec![ExportFormat::Parquet], |f| f.get_ref().clone());
    if formats.is_empty() {
        let span = section.formats.as_ref().map_or(0..0, Spanned::span);
        refuse(span, "formats", "name at least one of `parquet`, `jsonl`".into());
    }
    report(file, errors.into_inner(), problems);
    let formats = ExportFormats {
        parquet: formats.contains(&ExportFormat::Parquet),
        jsonl: formats
            .contains(&ExportFormat::Jsonl)
            .then(|| match &section.jsonl {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => crate::sinks::with_suffix(&dir, ".jsonl"),
            }),
    };
    let labels = decls
        .labels
        .map(|labels| compile_labels(registry, labels, files, problems))
        .unwrap_or_default();
    let outcome_types = (0..registry.types().len())
        .map(|t| labels.iter().any(|l| l.per_type[t].is_some()))
        .collect();
    let max_window = labels.iter().map(|l| l.window).fold(0.0, f64::max);
    let by = carry.iter().position(|c| c.name == "model_version");
    let skew = decls
        .skew
        .map(|skew| compile_skew(job_name, features, skew, files, problems))
        .unwrap_or_else(|| SkewSpec {
            report: Some(defaults::output_path(job_name, "skew.json")),
            html: Some(defaults::output_path(job_name, "skew.html")),
            ..SkewSpec::default()
        });
    let (Some((row_id, _)), true) = (row_id, problems.list.len() == before) else {
        return None;
    };
    Some(ExportSpec {
        spine,
        spine_name,
        row_id,
        explode,
        carry,
        snapshot,
        dir,
        formats,
        complete_only: section.complete_only.unwrap_or(false),
        roll_bytes: section.roll_bytes.unwrap_or(defaults::DEFAULT_EXPORT_ROLL_BYTES),
        roll_interval: section
            .roll_interval
            .unwrap_or(defaults::DEFAULT_EXPORT_ROLL_INTERVAL)
            .duration(),
        labels,
        max_window,
        outcome_types,
        skew: SkewSpec { by, ..skew },
        feature_kinds: feature_kinds(registry, features),
    })
}

/// Each feature's column type: what its function gives, and for the latest value
/// the type of the fields it reads.
fn feature_kinds(registry: &Registry, spec: &FeatureSpec) -> Vec<FeatureKind> {
    spec.features
        .iter()
        .map(|feature| match (feature.func, spec.states[feature.state].kind) {
            (FeatureFn::Count, _) | (FeatureFn::Value, StateKind::Count) => FeatureKind::Int64,
            (FeatureFn::Present, _) => FeatureKind::Bool,
            (FeatureFn::TopK, _) => FeatureKind::TopK,
            (FeatureFn::Value, StateKind::Latest) => {
                let mut types = BTreeSet::new();
                for (t, updates) in spec.per_type.iter().enumerate() {
                    for update in updates.iter().filter(|u| u.state == feature.state) {
                        types.insert(match update.field {
                            Some(FieldRef::Slot(slot)) => {
                                let ty = &registry.types()[t];
                                ty.canonical[&ty.carried[slot]].name()
                            }
                            _ => FieldType::Number.name(),
                        });
                    }
                }
                match types.into_iter().collect::<Vec<_>>().as_slice() {
                    ["number"] => FeatureKind::Float64,
                    ["string"] => FeatureKind::Utf8,
                    ["bool"] => FeatureKind::Bool,
                    _ => FeatureKind::Json,
                }
            }
            (FeatureFn::Value, _) => FeatureKind::Float64,
        })
        .collect()
}

fn report(file: &SourceFile, errors: Vec<(Range<usize>, String, String)>, problems: &mut Problems) {
    for (span, key, message) in errors {
        problems.at(file, span, &key, message);
    }
}

fn compile_labels(
    registry: &mut Registry,
    labels: &Located<Vec<LabelDecl>>,
    files: &[SourceFile],
    problems: &mut Problems,
) -> Vec<LabelSpec> {
    let file = &files[labels.file];
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (index, decl) in labels.value.iter().enumerate() {
        let key = format!("labels[{index}]");
        let mut refuse = |span: Range<usize>, sub: &str, message: String| {
            problems.at(file, span, &format!("{key}.{sub}"), message)
        };
        let name = decl.name.get_ref();
        let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name || !names.insert(name.clone()) {
            refuse(
                decl.name.span(),
                "name",
                "label names must be unique, non-empty, and made of letters, digits and `_`".into(),
            );
        }
        let window = decl.window.get_ref().as_secs_f64();
        if window <= 0.0 {
            refuse(
                decl.window.span(),
                "window",
                "the window must be longer than 0 s".into(),
            );
        }
        match (decl.func, &decl.field) {
            (LabelFn::Sum, None) => refuse(decl.name.span(), "field", "`sum` needs `field`".into()),
            (LabelFn::Sum, Some(_)) | (_, None) => {}
            (other, Some(field)) => refuse(
                field.span(),
                "field",
                format!("`field` applies to `sum` only, not `{}`", other.name()),
            ),
        }
        if decl.on.get_ref().is_empty() {
            refuse(
                decl.on.span(),
                "on",
                "name at least one outcome event type".into(),
            );
        }
        let mut per_type = vec![None; registry.types().len()];
        for (i, event_type) in decl.on.get_ref().iter().enumerate() {
            let sub = format!("on[{i}]");
            let Some(t) = registry.type_index(event_type.get_ref()) else {
                refuse(
                    event_type.span(),
                    &sub,
                    format!("no `[[events]]` schema declares type `{}`", event_type.get_ref()),
                );
                continue;
            };
            let mut resolve = |field: &Option<Spanned<String>>, sub: &str, wanted: FieldType| {
                let field = field.as_ref()?;
                match registry.carry(t, field.get_ref()) {
                    Ok((r, ty)) if ty == wanted => Some(r),
                    Ok((_, ty)) => {
                        refuse(
                            field.span(),
                            sub,
                            format!(
                                "`{}` of `{}` is a {}; it must be a {}",
                                field.get_ref(),
                                event_type.get_ref(),
                                ty.name(),
                                wanted.name()
                            ),
                        );
                        None
                    }
                    Err(message) => {
                        refuse(field.span(), sub, message);
                        None
                    }
                }
            };
            per_type[t as usize] = Some(OutcomeFields {
                matches: resolve(&decl.matches, "match", FieldType::String),
                sum: resolve(&decl.field, "field", FieldType::Number).filter(|_| decl.func == LabelFn::Sum),
            });
        }
        out.push(LabelSpec {
            name: name.clone(),
            window,
            func: decl.func,
            per_item: decl.matches.is_some(),
            per_type,
        });
    }
    out
}

fn compile_skew(
    job_name: &str,
    features: &FeatureSpec,
    skew: &Located<SkewSection>,
    files: &[SourceFile],
    problems: &mut Problems,
) -> SkewSpec {
    let file = &files[skew.file];
    let section = &skew.value;
    let rate = |value: &Spanned<f64>, key: &str, problems: &mut Problems| {
        let rate = *value.get_ref();
        if !(0.0..=1.0).contains(&rate) {
            problems.at(
                file,
                value.span(),
                key,
                format!("a mismatch rate is between 0 and 1, not {rate}"),
            );
        }
        rate
    };
    let max_mismatch_rate = section
        .max_mismatch_rate
        .as_ref()
        .map(|r| rate(r, "skew.max_mismatch_rate", problems));
    let mut per_feature = Vec::new();
    for (name, value) in section.per_feature.iter().flatten() {
        let key = format!("skew.per_feature.{}", name.get_ref());
        if !features.features.iter().any(|f| f.name == *name.get_ref()) {
            let known: Vec<_> = features.features.iter().map(|f| f.name.as_str()).collect();
            problems.at(
                file,
                name.span(),
                &key,
                format!(
                    "no feature is named `{}` (features: {})",
                    name.get_ref(),
                    known.join(", ")
                ),
            );
        }
        per_feature.push((name.get_ref().clone(), rate(value, &key, problems)));
    }
    let path = |set: &Option<String>, default: &str| match set {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(defaults::output_path(job_name, default)),
    };
    SkewSpec {
        max_mismatch_rate,
        per_feature,
        report: path(&section.report, "skew.json"),
        html: path(&section.html, "skew.html"),
        by: None,
    }
}
