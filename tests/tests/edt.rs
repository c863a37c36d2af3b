//! The kernel side of the network faults, run through BPF_PROG_TEST_RUN: the departure time (EDT) the
//! egress program stamps, its jitter, the rate limit's pacing, burst and queue, the drop verdict, and
//! the lease. This works on a kernel without sch_fq; the delay and the bandwidth a receiver sees
//! through fq are measured in the VM suite.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::CgroupSkb,
};
use chaos_common::{
    DIR_EGRESS, DirectionFault, FEAT_DELAY, FEAT_DROP, FEAT_RATE, NetConfig, NetCounters,
    RATE_SHIFT, RateLimit, percent_to_threshold,
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
const GSO_SEGS_OFFSET: usize = 164;
const GSO_SIZE_OFFSET: usize = 176;

/// An Ethernet + IPv4 + UDP frame from 10.254.0.1:4000 to 10.254.0.2:5000.
fn udp_frame() -> Vec<u8> {
    udp_frame_between([10, 254, 0, 1], [10, 254, 0, 2])
}

/// The same frame between other addresses.
fn udp_frame_between(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 16];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&24u16.to_be_bytes());
    f
}

fn monotonic_ns() -> u64 {
    chaos_userspace::engine::lifecycle::monotonic_ns()
}

/// The coarse monotonic clock, the one the lease is checked against (it moves once a tick).
fn coarse_ns() -> u64 {
    chaos_userspace::engine::lifecycle::clock_ns(libc::CLOCK_MONOTONIC_COARSE) as u64
}

/// The coarse clock's step: one tick (10 ms at HZ 100, 4 ms at HZ 250).
fn coarse_tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_getres(CLOCK_MONOTONIC_COARSE)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Harness {
    ebpf: Ebpf,
    fd: i32,
}

impl Harness {
    fn new() -> Self {
        // Both the drop and the delay code kept (the loader sets only what a fault uses).
        Self::with_features(FEAT_DROP | FEAT_DELAY)
    }

    fn with_features(features: u64) -> Self {
        let mut ebpf =
            chaos_userspace::engine::ebpf::load_with_globals(&[("NET_EGRESS_FEATURES", features)])
                .expect("load the object");
        let prog: &mut CgroupSkb = ebpf.program_mut("net_egress").unwrap().try_into().unwrap();
        prog.load().expect("load net_egress");
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        Self { ebpf, fd }
    }

    /// The TC program of ingress delay (`net_tc_ingress`) instead, with its features.
    fn tc_ingress(features: u64) -> Self {
        let mut ebpf = chaos_userspace::engine::ebpf::load_with_globals(&[(
            "NET_TC_INGRESS_FEATURES",
            features,
        )])
        .expect("load the object");
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut("net_tc_ingress")
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().expect("load net_tc_ingress");
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        Self { ebpf, fd }
    }

    fn counters(&self, dir: u32) -> NetCounters {
        let map = PerCpuArray::<_, NetCounters>::try_from(self.ebpf.map("NET_COUNTERS").unwrap())
            .unwrap();
        let mut total = NetCounters::default();
        for c in map.get(&dir, 0).unwrap().iter() {
            total.accumulate(c);
        }
        total
    }

    fn configure(&mut self, egress: DirectionFault, deadline_ns: u64) {
        self.set(NetConfig {
            deadline_ns,
            egress,
            ..Default::default()
        });
    }

    fn set(&mut self, cfg: NetConfig) {
        Array::<_, NetConfig>::try_from(self.ebpf.map_mut("NET_CONFIG").unwrap())
            .unwrap()
            .set(0, cfg, 0)
            .unwrap();
    }

    /// Runs the program once; returns (verdict, tstamp it left on the skb).
    fn run(&self) -> (u32, u64) {
        self.run_gso(0)
    }

    /// The same for a packet the kernel would send as `segs` GSO segments (0: not GSO).
    fn run_gso(&self, segs: u32) -> (u32, u64) {
        self.run_frame(&udp_frame(), segs)
    }

