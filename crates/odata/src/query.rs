//! The list query options of each dialect: `ListQuery` (`GET /api/incidents`: `$filter`,
//! `$top`, `$skip`) and `GraphListQuery` (`GET /v1.0/security/incidents`: also `$orderby`,
//! `$expand`, `$count`), parsed strictly and printed canonically.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{echo, truncate, QueryError};
use crate::filter::{Filter, GraphField};

/// Largest `$top` the upstream API accepts.
pub const MAX_TOP: u32 = 100;

/// Bytes left unescaped in the canonical `$filter` value: RFC 3986 unreserved characters plus a
/// few that are legal in a query and keep the upstream URL readable. `+`, `&`, `=`, `#` and `%`
/// are escaped because they would change the meaning of the query string.
pub(crate) const FILTER_VALUE_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The list options of one `GET /api/incidents` request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub top: Option<u32>,
    pub skip: Option<u64>,
}

impl ListQuery {
    /// Parses a raw URL query string (the part after '?', still percent-encoded; '+' means space), e.g.
    /// "$filter=lastUpdateTime%20ge%202024-05-01T00:00:00Z&$top=10". Empty string => all None.
    pub fn parse(raw: &str) -> Result<ListQuery, QueryError> {
        let mut query = ListQuery::default();
        // Empty segments ("a=1&&b=2", a trailing '&') carry no option; clients emit them freely.
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            let (raw_name, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
            let name = decode_component(raw_name).map_err(|reason| {
                QueryError::new(
                    truncate(raw_name),
                    format!("query option name '{}' {reason}", echo(raw_name)),
                )
            })?;
            let option = match name.as_str() {
                "$filter" | "$top" | "$skip" => name.clone(),
                _ => return Err(unknown_option(&name, &DEFENDER_OPTIONS)),
            };
            let value = decode_component(raw_value)
                .map_err(|reason| QueryError::new(option.clone(), format!("{option} value {reason}")))?;
            let repeated = match option.as_str() {
                "$filter" => query.filter.is_some(),
                "$top" => query.top.is_some(),
                _ => query.skip.is_some(),
            };
            if repeated {
                return Err(QueryError::new(
                    option.clone(),
                    format!("{option} is given more than once; give it at most once"),
                ));
            }
            if value.trim().is_empty() {
                return Err(QueryError::new(option.clone(), format!("{option} has an empty value")));
            }
            match option.as_str() {
                "$filter" => query.filter = Some(Filter::parse(&value)?),
                "$top" => {
                    let top = parse_integer("$top", &value, 1, u64::from(MAX_TOP))?;
                    // The range check above keeps this within u32.
                    query.top = Some(u32::try_from(top).unwrap_or(MAX_TOP));
                }
                _ => query.skip = Some(parse_integer("$skip", &value, 0, u64::MAX)?),
            }
        }
        Ok(query)
    }

    /// Canonical query string: options in the fixed order $filter, $top, $skip; only present ones; filter in canonical form,
    /// percent-encoded so it can be appended after '?' to an upstream URL. Two queries that mean the same (whitespace, operator
    /// case, redundant parentheses, option order, `%24filter` vs `$filter`) give the same string. Used as a cache key AND sent upstream.
    pub fn canonical(&self) -> String {
        let mut parts = Vec::with_capacity(3);
        if let Some(filter) = &self.filter {
            let text = filter.canonical();
            parts.push(format!("$filter={}", utf8_percent_encode(&text, FILTER_VALUE_ENCODE)));
        }
        if let Some(top) = self.top {
            parts.push(format!("$top={top}"));
        }
        if let Some(skip) = self.skip {
            parts.push(format!("$skip={skip}"));
        }
        parts.join("&")
    }
}

/// Largest `$top` Graph's incidents list accepts (fact sheet §2.1, observed).
pub const GRAPH_MAX_TOP: u32 = 50;

/// The query options of `GET /v1.0/security/incidents`.
pub(crate) const GRAPH_OPTIONS: [&str; 6] = ["$filter", "$top", "$skip", "$orderby", "$expand", "$count"];

/// A sort key Graph's incidents list accepts in `$orderby` (the metadata marks incidents
/// sortable; these two are the keys real integrations use, fact sheet §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphOrderField {
    LastUpdateDateTime,
    CreatedDateTime,
}

