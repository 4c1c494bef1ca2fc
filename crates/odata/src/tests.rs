//! Tests of the `$filter` grammar as a whole: lexer, parser, printer and timestamps together
//! (spellings, precedence, limits, round trips, never a panic). The list query options are
//! tested in `query`.

use crate::error::*;
use crate::filter::*;
use crate::parser::*;
use crate::query::*;
use ::time::macros::datetime;
use ::time::OffsetDateTime;
use proptest::prelude::*;

fn cmp(field: Field, op: CompareOp, value: Literal) -> Filter {
    Filter::Compare { field, op, value }
}

fn status(s: &str) -> Filter {
    cmp(Field::Status, CompareOp::Eq, Literal::String(s.into()))
}

fn after(t: OffsetDateTime) -> Filter {
    cmp(Field::LastUpdateTime, CompareOp::Ge, Literal::DateTime(t))
}

fn canon(text: &str) -> String {
    Filter::parse(text)
        .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
        .canonical()
}

fn filter_err(text: &str) -> QueryError {
    match Filter::parse(text) {
        Ok(f) => panic!("{text:?} should be rejected, parsed as {f:?}"),
        Err(e) => {
            assert_eq!(e.option, "$filter", "{text:?}");
            e
        }
    }
}

#[test]
fn parses_documented_example() {
    let f = Filter::parse("lastUpdateTime ge 2024-05-01T00:00:00Z").unwrap();
    assert_eq!(f, after(datetime!(2024-05-01 00:00:00 UTC)));
    assert_eq!(f.canonical(), "lastUpdateTime ge 2024-05-01T00:00:00Z");
}

