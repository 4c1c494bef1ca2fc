//! List queries across dialects: a parsed Defender query ([`ListQuery`]) as the Graph queries
//! that answer it (field renames, enum casing, at most 50 per Graph page so a Defender page of
//! up to 100 takes up to two, `$skip` keeping its meaning), a Graph query over a Defender
//! upstream, and Graph's `@odata.nextLink`.

use crate::odata::{
    CompareOp, Field, Filter, GraphField, GraphListQuery, GraphOrderBy, GraphOrderField, ListQuery, Literal,
    GRAPH_MAX_TOP, MAX_TOP,
};

use super::enums;
use super::TranslateError;

/// Defender's page size when `$top` is absent (the simulator's and the docs' maximum).
pub const DEFENDER_DEFAULT_TOP: u32 = MAX_TOP;
/// Graph's page size when `$top` is absent: undocumented, 50 inferred (fact sheet §2.1).
pub const GRAPH_DEFAULT_TOP: u32 = GRAPH_MAX_TOP;

/// Defender filter field → Graph filter field (sheet §7.2).
pub fn graph_field(field: Field) -> GraphField {
    match field {
        Field::LastUpdateTime => GraphField::LastUpdateDateTime,
        Field::CreatedTime => GraphField::CreatedDateTime,
        Field::Status => GraphField::Status,
        Field::AssignedTo => GraphField::AssignedTo,
    }
}

/// Graph filter field → Defender, when Defender can filter on it (severity, classification and
/// determination it cannot: sheet §7.1).
pub fn defender_field(field: GraphField) -> Option<Field> {
    match field {
        GraphField::LastUpdateDateTime => Some(Field::LastUpdateTime),
        GraphField::CreatedDateTime => Some(Field::CreatedTime),
        GraphField::Status => Some(Field::Status),
        GraphField::AssignedTo => Some(Field::AssignedTo),
        GraphField::Classification | GraphField::Determination | GraphField::Severity => None,
    }
}

/// A Defender `$filter` in Graph terms. Total: every Defender field and status has a Graph
/// counterpart. Datetime literals are kept (both print UTC ISO-8601, unquoted).
pub fn defender_filter_to_graph(filter: &Filter) -> Filter<GraphField> {
    match filter {
        Filter::Compare { field, op, value } => {
            let value = match (field, value) {
                (Field::Status, Literal::String(s)) => Literal::String(enums::INCIDENT_STATUS.to_graph_lenient(s)),
                (_, v) => v.clone(),
            };
            Filter::Compare {
                field: graph_field(*field),
                op: *op,
                value,
            }
        }
        Filter::Not(inner) => Filter::Not(Box::new(defender_filter_to_graph(inner))),
        Filter::And(items) => Filter::And(items.iter().map(defender_filter_to_graph).collect()),
        Filter::Or(items) => Filter::Or(items.iter().map(defender_filter_to_graph).collect()),
    }
}

/// A Graph `$filter` in Defender terms, or the field Defender cannot filter on.
pub fn graph_filter_to_defender(filter: &Filter<GraphField>) -> Result<Filter, TranslateError> {
    Ok(match filter {
        Filter::Compare { field, op, value } => {
            let Some(dfield) = defender_field(*field) else {
                return Err(TranslateError::Unmapped {
                    field: format!("$filter {}", crate::odata::FilterField::name(*field)),
                    value: "(the Defender API cannot filter on this field)".into(),
                });
            };
            let value = match (dfield, value) {
                (Field::Status, Literal::String(s)) => match enums::INCIDENT_STATUS.to_defender(s) {
                    Some(d) => Literal::String(d.into()),
                    None => {
                        return Err(TranslateError::Unmapped {
                            field: "$filter status".into(),
                            value: s.chars().take(64).collect(),
                        })
                    }
                },
                (_, v) => v.clone(),
            };
            Filter::Compare {
                field: dfield,
                op: *op,
                value,
            }
        }
        Filter::Not(inner) => Filter::Not(Box::new(graph_filter_to_defender(inner)?)),
        Filter::And(items) => Filter::And(items.iter().map(graph_filter_to_defender).collect::<Result<_, _>>()?),
        Filter::Or(items) => Filter::Or(items.iter().map(graph_filter_to_defender).collect::<Result<_, _>>()?),
    })
}

/// The Graph order that equals Defender's list order ("most recent first", newest created
/// first). Sent explicitly because Graph does not document its default sort key (sheet §8.6),
/// and two Graph pages must agree on one order for `$skip` to mean what the caller meant.
pub const DEFENDER_ORDER: GraphOrderBy = GraphOrderBy {
    field: GraphOrderField::CreatedDateTime,
    descending: true,
};

