//! The filter tree (fields of each dialect, operators, literals, `and`/`or`/`not`) and its
//! canonical printer.

use std::cmp::Ordering;

use ::time::OffsetDateTime;

use crate::time::write_datetime;

/// Valid values of the `status` field.
pub const STATUS_VALUES: [&str; 4] = crate::vocabulary::STATUSES;

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

    pub(crate) fn from_keyword(word: &str) -> Option<CompareOp> {
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
    pub(crate) fn depth(&self) -> usize {
        match self {
            Filter::Compare { .. } => 0,
            Filter::Not(inner) => 1 + inner.depth(),
            Filter::And(items) | Filter::Or(items) => 1 + items.iter().map(Filter::<F>::depth).max().unwrap_or(0),
        }
    }
}
