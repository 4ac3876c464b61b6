/* Hosted test harness (Linux user space, static executable): the same generated driver (model.c, weights.c),
   TVM kernels and runtime stubs (tvm_stubs.c) as the Cortex-M firmware, with a main() for a hosted C library.
   Built for aarch64 and run under qemu-aarch64 it checks the Cortex-A build without a board.

   Every embedded test input runs once for the check (exit and logits against the onnxruntime reference), then
   `repeats` more times (argv[1], default 0); the fastest run's CLOCK_MONOTONIC nanoseconds are reported. Under
   qemu-aarch64 these are emulated wall-clock times, not Cortex-A latencies.

   Report: the firmware harness's lines (parsed by edgenas.compile.harness_report) with counter=monotonic_ns:
     EDGENAS-REPORT 1 counter=monotonic_ns inputs=N stages=B classes=K
     EDGENAS INPUT t rc=R exit=E ref_exit=E' total=NS stages=ns0,ns1,..
     EDGENAS LOGITS t v0 v1 ...
     EDGENAS END fails=F workspace_peak=BYTES */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "edgenas.h"
#include "harness_report.h"

extern const float edgenas_test_in[];

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t marks[EDGENAS_N_STAGES];
static int n_marks;

void edgenas_profile_mark(int stage) {
  marks[stage] = now_ns();
  n_marks = stage + 1;
}

int main(int argc, char **argv) {
  int repeats = argc > 1 ? atoi(argv[1]) : 0;
  int fails = 0;
  printf("EDGENAS-REPORT 1 counter=monotonic_ns inputs=%d stages=%d classes=%d\n", EDGENAS_N_TESTS,
         EDGENAS_N_STAGES, EDGENAS_N_CLASSES);
  for (int t = 0; t < EDGENAS_N_TESTS; t++) {
    const float *in = &edgenas_test_in[t * EDGENAS_INPUT_SIZE];
    float logits[EDGENAS_N_CLASSES];
    uint64_t best_marks[EDGENAS_N_STAGES];
    int exit_id = -1, best_n = 0;
    n_marks = 0;
    uint64_t start = now_ns();
    int rc = edgenas_run(in, logits, &exit_id);
    uint64_t best = now_ns() - start;
    for (int s = 0; s < n_marks; s++) best_marks[s] = marks[s] - start;
    best_n = n_marks;
    for (int r = 0; r < repeats && rc == 0; r++) {
      float scratch[EDGENAS_N_CLASSES];
      int e;
      n_marks = 0;
      uint64_t s0 = now_ns();
      edgenas_run(in, scratch, &e);
      uint64_t took = now_ns() - s0;
      if (took < best) {
        best = took;
        for (int s = 0; s < n_marks; s++) best_marks[s] = marks[s] - s0;
        best_n = n_marks;
      }
    }
    printf("EDGENAS INPUT %d rc=%d exit=%d ref_exit=%d total=%llu stages=", t, rc, exit_id,
           (int)edgenas_test_ref_exit[t], (unsigned long long)best);
    uint64_t prev = 0;
    for (int s = 0; s < best_n; s++) {
      printf("%s%llu", s ? "," : "", (unsigned long long)(best_marks[s] - prev));
      prev = best_marks[s];
    }
    float max_diff = edgenas_report_logits(t, logits);
    if (rc != 0 || exit_id != edgenas_test_ref_exit[t] || !(max_diff <= EDGENAS_LOGIT_TOLERANCE)) fails++;
  }
  return edgenas_report_end(fails);
}
