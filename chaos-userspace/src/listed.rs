//! Value parsers that list the values a flag takes, for shell completions (`kchaos completions`):
//! `--errno`, `--syscall` and `--signal` complete their names instead of file names.

use clap::builder::{PossibleValue, TypedValueParser};

/// Parses as `inner` does and lists `values` as the flag's possible values. The list is only what
/// completion offers: values outside it (an errno number, `SIGTERM`, `term`) stay accepted, since
/// `inner` alone decides. Give the flag `hide_possible_values = true` when the list is long.
#[derive(Clone)]
pub struct Listed<P> {
    inner: P,
    values: fn() -> Vec<&'static str>,
}

impl<P> Listed<P> {
    pub fn new(inner: P, values: fn() -> Vec<&'static str>) -> Self {
        Self { inner, values }
    }
}

impl<P: TypedValueParser> TypedValueParser for Listed<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        self.inner.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            (self.values)().into_iter().map(PossibleValue::new),
        ))
    }
}

/// `--errno`: the errno names (numbers accepted too; checked when the fault is built).
pub fn errno() -> Listed<clap::builder::StringValueParser> {
    Listed::new(
        clap::builder::StringValueParser::new(),
        crate::kinds::syscall::errno::names,
    )
}

/// `--syscall`: the operation names and their aliases (checked when the fault is built).
pub fn syscall() -> Listed<clap::builder::StringValueParser> {
    Listed::new(
        clap::builder::StringValueParser::new(),
        crate::kinds::syscall::fault::op_names,
    )
}

/// How `--signal` is parsed.
type ParseSignal = fn(&str) -> Result<crate::kinds::kill::signal::Signal, crate::error::BadInput>;

/// `--signal`: the standard signal names without SIG (numbers and SIGNAME accepted too).
pub fn signal() -> Listed<ParseSignal> {
    Listed::new(
        crate::kinds::kill::signal::parse_signal,
        crate::kinds::kill::signal::names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[arg(long, value_parser = errno(), hide_possible_values = true, allow_hyphen_values = true)]
        errno: String,
        #[arg(long, value_parser = signal(), hide_possible_values = true)]
        signal: crate::kinds::kill::signal::Signal,
        #[arg(long, value_parser = syscall(), value_delimiter = ',')]
        syscall: Vec<String>,
    }

    /// Values outside the completion list still parse as before: numbers, aliases, other cases.
    #[test]
    fn numbers_and_aliases_still_parse() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "t",
            "--errno",
            "111",
            "--signal",
            "sigterm",
            "--syscall",
            "sendto,open",
        ])
        .unwrap();
        assert_eq!(cli.errno, "111");
        assert_eq!(cli.signal.number, libc::SIGTERM);
        assert_eq!(cli.syscall, ["sendto", "open"]);
        let cli = Cli::try_parse_from([
            "t",
            "--errno",
            "ewouldblock",
            "--signal",
            "15",
            "--syscall",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.errno, "ewouldblock");
        assert!(
            Cli::try_parse_from(["t", "--errno", "EIO", "--signal", "NOPE", "--syscall", "x"])
                .is_err()
        );
    }
}
