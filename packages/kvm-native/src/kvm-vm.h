/*
 * The VM core: one KVM virtual machine running the test guest, its memory, its vCPU threads and
 * its dirty-page harvest. Plain C, no Node-API: the N-API binding (napi-binding.c) and the C
 * baseline benchmark (tools/harvest-baseline.c) are both thin layers over this interface, so they
 * measure and exercise exactly the same code.
 *
 * Threading: every function here is called from one controlling thread (the JS thread, or the
 * benchmark's main thread). The core itself runs one pthread per vCPU and synchronises with it.
 *
 * Errors: functions that can fail return 0 (or a count) on success and -1 on failure, filling a
 * struct vm_error that the caller turns into a typed error.
 */
#ifndef CKPT_KVM_VM_H
#define CKPT_KVM_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what a caller may ask for (validated by vm_validate_options). */
#define VM_MAX_SLOTS 256U
#define VM_MAX_VCPUS 64U
#define VM_MIN_TICK_US 10U
#define VM_MAX_TICK_US 10000000U
/* Pages per burst when the rate is unlimited (ratePagesPerSec == 0). The guest publishes its counters
 * after each burst, so a small burst keeps them fresh; an IN exit per 256 pages costs little. */
#define VM_UNPACED_BURST 256U
/* "Unlimited" write allowance. */
#define VM_ALLOWANCE_UNLIMITED UINT64_MAX

enum vm_error_kind {
  VM_ERR_SYSCALL = 0, /* a system call failed: op, syscall, errno */
  VM_ERR_STATE = 1,   /* the VM is in the wrong state for the call (running, destroyed, ...) */
  VM_ERR_RANGE = 2,   /* an argument is out of range: thrown as RangeError */
  VM_ERR_TYPE = 3,    /* an argument has the wrong type: thrown as TypeError */
};

struct vm_error {
  enum vm_error_kind kind;
  const char *op;      /* what the helper was doing, e.g. "create-vm" */
  const char *syscall; /* e.g. "ioctl(KVM_CREATE_VM)"; "" when not a syscall failure */
  int err;             /* positive errno; 0 when not a syscall failure */
  char message[320];   /* "cannot <verb> <object>: <cause>" */
};

/* Capabilities of the host (KVM_CHECK_EXTENSION on /dev/kvm and on a scratch VM fd). */
struct vm_probe {
  int api_version;
  int64_t dirty_ring_max_bytes;
  int64_t dirty_ring_acq_rel_max_bytes;
  int64_t manual_protect;
  int64_t recommended_vcpus;
  int64_t max_vcpus;
  int64_t page_size;
};

struct vm_options {
  const char *dev_path;
  uint32_t nslots;
  uint64_t slot_bytes[VM_MAX_SLOTS];
  uint32_t vcpus;
  uint64_t ring_bytes; /* 0 = bitmap mode */
  bool load_guest;
  uint32_t workload;
  double rate_pages_per_sec; /* 0 = unpaced */
  uint32_t seed;
  uint32_t hot_pages;
  uint32_t hot_percent;
  bool fill_pages;
  uint64_t max_writes_per_vcpu; /* 0 = unlimited */
  uint32_t tick_us;
  bool probe_full_rings; /* prove rings seen full at a pause (dirty-harvest.c); false only in tests */
};

/* Indexes of vm_stats(); the same numbers as NativeStat in ts/native.ts. */
enum vm_stat {
  VM_STAT_RING_FULL_EXITS = 0,
  VM_STAT_INVALID_ENTRIES = 1,
  VM_STAT_ENTRIES_HARVESTED = 2,
  VM_STAT_ENTRIES_MARKED_RESET = 3,
  VM_STAT_RESET_RETURNED_TOTAL = 4,
  VM_STAT_IO_EXITS = 5,
  VM_STAT_KICKS = 6,
  VM_STAT_VCPUS_STALLED_RING_FULL = 7,
  VM_STAT_RUN_ERRORS = 8,
  VM_STAT_MODE = 9, /* 1 = ring, 0 = bitmap */
  VM_STAT_ACQ_REL = 10,
  VM_STAT_RING_ENTRIES = 11,
  VM_STAT_BITMAP_PAGES_CLEARED = 12,
  /* Ring entries the kernel overwrote before we could harvest them (a kernel ring overflow). */
  VM_STAT_RING_ENTRIES_LOST = 13,
  /* Suspect rings proven at a pause by making the kernel publish an entry (dirty-harvest.c). */
  VM_STAT_RING_PROBES = 14,
  /* 1 once the probe failed (the kernel refused the MSR write or did not log it): overruns then show
   * one harvest late, as without the probe. */
  VM_STAT_RING_PROBE_FAILED = 15,
  VM_STAT_LENGTH = 16,
};

