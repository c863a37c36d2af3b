//! One target process: redirecting its vDSO time functions to the hook page (mapped into it by an
//! injected mmap), updating its control block, and restoring it.

use std::{fs, fs::File, io};

use crate::{engine::run_identity, kinds::pause::freeze};

use super::{
    code::{self, Code, Control, MAP_LEN, PAGE, Sites},
    ptrace::{self, Stopped},
    vdso::{self, OwnVdso},
};

/// Why a process could not be patched or restored.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("it is gone")]
    Gone,
    #[error("it has no vDSO (a kernel thread)")]
    NoVdso,
    #[error(
        "its vDSO differs from kchaos's (a 32-bit process, or patched by something else: a debugger, \
         another time injector)"
    )]
    Foreign,
    #[error("it is stopped or frozen: it is patched once it runs again")]
    NotRunning,
    #[error("no free address within 2 GiB of its vDSO for the hook page")]
    NoRoom,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Asm(#[from] code::AsmError),
    #[error("the injected {what} failed: errno {errno}")]
    Injected { what: &'static str, errno: i64 },
    #[error("a thread kept running inside the bytes to patch")]
    Busy,
    #[error("{0}")]
    Traced(String),
    #[error("{0}")]
    Refused(String),
}

impl From<ptrace::StopError> for PatchError {
    fn from(e: ptrace::StopError) -> Self {
        match e {
            ptrace::StopError::Gone => PatchError::Gone,
            // Tried again on a later tick (a vfork ends, a cgroup thaws).
            ptrace::StopError::TimedOut { .. } | ptrace::StopError::Held(_) => {
                PatchError::NotRunning
            }
            ptrace::StopError::Traced(_) => PatchError::Traced(e.to_string()),
            ptrace::StopError::Refused { .. } => PatchError::Refused(e.to_string()),
            ptrace::StopError::Io(e) => PatchError::Io(e),
        }
    }
}

/// A process whose vDSO leads to a hook page.
#[derive(Debug)]
pub struct Patched {
    pub pid: u32,
    /// Its start time (/proc/PID/stat field 22): the same pid later is another process.
    pub start_time: u64,
    pub vdso: u64,
    pub page: u64,
    pub mem: File,
    /// The buffer in use (0 or 1).
    pub index: u8,
    /// Whether it was patched by this run (else it inherited the page from its parent by fork).
    pub fresh: bool,
    /// Whether clock_gettime / gettimeofday call their relocated originals (else the syscall).
    pub relocated: (bool, bool),
}

/// How a process's vDSO looks.
enum Found {
    Original {
        vdso: u64,
    },
    /// Redirected to a kchaos hook page (by this run, or inherited).
    Hooked {
        vdso: u64,
        page: u64,
        tag: u64,
    },
}

fn maps(pid: u32) -> Result<String, PatchError> {
    fs::read_to_string(ptrace::proc_dir(pid).join("maps")).map_err(|_| PatchError::Gone)
}

/// Looks at `pid`'s vDSO through `mem`.
fn inspect(pid: u32, own: &OwnVdso, mem: &File) -> Result<Found, PatchError> {
    if ptrace::live_dir(pid).is_none() {
        return Err(PatchError::Gone);
    }
    let (start, end) = vdso::vdso_of(pid).ok_or(PatchError::NoVdso)?;
    if (end - start) as usize != own.image.len() {
        return Err(PatchError::Foreign);
    }
    let mut image = vec![0u8; own.image.len()];
    ptrace::read_at(mem, start, &mut image).map_err(|_| PatchError::Gone)?;
    // A stub a killed kchaos left in the scratch area (no thread runs it any more) does not count.
    let at = own.scratch as usize;
    image[at..at + ptrace::STUB_LEN].copy_from_slice(own.scratch_bytes());
    if image == own.image {
        return Ok(Found::Original { vdso: start });
    }
    // Redirected: each site a jump into one page that carries the magic, the rest untouched.
    let mut page = None;
    for site in own.sites() {
        let at = site as usize;
        let target =
            code::jump_target(start + site, &image[at..at + 5]).ok_or(PatchError::Foreign)?;
        let p = target & !(PAGE - 1);
        if page.is_some_and(|q| q != p) {
            return Err(PatchError::Foreign);
        }
        page = Some(p);
        image[at..at + 5].copy_from_slice(&own.image[at..at + 5]);
    }
    let page = page.ok_or(PatchError::Foreign)?;
    if image != own.image {
        return Err(PatchError::Foreign);
    }
    let mut header = [0u8; 16];
    ptrace::read_at(mem, page + PAGE, &mut header).map_err(|_| PatchError::Foreign)?;
    let magic = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    if magic != code::MAGIC {
        return Err(PatchError::Foreign);
    }
    Ok(Found::Hooked {
        vdso: start,
        page,
        tag: u64::from_le_bytes(header[8..].try_into().unwrap_or_default()),
    })
}

/// Whether a thread of `pid` is stopped, or its cgroup frozen (ptrace could not stop it now).
fn not_running(pid: u32) -> bool {
    let stopped = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten().any(|t| {
                fs::read_to_string(t.path().join("stat"))
                    .is_ok_and(|s| matches!(run_identity::state_in(&s), Some('T' | 't')))
            })
        })
        .unwrap_or(false);
    let frozen = crate::engine::cgroup::of_pid(pid)
        .ok()
        .zip(crate::engine::cgroup::v2_mount().ok())
        .is_some_and(|(cg, mount)| {
            let dir = mount.join(cg.trim_start_matches('/'));
            freeze::is_frozen(&dir)
                // Asked to freeze, and still on the way there.
                || fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1")
        });
    stopped || frozen
}

