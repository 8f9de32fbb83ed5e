//! Sinks: where views and dead letters go, and the dataflow operators that write them.
//!
//! A view sink takes batches of [`ViewRecord`]s and keeps what it wants of them: online
//! stores write the views that `changed`, the JSONL snapshot writes the `snapshot`.
//! A dead-letter sink writes [`DeadLetter`]s.
//!
//! # Contract
//! The writing operators hold a capability for every time they wrote and have not yet
//! made durable, and flush once their input frontier has passed it. So the frontier
//! after the dead-letter writer (which also receives the view writers' dead letters)
//! passes a time only when every output derived from records before it is durable:
//! that is what offsets are committed against.

pub mod archive;
pub mod dlq_file;
pub mod dlq_kafka;
pub mod jsonl;
pub mod redis;
pub mod sqlite;
pub mod training;

use std::cell::RefCell;
use std::rc::Rc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::dlq::letter::DeadLetter;
use crate::metrics::Metrics;
use crate::model::event::Millis;
use crate::model::view::ViewRecord;

/// `path` with `suffix` added to its file name (`out/training` -> `out/training.jsonl`):
/// the names of files kept beside an output (`.partial`, `.parts`, `.jsonl`).
pub fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

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

/// Whether a sink's writes so far are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Everything written is durable (or dead-lettered).
    Done,
    /// Some writes are still waiting; ask again after this long.
    Pending(Duration),
}

/// Somewhere views are written.
pub trait ViewSink {
    /// The sink's name in metrics and logs.
    fn name(&self) -> &'static str;
    /// Writes a batch; it may be buffered until the next [`ViewSink::flush`]. Views
    /// the sink gives up on go to `dead` as dead letters.
    fn write(&mut self, views: &[ViewRecord], dead: &mut Vec<DeadLetter>) -> Result<(), SinkError>;
    /// Makes everything written so far durable, or says when to ask again.
    fn flush(&mut self, dead: &mut Vec<DeadLetter>) -> Result<Durability, SinkError> {
        let _ = dead;
        Ok(Durability::Done)
    }
    /// Called once at the end of the input: everything written must be durable or
    /// dead-lettered when it returns.
    fn finish(&mut self, dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        self.flush(dead).map(|_| ())
    }
}

/// Somewhere dead letters are written.
pub trait DeadLetterSink {
    /// Writes a batch; it may be buffered until the next [`DeadLetterSink::flush`].
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError>;
    /// Makes everything written so far durable.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The first sink failure of a worker.
pub type SinkFailure = Rc<RefCell<Option<SinkError>>>;

/// Writing views into sinks.
pub trait WriteViews<'s> {
    /// Writes every batch into each of `sinks`, in order. The returned stream carries
    /// the views the sinks gave up on, as dead letters; its frontier passes a time only
    /// once every view before it is durable or dead-lettered. A failure is recorded in
    /// `failure` and stops the writing.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    /// use skewless::dlq::letter::DeadLetter;
    /// use skewless::model::view::ViewRecord;
    /// use skewless::sinks::{SinkError, ViewSink, WriteViews};
    ///
    /// /// A sink that keeps the user ids it was given.
    /// struct Users(Arc<Mutex<Vec<String>>>);
    /// impl ViewSink for Users {
    ///     fn name(&self) -> &'static str {
    ///         "users"
    ///     }
    ///     fn write(&mut self, views: &[ViewRecord], _dead: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
    ///         self.0.lock().unwrap().extend(views.iter().map(|v| v.user_id.to_string()));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let written = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Users(Arc::clone(&written));
    /// timely::example(move |scope| {
    ///     let view = |user: &str| ViewRecord {
    ///         user_id: user.into(),
    ///         as_of: 10.0,
    ///         features: "{}".into(),
    ///         state: "{}".into(),
    ///         changed: true,
    ///         snapshot: true,
    ///         ..ViewRecord::default()
    ///     };
    ///     vec![view("u1"), view("u2")]
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .write_views(vec![Box::new(sink)], Default::default(), None)
    ///         .inspect(|letter| panic!("nothing is dead-lettered: {letter:?}"));
    /// });
    /// assert_eq!(*written.lock().unwrap(), ["u1", "u2"]);
    /// ```
    fn write_views(
        self,
        sinks: Vec<Box<dyn ViewSink>>,
        failure: SinkFailure,
        metrics: Option<Arc<Metrics>>,
    ) -> Stream<'s, Millis, Vec<DeadLetter>>;
}

/// Writing dead letters.
pub trait WriteDeadLetters<'s> {
    /// Writes every batch into `sink`. The returned (empty) stream's frontier passes a
    /// time once every dead letter before it is durable: probe it to know what is safe
    /// to commit.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::ToStream;
    /// use skewless::dlq::letter::{DeadLetter, Reason};
    /// use skewless::model::event::Origin;
    /// use skewless::sinks::{DeadLetterSink, SinkError, WriteDeadLetters};
    ///
    /// /// A sink that keeps the reasons it was given.
    /// struct Reasons(Arc<Mutex<Vec<Reason>>>);
    /// impl DeadLetterSink for Reasons {
    ///     fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
    ///         self.0.lock().unwrap().extend(letters.iter().map(|l| l.reason));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let written = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Reasons(Arc::clone(&written));
    /// timely::example(move |scope| {
    ///     let origin = Origin {
    ///         topic: "events.jsonl".into(),
    ///         partition: None,
    ///         offset: 7,
    ///         key: None,
    ///         broker_timestamp_ms: None,
    ///     };
    ///     let letter = DeadLetter::first_attempt("job", origin, b"{", false, Reason::InvalidJson, "EOF".into());
    ///     vec![letter]
    ///         .to_stream(scope)
    ///         .container::<Vec<_>>()
    ///         .write_dead_letters(Box::new(sink), Default::default());
    /// });
    /// assert_eq!(*written.lock().unwrap(), [Reason::InvalidJson]);
    /// ```
    fn write_dead_letters(
        self,
        sink: Box<dyn DeadLetterSink>,
        failure: SinkFailure,
    ) -> Stream<'s, Millis, Vec<()>>;
}

