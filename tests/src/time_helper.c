/* The clock helper of the time tests and `cargo xtask bench time`: vDSO readings beside the same
   clocks read with a raw syscall (which a time fault does not shift). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
static long long sys_ns(int c) { struct timespec t; syscall(SYS_clock_gettime, c, &t); return ns(t); }
int main(int argc, char **argv) {
  if (argc > 2 && !strcmp(argv[1], "check")) {
    usleep(atoi(argv[2]) * 1000);
    struct timespec r; clock_gettime(CLOCK_REALTIME, &r);
    long long d = ns(r) - sys_ns(CLOCK_REALTIME);
    return d < 1000000000LL && d > -1000000000LL ? 0 : 1;
  }
  if (argc > 3 && !strcmp(argv[1], "bench")) {
    long n = atol(argv[2]); struct timespec r;
    usleep(atoi(argv[3]) * 1000);
    long long s = sys_ns(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) clock_gettime(CLOCK_REALTIME, &r);
    long long e = sys_ns(CLOCK_MONOTONIC);
    printf("%.3f %lld\n", (double)(e - s) / n, ns(r) - sys_ns(CLOCK_REALTIME));
    return 0;
  }
  for (;;) {
    struct timespec r, m; struct timeval tv;
    clock_gettime(CLOCK_REALTIME, &r); long long sr = sys_ns(CLOCK_REALTIME);
    clock_gettime(CLOCK_MONOTONIC, &m); long long sm = sys_ns(CLOCK_MONOTONIC);
    gettimeofday(&tv, NULL); time_t t = time(NULL);
    printf("%lld %lld %lld %lld %lld %lld\n", ns(r), sr, ns(m), sm,
           (long long)tv.tv_sec * 1000000LL + tv.tv_usec, (long long)t);
    fflush(stdout);
    usleep(10000);
  }
}
