/* newlib's stdout and exit for both builds (--specs=nosys.specs): no semihosting, so a firmware image can reach
   nothing on the host but the UART (QEMU runs it with semihosting disabled, see edgenas.profile.qemu).
   The defaults drive an ARM CMSDK APB UART at EDGENAS_UART_BASE (UART0 of the MPS2 boards, 0x40004000).
   On another board, define edgenas_uart_init and edgenas_uart_putc in your own file (these are weak).

   _exit prints "EDGENAS EXIT status=N" (the harness's return value, 3 after a fault): the profile reads the
   status from this line. The QEMU build then requests a system reset (SCB AIRCR.SYSRESETREQ), which ends QEMU
   under -no-reboot; the board build stops (a reset would run the harness again and repeat the report). */
#include <stdint.h>

#ifndef EDGENAS_UART_BASE
#define EDGENAS_UART_BASE 0x40004000u
#endif
#define UART_DATA (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x0u))
#define UART_STATE (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x4u))
#define UART_CTRL (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x8u))
#define UART_BAUDDIV (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x10u))
#define SCB_AIRCR (*(volatile uint32_t *)0xE000ED0Cu)
#define AIRCR_SYSRESETREQ (0x05FA0000u | (1u << 2)) /* VECTKEY + SYSRESETREQ */

__attribute__((weak)) void edgenas_uart_init(void) {
  UART_BAUDDIV = 16u;
  UART_CTRL = 1u; /* TX enable */
}

__attribute__((weak)) void edgenas_uart_putc(char c) {
  while (UART_STATE & 1u) { /* TX buffer full */
  }
  UART_DATA = (uint32_t)(unsigned char)c;
}

int _write(int fd, const char *buf, int len) {
  (void)fd;
  for (int i = 0; i < len; i++) {
    if (buf[i] == '\n') edgenas_uart_putc('\r');
    edgenas_uart_putc(buf[i]);
  }
  return len;
}

static void uart_puts(const char *s) {
  while (*s) edgenas_uart_putc(*s++);
}

/* exit() has closed stdio by now: the end line goes to the UART directly. */
void _exit(int status) {
  char digits[12];
  int n = 0;
  uint32_t v = status < 0 ? 0u - (uint32_t)status : (uint32_t)status;
  do {
    digits[n++] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  uart_puts("\r\nEDGENAS EXIT status=");
  if (status < 0) edgenas_uart_putc('-');
  while (n) edgenas_uart_putc(digits[--n]);
  uart_puts("\r\n");
#ifndef EDGENAS_BOARD
  __asm volatile("dsb");
  SCB_AIRCR = AIRCR_SYSRESETREQ;
  __asm volatile("dsb");
#endif
  while (1) {
    __asm volatile("wfi");
  }
}
