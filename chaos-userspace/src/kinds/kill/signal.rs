//! Signals as users name them: KILL, SIGTERM, term, 9.

use std::fmt;

use crate::error::BadInput;

/// A signal number with its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Signal {
    pub number: i32,
    /// None for signals without a standard name (real-time ones).
    pub name: Option<&'static str>,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.number),
        }
    }
}

impl Signal {
    pub const KILL: Signal = Signal {
        number: libc::SIGKILL,
        name: Some("KILL"),
    };
}

/// The standard signals by name without SIG (nix's list: numbers differ between architectures).
fn named() -> impl Iterator<Item = (&'static str, i32)> {
    nix::sys::signal::Signal::iterator().map(|s| {
        let name = s.as_str();
        (name.strip_prefix("SIG").unwrap_or(name), s as i32)
    })
}

/// The standard signal names without SIG, for completions and lists.
pub fn names() -> Vec<&'static str> {
    named().map(|(name, _)| name).collect()
}

/// Parses a signal: a name with or without SIG (any case) or a number from 1 to SIGRTMAX.
pub fn parse_signal(text: &str) -> Result<Signal, BadInput> {
    let t = text.trim();
    if let Ok(number) = t.parse::<i32>() {
        let max = libc::SIGRTMAX();
        if !(1..=max).contains(&number) {
            return Err(BadInput::new(format!("signal numbers go from 1 to {max}")));
        }
        let name = named().find(|(_, n)| *n == number).map(|(name, _)| name);
        return Ok(Signal { number, name });
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    named()
        .find(|(name, _)| *name == bare)
        .map(|(name, number)| Signal {
            number,
            name: Some(name),
        })
        .ok_or_else(|| {
            let names = names();
            BadInput::new(format!(
                "'{t}' is not a signal{}: use a name such as KILL, TERM, INT, STOP, USR1, or a number",
                crate::error::hint(bare, &names)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::KILL);
        assert_eq!(parse_signal("sigterm").unwrap().number, libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::KILL);
        assert_eq!(parse_signal("Term").unwrap().to_string(), "SIGTERM");
        assert_eq!(
            parse_signal("34").unwrap().to_string(),
            format!("signal {}", 34)
        );
        assert_eq!(parse_signal("SIGWINCH").unwrap().number, libc::SIGWINCH);
        assert_eq!(parse_signal("stkflt").unwrap().number, libc::SIGSTKFLT);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("999").is_err());
        assert!(
            parse_signal("BOGUS")
                .unwrap_err()
                .to_string()
                .contains("not a signal")
        );
    }
}
