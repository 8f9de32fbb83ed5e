//! Kafka: connection settings and error classification ([`settings`]), the topics as a
//! [`crate::source::Source`] ([`source`]), publishing records ([`produce`]) and the
//! consumer group's lag ([`lag`]).

pub mod lag;
pub mod produce;
pub mod producer;
pub mod read;
pub mod settings;
pub mod source;