/// Whether `pid` shares its memory with its parent (a vfork child, or posix_spawn's before its exec).
/// ptrace work through it would stop it alone while its parent's other threads run in the same
/// memory (a jump written under one of them, a page unmapped under it): such a process is left to
/// its parent, which holds the same hooks and is hooked and restored whole.
fn shares_parent_memory(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let ppid: Option<i32> = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
    let Some(ppid) = ppid.filter(|&p| p > 1) else {
        return false;
    };
    const KCMP_VM: usize = 1;
    // SAFETY: kcmp takes two pids, a comparison type and two indexes; it reads no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid as i32, ppid, KCMP_VM, 0usize, 0usize) };
    r == 0
}

/// A free, page-aligned address for the hook pages within reach (±2 GiB, with room for a jump) of
/// the vDSO at `vdso`.
fn free_near(maps: &str, vdso: u64) -> Option<u64> {
    const TOP: u64 = 0x7fff_ffff_f000;
    const REACH: u64 = 1 << 30;
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| vdso::parse_range(l.split_whitespace().next()?))
        .filter(|(s, _)| *s < TOP)
        .collect();
    ranges.sort_unstable();
    let mut best: Option<u64> = None;
    let mut consider = |addr: u64| {
        if addr.abs_diff(vdso) < REACH
            && best.is_none_or(|b| addr.abs_diff(vdso) < b.abs_diff(vdso))
        {
            best = Some(addr);
        }
    };
    let need = MAP_LEN + 2 * PAGE;
    let mut prev_end = 0x1_0000u64;
    for &(s, e) in ranges.iter().chain(std::iter::once(&(TOP, TOP))) {
        if s > prev_end && s - prev_end >= need {
            // Right below the next mapping, and right above the previous one (a guard page apart).
            consider(s - PAGE - MAP_LEN);
            consider(prev_end + PAGE);
        }
        prev_end = prev_end.max(e);
    }
    best
}

/// Redirects `pid`'s vDSO to a hook page carrying `tag` and `control` (`armed` or not), or adopts
/// the page it inherited. Refuses kchaos itself.
pub fn patch(
    pid: u32,
    own: &OwnVdso,
    tag: u64,
    control: &Control,
    armed: bool,
) -> Result<Patched, PatchError> {
    if pid == std::process::id() {
        return Err(PatchError::Foreign);
    }
    let start_time = run_identity::start_time(pid).ok_or(PatchError::Gone)?;
    if shares_parent_memory(pid) {
        // Its exec (or exit) comes soon; the parent carries the hooks meanwhile.
        return Err(PatchError::NotRunning);
    }
    let mem = ptrace::open_mem(pid).map_err(|_| PatchError::Gone)?;
    let (vdso, page, fresh, relocated) = match inspect(pid, own, &mem)? {
        Found::Hooked { vdso, page, .. } => (vdso, page, false, (true, true)),
        Found::Original { vdso } => {
            if not_running(pid) {
                return Err(PatchError::NotRunning);
            }
            let (page, relocated) = hook(pid, own, vdso, tag, control, armed)?;
            (vdso, page, true, relocated)
        }
    };
    let mut p = Patched {
        pid,
        start_time,
        vdso,
        page,
        mem,
        index: 0,
        fresh,
        relocated,
    };
    if !fresh {
        // Inherited: make its copy of the block this run's.
        ptrace::write_at(&p.mem, page + PAGE + code::OFF_TAG, &tag.to_le_bytes())?;
        write_control(&mut p, control)?;
        set_armed(&p, armed)?;
    }
    Ok(p)
}

