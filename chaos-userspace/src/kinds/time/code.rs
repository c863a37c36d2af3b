//! The two pages a time fault maps into each target process: x86_64 code that wraps the vDSO's
//! `clock_gettime`, `gettimeofday` and `time`, and the control block it reads (the offset, the drift
//! and, per clock, the lease window outside which it returns the real time).
//!
//! The code calls the original vDSO logic through a trampoline (the first instructions of the vDSO
//! function, relocated here, then a jump back into it), so a shifted read costs one real read plus a
//! few loads and adds. Where the first instructions cannot be relocated, the trampoline makes the
//! syscall instead (slower, same result).
//!
//! The control block is double-buffered: the loader writes the buffer not in use, then flips the
//! one-byte index, so a reader never sees half of an update (a byte write cannot tear).

use iced_x86::{
    BlockEncoderOptions, Decoder, DecoderOptions, Instruction, Mnemonic,
    code_asm::{CodeAssembler, CodeLabel, byte_ptr, ptr, qword_ptr, registers::*},
};

/// The code page and the data page after it.
pub const PAGE: u64 = 4096;
pub const MAP_LEN: u64 = 2 * PAGE;

/// The data page's first bytes: who wrote it.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KCHAOSTM");
/// Offsets in the data page.
pub const OFF_MAGIC: u64 = 0;
pub const OFF_TAG: u64 = 8;
/// One byte: which buffer is current (0 or 1).
pub const OFF_INDEX: u64 = 16;
/// One byte: 1 while the fault is armed; 0 = real time whatever the buffers say.
pub const OFF_ARMED: u64 = 17;
pub const OFF_BUFFERS: u64 = 64;
pub const BUFFER_LEN: u64 = 1024;
/// In a buffer: offset seconds and nanoseconds (0..1e9), the drift in ppm, the offset in ns.
const B_OFF_SEC: i32 = 0;
const B_OFF_NSEC: i32 = 8;
const B_DRIFT: i32 = 16;
const B_OFF_NS: i32 = 24;
/// Then one entry per clock id 0..15: floor, deadline, start (each ns of that clock), enabled.
pub const B_CLOCKS: u64 = 32;
pub const CLOCK_ENTRY: u64 = 32;
pub const CLOCK_SLOTS: usize = 16;

const NS: i32 = 1_000_000_000;
const SYS_CLOCK_GETTIME: u32 = 228;
const SYS_GETTIMEOFDAY: u32 = 96;
const SYS_TIME: u32 = 201;
const CLOCK_REALTIME_COARSE: u32 = 5;

/// The shift for one clock as the loader writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockEntry {
    /// The clock's own time (ns) before which it reads real (a clock stepped back under the lease).
    pub floor: i64,
    /// The clock's own time (ns) from which it reads real again: the lease.
    pub deadline: i64,
    /// When the drift started, in this clock's ns.
    pub start: i64,
    pub enabled: bool,
}

/// One buffer of the control block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub offset_ns: i64,
    pub drift_ppm: i64,
    pub clocks: [ClockEntry; CLOCK_SLOTS],
}

impl Control {
    /// The buffer's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; BUFFER_LEN as usize];
        let put = |out: &mut Vec<u8>, at: usize, v: i64| {
            out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        let sec = self.offset_ns.div_euclid(NS as i64);
        let nsec = self.offset_ns.rem_euclid(NS as i64);
        put(&mut out, B_OFF_SEC as usize, sec);
        put(&mut out, B_OFF_NSEC as usize, nsec);
        put(&mut out, B_DRIFT as usize, self.drift_ppm);
        put(&mut out, B_OFF_NS as usize, self.offset_ns);
        for (i, c) in self.clocks.iter().enumerate() {
            let at = (B_CLOCKS + i as u64 * CLOCK_ENTRY) as usize;
            put(&mut out, at, c.floor);
            put(&mut out, at + 8, c.deadline);
            put(&mut out, at + 16, c.start);
            put(&mut out, at + 24, i64::from(c.enabled));
        }
        out
    }
}

/// Where the vDSO functions are in one process, and their first bytes.
#[derive(Clone, Debug)]
pub struct Sites {
    pub clock_gettime: u64,
    pub gettimeofday: u64,
    pub time: u64,
    /// The vDSO bytes at `clock_gettime` and `gettimeofday` (enough to relocate their prologues).
    pub clock_gettime_head: Vec<u8>,
    pub gettimeofday_head: Vec<u8>,
}