impl GraphOrderField {
    pub fn name(self) -> &'static str {
        match self {
            GraphOrderField::LastUpdateDateTime => "lastUpdateDateTime",
            GraphOrderField::CreatedDateTime => "createdDateTime",
        }
    }
}

/// `$orderby`: one key and a direction (OData's default direction is ascending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphOrderBy {
    pub field: GraphOrderField,
    pub descending: bool,
}

/// The list options of one `GET /v1.0/security/incidents` request (the Graph facade's own
/// query model). Parsed with the same strictness as [`ListQuery`]: unknown options, repeated
/// options and bad values are errors naming the option.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphListQuery {
    pub filter: Option<Filter<GraphField>>,
    pub top: Option<u32>,
    pub skip: Option<u64>,
    pub orderby: Option<GraphOrderBy>,
    /// `$expand=alerts`.
    pub expand_alerts: bool,
    /// `$count=true|false`; `Some(false)` is kept so the canonical form says what was asked.
    pub count: Option<bool>,
}

impl GraphListQuery {
    /// Parses a raw URL query string (still percent-encoded; '+' means space).
    pub fn parse(raw: &str) -> Result<GraphListQuery, QueryError> {
        let mut query = GraphListQuery::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            let (raw_name, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
            let name = decode_component(raw_name).map_err(|reason| {
                QueryError::new(
                    truncate(raw_name),
                    format!("query option name '{}' {reason}", echo(raw_name)),
                )
            })?;
            let Some(option) = GRAPH_OPTIONS.iter().copied().find(|o| *o == name) else {
                return Err(unknown_option(&name, &GRAPH_OPTIONS));
            };
            let value = decode_component(raw_value)
                .map_err(|reason| QueryError::new(option, format!("{option} value {reason}")))?;
            if seen.contains(&option) {
                return Err(QueryError::new(
                    option,
                    format!("{option} is given more than once; give it at most once"),
                ));
            }
            seen.push(option);
            if value.trim().is_empty() {
                return Err(QueryError::new(option, format!("{option} has an empty value")));
            }
            match option {
                "$filter" => query.filter = Some(Filter::parse_graph(&value)?),
                "$top" => {
                    // Graph's own words for a page too large (fact sheet §2.1, observed).
                    if value.bytes().all(|b| b.is_ascii_digit())
                        && value.parse::<u64>().map_or(true, |n| n > u64::from(GRAPH_MAX_TOP))
                    {
                        return Err(QueryError::new(
                            "$top",
                            format!(
                                "The query specified in the URI is not valid. The limit of '{GRAPH_MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{}'.",
                                echo(&value)
                            ),
                        ));
                    }
                    let top = parse_integer("$top", &value, 1, u64::from(GRAPH_MAX_TOP))?;
                    query.top = Some(u32::try_from(top).unwrap_or(GRAPH_MAX_TOP));
                }
                // Graph's `$skip` is an Edm.Int32: a larger one is Graph's 400, refused here
                // before it costs a List call.
                "$skip" => query.skip = Some(parse_integer("$skip", &value, 0, i32::MAX as u64)?),
                "$orderby" => query.orderby = Some(parse_orderby(&value)?),
                "$expand" => {
                    if value.trim() != "alerts" {
                        return Err(QueryError::new(
                            "$expand",
                            format!("$expand supports only 'alerts', got '{}'", echo(&value)),
                        ));
                    }
                    query.expand_alerts = true;
                }
                _ => {
                    query.count = Some(match value.trim().to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(QueryError::new(
                                "$count",
                                format!("$count must be true or false, got '{}'", echo(&value)),
                            ))
                        }
                    })
                }
            }
        }
        Ok(query)
    }

    /// Canonical query string, options in the fixed order $filter, $top, $skip, $orderby,
    /// $expand, $count; the same rules as [`ListQuery::canonical`]. A cache key and what is sent
    /// to a Graph upstream.
    pub fn canonical(&self) -> String {
        let mut parts = Vec::with_capacity(6);
        if let Some(filter) = &self.filter {
            let text = filter.canonical();
            parts.push(format!("$filter={}", utf8_percent_encode(&text, FILTER_VALUE_ENCODE)));
        }
        if let Some(top) = self.top {
            parts.push(format!("$top={top}"));
        }
        if let Some(skip) = self.skip {
            parts.push(format!("$skip={skip}"));
        }
        if let Some(order) = self.orderby {
            let dir = if order.descending { "desc" } else { "asc" };
            parts.push(format!("$orderby={}%20{dir}", order.field.name()));
        }
        if self.expand_alerts {
            parts.push("$expand=alerts".to_string());
        }
        if let Some(count) = self.count {
            parts.push(format!("$count={count}"));
        }
        parts.join("&")
    }
}

