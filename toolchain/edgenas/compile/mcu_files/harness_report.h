/* The end of the report both test harnesses print, harness.c (firmware) and hosted_main.c (hosted check): each
   input's logits line with its largest |logit difference| from the embedded reference, and the END line. Each
   harness fails an input on a kernel error, another exit than the reference's, or a difference above
   EDGENAS_LOGIT_TOLERANCE (edgenas_config.h, from edgenas.agreement). edgenas.compile.harness_report parses the
   lines. */
#ifndef EDGENAS_HARNESS_REPORT_H
#define EDGENAS_HARNESS_REPORT_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "edgenas.h"

extern const float edgenas_test_ref_logits[];
extern const int32_t edgenas_test_ref_exit[];
extern size_t edgenas_workspace_peak(void);

/* Ends input t's INPUT line and prints its LOGITS line; returns its largest |logit difference|. */
static float edgenas_report_logits(int t, const float *logits) {
  printf("\nEDGENAS LOGITS %d", t);
  float max_diff = 0.0f;
  for (int k = 0; k < EDGENAS_N_CLASSES; k++) {
    float d = fabsf(logits[k] - edgenas_test_ref_logits[t * EDGENAS_N_CLASSES + k]);
    if (!(d <= max_diff)) max_diff = d; /* NaN counts as a difference */
    printf(" %.9g", (double)logits[k]);
  }
  printf("\n");
  return max_diff;
}

/* The END line; returns main's exit status. */
static int edgenas_report_end(int fails) {
  printf("EDGENAS END fails=%d workspace_peak=%lu\n", fails, (unsigned long)edgenas_workspace_peak());
  return fails ? 1 : 0;
}
#endif
