/* Board build only (-DEDGENAS_BOARD, --specs=nosys.specs): newlib's stdout goes to a UART.
   The defaults drive an ARM CMSDK APB UART at EDGENAS_UART_BASE (UART0 of the MPS2 boards, 0x40004000).
   On another board, define edgenas_uart_init and edgenas_uart_putc in your own file (these are weak). */
#include <stdint.h>

#ifndef EDGENAS_UART_BASE
#define EDGENAS_UART_BASE 0x40004000u
#endif
#define UART_DATA (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x0u))
#define UART_STATE (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x4u))
#define UART_CTRL (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x8u))
#define UART_BAUDDIV (*(volatile uint32_t *)(EDGENAS_UART_BASE + 0x10u))

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
