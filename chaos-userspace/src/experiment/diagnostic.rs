//! Errors in a scenario file: each names the file, line, column and field, and says what is allowed.

use std::fmt;

use super::yaml::Mark;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `faults[1].net.drop`.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &str, mark: Mark, field: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: mark.line,
            col: mark.col,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every error found in one scenario (validation goes on after the first, so a user fixes all at once).
#[derive(Debug, thiserror::Error)]
pub struct ScenarioErrors(pub Vec<Diagnostic>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in the scenario:",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.0 {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

pub use crate::error::did_you_mean;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(
            did_you_mean("dorp", &["drop", "delay", "jitter"]),
            Some("drop")
        );
        assert_eq!(
            did_you_mean("steady_sate", &["steady_state", "faults"]),
            Some("steady_state")
        );
        assert_eq!(did_you_mean("xyz", &["drop", "delay"]), None);
    }

    #[test]
    fn formats_place_and_field() {
        let d = Diagnostic::new("s.yaml", Mark { line: 3, col: 7 }, "faults[0].for", "bad");
        assert_eq!(d.to_string(), "s.yaml:3:7: faults[0].for: bad");
    }
}
