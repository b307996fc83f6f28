//! Durations in rule and config files: `30s`, `90m`, `36h`, `14d`, `2w`,
//! and sums such as `1d12h`.

const UNITS: [(char, i64); 5] =
    [('w', 7 * 86_400_000), ('d', 86_400_000), ('h', 3_600_000), ('m', 60_000), ('s', 1_000)];

/// Parses a duration into milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("invalid duration '{text}': expected e.g. 500ms, 30s, 90m, 36h, 14d, 2w or 1d12h");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_len = rest[digits..].find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let size = match unit {
            "ms" => 1,
            u if u.len() == 1 => UNITS.iter().find(|(c, _)| u.starts_with(*c)).ok_or_else(invalid)?.1,
            _ => return Err(invalid()),
        };
        let n: i64 = number.parse().map_err(|_| invalid())?;
        total = n.checked_mul(size).and_then(|v| total.checked_add(v)).ok_or_else(invalid)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// The shortest spelling of a duration in whole units, largest unit first.
pub fn format_duration(mut millis: i64) -> String {
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    // Weeks are read but not written: "14d" reads better than "2w".
    for (unit, size) in UNITS.into_iter().skip(1) {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("14d"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3_600_000));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("1s500ms"), Ok(1500));
        for bad in ["", "14", "d", "14x", "-1d", "1.5d", "99999999999999999w", "5mss", "1 d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30s", "14d", "1d12h", "8d1h1m1s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(parse_duration("2w").unwrap()), "14d");
        assert_eq!(format_duration(1500), "1s500ms");
    }
}
