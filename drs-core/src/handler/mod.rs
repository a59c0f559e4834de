//! Handlers: plain async functions, erased into boxed closures when registered.

mod msg;

pub use msg::Msg;

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    body::Body,
    command::Command,
    conn::{encode_frame, Conn},
    ext::Extensions,
    protocol::{OutBody, Outgoing},
    stream::{IntoOutcome, Produced, Producer},
    sync::lock,
    Error,
};

/// The future a handler, a chain or a [`Layer`](crate::Layer) returns: the
/// outcome its caller is answered with.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
pub(crate) type HandlerFuture = ReplyFuture;
/// A handler (or a whole chain) after registration, as
/// [`box_handler`](crate::box_handler) makes it: what a table of handlers
/// kept outside the core (subscriptions, typed services) stores.
pub type BoxedHandler = Arc<dyn Fn(Msg) -> HandlerFuture + Send + Sync>;

/// The error a handler returns: an application error (`drs.error`) or, with
/// [`HandlerError::exception`], an unexpected failure (`drs.exception`).
///
/// Any `std::error::Error` converts into it with `?` (as an application error;
/// a drs [`Error`] keeps its meaning: a remote error stays an error, a
/// timeout, a closed connection or a remote exception becomes an exception).
/// Handlers may also return any other error type that implements `Display`;
/// it becomes a `drs.error` with that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    exception: bool,
}

impl HandlerError {
    /// An application error, answered with `drs.error`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exception: false,
        }
    }

    /// An unexpected failure, answered with `drs.exception`.
    pub fn exception(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exception: true,
        }
    }

    /// The message sent to the caller.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is answered with `drs.exception`.
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    pub(crate) fn from_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Exception(m) => HandlerError::exception(m),
            Outcome::Error(m) => HandlerError::new(m),
            _ => HandlerError::exception("not an error"),
        }
    }

    pub(crate) fn into_outcome(self) -> Outcome {
        if self.exception {
            Outcome::Exception(self.message)
        } else {
            Outcome::Error(self.message)
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::from_outcome(Outcome::from_error(e))
    }
}

/// `Result<T, HandlerError>`.
pub type HandlerResult<T> = Result<T, HandlerError>;

/// What a handler produced: the reply that its caller gets.
#[non_exhaustive]
pub enum Outcome {
    /// A value, sent as `drs.response`.
    Value(Box<dyn erased_serde::Serialize + Send>),
    /// A body passed through as received, sent as `drs.response`.
    Body(Body),
    /// An application error, sent as `drs.error`.
    Error(String),
    /// A panic or unexpected failure, sent as `drs.exception`.
    Exception(String),
}

impl Outcome {
    /// Whether the handler succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Value(_) | Outcome::Body(_))
    }

    /// The error or exception message.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Outcome::Error(m) | Outcome::Exception(m) => Some(m),
            _ => None,
        }
    }

    /// The reply action this outcome is sent with.
    pub fn reply_action(&self) -> &'static str {
        match self {
            Outcome::Value(_) | Outcome::Body(_) => crate::command::RESPONSE,
            Outcome::Error(_) => crate::command::ERROR,
            Outcome::Exception(_) => crate::command::EXCEPTION,
        }
    }

    /// A value, answered with `drs.response`.
    pub fn value<T: Serialize + Send + 'static>(value: T) -> Self {
        Outcome::from_value(value)
    }

    /// An application error, answered with `drs.error` `{"message": …}`.
    pub fn error(message: impl Into<String>) -> Self {
        Outcome::Error(message.into())
    }

    /// An unexpected failure, answered with `drs.exception` `{"message": …}`.
    pub fn exception(message: impl Into<String>) -> Self {
        Outcome::Exception(message.into())
    }

    /// A value; a [`Body`] is passed on as received.
    pub(crate) fn from_value<R: Serialize + Send + 'static>(value: R) -> Self {
        let mut slot = Some(value);
        if let Some(body) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Body>>() {
            return Outcome::Body(body.take().unwrap_or_default());
        }
        match slot {
            Some(value) => Outcome::Value(Box::new(value)),
            None => Outcome::Value(Box::new(())),
        }
    }

    pub(crate) fn from_error<E: fmt::Display + 'static>(e: E) -> Self {
        let any = &e as &dyn Any;
        if let Some(h) = any.downcast_ref::<HandlerError>() {
            return h.clone().into_outcome();
        }
        if let Some(err) = any.downcast_ref::<Error>() {
            return match err {
                Error::Remote(r) => Outcome::Error(r.message.clone()),
                Error::Exception(r) => Outcome::Exception(r.message.clone()),
                other => Outcome::Exception(other.to_string()),
            };
        }
        Outcome::Error(e.to_string())
    }

    /// The `drs.exception` a caught panic is answered with
    /// (`handler panicked: …`), for layers that catch panics themselves.
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        Outcome::Exception(format!("handler panicked: {text}"))
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Value(_) => f.write_str("Value(..)"),
            Outcome::Body(b) => f.debug_tuple("Body").field(b).finish(),
            Outcome::Error(m) => f.debug_tuple("Error").field(m).finish(),
            Outcome::Exception(m) => f.debug_tuple("Exception").field(m).finish(),
        }
    }
}

