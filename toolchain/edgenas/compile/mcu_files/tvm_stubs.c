/* The few TVM runtime symbols that TVM-generated kernels reference, without the TVM runtime.
   Kernel scratch (TIR buffers too large for the stack) comes from one static pool, used as a stack: kernels free
   their scratch in reverse order of allocation. The pool size is planned at compile time (EDGENAS_WORKSPACE_BYTES)
   and its high-water mark is reported by the harness. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "edgenas_config.h"

static uint8_t edgenas_workspace[EDGENAS_WORKSPACE_BYTES] __attribute__((aligned(16)));
static size_t edgenas_workspace_top, edgenas_workspace_high;

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint) {
  size_t n = ((size_t)nbytes + 15u) & ~(size_t)15u;
  (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
  if (n > sizeof(edgenas_workspace) - edgenas_workspace_top) return NULL; /* the kernel then returns an error */
  void *p = edgenas_workspace + edgenas_workspace_top;
  edgenas_workspace_top += n;
  if (edgenas_workspace_top > edgenas_workspace_high) edgenas_workspace_high = edgenas_workspace_top;
  return p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  size_t at = (size_t)((uint8_t *)ptr - edgenas_workspace);
  (void)device_type, (void)device_id;
  if (at < edgenas_workspace_top) edgenas_workspace_top = at;
  return 0;
}

size_t edgenas_workspace_peak(void) { return edgenas_workspace_high; }

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  printf("EDGENAS KERNEL-ERROR %s:", kind);
  for (int32_t i = 0; i < n; i++) printf(" %s", parts[i]);
  printf("\n");
}

/* LLVM-built kernels call the backend API through these pointers (the TVM runtime fills them at load time). */
void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = TVMBackendAllocWorkspace;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = TVMBackendFreeWorkspace;
