//! Update bodies in either dialect (fact sheet §7.4, §5.1, §5.2): a Defender PATCH is a Graph
//! PATCH plus, when it carries `comment`, a separate comment POST; a Graph PATCH plus an
//! optional comment is one Defender PATCH. Values that do not map are refused naming the field,
//! before anything is sent.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::enums::{self, EnumTable};
use super::{Dialect, TranslateError};

const DEFENDER_UPDATABLE: &str = "status, assignedTo, classification, determination, tags, comment";
const GRAPH_UPDATABLE: &str =
    "assignedTo, classification, customTags, description, determination, displayName, resolvingComment, severity, status, summary";
/// Graph-writable fields Defender cannot change.
const GRAPH_ONLY_WRITABLE: [&str; 5] = ["description", "displayName", "resolvingComment", "severity", "summary"];
/// `@odata.type` of a Graph comment POST body.
pub const COMMENT_ODATA_TYPE: &str = "microsoft.graph.security.alertComment";

/// What a Defender PATCH becomes against Graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphUpdate {
    /// The `PATCH /security/incidents/{id}` body; `None` when the update was only a comment.
    pub patch: Option<Value>,
    /// The text for `POST /security/incidents/{id}/comments` ([`graph_comment_body`]).
    pub comment: Option<String>,
}

fn object(body: &Value) -> Result<&Map<String, Value>, TranslateError> {
    let o = body.as_object().ok_or_else(|| TranslateError::WrongType {
        field: "(body)".into(),
        expected: "a JSON object",
    })?;
    if o.is_empty() {
        return Err(TranslateError::Empty);
    }
    Ok(o)
}

fn string<'a>(key: &str, v: &'a Value) -> Result<&'a str, TranslateError> {
    v.as_str().ok_or_else(|| TranslateError::WrongType {
        field: key.into(),
        expected: "a string",
    })
}

fn string_or_null(key: &str, v: &Value) -> Result<Value, TranslateError> {
    match v {
        Value::Null | Value::String(_) => Ok(v.clone()),
        _ => Err(TranslateError::WrongType {
            field: key.into(),
            expected: "a string or null",
        }),
    }
}

fn string_list(key: &str, v: &Value) -> Result<Value, TranslateError> {
    let ok = v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    if ok {
        Ok(v.clone())
    } else {
        Err(TranslateError::WrongType {
            field: key.into(),
            expected: "a list of strings",
        })
    }
}

fn unmapped(key: &str, value: &str) -> TranslateError {
    TranslateError::Unmapped {
        field: key.into(),
        value: value.chars().take(64).collect(),
    }
}

/// Defender value → Graph metadata spelling, strictly (aliases accepted).
fn to_graph(table: &EnumTable, key: &str, v: &Value) -> Result<Value, TranslateError> {
    let s = string(key, v)?;
    table
        .to_graph(s)
        .map(|g| Value::String(g.into()))
        .ok_or_else(|| unmapped(key, s))
}

/// Graph value → a Defender spelling the Defender update accepts (`allowed`).
fn to_defender(table: &EnumTable, key: &str, v: &Value, allowed: &[&str]) -> Result<Value, TranslateError> {
    let s = string(key, v)?;
    table
        .to_defender(s)
        .filter(|d| allowed.contains(d))
        .map(|d| Value::String(d.into()))
        .ok_or_else(|| unmapped(key, s))
}

/// A Defender PATCH body as a Graph PATCH body and an optional comment.
pub fn defender_update_to_graph(body: &Value) -> Result<GraphUpdate, TranslateError> {
    let o = object(body)?;
    let mut patch = Map::new();
    let mut comment = None;
    for (key, v) in o {
        match key.as_str() {
            "status" => {
                patch.insert("status".into(), to_graph(&enums::INCIDENT_STATUS, key, v)?);
            }
            "classification" => {
                patch.insert(key.clone(), to_graph(&enums::CLASSIFICATION, key, v)?);
            }
            "determination" => {
                patch.insert(key.clone(), to_graph(&enums::DETERMINATION, key, v)?);
            }
            "assignedTo" => {
                patch.insert(key.clone(), string_or_null(key, v)?);
            }
            "tags" => {
                patch.insert("customTags".into(), string_list(key, v)?);
            }
            "comment" => comment = Some(string(key, v)?.to_string()),
            other => {
                return Err(TranslateError::NotUpdatable {
                    field: other.chars().take(64).collect(),
                    allowed: DEFENDER_UPDATABLE,
                })
            }
        }
    }
    Ok(GraphUpdate {
        patch: (!patch.is_empty()).then_some(Value::Object(patch)),
        comment,
    })
}

