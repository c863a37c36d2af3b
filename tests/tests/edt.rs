//! The kernel side of the network faults, run through BPF_PROG_TEST_RUN: the departure time (EDT) the
//! egress program stamps, its jitter, the drop verdict, and the lease. This works on a kernel without
//! sch_fq; the delay a clock sees through fq is measured in the VM suite.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::CgroupSkb,
};
use chaos_common::{
    DIR_EGRESS, DirectionFault, FEAT_DELAY, FEAT_DROP, NetConfig, NetCounters, percent_to_threshold,
};
use integration_tests::root_or_skip;

/// `union bpf_attr` as BPF_PROG_TEST_RUN reads it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// sizeof(struct __sk_buff) and the offset of its tstamp field (include/uapi/linux/bpf.h).
const SK_BUFF_SIZE: usize = 192;
const TSTAMP_OFFSET: usize = 152;

/// An Ethernet + IPv4 + UDP frame from 10.254.0.1:4000 to 10.254.0.2:5000.
fn udp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 16];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 254, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 254, 0, 2]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&24u16.to_be_bytes());
    f
}

fn monotonic_ns() -> u64 {
    chaos_userspace::engine::lifecycle::monotonic_ns()
}

struct Harness {
    ebpf: Ebpf,
    fd: i32,
}

impl Harness {
    fn new() -> Self {
        // Both the drop and the delay code kept (the loader sets only what a fault uses).
        let mut ebpf = chaos_userspace::engine::ebpf::load_with_globals(&[(
            "NET_EGRESS_FEATURES",
            FEAT_DROP | FEAT_DELAY,
        )])
        .expect("load the object");
        let prog: &mut CgroupSkb = ebpf.program_mut("net_egress").unwrap().try_into().unwrap();
        prog.load().expect("load net_egress");
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        Self { ebpf, fd }
    }

    fn configure(&mut self, egress: DirectionFault, deadline_ns: u64) {
        let cfg = NetConfig {
            deadline_ns,
            egress,
            ..Default::default()
        };
        Array::<_, NetConfig>::try_from(self.ebpf.map_mut("NET_CONFIG").unwrap())
            .unwrap()
            .set(0, cfg, 0)
            .unwrap();
    }

    /// Runs the program once; returns (verdict, tstamp it left on the skb).
    fn run(&self) -> (u32, u64) {
        let frame = udp_frame();
        let ctx_in = [0u8; SK_BUFF_SIZE];
        let mut ctx_out = [0u8; SK_BUFF_SIZE];
        let mut attr = TestRunAttr {
            prog_fd: self.fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ctx_size_in: SK_BUFF_SIZE as u32,
            ctx_size_out: SK_BUFF_SIZE as u32,
            ctx_in: ctx_in.as_ptr() as u64,
            ctx_out: ctx_out.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: attr and the buffers it points to outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_TEST_RUN: {}",
            std::io::Error::last_os_error()
        );
        let tstamp = u64::from_ne_bytes(
            ctx_out[TSTAMP_OFFSET..TSTAMP_OFFSET + 8]
                .try_into()
                .unwrap(),
        );
        (attr.retval, tstamp)
    }

    fn egress_counters(&self) -> NetCounters {
        let map = PerCpuArray::<_, NetCounters>::try_from(self.ebpf.map("NET_COUNTERS").unwrap())
            .unwrap();
        let mut total = NetCounters::default();
        for c in map.get(&DIR_EGRESS, 0).unwrap().iter() {
            total.accumulate(c);
        }
        total
    }
}

const MS: u64 = 1_000_000;

#[test]
fn egress_program_stamps_the_departure_time() {
    if !root_or_skip("egress_program_stamps_the_departure_time") {
        return;
    }
    let mut h = Harness::new();
    h.configure(
        DirectionFault {
            delay_ns: 10 * MS,
            ..Default::default()
        },
        u64::MAX,
    );
    let before = monotonic_ns();
    let (verdict, tstamp) = h.run();
    let after = monotonic_ns();
    assert_eq!(verdict, 1, "a delayed packet passes");
    assert!(
        (before + 10 * MS..=after + 10 * MS).contains(&tstamp),
        "tstamp {tstamp} not within [{}, {}]",
        before + 10 * MS,
        after + 10 * MS
    );
    let c = h.egress_counters();
    assert_eq!(
        (c.seen, c.matched, c.delayed, c.delay_ns_total),
        (1, 1, 1, 10 * MS)
    );
}

#[test]
fn jitter_spreads_the_delay_uniformly_within_bounds() {
    if !root_or_skip("jitter_spreads_the_delay_uniformly_within_bounds") {
        return;
    }
    let mut h = Harness::new();
    let (delay, jitter) = (10 * MS, 2 * MS);
    h.configure(
        DirectionFault {
            delay_ns: delay,
            jitter_ns: jitter,
            ..Default::default()
        },
        u64::MAX,
    );
    let mut added = Vec::new();
    for _ in 0..2000 {
        let before = monotonic_ns();
        let (_, tstamp) = h.run();
        let after = monotonic_ns();
        // The stamp was taken between `before` and `after`: bound the delay it added from both sides.
        assert!(
            tstamp >= before + delay - jitter && tstamp <= after + delay + jitter,
            "out of bounds"
        );
        added.push(tstamp.saturating_sub(after) as f64);
    }
    let mean = added.iter().sum::<f64>() / added.len() as f64;
    let min = added.iter().cloned().fold(f64::MAX, f64::min);
    let max = added.iter().cloned().fold(0.0, f64::max);
    println!(
        "delay 10ms ±2ms over 2000 runs: mean {:.3} ms, min {:.3} ms, max {:.3} ms",
        mean / 1e6,
        min / 1e6,
        max / 1e6
    );
    assert!(
        (mean - delay as f64).abs() < 0.05 * delay as f64,
        "mean {mean}"
    );
    assert!(
        min < (delay - jitter) as f64 + 0.2 * jitter as f64,
        "jitter never reached its low end: {min}"
    );
    assert!(
        max > (delay + jitter) as f64 - 0.4 * jitter as f64,
        "jitter never reached its high end: {max}"
    );
}

#[test]
fn drop_verdict_and_lease() {
    if !root_or_skip("drop_verdict_and_lease") {
        return;
    }
    let mut h = Harness::new();
    let drop_all = DirectionFault {
        drop_threshold: percent_to_threshold(100.0),
        delay_ns: 10 * MS,
        jitter_ns: 0,
        ..Default::default()
    };
    h.configure(drop_all, u64::MAX);
    assert_eq!(
        h.run(),
        (2, 0),
        "drop: verdict 2 (dropped, sendmsg succeeds), no stamp"
    );
    // A lease that ran out: the program injects nothing, as after a loader stopped renewing it.
    h.configure(drop_all, monotonic_ns() - 1);
    assert_eq!(
        h.run(),
        (1, 0),
        "an expired lease must pass packets untouched"
    );
    // Not armed at all (deadline 0).
    h.configure(drop_all, 0);
    assert_eq!(h.run(), (1, 0));
    let c = h.egress_counters();
    assert_eq!(
        (c.seen, c.dropped, c.delayed),
        (1, 1, 0),
        "only the armed run counts"
    );
}
