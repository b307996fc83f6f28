//! Rule-file errors, located by line and column.

use std::{fmt, ops::Range};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl RuleError {
    pub fn at(source: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let offset = span.map_or(0, |s| s.start).min(source.len());
        let before = &source[..floor_char_boundary(source, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self { line, column, message: message.into() }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(RuleError::at(src, Some(0..1), "x").line, 1);
        let e = RuleError::at(src, Some(src.rfind('=').unwrap()..20), "x");
        assert_eq!((e.line, e.column), (2, 4));
        assert_eq!(RuleError::at(src, None, "x").line, 1);
    }
}
