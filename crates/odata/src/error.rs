//! The one error of the grammar: a rejected query option, naming the option at fault, with
//! bounded echoes of the user's input.

/// How much of a user-supplied string is echoed back in an error message.
pub(crate) const ECHO_LIMIT: usize = 64;

/// A rejected query: `option` names the query option at fault (`$filter`, `$top`, `$skip`, or
/// the unknown option's name) so the caller can fill the error envelope's `target`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
    /// Which option: "$filter", "$top", "$skip" or the unknown option's name.
    pub option: String,
}

impl QueryError {
    pub(crate) fn new(option: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError {
            message: message.into(),
            option: option.into(),
        }
    }

    pub(crate) fn filter(message: impl std::fmt::Display) -> Self {
        QueryError::new("$filter", format!("invalid $filter: {message}"))
    }
}

/// At most [`ECHO_LIMIT`] characters of user input, for error messages.
pub(crate) fn echo(s: &str) -> String {
    if s.chars().count() > ECHO_LIMIT {
        format!("{}…", truncate(s).escape_debug())
    } else {
        s.escape_debug().to_string()
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(ECHO_LIMIT).collect()
}
