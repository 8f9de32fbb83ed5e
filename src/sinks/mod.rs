//! Sinks: where views and dead letters go, and the dataflow operators that write them.
//!
//! A view sink takes batches of [`ViewRecord`]s and keeps what it wants of them: online
//! stores write the views that `changed`, the JSONL snapshot writes the `snapshot`.
//! A dead-letter sink writes [`DeadLetter`]s. The writing operators flush their sinks
//! whenever their input frontier moves past data they wrote, so everything before the
//! frontier is durable; `finish` runs once, at the end of the input.

pub mod dlq_file;
pub mod jsonl;
pub mod sqlite;

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::dead_letter::DeadLetter;
use crate::event::Millis;
use crate::fold::ViewRecord;

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("SQLite views at {path}")]
    Sqlite {
        /// The database file.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// An online store refused, and retries did not help.
    #[error("{0}")]
    Store(String),
}

/// Somewhere views are written.
pub trait ViewSink {
    /// Writes a batch; it may be buffered until the next [`ViewSink::flush`].
    fn write(&mut self, views: &[ViewRecord]) -> Result<(), SinkError>;
    /// Makes everything written so far durable.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Called once at the end of the input; durable on return.
    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

/// Somewhere dead letters are written.
pub trait DeadLetterSink {
    /// Writes a batch; it is durable when this returns.
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError>;
}

/// The first sink failure of a worker.
pub type SinkFailure = Rc<RefCell<Option<SinkError>>>;

/// Writing streams into sinks.
pub trait WriteSinks {
    /// Writes every batch into each of `sinks`, in order; a failure is recorded in
    /// `failure` and stops the writing.
    fn write_views(self, sinks: Vec<Box<dyn ViewSink>>, failure: SinkFailure);
}

/// Writing dead letters.
pub trait WriteDeadLetters {
    /// Writes every batch into `sink`.
    fn write_dead_letters(self, sink: Box<dyn DeadLetterSink>, failure: SinkFailure);
}

impl WriteSinks for Stream<'_, Millis, Vec<ViewRecord>> {
    fn write_views(self, mut sinks: Vec<Box<dyn ViewSink>>, failure: SinkFailure) {
        let mut finished = false;
        // The latest time of a batch written but not yet flushed.
        let mut unflushed: Option<Millis> = None;
        self.sink(Pipeline, "WriteViews", move |(input, frontier)| {
            input.for_each(|cap, views| {
                if failure.borrow().is_some() {
                    return;
                }
                let time = *cap.least().expect("totally ordered time");
                unflushed = Some(unflushed.map_or(time, |t: Millis| t.max(time)));
                for sink in sinks.iter_mut() {
                    if let Err(error) = sink.write(views) {
                        *failure.borrow_mut() = Some(error);
                        return;
                    }
                }
            });
            if failure.borrow().is_some() || finished {
                return;
            }
            let passed = |time: Millis| frontier.frontier().iter().all(|f| *f > time);
            let result = if frontier.is_empty() {
                finished = true;
                sinks.iter_mut().try_for_each(|sink| sink.finish())
            } else if unflushed.is_some_and(passed) {
                unflushed = None;
                sinks.iter_mut().try_for_each(|sink| sink.flush())
            } else {
                Ok(())
            };
            if let Err(error) = result {
                *failure.borrow_mut() = Some(error);
            }
        });
    }
}

impl WriteDeadLetters for Stream<'_, Millis, Vec<DeadLetter>> {
    fn write_dead_letters(self, mut sink: Box<dyn DeadLetterSink>, failure: SinkFailure) {
        self.sink(Pipeline, "WriteDeadLetters", move |(input, _frontier)| {
            input.for_each(|_cap, letters| {
                if failure.borrow().is_some() {
                    return;
                }
                if let Err(error) = sink.write(letters) {
                    *failure.borrow_mut() = Some(error);
                }
            });
        });
    }
}

/// Creates the parent directory of an output file.
pub fn create_parent(path: &std::path::Path) -> Result<(), SinkError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| SinkError::Io {
                path: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}