#[test]
fn accepts_many_spellings() {
    let cases = [
        (
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime GE 2024-05-01T00:00:00Z",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "  lastUpdateTime\tge   2024-05-01T00:00:00Z ",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge '2024-05-01T00:00:00Z'",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge 2024-05-01T02:00:00+02:00",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge 2024-04-30T20:30:00-03:30",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge 2024-05-01t00:00:00z",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge 2024-05-01T00:00Z",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "lastUpdateTime ge 2024-05-01T00:00:00.000Z",
            "lastUpdateTime ge 2024-05-01T00:00:00Z",
        ),
        (
            "createdTime lt 2024-05-01T00:00:00.5Z",
            "createdTime lt 2024-05-01T00:00:00.5000000Z",
        ),
        (
            "createdTime le 2024-05-01T00:00:00.1234567Z",
            "createdTime le 2024-05-01T00:00:00.1234567Z",
        ),
        (
            "createdTime gt 2024-02-29T23:59:59Z",
            "createdTime gt 2024-02-29T23:59:59Z",
        ),
        (
            "createdTime ne 2024-05-01T00:00:00Z",
            "createdTime ne 2024-05-01T00:00:00Z",
        ),
        (
            "createdTime eq 2024-05-01T00:00:00Z",
            "createdTime eq 2024-05-01T00:00:00Z",
        ),
        ("status eq 'Active'", "status eq 'Active'"),
        ("status Ne 'InProgress'", "status ne 'InProgress'"),
        ("status eq'Redirected'", "status eq 'Redirected'"),
        ("assignedTo eq 'secop@contoso.com'", "assignedTo eq 'secop@contoso.com'"),
        ("assignedTo eq 'O''Brien'", "assignedTo eq 'O''Brien'"),
        ("assignedTo eq ''", "assignedTo eq ''"),
        ("assignedTo eq 'Zoë (SOC) & co'", "assignedTo eq 'Zoë (SOC) & co'"),
        ("assignedTo eq null", "assignedTo eq null"),
        ("assignedTo NE NULL", "assignedTo ne null"),
        ("((status eq 'Active'))", "status eq 'Active'"),
        (
            "status eq 'Active' AND assignedTo eq null",
            "status eq 'Active' and assignedTo eq null",
        ),
        (
            "(status eq 'Active')or(status eq 'Resolved')",
            "status eq 'Active' or status eq 'Resolved'",
        ),
        ("not status eq 'Active'", "not (status eq 'Active')"),
        ("NOT (status eq 'Active')", "not (status eq 'Active')"),
        ("not not status eq 'Active'", "not not (status eq 'Active')"),
        (
            "not (status eq 'Active' or status eq 'Resolved')",
            "not (status eq 'Active' or status eq 'Resolved')",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(canon(input), expected, "input {input:?}");
    }
}

#[test]
fn precedence_is_not_then_and_then_or() {
    let a = || status("Active");
    let b = || status("Resolved");
    let c = || status("InProgress");
    let p = |s: &str| Filter::parse(s).unwrap();
    let a_or_b_and_c = Filter::Or(vec![a(), Filter::And(vec![b(), c()])]);
    assert_eq!(
        p("status eq 'Active' or status eq 'Resolved' and status eq 'InProgress'"),
        a_or_b_and_c
    );
    assert_eq!(
        p("status eq 'Resolved' and status eq 'InProgress' or status eq 'Active'"),
        Filter::Or(vec![Filter::And(vec![b(), c()]), a()])
    );
    assert_eq!(
        p("(status eq 'Active' or status eq 'Resolved') and status eq 'InProgress'"),
        Filter::And(vec![Filter::Or(vec![a(), b()]), c()])
    );
    assert_eq!(
        p("not status eq 'Active' and status eq 'Resolved'"),
        Filter::And(vec![Filter::Not(Box::new(a())), b()])
    );
    assert_eq!(
        p("not status eq 'Active' or status eq 'Resolved'"),
        Filter::Or(vec![Filter::Not(Box::new(a())), b()])
    );
    // Parentheses stay only where they change the meaning.
    assert_eq!(
        canon("(status eq 'Active' or status eq 'Resolved') and (status eq 'InProgress')"),
        "(status eq 'Active' or status eq 'Resolved') and status eq 'InProgress'"
    );
    assert_eq!(
        canon("status eq 'Active' or (status eq 'Resolved' and status eq 'InProgress')"),
        "status eq 'Active' or status eq 'Resolved' and status eq 'InProgress'"
    );
}

#[test]
fn associative_chains_flatten() {
    let expected = Filter::And(vec![status("Active"), status("Resolved"), status("InProgress")]);
    for text in [
        "status eq 'Active' and status eq 'Resolved' and status eq 'InProgress'",
        "(status eq 'Active' and status eq 'Resolved') and status eq 'InProgress'",
        "status eq 'Active' and (status eq 'Resolved' and status eq 'InProgress')",
    ] {
        assert_eq!(Filter::parse(text).unwrap(), expected, "{text}");
    }
    let or = Filter::parse("status eq 'Active' or (status eq 'Resolved' or status eq 'InProgress')").unwrap();
    assert_eq!(
        or,
        Filter::Or(vec![status("Active"), status("Resolved"), status("InProgress")])
    );
}

#[test]
fn rejects_bad_filters_with_reasons() {
    let cases = [
        ("", "empty"),
        ("   ", "empty"),
        (
            "lastupdatetime ge 2024-05-01T00:00:00Z",
            "did you mean 'lastUpdateTime'",
        ),
        ("id eq 5", "filterable fields"),
        ("severity eq 'High'", "filterable fields"),
        ("lastUpdateTime 2024-05-01T00:00:00Z", "comparison operator"),
        ("lastUpdateTime like 2024-05-01T00:00:00Z", "comparison operator"),
        ("lastUpdateTime ge", "timestamp"),
        ("lastUpdateTime ge 2024-05-01", "timestamp"),
        ("lastUpdateTime ge 2024-05-01T00:00:00", "UTC designator"),
        ("lastUpdateTime ge 2024-13-01T00:00:00Z", "month"),
        ("lastUpdateTime ge 2023-02-29T00:00:00Z", "does not exist"),
        ("lastUpdateTime ge 2024-05-01T24:00:00Z", "out of range"),
        ("lastUpdateTime ge 2024-05-01T23:59:60Z", "out of range"),
        ("lastUpdateTime ge 2024-05-01T00:00:00+24:00", "offset"),
        (
            "lastUpdateTime ge 2024-05-01T00:00:00.Z",
            "digits after the decimal point",
        ),
        ("lastUpdateTime ge 2024-05-01T00:00:00.12345678Z", "fractional"),
        ("lastUpdateTime ge 0000-01-01T00:00:00Z", "out of range"),
        ("lastUpdateTime ge 0001-01-01T00:00:00+01:00", "out of range"),
        ("lastUpdateTime ge 'Active'", "bad timestamp"),
        ("lastUpdateTime ge null", "bad timestamp"),
        ("lastUpdateTime ge (", "timestamp"),
        ("status eq Active", "single-quoted status"),
        ("status eq 'active'", "not a status"),
        ("status eq 'Closed'", "not a status"),
        ("status eq null", "single-quoted status"),
        ("status gt 'Active'", "only be compared with eq or ne"),
        ("assignedTo lt 'a'", "only be compared with eq or ne"),
        ("assignedTo eq bob", "single-quoted string or null"),
        ("assignedTo eq 'unterminated", "no closing quote"),
        ("assignedTo eq 2024-05-01T00:00:00Z", "single-quoted string or null"),
        ("status eq 'Active' and", "end of the filter"),
        ("status eq 'Active' or or status eq 'Active'", "expected a comparison"),
        ("and status eq 'Active'", "expected a comparison"),
        ("status eq 'Active' status eq 'Resolved'", "after a complete expression"),
        ("status eq 'Active')", "unbalanced ')'"),
        ("(status eq 'Active'", "expected ')'"),
        ("()", "expected a comparison"),
        ("not", "end of the filter"),
        ("status eq 'Active' & status eq 'Resolved'", "unexpected character '&'"),
        ("status eq \"Active\"", "unexpected character"),
        ("contains(assignedTo,'bob')", "unexpected character ','"),
        ("contains (assignedTo)", "filterable fields"),
        ("assignedTo/any(x: x eq 'a')", "unexpected character '/'"),
        ("status eq 'Active'\0", "unexpected character"),
    ];
    for (input, reason) in cases {
        let e = filter_err(input);
        assert!(
            e.message.contains(reason),
            "{input:?}: message {:?} should mention {reason:?}",
            e.message
        );
        assert!(e.message.starts_with("invalid $filter: "), "{}", e.message);
    }
}

#[test]
fn enforces_size_limits() {
    // Length: the limit is on bytes, inclusive.
    let pad = |n: usize| format!("status eq 'Active'{}", " ".repeat(n));
    assert!(Filter::parse(&pad(MAX_FILTER_LEN - 18)).is_ok());
    assert!(filter_err(&pad(MAX_FILTER_LEN - 17)).message.contains("bytes long"));

    // Comparisons: 64 fine, 65 rejected.
    let chain = |n: usize| vec!["assignedTo eq null"; n].join(" or ");
    assert!(Filter::parse(&chain(MAX_COMPARISONS)).is_ok());
    assert!(filter_err(&chain(MAX_COMPARISONS + 1)).message.contains("comparisons"));

    // Logical depth: 32 nested `not`s fine, 33 rejected.
    let nots = |n: usize| format!("{}status eq 'Active'", "not ".repeat(n));
    let deep = Filter::parse(&nots(MAX_DEPTH)).unwrap();
    assert_eq!(Filter::parse(&deep.canonical()).unwrap(), deep);
    assert!(filter_err(&nots(MAX_DEPTH + 1)).message.contains("levels deep"));

    // Alternating and/or nesting, which needs parentheses in the canonical form.
    let mut text = "status eq 'Active'".to_string();
    for i in 0..MAX_DEPTH {
        let op = if i % 2 == 0 { "and" } else { "or" };
        text = format!("not (assignedTo eq null {op} ({text}))");
    }
    // 32 `not`s plus 32 and/or levels is 64 logical levels: too deep, but not a panic.
    assert!(filter_err(&text).message.contains("deep"));

    // Redundant parentheses never reach the AST but are bounded to keep recursion shallow.
    let parens = |n: usize| format!("{}status eq 'Active'{}", "(".repeat(n), ")".repeat(n));
    assert!(Filter::parse(&parens(MAX_SYNTAX_DEPTH)).is_ok());
    assert!(filter_err(&parens(MAX_SYNTAX_DEPTH + 1)).message.contains("nest"));
    let very_deep = "(".repeat(MAX_FILTER_LEN);
    assert!(filter_err(&very_deep).message.contains("nest"));
}

#[test]
fn canonical_form_that_grows_past_the_limit_is_rejected() {
    // Each `T00:00Z` gains ":00" in canonical form; make the input fit and the output not.
    let one = "createdTime lt 2024-05-01T00:00Z";
    let mut parts = Vec::new();
    while (parts.len() + 1) * (one.len() + 4) < MAX_FILTER_LEN && parts.len() < MAX_COMPARISONS {
        parts.push(one);
    }
    let text = parts.join(" or ");
    assert!(text.len() <= MAX_FILTER_LEN);
    assert!(text.len() + 3 * parts.len() > MAX_FILTER_LEN);
    assert!(filter_err(&text).message.contains("canonical form"));
}

#[test]
fn equivalent_queries_share_one_canonical_string() {
    let variants = [
        "$filter=lastUpdateTime%20ge%202024-05-01T00:00:00Z%20and%20status%20eq%20%27Active%27&$top=10&$skip=20",
        "$skip=20&$top=10&$filter=lastUpdateTime+GE+2024-05-01T00:00:00Z+AND+status+eq+'Active'",
        "%24top=10&%24filter=(lastUpdateTime%20ge%202024-05-01T02:00:00%2B02:00)%20and%20(status%20eq%20'Active')&%24skip=20",
        "$filter=((lastUpdateTime ge '2024-05-01T00:00:00.0000000Z')) and status eq 'Active'&$top=010&$skip=20&",
        "&$top=10&&$skip=20&$filter=lastUpdateTime%09ge%092024-05-01T00:00Z%0Aand%0Astatus%20Eq%20%27Active%27",
    ];
    let expected = "$filter=lastUpdateTime%20ge%202024-05-01T00:00:00Z%20and%20status%20eq%20'Active'&$top=10&$skip=20";
    for raw in variants {
        let q = ListQuery::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(q.canonical(), expected, "{raw}");
        assert_eq!(ListQuery::parse(&q.canonical()).unwrap(), q);
    }
}

fn arb_datetime() -> impl Strategy<Value = OffsetDateTime> {
    // 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, at 100 ns ticks (or whole seconds).
    (
        -62_135_596_800i64..=253_402_300_799i64,
        prop_oneof![Just(0u32), 0u32..10_000_000],
    )
        .prop_map(|(secs, ticks)| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(secs) * 1_000_000_000 + i128::from(ticks) * 100)
                .expect("in range by construction")
        })
}

