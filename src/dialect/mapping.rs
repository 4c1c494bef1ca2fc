//! The README's mapping tables ("Moving to Graph without touching your tools") as tests: every
//! row is a case here, named by the row's first cell, and the README and these case lists must
//! name the same rows (parsed from the README itself, so the two cannot drift).
//!
//! * Defender-field rows (incident, comments, alerts, devices) and entity rows: a minimal Graph
//!   incident is translated with [`graph_to_defender`] and the field checked as the row says;
//!   where the row's note speaks of Graph callers over a Defender upstream, the same is checked
//!   through [`defender_to_graph`].
//! * Graph-only rows: a distinctive value put at that Graph path appears nowhere in the Defender
//!   translation, and a Graph caller over a Defender upstream gets what the last column says.
//! * The enum table is the code's ([`enums::ALL_TABLES`]), cell for cell.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::enums::{self, EnumTable};
use super::incident::{defender_to_graph, defender_to_graph_with, graph_to_defender, ENTITY_MAP, GRAPH_ONLY_FIELDS};

const README: &str = include_str!("../../README.md");
const SECTION: &str = "## Moving to Graph without touching your tools";
const GRAPH_TYPE: &str = "#microsoft.graph.security.";

// ----- the README's tables ----------------------------------------------------------------------

/// One Markdown table of the section: its header cells and its rows' cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn section() -> &'static str {
    let start = README.find(SECTION).expect("the README has the section");
    let rest = &README[start + SECTION.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

fn tables() -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    let mut in_table = false;
    for line in section().lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if line.starts_with("|---") {
            continue;
        }
        if in_table {
            if let Some(t) = out.last_mut() {
                t.rows.push(cells(line));
            }
        } else {
            out.push(Table {
                header: cells(line),
                rows: Vec::new(),
            });
            in_table = true;
        }
    }
    out
}

/// A row's names: its first cell split at ", ", backticks removed (`alerts[].status`,
/// `Registry (key)`, `alerts[].evidence[].tags (evidence other than deviceEvidence)`).
fn names(first_cell: &str) -> Vec<String> {
    first_cell
        .split(", ")
        .map(|s| s.replace('`', "").trim().to_string())
        .collect()
}

/// Every name of every row of the tables whose first header cell is `header`.
fn readme_names(header: &str) -> Vec<String> {
    let list: Vec<String> = tables()
        .iter()
        .filter(|t| t.header[0] == header)
        .flat_map(|t| t.rows.iter().flat_map(|r| names(&r[0])))
        .collect();
    assert!(!list.is_empty(), "the README has tables headed '{header}'");
    list
}

fn same_names(readme: &[String], cases: &[(&str, fn())], what: &str) {
    let readme_set: BTreeSet<&str> = readme.iter().map(String::as_str).collect();
    assert_eq!(readme_set.len(), readme.len(), "{what}: a README row is listed twice");
    let case_set: BTreeSet<&str> = cases.iter().map(|(n, _)| *n).collect();
    assert_eq!(case_set.len(), cases.len(), "{what}: a case is listed twice");
    let untested: Vec<_> = readme_set.difference(&case_set).collect();
    let undocumented: Vec<_> = case_set.difference(&readme_set).collect();
    assert!(
        untested.is_empty() && undocumented.is_empty(),
        "{what}: README rows without a test: {untested:?}; tests without a README row: {undocumented:?}"
    );
}

/// Runs every case, reporting all failing rows by name (each panic's own message is printed
/// as it happens).
fn run(cases: &[(&str, fn())]) {
    let failed: Vec<&str> = cases
        .iter()
        .filter(|(_, f)| std::panic::catch_unwind(*f).is_err())
        .map(|(n, _)| *n)
        .collect();
    assert!(failed.is_empty(), "README rows whose test failed: {failed:?}");
}

// ----- building and translating minimal incidents ----------------------------------------------

fn merged(base: Value, extra: Value) -> Value {
    let mut o = base.as_object().cloned().unwrap_or_default();
    o.extend(extra.as_object().cloned().unwrap_or_default());
    Value::Object(o)
}

/// A Graph incident with `fields` as the Defender dialect.
fn d(fields: Value) -> Value {
    graph_to_defender(&merged(json!({"id": "1"}), fields)).expect("translates")
}

/// A Graph alert with `fields`, as the Defender dialect's `alerts[0]`.
fn d_alert(fields: Value) -> Value {
    let alert = merged(json!({"id": "da1", "incidentId": "1"}), fields);
    d(json!({ "alerts": [alert] }))["alerts"][0].clone()
}

/// Graph evidence of `kind` (`deviceEvidence`, ...) with `fields`.
fn evidence(kind: &str, fields: Value) -> Value {
    merged(
        json!({"@odata.type": format!("{GRAPH_TYPE}{kind}"), "createdDateTime": "2026-01-22T12:09:22Z",
               "verdict": "suspicious", "remediationStatus": "none", "roles": [], "detailedRoles": [], "tags": []}),
        fields,
    )
}

/// A Graph `deviceEvidence` with `fields`, as the Defender dialect's `devices[0]`.
fn d_device(fields: Value) -> Value {
    let a = d_alert(json!({ "evidence": [evidence("deviceEvidence", fields)] }));
    assert_eq!(a["devices"].as_array().map(Vec::len), Some(1));
    a["devices"][0].clone()
}

/// Graph evidence of `kind` with `fields`, as the Defender dialect's entities.
fn d_entities(kind: &str, fields: Value) -> Vec<Value> {
    let a = d_alert(json!({ "evidence": [evidence(kind, fields)] }));
    a["entities"].as_array().cloned().unwrap_or_default()
}

/// A Defender incident with `fields` as the Graph dialect (alerts expanded).
fn g(fields: Value) -> Value {
    defender_to_graph(&merged(json!({"incidentId": 1}), fields)).expect("translates")
}

/// A Defender alert with `fields`, as the Graph dialect's `alerts[0]`.
fn g_alert(fields: Value) -> Value {
    let alert = merged(json!({"alertId": "da1", "incidentId": 1}), fields);
    g(json!({ "alerts": [alert] }))["alerts"][0].clone()
}

/// A Defender entity as Graph evidence (`None` when it has none).
fn g_entity(entity: Value) -> Option<Value> {
    let a = g_alert(json!({ "entities": [entity] }));
    a["evidence"].as_array().and_then(|e| e.first().cloned())
}

fn absent(o: &Value, key: &str) -> bool {
    o.as_object().is_some_and(|o| !o.contains_key(key))
}

// ----- the Defender-field rows -------------------------------------------------------------------

