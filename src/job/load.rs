//! Reading a job file and the files it `extends`: each file's sections deserialized
//! (every bad key reported, not just the first), then merged base first, later files
//! overriding single fields of table sections and whole lists.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::file::{
    ArchiveSection, CheckpointSection, EventDecl, ExportSection, FeatureDecl, JobSection, KafkaSection,
    LabelDecl, LimitsSection, RedisSection, SinksSection, SkewSection, SourceSection, StateDecl, TimeSection,
};
use super::{JobError, Located, Problems, SourceFile, locate};

/// How deep `extends` chains may go.
const MAX_EXTENDS_DEPTH: usize = 8;

/// The sections of one file, before defaults.
#[derive(Debug, Default)]
pub(super) struct Layer {
    pub(super) job: JobSection,
    pub(super) source: SourceSection,
    pub(super) limits: LimitsSection,
    pub(super) time: TimeSection,
    pub(super) sinks: SinksSection,
    pub(super) checkpoint: CheckpointSection,
    pub(super) events: Option<Vec<EventDecl>>,
    pub(super) state: Option<Vec<StateDecl>>,
    pub(super) features: Option<Vec<FeatureDecl>>,
    pub(super) export: Option<ExportSection>,
    pub(super) labels: Option<Vec<LabelDecl>>,
    pub(super) skew: Option<SkewSection>,
}

/// Every section of a job, merged over its `extends` chain.
pub(super) struct Merged {
    pub(super) job: JobSection,
    pub(super) source: SourceSection,
    pub(super) limits: LimitsSection,
    pub(super) time: TimeSection,
    pub(super) sinks: SinksSection,
    pub(super) checkpoint: CheckpointSection,
    pub(super) events: Option<Located<Vec<EventDecl>>>,
    pub(super) state: Option<Located<Vec<StateDecl>>>,
    pub(super) features: Option<Located<Vec<FeatureDecl>>>,
    pub(super) export: Option<Located<ExportSection>>,
    pub(super) labels: Option<Located<Vec<LabelDecl>>>,
    pub(super) skew: Option<Located<SkewSection>>,
}

/// Loads `path` and the files it extends, base first.
pub(super) fn load_chain(
    path: &Path,
    files: &mut Vec<SourceFile>,
    problems: &mut Problems,
    depth: usize,
) -> Result<Vec<(usize, Layer)>, JobError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
        path: path.to_owned(),
        source,
    })?;
    let index = files.len();
    files.push(SourceFile {
        path: path.to_owned(),
        text,
    });
    let (layer, extends) = parse_layer(&files[index], problems);
    let mut chain = Vec::new();
    if let Some(base) = extends {
        let base_path = path.parent().unwrap_or(Path::new(".")).join(base.get_ref());
        if depth >= MAX_EXTENDS_DEPTH || files.iter().any(|f| f.path == base_path) {
            problems.at(
                &files[index],
                base.span(),
                "extends",
                "`extends` chain is cyclic or deeper than 8 files",
            );
        } else if !base_path.exists() {
            problems.at(
                &files[index],
                base.span(),
                "extends",
                format!("no such job file: {}", base_path.display()),
            );
        } else {
            chain = load_chain(&base_path, files, problems, depth + 1)?;
        }
    }
    chain.push((index, layer));
    Ok(chain)
}

/// Deserializes one section, recording each of its problems against its key.
///
/// Serde stops at a section's first error; to report the next ones too, the entry at
/// fault is dropped and the section read again, until it reads or no entry is at
/// fault. A complaint about a key that was dropped is not reported again.
fn section<'de, T: Deserialize<'de>>(
    file: &SourceFile,
    key: &str,
    mut value: Spanned<DeValue<'de>>,
    problems: &mut Problems,
) -> Option<T> {
    let span = value.span();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let error = match T::deserialize(value.clone().into_deserializer()) {
            Ok(parsed) if dropped.is_empty() => return Some(parsed),
            Ok(_) => return None,
            Err(error) => error,
        };
        let message = error.message().trim().to_owned();
        if dropped
            .iter()
            .any(|k| message.starts_with(&format!("missing field `{k}`")))
        {
            return None;
        }
        let at = error.span().unwrap_or(span.clone());
        problems.at(
            file,
            at.clone(),
            &locate::key_path(key, &value, at.start),
            message,
        );
        match remove_entry_at(&mut value, at.start) {
            Some(removed) if dropped.len() < 64 => dropped.push(removed),
            _ => return None,
        }
    }
}

/// Removes the entry of a table whose key or value holds `offset`; returns its key.
fn remove_entry_at(value: &mut Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    let DeValue::Table(table) = value.get_mut() else {
        return None;
    };
    let holds = |span: Range<usize>| span.start <= offset && offset < span.end.max(span.start + 1);
    let name = table
        .iter()
        .find(|(k, v)| holds(k.span()) || holds(v.span()) || !locate::key_path("", v, offset).is_empty())
        .map(|(k, _)| k.get_ref().to_string())?;
    table.remove(name.as_str());
    Some(name)
}

