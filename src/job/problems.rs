//! What is wrong with a job file: each problem located by file, line, column and
//! key, collected while the job is loaded and compiled, and reported all at once.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use super::locate;

/// One problem in a job file, located by file, line, column and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `time.allowed_lateness` or `state[2].on[0]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: `{}`: {}",
            self.file.display(),
            self.line,
            self.column,
            self.key,
            self.message
        )
    }
}

/// Why a job could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be read.
    #[error("cannot read job file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid job.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!(
        "invalid job: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// The text of one loaded job file.
#[derive(Debug)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

/// Collects problems while a job is loaded and compiled.
#[derive(Debug, Default)]
pub struct Problems {
    pub(super) list: Vec<Problem>,
    /// A file is not valid TOML: nothing after it is worth checking.
    pub(super) syntax: bool,
}

impl Problems {
    /// Records a problem at `span` of `file`.
    pub fn at(&mut self, file: &SourceFile, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = locate::line_col(&file.text, span.start);
        self.list.push(Problem {
            file: file.path.clone(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Whether nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A list section and the file it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// Index of the file in the loaded layers.
    pub file: usize,
    /// The section's value.
    pub value: T,
}
