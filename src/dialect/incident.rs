//! Whole incidents in either dialect: a Graph incident (with expanded `alerts` and their
//! `evidence`) to the Defender entity and back, plus list pages. Field mapping per the fact
//! sheet §7.2 (incident), §7.5 (alert), §7.6 (device), §7.7 (entity); enum values through
//! [`super::enums`].
//!
//! Output is a `serde_json::Value` whose objects serialize with keys in a fixed (sorted) order,
//! so the same input always gives the same bytes; [`graph_to_defender_bytes`] and
//! [`defender_to_graph_bytes`] give compact bytes ready to cache and serve.
//!
//! Documented information loss is listed in [`DEFENDER_FIELDS_LOST`] and [`GRAPH_ONLY_FIELDS`],
//! which the property tests use as their only exceptions.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::enums::{self, EnumTable};
use super::TranslateError;

/// Defender `@odata.context` of a list answer.
pub const DEFENDER_LIST_CONTEXT: &str = "https://api.security.microsoft.com/api/$metadata#Incidents";
/// Prefix of Graph's `@odata.type` on evidence.
const GRAPH_TYPE_PREFIX: &str = "#microsoft.graph.security.";

/// Defender fields that do not survive Defender → Graph → Defender, with the reason. A path
/// names a field (`[]` = every element); an entry whose path carries a parenthesised condition
/// is lost only in that case. The property tests skip exactly the unconditional paths.
pub const DEFENDER_FIELDS_LOST: &[(&str, &str)] = &[
    ("alerts[].investigationId", "Graph alerts have no investigationId (sheet §7.5)"),
    ("alerts[].devices[].osProcessor", "deviceEvidence has no osProcessor (sheet §7.6)"),
    (
        "detectionSource (when the first alert's differs)",
        "Graph incidents have no detectionSource; it is rebuilt from the first alert's",
    ),
    (
        "alerts[].entities[].deviceId (Registry entity without a value)",
        "registryKeyEvidence has no mdeDeviceId; kept for every other type",
    ),
    (
        "alerts[].classification (explicit 'Unknown')",
        "comes back as null: Graph has only 'unknown' for both",
    ),
    (
        "alerts[].determination (explicit 'NotAvailable')",
        "comes back as null: Graph has only 'unknown' for both",
    ),
    (
        "(any enum holding a documented alias)",
        "CompromisedUser, NotMalicious, InsufficientData, ConfirmedUserActivity, alert status Active, ... come back in the output spelling",
    ),
    (
        "alerts[].entities[] (entityType without Graph evidence)",
        "dropped rather than invented",
    ),
];

/// Graph fields that do not survive Graph → Defender → Graph, with the reason: the Graph-only
/// fields of sheet §7.2, §7.5, §7.6 and §4.1, which come back as null, empty or synthesized
/// defaults (`verdict: unknown`, `remediationStatus: none`, `roles: []`). Same path syntax as
/// [`DEFENDER_FIELDS_LOST`].
pub const GRAPH_ONLY_FIELDS: &[(&str, &str)] = &[
    ("tenantId", "Graph-only incident field (sheet §7.2)"),
    ("systemTags", "Graph-only incident field"),
    ("description", "Graph-only incident field"),
    ("summary", "Graph-only incident field"),
    ("lastModifiedBy", "Graph-only incident field"),
    ("resolvingComment", "Graph-only incident field"),
    ("priorityScore", "Graph-only incident field"),
    ("alerts[].providerAlertId", "Graph-only alert field (sheet §7.5)"),
    ("alerts[].alertWebUrl", "Graph-only alert field"),
    ("alerts[].incidentWebUrl", "Graph-only alert field"),
    ("alerts[].threatDisplayName", "Graph-only alert field"),
    ("alerts[].recommendedActions", "Graph-only alert field"),
    ("alerts[].tenantId", "Graph-only alert field"),
    ("alerts[].comments", "Graph-only alert field"),
    ("alerts[].systemTags", "Graph-only alert field"),
    ("alerts[].additionalData", "Graph-only alert field"),
    ("alerts[].customDetails", "Graph-only alert field"),
    ("alerts[].alertPolicyId", "Graph-only alert field"),
    ("alerts[].productName", "Graph-only alert field"),
    ("alerts[].detectorId", "Graph-only alert field"),
    (
        "alerts[].categories",
        "rebuilt as [category]; further categories are lost",
    ),
    (
        "alerts[].evidence[].verdict",
        "no Defender source; synthesized 'unknown' (sheet §7.7)",
    ),
    (
        "alerts[].evidence[].remediationStatus",
        "no Defender source; synthesized 'none'",
    ),
    ("alerts[].evidence[].remediationStatusDetails", "no Defender source"),
    ("alerts[].evidence[].roles", "no Defender source; synthesized []"),
    (
        "alerts[].evidence[].detailedRoles",
        "no Defender source; synthesized []",
    ),
    (
        "alerts[].evidence[].hostName",
        "Graph-only deviceEvidence field (sheet §7.6)",
    ),
    ("alerts[].evidence[].ntDomain", "Graph-only deviceEvidence field"),
    ("alerts[].evidence[].dnsDomain", "Graph-only deviceEvidence field"),
    ("alerts[].evidence[].ipInterfaces", "Graph-only deviceEvidence field"),
    ("alerts[].evidence[].lastIpAddress", "Graph-only deviceEvidence field"),
    (
        "alerts[].evidence[].lastExternalIpAddress",
        "Graph-only deviceEvidence field",
    ),
    (
        "alerts[].evidence[].resourceAccessEvents",
        "Graph-only deviceEvidence field",
    ),
    (
        "alerts[].evidence[].detectionStatus",
        "no Defender entity field (file, process)",
    ),
    ("alerts[].evidence[].stream", "no Defender entity field (user, ip)"),
    ("alerts[].evidence[].location", "no Defender entity field (ip)"),
    ("alerts[].evidence[].countryLetterCode", "no Defender entity field (ip)"),
    (
        "alerts[].evidence[].parentProcessImageFile",
        "no Defender entity field (process)",
    ),
    (
        "alerts[].evidence[].userAccount.displayName",
        "no Defender entity field",
    ),
    (
        "alerts[].evidence[].userAccount.activeDirectoryObjectGuid",
        "no Defender entity field",
    ),
    (
        "alerts[].evidence[].userAccount.resourceAccessEvents",
        "no Defender entity field",
    ),
    (
        "alerts[].evidence[].p1Sender.displayName",
        "Defender's sender is an address only",
    ),
    (
        "alerts[].evidence[].p1Sender.domainName",
        "Defender's sender is an address only",
    ),
    ("alerts[].evidence[].p2Sender", "Defender has one sender (mapped to P1)"),
    (
        "alerts[].evidence[].deliveryLocation",
        "no Defender entity field (mail message)",
    ),
    (
        "alerts[].evidence[].networkMessageId",
        "no Defender entity field (mail message)",
    ),
    ("alerts[].evidence[].urls", "no Defender entity field (mail message)"),
    (
        "alerts[].evidence[].clusterByValue",
        "no Defender entity field (mail cluster)",
    ),
    (
        "alerts[].evidence[].emailCount",
        "no Defender entity field (mail cluster)",
    ),
    (
        "alerts[].evidence[].networkMessageIds",
        "no Defender entity field (mail cluster)",
    ),
    ("alerts[].evidence[].query", "no Defender entity field (mail cluster)"),
    ("alerts[].evidence[].urn", "no Defender entity field (mail cluster)"),
    (
        "alerts[].evidence[].registryValueName",
        "no Defender entity field (registry)",
    ),
    ("alerts[].evidence[].sid", "no Defender entity field (security group)"),
    (
        "alerts[].evidence[].activeDirectoryObjectGuid",
        "no Defender entity field (security group)",
    ),
    (
        "alerts[].evidence[].distinguishedName",
        "no Defender entity field (security group)",
    ),
    (
        "alerts[].evidence[].friendlyName",
        "no Defender entity field (security group)",
    ),
    (
        "alerts[].evidence[] (types without a Defender entity, e.g. cloudApplicationEvidence)",
        "dropped: Defender has no entityType for them (sheet §7.7)",
    ),
];