/// A Graph PATCH body (and the text of a comment POST, if any) as one Defender PATCH body.
/// Graph-only writable fields (`severity`, `displayName`, ...) are refused: Defender cannot
/// change them, and dropping them silently would report a change that did not happen.
pub fn graph_update_to_defender(body: Option<&Value>, comment: Option<&str>) -> Result<Value, TranslateError> {
    let mut out = Map::new();
    if let Some(body) = body {
        let o = object(body)?;
        for (key, v) in o {
            match key.as_str() {
                "status" => {
                    out.insert(
                        key.clone(),
                        to_defender(&enums::INCIDENT_STATUS, key, v, &crate::route::STATUSES)?,
                    );
                }
                "classification" => {
                    out.insert(
                        key.clone(),
                        to_defender(&enums::CLASSIFICATION, key, v, &crate::route::CLASSIFICATIONS)?,
                    );
                }
                "determination" => {
                    out.insert(
                        key.clone(),
                        to_defender(&enums::DETERMINATION, key, v, &crate::route::DETERMINATIONS)?,
                    );
                }
                "assignedTo" => {
                    out.insert(key.clone(), string_or_null(key, v)?);
                }
                "customTags" => {
                    out.insert("tags".into(), string_list(key, v)?);
                }
                other if GRAPH_ONLY_WRITABLE.contains(&other) => {
                    return Err(TranslateError::Unmapped {
                        field: other.into(),
                        value: "(any value: the Defender API cannot change this field)".into(),
                    })
                }
                other => {
                    return Err(TranslateError::NotUpdatable {
                        field: other.chars().take(64).collect(),
                        allowed: GRAPH_UPDATABLE,
                    })
                }
            }
        }
    }
    if let Some(c) = comment {
        out.insert("comment".into(), Value::String(c.into()));
    }
    if out.is_empty() {
        return Err(TranslateError::Empty);
    }
    Ok(Value::Object(out))
}

/// Validates a Graph PATCH body for a Graph upstream and rewrites enum values in the metadata
/// spelling (the update page's own example sends PascalCase; sheet §5.1).
pub fn normalize_graph_update(body: &Value) -> Result<Value, TranslateError> {
    let o = object(body)?;
    let mut out = Map::new();
    for (key, v) in o {
        let value = match key.as_str() {
            "status" => {
                let s = string(key, v)?;
                // `awaitingAction` is set by Defender Experts only (sheet §3).
                match enums::INCIDENT_STATUS.canonical_graph(s) {
                    Some(g) => Value::String(g.into()),
                    None => return Err(unmapped(key, s)),
                }
            }
            "classification" | "determination" | "severity" => {
                let table = match key.as_str() {
                    "classification" => &enums::CLASSIFICATION,
                    "determination" => &enums::DETERMINATION,
                    _ => &enums::SEVERITY,
                };
                let s = string(key, v)?;
                Value::String(table.canonical_graph(s).ok_or_else(|| unmapped(key, s))?.into())
            }
            "customTags" => string_list(key, v)?,
            "assignedTo" | "description" | "displayName" | "resolvingComment" | "summary" => string_or_null(key, v)?,
            other => {
                return Err(TranslateError::NotUpdatable {
                    field: other.chars().take(64).collect(),
                    allowed: GRAPH_UPDATABLE,
                })
            }
        };
        out.insert(key.clone(), value);
    }
    Ok(Value::Object(out))
}

/// The body of Graph's comment POST.
pub fn graph_comment_body(comment: &str) -> Value {
    serde_json::json!({ "@odata.type": COMMENT_ODATA_TYPE, "comment": comment })
}

