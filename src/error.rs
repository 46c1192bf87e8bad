//! The crate's error type. Every public function that can be handed a bad
//! shape, a bad argument or a bad file returns `Result<T>`; nothing at the
//! public API panics on user input.

use std::fmt;
use std::path::PathBuf;

/// What went wrong, with enough context to act on it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Buffer lengths or dimensions that do not fit together.
    Shape(String),
    /// An argument outside its domain (a zero stride, a dropout rate of 1, ...).
    InvalidArgument(String),
    /// A request this build or this CPU cannot serve (e.g. an AVX-512 kernel on a CPU without it).
    Unsupported(String),
    /// An operating-system error on a named file.
    Io { path: PathBuf, source: std::io::Error },
    /// A file whose contents are not what its format requires.
    Format { path: PathBuf, msg: String },
    /// Training cannot go on (a non-finite loss, a checkpoint of another run).
    Training(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Training(m) => write!(f, "training stopped: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Err(Error::Shape(..))` unless `got == want`; `what` names the buffer.
pub fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want { Ok(()) } else { Err(Error::Shape(format!("{what}: expected {want} elements, got {got}"))) }
}

/// `check_len` for a message in two parts (`"{what} {part}"`), joined only
/// when the check fails: per-step checks must not allocate.
pub fn check_len_of(what: &str, part: &str, got: usize, want: usize) -> Result<()> {
    if got == want { Ok(()) } else { Err(Error::Shape(format!("{what} {part}: expected {want} elements, got {got}"))) }
}

/// Shorthand for building a shape error with `format!` arguments.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { $crate::error::Error::Shape(format!($($arg)*)) };
}

/// Shorthand for building an invalid-argument error with `format!` arguments.
#[macro_export]
macro_rules! arg_err {
    ($($arg:tt)*) => { $crate::error::Error::InvalidArgument(format!($($arg)*)) };
}
