//! Turns byte spans of a TOML document into `file:line:column` and a key path.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A 1-based line and column for a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The dotted key path (`events[2].fields.amount`) of the innermost key or value of
/// `value` whose span holds `offset`, prefixed by `prefix`.
///
/// Table spans cover only their headers, so every entry is searched, not only those
/// whose container's span holds the offset.
pub fn key_path(prefix: &str, value: &Spanned<DeValue<'_>>, offset: usize) -> String {
    match find(value, offset) {
        Some(inner) if prefix.is_empty() => inner,
        Some(inner) if inner.starts_with('[') => format!("{prefix}{inner}"),
        Some(inner) => format!("{prefix}.{inner}"),
        None => prefix.to_owned(),
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn find(value: &Spanned<DeValue<'_>>, offset: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(index, item)| {
            let inner = find(item, offset);
            match inner {
                Some(inner) if inner.starts_with('[') => Some(format!("[{index}]{inner}")),
                Some(inner) => Some(format!("[{index}].{inner}")),
                None if contains(&item.span(), offset) => Some(format!("[{index}]")),
                None => None,
            }
        }),
        _ => None,
    }
}

fn find_in_table(table: &DeTable<'_>, offset: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = key.get_ref();
        if contains(&key.span(), offset) {
            return Some(name.to_string());
        }
        match find(value, offset) {
            Some(inner) if inner.starts_with('[') => Some(format!("{name}{inner}")),
            Some(inner) => Some(format!("{name}.{inner}")),
            None if contains(&value.span(), offset) => Some(name.to_string()),
            None => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
    }

    #[test]
    fn finds_the_innermost_key() {
        let text = "[time]\nallowed_lateness = \"5x\"\n[[events]]\ntype = \"a\"\n[[events]]\ntype = \"b\"\nversion = 1\n";
        let root = DeTable::parse(text).unwrap();
        let value = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
        let at = text.find("5x").unwrap();
        assert_eq!(key_path("", &value, at), "time.allowed_lateness");
        let at = text.find("version").unwrap();
        assert_eq!(key_path("", &value, at), "events[1].version");
    }
}
