//! Parses, canonicalises and evaluates the OData query options (`$filter`, `$top`, `$skip`) of
//! `GET /api/incidents`, so the proxy can reject bad requests itself, key its cache on one
//! canonical spelling of each query, send that same spelling upstream, and filter cached lists.
//!
//! Only the subset documented for the Defender incidents API is accepted: comparisons of
//! `lastUpdateTime`, `createdTime`, `status` and `assignedTo` against literals, combined with
//! `and`, `or`, `not` and parentheses. Anything else is a [`QueryError`] rather than something
//! forwarded blindly, because upstream errors cost quota.

use std::cmp::Ordering;
use std::fmt::Write as _;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Largest `$top` the upstream API accepts.
pub const MAX_TOP: u32 = 100;
/// Longest accepted `$filter` text in bytes (after percent-decoding), and also the longest
/// canonical form, so that every accepted filter's canonical form is itself accepted.
pub const MAX_FILTER_LEN: usize = 2048;
/// Deepest accepted logical nesting: the number of `and`/`or`/`not` operators on the longest
/// path from the root of the filter to a comparison (after flattening `a and (b and c)`).
pub const MAX_DEPTH: usize = 32;
/// Most comparisons one filter may contain.
pub const MAX_COMPARISONS: usize = 64;

/// Bound on syntactic nesting (open parentheses plus pending `not`s) so recursion stays shallow
/// even for inputs like `((((...))))` whose redundant parentheses never reach the AST. Twice
/// [`MAX_DEPTH`] because the canonical printer spends at most two levels (`not (`) per operator.
const MAX_SYNTAX_DEPTH: usize = 2 * MAX_DEPTH;
/// Fractional-second digits accepted in a filter literal: 100 ns ticks are what the upstream
/// (.NET `DateTimeOffset`) can represent, and what the canonical form prints.
const LITERAL_FRACTION_DIGITS: usize = 7;
/// Fractional-second digits accepted in an incident's own timestamps when evaluating.
pub const INCIDENT_FRACTION_DIGITS: usize = 9;
/// How much of a user-supplied string is echoed back in an error message.
const ECHO_LIMIT: usize = 64;

/// Valid values of the `status` field.
pub const STATUS_VALUES: [&str; 4] = crate::vocabulary::STATUSES;

/// Bytes left unescaped in the canonical `$filter` value: RFC 3986 unreserved characters plus a
/// few that are legal in a query and keep the upstream URL readable. `+`, `&`, `=`, `#` and `%`
/// are escaped because they would change the meaning of the query string.
const FILTER_VALUE_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A rejected query: `option` names the query option at fault (`$filter`, `$top`, `$skip`, or
/// the unknown option's name) so the caller can fill the error envelope's `target`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
    /// Which option: "$filter", "$top", "$skip" or the unknown option's name.
    pub option: String,
}

impl QueryError {
    fn new(option: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError {
            message: message.into(),
            option: option.into(),
        }
    }