/// One case per row of the Defender-field tables (incident, comments, alerts, devices).
const DEFENDER_ROWS: &[(&str, fn())] = &[
    ("incidentId", || {
        assert_eq!(d(json!({"id": "924565"}))["incidentId"], json!(924565));
        let bad = graph_to_defender(&json!({"id": "INC-7"})).unwrap_err();
        assert_eq!(bad.field(), Some("id"));
        assert_eq!(g(json!({"incidentId": 924565}))["id"], json!("924565"));
    }),
    ("incidentUri", || {
        let url = "https://security.microsoft.com/incidents/924565?tid=t";
        assert_eq!(d(json!({ "incidentWebUrl": url }))["incidentUri"], json!(url));
    }),
    ("redirectIncidentId", || {
        assert_eq!(
            d(json!({"redirectIncidentId": "924570"}))["redirectIncidentId"],
            json!(924570)
        );
        assert_eq!(
            d(json!({"redirectIncidentId": null}))["redirectIncidentId"],
            Value::Null
        );
        assert_eq!(
            g(json!({"redirectIncidentId": 924570}))["redirectIncidentId"],
            json!("924570")
        );
    }),
    ("incidentName", || {
        assert_eq!(
            d(json!({"displayName": "Multi-stage"}))["incidentName"],
            json!("Multi-stage")
        );
    }),
    ("createdTime", || {
        let t = "2026-01-22T12:09:23.1433333Z";
        assert_eq!(d(json!({ "createdDateTime": t }))["createdTime"], json!(t));
    }),
    ("lastUpdateTime", || {
        let t = "2026-02-25T16:29:33.1Z";
        assert_eq!(
            d(json!({ "lastUpdateDateTime": t }))["lastUpdateTime"],
            json!(t),
            "not reformatted"
        );
    }),
    ("assignedTo", || {
        assert_eq!(
            d(json!({"assignedTo": "secop@contoso.com"}))["assignedTo"],
            json!("secop@contoso.com")
        );
        assert_eq!(d(json!({"assignedTo": null}))["assignedTo"], Value::Null);
    }),
    ("classification", || {
        assert_eq!(
            d(json!({"classification": "truePositive"}))["classification"],
            json!("TruePositive")
        );
        assert_eq!(
            d(json!({"classification": "unknown"}))["classification"],
            json!("Unknown")
        );
        assert_eq!(d(json!({"classification": null}))["classification"], Value::Null);
        assert_eq!(g(json!({"classification": null}))["classification"], json!("unknown"));
    }),
    ("determination", || {
        for (graph, defender) in [
            ("unknown", "NotAvailable"),
            ("notMalicious", "Clean"),
            ("notEnoughDataToValidate", "NoEnoughDataToValidate"),
            ("compromisedAccount", "CompromisedAccount"),
            ("confirmedActivity", "ConfirmedActivity"),
            ("compromisedUser", "CompromisedAccount"),
        ] {
            assert_eq!(
                d(json!({ "determination": graph }))["determination"],
                json!(defender),
                "{graph}"
            );
        }
        assert_eq!(d(json!({"determination": null}))["determination"], Value::Null);
        assert_eq!(g(json!({"determination": null}))["determination"], json!("unknown"));
    }),
    ("detectionSource", || {
        let alerts =
            json!([{"id": "a", "detectionSource": "cloudAppSecurity"}, {"id": "b", "detectionSource": "antivirus"}]);
        assert_eq!(
            d(json!({ "alerts": alerts }))["detectionSource"],
            json!("MCAS"),
            "the first alert's"
        );
        assert_eq!(d(json!({"alerts": []}))["detectionSource"], Value::Null);
        let graph = g(json!({"detectionSource": "WindowsDefenderAv", "alerts": []}));
        assert!(
            !graph.to_string().contains("WindowsDefenderAv"),
            "Graph callers do not see it"
        );
    }),
    ("status", || {
        for (graph, defender) in [
            ("active", "Active"),
            ("inProgress", "InProgress"),
            ("resolved", "Resolved"),
            ("redirected", "Redirected"),
            ("awaitingAction", "AwaitingAction"),
            ("unknownFutureValue", "UnknownFutureValue"),
        ] {
            assert_eq!(d(json!({ "status": graph }))["status"], json!(defender), "{graph}");
        }
    }),
    ("severity", || {
        assert_eq!(d(json!({"severity": "unknown"}))["severity"], json!("UnSpecified"));
        assert_eq!(d(json!({"severity": "high"}))["severity"], json!("High"));
        assert_eq!(g(json!({"severity": "UnSpecified"}))["severity"], json!("unknown"));
    }),
    ("tags", || {
        let v = d(json!({"customTags": ["VIP"], "systemTags": ["Defender Experts"]}));
        assert_eq!(v["tags"], json!(["VIP"]), "customTags only");
        assert_eq!(d(json!({"customTags": null}))["tags"], json!([]));
        assert_eq!(g(json!({"tags": ["VIP"]}))["customTags"], json!(["VIP"]));
    }),
    ("comments", || {
        let c = json!([{"comment": "a", "createdByDisplayName": "x", "createdDateTime": "2026-01-01T00:00:00Z"}]);
        assert_eq!(
            d(json!({ "comments": c }))["comments"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(d(json!({"comments": null}))["comments"], json!([]));
    }),
    ("alerts", || {
        assert_eq!(d(json!({}))["alerts"], json!([]), "always present");
        assert_eq!(
            d(json!({"alerts": [{"id": "a"}, {"id": "b"}]}))["alerts"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert!(defender_to_graph_with(&json!({"incidentId": 1, "alerts": []}), false)
            .unwrap()
            .get("alerts")
            .is_none());
    }),
    // Comments.
    ("comments[].comment", || {
        let v = d(json!({"comments": [{"comment": "looked at it"}]}));
        assert_eq!(v["comments"][0]["comment"], json!("looked at it"));
    }),
    ("comments[].createdBy", || {
        let v = d(json!({"comments": [{"createdByDisplayName": "a@contoso.com"}]}));
        assert_eq!(v["comments"][0]["createdBy"], json!("a@contoso.com"));
        let back = g(json!({"comments": [{"createdBy": "a@contoso.com"}]}));
        assert_eq!(back["comments"][0]["createdByDisplayName"], json!("a@contoso.com"));
    }),
    ("comments[].createdTime", || {
        let v = d(json!({"comments": [{"createdDateTime": "2026-01-22T12:10:00Z"}]}));
        assert_eq!(v["comments"][0]["createdTime"], json!("2026-01-22T12:10:00Z"));
    }),
    // Alerts.
    ("alerts[].alertId", || {
        let id = "da637551227677560813_-961444813";
        assert_eq!(d_alert(json!({ "id": id }))["alertId"], json!(id));
    }),
    ("alerts[].incidentId", || {
        assert_eq!(d_alert(json!({"incidentId": "924565"}))["incidentId"], json!(924565));
        assert_eq!(g_alert(json!({"incidentId": 924565}))["incidentId"], json!("924565"));
    }),
    ("alerts[].serviceSource", || {
        for (graph, defender) in [
            ("microsoftDefenderForEndpoint", "MicrosoftDefenderForEndpoint"),
            ("microsoftDefenderForCloudApps", "MicrosoftCloudAppSecurity"),
            ("microsoftThreatIntelligence", "MicrosoftThreatIntelligence"),
        ] {
            assert_eq!(
                d_alert(json!({ "serviceSource": graph }))["serviceSource"],
                json!(defender),
                "{graph}"
            );
        }
        assert_eq!(
            g_alert(json!({"serviceSource": "MicrosoftDefenderATP"}))["serviceSource"],
            json!("microsoftDefenderForEndpoint")
        );
        assert_eq!(
            g_alert(json!({"serviceSource": "OfficeATP"}))["serviceSource"],
            json!("microsoftDefenderForOffice365")
        );
    }),
    ("alerts[].creationTime", || {
        let t = "2026-01-22T12:09:22Z";
        assert_eq!(d_alert(json!({ "createdDateTime": t }))["creationTime"], json!(t));
    }),
    ("alerts[].lastUpdatedTime", || {
        let t = "2026-01-22T12:20:00Z";
        assert_eq!(d_alert(json!({ "lastUpdateDateTime": t }))["lastUpdatedTime"], json!(t));
    }),
    ("alerts[].resolvedTime", || {
        let t = "2026-01-23T00:00:00Z";
        assert_eq!(d_alert(json!({ "resolvedDateTime": t }))["resolvedTime"], json!(t));
        assert_eq!(d_alert(json!({"resolvedDateTime": null}))["resolvedTime"], Value::Null);
    }),
    ("alerts[].firstActivity", || {
        let t = "2026-01-22T11:00:00Z";
        assert_eq!(
            d_alert(json!({ "firstActivityDateTime": t }))["firstActivity"],
            json!(t)
        );
    }),
    ("alerts[].lastActivity", || {
        let t = "2026-01-22T12:00:00Z";
        assert_eq!(d_alert(json!({ "lastActivityDateTime": t }))["lastActivity"], json!(t));
    }),
    ("alerts[].title", || {
        assert_eq!(
            d_alert(json!({"title": "Impossible travel"}))["title"],
            json!("Impossible travel")
        );
    }),
    ("alerts[].description", || {
        assert_eq!(d_alert(json!({"description": "d"}))["description"], json!("d"));
    }),
    ("alerts[].category", || {
        let both = d_alert(json!({"category": "Malware", "categories": ["Impact", "Execution"]}));
        assert_eq!(both["category"], json!("Malware"), "category first");
        let only = d_alert(json!({"category": null, "categories": ["Impact", "Execution"]}));
        assert_eq!(only["category"], json!("Impact"), "else the first of categories");
        assert_eq!(
            g_alert(json!({"category": "Malware"}))["categories"],
            json!(["Malware"])
        );
    }),
    ("alerts[].status", || {
        for (graph, defender) in [
            ("new", "New"),
            ("inProgress", "InProgress"),
            ("resolved", "Resolved"),
            ("unknown", "Unknown"),
        ] {
            assert_eq!(
                d_alert(json!({ "status": graph }))["status"],
                json!(defender),
                "{graph}"
            );
        }
        assert_eq!(g_alert(json!({"status": "Active"}))["status"], json!("new"));
    }),
    ("alerts[].severity", || {
        assert_eq!(
            d_alert(json!({"severity": "unknown"}))["severity"],
            json!("UnSpecified")
        );
        assert_eq!(d_alert(json!({"severity": "medium"}))["severity"], json!("Medium"));
    }),
    ("alerts[].investigationId", || {
        assert_eq!(
            d_alert(json!({"investigationId": 5}))["investigationId"],
            Value::Null,
            "always null"
        );
        assert!(absent(&g_alert(json!({"investigationId": 5})), "investigationId"));
    }),
    ("alerts[].investigationState", || {
        let v = d_alert(json!({"investigationState": "unsupportedAlertType"}));
        assert_eq!(v["investigationState"], json!("UnsupportedAlertType"));
    }),
    ("alerts[].classification", || {
        assert_eq!(
            d_alert(json!({"classification": "unknown"}))["classification"],
            Value::Null
        );
        assert_eq!(
            d_alert(json!({"classification": "falsePositive"}))["classification"],
            json!("FalsePositive")
        );
        assert_eq!(
            g_alert(json!({"classification": null}))["classification"],
            json!("unknown")
        );
        let round = g(json!({"alerts": [{"classification": "Unknown"}]}));
        assert_eq!(
            graph_to_defender(&round).unwrap()["alerts"][0]["classification"],
            Value::Null
        );
    }),
    ("alerts[].determination", || {
        assert_eq!(
            d_alert(json!({"determination": "unknown"}))["determination"],
            Value::Null
        );
        assert_eq!(
            d_alert(json!({"determination": "notMalicious"}))["determination"],
            json!("Clean")
        );
        assert_eq!(
            g_alert(json!({"determination": null}))["determination"],
            json!("unknown")
        );
        assert_eq!(
            g_alert(json!({"determination": "NotAvailable"}))["determination"],
            json!("unknown")
        );
    }),
    ("alerts[].detectionSource", || {
        for (graph, defender) in [
            ("cloudAppSecurity", "MCAS"),
            ("antivirus", "WindowsDefenderAv"),
            ("microsoftDefenderForEndpoint", "WindowsDefenderAtp"),
            ("microsoftDefenderForServers", "MicrosoftDefenderForServers"),
        ] {
            assert_eq!(
                d_alert(json!({ "detectionSource": graph }))["detectionSource"],
                json!(defender),
                "{graph}"
            );
        }
    }),
    ("alerts[].assignedTo", || {
        assert_eq!(
            d_alert(json!({"assignedTo": "Automation"}))["assignedTo"],
            json!("Automation")
        );
    }),
    ("alerts[].actorName", || {
        let v = d_alert(json!({"actorDisplayName": "Midnight Blizzard"}));
        assert_eq!(v["actorName"], json!("Midnight Blizzard"));
        assert_eq!(g_alert(json!({"actorName": "M"}))["actorDisplayName"], json!("M"));
    }),
    ("alerts[].threatFamilyName", || {
        assert_eq!(
            d_alert(json!({"threatFamilyName": "Emotet"}))["threatFamilyName"],
            json!("Emotet")
        );
    }),
    ("alerts[].mitreTechniques", || {
        assert_eq!(
            d_alert(json!({"mitreTechniques": ["T1078"]}))["mitreTechniques"],
            json!(["T1078"])
        );
        assert_eq!(d_alert(json!({"mitreTechniques": null}))["mitreTechniques"], json!([]));
    }),
    ("alerts[].devices", || {
        let a = d_alert(json!({"evidence": [
            evidence("ipEvidence", json!({"ipAddress": "10.0.0.1"})),
            evidence("deviceEvidence", json!({"mdeDeviceId": "m1"})),
            evidence("deviceEvidence", json!({"mdeDeviceId": "m2"})),
        ]}));
        let ids: Vec<&Value> = a["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| &x["mdatpDeviceId"])
            .collect();
        assert_eq!(ids, [&json!("m1"), &json!("m2")], "device evidence only, in order");
        let back = g_alert(
            json!({"devices": [{"mdatpDeviceId": "m1"}], "entities": [{"entityType": "Ip", "ipAddress": "10.0.0.1"}]}),
        );
        let types: Vec<&str> = back["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["@odata.type"].as_str())
            .collect();
        assert_eq!(
            types,
            [format!("{GRAPH_TYPE}deviceEvidence"), format!("{GRAPH_TYPE}ipEvidence")],
            "devices first"
        );
    }),
    ("alerts[].entities", || {
        let a = d_alert(json!({"evidence": [
            evidence("urlEvidence", json!({"url": "https://evil.test"})),
            evidence("cloudApplicationEvidence", json!({"appId": 1, "displayName": "app"})),
            evidence("oauthApplicationEvidence", json!({"appId": "x"})),
            evidence("ipEvidence", json!({"ipAddress": "10.0.0.1"})),
        ]}));
        let types: Vec<&Value> = a["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| &x["entityType"])
            .collect();
        assert_eq!(
            types,
            [&json!("Url"), &json!("Ip")],
            "in order, types without an entity left out"
        );
        assert_eq!(
            g_entity(json!({"entityType": "Unheard"})),
            None,
            "no evidence for it: left out"
        );
    }),
    // Devices.
    ("alerts[].devices[].mdatpDeviceId", || {
        assert_eq!(d_device(json!({"mdeDeviceId": "m1"}))["mdatpDeviceId"], json!("m1"));
    }),
    ("alerts[].devices[].aadDeviceId", || {
        assert_eq!(d_device(json!({"azureAdDeviceId": "a1"}))["aadDeviceId"], json!("a1"));
    }),
    ("alerts[].devices[].deviceDnsName", || {
        assert_eq!(
            d_device(json!({"deviceDnsName": "w11.contoso.com"}))["deviceDnsName"],
            json!("w11.contoso.com")
        );
    }),
    ("alerts[].devices[].osPlatform", || {
        assert_eq!(
            d_device(json!({"osPlatform": "Windows11"}))["osPlatform"],
            json!("Windows11")
        );
    }),
    ("alerts[].devices[].version", || {
        assert_eq!(d_device(json!({"version": "25H2"}))["version"], json!("25H2"));
    }),
    ("alerts[].devices[].osProcessor", || {
        assert_eq!(
            d_device(json!({"osProcessor": "x64"}))["osProcessor"],
            Value::Null,
            "always null"
        );
        let back = g_alert(json!({"devices": [{"osProcessor": "x64"}]}));
        assert!(!back.to_string().contains("x64"), "Graph callers do not see it");
    }),
    ("alerts[].devices[].osBuild", || {
        assert_eq!(d_device(json!({"osBuild": 26200}))["osBuild"], json!(26200));
    }),
    ("alerts[].devices[].healthStatus", || {
        let v = d_device(json!({"healthStatus": "impairedCommunication"}));
        assert_eq!(v["healthStatus"], json!("ImpairedCommunication"));
    }),
    ("alerts[].devices[].riskScore", || {
        assert_eq!(d_device(json!({"riskScore": "none"}))["riskScore"], json!("None"));
        assert_eq!(d_device(json!({"riskScore": "high"}))["riskScore"], json!("High"));
    }),
    ("alerts[].devices[].rbacGroupName", || {
        assert_eq!(
            d_device(json!({"rbacGroupName": "Clients"}))["rbacGroupName"],
            json!("Clients")
        );
    }),
    ("alerts[].devices[].rbacGroupId", || {
        assert_eq!(d_device(json!({"rbacGroupId": 125}))["rbacGroupId"], json!(125));
    }),
    ("alerts[].devices[].firstSeen", || {
        let t = "2025-08-18T11:09:18.5092327Z";
        assert_eq!(d_device(json!({ "firstSeenDateTime": t }))["firstSeen"], json!(t));
    }),
    ("alerts[].devices[].tags", || {
        assert_eq!(d_device(json!({"tags": ["Tier0"]}))["tags"], json!(["Tier0"]));
        assert_eq!(d_device(json!({"tags": null}))["tags"], json!([]));
    }),
    ("alerts[].devices[].defenderAvStatus", || {
        assert_eq!(
            d_device(json!({"defenderAvStatus": "notUpdated"}))["defenderAvStatus"],
            json!("NotUpdated")
        );
    }),
    ("alerts[].devices[].onboardingStatus", || {
        let v = d_device(json!({"onboardingStatus": "canBeOnboarded"}));
        assert_eq!(v["onboardingStatus"], json!("CanBeOnboarded"));
    }),
    ("alerts[].devices[].loggedOnUsers", || {
        let users = json!([{"accountName": "u", "domainName": "D"}]);
        assert_eq!(
            d_device(json!({ "loggedOnUsers": users.clone() }))["loggedOnUsers"],
            users
        );
        assert_eq!(d_device(json!({"loggedOnUsers": null}))["loggedOnUsers"], json!([]));
    }),
    ("alerts[].devices[].vmMetadata", || {
        let vm = json!({"cloudProvider": "azure", "vmId": "v", "resourceId": null, "subscriptionId": "s"});
        assert_eq!(d_device(json!({ "vmMetadata": vm.clone() }))["vmMetadata"], vm);
        assert!(absent(&d_device(json!({"vmMetadata": null})), "vmMetadata"));
        assert!(absent(&d_device(json!({})), "vmMetadata"));
    }),
];

// ----- the entity rows -----------------------------------------------------------------------------

/// One case per row of the entity table, named by its first cell.
const ENTITY_ROWS: &[(&str, fn())] = &[
    ("User", || {
        let e = d_entities(
            "userEvidence",
            json!({"userAccount": {"accountName": "adminlocal", "domainName": "W11", "userSid": "S-1-5-21",
                   "azureAdUserId": "aad", "userPrincipalName": "u@contoso.com", "displayName": "U"}}),
        );
        let want = json!({"entityType": "User", "accountName": "adminlocal", "domainName": "W11", "userSid": "S-1-5-21",
                          "aadUserId": "aad", "userPrincipalName": "u@contoso.com"});
        assert_eq!(e, [want]);
        // Only fields with a value.
        let sparse = d_entities(
            "userEvidence",
            json!({"userAccount": {"accountName": "a", "userSid": null}}),
        );
        assert_eq!(sparse, [json!({"entityType": "User", "accountName": "a"})]);
        let back = g_entity(json!({"entityType": "User", "aadUserId": "aad"})).unwrap();
        assert_eq!(back["userAccount"]["azureAdUserId"], json!("aad"));
    }),
    ("Ip", || {
        let e = d_entities("ipEvidence", json!({"ipAddress": "10.0.0.1"}));
        assert_eq!(e, [json!({"entityType": "Ip", "ipAddress": "10.0.0.1"})]);
    }),
    ("Url", || {
        let e = d_entities("urlEvidence", json!({"url": "https://evil.test/x"}));
        assert_eq!(e, [json!({"entityType": "Url", "url": "https://evil.test/x"})]);
    }),
    ("File", || {
        let e = d_entities(
            "fileEvidence",
            json!({"mdeDeviceId": "m1", "fileDetails": {"sha1": "s1", "sha256": "s256", "fileName": "f.exe", "filePath": "C:\\t"}}),
        );
        let want = json!({"entityType": "File", "sha1": "s1", "sha256": "s256", "fileName": "f.exe", "filePath": "C:\\t", "deviceId": "m1"});
        assert_eq!(e, [want]);
    }),
    ("Process", || {
        let e = d_entities(
            "processEvidence",
            json!({"processId": 4780, "parentProcessId": 668, "processCommandLine": "\"MsSense.exe\"",
                   "processCreationDateTime": "2021-08-12T12:43:19.0772577Z", "parentProcessCreationDateTime": "2021-08-12T07:39:09.0909239Z",
                   "mdeDeviceId": "m1", "imageFile": {"sha1": "p1", "sha256": "p256", "fileName": "MsSense.exe", "filePath": "C:\\P"},
                   "userAccount": {"accountName": "svc", "domainName": "NT", "userSid": "S-1-5-18"}}),
        );
        let want = json!({"entityType": "Process", "processId": 4780, "parentProcessId": 668, "processCommandLine": "\"MsSense.exe\"",
                          "processCreationTime": "2021-08-12T12:43:19.0772577Z", "parentProcessCreationTime": "2021-08-12T07:39:09.0909239Z",
                          "sha1": "p1", "sha256": "p256", "fileName": "MsSense.exe", "filePath": "C:\\P",
                          "accountName": "svc", "domainName": "NT", "userSid": "S-1-5-18", "deviceId": "m1"});
        assert_eq!(e, [want]);
    }),
    ("MailBox", || {
        let e = d_entities(
            "mailboxEvidence",
            json!({"displayName": "Megan", "primaryAddress": "m@contoso.com", "upn": "m@contoso.com",
                   "userAccount": {"azureAdUserId": "aad2", "userPrincipalName": "other@contoso.com"}}),
        );
        let want = json!({"entityType": "MailBox", "mailboxDisplayName": "Megan", "mailboxAddress": "m@contoso.com",
                          "userPrincipalName": "m@contoso.com", "aadUserId": "aad2"});
        assert_eq!(e, [want], "upn first");
        let fallback = d_entities(
            "mailboxEvidence",
            json!({"userAccount": {"userPrincipalName": "u@contoso.com"}}),
        );
        assert_eq!(
            fallback[0]["userPrincipalName"],
            json!("u@contoso.com"),
            "else userAccount's"
        );
        let back = g_entity(json!({"entityType": "MailBox", "userPrincipalName": "u@contoso.com"})).unwrap();
        assert_eq!(back["upn"], json!("u@contoso.com"));
        assert_eq!(
            back["userAccount"]["userPrincipalName"],
            json!("u@contoso.com"),
            "in both"
        );
    }),
    ("MailMessage", || {
        let e = d_entities(
            "analyzedMessageEvidence",
            json!({"subject": "Invoice", "recipientEmailAddress": "m@contoso.com", "deliveryAction": "Delivered",
                   "p1Sender": {"emailAddress": "p1@evil.test"}, "p2Sender": {"emailAddress": "p2@evil.test"}}),
        );
        let want = json!({"entityType": "MailMessage", "subject": "Invoice", "recipient": "m@contoso.com",
                          "sender": "p1@evil.test", "deliveryAction": "Delivered"});
        assert_eq!(e, [want], "P1 first");
        let p2 = d_entities(
            "analyzedMessageEvidence",
            json!({"p1Sender": null, "p2Sender": {"emailAddress": "p2@evil.test"}}),
        );
        assert_eq!(p2[0]["sender"], json!("p2@evil.test"), "else P2");
        let back = g_entity(json!({"entityType": "MailMessage", "sender": "s@evil.test"})).unwrap();
        assert_eq!(back["p1Sender"]["emailAddress"], json!("s@evil.test"));
        assert!(absent(&back, "p2Sender"));
    }),
    ("MailCluster", || {
        let e = d_entities("mailClusterEvidence", json!({"clusterBy": "Subject"}));
        assert_eq!(e, [json!({"entityType": "MailCluster", "clusterBy": "Subject"})]);
    }),
    ("Registry (key)", || {
        let e = d_entities(
            "registryKeyEvidence",
            json!({"registryHive": "HKEY_LOCAL_MACHINE", "registryKey": "SYSTEM\\X"}),
        );
        let want = json!({"entityType": "Registry", "registryHive": "HKEY_LOCAL_MACHINE", "registryKey": "SYSTEM\\X"});
        assert_eq!(e, [want]);
        let back =
            g_entity(json!({"entityType": "Registry", "registryHive": "H", "registryKey": "K", "deviceId": "m1"}))
                .unwrap();
        assert_eq!(back["@odata.type"], json!(format!("{GRAPH_TYPE}registryKeyEvidence")));
        assert!(!back.to_string().contains("m1"), "a key entity's deviceId is lost");
    }),
    ("Registry (value)", || {
        let e = d_entities(
            "registryValueEvidence",
            json!({"registryHive": "HKEY_CURRENT_USER", "registryKey": "SOFTWARE\\Run", "registryValueType": "String",
                   "registryValue": "C:\\a.exe", "mdeDeviceId": "m1"}),
        );
        let want = json!({"entityType": "Registry", "registryHive": "HKEY_CURRENT_USER", "registryKey": "SOFTWARE\\Run",
                          "registryValueType": "String", "registryValue": "C:\\a.exe", "deviceId": "m1"});
        assert_eq!(e, [want]);
        for value in [json!({"registryValue": "v"}), json!({"registryValueType": "String"})] {
            let back = g_entity(merged(json!({"entityType": "Registry", "deviceId": "m1"}), value)).unwrap();
            assert_eq!(back["@odata.type"], json!(format!("{GRAPH_TYPE}registryValueEvidence")));
            assert_eq!(back["mdeDeviceId"], json!("m1"));
        }
    }),
    ("SecurityGroup", || {
        let e = d_entities(
            "securityGroupEvidence",
            json!({"securityGroupId": "S-1-5-512", "displayName": "Domain Admins"}),
        );
        let want = json!({"entityType": "SecurityGroup", "securityGroupId": "S-1-5-512", "securityGroupName": "Domain Admins"});
        assert_eq!(e, [want]);
    }),
];

// ----- the Graph-only rows -----------------------------------------------------------------------

/// A value no translation invents.
const SENTINEL: &str = "graph-only-7f3a";

/// What a Graph caller over a Defender upstream gets at a Graph-only path.
#[derive(Debug, Clone, Copy)]
enum Over {
    Null,
    Empty,
    Is(&'static str),
    Absent,
}

/// A minimal Graph evidence of `kind` that yields a Defender device or entity, and the
/// Defender device (`true`) or entity it corresponds to.
fn kind_pair(kind: &str) -> (Value, bool, Value) {
    let (graph, defender) = match kind {
        "deviceEvidence" => (json!({"mdeDeviceId": "m1"}), json!({"mdatpDeviceId": "m1"})),
        "userEvidence" => (
            json!({"userAccount": {"accountName": "a"}}),
            json!({"entityType": "User", "accountName": "a"}),
        ),
        "ipEvidence" => (
            json!({"ipAddress": "10.0.0.1"}),
            json!({"entityType": "Ip", "ipAddress": "10.0.0.1"}),
        ),
        "fileEvidence" => (
            json!({"fileDetails": {"sha1": "s1"}}),
            json!({"entityType": "File", "sha1": "s1"}),
        ),
        "processEvidence" => (
            json!({"processId": 1, "imageFile": {"sha1": "s1"}, "userAccount": {"accountName": "a"}}),
            json!({"entityType": "Process", "processId": 1, "sha1": "s1", "accountName": "a"}),
        ),
        "mailboxEvidence" => (
            json!({"primaryAddress": "m@contoso.com", "userAccount": {"azureAdUserId": "aad"}}),
            json!({"entityType": "MailBox", "mailboxAddress": "m@contoso.com", "aadUserId": "aad"}),
        ),
        "analyzedMessageEvidence" => (
            json!({"subject": "s", "p1Sender": {"emailAddress": "p1@evil.test"}}),
            json!({"entityType": "MailMessage", "subject": "s", "sender": "p1@evil.test"}),
        ),
        "mailClusterEvidence" => (
            json!({"clusterBy": "Subject"}),
            json!({"entityType": "MailCluster", "clusterBy": "Subject"}),
        ),
        "registryValueEvidence" => (
            json!({"registryKey": "K", "registryValue": "v"}),
            json!({"entityType": "Registry", "registryKey": "K", "registryValue": "v"}),
        ),
        "securityGroupEvidence" => (
            json!({"securityGroupId": "S-1"}),
            json!({"entityType": "SecurityGroup", "securityGroupId": "S-1"}),
        ),
        other => panic!("no pair for {other}"),
    };
    (graph, kind == "deviceEvidence", defender)
}

/// Sets `dotted` (`a.b`) in `o`, creating objects on the way.
fn set(o: &mut Value, dotted: &str, v: Value) {
    let mut cur = o;
    let mut keys = dotted.split('.').peekable();
    while let Some(k) = keys.next() {
        let map = cur.as_object_mut().expect("an object");
        if keys.peek().is_none() {
            map.insert(k.into(), v);
            return;
        }
        cur = map.entry(k).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn lookup<'a>(o: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(o, |cur, k| cur.get(k))
}

fn check_over(got: Option<&Value>, over: Over, path: &str) {
    match over {
        Over::Absent => assert!(got.is_none(), "{path}: expected absent, got {got:?}"),
        Over::Null => assert_eq!(got, Some(&Value::Null), "{path}"),
        Over::Empty => assert_eq!(got, Some(&json!([])), "{path}"),
        Over::Is(s) => assert_eq!(got, Some(&json!(s)), "{path}"),
    }
}

/// The Graph-only row `path`: a sentinel there (on evidence of each of `kinds`, for an evidence
/// path) never reaches the Defender translation, and a Graph caller over a Defender upstream
/// gets `over` there.
fn hidden(path: &str, kinds: &[&str], over: Over) {
    if let Some(rel) = path.strip_prefix("alerts[].evidence[].") {
        assert!(!kinds.is_empty(), "{path}: evidence kinds");
        for kind in kinds {
            let (mut ev, is_device, defender) = kind_pair(kind);
            set(&mut ev, rel, json!(SENTINEL));
            let a = d_alert(json!({ "evidence": [evidence(kind, ev)] }));
            let produced = a["devices"].as_array().map_or(0, Vec::len) + a["entities"].as_array().map_or(0, Vec::len);
            assert_eq!(produced, 1, "{path} on {kind}: the evidence was translated");
            assert!(
                !a.to_string().contains(SENTINEL),
                "{path} on {kind}: visible to Defender callers: {a}"
            );
            let alert = if is_device {
                json!({ "devices": [defender] })
            } else {
                json!({ "entities": [defender] })
            };
            let back = g_alert(alert);
            let ev = &back["evidence"][0];
            assert_eq!(ev["@odata.type"], json!(format!("{GRAPH_TYPE}{kind}")), "{path}");
            check_over(lookup(ev, rel), over, &format!("{path} on {kind}"));
        }
    } else if let Some(rel) = path.strip_prefix("alerts[].") {
        let mut alert = json!({"id": "da1"});
        set(&mut alert, rel, json!(SENTINEL));
        let v = d(json!({ "alerts": [alert] }));
        assert!(
            !v.to_string().contains(SENTINEL),
            "{path}: visible to Defender callers: {v}"
        );
        check_over(lookup(&g_alert(json!({})), rel), over, path);
    } else {
        let mut inc = json!({"id": "1"});
        set(&mut inc, path, json!(SENTINEL));
        let v = graph_to_defender(&inc).unwrap();
        assert!(
            !v.to_string().contains(SENTINEL),
            "{path}: visible to Defender callers: {v}"
        );
        check_over(lookup(&g(json!({})), path), over, path);
    }
}

const ENTITY_KINDS: [&str; 9] = [
    "userEvidence",
    "ipEvidence",
    "fileEvidence",
    "processEvidence",
    "mailboxEvidence",
    "analyzedMessageEvidence",
    "mailClusterEvidence",
    "registryValueEvidence",
    "securityGroupEvidence",
];

/// One case per name in the Graph-only table's first column.
const GRAPH_ONLY_ROWS: &[(&str, fn())] = &[
    ("tenantId", || hidden("tenantId", &[], Over::Null)),
    ("description", || hidden("description", &[], Over::Null)),
    ("summary", || hidden("summary", &[], Over::Null)),
    ("lastModifiedBy", || hidden("lastModifiedBy", &[], Over::Null)),
    ("resolvingComment", || hidden("resolvingComment", &[], Over::Null)),
    ("priorityScore", || hidden("priorityScore", &[], Over::Null)),
    ("systemTags", || hidden("systemTags", &[], Over::Empty)),
    ("alerts[].providerAlertId", || hidden("alerts[].providerAlertId", &[], Over::Null)),
    ("alerts[].alertWebUrl", || hidden("alerts[].alertWebUrl", &[], Over::Null)),
    ("alerts[].incidentWebUrl", || hidden("alerts[].incidentWebUrl", &[], Over::Null)),
    ("alerts[].threatDisplayName", || hidden("alerts[].threatDisplayName", &[], Over::Null)),
    ("alerts[].recommendedActions", || hidden("alerts[].recommendedActions", &[], Over::Null)),
    ("alerts[].tenantId", || hidden("alerts[].tenantId", &[], Over::Null)),
    ("alerts[].additionalData", || hidden("alerts[].additionalData", &[], Over::Null)),
    ("alerts[].customDetails", || hidden("alerts[].customDetails", &[], Over::Null)),
    ("alerts[].alertPolicyId", || hidden("alerts[].alertPolicyId", &[], Over::Null)),
    ("alerts[].productName", || hidden("alerts[].productName", &[], Over::Null)),
    ("alerts[].detectorId", || hidden("alerts[].detectorId", &[], Over::Null)),
    ("alerts[].comments", || hidden("alerts[].comments", &[], Over::Empty)),
    ("alerts[].systemTags", || hidden("alerts[].systemTags", &[], Over::Empty)),
    ("alerts[].categories", || {
        let a = d_alert(json!({"category": "Malware", "categories": ["Malware", SENTINEL]}));
        assert_eq!(a["category"], json!("Malware"));
        assert!(!a.to_string().contains(SENTINEL), "further categories are lost");
        assert_eq!(g_alert(json!({"category": "Malware"}))["categories"], json!(["Malware"]));
        assert_eq!(g_alert(json!({"category": null}))["categories"], json!([]));
    }),
    ("alerts[].evidence[].verdict", || {
        hidden("alerts[].evidence[].verdict", &ENTITY_KINDS, Over::Is("unknown"));
        hidden("alerts[].evidence[].verdict", &["deviceEvidence"], Over::Is("unknown"));
    }),
    ("alerts[].evidence[].remediationStatus", || {
        hidden("alerts[].evidence[].remediationStatus", &ENTITY_KINDS, Over::Is("none"));
        hidden("alerts[].evidence[].remediationStatus", &["deviceEvidence"], Over::Is("none"));
    }),
    ("alerts[].evidence[].remediationStatusDetails", || {
        hidden("alerts[].evidence[].remediationStatusDetails", &ENTITY_KINDS, Over::Null);
        hidden("alerts[].evidence[].remediationStatusDetails", &["deviceEvidence"], Over::Null);
    }),
    ("alerts[].evidence[].roles", || {
        hidden("alerts[].evidence[].roles", &ENTITY_KINDS, Over::Empty);
        hidden("alerts[].evidence[].roles", &["deviceEvidence"], Over::Empty);
    }),
    ("alerts[].evidence[].detailedRoles", || {
        hidden("alerts[].evidence[].detailedRoles", &ENTITY_KINDS, Over::Empty);
        hidden("alerts[].evidence[].detailedRoles", &["deviceEvidence"], Over::Empty);
    }),
    ("alerts[].evidence[].createdDateTime", || {
        let ev = evidence("ipEvidence", json!({"ipAddress": "10.0.0.1", "createdDateTime": SENTINEL}));
        let a = d_alert(json!({"createdDateTime": "2026-01-22T12:09:22Z", "evidence": [ev]}));
        assert!(!a.to_string().contains(SENTINEL), "not visible to Defender callers");
        let back = g_alert(json!({"creationTime": "2026-01-22T12:09:22Z", "devices": [{"mdatpDeviceId": "m1"}],
                                  "entities": [{"entityType": "Ip", "ipAddress": "10.0.0.1"}]}));
        for e in back["evidence"].as_array().unwrap() {
            assert_eq!(e["createdDateTime"], json!("2026-01-22T12:09:22Z"), "the alert's creationTime");
        }
    }),
    ("alerts[].evidence[].tags (evidence other than deviceEvidence)", || {
        for kind in ENTITY_KINDS {
            let (mut ev, _, defender) = kind_pair(kind);
            set(&mut ev, "tags", json!([SENTINEL]));
            let a = d_alert(json!({ "evidence": [evidence(kind, ev)] }));
            assert!(!a.to_string().contains(SENTINEL), "{kind}: tags visible to Defender callers");
            let back = g_alert(json!({ "entities": [defender] }));
            assert_eq!(back["evidence"][0]["tags"], json!([]), "{kind}");
        }
    }),
    ("alerts[].evidence[].hostName", || {
        hidden("alerts[].evidence[].hostName", &["deviceEvidence"], Over::Null)
    }),
    ("alerts[].evidence[].ntDomain", || {
        hidden("alerts[].evidence[].ntDomain", &["deviceEvidence"], Over::Null)
    }),
    ("alerts[].evidence[].dnsDomain", || {
        hidden("alerts[].evidence[].dnsDomain", &["deviceEvidence"], Over::Null)
    }),
    ("alerts[].evidence[].lastIpAddress", || {
        hidden("alerts[].evidence[].lastIpAddress", &["deviceEvidence"], Over::Null)
    }),
    ("alerts[].evidence[].lastExternalIpAddress", || {
        hidden("alerts[].evidence[].lastExternalIpAddress", &["deviceEvidence"], Over::Null)
    }),
    ("alerts[].evidence[].ipInterfaces", || {
        hidden("alerts[].evidence[].ipInterfaces", &["deviceEvidence"], Over::Empty)
    }),
    ("alerts[].evidence[].resourceAccessEvents", || {
        hidden("alerts[].evidence[].resourceAccessEvents", &["deviceEvidence"], Over::Empty)
    }),
    ("alerts[].evidence[].detectionStatus", || {
        hidden(
            "alerts[].evidence[].detectionStatus",
            &["fileEvidence", "processEvidence"],
            Over::Absent,
        )
    }),
    ("alerts[].evidence[].stream", || {
        hidden("alerts[].evidence[].stream", &["userEvidence", "ipEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].location", || {
        hidden("alerts[].evidence[].location", &["ipEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].countryLetterCode", || {
        hidden("alerts[].evidence[].countryLetterCode", &["ipEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].parentProcessImageFile", || {
        hidden("alerts[].evidence[].parentProcessImageFile", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.md5", || {
        hidden("alerts[].evidence[].fileDetails.md5", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.sha256Ac", || {
        hidden("alerts[].evidence[].fileDetails.sha256Ac", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.fileSize", || {
        hidden("alerts[].evidence[].fileDetails.fileSize", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.filePublisher", || {
        hidden("alerts[].evidence[].fileDetails.filePublisher", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.issuer", || {
        hidden("alerts[].evidence[].fileDetails.issuer", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].fileDetails.signer", || {
        hidden("alerts[].evidence[].fileDetails.signer", &["fileEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.md5", || {
        hidden("alerts[].evidence[].imageFile.md5", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.sha256Ac", || {
        hidden("alerts[].evidence[].imageFile.sha256Ac", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.fileSize", || {
        hidden("alerts[].evidence[].imageFile.fileSize", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.filePublisher", || {
        hidden("alerts[].evidence[].imageFile.filePublisher", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.issuer", || {
        hidden("alerts[].evidence[].imageFile.issuer", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].imageFile.signer", || {
        hidden("alerts[].evidence[].imageFile.signer", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.displayName", || {
        let kinds = ["userEvidence", "processEvidence", "mailboxEvidence"];
        hidden("alerts[].evidence[].userAccount.displayName", &kinds, Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.activeDirectoryObjectGuid", || {
        let kinds = ["userEvidence", "processEvidence", "mailboxEvidence"];
        hidden("alerts[].evidence[].userAccount.activeDirectoryObjectGuid", &kinds, Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.resourceAccessEvents", || {
        let kinds = ["userEvidence", "processEvidence", "mailboxEvidence"];
        hidden("alerts[].evidence[].userAccount.resourceAccessEvents", &kinds, Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.tenantId", || {
        let kinds = ["userEvidence", "processEvidence", "mailboxEvidence"];
        hidden("alerts[].evidence[].userAccount.tenantId", &kinds, Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.azureAdUserId (processEvidence)", || {
        hidden("alerts[].evidence[].userAccount.azureAdUserId", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.userPrincipalName (processEvidence)", || {
        hidden("alerts[].evidence[].userAccount.userPrincipalName", &["processEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.accountName (mailboxEvidence)", || {
        hidden("alerts[].evidence[].userAccount.accountName", &["mailboxEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.domainName (mailboxEvidence)", || {
        hidden("alerts[].evidence[].userAccount.domainName", &["mailboxEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].userAccount.userSid (mailboxEvidence)", || {
        hidden("alerts[].evidence[].userAccount.userSid", &["mailboxEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].p1Sender.displayName", || {
        hidden("alerts[].evidence[].p1Sender.displayName", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].p1Sender.domainName", || {
        hidden("alerts[].evidence[].p1Sender.domainName", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].p2Sender", || {
        hidden("alerts[].evidence[].p2Sender", &["analyzedMessageEvidence"], Over::Absent);
        let ev = json!({"p1Sender": {"emailAddress": "p1@evil.test"}, "p2Sender": {"emailAddress": SENTINEL}});
        let e = d_entities("analyzedMessageEvidence", ev);
        assert_eq!(e[0]["sender"], json!("p1@evil.test"), "P2 is not read while P1 has an address");
    }),
    ("alerts[].evidence[].deliveryLocation", || {
        hidden("alerts[].evidence[].deliveryLocation", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].networkMessageId", || {
        hidden("alerts[].evidence[].networkMessageId", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].urls", || {
        hidden("alerts[].evidence[].urls", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].antiSpamDirection", || {
        hidden("alerts[].evidence[].antiSpamDirection", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].attachmentsCount", || {
        hidden("alerts[].evidence[].attachmentsCount", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].internetMessageId", || {
        hidden("alerts[].evidence[].internetMessageId", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].language", || {
        hidden("alerts[].evidence[].language", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].receivedDateTime", || {
        hidden("alerts[].evidence[].receivedDateTime", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].senderIp", || {
        hidden("alerts[].evidence[].senderIp", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].threatDetectionMethods", || {
        hidden("alerts[].evidence[].threatDetectionMethods", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].threats", || {
        hidden("alerts[].evidence[].threats", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].urlCount", || {
        hidden("alerts[].evidence[].urlCount", &["analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].clusterByValue", || {
        hidden("alerts[].evidence[].clusterByValue", &["mailClusterEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].emailCount", || {
        hidden("alerts[].evidence[].emailCount", &["mailClusterEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].networkMessageIds", || {
        hidden("alerts[].evidence[].networkMessageIds", &["mailClusterEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].query", || {
        hidden("alerts[].evidence[].query", &["mailClusterEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].urn", || {
        hidden("alerts[].evidence[].urn", &["mailClusterEvidence", "analyzedMessageEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].registryValueName", || {
        hidden("alerts[].evidence[].registryValueName", &["registryValueEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].sid", || {
        hidden("alerts[].evidence[].sid", &["securityGroupEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].activeDirectoryObjectGuid", || {
        hidden("alerts[].evidence[].activeDirectoryObjectGuid", &["securityGroupEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].distinguishedName", || {
        hidden("alerts[].evidence[].distinguishedName", &["securityGroupEvidence"], Over::Absent)
    }),
    ("alerts[].evidence[].friendlyName", || {
        hidden("alerts[].evidence[].friendlyName", &["securityGroupEvidence"], Over::Absent)
    }),
    (
        "alerts[].evidence[] (types without a Defender entity: cloudApplicationEvidence and the others of the fact sheet's §7.7)",
        || {
            for kind in [
                "cloudApplicationEvidence",
                "oauthApplicationEvidence",
                "mailboxConfigurationEvidence",
                "networkConnectionEvidence",
                "dnsEvidence",
                "fileHashEvidence",
                "malwareEvidence",
                "azureResourceEvidence",
                "kubernetesPodEvidence",
                "teamsMessageEvidence",
            ] {
                let a = d_alert(json!({ "evidence": [evidence(kind, json!({"displayName": SENTINEL, "appId": SENTINEL}))] }));
                assert_eq!(a["devices"], json!([]), "{kind}");
                assert_eq!(a["entities"], json!([]), "{kind}: left out");
            }
        },
    ),
];

// ----- the enum table ----------------------------------------------------------------------------

fn code(s: &str) -> String {
    format!("`{s}`")
}

fn or_dash(items: Vec<String>) -> String {
    if items.is_empty() {
        "—".into()
    } else {
        items.join(", ")
    }
}

/// The three translation cells of an enum's README row, from the table itself.
fn enum_cells(t: &EnumTable) -> [String; 3] {
    let mut both = Vec::new();
    let mut defender_in = Vec::new();
    for (i, (d, g)) in t.rows.iter().enumerate() {
        let first = t.rows.iter().position(|(_, gg)| gg == g) == Some(i);
        if first {
            both.push(format!("{} ⇄ {}", code(d), code(g)));
        } else {
            defender_in.push(format!("{} → {}", code(d), code(g)));
        }
    }
    let graph_in = t
        .graph_aliases
        .iter()
        .map(|(a, g)| format!("{} → {}", code(a), code(g)))
        .collect();
    [both.join(", "), or_dash(defender_in), or_dash(graph_in)]
}

// ----- the tests ---------------------------------------------------------------------------------

#[test]
fn the_readme_and_the_tests_name_the_same_rows() {
    same_names(&readme_names("Defender field"), DEFENDER_ROWS, "Defender fields");
    same_names(&readme_names("Defender `entityType`"), ENTITY_ROWS, "entities");
    same_names(&readme_names("Graph field"), GRAPH_ONLY_ROWS, "Graph-only fields");
}

#[test]
fn every_defender_field_row() {
    run(DEFENDER_ROWS);
}

#[test]
fn every_entity_row() {
    run(ENTITY_ROWS);
}

#[test]
fn every_graph_only_row() {
    run(GRAPH_ONLY_ROWS);
}

/// The entity rows name every `(Defender field, Graph path)` pair of [`ENTITY_MAP`], for the
/// evidence type of their own row.
#[test]
fn entity_rows_list_every_field_of_the_entity_map() {
    let table = tables()
        .into_iter()
        .find(|t| t.header[0] == "Defender `entityType`")
        .expect("the entity table");
    assert_eq!(table.rows.len(), ENTITY_MAP.len(), "one row per ENTITY_MAP row");
    for (entity_type, kind, fields) in ENTITY_MAP {
        let row = table
            .rows
            .iter()
            .find(|r| r[1] == code(kind))
            .unwrap_or_else(|| panic!("no README row for {kind}"));
        assert!(row[0].starts_with(&code(entity_type)), "{kind}: {}", row[0]);
        for (d, g) in *fields {
            let pair = format!("{} ← {}", code(d), code(g));
            let fallback = format!("{} ← ", code(d));
            let alternative = format!("else {}", code(g));
            assert!(
                row[2].contains(&pair) || (row[2].contains(&fallback) && row[2].contains(&alternative)),
                "{kind}: the README row does not say {pair}"
            );
        }
        let pairs = row[2].matches(" ← ").count();
        let distinct: BTreeSet<&str> = fields.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            pairs,
            distinct.len(),
            "{kind}: the README lists fields the code does not map"
        );
    }
}

/// Every entry of [`GRAPH_ONLY_FIELDS`] is a row of the README's Graph-only table (conditional
/// entries by their path).
#[test]
fn the_graph_only_table_covers_graph_only_fields() {
    let names = readme_names("Graph field");
    for (path, _) in GRAPH_ONLY_FIELDS {
        let bare = path.split(' ').next().unwrap_or(path);
        let listed = names
            .iter()
            .any(|n| n == path || (path.contains(' ') && n.starts_with(&format!("{bare} ("))));
        assert!(listed, "GRAPH_ONLY_FIELDS has {path}, the README's table does not");
    }
}

/// The README's enum table is the code's, cell for cell, in the order of [`enums::ALL_TABLES`].
#[test]
fn the_enum_table_is_the_code() {
    let table = tables()
        .into_iter()
        .find(|t| t.header[0] == "Enum")
        .expect("the enum table");
    let readme: Vec<Vec<String>> = table
        .rows
        .iter()
        .map(|r| [&r[0], &r[2], &r[3], &r[4]].map(String::clone).to_vec())
        .collect();
    let expected: Vec<Vec<String>> = enums::ALL_TABLES
        .iter()
        .map(|t| {
            let [a, b, c] = enum_cells(t);
            vec![code(t.name), a, b, c]
        })
        .collect();
    if readme != expected {
        let rows: Vec<String> = expected
            .iter()
            .map(|r| format!("| {} | (used for) | {} | {} | {} |", r[0], r[1], r[2], r[3]))
            .collect();
        panic!(
            "the README's enum table differs from the code; the code says:\n{}",
            rows.join("\n")
        );
    }
}