/// Whether `path` (as built by a field-by-field comparison: `[]` for array elements) is one of
/// the unconditional entries of `list`, or lies inside one.
pub fn is_listed(list: &[(&str, &str)], path: &str) -> bool {
    list.iter().any(|(p, _)| {
        !p.contains(' ')
            && (path == *p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('[')))
    })
}

/// Field-by-field differences between a native rendering (`expected`) and a translation
/// (`actual`), skipping the unconditional paths of `lossy` ([`DEFENDER_FIELDS_LOST`] or
/// [`GRAPH_ONLY_FIELDS`]). A missing key equals `null`; paths use `[]` for array elements. For
/// tests (here and in the integration of the facades): empty means "the same, up to the
/// documented losses".
pub fn field_differences(expected: &Value, actual: &Value, lossy: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    diff(expected, actual, "", &|p| is_listed(lossy, p), &mut out);
    out
}

fn diff(expected: &Value, actual: &Value, path: &str, skip: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
    if skip(path) {
        return;
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut keys: Vec<&String> = e.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let null = Value::Null;
                diff(e.get(k).unwrap_or(&null), a.get(k).unwrap_or(&null), &child, skip, out);
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (x, y) in e.iter().zip(a) {
                diff(x, y, &format!("{path}[]"), skip, out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(format!("{path}: expected {expected} but got {actual}")),
    }
}

// ----- helpers ---------------------------------------------------------------------------------

fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn as_object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, TranslateError> {
    v.as_object().ok_or_else(|| TranslateError::WrongType {
        field: if at.is_empty() { "(document)".into() } else { at.into() },
        expected: "an object",
    })
}

/// A field's value, `Null` when absent.
fn get<'a>(o: &'a Map<String, Value>, key: &str) -> &'a Value {
    o.get(key).unwrap_or(&Value::Null)
}

fn opt_str<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, TranslateError> {
    match get(o, key) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(TranslateError::WrongType {
            field: path(at, key),
            expected: "a string or null",
        }),
    }
}

fn array<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a [Value], TranslateError> {
    match get(o, key) {
        Value::Null => Ok(&[]),
        Value::Array(a) => Ok(a),
        _ => Err(TranslateError::WrongType {
            field: path(at, key),
            expected: "a list or null",
        }),
    }
}

/// A Graph string id (`"924565"`) as Defender's number; numbers are accepted as they are.
fn id_number(v: &Value, field: String) -> Result<Value, TranslateError> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Number(n) if n.is_i64() => Ok(v.clone()),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
            .map(Value::from)
            .ok_or(TranslateError::Unmapped {
                field,
                value: s.chars().take(64).collect(),
            }),
        _ => Err(TranslateError::WrongType {
            field,
            expected: "a numeric string",
        }),
    }
}

/// A Defender numeric id as Graph's string.
fn id_string(v: &Value, field: String) -> Result<Value, TranslateError> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Number(n) => Ok(Value::String(n.to_string())),
        Value::String(_) => Ok(v.clone()),
        _ => Err(TranslateError::WrongType {
            field,
            expected: "an integer",
        }),
    }
}

/// An enum value translated for a response (lenient: unknown members pass through recased).
fn enum_to_defender(table: &EnumTable, o: &Map<String, Value>, key: &str, at: &str) -> Result<Value, TranslateError> {
    Ok(match opt_str(o, key, at)? {
        None => Value::Null,
        Some(s) => Value::String(table.to_defender_lenient(s)),
    })
}

fn enum_to_graph(table: &EnumTable, o: &Map<String, Value>, key: &str, at: &str) -> Result<Value, TranslateError> {
    Ok(match opt_str(o, key, at)? {
        None => Value::Null,
        Some(s) => Value::String(table.to_graph_lenient(s)),
    })
}

fn nested<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    o.get(key).and_then(Value::as_object)
}

// ----- Graph → Defender ------------------------------------------------------------------------

