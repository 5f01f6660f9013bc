/*
 * Guest entry point, placed first at GUEST_CODE_GPA by guest.ld. The host starts every vCPU here
 * in 64-bit mode with RDI = vCPU index and RSP = the top of that vCPU's stack (16-byte aligned), so
 * the CALL leaves RSP as the SysV ABI expects at function entry.
 */
#include "layout.h"

  .section .text.entry, "ax"
  .globl _start
  .code64
_start:
  xorl %ebp, %ebp
  call guest_main
  /* guest_main never returns; if it did, HLT is an exit the host reports as an error. */
1:
  hlt
  jmp 1b
