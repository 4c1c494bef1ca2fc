//! Evaluates a parsed `$filter` against an incident document, in either dialect: how the
//! simulator serves filtered lists (the proxy itself never filters).

use defender_odata::{parse_timestamp, CompareOp, FieldKind, Filter, FilterField, Literal, INCIDENT_FRACTION_DIGITS};

/// A `$filter` that can be evaluated against an incident's JSON document.
pub trait Matches {
    /// Evaluates against an incident JSON object (fields lastUpdateTime, createdTime: ISO-8601 UTC strings; status, assignedTo: strings or null).
    ///
    /// A datetime comparison never matches when the incident's field is missing or unparseable.
    /// String fields follow OData null semantics: a missing field is `null`, so
    /// `assignedTo eq null` matches it and `assignedTo ne 'x'` does too; a field holding a
    /// non-string value matches nothing.
    fn matches(&self, incident: &serde_json::Value) -> bool;
}

impl<F: FilterField> Matches for Filter<F> {
    fn matches(&self, incident: &serde_json::Value) -> bool {
        match self {
            Filter::Compare { field, op, value } => compare(incident, *field, *op, value),
            Filter::Not(inner) => !inner.matches(incident),
            Filter::And(items) => items.iter().all(|f| f.matches(incident)),
            Filter::Or(items) => items.iter().any(|f| f.matches(incident)),
        }
    }
}

fn compare<F: FilterField>(incident: &serde_json::Value, field: F, op: CompareOp, value: &Literal) -> bool {
    let actual = incident.get(field.name());
    if field.kind() == FieldKind::DateTime {
        let Literal::DateTime(expected) = value else {
            return false;
        };
        actual
            .and_then(serde_json::Value::as_str)
            .and_then(|s| parse_timestamp(s, INCIDENT_FRACTION_DIGITS).ok())
            .is_some_and(|t| op.holds(t.cmp(expected)))
    } else {
        let actual = match actual {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(_) => return false,
        };
        let expected = match value {
            Literal::String(s) => Some(s.as_str()),
            Literal::Null => None,
            Literal::DateTime(_) => return false,
        };
        match op {
            CompareOp::Eq => actual == expected,
            CompareOp::Ne => actual != expected,
            // The parser only allows eq/ne on string fields.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_incidents() {
        let incident = json!({
            "incidentId": 7,
            "createdTime": "2024-04-01T10:00:00.1234567Z",
            "lastUpdateTime": "2024-05-02T00:00:00Z",
            "status": "Active",
            "assignedTo": null,
        });
        let yes = [
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
            "lastUpdateTime gt 2024-05-01T23:59:59.9999999Z",
            "lastUpdateTime eq 2024-05-02T02:00:00+02:00",
            "lastUpdateTime le 2024-05-02T00:00:00Z",
            "createdTime gt 2024-04-01T10:00:00.1234566Z",
            "createdTime lt 2024-04-01T10:00:00.1234568Z",
            "createdTime ne 2024-04-01T10:00:00Z",
            "status eq 'Active'",
            "status ne 'Resolved'",
            "assignedTo eq null",
            "assignedTo ne 'bob'",
            "not (status eq 'Resolved')",
            "status eq 'Resolved' or assignedTo eq null",
            "status eq 'Active' and (createdTime ge 2024-01-01T00:00:00Z or status eq 'Resolved')",
        ];
        let no = [
            "lastUpdateTime lt 2024-05-01T00:00:00Z",
            "lastUpdateTime gt 2024-05-02T00:00:00Z",
            "createdTime eq 2024-04-01T10:00:00.123456Z",
            "status ne 'Active'",
            "status eq 'InProgress'",
            "assignedTo ne null",
            "assignedTo eq 'bob'",
            "not status eq 'Active'",
            "status eq 'Active' and assignedTo eq 'bob'",
        ];
        for text in yes {
            assert!(Filter::parse(text).unwrap().matches(&incident), "{text}");
        }
        for text in no {
            assert!(!Filter::parse(text).unwrap().matches(&incident), "{text}");
        }
    }

    #[test]
    fn matching_missing_and_odd_fields() {
        let bare = json!({ "incidentId": 1 });
        let p = |s: &str| Filter::parse(s).unwrap();
        // A missing datetime matches no comparison at all, not even ne.
        for op in CompareOp::ALL {
            let f = p(&format!("lastUpdateTime {} 2024-05-01T00:00:00Z", op.keyword()));
            assert!(!f.matches(&bare), "{op:?}");
        }
        let garbled = json!({ "lastUpdateTime": "yesterday", "createdTime": 5 });
        assert!(!p("lastUpdateTime ne 2024-05-01T00:00:00Z").matches(&garbled));
        assert!(!p("createdTime ne 2024-05-01T00:00:00Z").matches(&garbled));
        // Missing strings are null.
        assert!(p("assignedTo eq null").matches(&bare));
        assert!(!p("assignedTo ne null").matches(&bare));
        assert!(p("assignedTo ne 'bob'").matches(&bare));
        assert!(!p("status eq 'Active'").matches(&bare));
        let assigned = json!({ "assignedTo": "O'Brien", "status": 3 });
        assert!(p("assignedTo eq 'O''Brien'").matches(&assigned));
        assert!(p("assignedTo ne null").matches(&assigned));
        // A non-string where a string belongs matches nothing.
        assert!(!p("status eq 'Active'").matches(&assigned));
        assert!(!p("status ne 'Active'").matches(&assigned));
        // Not an object at all.
        assert!(!p("lastUpdateTime ge 2024-05-01T00:00:00Z").matches(&json!([1, 2])));
        // Incident timestamps may carry up to nanoseconds and an offset.
        let precise = json!({ "lastUpdateTime": "2024-05-01T00:00:00.000000050+00:00" });
        assert!(p("lastUpdateTime gt 2024-05-01T00:00:00Z").matches(&precise));
        assert!(p("lastUpdateTime lt 2024-05-01T00:00:00.0000001Z").matches(&precise));
    }

    #[test]
    fn graph_filters_match_graph_incidents() {
        let incident = json!({
            "id": "7",
            "createdDateTime": "2024-04-01T10:00:00.1234567Z",
            "lastUpdateDateTime": "2024-05-02T00:00:00Z",
            "status": "active",
            "severity": "high",
            "classification": "unknown",
            "determination": "unknown",
            "assignedTo": null,
        });
        let p = |s: &str| Filter::parse_graph(s).unwrap();
        assert!(p("lastUpdateDateTime ge 2024-05-01T00:00:00Z and severity eq 'high'").matches(&incident));
        assert!(p("status eq 'active' and assignedTo eq null").matches(&incident));
        assert!(p("classification ne 'truePositive'").matches(&incident));
        assert!(!p("severity eq 'low' or createdDateTime gt 2024-05-01T00:00:00Z").matches(&incident));
        assert!(!p("determination eq 'malware'").matches(&incident));
    }
}