/// The Graph list requests that answer one Defender list request, in order: the first asks for
/// `min(top, 50)` items at the caller's `$skip`, the second (only when `top > 50`) for the rest
/// at `skip + 50`. The second need not be sent when the first returned fewer than it asked for
/// ([`needs_next_page`]). Every request expands alerts, as Defender incidents carry them.
pub fn defender_list_plan(query: &ListQuery) -> Vec<GraphListQuery> {
    let base = defender_list_base(query);
    let top = u64::from(query.top.unwrap_or(DEFENDER_DEFAULT_TOP));
    let skip = query.skip.unwrap_or(0);
    let mut plan = Vec::new();
    let mut asked = 0u64;
    while asked < top {
        let this = (top - asked).min(u64::from(GRAPH_MAX_TOP));
        plan.push(GraphListQuery {
            // `this` is at most GRAPH_MAX_TOP, so it fits.
            top: Some(u32::try_from(this).unwrap_or(GRAPH_MAX_TOP)),
            skip: Some(skip.saturating_add(asked)),
            ..base.clone()
        });
        asked += this;
    }
    plan
}

/// What every Graph page of a Defender list request shares: the translated filter, Defender's
/// order and the alerts; `$top` and `$skip` are set per page (the proxy pages from what each
/// page returned, see [`defender_list_plan`] for the plan when every page comes back full).
pub fn defender_list_base(query: &ListQuery) -> GraphListQuery {
    GraphListQuery {
        filter: query.filter.as_ref().map(defender_filter_to_graph),
        top: None,
        skip: None,
        orderby: Some(DEFENDER_ORDER),
        expand_alerts: true,
        count: None,
    }
}

/// Whether the next request of a plan is needed, given what the previous one returned.
pub fn needs_next_page(previous: &GraphListQuery, returned: usize) -> bool {
    previous.top.is_some_and(|top| returned >= top as usize)
}

/// How a Graph list query is answered from a Defender upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphOverDefender {
    /// One Defender list call answers it exactly: same filter, `$top`, `$skip`, same order.
    Direct(ListQuery),
    /// Defender cannot express all of it (a Graph-only filter field, another order, `$count`):
    /// list with `upstream` (the part of the filter Defender can apply, or none) through every
    /// page, translate, then apply the Graph query locally ([`GraphListQuery`]'s filter with
    /// [`Filter::matches`] over Graph incidents, order, skip, top, count).
    Local { upstream: ListQuery },
}

/// Plans a Graph list query over a Defender upstream.
pub fn graph_list_over_defender(query: &GraphListQuery) -> GraphOverDefender {
    let translated = query.filter.as_ref().map(graph_filter_to_defender).transpose();
    let default_order = query.orderby.map_or(true, |o| o == DEFENDER_ORDER);
    match translated {
        Ok(filter) if default_order && query.count != Some(true) => GraphOverDefender::Direct(ListQuery {
            filter,
            top: Some(query.top.unwrap_or(GRAPH_DEFAULT_TOP)),
            skip: query.skip,
        }),
        Ok(filter) => GraphOverDefender::Local {
            upstream: ListQuery {
                filter,
                top: None,
                skip: None,
            },
        },
        Err(_) => GraphOverDefender::Local {
            upstream: ListQuery {
                filter: query.filter.as_ref().and_then(defender_conjuncts),
                top: None,
                skip: None,
            },
        },
    }
}

/// The top-level `and` operands Defender can apply (a superset filter), if any.
fn defender_conjuncts(filter: &Filter<GraphField>) -> Option<Filter> {
    let items: Vec<Filter> = match filter {
        Filter::And(items) => items.iter().filter_map(|f| graph_filter_to_defender(f).ok()).collect(),
        other => graph_filter_to_defender(other).ok().into_iter().collect(),
    };
    match items.len() {
        0 => None,
        1 => items.into_iter().next(),
        _ => Some(Filter::And(items)),
    }
}

/// Graph's `@odata.nextLink` for a page of `returned` items: `base` (scheme, host and path of
/// whoever serves the caller, e.g. `http://proxy/v1.0/security/incidents`) with the same query
/// and `$skip` advanced. `total` is the number of matching items when known; otherwise a full
/// page is taken to mean more may follow. `None` on the last page.
pub fn graph_next_link(base: &str, query: &GraphListQuery, returned: usize, total: Option<u64>) -> Option<String> {
    let top = query.top.unwrap_or(GRAPH_DEFAULT_TOP);
    let next_skip = query.skip.unwrap_or(0).saturating_add(returned as u64);
    let more = match total {
        Some(total) => next_skip < total,
        None => returned >= top as usize,
    };
    graph_next_link_if(base, query, returned, more)
}