/// The comment text of a Graph comment POST body. `@odata.type` is optional (its absence is
/// tolerated, sheet §5.2) but must name `alertComment` when given.
pub fn parse_graph_comment(body: &Value) -> Result<String, TranslateError> {
    let o = object(body)?;
    let mut comment = None;
    for (key, v) in o {
        match key.as_str() {
            "comment" => comment = Some(string(key, v)?.to_string()),
            "@odata.type" => {
                let t = string(key, v)?;
                if t.trim_start_matches('#') != COMMENT_ODATA_TYPE {
                    return Err(unmapped(key, t));
                }
            }
            other => {
                return Err(TranslateError::NotUpdatable {
                    field: other.chars().take(64).collect(),
                    allowed: "comment, @odata.type",
                })
            }
        }
    }
    comment.ok_or_else(|| TranslateError::Missing {
        field: "comment".into(),
    })
}

/// What the caller of a write gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The updated incident (a PATCH of either facade).
    Incident,
    /// The incident's comments, as Graph's comment POST answers.
    Comments,
}

/// A write, checked and translated into the upstream's dialect before anything is spent.
#[derive(Debug, Clone, PartialEq)]
pub struct WritePlan {
    /// The PATCH body to send (in the upstream's dialect); `None` for a comment alone on a
    /// Graph upstream.
    pub patch: Option<Bytes>,
    /// Graph upstream only: a comment to POST after the PATCH (on `create_comment`).
    pub comment: Option<String>,
    /// The fields the PATCH changes, in the caller's spelling (to say what was applied).
    pub fields: Vec<String>,
    pub reply: Reply,
}