    /// Runs the program once on `frame` (Ethernet first), as `segs` GSO segments (0: not GSO).
    fn run_frame(&self, frame: &[u8], segs: u32) -> (u32, u64) {
        let mut ctx_in = [0u8; SK_BUFF_SIZE];
        if segs > 0 {
            ctx_in[GSO_SEGS_OFFSET..GSO_SEGS_OFFSET + 4].copy_from_slice(&segs.to_ne_bytes());
            ctx_in[GSO_SIZE_OFFSET..GSO_SIZE_OFFSET + 4].copy_from_slice(&4u32.to_ne_bytes());
        }
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
fn lease_checked_once_a_tick_still_ends_on_time() {
    if !root_or_skip("lease_checked_once_a_tick_still_ends_on_time") {
        return;
    }
    // Drop alone: the lease is checked against the tick each CPU last found it valid at, and the
    // clock read again only when the tick or the deadline changes.
    let mut h = Harness::with_features(FEAT_DROP);
    let drop_all = DirectionFault {
        drop_threshold: percent_to_threshold(100.0),
        ..Default::default()
    };
    h.configure(drop_all, u64::MAX);
    assert_eq!(h.run().0, 2, "armed: dropped");
    // A new deadline, already past by the coarse clock the program reads (which lags the fine one
    // by up to a tick, more when emulation makes ticks late): refused at once, in the same tick as
    // the armed run.
    h.configure(drop_all, coarse_ns() - 1);
    assert_eq!(h.run().0, 1, "a past deadline written now still injected");
    // A deadline 20 ms ahead, valid while it lasts (runs back to back, mostly in one tick) ...
    let deadline = monotonic_ns() + 20 * MS;
    h.configure(drop_all, deadline);
    let early: Vec<u32> = (0..50).map(|_| h.run().0).collect();
    let in_time = monotonic_ns() < deadline;
    assert!(
        !in_time || early.iter().all(|&v| v == 2),
        "a valid lease let packets through: {early:?}"
    );
    // ... and over once it has passed, by two ticks at most: the cache of the last tick does not
    // outlive it, though nobody wrote the config since. The ticks are judged by the kernel's own
    // coarse clock, the one the program reads (under emulation a busy host makes ticks late, and a
    // fixed wait on the fine clock would then end before the ticks it means to wait for).
    let tick = coarse_tick_ns();
    while coarse_ns() < deadline + 2 * tick + 1 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        h.run().0,
        1,
        "the lease outlived its deadline by two ticks ({tick} ns each) of the coarse clock"
    );
    let dropped_early = early.iter().filter(|&&v| v == 2).count() as u64;
    assert_eq!(
        h.egress_counters().dropped,
        1 + dropped_early,
        "the counters disagree with the verdicts"
    );
}

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
    const N: usize = 2000;
    // Each delay as the bracket it lies in: the program read the clock between `before` and
    // `after`.
    let (mut low, mut high) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let before = monotonic_ns();
        let (_, tstamp) = h.run();
        let after = monotonic_ns();
        // The stamp was taken between `before` and `after`: bound the delay it added from both sides.
        assert!(
            tstamp >= before + delay - jitter && tstamp <= after + delay + jitter,
            "out of bounds"
        );
        low.push(tstamp.saturating_sub(after) as f64);
        high.push(tstamp.saturating_sub(before) as f64);
    }
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mean_low, mean_high) = (mean_of(&low), mean_of(&high));
    let min = high.iter().cloned().fold(f64::MAX, f64::min);
    let max = low.iter().cloned().fold(0.0, f64::max);
    // Hoeffding at alpha 1e-6: each delay lies within delay ± jitter (a span of 2 jitter), the
    // mean of the program's draws is `delay` (the multiply-shift picks each of the 2 jitter + 1
    // offsets alike, within 2^-32).
    let t = integration_tests::stats::hoeffding(
        N,
        2.0 * jitter as f64,
        integration_tests::stats::ALPHA,
    );
    println!(
        "delay 10ms ±2ms over {N} runs: mean {:.3}..{:.3} ms (bound ±{:.3} ms), min {:.3} ms, max \
         {:.3} ms",
        mean_low / 1e6,
        mean_high / 1e6,
        t / 1e6,
        min / 1e6,
        max / 1e6
    );
    assert!(
        mean_low - t <= delay as f64 && delay as f64 <= mean_high + t,
        "mean {mean_low}..{mean_high}, not {delay} ± {t}"
    );
    // Some draw lands in the lowest tenth of the range but with probability 0.9^2000 = e^-210 of
    // failing; `min` is at most that draw (the latest clock read before it).
    assert!(
        min < (delay - jitter) as f64 + 0.2 * jitter as f64,
        "jitter never reached its low end: {min}"
    );
    // Some 200 draws land in the highest tenth but with probability 0.9^2000 = e^-210 of failing;
    // `max` is such a draw less the time its run took after the program read the clock (tens of
    // microseconds, even under emulation), well within the other 0.2 jitter (400 us) allowed.
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