fn arb_leaf() -> impl Strategy<Value = Filter> {
    let eq_ne = prop_oneof![Just(CompareOp::Eq), Just(CompareOp::Ne)];
    let text = prop_oneof![
        "[a-zA-Z' @.()&=+%#-]{0,10}",
        proptest::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
    ];
    prop_oneof![
        (
            prop_oneof![Just(Field::LastUpdateTime), Just(Field::CreatedTime)],
            proptest::sample::select(CompareOp::ALL.to_vec()),
            arb_datetime()
        )
            .prop_map(|(field, op, t)| cmp(field, op, Literal::DateTime(t))),
        (eq_ne.clone(), proptest::sample::select(STATUS_VALUES.to_vec())).prop_map(|(op, s)| cmp(
            Field::Status,
            op,
            Literal::String(s.into())
        )),
        (eq_ne, prop_oneof![Just(Literal::Null), text.prop_map(Literal::String)]).prop_map(|(op, v)| cmp(
            Field::AssignedTo,
            op,
            v
        )),
    ]
}

/// Restores the parser's invariant on a generated tree: nested same-kind lists are spliced.
fn normalized(f: Filter) -> Filter {
    match f {
        Filter::Compare { .. } => f,
        Filter::Not(inner) => Filter::Not(Box::new(normalized(*inner))),
        Filter::And(items) => {
            let mut out = Vec::new();
            for item in items {
                push_flat(&mut out, normalized(item), true);
            }
            collapse(out, Filter::And)
        }
        Filter::Or(items) => {
            let mut out = Vec::new();
            for item in items {
                push_flat(&mut out, normalized(item), false);
            }
            collapse(out, Filter::Or)
        }
    }
}

