//! Compiles `[[state]]` and `[[features]]` into the model's [`FeatureSpec`], resolving
//! each field through the schema registry (which then carries it on events), with
//! every problem reported by file, line and key.

use std::collections::BTreeSet;

use crate::job::file::{FeatureDecl, StateDecl};
use crate::job::{Located, Problems, SourceFile};
use crate::model::features::{AggKind, FeatureFn, FeatureOut, FeatureSpec, StateKind, StateSpec, Update};
use crate::model::schema::{FieldType, Registry};

/// Compiles `[[state]]` and `[[features]]`, resolving fields through `registry`
/// (which then carries them on events). Reports problems; returns `None` when
/// the spec cannot be built.
pub fn features(
    registry: &mut Registry,
    states: &Located<Vec<StateDecl>>,
    features: &Located<Vec<FeatureDecl>>,
    files: &[SourceFile],
    problems: &mut Problems,
) -> Option<FeatureSpec> {
    let file = &files[states.file];
    let mut spec = FeatureSpec {
        states: Vec::new(),
        features: Vec::new(),
        per_type: vec![Vec::new(); registry.types().len()],
    };
    let mut names = BTreeSet::new();
    for (index, decl) in states.value.iter().enumerate() {
        let key = format!("state[{index}]");
        if decl.name.get_ref().is_empty() || !names.insert(decl.name.get_ref().clone()) {
            problems.at(
                file,
                decl.name.span(),
                &format!("{key}.name"),
                "state names must be non-empty and unique",
            );
        }
        let kind = compile_state(registry, &mut spec, decl, &key, file, problems);
        spec.states.push(StateSpec {
            name: decl.name.get_ref().clone(),
            kind,
        });
    }
    let file = &files[features.file];
    let mut names = BTreeSet::new();
    for (index, decl) in features.value.iter().enumerate() {
        let key = format!("features[{index}]");
        if decl.name.get_ref().is_empty() || !names.insert(decl.name.get_ref().clone()) {
            problems.at(
                file,
                decl.name.span(),
                &format!("{key}.name"),
                "feature names must be non-empty and unique",
            );
        }
        let Some(state) = spec.states.iter().position(|s| s.name == *decl.of.get_ref()) else {
            problems.at(
                file,
                decl.of.span(),
                &format!("{key}.of"),
                format!("no state is named `{}`", decl.of.get_ref()),
            );
            continue;
        };
        let kind = spec.states[state].kind;
        let fits = match decl.func {
            FeatureFn::Count => !matches!(kind, StateKind::Sum | StateKind::Latest),
            FeatureFn::Value => matches!(kind, StateKind::Sum | StateKind::Count | StateKind::Latest),
            FeatureFn::TopK => kind == StateKind::Decayed,
            FeatureFn::Present => kind != StateKind::Sum,
        };
        if !fits {
            problems.at(
                file,
                decl.of.span(),
                &format!("{key}.fn"),
                format!(
                    "fn `{}` does not apply to state `{}` ({})",
                    fn_name(decl.func),
                    decl.of.get_ref(),
                    kind_name(kind)
                ),
            );
        }
        let k = match (decl.func, &decl.k) {
            (FeatureFn::TopK, Some(k)) if *k.get_ref() > 0 => *k.get_ref(),
            (FeatureFn::TopK, _) => {
                problems.at(
                    file,
                    decl.name.span(),
                    &format!("{key}.k"),
                    "`top_k` needs `k` of at least 1",
                );
                0
            }
            (_, Some(k)) => {
                problems.at(file, k.span(), &format!("{key}.k"), "`k` applies to `top_k` only");
                0
            }
            (_, None) => 0,
        };
        spec.features.push(FeatureOut {
            name: decl.name.get_ref().clone(),
            func: decl.func,
            state,
            k,
        });
    }
    Some(spec)
}