impl<'s> WriteViews<'s> for Stream<'s, Millis, Vec<ViewRecord>> {
    fn write_views(
        self,
        mut sinks: Vec<Box<dyn ViewSink>>,
        failure: SinkFailure,
        metrics: Option<Arc<Metrics>>,
    ) -> Stream<'s, Millis, Vec<DeadLetter>> {
        let timed = move |name: &'static str, started: Instant| {
            if let Some(metrics) = &metrics {
                metrics.sink_write(name, started.elapsed().as_secs_f64());
            }
        };
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("WriteViews".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address);
        let mut input = builder.new_input(self, Pipeline);
        let (output, stream) = builder.new_output::<Vec<DeadLetter>>();
        let mut output = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(output);
        builder.build(move |_capabilities| {
            // Times written but not yet durable, held so downstream frontiers wait.
            let mut held: Vec<Capability<Millis>> = Vec::new();
            let mut finished = false;
            let mut dead = Vec::new();
            move |frontiers| {
                let mut output = output.activate();
                input.for_each(|cap, views| {
                    if failure.borrow().is_some() {
                        return;
                    }
                    let Some(cap) = cap.retain_least(0) else { return };
                    for sink in sinks.iter_mut() {
                        let started = Instant::now();
                        let written = sink.write(views, &mut dead);
                        timed(sink.name(), started);
                        if let Err(error) = written {
                            *failure.borrow_mut() = Some(error);
                            return;
                        }
                    }
                    if !dead.is_empty() {
                        output.session(&cap).give_container(&mut dead);
                    }
                    held.push(cap);
                });
                if failure.borrow().is_some() {
                    held.clear();
                    return;
                }
                let frontier = &frontiers[0];
                if frontier.is_empty() && !finished {
                    finished = true;
                    for sink in sinks.iter_mut() {
                        if let Err(error) = sink.finish(&mut dead) {
                            *failure.borrow_mut() = Some(error);
                        }
                    }
                    if let Some(cap) = held.first() {
                        output.session(cap).give_container(&mut dead);
                    }
                    held.clear();
                    return;
                }
                // Flush once the input has passed a held time: nothing more comes for it.
                if held.iter().any(|cap| !frontier.less_equal(cap.time())) {
                    let mut ready = true;
                    for sink in sinks.iter_mut() {
                        let started = Instant::now();
                        let flushed = sink.flush(&mut dead);
                        timed(sink.name(), started);
                        match flushed {
                            Ok(Durability::Done) => {}
                            Ok(Durability::Pending(after)) => {
                                ready = false;
                                activator.activate_after(after);
                            }
                            Err(error) => {
                                *failure.borrow_mut() = Some(error);
                                held.clear();
                                return;
                            }
                        }
                    }
                    if let Some(cap) = held.first() {
                        output.session(cap).give_container(&mut dead);
                    }
                    if ready {
                        held.retain(|cap| frontier.less_equal(cap.time()));
                    }
                }
            }
        });
        stream
    }
}

impl<'s> WriteDeadLetters<'s> for Stream<'s, Millis, Vec<DeadLetter>> {
    fn write_dead_letters(
        self,
        mut sink: Box<dyn DeadLetterSink>,
        failure: SinkFailure,
    ) -> Stream<'s, Millis, Vec<()>> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("WriteDeadLetters".to_owned(), scope);
        let mut input = builder.new_input(self, Pipeline);
        let (_output, stream) = builder.new_output::<Vec<()>>();
        builder.build(move |_capabilities| {
            let mut held: Vec<Capability<Millis>> = Vec::new();
            move |frontiers| {
                input.for_each(|cap, letters| {
                    if failure.borrow().is_some() {
                        return;
                    }
                    if let Err(error) = sink.write(letters) {
                        *failure.borrow_mut() = Some(error);
                        return;
                    }
                    held.extend(cap.retain_least(0));
                });
                let frontier = &frontiers[0];
                if held.iter().any(|cap| !frontier.less_equal(cap.time()))
                    || (frontier.is_empty() && !held.is_empty())
                {
                    if let Err(error) = sink.flush() {
                        failure.borrow_mut().get_or_insert(error);
                    }
                    held.retain(|cap| frontier.less_equal(cap.time()));
                }
                if failure.borrow().is_some() {
                    held.clear();
                }
            }
        });
        stream
    }
}

/// Whether an output at `path` may be written under another name and renamed into
/// place: not when it names something other than a regular file (`/dev/null`, a
/// FIFO), which a rename would replace; such outputs are written in place.
pub fn replaceable(path: &std::path::Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.is_file())
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
