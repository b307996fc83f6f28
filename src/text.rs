//! Text from callers, made safe to quote in error messages and log lines.

/// `text` cut to at most `max` bytes (at a character boundary, marked with
/// "..."), control characters escaped: it may quote a caller's value.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let piece: std::borrow::Cow<'_, str> = match escaped(c) {
            Some(escape) => escape.into(),
            None => c.to_string().into(),
        };
        if out.len() + piece.len() > max.saturating_sub(3) {
            out.push_str("...");
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// `c` as `\uXXXX` when it is a control character or changes how a line
/// reads without showing (line and paragraph separators, bidirectional
/// controls): text from callers in error messages and log lines. The escape
/// is valid inside a JSON string too (all such characters are in the Basic
/// Multilingual Plane).
pub fn escaped(c: char) -> Option<String> {
    (c.is_control() || is_invisible(c)).then(|| format!("\\u{:04x}", c as u32))
}

fn is_invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
