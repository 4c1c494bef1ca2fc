//! Property tests of `crate::dialect` against the simulator: incidents generated in the
//! simulator's data model are rendered natively in both dialects (Defender by `render`, Graph by
//! `render_graph`, from `defender_simulator::fixtures`, written independently of the
//! translator), one rendering is
//! translated into the other dialect, and the two are compared field by field. The only
//! exceptions are the documented lossy fields of `dialect::incident`.

use proptest::prelude::*;
use serde_json::Value;

use crate::dialect::incident::{
    defender_to_graph, field_differences as differences, graph_to_defender, is_listed, DEFENDER_FIELDS_LOST,
    GRAPH_ONLY_FIELDS,
};
use defender_simulator::fixtures::{
    self as data, format_ticks, now_ticks, Comment, DataParams, IncidentState, TICKS_PER_DAY, TICKS_PER_SEC,
};

fn params(seed: u64) -> DataParams {
    DataParams {
        seed,
        anchor: now_ticks().div_euclid(TICKS_PER_DAY) * TICKS_PER_DAY,
        missing_share: 0.0,
        tenant_id: "00000000-0000-0000-0000-00000000d3f0".into(),
    }
}

/// Changes an analyst or the API could have made, in the simulator's (validated) vocabulary.
#[derive(Debug, Clone)]
struct Edit {
    status: Option<&'static str>,
    verdict: Option<(&'static str, &'static str)>,
    severity: Option<&'static str>,
    assigned_to: Option<Option<String>>,
    tags: Option<Vec<String>>,
    comment: Option<String>,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    let verdicts = vec![
        ("Unknown", "NotAvailable"),
        ("TruePositive", "MultiStagedAttack"),
        ("TruePositive", "CompromisedAccount"),
        ("TruePositive", "Apt"),
        ("InformationalExpectedActivity", "ConfirmedActivity"),
        ("InformationalExpectedActivity", "SecurityPersonnel"),
        ("FalsePositive", "Clean"),
        ("FalsePositive", "NoEnoughDataToValidate"),
        ("TruePositive", "LineOfBusinessApplication"),
    ];
    (
        proptest::option::of(proptest::sample::select(crate::route::STATUSES.to_vec())),
        proptest::option::of(proptest::sample::select(verdicts)),
        proptest::option::of(proptest::sample::select(vec![
            "UnSpecified",
            "Informational",
            "Low",
            "Medium",
            "High",
        ])),
        proptest::option::of(proptest::option::of("[a-z.@' ]{0,12}")),
        proptest::option::of(proptest::collection::vec("[A-Za-z \"\\\\é]{0,8}", 0..3)),
        proptest::option::of("[ -~é]{0,20}"),
    )
        .prop_map(|(status, verdict, severity, assigned_to, tags, comment)| Edit {
            status,
            verdict,
            severity,
            assigned_to,
            tags,
            comment,
        })
}

fn apply(state: &mut IncidentState, edit: &Edit) {
    if let Some(s) = edit.status {
        state.status = s;
    }
    if let Some((c, d)) = edit.verdict {
        state.classification = c;
        state.determination = d;
    }
    if let Some(s) = edit.severity {
        state.severity = s;
    }
    if let Some(a) = &edit.assigned_to {
        state.assigned_to = a.clone();
    }
    if let Some(t) = &edit.tags {
        state.tags = t.clone();
    }
    if let Some(c) = &edit.comment {
        state.last_update += TICKS_PER_SEC;
        state.comments.push(Comment {
            comment: c.clone(),
            created_by: "API-App:test".into(),
            created_time: format_ticks(state.last_update),
        });
    }
}

