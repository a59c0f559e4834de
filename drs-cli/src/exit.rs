//! Exit codes, and the failures that carry them.

use std::fmt::Display;

/// The reply was `drs.error`.
pub(crate) const REMOTE_ERROR: u8 = 1;
/// The reply was `drs.exception`.
pub(crate) const EXCEPTION: u8 = 2;
/// No reply in time.
pub(crate) const TIMEOUT: u8 = 3;
/// No connection, or it ended.
pub(crate) const CONNECTION: u8 = 4;
/// The command line or its input is wrong (sysexits' EX_USAGE).
pub(crate) const USAGE: u8 = 64;
/// Ctrl-C (128 + SIGINT, as shells report it).
pub(crate) const INTERRUPTED: u8 = 130;

/// Why `drs` exits with a code other than 0: the code, and a message for
/// stderr (empty: nothing to add).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }

    pub(crate) fn usage(message: impl Display) -> Self {
        Self::new(USAGE, message)
    }

    /// A failure of a call, a fire or a connection, by its kind.
    pub(crate) fn from_drs(e: drs::Error) -> Self {
        use drs::Error;
        let code = match &e {
            Error::Remote(_) => REMOTE_ERROR,
            Error::Exception(_) => EXCEPTION,
            Error::Timeout(_) => TIMEOUT,
            Error::Encode(_) | Error::FrameTooLarge { .. } | Error::Invalid(_) => USAGE,
            _ => CONNECTION,
        };
        let message = match &e {
            Error::Remote(r) => format!("drs.error: {}", r.message),
            Error::Exception(r) => format!("drs.exception: {}", r.message),
            other => other.to_string(),
        };
        Self { code, message }
    }
}

impl From<drs::Error> for Failure {
    fn from(e: drs::Error) -> Self {
        Failure::from_drs(e)
    }
}