/// A rate of 80 kbit/s: a byte every 100 µs, so a packet's turn (4.4 ms) is long beside a test run,
/// even under emulation.
const NS_PER_BYTE: u64 = 100_000;

fn slow_rate(burst_bytes: u64, queue_ns: u64) -> NetConfig {
    NetConfig {
        deadline_ns: u64::MAX,
        rate: RateLimit {
            ns_per_byte: NS_PER_BYTE << RATE_SHIFT,
            burst_ns: burst_bytes * NS_PER_BYTE,
            queue_ns,
        },
        ..Default::default()
    }
}

/// IP + UDP + 16 bytes: what `udp_frame` is at the IP layer.
const FRAME_IP_BYTES: u64 = 44;

#[test]
fn rate_paces_packets_one_turn_apart() {
    if !root_or_skip("rate_paces_packets_one_turn_apart") {
        return;
    }
    let mut h = Harness::with_features(FEAT_RATE);
    h.set(slow_rate(0, 1_000 * MS));
    // Back to back (a test run takes µs, a turn 4.4 ms): the first leaves at once, each next one a
    // turn after the one before.
    let before = monotonic_ns();
    let stamps: Vec<u64> = (0..20)
        .map(|_| h.run())
        .map(|(v, t)| {
            assert_eq!(v, 1, "a paced packet passes");
            t
        })
        .collect();
    let after = monotonic_ns();
    assert_eq!(
        stamps[0], 0,
        "the first packet after an idle link waited: {stamps:?}"
    );
    assert!(
        (before + FRAME_IP_BYTES * NS_PER_BYTE..=after + FRAME_IP_BYTES * NS_PER_BYTE)
            .contains(&stamps[1]),
        "the second packet's turn {} is not one turn after the first ({before}..{after})",
        stamps[1]
    );
    for w in stamps[1..].windows(2) {
        assert_eq!(
            w[1] - w[0],
            FRAME_IP_BYTES * NS_PER_BYTE,
            "turns not one packet apart: {stamps:?}"
        );
    }
    let c = h.egress_counters();
    assert_eq!(
        (c.paced, c.rate_dropped, c.rate_bytes),
        (19, 0, 20 * FRAME_IP_BYTES)
    );
    // A GSO packet of 4 segments puts its headers (IP 20 + UDP 8) on the link 4 times.
    let (_, last) = h.run_gso(4);
    let (_, next) = h.run();
    assert_eq!(
        next - last,
        (FRAME_IP_BYTES + 3 * 28) * NS_PER_BYTE,
        "GSO segments' headers not counted"
    );
    assert_eq!(h.egress_counters().rate_bytes, 22 * FRAME_IP_BYTES + 3 * 28);
}

#[test]
fn rate_burst_lets_a_bucket_through_and_the_queue_drops_the_rest() {
    if !root_or_skip("rate_burst_lets_a_bucket_through_and_the_queue_drops_the_rest") {
        return;
    }
    let mut h = Harness::with_features(FEAT_RATE);
    // A bucket of 10 packets and a queue of 5 turns.
    h.set(slow_rate(
        10 * FRAME_IP_BYTES,
        5 * FRAME_IP_BYTES * NS_PER_BYTE,
    ));
    let queue_ns = 5 * FRAME_IP_BYTES * NS_PER_BYTE;
    let mut runs = Vec::new();
    let start = monotonic_ns();
    for _ in 0..40 {
        let (verdict, stamp) = h.run();
        runs.push((verdict, stamp, monotonic_ns()));
    }
    let at_once = runs
        .iter()
        .take_while(|&&(v, t, _)| v == 1 && t == 0)
        .count();
    // Ten packets' worth of credit, plus the one whose turn starts now, plus whatever the time
    // those runs took earned.
    let turn = FRAME_IP_BYTES * NS_PER_BYTE;
    let earned = (runs[at_once.min(39)].2 - start) / turn;
    assert!(
        (11..=12 + earned as usize).contains(&at_once),
        "{at_once} packets left at once with a 10-packet bucket ({earned} turns earned): {runs:?}"
    );
    let dropped = runs.iter().filter(|&&(v, _, _)| v == 2).count() as u64;
    // The rest fit in the queue's 5 turns (and the turns that passed meanwhile), or were dropped.
    let passed = (runs[39].2 - start) / turn;
    assert!(
        dropped > 0 && dropped + at_once as u64 + 6 + passed >= 40,
        "a 5-turn queue kept {} of 40 ({passed} turns passed): {runs:?}",
        40 - dropped
    );
    // No packet was given a turn further off than the queue holds.
    for &(_, stamp, after) in &runs {
        assert!(
            stamp <= after + queue_ns,
            "a turn {} ns ahead with a {queue_ns} ns queue: {runs:?}",
            stamp - after
        );
    }
    let waited = runs.iter().filter(|&&(v, t, _)| v == 1 && t != 0).count();
    let c = h.egress_counters();
    assert_eq!(
        (c.paced, c.rate_dropped),
        (waited as u64, dropped),
        "the counters disagree with the verdicts"
    );
}

