//! Compiling a merged job file into the runtime model: the schema registry
//! ([`schema`]) and the feature spec ([`features`]).

pub mod features;
pub mod schema;

pub use features::features;
pub use schema::registry;