/// `field [asc|desc]`, one key only.
pub(crate) fn parse_orderby(value: &str) -> Result<GraphOrderBy, QueryError> {
    let bad = |why: String| QueryError::new("$orderby", why);
    let mut words = value.split_whitespace();
    let field = match words.next() {
        Some("lastUpdateDateTime") => GraphOrderField::LastUpdateDateTime,
        Some("createdDateTime") => GraphOrderField::CreatedDateTime,
        _ => {
            return Err(bad(format!(
                "$orderby supports lastUpdateDateTime or createdDateTime with asc or desc, got '{}'",
                echo(value)
            )))
        }
    };
    let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(bad(format!(
                "$orderby direction must be asc or desc, got '{}'",
                echo(value)
            )))
        }
    };
    if words.next().is_some() {
        return Err(bad(format!(
            "$orderby takes one key and a direction, got '{}'",
            echo(value)
        )));
    }
    Ok(GraphOrderBy { field, descending })
}

/// Percent-decodes one query component, '+' meaning space as in HTML forms. Malformed escapes
/// are rejected rather than passed through, so `%zz` and `%25zz` cannot share a cache key by
/// accident and the upstream never sees a query we could not read ourselves.
pub(crate) fn decode_component(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).unwrap_or(&[]);
            if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "has a malformed percent-escape at byte {i} (expected '%' and two hex digits)"
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "is not valid UTF-8 after percent-decoding".to_string())
}

/// The query options of `GET /api/incidents`.
pub(crate) const DEFENDER_OPTIONS: [&str; 3] = ["$filter", "$top", "$skip"];

pub(crate) fn unknown_option(name: &str, supported: &[&str]) -> QueryError {
    let hint = if let Some(right) = supported
        .iter()
        .find(|s| s.eq_ignore_ascii_case(name) || s.get(1..).is_some_and(|bare| bare.eq_ignore_ascii_case(name)))
    {
        format!("; option names are case-sensitive and start with '$': did you mean '{right}'?")
    } else {
        let (last, rest) = supported.split_last().unwrap_or((&"", &[]));
        format!("; the supported options are {} and {last}", rest.join(", "))
    };
    QueryError::new(truncate(name), format!("unknown query option '{}'{hint}", echo(name)))
}

