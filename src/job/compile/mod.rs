//! Compiling a merged job file into the runtime model: the schema registry
//! ([`schema`]), the feature spec ([`features`]) and the training export
//! ([`export`]).

pub mod export;
pub mod features;
pub mod schema;

pub use export::export;
pub use features::features;
pub use schema::registry;