/// A Graph incident (alerts expanded or not) as the Defender entity. `alerts` is always present
/// in the result, as Defender always includes it: a Defender facade must ask Graph with
/// `$expand=alerts`, or the list is empty.
pub fn graph_to_defender(graph: &Value) -> Result<Value, TranslateError> {
    let g = as_object(graph, "")?;
    let alerts = array(g, "alerts", "")?
        .iter()
        .enumerate()
        .map(|(i, a)| graph_alert_to_defender(a, &format!("alerts[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let comments = array(g, "comments", "")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("comments[{i}]");
            let c = as_object(c, &at)?;
            Ok(json!({
                "comment": get(c, "comment"),
                "createdBy": get(c, "createdByDisplayName"),
                "createdTime": get(c, "createdDateTime"),
            }))
        })
        .collect::<Result<Vec<_>, TranslateError>>()?;
    // Defender's incident-level detectionSource has no Graph counterpart; the first alert's is
    // the best available (it is what names the incident).
    let detection_source = alerts.first().map_or(Value::Null, |a| a["detectionSource"].clone());
    Ok(json!({
        "incidentId": id_number(get(g, "id"), "id".into())?,
        "incidentUri": get(g, "incidentWebUrl"),
        "redirectIncidentId": id_number(get(g, "redirectIncidentId"), "redirectIncidentId".into())?,
        "incidentName": get(g, "displayName"),
        "createdTime": get(g, "createdDateTime"),
        "lastUpdateTime": get(g, "lastUpdateDateTime"),
        "assignedTo": get(g, "assignedTo"),
        "classification": enum_to_defender(&enums::CLASSIFICATION, g, "classification", "")?,
        "determination": enum_to_defender(&enums::DETERMINATION, g, "determination", "")?,
        "detectionSource": detection_source,
        "status": enum_to_defender(&enums::INCIDENT_STATUS, g, "status", "")?,
        "severity": enum_to_defender(&enums::SEVERITY, g, "severity", "")?,
        "tags": get(g, "customTags").as_array().cloned().unwrap_or_default(),
        "comments": comments,
        "alerts": alerts,
    }))
}

/// An alert's classification or determination: Graph `unknown` is Defender `null` on alerts.
fn alert_verdict_to_defender(
    table: &EnumTable,
    o: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Value, TranslateError> {
    match opt_str(o, key, at)? {
        None | Some("unknown") => Ok(Value::Null),
        Some(_) => enum_to_defender(table, o, key, at),
    }
}

fn graph_alert_to_defender(alert: &Value, at: &str) -> Result<Value, TranslateError> {
    let a = as_object(alert, at)?;
    let mut devices = Vec::new();
    let mut entities = Vec::new();
    for (i, e) in array(a, "evidence", at)?.iter().enumerate() {
        let eat = format!("{at}.evidence[{i}]");
        let e = as_object(e, &eat)?;
        let kind = opt_str(e, "@odata.type", &eat)?
            .map(|t| t.trim_start_matches(GRAPH_TYPE_PREFIX))
            .unwrap_or("");
        if kind == "deviceEvidence" {
            devices.push(device_to_defender(e, &eat)?);
        } else if let Some(entity) = evidence_to_entity(kind, e) {
            entities.push(entity);
        }
    }
    let category = match get(a, "category") {
        Value::Null => array(a, "categories", at)?.first().cloned().unwrap_or(Value::Null),
        v => v.clone(),
    };
    Ok(json!({
        "alertId": get(a, "id"),
        "incidentId": id_number(get(a, "incidentId"), path(at, "incidentId"))?,
        "serviceSource": enum_to_defender(&enums::SERVICE_SOURCE, a, "serviceSource", at)?,
        "creationTime": get(a, "createdDateTime"),
        "lastUpdatedTime": get(a, "lastUpdateDateTime"),
        "resolvedTime": get(a, "resolvedDateTime"),
        "firstActivity": get(a, "firstActivityDateTime"),
        "lastActivity": get(a, "lastActivityDateTime"),
        "title": get(a, "title"),
        "description": get(a, "description"),
        "category": category,
        "status": enum_to_defender(&enums::ALERT_STATUS, a, "status", at)?,
        "severity": enum_to_defender(&enums::SEVERITY, a, "severity", at)?,
        "investigationId": Value::Null,
        "investigationState": enum_to_defender(&enums::INVESTIGATION_STATE, a, "investigationState", at)?,
        "classification": alert_verdict_to_defender(&enums::CLASSIFICATION, a, "classification", at)?,
        "determination": alert_verdict_to_defender(&enums::DETERMINATION, a, "determination", at)?,
        "detectionSource": enum_to_defender(&enums::DETECTION_SOURCE, a, "detectionSource", at)?,
        "assignedTo": get(a, "assignedTo"),
        "actorName": get(a, "actorDisplayName"),
        "threatFamilyName": get(a, "threatFamilyName"),
        "mitreTechniques": get(a, "mitreTechniques").as_array().cloned().unwrap_or_default(),
        "devices": devices,
        "entities": entities,
    }))
}

fn device_to_defender(e: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let mut d = json!({
        "mdatpDeviceId": get(e, "mdeDeviceId"),
        "aadDeviceId": get(e, "azureAdDeviceId"),
        "deviceDnsName": get(e, "deviceDnsName"),
        "osPlatform": get(e, "osPlatform"),
        "version": get(e, "version"),
        "osProcessor": Value::Null,
        "osBuild": get(e, "osBuild"),
        "healthStatus": enum_to_defender(&enums::DEVICE_HEALTH_STATUS, e, "healthStatus", at)?,
        "riskScore": enum_to_defender(&enums::DEVICE_RISK_SCORE, e, "riskScore", at)?,
        "rbacGroupName": get(e, "rbacGroupName"),
        "rbacGroupId": get(e, "rbacGroupId"),
        "firstSeen": get(e, "firstSeenDateTime"),
        "tags": get(e, "tags").as_array().cloned().unwrap_or_default(),
        "defenderAvStatus": enum_to_defender(&enums::DEFENDER_AV_STATUS, e, "defenderAvStatus", at)?,
        "onboardingStatus": enum_to_defender(&enums::ONBOARDING_STATUS, e, "onboardingStatus", at)?,
        "loggedOnUsers": get(e, "loggedOnUsers").as_array().cloned().unwrap_or_default(),
    });
    if let (Some(out), Some(vm)) = (d.as_object_mut(), e.get("vmMetadata").filter(|v| !v.is_null())) {
        out.insert("vmMetadata".into(), vm.clone());
    }
    Ok(d)
}

/// `(Defender entity field, Graph path)` per evidence type, sheet §7.7. A Graph path is a key
/// or `object.key`. One table drives both directions.
/// One row of [`ENTITY_MAP`]: Defender `entityType`, Graph evidence type, and the
/// `(Defender field, Graph path)` pairs.
pub type EntityRow = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

pub const ENTITY_MAP: &[EntityRow] = &[
    (
        "User",
        "userEvidence",
        &[
            ("accountName", "userAccount.accountName"),
            ("domainName", "userAccount.domainName"),
            ("userSid", "userAccount.userSid"),
            ("aadUserId", "userAccount.azureAdUserId"),
            ("userPrincipalName", "userAccount.userPrincipalName"),
        ],
    ),
    ("Ip", "ipEvidence", &[("ipAddress", "ipAddress")]),
    ("Url", "urlEvidence", &[("url", "url")]),
    (
        "File",
        "fileEvidence",
        &[
            ("sha1", "fileDetails.sha1"),
            ("sha256", "fileDetails.sha256"),
            ("fileName", "fileDetails.fileName"),
            ("filePath", "fileDetails.filePath"),
            ("deviceId", "mdeDeviceId"),
        ],
    ),
    (
        "Process",
        "processEvidence",
        &[
            ("processId", "processId"),
            ("processCommandLine", "processCommandLine"),
            ("processCreationTime", "processCreationDateTime"),
            ("parentProcessId", "parentProcessId"),
            ("parentProcessCreationTime", "parentProcessCreationDateTime"),
            ("sha1", "imageFile.sha1"),
            ("sha256", "imageFile.sha256"),
            ("fileName", "imageFile.fileName"),
            ("filePath", "imageFile.filePath"),
            // The account a process ran as [inf]: processEvidence carries a userAccount.
            ("accountName", "userAccount.accountName"),
            ("domainName", "userAccount.domainName"),
            ("userSid", "userAccount.userSid"),
            ("deviceId", "mdeDeviceId"),
        ],
    ),
    (
        "MailBox",
        "mailboxEvidence",
        &[
            ("mailboxDisplayName", "displayName"),
            ("mailboxAddress", "primaryAddress"),
            ("userPrincipalName", "upn"),
            // [inf]: mailboxEvidence also carries the owner's userAccount; the UPN is written
            // to both places and read from `upn` first.
            ("userPrincipalName", "userAccount.userPrincipalName"),
            ("aadUserId", "userAccount.azureAdUserId"),
        ],
    ),
    (
        "MailMessage",
        "analyzedMessageEvidence",
        &[
            ("subject", "subject"),
            ("recipient", "recipientEmailAddress"),
            // The sheet leaves P1 or P2 open; P1 (the envelope sender) is what mail flow reports
            // as "sender". Decision recorded here; P2 is read when P1 is absent.
            ("sender", "p1Sender.emailAddress"),
            ("deliveryAction", "deliveryAction"),
        ],
    ),
    ("MailCluster", "mailClusterEvidence", &[("clusterBy", "clusterBy")]),
    (
        "Registry",
        "registryValueEvidence",
        &[
            ("registryHive", "registryHive"),
            ("registryKey", "registryKey"),
            ("registryValueType", "registryValueType"),
            ("registryValue", "registryValue"),
            ("deviceId", "mdeDeviceId"),
        ],
    ),
    (
        "Registry",
        "registryKeyEvidence",
        &[("registryHive", "registryHive"), ("registryKey", "registryKey")],
    ),
    (
        "SecurityGroup",
        "securityGroupEvidence",
        &[
            ("securityGroupId", "securityGroupId"),
            ("securityGroupName", "displayName"),
        ],
    ),
];

fn graph_path<'a>(e: &'a Map<String, Value>, graph_path: &str) -> Option<&'a Value> {
    match graph_path.split_once('.') {
        None => e.get(graph_path),
        Some((obj, key)) => nested(e, obj).and_then(|o| o.get(key)),
    }
    .filter(|v| !v.is_null())
}

