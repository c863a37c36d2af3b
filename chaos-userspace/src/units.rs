//! Parsing the units users type: durations ("250ms", "1.5s", "2m"), percentages, sizes, rates.

use std::time::Duration;

use crate::error::BadInput;

/// "1.5s" -> ("1.5", "s").
fn split_number(text: &str) -> (&str, &str) {
    let t = text.trim();
    t.split_at(
        t.find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len()),
    )
}

/// Parses a duration: a number with a unit ns, us, ms, s, m or h ("1.5s", "200ms"), or several whole
/// ones in a row as humantime writes them ("1m30s", "1h 5m"). A bare number is refused, since "10"
/// could mean anything.
pub fn parse_duration(text: &str) -> Result<Duration, BadInput> {
    if text.trim().starts_with('-') {
        return Err(negative(text, "a duration of 0 or more, e.g. 250ms"));
    }
    let (num, unit) = split_number(text);
    let bad = || {
        BadInput::new(format!(
            "'{text}' is not a duration: write a number and a unit (ns, us, ms, s, m, h), e.g. 250ms, \
             1.5s or 1m30s"
        ))
    };
    let Ok(value) = num.parse::<f64>() else {
        return Err(bad());
    };
    if unit_ns(unit).is_none() {
        // "1m30s": humantime's grammar (whole numbers, units in a row); it refuses a bare number.
        return humantime::parse_duration(text.trim()).map_err(|_| bad());
    }
    let ns = value * unit_ns(unit).unwrap_or(f64::NAN);
    if !ns.is_finite() || ns > 1e18 {
        return Err(BadInput::new(format!("'{text}' is too long a duration")));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Nanoseconds in one of the units a single-number duration may carry.
fn unit_ns(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return None,
    })
}

/// Parses a percentage 0..=100 (fractions allowed; a trailing % is accepted).
pub fn parse_percent(text: &str) -> Result<f64, BadInput> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        Ok(v) => Err(BadInput::new(format!(
            "{v} is not a percentage: allowed is 0 to 100 (fractions allowed)"
        ))),
        Err(_) => Err(BadInput::new(format!(
            "'{text}' is not a percentage: allowed is a number from 0 to 100"
        ))),
    }
}

/// Parses a size in bytes: "512M", "1G", "64KiB", "1000" (K/M/G/T are powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, BadInput> {
    if text.trim().starts_with('-') {
        return Err(negative(text, "a size of 0 or more, e.g. 512M"));
    }
    let (num, unit) = split_number(text);
    let bad = || {
        BadInput::new(format!(
            "'{text}' is not a size: write e.g. 512M, 1G, 64K or a number of bytes"
        ))
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    Ok((value * mult as f64).round() as u64)
}

fn negative(text: &str, allowed: &str) -> BadInput {
    BadInput::new(format!(
        "'{}' is negative: allowed is {allowed}",
        text.trim()
    ))
}

/// Parses a whole number that fits `T` (counts, pids, seeds): "-1", "1.5" and "1e3" are refused.
pub fn parse_whole<T: TryFrom<u64>>(text: &str) -> Result<T, BadInput> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(negative(t, "a whole number of 0 or more"));
    }
    let value: u64 = t.parse().map_err(|_| {
        BadInput::new(format!(
            "'{t}' is not a whole number: write digits only, e.g. 3"
        ))
    })?;
    T::try_from(value).map_err(|_| BadInput::new(format!("{value} is too large")))
}

/// Parses a TCP/UDP port, 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, BadInput> {
    match parse_whole::<u64>(text) {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(BadInput::new(format!(
            "'{}' is not a port: allowed is 1 to 65535",
            text.trim()
        ))),
    }
}

/// Formats a duration the way users typed it: "250ms", "1.5s".
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns >= 1_000_000_000 {
        format!("{:.3}s", d.as_secs_f64())
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns >= 1_000_000 {
        format!("{:.3}ms", ns as f64 / 1e6)
    } else {
        format!("{}us", ns as f64 / 1e3)
    }
}

/// Percentage, 0 for an empty whole.
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        // Compound, as humantime writes them.
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 5m").unwrap(), Duration::from_secs(3900));
        assert_eq!(
            parse_duration("2s500ms").unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(parse_duration("1.5m30s").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1m30").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("1x")
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("30").unwrap(), 30.0);
        assert_eq!(parse_percent("0.5%").unwrap(), 0.5);
        assert!(
            parse_percent("140")
                .unwrap_err()
                .to_string()
                .contains("0 to 100")
        );
        assert!(parse_percent("abc").is_err());
        assert!(parse_percent("-1").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("1Q").is_err());
        assert!(
            parse_size("-1G")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn negative_numbers_say_so() {
        assert_eq!(
            parse_duration("-5ms").unwrap_err().to_string(),
            "'-5ms' is negative: allowed is a duration of 0 or more, e.g. 250ms"
        );
        assert_eq!(
            parse_whole::<u32>("-1").unwrap_err().to_string(),
            "'-1' is negative: allowed is a whole number of 0 or more"
        );
        assert_eq!(parse_whole::<u32>("42").unwrap(), 42);
        assert!(parse_whole::<u32>("1.5").is_err());
        assert!(
            parse_whole::<u32>("4294967296")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        assert_eq!(parse_port("443").unwrap(), 443);
        for bad in ["0", "65536", "-1", "x"] {
            assert!(
                parse_port(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("1 to 65535"),
                "{bad}"
            );
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
    }
}