/// Graph's `@odata.nextLink` after `returned` items when `more` follow (e.g. the upstream
/// announced a next page of its own); `None` when none do or nothing was returned.
pub fn graph_next_link_if(base: &str, query: &GraphListQuery, returned: usize, more: bool) -> Option<String> {
    if !more || returned == 0 {
        return None;
    }
    let next = GraphListQuery {
        top: Some(query.top.unwrap_or(GRAPH_DEFAULT_TOP)),
        skip: Some(query.skip.unwrap_or(0).saturating_add(returned as u64)),
        ..query.clone()
    };
    Some(format!("{base}?{}", next.canonical()))
}

/// Whether a comparison operator is one Graph is seen to accept on this field (eq/ne on enums
/// and strings, all six on timestamps). The parser already enforces it; exported for callers
/// that build filters by hand.
pub fn operator_allowed(field: GraphField, op: CompareOp) -> bool {
    use crate::odata::{FieldKind, FilterField};
    field.kind() == FieldKind::DateTime || matches!(op, CompareOp::Eq | CompareOp::Ne)
}

/// Whether a Graph incident satisfies a Graph filter: the [`GraphOverDefender::Local`] plan
/// applies the part of a query Defender cannot to the translated incidents. Enum and text
/// fields compare as strings (`null` when absent), timestamps as instants.
pub fn graph_matches(filter: &Filter<GraphField>, incident: &serde_json::Value) -> bool {
    match filter {
        Filter::And(items) => items.iter().all(|f| graph_matches(f, incident)),
        Filter::Or(items) => items.iter().any(|f| graph_matches(f, incident)),
        Filter::Not(inner) => !graph_matches(inner, incident),
        Filter::Compare { field, op, value } => {
            use crate::odata::FilterField;
            let actual = incident.get(field.name()).filter(|v| !v.is_null());
            match value {
                Literal::Null => match op {
                    CompareOp::Eq => actual.is_none(),
                    CompareOp::Ne => actual.is_some(),
                    _ => false,
                },
                Literal::String(s) => {
                    let a = actual.and_then(|v| v.as_str());
                    match op {
                        CompareOp::Eq => a == Some(s.as_str()),
                        CompareOp::Ne => a != Some(s.as_str()),
                        _ => false,
                    }
                }
                Literal::DateTime(t) => {
                    let Some(a) = actual.and_then(|v| v.as_str()).and_then(parse_instant) else {
                        return matches!(op, CompareOp::Ne);
                    };
                    match op {
                        CompareOp::Eq => a == *t,
                        CompareOp::Ne => a != *t,
                        CompareOp::Gt => a > *t,
                        CompareOp::Ge => a >= *t,
                        CompareOp::Lt => a < *t,
                        CompareOp::Le => a <= *t,
                    }
                }
            }
        }
    }
}