/// The code page for a mapping at `page`, and where each hook starts.
#[derive(Clone, Debug)]
pub struct Code {
    pub bytes: Vec<u8>,
    pub hook_clock_gettime: u64,
    pub hook_gettimeofday: u64,
    pub hook_time: u64,
    /// Whether each original is called through a relocated prologue (else through the syscall).
    pub relocated: (bool, bool),
}

/// Why the code could not be made.
#[derive(Debug, thiserror::Error)]
#[error("assembling the time hooks: {0}")]
pub struct AsmError(String);

impl From<iced_x86::IcedError> for AsmError {
    fn from(e: iced_x86::IcedError) -> Self {
        AsmError(e.to_string())
    }
}

/// The bytes that redirect a vDSO function at `site` to `hook`: `jmp rel32`.
pub fn jump(site: u64, hook: u64) -> Option<[u8; 5]> {
    let rel = (hook as i64).wrapping_sub(site as i64 + 5);
    let rel = i32::try_from(rel).ok()?;
    let mut out = [0xe9, 0, 0, 0, 0];
    out[1..].copy_from_slice(&rel.to_le_bytes());
    Some(out)
}

/// Where a `jmp rel32` at `site` leads, if `bytes` is one.
pub fn jump_target(site: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 5 || bytes[0] != 0xe9 {
        return None;
    }
    let rel = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Some((site as i64 + 5 + rel as i64) as u64)
}

