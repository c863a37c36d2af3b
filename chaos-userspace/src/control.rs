//! How a run is named, started in the background and watched: `--name`, `--detach`, `--metrics`,
//! shared by every fault command and by `run`/`monkey`.

use std::{net::SocketAddr, time::Duration};

use crate::{error::BadInput, units};

/// The longest run name.
pub const NAME_MAX: usize = 63;

/// Naming, detaching and watching a run (shared by every fault command, `run` and `monkey`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Control {
    /// Name the run: `kchaos status` lists it, `kchaos stop --name NAME` ends it. Letters, digits,
    /// '.', '_' and '-' (not first), at most 63; no two running kchaos runs share one. Default:
    /// <command>-<pid>.
    #[arg(long, value_name = "NAME", value_parser = parse_name, value_hint = clap::ValueHint::Other)]
    pub name: Option<String>,
    /// Run in the background: return once the faults are armed (exit 0, printing the run's name
    /// and pid) or failed (exit 2, with why). Needs --duration (a scenario's timeline ends by
    /// itself). The run keeps every guarantee of a foreground run (the kernel deadline, cleanup on
    /// `kchaos stop`); its output goes to <record dir>/<NAME>.log, kept only if it fails.
    #[arg(long)]
    pub detach: bool,
    /// Serve Prometheus metrics (text exposition) at http://ADDR/metrics while the run lasts, e.g.
    /// 127.0.0.1:9464 (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// After the run ends, keep serving /metrics until a scrape has read the final figures, at most
    /// this long (e.g. 15s: a little more than the scrape interval). Default: exit at once.
    #[arg(long, value_name = "DUR", requires = "metrics", value_parser = units::parse_duration)]
    pub metrics_linger: Option<Duration>,
    /// The pipe a detached run reports "armed" or its error on (set by --detach itself).
    #[arg(long, value_name = "FD", hide = true)]
    pub ready_fd: Option<i32>,
}

impl Control {
    /// The run's name: `--name`, else `<command>-<pid>`.
    pub fn name_or_default(&self, command: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{command}-{}", std::process::id()))
    }

    /// True in the process that should start a detached run and return (not in the run itself).
    pub fn launches_detached(&self) -> bool {
        self.detach && self.ready_fd.is_none()
    }
}

/// A run name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}` (it names a log file too, so no '/' and no leading
/// '.' or '-').
pub fn parse_name(text: &str) -> Result<String, BadInput> {
    let allowed =
        "allowed are letters, digits, '.', '_' and '-' (not first), at most 63 characters";
    if text.is_empty() {
        return Err(BadInput::new(format!("an empty name: {allowed}")));
    }
    if text.len() > NAME_MAX {
        return Err(BadInput::new(format!(
            "'{text}' is {} characters long: {allowed}",
            text.len()
        )));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BadInput::new(format!("'{text}' holds {c:?}: {allowed}")));
    }
    if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(BadInput::new(format!(
            "'{text}' starts with '{}': {allowed}",
            &text[..1]
        )));
    }
    Ok(text.to_owned())
}

fn parse_metrics_addr(text: &str) -> Result<SocketAddr, BadInput> {
    text.parse().map_err(|_| {
        BadInput::new(format!(
            "'{text}' is not an address to listen on: give IP:PORT, e.g. 127.0.0.1:9464 or \
             [::1]:9464 (0.0.0.0:9464 for every interface)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_short() {
        for ok in ["a", "net-drop", "db_loss.2", "A9", &"x".repeat(63)] {
            assert_eq!(parse_name(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "_x",
            "a/b",
            "a b",
            "ä",
            "../x",
            &"x".repeat(64),
        ] {
            let err = parse_name(bad).unwrap_err().0;
            assert!(err.contains("allowed are letters"), "{bad}: {err}");
        }
    }

    #[test]
    fn metrics_addresses_are_ip_and_port() {
        assert_eq!(parse_metrics_addr("127.0.0.1:9464").unwrap().port(), 9464);
        assert!(parse_metrics_addr("[::1]:0").is_ok());
        let err = parse_metrics_addr("localhost:9464").unwrap_err().0;
        assert!(err.contains("IP:PORT"), "{err}");
        assert!(parse_metrics_addr("9464").is_err());
    }
}