/// Deserializes an array-of-tables section element by element, so every bad
/// element is reported.
fn list_section<'de, T: Deserialize<'de>>(
    file: &SourceFile,
    key: &str,
    value: Spanned<DeValue<'de>>,
    problems: &mut Problems,
) -> Option<Vec<T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.at(
            file,
            span,
            key,
            format!("expected an array of tables: write `[[{key}]]`"),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (index, item) in items.into_iter().enumerate() {
        match section(file, &format!("{key}[{index}]"), item, problems) {
            Some(parsed) => out.push(parsed),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn parse_layer(file: &SourceFile, problems: &mut Problems) -> (Layer, Option<Spanned<String>>) {
    let (root, errors) = DeTable::parse_recoverable(&file.text);
    if !errors.is_empty() {
        // What follows a syntax error is guesswork: report the syntax errors alone.
        for error in errors {
            let span = error.span().unwrap_or(0..0);
            problems.at(file, span, "", format!("TOML syntax: {}", error.message().trim()));
        }
        problems.syntax = true;
        return (Layer::default(), None);
    }
    let mut layer = Layer::default();
    let mut extends = None;
    for (key, value) in root.into_inner() {
        let name = key.get_ref().to_string();
        match name.as_str() {
            "extends" => extends = section(file, "extends", value, problems),
            "job" => layer.job = section(file, "job", value, problems).unwrap_or_default(),
            "source" => layer.source = section(file, "source", value, problems).unwrap_or_default(),
            "limits" => layer.limits = section(file, "limits", value, problems).unwrap_or_default(),
            "time" => layer.time = section(file, "time", value, problems).unwrap_or_default(),
            "sinks" => layer.sinks = section(file, "sinks", value, problems).unwrap_or_default(),
            "checkpoint" => layer.checkpoint = section(file, "checkpoint", value, problems).unwrap_or_default(),
            "events" => layer.events = list_section(file, "events", value, problems),
            "state" => layer.state = list_section(file, "state", value, problems),
            "features" => layer.features = list_section(file, "features", value, problems),
            "export" => layer.export = Some(section(file, "export", value, problems).unwrap_or_default()),
            "labels" => layer.labels = list_section(file, "labels", value, problems),
            "skew" => layer.skew = Some(section(file, "skew", value, problems).unwrap_or_default()),
            _ => problems.at(
                file,
                key.span(),
                &name,
                "unknown key; expected one of `extends`, `job`, `source`, `limits`, `time`, `sinks`, `checkpoint`, `events`, `state`, `features`, `export`, `labels`, `skew`",
            ),
        }
    }
    (layer, extends)
}

/// Merges layers, base first: later layers override single fields of the table
/// sections and whole lists.
pub(super) fn merge(layers: Vec<(usize, Layer)>) -> Merged {
    let mut merged = Merged {
        job: JobSection::default(),
        source: SourceSection::default(),
        limits: LimitsSection::default(),
        time: TimeSection::default(),
        sinks: SinksSection::default(),
        checkpoint: CheckpointSection::default(),
        events: None,
        state: None,
        features: None,
        export: None,
        labels: None,
        skew: None,
    };
    for (file, layer) in layers {
        let Layer {
            job,
            source,
            limits,
            time,
            sinks,
            checkpoint,
            events,
            state,
            features,
            export,
            labels,
            skew,
        } = layer;
        overlay(&mut merged.job.name, job.name);
        overlay(&mut merged.source.files, source.files);
        merge_kafka(&mut merged.source.kafka, source.kafka);
        overlay(&mut merged.limits.max_event_bytes, limits.max_event_bytes);
        overlay(&mut merged.limits.max_retries, limits.max_retries);
        overlay(&mut merged.time.allowed_lateness, time.allowed_lateness);
        overlay(&mut merged.time.late_policy, time.late_policy);
        overlay(&mut merged.time.dedup_horizon, time.dedup_horizon);
        overlay(&mut merged.time.idle_timeout, time.idle_timeout);
        overlay(&mut merged.time.max_partition_skew, time.max_partition_skew);
        overlay(&mut merged.sinks.views_sqlite, sinks.views_sqlite);
        overlay(&mut merged.sinks.views_jsonl, sinks.views_jsonl);
        overlay(&mut merged.sinks.dlq, sinks.dlq);
        overlay(&mut merged.sinks.summary, sinks.summary);
        overlay(&mut merged.sinks.flush_interval, sinks.flush_interval);
        overlay(&mut merged.sinks.online, sinks.online);
        overlay(&mut merged.sinks.dlq_topic, sinks.dlq_topic);
        merge_redis(&mut merged.sinks.redis, sinks.redis);
        merge_archive(&mut merged.sinks.archive, sinks.archive);
        overlay(&mut merged.checkpoint.dir, checkpoint.dir);
        overlay(&mut merged.checkpoint.interval, checkpoint.interval);
        overlay(&mut merged.checkpoint.keep, checkpoint.keep);
        if let Some(value) = events {
            merged.events = Some(Located { file, value });
        }
        if let Some(value) = state {
            merged.state = Some(Located { file, value });
        }
        if let Some(value) = features {
            merged.features = Some(Located { file, value });
        }
        if let Some(value) = export {
            merged.export = Some(Located { file, value });
        }
        if let Some(value) = labels {
            merged.labels = Some(Located { file, value });
        }
        if let Some(value) = skew {
            merged.skew = Some(Located { file, value });
        }
    }
    merged
}

fn overlay<T>(base: &mut Option<T>, over: Option<T>) {
    if over.is_some() {
        *base = over;
    }
}

/// Overlays a nested section field by field.
macro_rules! merge_section {
    ($name:ident, $section:ty, [$($field:ident),*]) => {
        fn $name(base: &mut Option<$section>, over: Option<$section>) {
            let Some(over) = over else { return };
            let base = base.get_or_insert_with(Default::default);
            $(overlay(&mut base.$field, over.$field);)*
        }
    };
}
merge_section!(
    merge_kafka,
    KafkaSection,
    [
        brokers,
        topics,
        group,
        start,
        options,
        lag_tolerance,
        commit_interval
    ]
);
merge_section!(merge_redis, RedisSection, [url, key_prefix, ttl]);
merge_section!(
    merge_archive,
    ArchiveSection,
    [dir, roll_bytes, roll_interval, compression]
);