    fn filter(message: impl std::fmt::Display) -> Self {
        QueryError::new("$filter", format!("invalid $filter: {message}"))
    }
}

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
const GRAPH_OPTIONS: [&str; 6] = ["$filter", "$top", "$skip", "$orderby", "$expand", "$count"];

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
                "$skip" => query.skip = Some(parse_integer("$skip", &value, 0, u64::MAX)?),
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
fn parse_orderby(value: &str) -> Result<GraphOrderBy, QueryError> {
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
fn decode_component(raw: &str) -> Result<String, String> {
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
const DEFENDER_OPTIONS: [&str; 3] = ["$filter", "$top", "$skip"];

fn unknown_option(name: &str, supported: &[&str]) -> QueryError {
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
fn parse_integer(option: &str, value: &str, min: u64, max: u64) -> Result<u64, QueryError> {
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

/// At most [`ECHO_LIMIT`] characters of user input, for error messages.
fn echo(s: &str) -> String {
    if s.chars().count() > ECHO_LIMIT {
        format!("{}…", truncate(s).escape_debug())
    } else {
        s.escape_debug().to_string()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(ECHO_LIMIT).collect()
}

/// A filterable incident field. Names are case-sensitive, as in the Defender docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    LastUpdateTime,
    CreatedTime,
    Status,
    AssignedTo,
}

impl Field {
    pub const ALL: [Field; 4] = [
        Field::LastUpdateTime,
        Field::CreatedTime,
        Field::Status,
        Field::AssignedTo,
    ];

    /// The field's name in filters and in incident JSON.
    pub fn name(self) -> &'static str {
        match self {
            Field::LastUpdateTime => "lastUpdateTime",
            Field::CreatedTime => "createdTime",
            Field::Status => "status",
            Field::AssignedTo => "assignedTo",
        }
    }
}

/// What a filterable field is compared against, which decides the operators and literals a
/// comparison may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Unquoted (or quoted) ISO-8601 timestamps; all six operators.
    DateTime,
    /// A single-quoted member of this list (case-sensitive); eq and ne only.
    Enum(&'static [&'static str]),
    /// A single-quoted string or `null`; eq and ne only.
    Text,
}

/// The filterable fields of one API dialect: the grammar is shared, the vocabulary is not.
pub trait FilterField: Copy + Eq + std::hash::Hash + std::fmt::Debug + 'static {
    /// Every field, in the order error messages list them.
    const FIELDS: &'static [Self];
    /// The fields as an error message lists them ("a, b and c").
    const LIST: &'static str;
    /// The field's name in filters and in the incident JSON the filter is evaluated against.
    fn name(self) -> &'static str;
    fn kind(self) -> FieldKind;
    /// The field a caller most likely meant by `word` from the other dialect, for hints.
    fn other_dialect(_word: &str) -> Option<Self> {
        None
    }
}

impl FilterField for Field {
    const FIELDS: &'static [Self] = &Field::ALL;
    const LIST: &'static str = "lastUpdateTime, createdTime, status and assignedTo";

    fn name(self) -> &'static str {
        Field::name(self)
    }

    fn kind(self) -> FieldKind {
        match self {
            Field::LastUpdateTime | Field::CreatedTime => FieldKind::DateTime,
            Field::Status => FieldKind::Enum(&STATUS_VALUES),
            Field::AssignedTo => FieldKind::Text,
        }
    }
}

/// A filterable field of the Graph dialect (`GET /v1.0/security/incidents`), per the fact
/// sheet §2.1: the documented filterable properties, enum literals in metadata camelCase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphField {
    AssignedTo,
    Classification,
    CreatedDateTime,
    Determination,
    LastUpdateDateTime,
    Severity,
    Status,
}

impl GraphField {
    pub const ALL: [GraphField; 7] = [
        GraphField::AssignedTo,
        GraphField::Classification,
        GraphField::CreatedDateTime,
        GraphField::Determination,
        GraphField::LastUpdateDateTime,
        GraphField::Severity,
        GraphField::Status,
    ];
}

impl FilterField for GraphField {
    const FIELDS: &'static [Self] = &GraphField::ALL;
    const LIST: &'static str =
        "assignedTo, classification, createdDateTime, determination, lastUpdateDateTime, severity and status";

    fn name(self) -> &'static str {
        match self {
            GraphField::AssignedTo => "assignedTo",
            GraphField::Classification => "classification",
            GraphField::CreatedDateTime => "createdDateTime",
            GraphField::Determination => "determination",
            GraphField::LastUpdateDateTime => "lastUpdateDateTime",
            GraphField::Severity => "severity",
            GraphField::Status => "status",
        }
    }

    fn kind(self) -> FieldKind {
        use crate::enums;
        match self {
            GraphField::AssignedTo => FieldKind::Text,
            GraphField::CreatedDateTime | GraphField::LastUpdateDateTime => FieldKind::DateTime,
            GraphField::Classification => FieldKind::Enum(&enums::GRAPH_CLASSIFICATIONS),
            GraphField::Determination => FieldKind::Enum(&enums::GRAPH_DETERMINATIONS),
            GraphField::Severity => FieldKind::Enum(&enums::GRAPH_SEVERITIES),
            GraphField::Status => FieldKind::Enum(&enums::GRAPH_INCIDENT_STATUSES),
        }
    }

    fn other_dialect(word: &str) -> Option<Self> {
        match word {
            "lastUpdateTime" => Some(GraphField::LastUpdateDateTime),
            "createdTime" => Some(GraphField::CreatedDateTime),
            _ => None,
        }
    }
}