/// Parses a plain decimal integer within `min..=max`. Only ASCII digits are accepted: Rust's
/// own parser would also take a leading '+', which no OData client sends.
pub(crate) fn parse_integer(option: &str, value: &str, min: u64, max: u64) -> Result<u64, QueryError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QueryError::new(
            option,
            format!("{option} must be a non-negative integer, got '{}'", echo(value)),
        ));
    }
    let range = if max == u64::MAX {
        format!("at least {min}")
    } else {
        format!("between {min} and {max}")
    };
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(QueryError::new(
            option,
            format!("{option} must be {range}, got {}", echo(value)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ECHO_LIMIT;
    use crate::filter::{CompareOp, Field, Literal};

    fn query_err(raw: &str) -> QueryError {
        match ListQuery::parse(raw) {
            Ok(q) => panic!("{raw:?} should be rejected, parsed as {q:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn list_query_options() {
        assert_eq!(ListQuery::parse("").unwrap(), ListQuery::default());
        assert_eq!(ListQuery::parse("").unwrap().canonical(), "");
        let q = ListQuery::parse("$top=100&$skip=0").unwrap();
        assert_eq!((q.filter.clone(), q.top, q.skip), (None, Some(100), Some(0)));
        assert_eq!(q.canonical(), "$top=100&$skip=0");
        assert_eq!(ListQuery::parse("$top=1").unwrap().top, Some(1));
        assert_eq!(
            ListQuery::parse("$skip=18446744073709551615").unwrap().skip,
            Some(u64::MAX)
        );
        // Strings with characters that matter in a query string survive the round trip.
        let q = ListQuery::parse("$filter=assignedTo%20eq%20'a%26b%3Dc%2Bd%25e%23f'").unwrap();
        assert_eq!(
            q.filter,
            Some(Filter::Compare {
                field: Field::AssignedTo,
                op: CompareOp::Eq,
                value: Literal::String("a&b=c+d%e#f".into())
            })
        );
        assert_eq!(q.canonical(), "$filter=assignedTo%20eq%20'a%26b%3Dc%2Bd%25e%23f'");
        assert_eq!(ListQuery::parse(&q.canonical()).unwrap(), q);
    }

    #[test]
    fn list_query_rejections() {
        let cases = [
            ("$top=0", "$top", "between 1 and 100"),
            ("$top=101", "$top", "between 1 and 100"),
            ("$top=99999999999999999999999", "$top", "between 1 and 100"),
            ("$top=-1", "$top", "non-negative integer"),
            ("$top=+5", "$top", "non-negative integer"),
            ("$top=%205", "$top", "non-negative integer"),
            ("$top=ten", "$top", "non-negative integer"),
            ("$top=", "$top", "empty value"),
            ("$top", "$top", "empty value"),
            ("$skip=1.5", "$skip", "non-negative integer"),
            ("$skip=18446744073709551616", "$skip", "at least 0"),
            ("$skip=", "$skip", "empty value"),
            ("$filter=", "$filter", "empty value"),
            ("$filter=+++", "$filter", "empty value"),
            ("$top=1&$top=2", "$top", "more than once"),
            (
                "$filter=status eq 'Active'&%24filter=status eq 'Active'",
                "$filter",
                "more than once",
            ),
            ("$skip=1&$skip=1", "$skip", "more than once"),
            ("$select=id", "$select", "supported options"),
            ("$orderby=createdTime", "$orderby", "supported options"),
            ("$TOP=5", "$TOP", "did you mean '$top'"),
            ("top=5", "top", "did you mean '$top'"),
            ("foo", "foo", "supported options"),
            ("=5", "", "unknown query option ''"),
            (
                "$filter=status%20eq%20%27Active%2",
                "$filter",
                "malformed percent-escape",
            ),
            ("$filter=%zz", "$filter", "malformed percent-escape"),
            ("%2", "%2", "malformed percent-escape"),
            ("$filter=assignedTo%20eq%20'%FF'", "$filter", "not valid UTF-8"),
            ("%FF=1", "%FF", "not valid UTF-8"),
            ("$filter=status%20eq%20Active", "$filter", "single-quoted status"),
            ("$top=5&$filter=bogus", "$filter", "invalid $filter"),
        ];
        for (raw, option, reason) in cases {
            let e = query_err(raw);
            assert_eq!(e.option, option, "{raw:?}: {e:?}");
            assert!(
                e.message.contains(reason),
                "{raw:?}: message {:?} should mention {reason:?}",
                e.message
            );
        }
        // Messages echo at most a bounded amount of user input.
        let long = format!("{}=1", "x".repeat(10_000));
        let e = query_err(&long);
        assert!(e.message.len() < 300, "{}", e.message.len());
        assert_eq!(e.option.len(), ECHO_LIMIT);
    }

    #[test]
    fn errors_display_their_message() {
        let e = query_err("$top=0");
        assert_eq!(e.to_string(), e.message);
    }

    fn graph_err(raw: &str) -> QueryError {
        match GraphListQuery::parse(raw) {
            Ok(q) => panic!("{raw:?} should be rejected, parsed as {q:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn graph_list_query_options() {
        assert_eq!(GraphListQuery::parse("").unwrap(), GraphListQuery::default());
        let q = GraphListQuery::parse(
            "%24count=TRUE&$expand=alerts&$orderby=lastUpdateDateTime+DESC&$skip=7&$top=050&$filter=lastUpdateDateTime%20ge%202024-01-15T10:00:00Z%20and%20status%20eq%20'active'%20and%20severity%20ne%20'low'",
        )
        .unwrap();
        assert_eq!(q.top, Some(50));
        assert_eq!(q.skip, Some(7));
        assert_eq!(
            q.orderby,
            Some(GraphOrderBy {
                field: GraphOrderField::LastUpdateDateTime,
                descending: true
            })
        );
        assert!(q.expand_alerts);
        assert_eq!(q.count, Some(true));
        let canonical = "$filter=lastUpdateDateTime%20ge%202024-01-15T10:00:00Z%20and%20status%20eq%20'active'%20and%20severity%20ne%20'low'&$top=50&$skip=7&$orderby=lastUpdateDateTime%20desc&$expand=alerts&$count=true";
        assert_eq!(q.canonical(), canonical);
        assert_eq!(GraphListQuery::parse(canonical).unwrap(), q);
        let q = GraphListQuery::parse("$orderby=createdDateTime&$count=false").unwrap();
        assert_eq!(q.canonical(), "$orderby=createdDateTime%20asc&$count=false");
        // Every documented filterable field, with its literal kinds.
        for text in [
            "assignedTo eq null",
            "assignedTo eq 'a@b.c'",
            "classification eq 'informationalExpectedActivity'",
            "createdDateTime lt 2024-01-15T10:00:00Z",
            "determination ne 'notEnoughDataToValidate'",
            "lastUpdateDateTime gt 2024-01-15T10:00:00.1234567Z",
            "severity eq 'unknown'",
            "status eq 'awaitingAction' or status eq 'inProgress'",
        ] {
            let f = Filter::parse_graph(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(Filter::parse_graph(&f.canonical()).unwrap(), f);
        }
        // The Defender parser is untouched by the Graph vocabulary, and vice versa.
        assert!(Filter::parse("severity eq 'high'").is_err());
        assert!(Filter::parse_graph("lastUpdateTime ge 2024-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn graph_list_query_rejections() {
        let cases = [
            (
                "$top=51",
                "$top",
                "The limit of '50' for Top query has been exceeded. The value from the incoming request is '51'.",
            ),
            ("$top=99999999999999999999", "$top", "The limit of '50'"),
            ("$top=0", "$top", "between 1 and 50"),
            ("$top=-1", "$top", "non-negative integer"),
            ("$skip=x", "$skip", "non-negative integer"),
            (
                "$orderby=severity desc",
                "$orderby",
                "lastUpdateDateTime or createdDateTime",
            ),
            ("$orderby=createdDateTime sideways", "$orderby", "asc or desc"),
            (
                "$orderby=createdDateTime asc, lastUpdateDateTime desc",
                "$orderby",
                "asc or desc",
            ),
            ("$orderby=createdDateTime asc extra", "$orderby", "one key"),
            ("$expand=comments", "$expand", "only 'alerts'"),
            ("$count=yes", "$count", "true or false"),
            ("$count=true&$count=true", "$count", "more than once"),
            (
                "$select=id",
                "$select",
                "$filter, $top, $skip, $orderby, $expand and $count",
            ),
            ("$Top=5", "$Top", "did you mean '$top'"),
            ("expand=alerts", "expand", "did you mean '$expand'"),
            ("$filter=status eq 'Active'", "$filter", "not a status"),
            ("$filter=severity gt 'low'", "$filter", "only be compared with eq or ne"),
            (
                "$filter=lastUpdateTime ge 2024-01-01T00:00:00Z",
                "$filter",
                "did you mean",
            ),
            (
                "$filter=id eq '5'",
                "$filter",
                "filterable fields are assignedTo, classification",
            ),
            (
                "$filter=determination eq 'compromisedUser'",
                "$filter",
                "not a determination",
            ),
            (
                "$filter=classification eq null",
                "$filter",
                "single-quoted classification",
            ),
            ("$filter=", "$filter", "empty value"),
            ("$filter=%zz", "$filter", "malformed percent-escape"),
        ];
        for (raw, option, reason) in cases {
            let e = graph_err(raw);
            assert_eq!(e.option, option, "{raw:?}: {e:?}");
            assert!(
                e.message.contains(reason),
                "{raw:?}: {:?} should mention {reason:?}",
                e.message
            );
        }
    }
}