struct vm;

/* Size of the state getVcpuState() returns: struct kvm_regs followed by struct kvm_sregs. */
size_t vm_vcpu_state_bytes(void);

int vm_probe(const char *dev_path, struct vm_probe *out, struct vm_error *err);

/* Checks options without touching the kernel (RangeError-kind errors naming the option). */
int vm_validate_options(const struct vm_options *o, struct vm_error *err);

int vm_create(const struct vm_options *o, struct vm **out, struct vm_error *err);
/* Stops vCPU threads, unmaps and closes everything. Not idempotent by itself: call once. */
void vm_destroy(struct vm *vm);

uint32_t vm_page_size(const struct vm *vm);
uint32_t vm_vcpu_count(const struct vm *vm);
uint32_t vm_slot_count(const struct vm *vm);
uint64_t vm_slot_pages(const struct vm *vm, uint32_t slot);
bool vm_ring_mode(const struct vm *vm);
uint32_t vm_ring_entries(const struct vm *vm);

/* vcpu-thread.c */
int vm_start(struct vm *vm, struct vm_error *err);
int vm_pause(struct vm *vm, struct vm_error *err);
void vm_resume(struct vm *vm);
void vm_grant_writes(struct vm *vm, uint64_t n);
/* Copies the first fatal vCPU error into buf; false when there is none. */
bool vm_last_error(struct vm *vm, char *buf, size_t len);
void vm_stats(struct vm *vm, double out[VM_STAT_LENGTH]);

/* dirty-harvest.c */
int64_t vm_drain(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap, struct vm_error *err);
int64_t vm_reset(struct vm *vm, struct vm_error *err);

struct ring_parse_result {
  uint32_t valid;
  uint32_t invalid;
  uint32_t consumed;
};

/*
 * The ring parser behind drain() and parseRing(): consumes DIRTY entries of `ring` (entries: a
 * power of two) from `fetch` on, at most `entries` of them and at most `cap` valid ones, marks each
 * consumed entry RESET, and writes valid (slot, offset) pairs to the outputs. See dirty-harvest.c.
 */
void ring_parse(void *ring, uint32_t entries, uint32_t fetch, const uint64_t *slot_pages, uint32_t nslots,
                uint32_t *out_slots, uint32_t *out_offsets, uint32_t cap, struct ring_parse_result *res);

/*
 * harvest-rounds.c: the plain C harvest loop of bench:harvest (also run by tools/harvest-baseline.c).
 * vm_wait_written: waits until the guest's vCPUs have written `target` pages in all.
 * vm_harvest_rounds: `rounds` times, grants `pages` writes to every vCPU (for a guest created with a
 * write allowance), waits until they are written, pauses, drains into the arrays (`cap` entries; a full
 * drain is repeated) and resets, resumes. us[r] is round r's drain+reset time in microseconds, seen[r]
 * its entries.
 */
int vm_wait_written(struct vm *vm, double target, uint64_t timeout_ms, struct vm_error *err);
int vm_harvest_rounds(struct vm *vm, uint32_t pages, uint32_t rounds, uint32_t *slots, uint32_t *offsets,
                      uint32_t cap, double *us, double *seen, struct vm_error *err);
/* kvm-vm.c: memory and vCPU state */
int vm_read_pages(struct vm *vm, const uint32_t *slots, const uint32_t *offsets, uint32_t count, uint8_t *out,
                  size_t out_len, struct vm_error *err);
/* resident: the pages are known to be populated (harvested dirty), so they are copied from the mapping
 * (no syscall per range); otherwise pread() from the memfd, which never populates holes. */
int64_t vm_read_ranges(struct vm *vm, const uint32_t *slots, const uint32_t *firsts, const uint32_t *counts,
                       uint32_t n, uint8_t *out, size_t out_len, bool resident, struct vm_error *err);
int vm_write_range(struct vm *vm, uint32_t slot, uint64_t first_page, const uint8_t *src, size_t len,
                   struct vm_error *err);
int vm_get_vcpu_state(struct vm *vm, uint32_t index, uint8_t *out, size_t out_len, struct vm_error *err);
int vm_set_vcpu_state(struct vm *vm, uint32_t index, const uint8_t *src, size_t len, struct vm_error *err);
/* out[2*i] = loops, out[2*i+1] = pagesWritten of vCPU i, read from the guest's status pages. */
void vm_guest_counters(struct vm *vm, double *out);

#endif
