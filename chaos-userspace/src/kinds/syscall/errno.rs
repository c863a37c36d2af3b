//! Errno names users type (ECONNREFUSED, EIO, ...) and numbers.

use crate::error::BadInput;

/// (name, number) of the errnos kchaos accepts by name.
pub const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("EWOULDBLOCK", libc::EWOULDBLOCK),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ETXTBSY", libc::ETXTBSY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("EPIPE", libc::EPIPE),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("EDQUOT", libc::EDQUOT),
    ("ENOBUFS", libc::ENOBUFS),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ECONNRESET", libc::ECONNRESET),
    ("EISCONN", libc::EISCONN),
    ("ENOTCONN", libc::ENOTCONN),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EALREADY", libc::EALREADY),
    ("EINPROGRESS", libc::EINPROGRESS),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
    ("EMSGSIZE", libc::EMSGSIZE),
];

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
        .map(|&(_, n)| n)
        .ok_or_else(|| {
            let names: Vec<&str> = ERRNOS.iter().map(|(n, _)| *n).collect();
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

/// The name of an errno number, if it has one here.
pub fn name(n: i32) -> String {
    ERRNOS
        .iter()
        .find(|&&(_, v)| v == n)
        .map_or_else(|| format!("errno {n}"), |&(name, _)| name.to_owned())
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
    }
}
