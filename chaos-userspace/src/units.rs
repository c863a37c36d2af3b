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

/// Parses a size in bytes: "512M", "1G", "64KiB", "1.5G", "20 MiB", "1000". K, M, G and T (with or
/// without "B" or "iB", any case) are powers of 1024, as they have always been here: `parse-size`'s
/// binary configuration, so "20M" keeps meaning 20 MiB (a decimal parser would make it 20,000,000).
pub fn parse_size(text: &str) -> Result<u64, BadInput> {
    // parse-size ignores spaces inside the number but not around the whole value.
    let t = text.trim();
    if t.starts_with('-') {
        return Err(negative(text, "a size of 0 or more, e.g. 512M"));
    }
    // ".5G" has always been read as half a GiB; parse-size wants a digit before the point.
    let owned;
    let t = if t.starts_with('.') {
        owned = format!("0{t}");
        owned.as_str()
    } else {
        t
    };
    match SIZES.parse_size(t) {
        Ok(bytes) => Ok(bytes),
        Err(::parse_size::Error::PosOverflow) => Err(BadInput::new(format!(
            "'{}' is too large a size: allowed is at most 16 EiB (2^64 - 1 bytes)",
            text.trim()
        ))),
        Err(_) => Err(BadInput::new(format!(
            "'{}' is not a size: write e.g. 512M, 1G, 64K or a number of bytes",
            text.trim()
        ))),
    }
}

/// K/M/G/T as powers of 1024 whether or not the user wrote the "i".
const SIZES: ::parse_size::Config = ::parse_size::Config::new().with_binary();

fn negative(text: &str, allowed: &str) -> BadInput {
    BadInput::new(format!(
        "'{}' is negative: allowed is {allowed}",
        text.trim()
    ))
}

/// Parses a bandwidth in bits per second, with tc's units: bit, kbit, mbit, gbit, tbit (powers of
/// 1000), or bps, kbps, mbps, gbps, tbps (bytes per second, as tc reads them); any case, a "/s" after
/// a bit unit is accepted ("10Mbit/s"). A bare number is refused, since "10" could mean anything.
pub fn parse_rate(text: &str) -> Result<u64, BadInput> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(negative(text, "a rate above 0, e.g. 10mbit"));
    }
    let (num, unit) = split_number(t);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix("/s").unwrap_or(&unit);
    let bits = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        "tbps" => 8e12,
        _ => f64::NAN,
    };
    let value = num.parse::<f64>().map(|v| v * bits).unwrap_or(f64::NAN);
    if !value.is_finite() {
        return Err(BadInput::new(format!(
            "'{t}' is not a rate: write a number and a unit (bit, kbit, mbit, gbit, or tc's bytes: \
             bps, kbps, mbps), e.g. 10mbit"
        )));
    }
    if value < 1.0 {
        return Err(BadInput::new(format!(
            "'{t}' is not allowed: a rate of at least 1bit"
        )));
    }
    Ok(value.round() as u64)
}

/// Formats bits per second the way tc prints them: "10Mbit/s", "1.5Gbit/s", "800Kbit/s".
pub fn format_rate(bits_per_s: f64) -> String {
    let (div, unit) = [(1e12, "Tbit"), (1e9, "Gbit"), (1e6, "Mbit"), (1e3, "Kbit")]
        .into_iter()
        .find(|&(d, _)| bits_per_s >= d)
        .unwrap_or((1.0, "bit"));
    let v = (bits_per_s / div * 1000.0).round() / 1000.0;
    format!("{v}{unit}/s")
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
    #[test]
    fn rates() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("10Mbit/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1.5gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("100kbit").unwrap(), 100_000);
        // tc's bytes per second.
        assert_eq!(parse_rate("1mbps").unwrap(), 8_000_000);
        assert!(parse_rate("10").unwrap_err().0.contains("not a rate"));
        assert!(parse_rate("-1mbit").unwrap_err().0.contains("negative"));
        assert!(parse_rate("0mbit").unwrap_err().0.contains("at least 1bit"));
        assert_eq!(format_rate(10e6), "10Mbit/s");
        assert_eq!(format_rate(1.5e9), "1.5Gbit/s");
        assert_eq!(format_rate(800.0), "800bit/s");
    }

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
        // Every form the hand-written parser accepted, with the meaning it gave them.
        let cases: &[(&str, u64)] = &[
            ("512M", 512 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KB", 64 << 10),
            ("64kb", 64 << 10),
            ("64kib", 64 << 10),
            ("20M", 20 << 20),
            ("20MB", 20 << 20),
            ("2T", 2 << 40),
            ("2TiB", 2 << 40),
            ("100", 100),
            ("100B", 100),
            ("100b", 100),
            ("0", 0),
            ("1.5G", 3 << 29),
            ("0.5K", 512),
            (".5K", 512),
            ("5.K", 5 << 10),
            ("20 M", 20 << 20),
            ("20 MiB", 20 << 20),
            (" 64M ", 64 << 20),
            ("256.0 MiB", 256 << 20),
            ("1.0001K", 1024),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text).unwrap(), *bytes, "{text}");
        }
        // What parse-size adds: digit grouping, exponents, P and E.
        assert_eq!(parse_size("1_000").unwrap(), 1000);
        assert_eq!(parse_size("1e3").unwrap(), 1000);
        assert_eq!(parse_size("1P").unwrap(), 1 << 50);
        for bad in ["1Q", "", "M", "abc", "1.2.3M", "1 ZiB", "12x"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(
                e.contains("is not a size") && e.contains("512M"),
                "{bad}: {e}"
            );
            assert!(e.contains(&format!("'{}'", bad.trim())), "{bad}: {e}");
        }
        assert!(
            parse_size("-1G")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert_eq!(
            parse_size("20E").unwrap_err().to_string(),
            "'20E' is too large a size: allowed is at most 16 EiB (2^64 - 1 bytes)"
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
