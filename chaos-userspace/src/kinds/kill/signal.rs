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

/// The standard signals by name (numbers differ between architectures, so they come from libc).
const NAMED: [(&str, i32); 30] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("SYS", libc::SIGSYS),
];

/// Parses a signal: a name with or without SIG (any case) or a number from 1 to SIGRTMAX.
pub fn parse_signal(text: &str) -> Result<Signal, BadInput> {
    let t = text.trim();
    if let Ok(number) = t.parse::<i32>() {
        let max = libc::SIGRTMAX();
        if !(1..=max).contains(&number) {
            return Err(BadInput::new(format!("signal numbers go from 1 to {max}")));
        }
        let name = NAMED
            .iter()
            .find(|(_, n)| *n == number)
            .map(|(name, _)| *name);
        return Ok(Signal { number, name });
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMED
        .iter()
        .find(|(name, _)| *name == bare)
        .map(|&(name, number)| Signal {
            number,
            name: Some(name),
        })
        .ok_or_else(|| {
            let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
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