/// A Defender entity from evidence of `kind`, or `None` for types Defender has no entity for.
/// Only fields with a value are emitted, as Defender entities carry the fields of their type.
fn evidence_to_entity(kind: &str, e: &Map<String, Value>) -> Option<Value> {
    let (entity_type, _, fields) = ENTITY_MAP.iter().find(|(_, g, _)| *g == kind)?;
    let mut out = Map::new();
    out.insert("entityType".into(), Value::String((*entity_type).into()));
    for (defender, graph) in *fields {
        let value = graph_path(e, graph).or_else(|| {
            (*graph == "p1Sender.emailAddress")
                .then(|| graph_path(e, "p2Sender.emailAddress"))
                .flatten()
        });
        if let Some(v) = value {
            out.entry(*defender).or_insert_with(|| v.clone());
        }
    }
    Some(Value::Object(out))
}

// ----- Defender → Graph ------------------------------------------------------------------------

/// A Defender incident as a Graph incident with `alerts` expanded.
pub fn defender_to_graph(defender: &Value) -> Result<Value, TranslateError> {
    defender_to_graph_with(defender, true)
}

/// A Defender incident as a Graph incident; `alerts` only when `expand_alerts` (Graph's
/// `$expand=alerts`), as Graph leaves the navigation property out otherwise.
pub fn defender_to_graph_with(defender: &Value, expand_alerts: bool) -> Result<Value, TranslateError> {
    let d = as_object(defender, "")?;
    let comments = array(d, "comments", "")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("comments[{i}]");
            let c = as_object(c, &at)?;
            Ok(json!({
                "comment": get(c, "comment"),
                "createdByDisplayName": get(c, "createdBy"),
                "createdDateTime": get(c, "createdTime"),
            }))
        })
        .collect::<Result<Vec<_>, TranslateError>>()?;
    let unknown_if_null = |v: Value| {
        if v.is_null() {
            Value::String("unknown".into())
        } else {
            v
        }
    };
    let mut g = json!({
        "id": id_string(get(d, "incidentId"), "incidentId".into())?,
        "tenantId": Value::Null,
        "displayName": get(d, "incidentName"),
        "description": Value::Null,
        "summary": Value::Null,
        "incidentWebUrl": get(d, "incidentUri"),
        "redirectIncidentId": id_string(get(d, "redirectIncidentId"), "redirectIncidentId".into())?,
        "createdDateTime": get(d, "createdTime"),
        "lastUpdateDateTime": get(d, "lastUpdateTime"),
        "lastModifiedBy": Value::Null,
        "assignedTo": get(d, "assignedTo"),
        "classification": unknown_if_null(enum_to_graph(&enums::CLASSIFICATION, d, "classification", "")?),
        "determination": unknown_if_null(enum_to_graph(&enums::DETERMINATION, d, "determination", "")?),
        "status": enum_to_graph(&enums::INCIDENT_STATUS, d, "status", "")?,
        "severity": enum_to_graph(&enums::SEVERITY, d, "severity", "")?,
        "priorityScore": Value::Null,
        "resolvingComment": Value::Null,
        "customTags": get(d, "tags").as_array().cloned().unwrap_or_default(),
        "systemTags": [],
        "comments": comments,
    });
    if expand_alerts {
        let alerts = array(d, "alerts", "")?
            .iter()
            .enumerate()
            .map(|(i, a)| defender_alert_to_graph(a, &format!("alerts[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(o) = g.as_object_mut() {
            o.insert("alerts".into(), Value::Array(alerts));
        }
    }
    Ok(g)
}

fn defender_alert_to_graph(alert: &Value, at: &str) -> Result<Value, TranslateError> {
    let a = as_object(alert, at)?;
    let created = get(a, "creationTime").clone();
    let mut evidence = Vec::new();
    for (i, dev) in array(a, "devices", at)?.iter().enumerate() {
        let dat = format!("{at}.devices[{i}]");
        evidence.push(device_to_graph(as_object(dev, &dat)?, &created, &dat)?);
    }
    for (i, ent) in array(a, "entities", at)?.iter().enumerate() {
        let eat = format!("{at}.entities[{i}]");
        if let Some(e) = entity_to_evidence(as_object(ent, &eat)?, &created, &eat)? {
            evidence.push(e);
        }
    }
    let verdict = |key: &str| -> Result<Value, TranslateError> {
        Ok(
            match enum_to_graph(
                if key == "classification" {
                    &enums::CLASSIFICATION
                } else {
                    &enums::DETERMINATION
                },
                a,
                key,
                at,
            )? {
                Value::Null => Value::String("unknown".into()),
                v => v,
            },
        )
    };
    let category = get(a, "category").clone();
    let categories = if category.is_null() {
        json!([])
    } else {
        json!([category.clone()])
    };
    Ok(json!({
        "id": get(a, "alertId"),
        "providerAlertId": Value::Null,
        "incidentId": id_string(get(a, "incidentId"), path(at, "incidentId"))?,
        "status": enum_to_graph(&enums::ALERT_STATUS, a, "status", at)?,
        "severity": enum_to_graph(&enums::SEVERITY, a, "severity", at)?,
        "classification": verdict("classification")?,
        "determination": verdict("determination")?,
        "serviceSource": enum_to_graph(&enums::SERVICE_SOURCE, a, "serviceSource", at)?,
        "detectionSource": enum_to_graph(&enums::DETECTION_SOURCE, a, "detectionSource", at)?,
        "detectorId": Value::Null,
        "tenantId": Value::Null,
        "title": get(a, "title"),
        "description": get(a, "description"),
        "recommendedActions": Value::Null,
        "category": category,
        "categories": categories,
        "assignedTo": get(a, "assignedTo"),
        "alertWebUrl": Value::Null,
        "incidentWebUrl": Value::Null,
        "actorDisplayName": get(a, "actorName"),
        "threatDisplayName": Value::Null,
        "threatFamilyName": get(a, "threatFamilyName"),
        "mitreTechniques": get(a, "mitreTechniques").as_array().cloned().unwrap_or_default(),
        "createdDateTime": created,
        "lastUpdateDateTime": get(a, "lastUpdatedTime"),
        "resolvedDateTime": get(a, "resolvedTime"),
        "firstActivityDateTime": get(a, "firstActivity"),
        "lastActivityDateTime": get(a, "lastActivity"),
        "investigationState": enum_to_graph(&enums::INVESTIGATION_STATE, a, "investigationState", at)?,
        "productName": Value::Null,
        "alertPolicyId": Value::Null,
        "systemTags": [],
        "comments": [],
        "customDetails": Value::Null,
        "additionalData": Value::Null,
        "evidence": evidence,
    }))
}

/// The base fields every evidence object carries, with the defaults the sheet suggests for
/// what Defender has no source for (§7.7).
fn evidence_base(kind: &str, created: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "@odata.type".into(),
        Value::String(format!("{GRAPH_TYPE_PREFIX}{kind}")),
    );
    m.insert("createdDateTime".into(), created.clone());
    m.insert("verdict".into(), Value::String("unknown".into()));
    m.insert("remediationStatus".into(), Value::String("none".into()));
    m.insert("remediationStatusDetails".into(), Value::Null);
    m.insert("roles".into(), json!([]));
    m.insert("detailedRoles".into(), json!([]));
    m.insert("tags".into(), json!([]));
    m
}