/// A handler argument taken from the command.
///
/// Implemented for [`Msg`], [`Conn`], [`Body`] (the raw body) and every
/// `T: DeserializeOwned` (the body, deserialized; a body that does not fit is
/// answered with a `drs.error` naming the action and the problem).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "not a handler argument",
    note = "a handler argument is the body as a type of yours (derive `serde::Deserialize` on it; any `DeserializeOwned`), `Msg`, `Conn`, `Body` or an `ItemSink`"
)]
pub trait FromMsg: Sized {
    /// Extracts the argument.
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError>;
}

impl<T: DeserializeOwned> FromMsg for T {
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError> {
        msg.body_as()
    }
}

impl FromMsg for Msg {
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError> {
        Ok(msg.clone())
    }
}

impl FromMsg for Conn {
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError> {
        Ok(msg.conn().clone())
    }
}

impl FromMsg for Body {
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError> {
        Ok(msg.body().clone())
    }
}

/// An async function usable as a handler.
///
/// Implemented for `Fn(A, …) -> impl Future<Output = O>` with zero to
/// three arguments, each [`FromMsg`] (a typed body, [`Msg`], [`Conn`],
/// [`Body`] or an [`ItemSink`](crate::ItemSink)), where `O` is
/// [`IntoOutcome`](crate::IntoOutcome): a `Result<R, E>` whose `R` is the
/// reply, any `Serialize` value or a [`Streamed`](crate::Streamed) stream
/// of items ([`IntoReply`](crate::IntoReply)), and whose `E: Display` is answered with
/// `drs.error` (see [`HandlerError`] for `drs.exception`); or, for a
/// handler that cannot fail, the reply itself (`|x: i64| async move { x *
/// 2 }`; any `Serialize` type through [`Reply`](crate::Reply)). A panic is
/// caught and answered with `drs.exception`. `drs_layers::Chain`
/// implements it too.
///
/// # When a function is not a handler
///
/// `server.on("add", add)` then fails to compile with "this is not a drs
/// handler", at the `on` call. Put `#[drs::debug_handler]` (the facade's
/// `macros` feature, on by default) on the function: the error moves to
/// the argument or return type at fault and says what fits. The usual
/// causes:
///
/// - **A body type without `Deserialize`**: "`Add` cannot be a handler
///   argument". Derive `serde::Deserialize` on it.
/// - **A future that is not `Send`**: a `std::sync::MutexGuard`, an `Rc`
///   or a `RefCell` borrow held across an `.await` ("future cannot be
///   sent between threads safely", naming the value). Drop it before the
///   `.await`, or use `tokio::sync::Mutex`.
/// - **A return type drs cannot send**: "`Point` cannot be what a handler
///   returns". Return `Result<Point, E>`, or wrap it: `Reply(point)`; the
///   error type must be `Display`.
/// - **Four arguments or more**: put the extra ones in the body type, or
///   read them from [`Msg`].
#[diagnostic::on_unimplemented(
    message = "this is not a drs handler",
    label = "not a handler",
    note = "a handler is an async fn (or a closure returning a future) of at most three arguments, each a typed body, `Msg`, `Conn`, `Body` or an `ItemSink`; it returns `Result<T, E>` (`T: Serialize` the reply, `E: Display` the drs.error) or the reply itself; its future is `Send` (hold no `std::sync::MutexGuard` or `Rc` across an `.await`)",
    note = "put `#[drs::debug_handler]` on the function to be told which argument or return type does not fit"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the handler for one command.
    #[doc(hidden)]
    fn call(&self, msg: Msg) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        impl<F, Fut, $($arg,)*> Handler<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: IntoOutcome,
            $($arg: FromMsg + Send + 'static,)*
        {
            // Panics are caught by whoever polls: the connection's driver,
            // or a layer that catches them (`Outcome::from_panic`).
            #[allow(non_snake_case, unused_variables)]
            fn call(&self, msg: Msg) -> HandlerFuture {
                let f = self.clone();
                Box::pin(async move {
                    $(
                        let $arg = match $arg::from_msg(&msg) {
                            Ok(v) => v,
                            Err(e) => return e.into_outcome()};
                    )*
                    let outcome = match f($($arg),*).await.into_produced() {
                        Produced::Outcome(outcome) => outcome,
                        Produced::Stream(items) => items.run(&msg).await};
                    msg.finish(outcome)
                })
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);

/// Erases a handler into a [`BoxedHandler`].
pub fn erase<H: Handler<A>, A>(h: H) -> BoxedHandler {
    Arc::new(move |msg| h.call(msg))
}
