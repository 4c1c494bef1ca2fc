//! Splits `$filter` text into tokens (words, quoted strings, parentheses), with their
//! positions for error messages.

use crate::error::{echo, QueryError};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    LParen,
    RParen,
    /// A bare run of `[A-Za-z0-9_:.+-]`: a field, a keyword, `null` or an unquoted timestamp.
    Word(String),
    /// A single-quoted string, with `''` already unescaped.
    Str(String),
    End,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    /// Byte offset in the filter text, for error messages.
    pub(crate) pos: usize,
}

impl Token {
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TokenKind::LParen => "'('".into(),
            TokenKind::RParen => "')'".into(),
            TokenKind::Word(w) => format!("'{}'", echo(w)),
            TokenKind::Str(s) => format!("string '{}'", echo(s)),
            TokenKind::End => "the end of the filter".into(),
        }
    }
}

pub(crate) fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '+' | '-')
}

pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, QueryError> {
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
