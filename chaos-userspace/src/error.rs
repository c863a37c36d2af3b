//! Errors a user caused: the CLI maps them to exit code 2 (anything else is 1).

/// Bad input: names what was wrong and what is allowed. Nothing has been attached when it is returned.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// True when `err` or anything it wraps is bad input.
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<BadInput>().is_some())
}
