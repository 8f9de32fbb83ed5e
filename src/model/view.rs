//! A rendered view on its way to the sinks: the user's features and state as JSON
//! text, with the watermark it is complete at.

use compact_str::CompactString;

/// A rendered view on its way to the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRecord {
    /// The key.
    pub user_id: CompactString,
    /// The watermark (event-time seconds) the view is complete at.
    pub as_of: f64,
    /// The `features` object.
    pub features: String,
    /// The `state` object.
    pub state: String,
    /// The user's state changed since its view was last written: online stores write it.
    pub changed: bool,
    /// Part of the end-of-run snapshot, which comes sorted by `user_id` per worker.
    pub snapshot: bool,
}

impl ViewRecord {
    /// The view as one JSON object (a line of the JSONL snapshot).
    pub fn to_json(&self) -> String {
        let user = serde_json::to_string(self.user_id.as_str()).expect("a string serializes");
        let as_of = serde_json::to_string(&self.as_of).expect("a number serializes");
        format!(
            "{{\"user_id\":{user},\"as_of\":{as_of},\"features\":{},\"state\":{}}}",
            self.features, self.state
        )
    }
}
