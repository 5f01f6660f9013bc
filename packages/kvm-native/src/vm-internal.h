/*
 * Internals of the VM core shared by kvm-vm.c, vcpu-thread.c and dirty-harvest.c. Nothing outside
 * src/ includes this file.
 */
#ifndef CKPT_VM_INTERNAL_H
#define CKPT_VM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdarg.h>

#include "kvm-vm.h"

struct vm_slot {
  uint64_t gpa;
  uint64_t bytes;
  uint64_t pages;
  uint8_t *host; /* inside vm->mem */
  /* Bitmap mode: the slot's bitmap as of the last KVM_GET_DIRTY_LOG, one bit per page. */
  uint64_t *bitmap;
  uint64_t bitmap_words;
  /* Bitmap mode: first and last bitmap word drain() emitted a page from since the last reset. */
  uint64_t emit_lo;
  uint64_t emit_hi;
};

struct vcpu {
  struct vm *vm;
  uint32_t index;
  int fd;
  struct kvm_run *run;       /* mmap of the vCPU fd, vm->run_size bytes */
  struct kvm_dirty_gfn *ring; /* ring mode: mmap of the vCPU fd at KVM_DIRTY_LOG_PAGE_OFFSET */
  /* Ring mode, controlling thread only (see dirty-harvest.c). */
  uint32_t fetch;   /* next ring index to harvest; free-running like the kernel's indexes */
  uint64_t pending; /* entries marked RESET that no KVM_RESET_DIRTY_RINGS has taken back yet */
  bool suspect;     /* the ring was seen full: the kernel may have overflowed it (ghost entries) */

  pthread_t thread;
  bool thread_created;
  bool has_state; /* registers were set: by load_guest, or by setVcpuState() (restore) */

  /* Protected by vm->lock. */
  bool in_run;      /* between "decided to enter KVM_RUN" and "KVM_RUN returned" */
  bool exited;      /* the thread has left its loop (stopping, or a fatal error) */
  bool ring_full;   /* stalled on KVM_EXIT_DIRTY_RING_FULL until reset_gen moves past stall_gen */
  bool ran;         /* KVM_RUN was entered at least once */
  uint64_t stall_gen;
  uint64_t run_gen; /* vm->reset_gen when this KVM_RUN was entered */
  uint64_t allowance;

  /* vCPU thread only: pacing (a token bucket in pages). */
  double tokens;
  uint64_t last_ns;
};

struct vm {
  int kvm_fd;
  int vm_fd;
  int mem_fd;
  uint8_t *mem; /* all guest RAM, slots back to back from GPA 0 */
  uint64_t mem_bytes;
  uint32_t page_size;

  uint32_t nslots;
  struct vm_slot *slots;
  uint64_t *slot_pages; /* nslots entries, for ring_parse() */

  uint32_t nvcpus;
  struct vcpu *vcpus;
  size_t run_size;
  struct kvm_cpuid2 *cpuid;

  bool ring_mode;
  bool acq_rel;
  uint32_t ring_entries;
  size_t ring_bytes;
  /* Ring mode: entries marked RESET and not yet returned by KVM_RESET_DIRTY_RINGS, all vCPUs. */
  uint64_t marked_since_reset;
  /* Ring mode: the last reset returned everything we had marked, so every vcpu->pending is exact. */
  bool ring_in_sync;
  /* Ring mode: no probing of suspect rings (dirty-harvest.c): turned off by the options (tests), or
   * the probe does not work on this kernel. */
  bool probe_off;
  /* Bitmap mode: drain() has fetched the bitmaps; its cursor; pages emitted since reset. */
  bool bm_fetched;
  uint32_t bm_slot;
  uint64_t bm_bit;
  uint64_t bm_emitted;

  /* Guest parameters used by the host's pacing. */
  uint32_t workload;
  double rate;
  double burst_cap;
  uint32_t tick_us;

  pthread_mutex_t lock;
  pthread_cond_t wake;   /* vCPU threads wait here: resume, reset, grant, destroy */
  pthread_cond_t parked; /* the controlling thread waits here for vCPUs to leave KVM_RUN */
  bool sync_init;
  bool started; /* under lock */
  bool paused;  /* under lock */
  bool stopping; /* under lock */
  uint64_t reset_gen; /* under lock */
  bool has_error; /* under lock */
  char last_error[256];

  uint64_t stats[VM_STAT_LENGTH]; /* updated with __atomic builtins */
};

static inline void vm_stat_add(struct vm *vm, enum vm_stat s, uint64_t n) {
  __atomic_fetch_add(&vm->stats[s], n, __ATOMIC_RELAXED);
}

/* Error helpers (kvm-vm.c). They return -1 so callers can `return vm_fail_sys(...)`. */
int vm_fail_sys(struct vm_error *e, const char *op, const char *syscall, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int vm_fail(struct vm_error *e, enum vm_error_kind kind, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

uint64_t vm_now_ns(void);

/* vcpu-thread.c: stops and joins every vCPU thread (used by vm_destroy). */
void vm_stop_threads(struct vm *vm);
/* reset(): bumps the reset generation and wakes vCPUs stalled on a full ring. */
void vm_wake_after_reset(struct vm *vm);
/* True when the vCPU is not running guest code and will not until resume(): state may be read. */
bool vm_vcpu_quiescent(struct vm *vm, uint32_t index);

#endif