/// Both native renderings of one generated (and possibly edited) incident.
fn renderings(seed: u64, id: i64, edit: &Edit) -> Option<(Value, Value)> {
    let p = params(seed);
    let mut state = data::generate_summary(&p, id)?;
    // Keep the heavy tail out of the property loop's hot path; the largest incidents are
    // covered once by `the_largest_incident_translates_too`.
    if state.alert_count > 40 {
        return None;
    }
    apply(&mut state, edit);
    let defender: Value = serde_json::from_slice(&data::render(&p, &state)).ok()?;
    let graph: Value = serde_json::from_slice(&data::render_graph(&p, &state, true)).ok()?;
    Some((defender, graph))
}

fn check(defender: &Value, graph: &Value) -> Result<(), TestCaseError> {
    // Graph (native) → Defender (translated) against Defender (native).
    let translated = graph_to_defender(graph).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let d = differences(defender, &translated, DEFENDER_FIELDS_LOST);
    prop_assert!(d.is_empty(), "Graph → Defender differs:\n{}", d.join("\n"));
    // Defender (native) → Graph (translated) against Graph (native).
    let translated = defender_to_graph(defender).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let d = differences(graph, &translated, GRAPH_ONLY_FIELDS);
    prop_assert!(d.is_empty(), "Defender → Graph differs:\n{}", d.join("\n"));
    // Round trips through the other dialect.
    let back = graph_to_defender(&translated).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let d = differences(defender, &back, DEFENDER_FIELDS_LOST);
    prop_assert!(d.is_empty(), "Defender → Graph → Defender differs:\n{}", d.join("\n"));
    let there = graph_to_defender(graph).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = defender_to_graph(&there).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let d = differences(graph, &back, GRAPH_ONLY_FIELDS);
    prop_assert!(d.is_empty(), "Graph → Defender → Graph differs:\n{}", d.join("\n"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn both_dialects_agree_field_by_field(seed in any::<u64>(), id in 1i64..100_000, edit in arb_edit()) {
        if let Some((defender, graph)) = renderings(seed, id, &edit) {
            check(&defender, &graph)?;
        }
    }
}

#[test]
fn the_largest_incident_translates_too() {
    let p = params(42);
    let state = (1..3_000)
        .filter_map(|id| data::generate_summary(&p, id))
        .max_by_key(|s| s.alert_count)
        .unwrap();
    assert!(state.alert_count > 40);
    let defender: Value = serde_json::from_slice(&data::render(&p, &state)).unwrap();
    let graph: Value = serde_json::from_slice(&data::render_graph(&p, &state, true)).unwrap();
    check(&defender, &graph).unwrap();
}

#[test]
fn the_comparison_notices_differences() {
    // A test that cannot fail proves nothing: the comparison must see a changed field, a
    // missing field and a changed list length, and must skip only what is listed.
    let (defender, graph) = (1..).find_map(|id| renderings(7, id, &arb_edit_none())).unwrap();
    let translated = graph_to_defender(&graph).unwrap();
    let mut broken = translated.clone();
    broken["incidentName"] = Value::String("other".into());
    broken["alerts"][0]["devices"][0]["deviceDnsName"] = Value::Null;
    broken["tags"] = serde_json::json!(["x", "y", "z", "w"]);
    let d = differences(&defender, &broken, DEFENDER_FIELDS_LOST);
    assert_eq!(d.len(), 3, "{d:?}");
    broken = translated;
    broken["alerts"][0]["investigationId"] = Value::from(12345);
    assert!(differences(&defender, &broken, DEFENDER_FIELDS_LOST).is_empty());
    assert!(!is_listed(DEFENDER_FIELDS_LOST, "detectionSource"));
    assert!(is_listed(
        GRAPH_ONLY_FIELDS,
        "alerts[].evidence[].userAccount.displayName"
    ));
    assert!(!is_listed(GRAPH_ONLY_FIELDS, "alerts[].evidence[].userAccount.userSid"));
}

fn arb_edit_none() -> Edit {
    Edit {
        status: None,
        verdict: None,
        severity: None,
        assigned_to: None,
        tags: None,
        comment: None,
    }
}
