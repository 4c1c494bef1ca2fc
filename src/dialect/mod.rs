//! Translation between the two wire dialects of the incidents API: Microsoft 365 Defender's
//! (`/api/incidents`, PascalCase enums, numeric ids, devices and entities) and Microsoft Graph
//! security's (`/v1.0/security/incidents`, camelCase enums, string ids, evidence).
//!
//! Pure functions over JSON values and query models, no I/O: the proxy calls them once per
//! upstream answer (and caches the translated bytes), never once per cache hit.
//!
//! * [`enums`]: one table per enum type, the one place where the documents' disagreements
//!   (determination spellings above all) are decided.
//! * [`incident`]: whole incidents (with alerts, devices, entities ↔ evidence) and list pages.
//! * [`update`]: PATCH bodies, including Defender's `comment` ↔ Graph's comment POST.
//! * [`query`]: list queries: Defender filter ↔ Graph filter, and Defender pages over Graph's
//!   smaller pages.
//! * [`error`]: Graph's error envelope and the error-code mapping.
//! * [`target`]: a Graph-dialect request's route and id, as strict as [`crate::target`].

pub use crate::enums;
pub mod error;
pub mod incident;
#[cfg(test)]
mod mapping;
pub mod query;
#[cfg(test)]
mod sim_props;
pub mod target;
pub mod update;

/// Which wire dialect a caller speaks or an upstream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// `https://api.security.microsoft.com/api/incidents`.
    Defender,
    /// `https://graph.microsoft.com/v1.0/security/incidents`.
    Graph,
}

impl Dialect {
    /// The OAuth scope a token for this dialect's API is requested with.
    pub fn scope(self) -> &'static str {
        match self {
            Dialect::Defender => "https://api.security.microsoft.com/.default",
            Dialect::Graph => "https://graph.microsoft.com/.default",
        }
    }
}

/// Why a document could not be translated. Every variant names the field at fault (a JSON
/// path such as `alerts[2].status`) so the caller's 400 or the log line can say which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("'{field}' must be {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("'{field}' is required")]
    Missing { field: String },
    #[error("'{value}' is not a valid {field}; it has no counterpart in the other dialect")]
    Unmapped { field: String, value: String },
    #[error("'{field}' is not an updatable field; expected one of {allowed}")]
    NotUpdatable { field: String, allowed: &'static str },
    #[error("the update names no field to change")]
    Empty,
}

impl TranslateError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            TranslateError::WrongType { field, .. }
            | TranslateError::Missing { field }
            | TranslateError::Unmapped { field, .. }
            | TranslateError::NotUpdatable { field, .. } => Some(field),
            TranslateError::Json(_) | TranslateError::Empty => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_error_fields() {
        assert_eq!(Dialect::Defender.scope(), "https://api.security.microsoft.com/.default");
        assert_eq!(Dialect::Graph.scope(), "https://graph.microsoft.com/.default");
        let e = TranslateError::Unmapped {
            field: "status".into(),
            value: "Closed".into(),
        };
        assert_eq!(e.field(), Some("status"));
        assert_eq!(
            e.to_string(),
            "'Closed' is not a valid status; it has no counterpart in the other dialect"
        );
        assert_eq!(TranslateError::Empty.field(), None);
    }
}
