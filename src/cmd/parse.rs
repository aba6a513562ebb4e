//! Parsers of the durations and timestamps given on the command line.

use shopstream_ingest::event::Millis;

/// Parses `90s`, `15m`, `2h`, `7d` or plain milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: Millis = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 2h or 7d"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Parses RFC 3339 with zone, or epoch milliseconds.
pub(crate) fn parse_ts_ms(text: &str) -> Result<Millis, String> {
    if let Ok(ms) = text.trim().parse::<Millis>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is neither RFC 3339 with zone nor epoch milliseconds: {e}"))
}

#[cfg(test)]
mod tests {
    use shopstream_ingest::generator::DEFAULT_START_MS;

    use super::*;

    #[test]
    fn durations_and_timestamps_parse() {
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert!(parse_duration_ms("2 weeks").is_err());
        assert_eq!(parse_ts_ms("2026-01-05T00:00:00Z"), Ok(DEFAULT_START_MS));
        assert_eq!(parse_ts_ms("1767571200000"), Ok(DEFAULT_START_MS));
    }
}