/// A comparison operator; keywords are case-insensitive on input and lowercase when printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    pub const ALL: [CompareOp; 6] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn from_keyword(word: &str) -> Option<CompareOp> {
        CompareOp::ALL
            .into_iter()
            .find(|op| op.keyword().eq_ignore_ascii_case(word))
    }

    /// Whether `actual <op> expected` holds, given `actual.cmp(expected)`.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareOp::Eq => ordering == Ordering::Equal,
            CompareOp::Ne => ordering != Ordering::Equal,
            CompareOp::Gt => ordering == Ordering::Greater,
            CompareOp::Ge => ordering != Ordering::Less,
            CompareOp::Lt => ordering == Ordering::Less,
            CompareOp::Le => ordering != Ordering::Greater,
        }
    }
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// Always held in UTC, at 100 ns precision when produced by the parser.
    DateTime(OffsetDateTime),
    String(String),
    Null,
}

impl Literal {
    fn write_canonical(&self, out: &mut String) {
        match self {
            Literal::DateTime(t) => write_datetime(*t, out),
            Literal::String(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
            Literal::Null => out.push_str("null"),
        }
    }
}

/// Prints `YYYY-MM-DDTHH:MM:SS[.fffffff]Z` in UTC; the fraction is omitted when zero.
/// The canonical form of a timestamp: UTC, `YYYY-MM-DDTHH:MM:SS[.fffffff]Z`.
pub fn format_datetime(t: OffsetDateTime) -> String {
    let mut out = String::new();
    write_datetime(t, &mut out);
    out
}

fn write_datetime(t: OffsetDateTime, out: &mut String) {
    let t = t.to_offset(UtcOffset::UTC);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ticks = t.nanosecond() / 100;
    if ticks != 0 {
        let _ = write!(out, ".{ticks:07}");
    }
    out.push('Z');
}

/// Parses an ISO-8601 / RFC 3339 timestamp `YYYY-MM-DDTHH:MM[:SS[.f+]](Z|±HH:MM)` into UTC.
/// Hand-written rather than `time`'s RFC 3339 parser because OData allows omitting seconds and
/// because the digit limit differs between filter literals and incident data.
pub fn parse_timestamp(s: &str, max_fraction_digits: usize) -> Result<OffsetDateTime, String> {
    let b = s.as_bytes();
    let mut pos = 0usize;
    let digits = |pos: &mut usize, n: usize| -> Option<u32> {
        let chunk = b.get(*pos..*pos + n)?;
        if !chunk.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *pos += n;
        Some(chunk.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let expect = |pos: &mut usize, options: &[u8]| -> Option<u8> {
        let c = *b.get(*pos)?;
        if options.contains(&c) {
            *pos += 1;
            Some(c)
        } else {
            None
        }
    };
    const SHAPE: &str = "expected a timestamp like 2024-05-01T00:00:00Z";

    let year = digits(&mut pos, 4).ok_or(SHAPE)?;
    expect(&mut pos, b"-").ok_or(SHAPE)?;
    let month = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b"-").ok_or(SHAPE)?;
    let day = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b"Tt").ok_or(SHAPE)?;
    let hour = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b":").ok_or(SHAPE)?;
    let minute = digits(&mut pos, 2).ok_or(SHAPE)?;
    let mut second = 0;
    let mut nanos = 0;
    if expect(&mut pos, b":").is_some() {
        second = digits(&mut pos, 2).ok_or(SHAPE)?;
        if expect(&mut pos, b".").is_some() {
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 {
                return Err("expected digits after the decimal point of the seconds".into());
            }
            if count > max_fraction_digits {
                return Err(format!(
                    "at most {max_fraction_digits} fractional-second digits are supported"
                ));
            }
            nanos = b[start..pos]
                .iter()
                .chain(std::iter::repeat(&b'0'))
                .take(9)
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        }
    }
    let offset_seconds: i32 = match expect(&mut pos, b"Zz+-") {
        Some(b'Z' | b'z') => 0,
        Some(sign) => {
            let oh = digits(&mut pos, 2).ok_or(SHAPE)?;
            expect(&mut pos, b":").ok_or(SHAPE)?;
            let om = digits(&mut pos, 2).ok_or(SHAPE)?;
            if oh > 23 || om > 59 {
                return Err("the UTC offset is out of range".into());
            }
            let magnitude = (oh * 3600 + om * 60) as i32;
            if sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        None => return Err("a UTC designator ('Z') or offset (like +02:00) is required after the time".into()),
    };
    if pos != b.len() {
        return Err(SHAPE.into());
    }

    // Every component below was read from at most 4 digits, so the narrowing casts are exact.
    let month = Month::try_from(month as u8).map_err(|_| "the month is out of range")?;
    let date = Date::from_calendar_date(year as i32, month, day as u8).map_err(|_| "the date does not exist")?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err("the time of day is out of range".into());
    }
    let time = Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos)
        .map_err(|_| "the time of day is out of range")?;
    let offset = UtcOffset::from_whole_seconds(offset_seconds).map_err(|_| "the UTC offset is out of range")?;
    let local = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let utc = OffsetDateTime::from_unix_timestamp_nanos(local.unix_timestamp_nanos())
        .map_err(|_| "the timestamp is out of range")?;
    // Years outside 1..=9999 cannot be printed back as four digits.
    if !(1..=9999).contains(&utc.year()) {
        return Err("the timestamp is out of range (years 0001 to 9999 in UTC)".into());
    }
    Ok(utc)
}

