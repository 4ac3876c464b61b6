/* Test harness: runs the embedded test inputs through edgenas_run, counts each stage and prints a report.

   Counter: QEMU build (default) reads CMSDK APB timer0 (0x40000000, 25 MHz). Under `qemu-system-arm -icount
   shift=N` one instruction takes 2^N ns of virtual time, so instructions = ticks * 40 / 2^N (deterministic; an
   instruction count, not cycles). Board build (-DEDGENAS_BOARD) reads the DWT cycle counter (DEMCR.TRCENA,
   DWT_CTRL.CYCCNTENA). Both builds print over the UART and end with uart_retarget.c's EDGENAS EXIT line.

   Report (one line each, parsed by edgenas.compile.harness_report):
     EDGENAS-REPORT 1 counter=<apb_timer_ticks|dwt_cycles> inputs=N stages=B classes=K
     EDGENAS INPUT t rc=R exit=E ref_exit=E' total=C stages=c0,c1,..   (c_i: stage i incl. its exit decision)
     EDGENAS LOGITS t v0 v1 ...
     EDGENAS END fails=F workspace_peak=BYTES */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "edgenas.h"
#include "harness_report.h"

extern const float edgenas_test_in[];

#ifdef EDGENAS_BOARD
#define COUNTER_NAME "dwt_cycles"
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)
static void counter_init(void) {
  DEMCR |= 1u << 24;      /* TRCENA: enable the DWT */
  DWT_LAR = 0xC5ACCE55u;  /* unlock (Cortex-M7; ignored where there is no lock) */
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;         /* CYCCNTENA */
}
static uint32_t counter_read(void) { return DWT_CYCCNT; }
#else
#define COUNTER_NAME "apb_timer_ticks"
#define T0_CTRL (*(volatile uint32_t *)0x40000000u)
#define T0_VALUE (*(volatile uint32_t *)0x40000004u)
#define T0_RELOAD (*(volatile uint32_t *)0x40000008u)
static void counter_init(void) {
  T0_CTRL = 0;
  T0_RELOAD = 0xFFFFFFFFu;
  T0_VALUE = 0xFFFFFFFFu;
  T0_CTRL = 1u; /* enable, count down from 2^32 - 1 */
}
static uint32_t counter_read(void) { return 0xFFFFFFFFu - T0_VALUE; }
#endif

extern void edgenas_uart_init(void);

static uint32_t marks[EDGENAS_N_STAGES];
static int n_marks;

void edgenas_profile_mark(int stage) {
  marks[stage] = counter_read();
  n_marks = stage + 1;
}

void edgenas_fault(void) {
  printf("EDGENAS FAULT\n");
  exit(3);
}

int main(void) {
  edgenas_uart_init();
  counter_init();
  int fails = 0;
  printf("EDGENAS-REPORT 1 counter=%s inputs=%d stages=%d classes=%d\n", COUNTER_NAME, EDGENAS_N_TESTS,
         EDGENAS_N_STAGES, EDGENAS_N_CLASSES);
  for (int t = 0; t < EDGENAS_N_TESTS; t++) {
    float logits[EDGENAS_N_CLASSES];
    int exit_id = -1;
    n_marks = 0;
    uint32_t start = counter_read();
    int rc = edgenas_run(&edgenas_test_in[t * EDGENAS_INPUT_SIZE], logits, &exit_id);
    uint32_t end = counter_read();
    printf("EDGENAS INPUT %d rc=%d exit=%d ref_exit=%d total=%lu stages=", t, rc, exit_id,
           (int)edgenas_test_ref_exit[t], (unsigned long)(end - start));
    uint32_t prev = start;
    for (int s = 0; s < n_marks; s++) {
      printf("%s%lu", s ? "," : "", (unsigned long)(marks[s] - prev));
      prev = marks[s];
    }
    float max_diff = edgenas_report_logits(t, logits);
    if (rc != 0 || exit_id != edgenas_test_ref_exit[t] || !(max_diff <= EDGENAS_LOGIT_TOLERANCE)) fails++;
  }
  return edgenas_report_end(fails);
}