fn parse_json(body: &[u8]) -> Result<Value, TranslateError> {
    serde_json::from_slice(body).map_err(|e| TranslateError::Json(e.to_string()))
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn field_names(body: &Value) -> Vec<String> {
    body.as_object()
        .map(|o| o.keys().filter(|k| k.as_str() != "comment").cloned().collect())
        .unwrap_or_default()
}

/// A Defender-facade PATCH body (already checked against Defender's vocabulary): sent as it
/// came to a Defender upstream; a Graph PATCH plus a comment POST for a Graph upstream.
pub fn plan_defender_patch(upstream: Dialect, body: &Bytes) -> Result<WritePlan, TranslateError> {
    let value = parse_json(body)?;
    let fields = field_names(&value);
    match upstream {
        Dialect::Defender => Ok(WritePlan {
            patch: Some(body.clone()),
            comment: None,
            fields,
            reply: Reply::Incident,
        }),
        Dialect::Graph => {
            let GraphUpdate { patch, comment } = defender_update_to_graph(&value)?;
            Ok(WritePlan {
                patch: patch.as_ref().map(json_bytes),
                comment,
                fields,
                reply: Reply::Incident,
            })
        }
    }
}

/// A Graph-facade PATCH body: normalised for a Graph upstream, one Defender PATCH otherwise
/// (Graph-only fields refused: Defender cannot change them).
pub fn plan_graph_patch(upstream: Dialect, body: &[u8]) -> Result<WritePlan, TranslateError> {
    let value = parse_json(body)?;
    let fields = field_names(&value);
    let patch = match upstream {
        Dialect::Graph => normalize_graph_update(&value)?,
        Dialect::Defender => graph_update_to_defender(Some(&value), None)?,
    };
    Ok(WritePlan {
        patch: Some(json_bytes(&patch)),
        comment: None,
        fields,
        reply: Reply::Incident,
    })
}

/// A Graph-facade comment POST body: a comment POST to a Graph upstream, a Defender PATCH
/// carrying `comment` otherwise.
pub fn plan_graph_comment(upstream: Dialect, body: &[u8]) -> Result<WritePlan, TranslateError> {
    let comment = parse_graph_comment(&parse_json(body)?)?;
    Ok(match upstream {
        Dialect::Graph => WritePlan {
            patch: None,
            comment: Some(comment),
            fields: Vec::new(),
            reply: Reply::Comments,
        },
        Dialect::Defender => WritePlan {
            patch: Some(json_bytes(&graph_update_to_defender(None, Some(&comment))?)),
            comment: None,
            fields: Vec::new(),
            reply: Reply::Comments,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every row of sheet §7.4, Defender → Graph.
    #[test]
    fn defender_patch_rows() {
        let u = defender_update_to_graph(&json!({
            "status": "Resolved",
            "assignedTo": "a@b.c",
            "classification": "TruePositive",
            "determination": "CompromisedUser",
            "tags": ["x", "y"],
            "comment": "done",
        }))
        .unwrap();
        assert_eq!(
            u.patch,
            Some(json!({
                "status": "resolved",
                "assignedTo": "a@b.c",
                "classification": "truePositive",
                "determination": "compromisedAccount",
                "customTags": ["x", "y"],
            }))
        );
        assert_eq!(u.comment.as_deref(), Some("done"));
        let only_comment = defender_update_to_graph(&json!({"comment": "hi"})).unwrap();
        assert_eq!(only_comment.patch, None);
        assert_eq!(graph_comment_body("hi")["@odata.type"], COMMENT_ODATA_TYPE);
        let unassign = defender_update_to_graph(&json!({"assignedTo": null})).unwrap();
        assert_eq!(unassign.patch, Some(json!({"assignedTo": null})));
    }

    #[test]
    fn defender_patch_rejections_name_the_field() {
        for (body, field) in [
            (json!({"status": "Closed"}), "status"),
            (json!({"status": "active"}), "status"),
            (json!({"classification": 3}), "classification"),
            (json!({"determination": "Bogus"}), "determination"),
            (json!({"tags": [1]}), "tags"),
            (json!({"comment": null}), "comment"),
            (json!({"severity": "High"}), "severity"),
        ] {
            let e = defender_update_to_graph(&body).unwrap_err();
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        assert_eq!(defender_update_to_graph(&json!({})), Err(TranslateError::Empty));
        assert!(defender_update_to_graph(&json!([])).is_err());
    }

    /// Every row of sheet §7.4, Graph → Defender.
    #[test]
    fn graph_patch_rows() {
        let d = graph_update_to_defender(
            Some(&json!({
                "status": "resolved",
                "assignedTo": null,
                "classification": "informationalExpectedActivity",
                "determination": "clean",
                "customTags": ["t"],
            })),
            Some("why"),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({
                "status": "Resolved",
                "assignedTo": null,
                "classification": "InformationalExpectedActivity",
                "determination": "Clean",
                "tags": ["t"],
                "comment": "why",
            })
        );
        assert_eq!(
            graph_update_to_defender(None, Some("c")).unwrap(),
            json!({"comment": "c"})
        );
        // PascalCase (the Graph update page's example) is understood.
        assert_eq!(
            graph_update_to_defender(Some(&json!({"classification": "TruePositive"})), None).unwrap(),
            json!({"classification": "TruePositive"})
        );
    }

    #[test]
    fn graph_patch_rejections_name_the_field() {
        for (body, field) in [
            (json!({"severity": "high"}), "severity"),
            (json!({"displayName": "x"}), "displayName"),
            (json!({"status": "awaitingAction"}), "status"),
            // Valid Graph, but not a value a Defender update may set.
            (json!({"classification": "unknown"}), "classification"),
            (json!({"determination": "apt"}), "determination"),
            (json!({"tags": ["x"]}), "tags"),
            (json!({"customTags": "x"}), "customTags"),
        ] {
            let e = graph_update_to_defender(Some(&body), None).unwrap_err();
            assert_eq!(e.field(), Some(field), "{body}: {e}");
        }
        assert_eq!(graph_update_to_defender(None, None), Err(TranslateError::Empty));
    }

    #[test]
    fn graph_bodies_are_normalized_and_comments_parsed() {
        assert_eq!(
            normalize_graph_update(
                &json!({"status": "Resolved", "determination": "compromisedUser", "severity": "HIGH"})
            )
            .unwrap(),
            json!({"status": "resolved", "determination": "compromisedAccount", "severity": "high"})
        );
        assert_eq!(
            normalize_graph_update(&json!({"id": "5"})).unwrap_err().field(),
            Some("id")
        );
        assert_eq!(
            parse_graph_comment(&json!({"@odata.type": "#microsoft.graph.security.alertComment", "comment": "c"}))
                .unwrap(),
            "c"
        );
        assert_eq!(parse_graph_comment(&json!({"comment": "c"})).unwrap(), "c");
        assert!(parse_graph_comment(&json!({"@odata.type": "x", "comment": "c"})).is_err());
        assert_eq!(
            parse_graph_comment(&json!({"text": "c"})).unwrap_err().field(),
            Some("text")
        );
        assert_eq!(
            parse_graph_comment(&json!({"@odata.type": COMMENT_ODATA_TYPE}))
                .unwrap_err()
                .field(),
            Some("comment")
        );
    }
}