/// A parsed `$filter`.
///
/// Invariant kept by [`Filter::parse`]: `And`/`Or` hold at least two operands and never an
/// operand of their own kind (`a and (b and c)` is `And([a, b, c])`), so equivalent spellings
/// give equal values. Hand-built values that break it still print and evaluate sensibly.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter<F: FilterField = Field> {
    Compare { field: F, op: CompareOp, value: Literal },
    Not(Box<Filter<F>>),
    And(Vec<Filter<F>>),
    Or(Vec<Filter<F>>),
}

impl Filter {
    /// Parses Defender-dialect `$filter` text that is already percent-decoded.
    pub fn parse(text: &str) -> Result<Filter, QueryError> {
        parse_filter(text)
    }
}

impl Filter<GraphField> {
    /// Parses Graph-dialect `$filter` text that is already percent-decoded: the same grammar
    /// and limits as [`Filter::parse`], Graph's field names and enum spellings.
    pub fn parse_graph(text: &str) -> Result<Filter<GraphField>, QueryError> {
        parse_filter(text)
    }
}

fn parse_filter<F: FilterField>(text: &str) -> Result<Filter<F>, QueryError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(QueryError::filter(format!(
            "the filter is {} bytes long; at most {MAX_FILTER_LEN} are allowed",
            text.len()
        )));
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser::<F> {
        tokens,
        next: 0,
        syntax_depth: 0,
        comparisons: 0,
        fields: std::marker::PhantomData,
    };
    if parser.peek().kind == TokenKind::End {
        return Err(QueryError::filter("the filter is empty"));
    }
    let filter = parser.parse_or()?;
    let trailing = parser.peek();
    if trailing.kind != TokenKind::End {
        let what = if trailing.kind == TokenKind::RParen {
            "unbalanced ')'".to_string()
        } else {
            format!("unexpected {}", trailing.describe())
        };
        return Err(QueryError::filter(format!(
            "{what} at position {} after a complete expression",
            trailing.pos
        )));
    }
    if filter.depth() > MAX_DEPTH {
        return Err(QueryError::filter(format!(
            "the filter nests and/or/not more than {MAX_DEPTH} levels deep"
        )));
    }
    // Checked on the canonical form too, so that every accepted filter's canonical form
    // (which may be longer, e.g. seconds added to `T00:00Z`) is itself accepted.
    let canonical_len = filter.canonical().len();
    if canonical_len > MAX_FILTER_LEN {
        return Err(QueryError::filter(format!(
            "the filter's canonical form is {canonical_len} bytes long; at most {MAX_FILTER_LEN} are allowed"
        )));
    }
    Ok(filter)
}