/// Loads the egress program with a delay and the given extra features, the distribution `dist` in
/// its table, and `shape`; returns the delays (ns, from the stamp) of `n` runs, None for a packet
/// sent at once. Each is the delay the program chose plus the time from the clock read before the
/// run to the program's own (microseconds; see [`shaped_delay_brackets`] for both ends).
fn shaped_delays(
    features: u64,
    dist: chaos_userspace::kinds::net::delay::Distribution,
    delay: u64,
    jitter: u64,
    shape: chaos_common::DelayShape,
    n: usize,
) -> Vec<Option<f64>> {
    shaped_delay_brackets(features, dist, delay, jitter, shape, n)
        .into_iter()
        .map(|b| b.map(|(_, upper)| upper))
        .collect()
}

/// As [`shaped_delays`], but each delay as the bracket it is known to lie in: the program read the
/// clock between the test's reads before and after the run, so the delay it chose lies between the
/// stamp minus the later read and the stamp minus the earlier one.
fn shaped_delay_brackets(
    features: u64,
    dist: chaos_userspace::kinds::net::delay::Distribution,
    delay: u64,
    jitter: u64,
    shape: chaos_common::DelayShape,
    n: usize,
) -> Vec<Option<(f64, f64)>> {
    let mut h = Harness::with_features(FEAT_DELAY | features);
    if let Some(table) = dist.table() {
        let mut map =
            Array::<_, i32>::try_from(h.ebpf.map_mut("NET_DELAY_TABLE").unwrap()).unwrap();
        for (i, v) in table.into_iter().enumerate() {
            map.set(i as u32, v, 0).unwrap();
        }
    }
    h.set(NetConfig {
        deadline_ns: u64::MAX,
        egress: DirectionFault {
            delay_ns: delay,
            jitter_ns: jitter,
            ..Default::default()
        },
        delay_shape: shape,
        ..Default::default()
    });
    (0..n)
        .map(|_| {
            let before = monotonic_ns();
            let (verdict, stamp) = h.run();
            let after = monotonic_ns();
            assert_eq!(verdict, 1);
            (stamp != 0).then(|| {
                (
                    stamp.saturating_sub(after) as f64,
                    stamp.saturating_sub(before) as f64,
                )
            })
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

/// The exact distribution of the delays the egress program draws from `dist`'s table: the draw's
/// top 12 bits pick one of its 4096 entries, each alike, and the program computes
/// max(0, delay + (score * jitter) >> 16) in integers (ns), as here.
fn table_delays(
    dist: chaos_userspace::kinds::net::delay::Distribution,
    delay: u64,
    jitter: u64,
) -> integration_tests::stats::Discrete {
    let table = dist.table().expect("a tabled distribution");
    integration_tests::stats::Discrete::new(
        table
            .into_iter()
            .map(|score| {
                let offset = (i64::from(score) * jitter as i64) >> chaos_common::DELAY_TABLE_SHIFT;
                (delay as i64 + offset).max(0) as f64
            })
            .collect(),
    )
}

#[test]
fn delay_distributions_have_the_mean_and_deviation_asked() {
    if !root_or_skip("delay_distributions_have_the_mean_and_deviation_asked") {
        return;
    }
    use chaos_userspace::kinds::net::delay::Distribution;
    use integration_tests::stats::{ALPHA, bernstein, dkw_epsilon, ks_bracketed};
    let (d, j) = (50 * MS, 10 * MS);
    // The sample is judged against the exact distribution of the table kchaos built (finite, so
    // its CDF and moments are known), not by its sample deviation: that of a long-tailed sample is
    // itself widely spread, a few draws of pareto's top entries move it by several percent.
    //
    // Size: a 5 % error in the jitter's scale moves the normal's CDF by phi(1) * 0.05 = 0.012 at
    // one deviation; the DKW bound at alpha 1e-6, sqrt(ln(2/alpha) / 2n), is below that from
    // n = 50,400 on.
    const N: usize = 52_000;
    let eps = dkw_epsilon(N, ALPHA);
    for dist in [
        Distribution::Normal,
        Distribution::Pareto,
        Distribution::Paretonormal,
    ] {
        let exact = table_delays(dist, d, j);
        let (lower, upper): (Vec<f64>, Vec<f64>) = shaped_delay_brackets(
            chaos_common::FEAT_DELAY_TABLE,
            dist,
            d,
            j,
            Default::default(),
            N,
        )
        .into_iter()
        .map(|x| x.expect("every packet delayed"))
        .unzip();
        let ks = ks_bracketed(&lower, &upper, &exact);
        let ((mean_low, sd), (mean_high, _)) = (mean_sd(&lower), mean_sd(&upper));
        // Bernstein with the table's exact deviation and reach (alpha 1e-6): pareto's reach is
        // 22 deviations, so this is far tighter than Hoeffding's range.
        let t = bernstein(N, exact.sd(), exact.reach(), ALPHA);
        let ms = |x: f64| x / 1e6;
        println!(
            "{dist:?}: KS distance {ks:.4} (bound {eps:.4}); mean {:.3}..{:.3} ms (table {:.3} \
             ms, bound ±{:.3}); sd {:.3} ms (table {:.3} ms); min {:.3} ms (table {:.3} ms)",
            ms(mean_low),
            ms(mean_high),
            ms(exact.mean()),
            ms(t),
            ms(sd),
            ms(exact.sd()),
            ms(upper.iter().copied().fold(f64::INFINITY, f64::min)),
            ms(exact.min())
        );
        assert!(
            ks <= eps,
            "{dist:?}: the delays' CDF is {ks:.4} from the table's, more than DKW's {eps:.4} \
             (alpha {ALPHA})"
        );
        assert!(
            mean_low - t <= exact.mean() && exact.mean() <= mean_high + t,
            "{dist:?}: mean {mean_low}..{mean_high} ns, the table's {} ± {t} (Bernstein, alpha \
             {ALPHA})",
            exact.mean()
        );
        // Deterministic: no draw is below the table's least entry.
        assert!(
            upper.iter().all(|&x| x >= exact.min()),
            "{dist:?}: a delay below the table's least, {} ns",
            exact.min()
        );
        // The table itself is what was asked: mean `delay`, deviation `jitter`, but for the tails
        // a table of 4096 quantiles clips (deterministic; the bounds are those of chaos-userspace's
        // unit test tables_are_standard_scores).
        let j = j as f64;
        assert!((exact.mean() - d as f64).abs() < 0.03 * j, "{dist:?}");
        let sd_low = if dist == Distribution::Normal {
            0.99
        } else {
            0.85
        };
        assert!((sd_low * j..=1.01 * j).contains(&exact.sd()), "{dist:?}");
    }
}

#[test]
fn delay_correlation_makes_each_delay_lean_on_the_last() {
    if !root_or_skip("delay_correlation_makes_each_delay_lean_on_the_last") {
        return;
    }
    use chaos_userspace::kinds::net::delay::Distribution;
    let lag1 = |rho: f64| {
        let v: Vec<f64> = shaped_delays(
            if rho > 0.0 {
                chaos_common::FEAT_DELAY_CORRELATION
            } else {
                0
            },
            Distribution::Uniform,
            50 * MS,
            10 * MS,
            chaos_common::DelayShape {
                correlation: percent_to_threshold(rho),
                ..Default::default()
            },
            4000,
        )
        .into_iter()
        .map(|x| x.unwrap())
        .collect();
        let (mean, sd) = mean_sd(&v);
        let cov = v
            .windows(2)
            .map(|w| (w[0] - mean) * (w[1] - mean))
            .sum::<f64>()
            / (v.len() - 1) as f64;
        cov / (sd * sd)
    };
    let (none, strong) = (lag1(0.0), lag1(90.0));
    println!("lag-1 autocorrelation of the delays: 0% -> {none:.3}, 90% -> {strong:.3}");
    // The lag-1 autocorrelation of n independent draws has a standard deviation of 1/sqrt(n)
    // (0.016 for 4000): 0.1 is 6.3 of them, a false alarm below 1e-9 (normal; alpha 1e-6 needs
    // 4.9). With correlation rho the draws are an AR(1) whose lag-1 autocorrelation is rho (the
    // uniform jitter maps a draw linearly), estimated within sqrt((1 - rho^2) / n) = 0.007: 0.1
    // below 0.9 is 14 of them.
    assert!(none.abs() < 0.1, "independent delays correlate: {none}");
    assert!(strong > 0.8, "90% correlation gave {strong}");
}

#[test]
fn reorder_sends_its_share_at_once_and_keeps_the_gap() {
    if !root_or_skip("reorder_sends_its_share_at_once_and_keeps_the_gap") {
        return;
    }
    use chaos_userspace::kinds::net::delay::Distribution;
    let run = |pct: f64, gap: u32, n: usize| {
        shaped_delays(
            chaos_common::FEAT_REORDER,
            Distribution::Uniform,
            10 * MS,
            0,
            chaos_common::DelayShape {
                reorder_threshold: percent_to_threshold(pct),
                reorder_gap: gap,
                ..Default::default()
            },
            n,
        )
    };
    // 25 %, any packet: a quarter go at once, each on its own draw (binomial; 8000 draws keep the
    // bound at alpha 1e-6 within 2.4 points).
    let v = run(25.0, 1, 8000);
    integration_tests::stats::assert_binomial(
        "packets sent at once",
        v.iter().filter(|x| x.is_none()).count() as u64,
        v.len() as u64,
        0.25,
    );
    assert!(
        v.iter().flatten().all(|&x| x >= 10.0 * MS as f64),
        "a delayed packet left early"
    );
    // 100 %, gap 5: exactly every fifth packet goes at once.
    let v = run(100.0, 5, 50);
    let positions: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_none()).collect();
    assert_eq!(positions, (0..10).map(|k| 4 + 5 * k).collect::<Vec<_>>());
}

#[test]
fn ingress_tc_program_stamps_what_enters_the_namespace() {
    if !root_or_skip("ingress_tc_program_stamps_what_enters_the_namespace") {
        return;
    }
    use chaos_common::{DIR_INGRESS, FEAT_FILTER, FEAT_TC_COUNTS_SEEN, PROTO_TCP, PacketFilter};
    let ingress = DirectionFault {
        delay_ns: 10 * MS,
        ..Default::default()
    };
    let mut h = Harness::tc_ingress(FEAT_DELAY | FEAT_TC_COUNTS_SEEN);
    h.set(NetConfig {
        deadline_ns: u64::MAX,
        ingress,
        ..Default::default()
    });
    let before = monotonic_ns();
    let (verdict, tstamp) = h.run();
    let after = monotonic_ns();
    // TCX_NEXT (-1): the program never ends a chain of others.
    assert_eq!(verdict, u32::MAX, "the program must pass the packet on");
    assert!(
        (before + 10 * MS..=after + 10 * MS).contains(&tstamp),
        "tstamp {tstamp} not 10 ms after [{before}, {after}]"
    );
    let c = h.counters(DIR_INGRESS);
    assert_eq!(
        (c.seen, c.matched, c.delayed, c.delay_ns_total),
        (1, 1, 1, 10 * MS)
    );

    // With a filter the headers are read from the Ethernet frame: a UDP packet is not TCP.
    let mut h = Harness::tc_ingress(FEAT_DELAY | FEAT_FILTER | FEAT_TC_COUNTS_SEEN);
    h.set(NetConfig {
        deadline_ns: u64::MAX,
        ingress,
        filter: PacketFilter {
            proto: PROTO_TCP,
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(
        h.run(),
        (u32::MAX, 0),
        "a UDP packet was delayed by a TCP-only fault"
    );
    let c = h.counters(DIR_INGRESS);
    assert_eq!((c.seen, c.matched, c.delayed), (1, 0, 0));
    // ... and a UDP-only fault delays it (so the headers were read, not skipped).
    h.set(NetConfig {
        deadline_ns: u64::MAX,
        ingress,
        filter: PacketFilter {
            proto: chaos_common::PROTO_UDP,
            ..Default::default()
        },
        ..Default::default()
    });
    assert_ne!(
        h.run().1,
        0,
        "a UDP packet was not delayed by a UDP-only fault"
    );
    // An expired lease: nothing.
    h.set(NetConfig {
        deadline_ns: monotonic_ns() - 1,
        ingress,
        ..Default::default()
    });
    assert_eq!(h.run(), (u32::MAX, 0));
}

#[test]
fn rate_per_peer_gives_each_peer_its_bucket_and_ingress_paces_too() {
    if !root_or_skip("rate_per_peer_gives_each_peer_its_bucket_and_ingress_paces_too") {
        return;
    }
    use chaos_common::{DIR_INGRESS, FEAT_RATE_PER_PEER, FEAT_TC_COUNTS_SEEN};
    let turn = FRAME_IP_BYTES * NS_PER_BYTE;
    let to_a = udp_frame_between([10, 254, 0, 1], [10, 254, 0, 2]);
    let to_b = udp_frame_between([10, 254, 0, 1], [10, 254, 0, 3]);
    // Per peer: each peer's first packet leaves at once on its own credit, and each next one waits
    // a turn after its own peer's last, whatever the other peer sent meanwhile.
    let mut h = Harness::with_features(FEAT_RATE | FEAT_RATE_PER_PEER);
    h.set(slow_rate(0, 1_000 * MS));
    let runs: Vec<(u32, u64)> = [&to_a, &to_b, &to_a, &to_b, &to_a, &to_b]
        .iter()
        .map(|f| h.run_frame(f, 0))
        .collect();
    assert!(runs.iter().all(|&(v, _)| v == 1), "{runs:?}");
    assert_eq!(
        (runs[0].1, runs[1].1),
        (0, 0),
        "a peer's first packet waited for another peer's: {runs:?}"
    );
    assert_eq!(runs[4].1 - runs[2].1, turn, "peer A's turns: {runs:?}");
    assert_eq!(runs[5].1 - runs[3].1, turn, "peer B's turns: {runs:?}");
    assert_eq!(h.egress_counters().paced, 4);
    // One bucket for all (no FEAT_RATE_PER_PEER): the second peer's first packet waits its turn.
    let mut h = Harness::with_features(FEAT_RATE);
    h.set(slow_rate(0, 1_000 * MS));
    let (_, first) = h.run_frame(&to_a, 0);
    let (_, second) = h.run_frame(&to_b, 0);
    assert_eq!(first, 0);
    assert_ne!(
        second, 0,
        "one bucket for all let another peer's packet through at once"
    );

    // On ingress, the TC program on the host side of a container's veth paces what enters it. It
    // counts IP bytes, not the Ethernet header (the same turn as at the cgroup hook), and drops what
    // would wait longer than the queue (TC_ACT_SHOT), passing the rest on (TCX_NEXT).
    let mut h = Harness::tc_ingress(FEAT_RATE | FEAT_TC_COUNTS_SEEN);
    h.set(slow_rate(0, 3 * turn));
    let runs: Vec<(u32, u64)> = (0..8).map(|_| h.run()).collect();
    assert_eq!(runs[0], (u32::MAX, 0), "an idle link's first packet waited");
    assert_eq!(runs[1].0, u32::MAX);
    assert_eq!(runs[2].1 - runs[1].1, turn, "ingress turns: {runs:?}");
    let dropped = runs.iter().filter(|&&(v, _)| v == 2).count() as u64;
    assert!(
        (3..=5).contains(&dropped),
        "a 3-turn queue kept {} of 8 back-to-back packets: {runs:?}",
        8 - dropped
    );
    let c = h.counters(DIR_INGRESS);
    assert_eq!(
        (c.seen, c.rate_dropped, c.rate_bytes),
        (8, dropped, (8 - dropped) * FRAME_IP_BYTES)
    );
    assert_eq!(c.delayed, 0, "a rate alone delayed packets");
}
