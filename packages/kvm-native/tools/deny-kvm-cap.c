/*
 * deny-kvm-cap: runs a program as on a kernel without some KVM capabilities.
 *
 *   deny-kvm-cap CAP[,CAP...] -- PROGRAM [ARGS...]
 *
 * Installs a seccomp filter under which ioctl(fd, KVM_CHECK_EXTENSION, CAP) returns 0 ("absent")
 * for each listed capability number, without asking the kernel, then execs PROGRAM. Every other
 * system call, and KVM_CHECK_EXTENSION for other capabilities, goes to the kernel as usual. The
 * filter is inherited by the program's threads and children and cannot be removed.
 *
 * It lets the tests (and an operator rehearsing an upgrade) see what the harvester says on an older
 * kernel, for example one without the dirty ring (KVM_CAP_DIRTY_LOG_RING 192, its ACQ_REL variant
 * 223), against the real /dev/kvm. x86-64 only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_CAPS 16

static int usage(void) {
  fprintf(stderr, "usage: deny-kvm-cap CAP[,CAP...] -- PROGRAM [ARGS...]\n"
                  "  runs PROGRAM with KVM_CHECK_EXTENSION answering 0 for each listed capability number\n"
                  "  (192 = KVM_CAP_DIRTY_LOG_RING, 223 = KVM_CAP_DIRTY_LOG_RING_ACQ_REL)\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) return usage();
#if !defined(__x86_64__)
  fprintf(stderr, "deny-kvm-cap: only built for x86-64\n");
  return 2;
#else
  unsigned caps[MAX_CAPS];
  int ncaps = 0;
  for (char *s = argv[1]; *s;) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || errno != 0 || v > 0xffffffffUL || (*end != ',' && *end != '\0') || ncaps == MAX_CAPS) {
      fprintf(stderr, "deny-kvm-cap: '%s' is not a list of at most %d capability numbers\n", argv[1], MAX_CAPS);
      return usage();
    }
    caps[ncaps++] = (unsigned)v;
    s = *end == ',' ? end + 1 : end;
  }

  /* arch, syscall number, ioctl request (low and high word), then each capability (low and high word). */
  struct sock_filter prog[16 + 4 * MAX_CAPS];
  int n = 0;
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(__u64))
#define ARG_HI(i) (ARG_LO(i) + sizeof(__u32))
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 1, 0);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1));
  prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, KVM_CHECK_EXTENSION, 1, 0);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_HI(1));
  prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_HI(2));
  prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2));
  for (int i = 0; i < ncaps; i++) {
    /* Equal: answer 0 (SECCOMP_RET_ERRNO with errno 0 returns 0 without running the call). */
    prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, caps[i], 0, 1);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 0);
  }
  prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog fprog = {.len = (unsigned short)n, .filter = prog};

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    perror("deny-kvm-cap: prctl(PR_SET_NO_NEW_PRIVS)");
    return 1;
  }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog) != 0) {
    perror("deny-kvm-cap: seccomp(SECCOMP_SET_MODE_FILTER)");
    return 1;
  }
  execvp(argv[3], &argv[3]);
  fprintf(stderr, "deny-kvm-cap: cannot run %s: %s\n", argv[3], strerror(errno));
  return 127;
#endif
}