impl<F: FilterField> Filter<F> {
    /// Canonical text, not percent-encoded: single spaces, lowercase keywords, parentheses only
    /// where precedence needs them, UTC timestamps, re-quoted strings.
    ///
    /// `not` is always followed by a parenthesised operand unless that operand is another `not`:
    /// in OData `not` binds tighter than `eq`, so the upstream reads `not status eq 'Active'` as
    /// `(not status) eq 'Active'`.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut String) {
        match self {
            Filter::Compare { field, op, value } => {
                out.push_str(field.name());
                out.push(' ');
                out.push_str(op.keyword());
                out.push(' ');
                value.write_canonical(out);
            }
            Filter::Not(inner) => {
                out.push_str("not ");
                if let Filter::Not(_) = **inner {
                    inner.write_canonical(out);
                } else {
                    out.push('(');
                    inner.write_canonical(out);
                    out.push(')');
                }
            }
            Filter::And(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" and ");
                    }
                    // `or` binds looser than `and`, so only it needs parentheses here.
                    if let Filter::Or(_) = item {
                        out.push('(');
                        item.write_canonical(out);
                        out.push(')');
                    } else {
                        item.write_canonical(out);
                    }
                }
            }
            Filter::Or(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" or ");
                    }
                    item.write_canonical(out);
                }
            }
        }
    }

    /// Logical nesting depth: `and`/`or`/`not` operators on the longest root-to-leaf path.
    fn depth(&self) -> usize {
        match self {
            Filter::Compare { .. } => 0,
            Filter::Not(inner) => 1 + inner.depth(),
            Filter::And(items) | Filter::Or(items) => 1 + items.iter().map(Filter::<F>::depth).max().unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    LParen,
    RParen,
    /// A bare run of `[A-Za-z0-9_:.+-]`: a field, a keyword, `null` or an unquoted timestamp.
    Word(String),
    /// A single-quoted string, with `''` already unescaped.
    Str(String),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    /// Byte offset in the filter text, for error messages.
    pos: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.kind {
            TokenKind::LParen => "'('".into(),
            TokenKind::RParen => "')'".into(),
            TokenKind::Word(w) => format!("'{}'", echo(w)),
            TokenKind::Str(s) => format!("string '{}'", echo(s)),
            TokenKind::End => "the end of the filter".into(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '+' | '-')
}

fn tokenize(text: &str) -> Result<Vec<Token>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                let kind = if c == '(' { TokenKind::LParen } else { TokenKind::RParen };
                tokens.push(Token { kind, pos });
            }
            '\'' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) => {
                            if chars.peek().is_some_and(|&(_, c)| c == '\'') {
                                chars.next();
                                value.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(QueryError::filter(format!(
                                "the string starting at position {pos} has no closing quote"
                            )))
                        }
                    }
                }
                tokens.push(Token {
                    kind: TokenKind::Str(value),
                    pos,
                });
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token {
                    kind: TokenKind::Word(word),
                    pos,
                });
            }
            other => {
                return Err(QueryError::filter(format!(
                    "unexpected character '{}' at position {pos}",
                    other.escape_debug()
                )))
            }
        }
    }
    tokens.push(Token {
        kind: TokenKind::End,
        pos: text.len(),
    });
    Ok(tokens)
}