fn compile_state(
    registry: &mut Registry,
    spec: &mut FeatureSpec,
    decl: &StateDecl,
    key: &str,
    file: &SourceFile,
    problems: &mut Problems,
) -> StateKind {
    let state = spec.states.len();
    let mut refuse = |span: std::ops::Range<usize>, sub: &str, message: String| {
        problems.at(file, span, &format!("{key}.{sub}"), message)
    };
    let agg = decl.agg.name();
    if let Some(k) = decl.k.as_ref().filter(|_| decl.agg != AggKind::LastK) {
        refuse(k.span(), "k", format!("`k` does not apply to agg `{agg}`"));
    }
    if decl.agg == AggKind::DecayedScore {
        if let Some(on) = decl.on.as_ref().and_then(|on| on.first()) {
            refuse(
                on.span(),
                "on",
                "`decayed_score` reads the types named in `weights`; remove `on`".into(),
            );
        }
        if let Some(field) = &decl.field {
            refuse(
                field.span(),
                "field",
                "`decayed_score` groups by `group_by`; remove `field`".into(),
            );
        }
        let Some(group) = &decl.group_by else {
            refuse(
                decl.name.span(),
                "group_by",
                "`decayed_score` needs `group_by`".into(),
            );
            return StateKind::Decayed;
        };
        let weights = decl.weights.as_ref().filter(|w| !w.is_empty());
        let Some(weights) = weights else {
            refuse(
                decl.name.span(),
                "weights",
                "`decayed_score` needs `weights` for at least one event type".into(),
            );
            return StateKind::Decayed;
        };
        for (event_type, weight) in weights {
            let sub = format!("weights.\"{}\"", event_type.get_ref());
            let Some(type_index) = registry.type_index(event_type.get_ref()) else {
                refuse(
                    event_type.span(),
                    &sub,
                    format!("no `[[events]]` schema declares type `{}`", event_type.get_ref()),
                );
                continue;
            };
            // Scores decay (0 < decay <= 1) and stay finite: a decay above 1 grows
            // without bound, one of 0 or below is not a decay at all.
            if !(weight.decay > 0.0 && weight.decay <= 1.0) {
                refuse(
                    event_type.span(),
                    &sub,
                    format!("`decay` must be above 0 and at most 1, not {}", weight.decay),
                );
            }
            if !weight.increment.is_finite() {
                refuse(
                    event_type.span(),
                    &sub,
                    format!("`increment` must be a finite number, not {}", weight.increment),
                );
            }
            match registry.carry(type_index, group.get_ref()) {
                Ok((field, FieldType::String)) => spec.per_type[type_index as usize].push(Update {
                    state,
                    field: Some(field),
                    weight: (weight.decay, weight.increment),
                }),
                Ok((_, other)) => refuse(
                    group.span(),
                    "group_by",
                    format!(
                        "groups must be strings; `{}` is a {}",
                        group.get_ref(),
                        other.name()
                    ),
                ),
                Err(message) => refuse(group.span(), "group_by", message),
            }
        }
        return StateKind::Decayed;
    }
    if let Some((first, _)) = decl.weights.as_ref().and_then(|w| w.iter().next()) {
        refuse(
            first.span(),
            "weights",
            format!("`weights` apply to `decayed_score` only, not `{agg}`"),
        );
    }
    if let Some(group) = &decl.group_by {
        refuse(
            group.span(),
            "group_by",
            format!("`group_by` applies to `decayed_score` only, not `{agg}`"),
        );
    }
    let kind = match decl.agg {
        AggKind::Distinct => StateKind::Distinct,
        AggKind::LastK => match &decl.k {
            Some(k) if *k.get_ref() > 0 => StateKind::LastK(*k.get_ref()),
            _ => {
                refuse(decl.name.span(), "k", "`last_k` needs `k` of at least 1".into());
                StateKind::LastK(1)
            }
        },
        AggKind::Sum => StateKind::Sum,
        AggKind::Count => StateKind::Count,
        AggKind::Latest => StateKind::Latest,
        AggKind::DecayedScore => unreachable!("handled above"),
    };
    let on = decl.on.as_deref().unwrap_or_default();
    if on.is_empty() {
        refuse(
            decl.name.span(),
            "on",
            format!("agg `{agg}` needs `on`, the event types it reads"),
        );
    }
    let wants: &[FieldType] = match kind {
        StateKind::Distinct | StateKind::LastK(_) => &[FieldType::String],
        StateKind::Sum => &[FieldType::Number],
        StateKind::Count => &[],
        StateKind::Latest => &[FieldType::String, FieldType::Number, FieldType::Bool],
        StateKind::Decayed => unreachable!("handled above"),
    };
    let field = match (&decl.field, kind) {
        (Some(field), StateKind::Count) => {
            refuse(
                field.span(),
                "field",
                "`count` counts events; remove `field`".into(),
            );
            None
        }
        (None, StateKind::Count) => None,
        (None, _) => {
            refuse(decl.name.span(), "field", format!("agg `{agg}` needs `field`"));
            None
        }
        (Some(field), _) => Some(field),
    };
    for (position, event_type) in on.iter().enumerate() {
        let Some(type_index) = registry.type_index(event_type.get_ref()) else {
            refuse(
                event_type.span(),
                &format!("on[{position}]"),
                format!("no `[[events]]` schema declares type `{}`", event_type.get_ref()),
            );
            continue;
        };
        let resolved = match field {
            None => None,
            Some(field) => match registry.carry(type_index, field.get_ref()) {
                Ok((reference, ty)) if wants.contains(&ty) => Some(reference),
                Ok((_, ty)) => {
                    refuse(
                        field.span(),
                        "field",
                        format!(
                            "agg `{agg}` cannot read `{}`, a {} field",
                            field.get_ref(),
                            ty.name()
                        ),
                    );
                    None
                }
                Err(message) => {
                    refuse(field.span(), "field", message);
                    None
                }
            },
        };
        spec.per_type[type_index as usize].push(Update {
            state,
            field: resolved,
            weight: (1.0, 0.0),
        });
    }
    kind
}

fn kind_name(kind: StateKind) -> &'static str {
    match kind {
        StateKind::Distinct => "distinct",
        StateKind::LastK(_) => "last_k",
        StateKind::Sum => "sum",
        StateKind::Count => "count",
        StateKind::Latest => "latest",
        StateKind::Decayed => "decayed_score",
    }
}

fn fn_name(func: FeatureFn) -> &'static str {
    match func {
        FeatureFn::Count => "count",
        FeatureFn::Value => "value",
        FeatureFn::TopK => "top_k",
        FeatureFn::Present => "present",
    }
}
