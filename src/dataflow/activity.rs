//! Counting accepted records per user on their way to the folds of a diff run, for
//! its breakdown of differences by user activity.

use std::sync::{Arc, Mutex};

use compact_str::CompactString;
use hashbrown::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::model::event::{Event, Millis};

/// Passes `events` through unchanged, counting them per user; the worker's counts
/// are added to `into` once its input ends.
pub fn count_activity<'s>(
    events: Stream<'s, Millis, Vec<Event>>,
    into: Arc<Mutex<HashMap<CompactString, u64>>>,
) -> Stream<'s, Millis, Vec<Event>> {
    let mut builder = OperatorBuilder::new("Activity".to_owned(), events.scope());
    let mut input = builder.new_input(events, Pipeline);
    let (out, passed) = builder.new_output::<Vec<Event>>();
    let mut out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(out);
    builder.build(move |_| {
        let mut counts: HashMap<CompactString, u64> = HashMap::new();
        move |frontiers| {
            let mut handle = out.activate();
            input.for_each(|time, events| {
                for event in events.iter() {
                    match counts.get_mut(event.user_id.as_str()) {
                        Some(n) => *n += 1,
                        None => {
                            counts.insert(event.user_id.clone(), 1);
                        }
                    }
                }
                handle.session(&time).give_container(events);
            });
            if frontiers[0].frontier().is_empty() && !counts.is_empty() {
                let mut into = into.lock().unwrap_or_else(|p| p.into_inner());
                for (user, n) in counts.drain() {
                    *into.entry(user).or_default() += n;
                }
            }
        }
    });
    passed
}
