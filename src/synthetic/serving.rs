//! The simulated serving store of `skewless gen`: per user, the recsys features
//! (DESIGN.md section 5) of the events generated so far, readable as of any recent
//! time, so an impression can carry what a lagging feature store would have served.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{Value as Json, json};

/// Events older than this (behind the newest of their user) are folded for good.
const SETTLE_AFTER: f64 = 600.0;

/// What a generated event does to the features.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A view of an item of a category.
    View(u64, &'static str),
    /// A purchase of an item of a category at a price.
    Purchase(u64, &'static str, f64),
    /// A session start.
    Session,
}

#[derive(Debug, Clone)]
struct Applied {
    time: f64,
    id: String,
    effect: Effect,
}

/// One user's recsys features.
#[derive(Debug, Clone, Default)]
struct Features {
    purchased: BTreeSet<u64>,
    viewed: VecDeque<u64>,
    interests: BTreeMap<&'static str, f64>,
    spend: f64,
    session: bool,
    last_active: Option<f64>,
}

impl Features {
    fn apply(&mut self, event: &Applied) {
        match event.effect {
            Effect::View(item, category) => {
                self.viewed.push_back(item);
                if self.viewed.len() > 100 {
                    self.viewed.pop_front();
                }
                let score = self.interests.entry(category).or_insert(0.0);
                *score = *score * 0.95 + 0.3;
                self.last_active = Some(event.time);
            }
            Effect::Purchase(item, category, price) => {
                self.purchased.insert(item);
                self.spend += price;
                let score = self.interests.entry(category).or_insert(0.0);
                *score = *score * 0.9 + 1.0;
                self.last_active = Some(event.time);
            }
            Effect::Session => self.session = true,
        }
    }

    /// The view's `features` object.
    fn render(&self) -> serde_json::Map<String, Json> {
        let mut top: Vec<(&str, f64)> = self.interests.iter().map(|(c, s)| (*c, *s)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        top.truncate(5);
        let Json::Object(map) = json!({
            "n_purchased_items": self.purchased.len(),
            "n_viewed_items": self.viewed.len(),
            "total_spend": self.spend,
            "top_categories": top.iter().map(|(c, s)| json!([c, s])).collect::<Vec<_>>(),
            "session_active": self.session,
            "last_active_time": self.last_active,
        }) else {
            unreachable!("an object")
        };
        map
    }
}

#[derive(Debug, Default)]
struct User {
    settled: Features,
    /// Recent events in (time, id) order, not yet folded into `settled`.
    recent: Vec<Applied>,
}

/// The store: every user's features.
#[derive(Debug, Default)]
pub struct ServingStore {
    users: HashMap<u64, User>,
}

impl ServingStore {
    /// Records an event the job will apply.
    pub fn apply(&mut self, user: u64, time: f64, id: &str, effect: Effect) {
        let user = self.users.entry(user).or_default();
        let event = Applied {
            time,
            id: id.to_owned(),
            effect,
        };
        let at = user
            .recent
            .partition_point(|e| (e.time, e.id.as_str()) < (event.time, event.id.as_str()));
        user.recent.insert(at, event);
        let newest = user.recent.last().map_or(time, |e| e.time);
        let settle = user.recent.partition_point(|e| e.time < newest - SETTLE_AFTER);
        for event in user.recent.drain(..settle) {
            user.settled.apply(&event);
        }
    }

    /// The features of `user` as of `as_of` (events at or before it), with `as_of`.
    pub fn snapshot(&self, user: u64, as_of: f64) -> serde_json::Map<String, Json> {
        let mut features = match self.users.get(&user) {
            None => Features::default(),
            Some(u) => {
                let mut features = u.settled.clone();
                for event in u.recent.iter().take_while(|e| e.time <= as_of) {
                    features.apply(event);
                }
                features
            }
        }
        .render();
        features.insert("as_of".into(), json!(as_of));
        features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_what_happened_up_to_its_time() {
        let mut store = ServingStore::default();
        store.apply(1, 10.0, "b", Effect::View(7, "books"));
        store.apply(1, 20.0, "c", Effect::Purchase(7, "books", 12.5));
        store.apply(1, 10.0, "a", Effect::Session);
        let early = store.snapshot(1, 15.0);
        assert_eq!(early["n_viewed_items"], json!(1));
        assert_eq!(early["n_purchased_items"], json!(0));
        assert_eq!(early["session_active"], json!(true));
        assert_eq!(early["as_of"], json!(15.0));
        let late = store.snapshot(1, 20.0);
        assert_eq!(late["total_spend"], json!(12.5));
        assert_eq!(late["top_categories"], json!([["books", 0.3 * 0.9 + 1.0]]));
        assert_eq!(store.snapshot(2, 20.0)["last_active_time"], json!(null));
    }
}
