/* Reset handler and vector table for Cortex-M (edgenas firmware). Copies .data (with the .got that LLVM-built
   kernels use) from flash, zeroes .bss, enables the FPU when the build uses one, runs main() and exits with its
   return value (uart_retarget.c's _exit prints it on the UART and, under QEMU, ends the emulator). */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void __libc_init_array(void);
extern void exit(int);
extern void edgenas_fault(void);
void Reset_Handler(void);

void Default_Handler(void) {
  edgenas_fault();
  while (1) {
  }
}

__attribute__((section(".isr_vector"), used)) const void *const edgenas_vectors[16] = {
    &_estack,        Reset_Handler,   Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, 0,               0,               0,               0,               Default_Handler,
    Default_Handler, 0,               Default_Handler, Default_Handler};

void Reset_Handler(void) {
  uint32_t *src = &_sidata, *dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
#if defined(__ARM_FP)
  *(volatile uint32_t *)0xE000ED88 |= (0xFu << 20); /* CPACR: full access to CP10/CP11 (FPU) */
  __asm volatile("dsb\n isb");
#endif
  __libc_init_array();
  exit(main());
}

/* newlib's __libc_init_array calls these; the firmware has no crti/crtn. */
void _init(void) {}
void _fini(void) {}