fn device_to_graph(d: &Map<String, Value>, created: &Value, at: &str) -> Result<Value, TranslateError> {
    let mut m = evidence_base("deviceEvidence", created);
    let fields = [
        ("mdeDeviceId", get(d, "mdatpDeviceId").clone()),
        ("azureAdDeviceId", get(d, "aadDeviceId").clone()),
        ("deviceDnsName", get(d, "deviceDnsName").clone()),
        ("osPlatform", get(d, "osPlatform").clone()),
        ("osBuild", get(d, "osBuild").clone()),
        ("version", get(d, "version").clone()),
        (
            "healthStatus",
            enum_to_graph(&enums::DEVICE_HEALTH_STATUS, d, "healthStatus", at)?,
        ),
        (
            "riskScore",
            enum_to_graph(&enums::DEVICE_RISK_SCORE, d, "riskScore", at)?,
        ),
        ("rbacGroupId", get(d, "rbacGroupId").clone()),
        ("rbacGroupName", get(d, "rbacGroupName").clone()),
        ("firstSeenDateTime", get(d, "firstSeen").clone()),
        (
            "defenderAvStatus",
            enum_to_graph(&enums::DEFENDER_AV_STATUS, d, "defenderAvStatus", at)?,
        ),
        (
            "onboardingStatus",
            enum_to_graph(&enums::ONBOARDING_STATUS, d, "onboardingStatus", at)?,
        ),
        (
            "loggedOnUsers",
            get(d, "loggedOnUsers")
                .as_array()
                .cloned()
                .map_or(json!([]), Value::Array),
        ),
        ("vmMetadata", get(d, "vmMetadata").clone()),
        ("hostName", Value::Null),
        ("ntDomain", Value::Null),
        ("dnsDomain", Value::Null),
        ("lastIpAddress", Value::Null),
        ("lastExternalIpAddress", Value::Null),
        ("ipInterfaces", json!([])),
        ("resourceAccessEvents", json!([])),
    ];
    for (k, v) in fields {
        m.insert(k.into(), v);
    }
    if let Some(tags) = d.get("tags").filter(|t| t.is_array()) {
        m.insert("tags".into(), tags.clone());
    }
    Ok(Value::Object(m))
}

