//! Two sets of views compared as differential collections keyed by user.
//!
//! Each side becomes a collection of `((user, feature), value)`, the value as a
//! 64-bit hash of its canonical JSON. `a.negate().concat(b).consolidate()` leaves
//! exactly the entries the sides disagree on; their keys, joined back to both sides,
//! pair the two values of every feature that differs, and the users of each side,
//! negated and concatenated the same way, show the users only one side has. What is
//! equal cancels out and never leaves the dataflow, so only the differences are
//! looked at again (with their values, for the report).

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

type Key = (u32, u16);

/// One side, numbered: its entries, and each user's features by user number.
struct Side {
    entries: Vec<(Key, u64)>,
    objects: HashMap<u32, Map<String, Value>>,
    features: Vec<String>,
    unreadable: Vec<CompactString>,
}

/// Numbers users and features across both sides.
#[derive(Default)]
struct Numbering {
    users: HashMap<CompactString, u32>,
    ids: Vec<CompactString>,
    features: HashMap<String, u16>,
    names: Vec<String>,
}

impl Numbering {
    fn side(&mut self, views: &Views) -> Side {
        let mut side = Side {
            entries: Vec::new(),
            objects: HashMap::new(),
            features: Vec::new(),
            unreadable: Vec::new(),
        };
        for (user_id, features) in views {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(features) else {
                side.unreadable.push(user_id.clone());
                continue;
            };
            let user = *self.users.entry(user_id.clone()).or_insert_with(|| {
                self.ids.push(user_id.clone());
                (self.ids.len() - 1) as u32
            });
            for (name, value) in &object {
                let feature = match self.features.get(name) {
                    Some(&f) => f,
                    None => {
                        let f = self.names.len() as u16;
                        self.features.insert(name.clone(), f);
                        self.names.push(name.clone());
                        f
                    }
                };
                if !side.features.contains(name) {
                    side.features.push(name.clone());
                }
                let canonical = serde_json::to_string(value).expect("a value serializes");
                side.entries
                    .push(((user, feature), xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())));
            }
            side.objects.insert(user, object);
        }
        side
    }
}

/// Compares two sides' views feature by feature.
pub fn compare(a: &Views, b: &Views) -> Compared {
    let mut numbering = Numbering::default();
    let side_a = numbering.side(a);
    let side_b = numbering.side(b);
    let (entries_a, entries_b) = (side_a.entries.clone(), side_b.entries.clone());
    let (pairs, only) = differences(entries_a, entries_b);

    let in_both: Vec<bool> = (0..numbering.names.len())
        .map(|f| {
            let name = &numbering.names[f];
            side_a.features.contains(name) && side_b.features.contains(name)
        })
        .collect();
    let mut differing: Vec<Vec<Differing>> = vec![Vec::new(); numbering.names.len()];
    for (user, feature) in pairs {
        if !in_both[feature as usize] {
            continue;
        }
        let name = &numbering.names[feature as usize];
        let value = |side: &Side| {
            side.objects
                .get(&user)
                .and_then(|o| o.get(name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        differing[feature as usize].push(Differing {
            user_id: numbering.ids[user as usize].clone(),
            a: value(&side_a),
            b: value(&side_b),
        });
    }
    let mut only_a = Vec::new();
    let mut only_b = Vec::new();
    for (user, diff) in only {
        let id = numbering.ids[user as usize].clone();
        if diff > 0 {
            only_a.push(id)
        } else {
            only_b.push(id)
        }
    }
    only_a.sort();
    only_b.sort();
    let differing = side_a
        .features
        .iter()
        .filter(|name| side_b.features.contains(name))
        .map(|name| {
            let f = numbering.features[name] as usize;
            let mut users = std::mem::take(&mut differing[f]);
            users.sort_by(|x, y| x.user_id.cmp(&y.user_id));
            (name.clone(), users)
        })
        .collect();
    Compared {
        users: (side_a.objects.len(), side_b.objects.len()),
        features_a: side_a.features,
        features_b: side_b.features,
        only_a,
        only_b,
        differing,
        unreadable: (side_a.unreadable, side_b.unreadable),
    }
}

/// The dataflow: the keys whose values differ while both sides have them, and the
/// users only one side has (`+1`: the first, `-1`: the second).
fn differences(a: Vec<(Key, u64)>, b: Vec<(Key, u64)>) -> (Vec<Key>, Vec<(u32, isize)>) {
    timely::execute_directly(move |worker| {
        let pairs: Rc<RefCell<Vec<Key>>> = Rc::default();
        let only: Rc<RefCell<Vec<(u32, isize)>>> = Rc::default();
        let probe = ProbeHandle::new();
        let (mut input_a, mut input_b) = worker.dataflow::<u32, _, _>(|scope| {
            let (input_a, a) = scope.new_collection::<(Key, u64), isize>();
            let (input_b, b) = scope.new_collection::<(Key, u64), isize>();
            // What is equal cancels; what is left is in exactly one side.
            let differ = a.clone().negate().concat(b.clone()).consolidate();
            // A key that differs has its first value at -1 and its second at +1: each
            // counts once, or they would cancel.
            let keys = differ
                .inner
                .map(|((key, _value), time, _diff)| (key, time, 1isize))
                .as_collection()
                .distinct();
            let found = Rc::clone(&pairs);
            a.clone()
                .semijoin(keys.clone())
                .join(b.clone().semijoin(keys))
                .inspect(move |((key, _values), _time, diff)| {
                    if *diff > 0 {
                        found.borrow_mut().push(*key);
                    }
                })
                .inner
                .probe_with(&probe);
            let users_a = a.map(|((user, _feature), _value)| user).distinct();
            let users_b = b.map(|((user, _feature), _value)| user).distinct();
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
        assert_eq!(compared.only_b, ["u4"]);
        assert_eq!(compared.unreadable.1, ["u5"]);
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
