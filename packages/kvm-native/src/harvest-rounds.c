/*
 * The "plain C loop" of bench:harvest: rounds of "grant K writes, wait until the guest has written
 * them, pause, time drain-into-arrays + reset, resume", with nothing but the VM core in the timed
 * span. Two callers run it:
 *   - tools/harvest-baseline.c, in a process of its own with a guest of its own;
 *   - the addon's harvestRounds(), on the caller's guest from the caller's thread, so the bench can
 *     alternate the Node path and this loop on the same guest, the same threads and the same caches
 *     (where the scheduler puts the harvesting thread against the vCPU's moves per-page costs by up to
 *     1.5x between processes; see docs/harvester.md).
 */
#define _GNU_SOURCE
#include <time.h>

#include "vm-internal.h"

#define POLL_NS 50000L

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double pages_written(struct vm *vm) {
  double c[2 * VM_MAX_VCPUS];
  vm_guest_counters(vm, c);
  double sum = 0;
  for (uint32_t i = 0; i < vm_vcpu_count(vm); i++) sum += c[2 * i + 1];
  return sum;
}

/*
 * The guest publishes pagesWritten after a burst's stamps, so a published count means those stamps
 * are in memory.
 */
int vm_wait_written(struct vm *vm, double target, uint64_t timeout_ms, struct vm_error *e) {
  const uint64_t deadline = now_ns() + timeout_ms * 1000000ULL;
  const struct timespec poll = {0, POLL_NS};
  for (;;) {
    double written = pages_written(vm);
    if (written >= target) return 0;
    char guest[200];
    if (vm_last_error(vm, guest, sizeof guest))
      return vm_fail(e, VM_ERR_STATE, "wait-written", "the guest stopped before writing %.0f pages: %s", target, guest);
    if (now_ns() > deadline)
      return vm_fail(e, VM_ERR_STATE, "wait-written", "the guest wrote %.0f of %.0f pages in %llu ms", written, target,
                     (unsigned long long)timeout_ms);
    nanosleep(&poll, NULL);
  }
}

/* The timed span: drain everything into the arrays, then reset. */
static int64_t drain_and_reset(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap, struct vm_error *e) {
  int64_t total = 0;
  for (;;) {
    int64_t n = vm_drain(vm, slots, offsets, cap, e);
    if (n < 0) return -1;
    total += n;
    if ((uint64_t)n < cap) break;
  }
  if (vm_reset(vm, e) < 0) return -1;
  return total;
}

int vm_harvest_rounds(struct vm *vm, uint32_t pages, uint32_t rounds, uint32_t *slots, uint32_t *offsets,
                      uint32_t cap, double *us, double *seen, struct vm_error *e) {
  if (cap == 0) return vm_fail(e, VM_ERR_RANGE, "harvest-rounds", "the arrays must hold at least one entry");
  double target = pages_written(vm);
  for (uint32_t r = 0; r < rounds; r++) {
    vm_grant_writes(vm, pages);
    target += (double)pages * vm_vcpu_count(vm);
    if (vm_wait_written(vm, target, 20000, e) < 0) return -1;
    if (vm_pause(vm, e) < 0) return -1;
    uint64_t t0 = now_ns();
    int64_t n = drain_and_reset(vm, slots, offsets, cap, e);
    uint64_t t1 = now_ns();
    vm_resume(vm);
    if (n < 0) return -1;
    us[r] = (double)(t1 - t0) / 1000.0;
    seen[r] = (double)n;
  }
  return 0;
}