fn entity_to_evidence(e: &Map<String, Value>, created: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    let entity_type = opt_str(e, "entityType", at)?.ok_or_else(|| TranslateError::Missing {
        field: path(at, "entityType"),
    })?;
    // Registry: a value entity when it names a value, a key entity otherwise (sheet §7.7).
    let is_value = ["registryValueType", "registryValue"]
        .iter()
        .any(|k| !get(e, k).is_null());
    let row = ENTITY_MAP.iter().find(|(d, g, _)| {
        *d == entity_type && (entity_type != "Registry" || (*g == "registryValueEvidence") == is_value)
    });
    let Some((_, kind, fields)) = row else {
        // Entity types Graph has no evidence for are dropped rather than invented.
        return Ok(None);
    };
    let mut m = evidence_base(kind, created);
    for (defender, graph) in *fields {
        let v = get(e, defender).clone();
        match graph.split_once('.') {
            None => {
                m.insert((*graph).into(), v);
            }
            Some((obj, key)) => {
                let slot = m.entry(obj.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if let Some(o) = slot.as_object_mut() {
                    o.insert(key.into(), v);
                }
            }
        }
    }
    Ok(Some(Value::Object(m)))
}

// ----- bytes and pages -------------------------------------------------------------------------

fn parse(bytes: &[u8]) -> Result<Value, TranslateError> {
    serde_json::from_slice(bytes).map_err(|e| TranslateError::Json(e.to_string()))
}

fn to_bytes(v: &Value) -> Bytes {
    // A Value always serializes.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Upstream Graph incident bytes to Defender bytes: what a Defender facade caches and serves.
pub fn graph_to_defender_bytes(body: &[u8]) -> Result<Bytes, TranslateError> {
    Ok(to_bytes(&graph_to_defender(&parse(body)?)?))
}

/// Upstream Defender incident bytes to Graph bytes (`@odata.context` of a single incident).
pub fn defender_to_graph_bytes(body: &[u8], expand_alerts: bool) -> Result<Bytes, TranslateError> {
    let mut g = defender_to_graph_with(&parse(body)?, expand_alerts)?;
    if let Some(o) = g.as_object_mut() {
        o.insert(
            "@odata.context".into(),
            Value::String("https://graph.microsoft.com/v1.0/$metadata#security/incidents/$entity".into()),
        );
    }
    Ok(to_bytes(&g))
}

/// A Graph list page: its incidents translated to Defender, and its `@odata.nextLink`.
pub fn graph_page_to_defender(body: &[u8]) -> Result<(Vec<Value>, Option<String>), TranslateError> {
    let v = parse(body)?;
    let page = as_object(&v, "")?;
    let items = array(page, "value", "")?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            graph_to_defender(item).map_err(|e| match e {
                TranslateError::WrongType { field, expected } => TranslateError::WrongType {
                    field: format!("value[{i}].{field}"),
                    expected,
                },
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next = opt_str(page, "@odata.nextLink", "")?.map(str::to_string);
    Ok((items, next))
}

/// A Defender list answer's body from translated incidents.
pub fn defender_list_body(items: Vec<Value>) -> Bytes {
    to_bytes(&json!({ "@odata.context": DEFENDER_LIST_CONTEXT, "value": items }))
}

/// A Defender list answer's incidents translated to Graph (alerts only when expanded).
pub fn defender_page_to_graph(body: &[u8], expand_alerts: bool) -> Result<Vec<Value>, TranslateError> {
    let v = parse(body)?;
    let page = as_object(&v, "")?;
    array(page, "value", "")?
        .iter()
        .map(|item| defender_to_graph_with(item, expand_alerts))
        .collect()
}

/// A Graph list answer's body. `next_link` is already rewritten to point at whoever serves
/// the caller; `count` is `@odata.count` when `$count=true` was asked.
pub fn graph_list_body(items: Vec<Value>, expand_alerts: bool, next_link: Option<&str>, count: Option<u64>) -> Bytes {
    let context = if expand_alerts {
        "https://graph.microsoft.com/v1.0/$metadata#security/incidents(alerts())"
    } else {
        "https://graph.microsoft.com/v1.0/$metadata#security/incidents"
    };
    let mut o = Map::new();
    o.insert("@odata.context".into(), Value::String(context.into()));
    if let Some(n) = count {
        o.insert("@odata.count".into(), Value::from(n));
    }
    o.insert("value".into(), Value::Array(items));
    if let Some(link) = next_link {
        o.insert("@odata.nextLink".into(), Value::String(link.into()));
    }
    to_bytes(&Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(kind: &str) -> Value {
        json!({ "@odata.type": format!("{GRAPH_TYPE_PREFIX}{kind}"), "createdDateTime": "2026-01-22T12:09:22.9566667Z",
                "verdict": "suspicious", "remediationStatus": "active", "roles": [], "detailedRoles": [], "tags": [] })
    }

    fn with(kind: &str, own: Value) -> Value {
        let mut v = base(kind);
        v.as_object_mut().unwrap().extend(own.as_object().unwrap().clone());
        v
    }

    fn evidence() -> Value {
        Value::Array(vec![
            with(
                "deviceEvidence",
                json!({"mdeDeviceId": "m1", "azureAdDeviceId": "a1", "deviceDnsName": "w11.contoso.com",
                        "osPlatform": "Windows11", "osBuild": 26200, "version": "25H2", "healthStatus": "impairedCommunication",
                        "riskScore": "informational", "rbacGroupId": 125, "rbacGroupName": "Clients", "firstSeenDateTime": "2025-08-18T11:09:18Z",
                        "defenderAvStatus": "notUpdated", "onboardingStatus": "canBeOnboarded", "tags": ["Tier0"],
                        "loggedOnUsers": [{"accountName": "u", "domainName": "D"}], "vmMetadata": {"cloudProvider": "azure", "vmId": "v"},
                        "hostName": "w11"}),
            ),
            with(
                "userEvidence",
                json!({"userAccount": {"accountName": "adminlocal", "domainName": "W11", "userSid": "S-1-5-21",
                        "azureAdUserId": "aad", "userPrincipalName": "u@contoso.com", "displayName": "U"}}),
            ),
            with(
                "ipEvidence",
                json!({"ipAddress": "10.0.0.1", "countryLetterCode": "NL"}),
            ),
            with("urlEvidence", json!({"url": "https://evil.test/x"})),
            with(
                "fileEvidence",
                json!({"mdeDeviceId": "m1", "detectionStatus": "detected",
                        "fileDetails": {"sha1": "s1", "sha256": "s256", "fileName": "f.exe", "filePath": "C:\\t", "fileSize": 5}}),
            ),
            with(
                "processEvidence",
                json!({"processId": 4780, "parentProcessId": 668, "processCommandLine": "\"MsSense.exe\"",
                        "processCreationDateTime": "2021-08-12T12:43:19.0772577Z", "parentProcessCreationDateTime": "2021-08-12T07:39:09.0909239Z",
                        "mdeDeviceId": "m1", "imageFile": {"sha1": "p1", "sha256": "p256", "fileName": "MsSense.exe", "filePath": "C:\\P"},
                        "userAccount": {"accountName": "svc", "domainName": "NT", "userSid": "S-1-5-18"}}),
            ),
            with(
                "mailboxEvidence",
                json!({"displayName": "Megan", "primaryAddress": "m@contoso.com", "upn": "m@contoso.com",
                        "userAccount": {"azureAdUserId": "aad2"}}),
            ),
            with(
                "analyzedMessageEvidence",
                json!({"subject": "Invoice", "recipientEmailAddress": "m@contoso.com",
                        "p1Sender": null, "p2Sender": {"emailAddress": "bad@evil.test"}, "deliveryAction": "Delivered"}),
            ),
            with("mailClusterEvidence", json!({"clusterBy": "Subject"})),
            with(
                "registryKeyEvidence",
                json!({"registryHive": "HKEY_LOCAL_MACHINE", "registryKey": "SYSTEM\\X"}),
            ),
            with(
                "registryValueEvidence",
                json!({"registryHive": "HKEY_CURRENT_USER", "registryKey": "SOFTWARE\\Run",
                        "registryValueType": "String", "registryValue": "C:\\a.exe", "mdeDeviceId": "m1"}),
            ),
            with(
                "securityGroupEvidence",
                json!({"securityGroupId": "S-1-5-512", "displayName": "Domain Admins"}),
            ),
            with("cloudApplicationEvidence", json!({"appId": 1, "displayName": "app"})),
        ])
    }

    /// A Graph incident exercising every row of sheet §7.2, §7.5, §7.6 and §7.7.
    fn graph_incident() -> Value {
        json!({
            "@odata.context": "x",
            "id": "924565",
            "tenantId": "t",
            "incidentWebUrl": "https://security.microsoft.com/incidents/924565?tid=t",
            "redirectIncidentId": "924570",
            "displayName": "Multi-stage incident",
            "createdDateTime": "2026-01-22T12:09:23.1433333Z",
            "lastUpdateDateTime": "2026-02-25T16:29:33.1Z",
            "assignedTo": "secop1@contoso.com",
            "classification": "truePositive",
            "determination": "compromisedAccount",
            "status": "redirected",
            "severity": "unknown",
            "customTags": ["VIP"],
            "systemTags": ["Defender Experts"],
            "comments": [{"comment": "c1", "createdByDisplayName": "a@b", "createdDateTime": "2026-01-22T12:10:00Z"}],
            "alerts": [alert()],
        })
    }

    fn alert() -> Value {
        json!({
            "id": "da637551227677560813_-961444813",
            "incidentId": "924565",
            "serviceSource": "microsoftDefenderForCloudApps",
            "detectionSource": "cloudAppSecurity",
            "createdDateTime": "2026-01-22T12:09:22Z",
            "lastUpdateDateTime": "2026-01-22T12:20:00Z",
            "resolvedDateTime": null,
            "firstActivityDateTime": "2026-01-22T11:00:00Z",
            "lastActivityDateTime": "2026-01-22T12:00:00Z",
            "title": "Impossible travel activity",
            "description": "d",
            "category": null,
            "categories": ["InitialAccess"],
            "status": "inProgress",
            "severity": "high",
            "investigationState": "unsupportedAlertType",
            "classification": "unknown",
            "determination": "unknown",
            "assignedTo": "Automation",
            "actorDisplayName": "Midnight Blizzard",
            "threatFamilyName": "Emotet",
            "mitreTechniques": ["T1078"],
            "evidence": evidence(),
        })
    }

    #[test]
    fn every_incident_alert_device_and_entity_row_graph_to_defender() {
        let d = graph_to_defender(&graph_incident()).unwrap();
        // §7.2
        assert_eq!(d["incidentId"], 924565);
        assert_eq!(d["redirectIncidentId"], 924570);
        assert_eq!(d["incidentName"], "Multi-stage incident");
        assert_eq!(
            d["incidentUri"],
            "https://security.microsoft.com/incidents/924565?tid=t"
        );
        assert_eq!(d["createdTime"], "2026-01-22T12:09:23.1433333Z");
        assert_eq!(
            d["lastUpdateTime"], "2026-02-25T16:29:33.1Z",
            "timestamps kept as they are"
        );
        assert_eq!(d["assignedTo"], "secop1@contoso.com");
        assert_eq!(d["classification"], "TruePositive");
        assert_eq!(d["determination"], "CompromisedAccount");
        assert_eq!(d["status"], "Redirected");
        assert_eq!(d["severity"], "UnSpecified");
        assert_eq!(d["tags"], json!(["VIP"]));
        assert_eq!(
            d["comments"],
            json!([{"comment": "c1", "createdBy": "a@b", "createdTime": "2026-01-22T12:10:00Z"}])
        );
        assert_eq!(d["detectionSource"], "MCAS");
        for gone in ["systemTags", "tenantId", "customTags", "displayName", "@odata.context"] {
            assert!(d.get(gone).is_none(), "{gone}");
        }
        // §7.5
        let a = &d["alerts"][0];
        assert_eq!(a["alertId"], "da637551227677560813_-961444813");
        assert_eq!(a["incidentId"], 924565);
        assert_eq!(a["serviceSource"], "MicrosoftCloudAppSecurity");
        assert_eq!(a["detectionSource"], "MCAS");
        assert_eq!(a["creationTime"], "2026-01-22T12:09:22Z");
        assert_eq!(a["lastUpdatedTime"], "2026-01-22T12:20:00Z");
        assert_eq!(a["resolvedTime"], Value::Null);
        assert_eq!(a["firstActivity"], "2026-01-22T11:00:00Z");
        assert_eq!(a["lastActivity"], "2026-01-22T12:00:00Z");
        assert_eq!(a["title"], "Impossible travel activity");
        assert_eq!(a["description"], "d");
        assert_eq!(a["category"], "InitialAccess", "from categories when category is null");
        assert_eq!(a["status"], "InProgress");
        assert_eq!(a["severity"], "High");
        assert_eq!(a["investigationId"], Value::Null);
        assert_eq!(a["investigationState"], "UnsupportedAlertType");
        assert_eq!(a["classification"], Value::Null);
        assert_eq!(a["determination"], Value::Null);
        assert_eq!(a["assignedTo"], "Automation");
        assert_eq!(a["actorName"], "Midnight Blizzard");
        assert_eq!(a["threatFamilyName"], "Emotet");
        assert_eq!(a["mitreTechniques"], json!(["T1078"]));
        // §7.6
        let dev = &a["devices"][0];
        assert_eq!(a["devices"].as_array().unwrap().len(), 1);
        for (k, v) in [
            ("mdatpDeviceId", json!("m1")),
            ("aadDeviceId", json!("a1")),
            ("deviceDnsName", json!("w11.contoso.com")),
            ("osPlatform", json!("Windows11")),
            ("osBuild", json!(26200)),
            ("version", json!("25H2")),
            ("osProcessor", Value::Null),
            ("healthStatus", json!("ImpairedCommunication")),
            ("riskScore", json!("Informational")),
            ("rbacGroupId", json!(125)),
            ("rbacGroupName", json!("Clients")),
            ("firstSeen", json!("2025-08-18T11:09:18Z")),
            ("tags", json!(["Tier0"])),
            ("defenderAvStatus", json!("NotUpdated")),
            ("onboardingStatus", json!("CanBeOnboarded")),
            ("loggedOnUsers", json!([{"accountName": "u", "domainName": "D"}])),
            ("vmMetadata", json!({"cloudProvider": "azure", "vmId": "v"})),
        ] {
            assert_eq!(dev[k], v, "device {k}");
        }
        // §7.7: one entity per evidence type with a Defender counterpart, in order.
        let e = a["entities"].as_array().unwrap();
        let expected = [
            json!({"entityType": "User", "accountName": "adminlocal", "domainName": "W11", "userSid": "S-1-5-21", "aadUserId": "aad", "userPrincipalName": "u@contoso.com"}),
            json!({"entityType": "Ip", "ipAddress": "10.0.0.1"}),
            json!({"entityType": "Url", "url": "https://evil.test/x"}),
            json!({"entityType": "File", "sha1": "s1", "sha256": "s256", "fileName": "f.exe", "filePath": "C:\\t", "deviceId": "m1"}),
            json!({"entityType": "Process", "processId": 4780, "parentProcessId": 668, "processCommandLine": "\"MsSense.exe\"",
                   "processCreationTime": "2021-08-12T12:43:19.0772577Z", "parentProcessCreationTime": "2021-08-12T07:39:09.0909239Z",
                   "sha1": "p1", "sha256": "p256", "fileName": "MsSense.exe", "filePath": "C:\\P",
                   "accountName": "svc", "domainName": "NT", "userSid": "S-1-5-18", "deviceId": "m1"}),
            json!({"entityType": "MailBox", "mailboxDisplayName": "Megan", "mailboxAddress": "m@contoso.com", "userPrincipalName": "m@contoso.com", "aadUserId": "aad2"}),
            json!({"entityType": "MailMessage", "subject": "Invoice", "recipient": "m@contoso.com", "sender": "bad@evil.test", "deliveryAction": "Delivered"}),
            json!({"entityType": "MailCluster", "clusterBy": "Subject"}),
            json!({"entityType": "Registry", "registryHive": "HKEY_LOCAL_MACHINE", "registryKey": "SYSTEM\\X"}),
            json!({"entityType": "Registry", "registryHive": "HKEY_CURRENT_USER", "registryKey": "SOFTWARE\\Run", "registryValueType": "String", "registryValue": "C:\\a.exe", "deviceId": "m1"}),
            json!({"entityType": "SecurityGroup", "securityGroupId": "S-1-5-512", "securityGroupName": "Domain Admins"}),
        ];
        assert_eq!(e.len(), expected.len(), "cloudApplicationEvidence has no entity: {e:?}");
        for (got, want) in e.iter().zip(expected) {
            assert_eq!(*got, want);
        }
    }

    #[test]
    fn every_row_defender_to_graph_and_back() {
        let d = graph_to_defender(&graph_incident()).unwrap();
        let g = defender_to_graph(&d).unwrap();
        assert_eq!(g["id"], "924565");
        assert_eq!(g["redirectIncidentId"], "924570");
        assert_eq!(g["displayName"], "Multi-stage incident");
        assert_eq!(
            g["incidentWebUrl"],
            "https://security.microsoft.com/incidents/924565?tid=t"
        );
        assert_eq!(g["status"], "redirected");
        assert_eq!(g["severity"], "unknown");
        assert_eq!(g["determination"], "compromisedAccount");
        assert_eq!(g["customTags"], json!(["VIP"]));
        assert_eq!(g["comments"][0]["createdByDisplayName"], "a@b");
        let a = &g["alerts"][0];
        assert_eq!(a["incidentId"], "924565");
        assert_eq!(a["classification"], "unknown", "Defender null is Graph unknown");
        assert_eq!(a["categories"], json!(["InitialAccess"]));
        assert_eq!(a["actorDisplayName"], "Midnight Blizzard");
        let ev = a["evidence"].as_array().unwrap();
        // The device first, then the entities; cloudApplicationEvidence was dropped.
        assert_eq!(ev.len(), 12);
        let types: Vec<&str> = ev.iter().map(|e| e["@odata.type"].as_str().unwrap()).collect();
        assert_eq!(types[0], "#microsoft.graph.security.deviceEvidence");
        assert_eq!(types[9], "#microsoft.graph.security.registryKeyEvidence");
        assert_eq!(types[10], "#microsoft.graph.security.registryValueEvidence");
        for e in ev {
            assert_eq!(e["verdict"], "unknown");
            assert_eq!(e["remediationStatus"], "none");
            assert_eq!(e["roles"], json!([]));
            assert_eq!(e["createdDateTime"], "2026-01-22T12:09:22Z");
        }
        assert_eq!(ev[0]["mdeDeviceId"], "m1");
        assert_eq!(ev[0]["healthStatus"], "impairedCommunication");
        assert_eq!(ev[0]["tags"], json!(["Tier0"]));
        assert_eq!(ev[1]["userAccount"]["azureAdUserId"], "aad");
        assert_eq!(ev[5]["imageFile"]["fileName"], "MsSense.exe");
        assert_eq!(ev[6]["upn"], "m@contoso.com");
        assert_eq!(ev[6]["userAccount"]["userPrincipalName"], "m@contoso.com");
        assert_eq!(ev[7]["p1Sender"]["emailAddress"], "bad@evil.test");
        assert_eq!(ev[11]["displayName"], "Domain Admins");
        // And back: the Defender incident is unchanged.
        assert_eq!(graph_to_defender(&g).unwrap(), d);
        // Without $expand the alerts stay out.
        assert!(defender_to_graph_with(&d, false).unwrap().get("alerts").is_none());
    }

    #[test]
    fn defender_nulls_aliases_and_unknown_values() {
        let d = json!({
            "incidentId": 7, "incidentName": "n", "status": "Active", "severity": "Low",
            "classification": null, "determination": "InsufficientData", "tags": null, "comments": [],
            "alerts": [{"alertId": "a", "incidentId": 7, "status": "Active", "serviceSource": "MicrosoftDefenderATP",
                        "detectionSource": "SomethingNew", "classification": "Unknown", "determination": null,
                        "devices": [], "entities": [{"entityType": "Unheard"}, {"entityType": "Registry", "registryHive": "H", "registryKey": "K", "deviceId": "m"}]}],
        });
        let g = defender_to_graph(&d).unwrap();
        assert_eq!(g["classification"], "unknown");
        assert_eq!(g["determination"], "notEnoughDataToValidate");
        assert_eq!(g["customTags"], json!([]));
        let a = &g["alerts"][0];
        assert_eq!(a["status"], "new");
        assert_eq!(a["serviceSource"], "microsoftDefenderForEndpoint");
        assert_eq!(
            a["detectionSource"], "somethingNew",
            "unknown members pass through recased"
        );
        assert_eq!(a["determination"], "unknown");
        let ev = a["evidence"].as_array().unwrap();
        assert_eq!(ev.len(), 1, "an entity type without evidence is dropped");
        assert_eq!(ev[0]["@odata.type"], "#microsoft.graph.security.registryKeyEvidence");
        assert!(ev[0].get("mdeDeviceId").is_none());
        let back = graph_to_defender(&g).unwrap();
        assert_eq!(back["determination"], "NoEnoughDataToValidate");
        assert_eq!(back["alerts"][0]["classification"], Value::Null);
        let awaiting = json!({"id": "1", "status": "awaitingAction", "alerts": []});
        assert_eq!(graph_to_defender(&awaiting).unwrap()["status"], "AwaitingAction");
    }

    #[test]
    fn bad_documents_name_the_field() {
        for (g, field) in [
            (json!({"id": "abc"}), "id"),
            (json!({"id": "-5"}), "id"),
            (json!({"id": "1", "status": 5}), "status"),
            (json!({"id": "1", "alerts": {}}), "alerts"),
            (
                json!({"id": "1", "alerts": [{"incidentId": "x"}]}),
                "alerts[0].incidentId",
            ),
            (
                json!({"id": "1", "alerts": [{"evidence": [5]}]}),
                "alerts[0].evidence[0]",
            ),
            (json!({"id": "1", "comments": [1]}), "comments[0]"),
        ] {
            let e = graph_to_defender(&g).unwrap_err();
            assert_eq!(e.field(), Some(field), "{g}: {e}");
        }
        assert!(graph_to_defender(&json!([])).is_err());
        let e = defender_to_graph(&json!({"incidentId": 1, "alerts": [{"entities": [{}]}]})).unwrap_err();
        assert_eq!(e.field(), Some("alerts[0].entities[0].entityType"));
        assert!(matches!(graph_to_defender_bytes(b"{"), Err(TranslateError::Json(_))));
    }

    #[test]
    fn bytes_and_pages() {
        let g = graph_incident();
        let page = json!({"@odata.context": "c", "value": [g.clone(), g], "@odata.nextLink": "https://graph.microsoft.com/v1.0/security/incidents?$skip=2"});
        let (items, next) = graph_page_to_defender(page.to_string().as_bytes()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            next.as_deref(),
            Some("https://graph.microsoft.com/v1.0/security/incidents?$skip=2")
        );
        let body = defender_list_body(items.clone());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["@odata.context"], DEFENDER_LIST_CONTEXT);
        let one = graph_to_defender_bytes(graph_incident().to_string().as_bytes()).unwrap();
        assert_eq!(
            one,
            graph_to_defender_bytes(graph_incident().to_string().as_bytes()).unwrap(),
            "stable bytes"
        );
        let back = defender_to_graph_bytes(&one, false).unwrap();
        let v: Value = serde_json::from_slice(&back).unwrap();
        assert!(v["@odata.context"].as_str().unwrap().ends_with("$entity"));
        let graphs = defender_page_to_graph(&body, true).unwrap();
        assert_eq!(graphs.len(), 2);
        let list: Value =
            serde_json::from_slice(&graph_list_body(graphs, true, Some("http://p/next"), Some(9))).unwrap();
        assert_eq!(list["@odata.count"], 9);
        assert_eq!(list["@odata.nextLink"], "http://p/next");
        assert!(list["@odata.context"].as_str().unwrap().ends_with("(alerts())"));
    }
}