fn count_comparisons(f: &Filter) -> usize {
    match f {
        Filter::Compare { .. } => 1,
        Filter::Not(inner) => count_comparisons(inner),
        Filter::And(items) | Filter::Or(items) => items.iter().map(count_comparisons).sum(),
    }
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    arb_leaf()
        .prop_recursive(6, 40, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
                proptest::collection::vec(inner.clone(), 2..5).prop_map(Filter::And),
                proptest::collection::vec(inner, 2..5).prop_map(Filter::Or),
            ]
        })
        .prop_map(normalized)
}

fn arb_graph_filter() -> impl Strategy<Value = Filter<GraphField>> {
    let leaf = prop_oneof![
        (
            prop_oneof![Just(GraphField::LastUpdateDateTime), Just(GraphField::CreatedDateTime)],
            proptest::sample::select(CompareOp::ALL.to_vec()),
            arb_datetime()
        )
            .prop_map(|(field, op, t)| Filter::Compare {
                field,
                op,
                value: Literal::DateTime(t)
            }),
        (
            proptest::sample::select(vec![
                GraphField::Status,
                GraphField::Severity,
                GraphField::Classification,
                GraphField::Determination
            ]),
            prop_oneof![Just(CompareOp::Eq), Just(CompareOp::Ne)],
            any::<proptest::sample::Index>()
        )
            .prop_map(|(field, op, i)| {
                let FieldKind::Enum(values) = field.kind() else {
                    unreachable!("enum fields")
                };
                Filter::Compare {
                    field,
                    op,
                    value: Literal::String(i.get(values).to_string()),
                }
            }),
        (
            prop_oneof![Just(CompareOp::Eq), Just(CompareOp::Ne)],
            prop_oneof![
                Just(Literal::Null),
                "[a-zA-Z' @.&=+%#-]{0,10}".prop_map(Literal::String)
            ]
        )
            .prop_map(|(op, value)| Filter::Compare {
                field: GraphField::AssignedTo,
                op,
                value
            }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(|items| {
                let mut out = Vec::new();
                for item in items {
                    push_flat(&mut out, item, true);
                }
                collapse(out, Filter::And)
            }),
            proptest::collection::vec(inner, 2..4).prop_map(|items| {
                let mut out = Vec::new();
                for item in items {
                    push_flat(&mut out, item, false);
                }
                collapse(out, Filter::Or)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn canonical_round_trips(ast in arb_filter()) {
        let text = ast.canonical();
        let within_limits = text.len() <= MAX_FILTER_LEN
            && count_comparisons(&ast) <= MAX_COMPARISONS
            && ast.depth() <= MAX_DEPTH;
        match Filter::parse(&text) {
            Ok(parsed) => {
                prop_assert!(within_limits);
                prop_assert_eq!(&parsed, &ast);
                prop_assert_eq!(parsed.canonical(), text);
            }
            Err(e) => {
                prop_assert!(!within_limits, "{} rejected: {}", text, e);
            }
        }
    }

    #[test]
    fn list_query_round_trips(
        filter in proptest::option::of(arb_filter()),
        top in proptest::option::of(1u32..=MAX_TOP),
        skip in proptest::option::of(any::<u64>()),
    ) {
        let query = ListQuery { filter, top, skip };
        let canonical = query.canonical();
        if let Ok(parsed) = ListQuery::parse(&canonical) {
            prop_assert_eq!(parsed.canonical(), canonical);
            prop_assert_eq!(parsed, query);
        } else {
            let f = query.filter.as_ref().expect("only a filter can exceed limits");
            prop_assert!(f.canonical().len() > MAX_FILTER_LEN || count_comparisons(f) > MAX_COMPARISONS);
        }
    }

    #[test]
    fn graph_list_query_round_trips(
        filter in proptest::option::of(arb_graph_filter()),
        top in proptest::option::of(1u32..=GRAPH_MAX_TOP),
        skip in proptest::option::of(0u64..=i32::MAX as u64),
        order in proptest::option::of((any::<bool>(), any::<bool>())),
        expand_alerts in any::<bool>(),
        count in proptest::option::of(any::<bool>()),
    ) {
        let orderby = order.map(|(last, descending)| GraphOrderBy {
            field: if last { GraphOrderField::LastUpdateDateTime } else { GraphOrderField::CreatedDateTime },
            descending,
        });
        let query = GraphListQuery { filter, top, skip, orderby, expand_alerts, count };
        let canonical = query.canonical();
        match GraphListQuery::parse(&canonical) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.canonical(), canonical);
                prop_assert_eq!(parsed, query);
            }
            Err(e) => {
                let f = query.filter.as_ref().expect("only a filter can exceed limits");
                prop_assert!(f.canonical().len() > MAX_FILTER_LEN || f.depth() > MAX_DEPTH, "{}", e);
            }
        }
    }

    #[test]
    fn arbitrary_graph_query_strings_never_panic(raw in "([$%a-zA-Z0-9=&+' ]|%[0-9A-Fa-f]{2}){0,80}") {
        if let Ok(q) = GraphListQuery::parse(&raw) {
            prop_assert_eq!(GraphListQuery::parse(&q.canonical()), Ok(q));
        }
    }

    #[test]
    fn arbitrary_filter_text_never_panics(text in any::<String>()) {
        if let Ok(f) = Filter::parse(&text) {
            prop_assert_eq!(Filter::parse(&f.canonical()), Ok(f));
        }
    }

    #[test]
    fn filter_like_text_never_panics(text in "[a-zA-Z0-9 ()':.+\\-]{0,80}") {
        if let Ok(f) = Filter::parse(&text) {
            prop_assert_eq!(Filter::parse(&f.canonical()), Ok(f));
        }
    }

    #[test]
    fn arbitrary_query_strings_never_panic(raw in "([$%a-z0-9=&+']|%[0-9A-Fa-f]{2}|%[^0-9A-Fa-f]){0,60}") {
        if let Ok(q) = ListQuery::parse(&raw) {
            prop_assert_eq!(ListQuery::parse(&q.canonical()), Ok(q));
        }
    }

    #[test]
    fn mutated_valid_queries_never_panic(
        cut in 0usize..200,
        insert in any::<char>(),
    ) {
        let base = "$filter=(lastUpdateTime ge 2024-05-01T00:00:00.5%2B01:00 or createdTime lt '2024-05-01T00:00Z') and not (assignedTo eq 'O''Brien' or status ne 'Active')&$top=10&$skip=5";
        let mut s: String = base.chars().take(cut).collect();
        s.push(insert);
        s.extend(base.chars().skip(cut + 1));
        if let Ok(q) = ListQuery::parse(&s) {
            prop_assert_eq!(ListQuery::parse(&q.canonical()), Ok(q));
        }
    }
}
