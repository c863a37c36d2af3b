//! Errors a user caused: the CLI maps them to exit code 2 (anything else is 1).

/// Bad input: names what was wrong and what is allowed. Nothing has been attached when it is returned.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A clap error about one flag's value, as one line naming the flag, the value and what is allowed
/// ("--drop -1: -1 is not a percentage: allowed is 0 to 100 ..."); None for other clap errors.
pub fn flag_value_line(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg)?;
    // "--drop <PCT>" -> "--drop".
    let flag = arg.split_whitespace().next().unwrap_or(&arg).to_owned();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let valid = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => valid.clone(),
        _ => Vec::new(),
    };
    // No value at all (`--junit` last on the line): say what to write, not "allowed are" nothing,
    // and the values only when they are few (`--errno` lists for completion over a hundred).
    if value.is_empty() && std::error::Error::source(err).is_none() {
        return Some(if valid.is_empty() || valid.len() > 12 {
            format!("{flag} needs a value: write {arg}")
        } else {
            format!(
                "{flag} needs a value: write {arg}; allowed are {}",
                valid.join(", ")
            )
        });
    }
    let why = match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None if !valid.is_empty() => format!("allowed are {}", valid.join(", ")),
        None => "not allowed".to_owned(),
    };
    // "'-5ms' is negative: ..." -> "negative: ...": the line names the value already.
    let why = [format!("'{value}' is "), format!("{value} is ")]
        .iter()
        .find_map(|p| why.strip_prefix(p.as_str()))
        .map_or(why.clone(), str::to_owned);
    Some(format!("{flag} {value}: {why}"))
}

/// The run ended on a signal (Ctrl-C, SIGTERM, SIGHUP), after undoing what it had attached and
/// writing its report: the CLI exits 128 + the signal's number, as a shell reports a process that
/// signal ended (130 for Ctrl-C, 143 for SIGTERM), so a pipeline tells it from "done as planned".
#[derive(Debug, thiserror::Error)]
#[error("ended by {name}; everything it attached is undone")]
pub struct EndedBySignal {
    pub signo: i32,
    pub name: &'static str,
}

/// The exit code for an error that is [`EndedBySignal`] (or wraps one).
pub fn signal_exit_code(err: &anyhow::Error) -> Option<u8> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<EndedBySignal>())
        .and_then(|e| u8::try_from(128 + e.signo).ok())
}

/// The closest of `allowed` to `given` (ignoring case) when it is near enough to be a typo.
pub fn did_you_mean<'a>(given: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (strsim::osa_distance(&given, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// " (did you mean 'X'?)" when `given` is near one of `allowed`, else "".
pub fn hint(given: &str, allowed: &[&str]) -> String {
    did_you_mean(given, allowed)
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

/// True when `err` or anything it wraps is bad input.
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<BadInput>().is_some())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[arg(long, value_parser = crate::units::parse_percent, allow_hyphen_values = true)]
        drop: Option<f64>,
        #[arg(long, value_enum)]
        proto: Option<Proto>,
    }

    #[derive(Clone, Debug, clap::ValueEnum)]
    enum Proto {
        Tcp,
        Udp,
    }

    fn line(args: &[&str]) -> Option<String> {
        let e =
            Cli::try_parse_from(std::iter::once("kchaos").chain(args.iter().copied())).unwrap_err();
        super::flag_value_line(&e)
    }

    #[test]
    fn a_bad_flag_value_is_one_line_naming_flag_and_value() {
        assert_eq!(
            line(&["--drop", "-1"]).unwrap(),
            "--drop -1: not a percentage: allowed is 0 to 100 (fractions allowed)"
        );
        assert_eq!(
            line(&["--proto", "sctp"]).unwrap(),
            "--proto sctp: allowed are tcp, udp"
        );
        // Other mistakes keep clap's own message (with usage).
        assert_eq!(line(&["--bogus"]), None);
    }
}
