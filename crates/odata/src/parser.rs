//! Parses `$filter` text into a [`Filter`] tree, within the documented limits of length, depth
//! and number of comparisons.

use crate::error::{echo, QueryError};
use crate::filter::{CompareOp, FieldKind, Filter, FilterField, GraphField, Literal};
use crate::lexer::{tokenize, Token, TokenKind};
use crate::time::{parse_timestamp, LITERAL_FRACTION_DIGITS};

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
pub(crate) const MAX_SYNTAX_DEPTH: usize = 2 * MAX_DEPTH;

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

pub(crate) fn parse_filter<F: FilterField>(text: &str) -> Result<Filter<F>, QueryError> {
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

/// Recursive descent over the grammar, loosest binding first:
///
/// ```text
/// or         := and ("or" and)*
/// and        := unary ("and" unary)*
/// unary      := "not" unary | primary
/// primary    := "(" or ")" | comparison
/// comparison := field op literal
/// ```
pub(crate) struct Parser<F> {
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

pub(crate) fn unknown_field<F: FilterField>(word: &str, pos: usize) -> QueryError {
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
pub(crate) fn push_flat<F: FilterField>(items: &mut Vec<Filter<F>>, operand: Filter<F>, is_and: bool) {
    match operand {
        Filter::And(inner) if is_and => items.extend(inner),
        Filter::Or(inner) if !is_and => items.extend(inner),
        other => items.push(other),
    }
}

pub(crate) fn collapse<F: FilterField>(mut items: Vec<Filter<F>>, make: fn(Vec<Filter<F>>) -> Filter<F>) -> Filter<F> {
    if items.len() == 1 {
        items.remove(0)
    } else {
        make(items)
    }
}