/// Recursive descent over the grammar, loosest binding first:
///
/// ```text
/// or         := and ("or" and)*
/// and        := unary ("and" unary)*
/// unary      := "not" unary | primary
/// primary    := "(" or ")" | comparison
/// comparison := field op literal
/// ```
struct Parser<F> {
    tokens: Vec<Token>,
    next: usize,
    syntax_depth: usize,
    comparisons: usize,
    fields: std::marker::PhantomData<F>,
}

impl<F: FilterField> Parser<F> {
    fn peek(&self) -> &Token {
        // `tokenize` always ends the list with `End`, and `advance` never moves past it.
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.next += 1;
        }
        token
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().kind, TokenKind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn enter(&mut self, pos: usize) -> Result<(), QueryError> {
        self.syntax_depth += 1;
        if self.syntax_depth > MAX_SYNTAX_DEPTH {
            return Err(QueryError::filter(format!(
                "parentheses and 'not' nest more than {MAX_SYNTAX_DEPTH} levels deep at position {pos}"
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.syntax_depth -= 1;
    }

    fn parse_or(&mut self) -> Result<Filter<F>, QueryError> {
        let mut items = Vec::new();
        push_flat(&mut items, self.parse_and()?, false);
        while self.peek_keyword("or") {
            self.advance();
            push_flat(&mut items, self.parse_and()?, false);
        }
        Ok(collapse(items, Filter::Or))
    }

    fn parse_and(&mut self) -> Result<Filter<F>, QueryError> {
        let mut items = Vec::new();
        push_flat(&mut items, self.parse_unary()?, true);
        while self.peek_keyword("and") {
            self.advance();
            push_flat(&mut items, self.parse_unary()?, true);
        }
        Ok(collapse(items, Filter::And))
    }

    fn parse_unary(&mut self) -> Result<Filter<F>, QueryError> {
        if self.peek_keyword("not") {
            let token = self.advance();
            self.enter(token.pos)?;
            let operand = self.parse_unary()?;
            self.leave();
            return Ok(Filter::Not(Box::new(operand)));
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Filter<F>, QueryError> {
        let token = self.advance();
        match token.kind {
            TokenKind::LParen => {
                self.enter(token.pos)?;
                let inner = self.parse_or()?;
                let close = self.advance();
                if close.kind != TokenKind::RParen {
                    return Err(QueryError::filter(format!(
                        "expected ')' to close the '(' at position {} but found {} at position {}",
                        token.pos,
                        close.describe(),
                        close.pos
                    )));
                }
                self.leave();
                Ok(inner)
            }
            TokenKind::Word(ref word) => self.parse_comparison(word, token.pos),
            _ => Err(QueryError::filter(format!(
                "expected a comparison, 'not' or '(' but found {} at position {}",
                token.describe(),
                token.pos
            ))),
        }
    }

    fn parse_comparison(&mut self, word: &str, pos: usize) -> Result<Filter<F>, QueryError> {
        let field = F::FIELDS
            .iter()
            .copied()
            .find(|f| f.name() == word)
            .ok_or_else(|| unknown_field::<F>(word, pos))?;
        let kind = field.kind();
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(QueryError::filter(format!(
                "the filter has more than {MAX_COMPARISONS} comparisons"
            )));
        }

        let op_token = self.advance();
        let op = match &op_token.kind {
            TokenKind::Word(w) => CompareOp::from_keyword(w),
            _ => None,
        }
        .ok_or_else(|| {
            QueryError::filter(format!(
                "expected a comparison operator (eq, ne, gt, ge, lt, le) after '{}' but found {} at position {}",
                field.name(),
                op_token.describe(),
                op_token.pos
            ))
        })?;
        if kind != FieldKind::DateTime && !matches!(op, CompareOp::Eq | CompareOp::Ne) {
            return Err(QueryError::filter(format!(
                "'{}' can only be compared with eq or ne, not {} (position {})",
                field.name(),
                op.keyword(),
                op_token.pos
            )));
        }

        let literal = self.advance();
        let value = match (kind, &literal.kind) {
            (FieldKind::DateTime, TokenKind::Word(text)) | (FieldKind::DateTime, TokenKind::Str(text)) => {
                let t = parse_timestamp(text, LITERAL_FRACTION_DIGITS).map_err(|reason| {
                    QueryError::filter(format!(
                        "bad timestamp '{}' for '{}' at position {}: {reason}",
                        echo(text),
                        field.name(),
                        literal.pos
                    ))
                })?;
                Literal::DateTime(t)
            }
            (FieldKind::Enum(values), TokenKind::Str(s)) => {
                if !values.contains(&s.as_str()) {
                    let expected: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
                    return Err(QueryError::filter(format!(
                        "'{}' is not a {} (position {}); expected one of {}",
                        echo(s),
                        field.name(),
                        literal.pos,
                        expected.join(", ")
                    )));
                }
                Literal::String(s.clone())
            }
            (FieldKind::Text, TokenKind::Str(s)) => Literal::String(s.clone()),
            (FieldKind::Text, TokenKind::Word(w)) if w.eq_ignore_ascii_case("null") => Literal::Null,
            _ => {
                let expected = match kind {
                    FieldKind::DateTime => "a timestamp like 2024-05-01T00:00:00Z".to_string(),
                    FieldKind::Enum(values) => format!(
                        "a single-quoted {} like '{}'",
                        field.name(),
                        values.first().copied().unwrap_or("")
                    ),
                    FieldKind::Text => "a single-quoted string or null".to_string(),
                };
                return Err(QueryError::filter(format!(
                    "'{}' must be compared with {expected}, but found {} at position {}",
                    field.name(),
                    literal.describe(),
                    literal.pos
                )));
            }
        };
        Ok(Filter::Compare { field, op, value })
    }
}

fn unknown_field<F: FilterField>(word: &str, pos: usize) -> QueryError {
    if ["and", "or"].iter().any(|k| k.eq_ignore_ascii_case(word)) {
        return QueryError::filter(format!(
            "expected a comparison, 'not' or '(' but found '{word}' at position {pos}"
        ));
    }
    let hint = match F::FIELDS.iter().find(|f| f.name().eq_ignore_ascii_case(word)) {
        Some(f) => format!("; field names are case-sensitive: did you mean '{}'?", f.name()),
        None => match F::other_dialect(word) {
            Some(f) => format!("; did you mean '{}'?", f.name()),
            None => format!("; filterable fields are {}", F::LIST),
        },
    };
    QueryError::filter(format!(
        "expected a field but found '{}' at position {pos}{hint}",
        echo(word)
    ))
}

/// Appends an operand to an `and` (`is_and`) or `or` list, splicing in the operands of a nested
/// list of the same kind so `a and (b and c)` and `(a and b) and c` parse to the same value.
fn push_flat<F: FilterField>(items: &mut Vec<Filter<F>>, operand: Filter<F>, is_and: bool) {
    match operand {
        Filter::And(inner) if is_and => items.extend(inner),
        Filter::Or(inner) if !is_and => items.extend(inner),
        other => items.push(other),
    }
}

fn collapse<F: FilterField>(mut items: Vec<Filter<F>>, make: fn(Vec<Filter<F>>) -> Filter<F>) -> Filter<F> {
    if items.len() == 1 {
        items.remove(0)
    } else {
        make(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

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

    fn query_err(raw: &str) -> QueryError {
        match ListQuery::parse(raw) {
            Ok(q) => panic!("{raw:?} should be rejected, parsed as {q:?}"),
            Err(e) => e,
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
        let expected =
            "$filter=lastUpdateTime%20ge%202024-05-01T00:00:00Z%20and%20status%20eq%20'Active'&$top=10&$skip=20";
        for raw in variants {
            let q = ListQuery::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(q.canonical(), expected, "{raw}");
            assert_eq!(ListQuery::parse(&q.canonical()).unwrap(), q);
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
            Some(cmp(
                Field::AssignedTo,
                CompareOp::Eq,
                Literal::String("a&b=c+d%e#f".into())
            ))
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
            skip in proptest::option::of(any::<u64>()),
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
}
