//! Two sets of views compared as differential collections keyed by user.
//!
//! Each side becomes a collection of `(user, hash of the user's features)`.
//! `a.negate().concat(b).consolidate()` leaves exactly the users the sides disagree
//! on (or that only one side has); those keys, joined back to both sides, pair the
//! users both have, and the users of each side, negated and concatenated the same
//! way, show the users only one has. What is equal cancels out and never leaves the
//! dataflow, so only the users that differ are read again, feature by feature.

use std::cell::RefCell;
use std::rc::Rc;

use compact_str::CompactString;
use differential_dataflow::AsCollection;
use differential_dataflow::input::Input;
use hashbrown::HashMap;
use serde_json::{Map, Value};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::vec::Map as _;

/// One side's views: `(user_id, features object as JSON text)`.
pub type Views = Vec<(CompactString, String)>;

/// A feature that differs for one user, with both values.
#[derive(Debug, Clone, PartialEq)]
pub struct Differing {
    /// The user.
    pub user_id: CompactString,
    /// The first side's value.
    pub a: Value,
    /// The second side's value.
    pub b: Value,
}

/// What the comparison found.
#[derive(Debug, Default)]
pub struct Compared {
    /// Features of the first side, in its order.
    pub features_a: Vec<String>,
    /// Features of the second side, in its order.
    pub features_b: Vec<String>,
    /// Users of each side.
    pub users: (usize, usize),
    /// Users only the first side has, sorted.
    pub only_a: Vec<CompactString>,
    /// Users only the second side has, sorted.
    pub only_b: Vec<CompactString>,
    /// Per feature both sides have: the users whose values differ, sorted by user.
    pub differing: Vec<(String, Vec<Differing>)>,
    /// Users whose features could not be read as a JSON object, per side.
    pub unreadable: (Vec<CompactString>, Vec<CompactString>),
}

/// One side's entries, `(user, hash of its features text)`, and each user's text;
/// users are numbered across both sides by `users` and `ids`.
fn number<'v>(
    views: &'v Views,
    users: &mut HashMap<&'v str, u32>,
    ids: &mut Vec<CompactString>,
) -> (Vec<(u32, u64)>, HashMap<u32, &'v str>) {
    let mut entries = Vec::with_capacity(views.len());
    let mut texts = HashMap::with_capacity(views.len());
    for (user_id, text) in views {
        let user = *users.entry(user_id.as_str()).or_insert_with(|| {
            ids.push(user_id.clone());
            (ids.len() - 1) as u32
        });
        entries.push((user, xxhash_rust::xxh3::xxh3_64(text.as_bytes())));
        texts.insert(user, text.as_str());
    }
    (entries, texts)
}

fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The feature names of a side's first readable view (every view of a job has them all).
fn names(views: &Views) -> Vec<String> {
    views
        .iter()
        .find_map(|(_, text)| object(text))
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Compares two sides' views feature by feature.
pub fn compare(a: &Views, b: &Views) -> Compared {
    let mut users: HashMap<&str, u32> = HashMap::new();
    let mut ids: Vec<CompactString> = Vec::new();
    let (entries_a, texts_a) = number(a, &mut users, &mut ids);
    let (entries_b, texts_b) = number(b, &mut users, &mut ids);
    let (features_a, features_b) = (names(a), names(b));
    let (users_a, users_b) = (texts_a.len(), texts_b.len());
    let (pairs, only) = differences(entries_a, entries_b);

    let common: Vec<&String> = features_a.iter().filter(|f| features_b.contains(f)).collect();
    let mut differing: Vec<Vec<Differing>> = vec![Vec::new(); common.len()];
    let mut unreadable = (Vec::new(), Vec::new());
    for user in pairs {
        let id = &ids[user as usize];
        let (Some(x), Some(y)) = (object(texts_a[&user]), object(texts_b[&user])) else {
            for (texts, list) in [(&texts_a, &mut unreadable.0), (&texts_b, &mut unreadable.1)] {
                if object(texts[&user]).is_none() {
                    list.push(id.clone());
                }
            }
            continue;
        };
        for (i, name) in common.iter().enumerate() {
            let (va, vb) = (x.get(*name), y.get(*name));
            if va != vb {
                differing[i].push(Differing {
                    user_id: id.clone(),
                    a: va.cloned().unwrap_or(Value::Null),
                    b: vb.cloned().unwrap_or(Value::Null),
                });
            }
        }
    }
    let mut only_a = Vec::new();
    let mut only_b = Vec::new();
    for (user, diff) in only {
        let id = ids[user as usize].clone();
        if diff > 0 {
            only_a.push(id)
        } else {
            only_b.push(id)
        }
    }
    only_a.sort();
    only_b.sort();
    Compared {
        users: (users_a, users_b),
        differing: common
            .iter()
            .zip(differing)
            .map(|(name, mut users)| {
                users.sort_by(|x, y| x.user_id.cmp(&y.user_id));
                ((*name).clone(), users)
            })
            .collect(),
        features_a,
        features_b,
        only_a,
        only_b,
        unreadable,
    }
}

/// The dataflow: the users whose features differ while both sides have them, and
/// the users only one side has (`+1`: the first, `-1`: the second).
fn differences(a: Vec<(u32, u64)>, b: Vec<(u32, u64)>) -> (Vec<u32>, Vec<(u32, isize)>) {
    timely::execute_directly(move |worker| {
        let pairs: Rc<RefCell<Vec<u32>>> = Rc::default();
        let only: Rc<RefCell<Vec<(u32, isize)>>> = Rc::default();
        let probe = ProbeHandle::new();
        let (mut input_a, mut input_b) = worker.dataflow::<u32, _, _>(|scope| {
            let (input_a, a) = scope.new_collection::<(u32, u64), isize>();
            let (input_b, b) = scope.new_collection::<(u32, u64), isize>();
            // What is equal cancels; what is left is in exactly one side.
            let differ = a.clone().negate().concat(b.clone()).consolidate();
            // A user that differs has its first value at -1 and its second at +1:
            // each counts once, or they would cancel.
            let users = differ
                .inner
                .map(|((user, _hash), time, _diff)| (user, time, 1isize))
                .as_collection()
                .distinct();
            let found = Rc::clone(&pairs);
            a.clone()
                .semijoin(users.clone())
                .join(b.clone().semijoin(users))
                .inspect(move |((user, _hashes), _time, diff)| {
                    if *diff > 0 {
                        found.borrow_mut().push(*user);
                    }
                })
                .inner
                .probe_with(&probe);
            let users_a = a.map(|(user, _hash)| user).distinct();
            let users_b = b.map(|(user, _hash)| user).distinct();
            let lonely = Rc::clone(&only);
            users_a
                .concat(users_b.negate())
                .consolidate()
                .inspect(move |(user, _time, diff)| lonely.borrow_mut().push((*user, *diff)))
                .inner
                .probe_with(&probe);
            (input_a, input_b)
        });
        for entry in a {
            input_a.insert(entry);
        }
        for entry in b {
            input_b.insert(entry);
        }
        input_a.advance_to(1);
        input_b.advance_to(1);
        input_a.flush();
        input_b.flush();
        worker.step_while(|| probe.less_than(&1));
        let pairs = pairs.borrow().clone();
        let only = only.borrow().clone();
        (pairs, only)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(list: &[(&str, &str)]) -> Views {
        list.iter()
            .map(|(u, f)| (CompactString::from(*u), f.to_string()))
            .collect()
    }

    #[test]
    fn only_what_differs_is_reported() {
        let a = views(&[
            ("u1", r#"{"n":1,"top":[["x",0.3]],"gone":1}"#),
            ("u2", r#"{"n":2,"top":[],"gone":1}"#),
            ("u3", r#"{"n":3,"top":[],"gone":1}"#),
        ]);
        let b = views(&[
            ("u1", r#"{"n":1,"top":[["x",0.4]],"new":true}"#),
            ("u2", r#"{"n":5,"top":[],"new":true}"#),
            ("u4", r#"{"n":4,"top":[],"new":true}"#),
            ("u5", "not json"),
        ]);
        let compared = compare(&a, &b);
        // Features in the order the views' objects hold them (by name).
        assert_eq!(compared.features_a, ["gone", "n", "top"]);
        assert_eq!(compared.features_b, ["n", "new", "top"]);
        assert_eq!(compared.only_a, ["u3"]);
        assert_eq!(compared.only_b, ["u4", "u5"]);
        let by_feature: Vec<(&str, Vec<&str>)> = compared
            .differing
            .iter()
            .map(|(f, users)| (f.as_str(), users.iter().map(|d| d.user_id.as_str()).collect()))
            .collect();
        assert_eq!(by_feature, [("n", vec!["u2"]), ("top", vec!["u1"])]);
        assert_eq!(compared.differing[0].1[0].a, serde_json::json!(2));
        assert_eq!(compared.differing[0].1[0].b, serde_json::json!(5));
        let same = compare(&a, &a);
        assert!(same.differing.iter().all(|(_, users)| users.is_empty()));
        assert!(same.only_a.is_empty() && same.only_b.is_empty());
    }
}
