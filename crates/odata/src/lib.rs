//! defender-odata: the OData query grammar of the Defender incidents API (`$filter`, `$top`,
//! `$skip`) and of the Microsoft Graph security incidents API (plus `$orderby`, `$expand`,
//! `$count`), with the enum vocabularies both dialects share. Used by the proxy (to validate and
//! canonicalise) and by the simulator (to serve lists); depends on neither.
//!
//! Modules, each using only those listed after it: [`query`] (the list options of each
//! dialect), `parser` (`$filter` text to a tree), `lexer` (its tokens), [`filter`] (the tree and
//! its canonical printer), [`time`] (timestamps), `error` ([`QueryError`]); beside them
//! [`enums`] (the one table per enum type where the two dialects' spellings are decided) and
//! [`vocabulary`] (the documented update values).
//!
//! Only the subset documented for each API is accepted: comparisons of the documented fields
//! against literals, combined with `and`, `or`, `not` and parentheses. Anything else is a
//! [`QueryError`] rather than something forwarded blindly, because upstream errors cost quota.

#![forbid(unsafe_code)]

pub mod enums;
mod error;
pub mod filter;
mod lexer;
mod parser;
pub mod query;
pub mod time;
pub mod vocabulary;

#[cfg(test)]
mod tests;

pub use self::time::{format_datetime, parse_timestamp, INCIDENT_FRACTION_DIGITS};
pub use error::QueryError;
pub use filter::{CompareOp, Field, FieldKind, Filter, FilterField, GraphField, Literal, STATUS_VALUES};
pub use parser::{MAX_COMPARISONS, MAX_DEPTH, MAX_FILTER_LEN};
pub use query::{GraphListQuery, GraphOrderBy, GraphOrderField, ListQuery, GRAPH_MAX_TOP, MAX_TOP};
