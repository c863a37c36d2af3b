//! Errno names users type (ECONNREFUSED, EIO, ...) and numbers. The names are nix's (the kernel's
//! own list for this architecture, one name per number), with the second names users also write.

use std::sync::LazyLock;

use nix::errno::Errno;

use crate::error::BadInput;

/// Second names of numbers nix knows by another (EWOULDBLOCK is EAGAIN's number).
const ALIASES: &[(&str, Errno)] = &[
    ("EWOULDBLOCK", Errno::EWOULDBLOCK),
    ("EDEADLOCK", Errno::EDEADLOCK),
    ("ENOTSUP", Errno::ENOTSUP),
];

/// (name, number) of every errno kchaos accepts by name, in number order, aliases last.
pub static ERRNOS: LazyLock<Vec<(String, i32)>> = LazyLock::new(|| {
    (1..4096)
        .map(Errno::from_raw)
        .filter(|e| *e != Errno::UnknownErrno)
        .map(|e| (format!("{e:?}"), e as i32))
        .chain(ALIASES.iter().map(|(n, e)| ((*n).to_owned(), *e as i32)))
        .collect()
});

/// Every name, for "did you mean" and lists.
pub fn names() -> Vec<&'static str> {
    ERRNOS.iter().map(|(n, _)| n.as_str()).collect()
}

/// Parses `ECONNREFUSED`, `econnrefused` or `111`.
pub fn parse(text: &str) -> Result<i32, BadInput> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..4096).contains(&n) {
            return Ok(n);
        }
        return Err(BadInput::new(format!(
            "--errno {t}: an errno number is 1 to 4095"
        )));
    }
    ERRNOS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(t))
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            let names = names();
            // A near name is the likely fix; only without one is the whole list worth its length.
            BadInput::new(match crate::error::did_you_mean(t, &names) {
                Some(near) => format!(
                    "--errno {t}: unknown errno (did you mean '{near}'?); use a number from 1 to \
                     4095 or a name"
                ),
                None => format!(
                    "--errno {t}: unknown errno; use a number from 1 to 4095 or one of {}",
                    names.join(", ")
                ),
            })
        })
}

/// The name of an errno number, if it has one.
pub fn name(n: i32) -> String {
    match Errno::from_raw(n) {
        Errno::UnknownErrno => format!("errno {n}"),
        e => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("ECONNREFUSED").unwrap(), libc::ECONNREFUSED);
        assert_eq!(parse("enospc").unwrap(), libc::ENOSPC);
        assert_eq!(parse("5").unwrap(), 5);
        assert!(parse("0").is_err());
        assert!(
            parse("EWHATEVER")
                .unwrap_err()
                .to_string()
                .contains("ECONNREFUSED")
        );
        assert_eq!(name(libc::EIO), "EIO");
        assert_eq!(name(4000), "errno 4000");
        // nix's list, and the second names.
        assert_eq!(parse("EHWPOISON").unwrap(), libc::EHWPOISON);
        assert_eq!(parse("ewouldblock").unwrap(), libc::EAGAIN);
        assert_eq!(name(libc::EAGAIN), "EAGAIN");
        assert!(
            parse("ECONREFUSED")
                .unwrap_err()
                .to_string()
                .contains("did you mean 'ECONNREFUSED'")
        );
    }
}