/// Maps the hook page into the stopped process and redirects its vDSO; returns the page.
fn hook(
    pid: u32,
    own: &OwnVdso,
    vdso: u64,
    tag: u64,
    control: &Control,
    armed: bool,
) -> Result<(u64, (bool, bool)), PatchError> {
    let start_time = run_identity::start_time(pid);
    let mut stopped = Stopped::stop(pid)?;
    // Stopped: still the image looked at? (An exec in between gave it another vDSO.)
    let fresh = ptrace::open_mem(pid).map_err(|_| PatchError::Gone)?;
    if !matches!(inspect(pid, own, &fresh)?, Found::Original { vdso: v } if v == vdso)
        || run_identity::start_time(pid) != start_time
    {
        return Err(PatchError::NotRunning);
    }
    let mem = &fresh;
    // Chosen while every thread is stopped, so nothing maps there before the mmap.
    let addr = free_near(&maps(pid)?, vdso).ok_or(PatchError::NoRoom)?;
    let r = stopped.syscall(
        mem,
        vdso + own.scratch,
        own.scratch_bytes(),
        libc::SYS_mmap as u64,
        [
            addr,
            MAP_LEN,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if r < 0 {
        return Err(PatchError::Injected {
            what: "mmap",
            errno: -r,
        });
    }
    let page = r as u64;
    let unmap = |stopped: &mut Stopped| {
        let _ = stopped.syscall(
            mem,
            vdso + own.scratch,
            own.scratch_bytes(),
            libc::SYS_munmap as u64,
            [page, MAP_LEN, 0, 0, 0, 0],
        );
    };
    if page != addr {
        unmap(&mut stopped);
        return Err(PatchError::NoRoom);
    }
    let head =
        |off: u64| own.image[off as usize..(off as usize + 16).min(own.image.len())].to_vec();
    let sites = Sites {
        clock_gettime: vdso + own.clock_gettime,
        gettimeofday: vdso + own.gettimeofday,
        time: vdso + own.time,
        clock_gettime_head: head(own.clock_gettime),
        gettimeofday_head: head(own.gettimeofday),
    };
    let written = (|| -> Result<Code, PatchError> {
        let code = code::assemble(page, &sites)?;
        let mut data = code::data_page(tag, control);
        data[code::OFF_ARMED as usize] = u8::from(armed);
        ptrace::write_at(mem, page + PAGE, &data)?;
        ptrace::write_at(mem, page, &code.bytes)?;
        Ok(code)
    })();
    let code = match written {
        Ok(c) => c,
        Err(e) => {
            unmap(&mut stopped);
            return Err(e);
        }
    };
    let jumps = [
        (sites.gettimeofday, code.hook_gettimeofday),
        (sites.time, code.hook_time),
        (sites.clock_gettime, code.hook_clock_gettime),
    ];
    // No thread may be inside the 5 bytes about to change.
    if stopped_inside(&stopped, &jumps.map(|(s, _)| s))? {
        unmap(&mut stopped);
        return Err(PatchError::Busy);
    }
    for (site, hook) in jumps {
        let Some(bytes) = code::jump(site, hook) else {
            unmap(&mut stopped);
            return Err(PatchError::NoRoom);
        };
        ptrace::write_at(mem, site, &bytes)?;
    }
    Ok((page, code.relocated))
}

/// Whether a stopped thread's next instruction lies within 5 bytes after one of `sites`.
fn stopped_inside(stopped: &Stopped, sites: &[u64]) -> Result<bool, PatchError> {
    for tid in stopped.tids() {
        let rip = stopped.regs(tid)?.rip;
        if sites.iter().any(|s| rip > *s && rip < s + 5) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes `control` into the buffer not in use, then switches to it.
pub fn write_control(p: &mut Patched, control: &Control) -> io::Result<()> {
    let next = p.index ^ 1;
    let at = p.page + PAGE + code::OFF_BUFFERS + u64::from(next) * code::BUFFER_LEN;
    ptrace::write_at(&p.mem, at, &control.encode())?;
    ptrace::write_at(&p.mem, p.page + PAGE + code::OFF_INDEX, &[next])?;
    p.index = next;
    Ok(())
}

/// Arms or disarms its hooks (one byte: real time at once when 0).
pub fn set_armed(p: &Patched, armed: bool) -> io::Result<()> {
    ptrace::write_at(&p.mem, p.page + PAGE + code::OFF_ARMED, &[u8::from(armed)])
}

/// Whether the process still runs the image that was patched (an exec gives it a fresh vDSO).
pub fn still_hooked(p: &Patched, own: &OwnVdso) -> bool {
    let mut b = [0u8; 5];
    let site = p.vdso + own.clock_gettime;
    ptrace::read_at(&p.mem, site, &mut b).is_ok()
        && code::jump_target(site, &b).is_some_and(|t| t & !(PAGE - 1) == p.page)
}

/// What restoring one process did.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The vDSO bytes are back and the page is unmapped.
    Clean,
    /// The vDSO bytes are back; the page stays mapped, disarmed (a thread may still return into it).
    PageLeft,
    /// Only disarmed, through /proc/PID/mem: it reads the real time, but its vDSO still leads to the
    /// (disarmed) hook page, because it could not be stopped (another tracer holds it, it is stopped
    /// or frozen). A later run that targets it takes the page over and removes it.
    DisarmedOnly(String),
    /// Not even disarmed: its control block could not be written (it runs shifted until the lease
    /// lapses).
    Failed(String),
}

/// Whether `pid` is still the process that started at `start_time` and runs code.
fn alive(pid: u32, start_time: Option<u64>) -> bool {
    ptrace::live_dir(pid).is_some()
        && start_time.is_none_or(|st| run_identity::start_time(pid) == Some(st))
}

/// Restores `pid`'s vDSO if it leads to a hook page carrying `tag`; None when it does not (any more:
/// it exited, or exec'd and has a fresh vDSO).
pub fn restore(pid: u32, own: &OwnVdso, tag: u64) -> Option<Restored> {
    if pid == std::process::id() || shares_parent_memory(pid) {
        return None;
    }
    let start_time = run_identity::start_time(pid);
    let mem = ptrace::open_mem(pid).ok()?;
    let Ok(Found::Hooked { vdso, page, tag: t }) = inspect(pid, own, &mem) else {
        return None;
    };
    if t != tag {
        return None;
    }
    // Disarmed first, without ptrace: from here on it reads real time whatever else happens.
    if let Err(e) = ptrace::write_at(&mem, page + PAGE + code::OFF_ARMED, &[0]) {
        // A write to an exited (or exec'd) process's old memory fails: nothing left to restore.
        return alive(pid, start_time)
            .then(|| Restored::Failed(format!("writing its control block: {e}")));
    }
    if not_running(pid) {
        return Some(Restored::DisarmedOnly("it is stopped or frozen".into()));
    }
    let stop = |pid| match Stopped::stop(pid) {
        Ok(s) => Ok(s),
        Err(ptrace::StopError::Gone) => Err(None),
        Err(e) if !alive(pid, start_time) => {
            tracing::debug!("time: pid {pid} exited while restored ({e})");
            Err(None)
        }
        Err(e) => Err(Some(Restored::DisarmedOnly(e.to_string()))),
    };
    let mut stopped = match stop(pid) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Stopped: still the image that was hooked? (An exec in between gave it a fresh vDSO, and the
    // page's address may now be something else's.)
    let still_ours = ptrace::open_mem(pid).ok().is_some_and(|m| {
        matches!(inspect(pid, own, &m), Ok(Found::Hooked { vdso: v, page: p, tag: t })
            if v == vdso && p == page && t == tag)
    });
    if !still_ours || run_identity::start_time(pid) != start_time {
        return None;
    }
    let sites = own.sites().map(|s| vdso + s);
    for _ in 0..20 {
        match stopped_inside(&stopped, &sites) {
            Ok(false) => break,
            Ok(true) => {
                drop(stopped);
                std::thread::sleep(std::time::Duration::from_millis(1));
                stopped = match stop(pid) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
            }
            Err(e) => return Some(Restored::DisarmedOnly(e.to_string())),
        }
    }
    for off in own.sites() {
        let original = &own.image[off as usize..off as usize + 5];
        if let Err(e) = ptrace::write_at(&mem, vdso + off, original) {
            return alive(pid, start_time).then(|| Restored::DisarmedOnly(e.to_string()));
        }
    }
    // The page goes only when no thread is in it or will return into it (a return address on the
    // top of its stack).
    let in_use = stopped.tids().into_iter().any(|tid| {
        let Ok(regs) = stopped.regs(tid) else {
            return true;
        };
        let inside = |v: u64| v >= page && v < page + MAP_LEN;
        if inside(regs.rip) {
            return true;
        }
        let mut stack = [0u8; 1024];
        if ptrace::read_at(&mem, regs.rsp, &mut stack).is_err() {
            return true;
        }
        stack
            .chunks_exact(8)
            .any(|w| inside(u64::from_le_bytes(w.try_into().unwrap_or_default())))
    });
    if in_use {
        return Some(Restored::PageLeft);
    }
    match stopped.syscall(
        &mem,
        vdso + own.scratch,
        own.scratch_bytes(),
        libc::SYS_munmap as u64,
        [page, MAP_LEN, 0, 0, 0, 0],
    ) {
        Ok(0) => Some(Restored::Clean),
        _ => Some(Restored::PageLeft),
    }
}

/// What restoring every process of a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Restored, the page unmapped.
    pub clean: usize,
    /// Restored, the page left mapped (disarmed).
    pub page_left: usize,
    /// Disarmed (real time) but their vDSO not restored, with why: "pid N (comm): why".
    pub disarmed_only: Vec<String>,
    /// Not even disarmed, with why.
    pub failed: Vec<String>,
}

/// How long a restore tries again for a process it could only disarm (a tracer that lets go, an
/// exit or exec that completes).
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Restores every process on the host that carries `tag`.
pub fn restore_all(tag: u64) -> Result<Outcome, String> {
    let own = vdso::own()?;
    // Threads a timed-out stop left seized are let go first (they hold their process otherwise).
    ptrace::release_lingering(std::time::Duration::from_millis(500));
    let mut out = Outcome::default();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Ok(out);
    };
    let mut again = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match restore(pid, own, tag) {
            Some(Restored::Clean) => out.clean += 1,
            Some(Restored::PageLeft) => out.page_left += 1,
            Some(Restored::DisarmedOnly(_) | Restored::Failed(_)) => again.push(pid),
            None => {}
        }
    }
    let start = std::time::Instant::now();
    while !again.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let last = start.elapsed() >= RETRY_FOR;
        again.retain(|&pid| {
            let name = || ptrace::describe_pid(pid);
            match restore(pid, own, tag) {
                Some(Restored::Clean) => out.clean += 1,
                Some(Restored::PageLeft) => out.page_left += 1,
                Some(Restored::DisarmedOnly(why)) if last => {
                    out.disarmed_only.push(format!("{}: {why}", name()))
                }
                Some(Restored::Failed(why)) if last => {
                    out.failed.push(format!("{}: {why}", name()))
                }
                Some(_) => return true,
                None => {}
            }
            false
        });
        if last {
            break;
        }
    }
    ptrace::release_lingering(std::time::Duration::ZERO);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_room_near_the_vdso() {
        let maps = "555555554000-555555556000 r-xp 0 0 0 /bin/x\n\
                    7ffff7fc0000-7ffff7fc4000 r--p 0 0 0 [vvar]\n\
                    7ffff7fc4000-7ffff7fc6000 r-xp 0 0 0 [vdso]\n\
                    7ffffffde000-7ffffffff000 rw-p 0 0 0 [stack]\n";
        let a = super::free_near(maps, 0x7fff_f7fc_4000).unwrap();
        // The closest free place: a guard page above the vDSO.
        assert_eq!(a, 0x7fff_f7fc_7000);
    }
}