/// The instructions at `ip` covering at least 5 bytes, if they can run elsewhere: plain moves,
/// pushes and arithmetic only (no branch, call or return); a RIP-relative operand is re-encoded.
fn prologue(head: &[u8], ip: u64) -> Option<(Vec<Instruction>, u64)> {
    let mut decoder = Decoder::with_ip(64, head, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut len = 0u64;
    while len < 5 {
        if !decoder.can_decode() {
            return None;
        }
        let ins = decoder.decode();
        let plain = matches!(
            ins.mnemonic(),
            Mnemonic::Push
                | Mnemonic::Mov
                | Mnemonic::Movsxd
                | Mnemonic::Lea
                | Mnemonic::Sub
                | Mnemonic::Add
                | Mnemonic::And
                | Mnemonic::Or
                | Mnemonic::Xor
                | Mnemonic::Test
                | Mnemonic::Cmp
                | Mnemonic::Endbr64
                | Mnemonic::Nop
        );
        if ins.is_invalid() || !plain {
            return None;
        }
        len += ins.len() as u64;
        out.push(ins);
    }
    Some((out, ip + len))
}

/// Assembles the code page for a mapping at `page` (the data page follows it).
pub fn assemble(page: u64, sites: &Sites) -> Result<Code, AsmError> {
    let data = page + PAGE;
    let mut a = CodeAssembler::new(64)?;
    let mut adjust = a.create_label();
    let mut orig_cg = a.create_label();
    let mut orig_gtod = a.create_label();
    let mut hook_cg = a.create_label();
    let mut hook_gtod = a.create_label();
    let mut hook_time = a.create_label();

    // hook_clock_gettime(edi = clock, rsi = ts), with adjust inlined: the hot path.
    a.set_label(&mut hook_cg)?;
    a.push(rdi)?;
    a.push(rsi)?;
    a.sub(rsp, 8)?;
    a.call(orig_cg)?;
    a.add(rsp, 8)?;
    a.pop(rsi)?;
    a.pop(rdi)?;
    let mut cg_err = a.create_label();
    let mut cg_ok = a.create_label();
    a.test(eax, eax)?;
    a.jnz(cg_err)?;
    emit_adjust(&mut a, data, cg_ok)?;
    a.set_label(&mut cg_ok)?;
    a.xor(eax, eax)?;
    a.set_label(&mut cg_err)?;
    a.ret()?;

    // hook_gettimeofday(rdi = tv, rsi = tz)
    a.set_label(&mut hook_gtod)?;
    a.push(rdi)?;
    a.push(rsi)?;
    a.sub(rsp, 24)?;
    a.call(orig_gtod)?;
    a.mov(rsi, qword_ptr(rsp + 24))?;
    a.mov(rdi, qword_ptr(rsp + 32))?;
    let mut gtod_out = a.create_label();
    a.test(eax, eax)?;
    a.jnz(gtod_out)?;
    a.test(rdi, rdi)?;
    a.jz(gtod_out)?;
    a.mov(rax, qword_ptr(rdi))?;
    a.mov(qword_ptr(rsp), rax)?;
    a.mov(rax, qword_ptr(rdi + 8))?;
    a.imul_3(rax, rax, 1000)?;
    a.mov(qword_ptr(rsp + 8), rax)?;
    a.mov(qword_ptr(rsp + 16), rdi)?;
    a.xor(edi, edi)?;
    a.mov(rsi, rsp)?;
    a.call(adjust)?;
    a.mov(rdi, qword_ptr(rsp + 16))?;
    a.mov(rax, qword_ptr(rsp))?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.xor(edx, edx)?;
    a.mov(ecx, 1000)?;
    a.div(rcx)?;
    a.mov(qword_ptr(rdi + 8), rax)?;
    a.xor(eax, eax)?;
    a.set_label(&mut gtod_out)?;
    a.add(rsp, 24)?;
    a.pop(rsi)?;
    a.pop(rdi)?;
    a.ret()?;

    // hook_time(rdi = tloc): CLOCK_REALTIME_COARSE is what the vDSO's time() reads.
    a.set_label(&mut hook_time)?;
    a.push(rdi)?;
    a.sub(rsp, 16)?;
    a.mov(edi, CLOCK_REALTIME_COARSE)?;
    a.mov(rsi, rsp)?;
    a.call(orig_cg)?;
    let mut time_fallback = a.create_label();
    a.test(eax, eax)?;
    a.jnz(time_fallback)?;
    a.mov(edi, CLOCK_REALTIME_COARSE)?;
    a.mov(rsi, rsp)?;
    a.call(adjust)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.mov(rdi, qword_ptr(rsp + 16))?;
    let mut time_out = a.create_label();
    a.test(rdi, rdi)?;
    a.jz(time_out)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.set_label(&mut time_out)?;
    a.add(rsp, 24)?;
    a.ret()?;
    a.set_label(&mut time_fallback)?;
    a.mov(rdi, qword_ptr(rsp + 16))?;
    a.mov(eax, SYS_TIME)?;
    a.syscall()?;
    a.add(rsp, 24)?;
    a.ret()?;

    // adjust(edi = clock id, rsi = timespec), for gettimeofday and time.
    a.set_label(&mut adjust)?;
    let mut adjusted = a.create_label();
    emit_adjust(&mut a, data, adjusted)?;
    a.set_label(&mut adjusted)?;
    a.ret()?;

    // The originals: the relocated prologue and a jump back, else the syscall.
    let cg = original(
        &mut a,
        &mut orig_cg,
        sites.clock_gettime,
        &sites.clock_gettime_head,
        SYS_CLOCK_GETTIME,
    )?;
    let gtod = original(
        &mut a,
        &mut orig_gtod,
        sites.gettimeofday,
        &sites.gettimeofday_head,
        SYS_GETTIMEOFDAY,
    )?;

    let result = a.assemble_options(page, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let bytes = result.inner.code_buffer.clone();
    if bytes.len() as u64 > PAGE {
        return Err(AsmError(format!("{} bytes do not fit a page", bytes.len())));
    }
    Ok(Code {
        hook_clock_gettime: result.label_ip(&hook_cg)?,
        hook_gettimeofday: result.label_ip(&hook_gtod)?,
        hook_time: result.label_ip(&hook_time)?,
        bytes,
        relocated: (cg, gtod),
    })
}

/// Shifts the timespec at rsi of clock edi in place when the fault is armed for that clock and the
/// clock's value lies within its lease window; every way out jumps to `out`. Uses only
/// call-clobbered registers (rax, rcx, rdx, r8-r10).
fn emit_adjust(a: &mut CodeAssembler, data: u64, out: CodeLabel) -> Result<(), AsmError> {
    let mut drift = a.create_label();
    let mut store = a.create_label();
    a.cmp(edi, (CLOCK_SLOTS - 1) as i32)?;
    a.ja(out)?;
    a.mov(r8, data)?;
    a.cmp(byte_ptr(r8 + OFF_ARMED as i32), 0)?;
    a.je(out)?;
    a.movzx(eax, byte_ptr(r8 + OFF_INDEX as i32))?;
    a.and(eax, 1)?;
    a.shl(eax, BUFFER_LEN.trailing_zeros())?;
    a.lea(r9, ptr(r8 + rax + OFF_BUFFERS as i32))?;
    a.mov(eax, edi)?;
    a.shl(eax, CLOCK_ENTRY.trailing_zeros())?;
    a.lea(r10, ptr(r9 + rax + B_CLOCKS as i32))?;
    a.cmp(qword_ptr(r10 + 24), 0)?;
    a.je(out)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.imul_3(rax, rax, NS)?;
    a.add(rax, qword_ptr(rsi + 8))?;
    a.cmp(rax, qword_ptr(r10))?;
    a.jl(out)?;
    a.cmp(rax, qword_ptr(r10 + 8))?;
    a.jge(out)?;
    a.cmp(qword_ptr(r9 + B_DRIFT), 0)?;
    a.jne(drift)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.add(rax, qword_ptr(r9 + B_OFF_SEC))?;
    a.mov(rcx, qword_ptr(rsi + 8))?;
    a.add(rcx, qword_ptr(r9 + B_OFF_NSEC))?;
    a.cmp(rcx, NS)?;
    a.jl(store)?;
    a.sub(rcx, NS)?;
    a.inc(rax)?;
    a.set_label(&mut store)?;
    a.mov(qword_ptr(rsi), rax)?;
    a.mov(qword_ptr(rsi + 8), rcx)?;
    a.jmp(out)?;
    // With drift: delta = offset + (value - start) * ppm / 1e6, split into whole seconds (floored)
    // and nanoseconds.
    a.set_label(&mut drift)?;
    a.sub(rax, qword_ptr(r10 + 16))?;
    a.imul(qword_ptr(r9 + B_DRIFT))?;
    a.mov(rcx, 1_000_000u64)?;
    a.idiv(rcx)?;
    a.add(rax, qword_ptr(r9 + B_OFF_NS))?;
    a.cqo()?;
    a.mov(rcx, NS as u64)?;
    a.idiv(rcx)?;
    let mut positive = a.create_label();
    let mut store2 = a.create_label();
    a.test(rdx, rdx)?;
    a.jns(positive)?;
    a.add(rdx, rcx)?;
    a.dec(rax)?;
    a.set_label(&mut positive)?;
    a.add(rax, qword_ptr(rsi))?;
    a.add(rdx, qword_ptr(rsi + 8))?;
    a.cmp(rdx, rcx)?;
    a.jl(store2)?;
    a.sub(rdx, rcx)?;
    a.inc(rax)?;
    a.set_label(&mut store2)?;
    a.mov(qword_ptr(rsi), rax)?;
    a.mov(qword_ptr(rsi + 8), rdx)?;
    a.jmp(out)?;
    Ok(())
}

/// Emits the original of the vDSO function at `site`; true when through its relocated prologue.
fn original(
    a: &mut CodeAssembler,
    label: &mut CodeLabel,
    site: u64,
    head: &[u8],
    syscall: u32,
) -> Result<bool, AsmError> {
    a.set_label(label)?;
    match prologue(head, site) {
        Some((instructions, back)) => {
            for ins in instructions {
                a.add_instruction(ins)?;
            }
            a.jmp(back)?;
            Ok(true)
        }
        None => {
            a.mov(eax, syscall)?;
            a.syscall()?;
            a.ret()?;
            Ok(false)
        }
    }
}

/// The data page for a fresh mapping: magic, tag, disarmed, both buffers `control`.
pub fn data_page(tag: u64, control: &Control) -> Vec<u8> {
    let mut out = vec![0u8; PAGE as usize];
    out[OFF_MAGIC as usize..][..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[OFF_TAG as usize..][..8].copy_from_slice(&tag.to_le_bytes());
    let buf = control.encode();
    for i in 0..2 {
        let at = (OFF_BUFFERS + i * BUFFER_LEN) as usize;
        out[at..at + buf.len()].copy_from_slice(&buf);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hook's arithmetic (`emit_adjust`), instruction by instruction, on a clock reading (sec,
    /// nsec) of clock `id`; None where an instruction would overflow 64 bits or `idiv` would fault
    /// (a divide error kills the target). Window checks as the hook makes them.
    fn adjust(sec: i64, nsec: i64, c: &Control, id: usize) -> Option<(i64, i64)> {
        let e = c.clocks[id];
        let ns = i64::from(NS);
        // imul rax, rax, NS; add rax, [rsi+8]
        let value = sec.checked_mul(ns)?.checked_add(nsec)?;
        if !e.enabled || value < e.floor || value >= e.deadline {
            return Some((sec, nsec));
        }
        if c.drift_ppm == 0 {
            let (off_sec, off_nsec) = (c.offset_ns.div_euclid(ns), c.offset_ns.rem_euclid(ns));
            let (mut s, mut n) = (sec.checked_add(off_sec)?, nsec.checked_add(off_nsec)?);
            if n >= ns {
                n -= ns;
                s = s.checked_add(1)?;
            }
            return Some((s, n));
        }
        // sub rax, start; imul [drift] (128-bit rdx:rax); idiv 1e6: the quotient must fit 64 bits.
        let elapsed = value.checked_sub(e.start)?;
        let product = i128::from(elapsed) * i128::from(c.drift_ppm);
        let q = i64::try_from(product / 1_000_000).ok()?;
        // add rax, [offset_ns]; cqo; idiv 1e9 (cannot fault: a 64-bit dividend over 1e9).
        let delta = q.checked_add(c.offset_ns)?;
        let (mut s, mut r) = (delta / ns, delta % ns);
        if r < 0 {
            r += ns;
            s -= 1;
        }
        let (mut s, mut n) = (s.checked_add(sec)?, r.checked_add(nsec)?);
        if n >= ns {
            n -= ns;
            s = s.checked_add(1)?;
        }
        Some((s, n))
    }

    #[test]
    fn the_hook_arithmetic_holds_at_every_bound() {
        const S: i64 = 1_000_000_000;
        const Y: i64 = 365 * 86_400 * S;
        // The bounds the loader accepts (mod.rs: MAX_OFFSET_NS, MAX_DRIFT_PPM), and what a clock
        // can read: from 0 (boot) to the wall clock in the year 2200; a run of up to 100 years;
        // readings up to 1 s before the arm (the floor's slack).
        let now_2200 = 7_258_118_400 * S;
        for offset in [-100 * Y, -1, 0, 1, 100 * Y] {
            for ppm in [-1_000_000, -1, 0, 1, 1_000_000] {
                for start in [0, 1_800_000_000 * S, now_2200 - 100 * Y] {
                    for elapsed in [-S, 0, 1, 100 * Y] {
                        let value = start + elapsed;
                        if value < 0 {
                            continue;
                        }
                        let mut c = Control {
                            offset_ns: offset,
                            drift_ppm: ppm,
                            ..Control::default()
                        };
                        c.clocks[0] = ClockEntry {
                            floor: i64::MIN,
                            deadline: i64::MAX,
                            start,
                            enabled: true,
                        };
                        let (sec, nsec) = (value.div_euclid(S), value.rem_euclid(S));
                        let (s, n) = adjust(sec, nsec, &c, 0).unwrap_or_else(|| {
                            panic!("overflow: offset {offset} ppm {ppm} start {start} elapsed {elapsed}")
                        });
                        // And it is the exact shift: value + offset + elapsed × ppm / 10^6.
                        let want = i128::from(value)
                            + i128::from(offset)
                            + i128::from(elapsed) * i128::from(ppm) / 1_000_000;
                        assert_eq!(i128::from(s) * i128::from(S) + i128::from(n), want);
                        assert!((0..S).contains(&n));
                    }
                }
            }
        }
        // Outside the bounds it does fault: the drift the issue found.
        let mut c = Control {
            drift_ppm: i64::MIN,
            ..Control::default()
        };
        c.clocks[0] = ClockEntry {
            floor: i64::MIN,
            deadline: i64::MAX,
            start: 0,
            enabled: true,
        };
        assert_eq!(adjust(1_800_000_000, 0, &c, 0), None);
    }

    #[test]
    fn jumps_round_trip() {
        let j = jump(0x7fff_0000_1000, 0x7fff_0000_0000).unwrap();
        assert_eq!(jump_target(0x7fff_0000_1000, &j), Some(0x7fff_0000_0000));
        assert!(jump(0x7fff_0000_0000, 0x1000).is_none());
    }

    #[test]
    fn assembles_with_relocated_prologues() {
        // push rbp; mov rbp,rsp; push r14  |  push rbp; lea r10,[rip-0x6818]; mov rbp,rsp
        let sites = Sites {
            clock_gettime: 0x7fff_f000_0af0,
            gettimeofday: 0x7fff_f000_0810,
            time: 0x7fff_f000_0ac0,
            clock_gettime_head: vec![0x55, 0x48, 0x89, 0xe5, 0x41, 0x56, 0x53, 0x90],
            gettimeofday_head: vec![
                0x55, 0x4c, 0x8d, 0x15, 0xe8, 0x97, 0xff, 0xff, 0x48, 0x89, 0xe5,
            ],
        };
        let code = assemble(0x7fff_e000_0000, &sites).unwrap();
        assert_eq!(code.relocated, (true, true));
        assert!(code.bytes.len() < PAGE as usize);
        // An unrelocatable prologue (a ret first) falls back to the syscall.
        let mut s = sites.clone();
        s.gettimeofday_head = vec![0xc3, 0x90, 0x90, 0x90, 0x90, 0x90];
        assert_eq!(
            assemble(0x7fff_e000_0000, &s).unwrap().relocated,
            (true, false)
        );
    }
}
