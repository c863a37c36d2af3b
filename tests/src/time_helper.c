/* The clock helper of the time tests and `cargo xtask bench time`: vDSO readings beside the same
   clocks read with a raw syscall (which a time fault does not shift).
   Modes: (none) a line every 10 ms; `check MS`; `bench N MS`; `leader-exits MS` (the lines from a
   second thread, the main thread exits after MS: a zombie leader); `exec-every N` (N lines, then it
   execs itself: a fresh vDSO); `vfork-loop MS` (the lines from a second thread, the main thread in a
   loop of vforks whose child sleeps MS before it exits: a thread ptrace cannot stop meanwhile);
   `threads N` (the lines, and N-1 threads reading the clock every 100 us); `fork-loop` (the lines, and
   a thread that forks children reading the clock, one every 2 ms). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }
static long long sys_ns(int c) { struct timespec t; syscall(SYS_clock_gettime, c, &t); return ns(t); }
static void line(void) {
  struct timespec r, m; struct timeval tv;
  clock_gettime(CLOCK_REALTIME, &r); long long sr = sys_ns(CLOCK_REALTIME);
  clock_gettime(CLOCK_MONOTONIC, &m); long long sm = sys_ns(CLOCK_MONOTONIC);
  gettimeofday(&tv, NULL); time_t t = time(NULL);
  printf("%lld %lld %lld %lld %lld %lld\n", ns(r), sr, ns(m), sm,
         (long long)tv.tv_sec * 1000000LL + tv.tv_usec, (long long)t);
  fflush(stdout);
}
static void *lines(void *unused) {
  (void)unused;
  for (;;) { line(); usleep(10000); }
  return NULL;
}
static void *reader(void *unused) {
  (void)unused;
  for (;;) { struct timespec r; clock_gettime(CLOCK_REALTIME, &r); usleep(100); }
  return NULL;
}
static void *forker(void *unused) {
  (void)unused;
  for (;;) {
    pid_t p = fork();
    if (p == 0) { struct timespec r; clock_gettime(CLOCK_REALTIME, &r); usleep(1000); _exit(0); }
    waitpid(p, NULL, 0);
    usleep(2000);
  }
  return NULL;
}
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
  if (argc > 2 && !strcmp(argv[1], "leader-exits")) {
    pthread_t t; pthread_create(&t, NULL, lines, NULL);
    usleep(atoi(argv[2]) * 1000);
    pthread_exit(NULL);
  }
  if (argc > 2 && !strcmp(argv[1], "exec-every")) {
    for (int i = 0; i < atoi(argv[2]); i++) { line(); usleep(10000); }
    execv("/proc/self/exe", argv);
    return 1;
  }
  if (argc > 2 && !strcmp(argv[1], "vfork-loop")) {
    pthread_t t; pthread_create(&t, NULL, lines, NULL);
    int ms = atoi(argv[2]);
    for (;;) {
      pid_t p = vfork();
      if (p == 0) { usleep(ms * 1000); _exit(0); }
      waitpid(p, NULL, 0);
      usleep(ms * 500);
    }
  }
  if (argc > 2 && !strcmp(argv[1], "threads")) {
    for (int i = 1; i < atoi(argv[2]); i++) { pthread_t t; pthread_create(&t, NULL, reader, NULL); }
  }
  if (argc > 1 && !strcmp(argv[1], "fork-loop")) {
    pthread_t t; pthread_create(&t, NULL, forker, NULL);
  }
  lines(NULL);
}