fn parse_instant(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The Graph query's order over Graph incidents (default: Defender's and Graph's "most recent
/// first", `createdDateTime desc`), ties broken by id so pages never overlap.
pub fn graph_order(query: &GraphListQuery, a: &serde_json::Value, b: &serde_json::Value) -> std::cmp::Ordering {
    let order = query.orderby.unwrap_or(DEFENDER_ORDER);
    let key = |v: &serde_json::Value| {
        let t = v
            .get(order.field.name())
            .and_then(|t| t.as_str())
            .and_then(parse_instant);
        let id = v
            .get("id")
            .and_then(|i| i.as_str())
            .and_then(|i| i.parse::<i64>().ok())
            .unwrap_or(0);
        (t, id)
    };
    let ord = key(a).cmp(&key(b));
    if order.descending {
        ord.reverse()
    } else {
        ord
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(raw: &str) -> ListQuery {
        ListQuery::parse(raw).unwrap()
    }

    #[test]
    fn every_filter_field_and_status_translates() {
        let q = dq("$filter=lastUpdateTime ge 2024-05-01T00:00:00Z and createdTime lt 2024-06-01T00:00:00Z and (status eq 'Active' or status ne 'InProgress') and assignedTo eq null and not (assignedTo eq 'O''Brien')");
        let g = defender_filter_to_graph(q.filter.as_ref().unwrap());
        assert_eq!(
            g.canonical(),
            "lastUpdateDateTime ge 2024-05-01T00:00:00Z and createdDateTime lt 2024-06-01T00:00:00Z and (status eq 'active' or status ne 'inProgress') and assignedTo eq null and not (assignedTo eq 'O''Brien')"
        );
        // The Graph text is a valid Graph filter and translates back to the original.
        let reparsed = Filter::parse_graph(&g.canonical()).unwrap();
        assert_eq!(reparsed, g);
        assert_eq!(graph_filter_to_defender(&g).unwrap(), *q.filter.as_ref().unwrap());
        for s in crate::route::STATUSES {
            let f = Filter::parse(&format!("status eq '{s}'")).unwrap();
            let g = defender_filter_to_graph(&f);
            assert!(Filter::parse_graph(&g.canonical()).is_ok(), "{s}");
            assert_eq!(graph_filter_to_defender(&g).unwrap(), f);
        }
    }

    #[test]
    fn graph_only_fields_do_not_translate_to_defender() {
        for text in [
            "severity eq 'high'",
            "classification eq 'truePositive'",
            "determination eq 'malware'",
            "status eq 'awaitingAction'",
        ] {
            let f = Filter::parse_graph(text).unwrap();
            let e = graph_filter_to_defender(&f).unwrap_err();
            assert!(e.field().unwrap().starts_with("$filter"), "{e}");
        }
    }

    #[test]
    fn a_defender_page_takes_up_to_two_graph_pages_and_keeps_skip() {
        let plan = defender_list_plan(&dq("$top=100&$skip=30&$filter=status eq 'Active'"));
        let texts: Vec<String> = plan.iter().map(GraphListQuery::canonical).collect();
        assert_eq!(
            texts,
            [
                "$filter=status%20eq%20'active'&$top=50&$skip=30&$orderby=createdDateTime%20desc&$expand=alerts",
                "$filter=status%20eq%20'active'&$top=50&$skip=80&$orderby=createdDateTime%20desc&$expand=alerts",
            ]
        );
        let plan = defender_list_plan(&dq("$top=70"));
        assert_eq!(
            plan.iter().map(|q| (q.skip, q.top)).collect::<Vec<_>>(),
            [(Some(0), Some(50)), (Some(50), Some(20))]
        );
        let plan = defender_list_plan(&dq("$top=10&$skip=5"));
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].skip, plan[0].top), (Some(5), Some(10)));
        // Default Defender page (100) is two Graph pages.
        assert_eq!(defender_list_plan(&dq("")).len(), 2);
        assert!(needs_next_page(&plan[0], 10));
        assert!(!needs_next_page(&plan[0], 9));
        // Every planned query is one the Graph parser accepts as it is.
        for q in defender_list_plan(&dq("$top=99&$skip=1")) {
            assert_eq!(GraphListQuery::parse(&q.canonical()).unwrap(), q);
        }
    }

    #[test]
    fn graph_queries_over_defender() {
        let q = GraphListQuery::parse("$filter=status eq 'active'&$top=20&$skip=40").unwrap();
        assert_eq!(
            graph_list_over_defender(&q),
            GraphOverDefender::Direct(dq("$filter=status eq 'Active'&$top=20&$skip=40"))
        );
        let q =
            GraphListQuery::parse("$filter=severity eq 'high' and lastUpdateDateTime ge 2024-01-01T00:00:00Z").unwrap();
        assert_eq!(
            graph_list_over_defender(&q),
            GraphOverDefender::Local {
                upstream: dq("$filter=lastUpdateTime ge 2024-01-01T00:00:00Z")
            }
        );
        let q = GraphListQuery::parse("$orderby=lastUpdateDateTime asc").unwrap();
        assert_eq!(
            graph_list_over_defender(&q),
            GraphOverDefender::Local { upstream: dq("") }
        );
        let q = GraphListQuery::parse("$count=true").unwrap();
        assert!(matches!(graph_list_over_defender(&q), GraphOverDefender::Local { .. }));
        assert!(operator_allowed(GraphField::CreatedDateTime, CompareOp::Gt));
        assert!(!operator_allowed(GraphField::Severity, CompareOp::Gt));
    }

    #[test]
    fn next_links() {
        let base = "http://127.0.0.1:1/v1.0/security/incidents";
        let q = GraphListQuery::parse("$filter=status eq 'active'&$top=10&$expand=alerts").unwrap();
        assert_eq!(
            graph_next_link(base, &q, 10, Some(25)).unwrap(),
            format!("{base}?$filter=status%20eq%20'active'&$top=10&$skip=10&$expand=alerts")
        );
        assert_eq!(graph_next_link(base, &q, 10, Some(10)), None);
        assert!(graph_next_link(base, &q, 10, None).is_some());
        assert_eq!(graph_next_link(base, &q, 9, None), None);
        let default = GraphListQuery::default();
        assert!(graph_next_link(base, &default, 50, Some(51))
            .unwrap()
            .ends_with("?$top=50&$skip=50"));
    }
}
