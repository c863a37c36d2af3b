//! File descriptors a run holds: a cgroup program's link is an fd for as long as the fault lasts (so
//! that the kernel detaches it when kchaos dies), one per target and hook. A run on thousands of
//! targets needs more than the usual soft limit of 1,024, so it raises its own soft limit towards the
//! hard one before attaching, and refuses with the numbers when even that is too few.

use std::io;

use crate::error::BadInput;

/// Descriptors kept free for everything else a run opens (maps, programs, the record, probes).
const RESERVE: u64 = 256;

/// RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft RLIMIT_NOFILE towards `wanted`, never past the hard limit; returns the new soft one.
pub fn raise_nofile(wanted: u64) -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    let target = wanted.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(target)
}

/// Makes room for `links` more descriptors held for the run (`what`: "3 hooks on 5,000 targets"),
/// or says why there is none, before anything is attached.
pub fn reserve_links(links: u64, what: &str) -> Result<(), BadInput> {
    let wanted = links.saturating_add(RESERVE);
    let (soft, hard) = nofile_limit().unwrap_or((0, 0));
    match raise_nofile(wanted) {
        Ok(now) if now >= wanted => Ok(()),
        _ => Err(BadInput::new(format!(
            "{what} need {links} links, each an open file descriptor while the fault lasts, and \
             {RESERVE} more for the rest of the run; RLIMIT_NOFILE allows {soft} (hard limit {hard}): \
             raise the hard limit to {wanted} or more (ulimit -Hn, LimitNOFILE= in a unit) or give \
             fewer targets"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_what_is_needed_and_no_further_than_the_hard_one() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        reserve_links(10, "a hook on 10 targets").unwrap();
        assert!(nofile_limit().unwrap().0 >= soft.min(266));
        if hard < u64::MAX / 2 {
            let e = reserve_links(hard, "too many").unwrap_err().to_string();
            assert!(e.contains(&format!("hard limit {hard}")), "{e}");
        }
    }
}
