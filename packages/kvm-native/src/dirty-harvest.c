/*
 * Dirty-page harvest: draining the per-vCPU dirty rings (and re-arming them with
 * KVM_RESET_DIRTY_RINGS), or, in bitmap mode, KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG per slot.
 *
 * Ring protocol (Documentation/virt/kvm/api.rst, KVM_CAP_DIRTY_LOG_RING): the ring is an array of
 * struct kvm_dirty_gfn shared with the kernel. KVM fills an entry's slot and offset, then publishes
 * it by setting flags = DIRTY (after a write barrier). Userspace harvests entries in order from its
 * own fetch index, and hands each one back by setting flags = RESET; KVM_RESET_DIRTY_RINGS then
 * re-protects those pages and frees the entries. Memory ordering:
 *   - the DIRTY load is an acquire, so slot/offset are read after the kernel's stores to them;
 *   - the RESET store is a release, so our reads of slot/offset complete before the kernel may
 *     see RESET and recycle the entry (the ordering KVM_CAP_DIRTY_LOG_RING_ACQ_REL makes explicit).
 * Entries are untrusted input: a bad slot, address space or offset (or unknown flag bits) is
 * dropped and counted, but still marked RESET so the kernel's reset index stays in step with ours.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "layout.h"
#include "vm-internal.h"

/* KVM_RESET_DIRTY_RINGS stops early (returning what it did so far) when a signal is pending. */
#define RESET_ATTEMPTS 4

void ring_parse(void *ring_mem, uint32_t entries, uint32_t fetch, const uint64_t *slot_pages, uint32_t nslots,
                uint32_t *out_slots, uint32_t *out_offsets, uint32_t cap, struct ring_parse_result *res) {
  struct kvm_dirty_gfn *ring = ring_mem;
  const uint32_t mask = entries - 1;
  uint32_t consumed = 0, valid = 0, invalid = 0;
  while (consumed < entries && valid < cap) {
    struct kvm_dirty_gfn *e = &ring[(fetch + consumed) & mask];
    uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
    if ((flags & KVM_DIRTY_GFN_F_DIRTY) == 0) break; /* not published yet: the ring ends here */
    /* Ordered after the acquire above; atomic so the compiler reads each exactly once, here. */
    uint32_t slot = __atomic_load_n(&e->slot, __ATOMIC_RELAXED);
    uint64_t offset = __atomic_load_n(&e->offset, __ATOMIC_RELAXED);
    /* Hand the entry back; the release orders our reads before the kernel can recycle it. */
    __atomic_store_n(&e->flags, (uint32_t)KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
    consumed++;
    uint32_t as_id = slot >> 16;
    uint32_t id = slot & 0xffff;
    if ((flags & ~(uint32_t)KVM_DIRTY_GFN_F_MASK) != 0 || as_id != 0 || id >= nslots || offset >= slot_pages[id]) {
      invalid++;
      continue;
    }
    out_slots[valid] = id;
    out_offsets[valid] = (uint32_t)offset; /* < slot pages, which fit in 32 bits */
    valid++;
  }
  res->valid = valid;
  res->invalid = invalid;
  res->consumed = consumed;
}

/* ---------------------------------------------------------------- ring mode */

/*
 * Kernel ring overflow. KVM reserves entries past the ring's soft limit so a vCPU can finish what
 * it is doing before it exits with KVM_EXIT_DIRTY_RING_FULL; kvm_dirty_ring_push() only WARNs when
 * the ring is completely full and then overwrites the oldest unharvested entry. Hosts that log
 * from long emulation batches (seen on this project's kvm-pvm host: every emulated write is logged,
 * up to 1024 per batch) can run past the reserve. After such an overflow the kernel's dirty index
 * is k entries further than anything published: the k oldest entries were overwritten (lost), and
 * after our harvest and reset their slots are "ghosts": empty in the ring, still counted as used by
 * the kernel, and never marked RESET by us, so the kernel's reset index can never pass them and
 * the vCPU would exit with DIRTY_RING_FULL forever.
 *
 * Recovery, only where the ring cannot change under us (its vCPU is paused or stalled) and our
 * bookkeeping is exact (the last reset returned everything we marked):
 *   - a ring we have seen full (pending >= entries) is "suspect";
 *   - a suspect ring whose fetch slot is empty while a later slot within the entries the kernel
 *     could be using is DIRTY has ghosts up to that slot: mark them RESET, count them lost;
 *   - a vCPU stalled on a full ring right after a reset, with nothing pending and nothing
 *     published, can only be stuck on ghosts: at least soft_limit of them, and KVM's soft limit is
 *     never below entries - 576 (64 reserved + up to 512 for Intel PML), so mark that many.
 * The entries lost are counted in VM_STAT_RING_ENTRIES_LOST: a harvest that saw any is incomplete.
 */
#define KVM_MAX_RESERVED_ENTRIES 576U

static uint32_t ghost_lower_bound(uint32_t entries) {
  return entries > KVM_MAX_RESERVED_ENTRIES ? entries - KVM_MAX_RESERVED_ENTRIES : (entries > 64 ? entries - 64 : 1);
}

/* The flags of ring entry `at` (a free-running index), loaded with acquire. */
static uint32_t entry_flags(const struct vm *vm, struct vcpu *v, uint32_t at) {
  return __atomic_load_n(&v->ring[at & (vm->ring_entries - 1)].flags, __ATOMIC_ACQUIRE);
}

/* How many ghost entries precede the next published one at v->fetch; 0 when none are provable. */
static uint32_t find_ghosts(struct vm *vm, struct vcpu *v) {
  const uint32_t n = vm->ring_entries;
  if (!vm->ring_in_sync || v->pending >= n) return 0;
  pthread_mutex_lock(&vm->lock);
  bool stalled_fresh = !v->in_run && v->ring_full && v->stall_gen == vm->reset_gen;
  bool stable = stalled_fresh || (!v->in_run && (vm->paused || v->exited));
  pthread_mutex_unlock(&vm->lock);
  if (!stable || !(v->suspect || stalled_fresh)) return 0;
  /* Slots [fetch, fetch + window) are the only ones the kernel can have pushed to since the reset. */
  const uint32_t window = n - (uint32_t)v->pending;
  for (uint32_t g = 1; g < window; g++)
    if (entry_flags(vm, v, v->fetch + g) & KVM_DIRTY_GFN_F_DIRTY) return g;
  if (stalled_fresh && v->pending == 0) {
    uint32_t g = ghost_lower_bound(n);
    return g < window ? g : window;
  }
  return 0;
}

/* Marks the `count` entries from v->fetch RESET without harvesting them, and moves past them. */
static void mark_reset(struct vm *vm, struct vcpu *v, uint32_t count) {
  const uint32_t mask = vm->ring_entries - 1;
  for (uint32_t i = 0; i < count; i++)
    __atomic_store_n(&v->ring[(v->fetch + i) & mask].flags, (uint32_t)KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
  v->fetch += count;
  v->pending += count;
  vm->marked_since_reset += count;
  vm_stat_add(vm, VM_STAT_ENTRIES_MARKED_RESET, count);
}

static void mark_ghosts(struct vm *vm, struct vcpu *v, uint32_t count) {
  mark_reset(vm, v, count);
  vm_stat_add(vm, VM_STAT_RING_ENTRIES_LOST, count);
}

static int64_t ring_drain(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap) {
  const uint32_t entries = vm->ring_entries;
  uint32_t n = 0;
  for (uint32_t i = 0; i < vm->nvcpus && n < cap; i++) {
    struct vcpu *v = &vm->vcpus[i];
    bool ghosts_checked = false;
    for (;;) {
      struct ring_parse_result r;
      uint64_t pending_before = v->pending;
      ring_parse(v->ring, entries, v->fetch, vm->slot_pages, vm->nslots, slots + n, offsets + n, cap - n, &r);
      v->fetch += r.consumed; /* free-running, like the kernel's indexes; wraps at 2^32 */
      v->pending += r.consumed;
      n += r.valid;
      vm->marked_since_reset += r.consumed;
      vm_stat_add(vm, VM_STAT_ENTRIES_HARVESTED, r.valid);
      vm_stat_add(vm, VM_STAT_INVALID_ENTRIES, r.invalid);
      vm_stat_add(vm, VM_STAT_ENTRIES_MARKED_RESET, r.consumed);
      /* An entry published at our fetch index after a complete reset: the kernel's dirty index
       * was ours, so there are no ghosts. A ring seen full may have overflowed. */
      if (vm->ring_in_sync && pending_before == 0 && r.consumed > 0) v->suspect = false;
      if (v->pending >= entries) v->suspect = true;
      if (n >= cap || r.consumed == entries || ghosts_checked) break;
      /* Stopped at an unpublished entry: normally the end of the harvest, unless it is a ghost. */
      ghosts_checked = true;
      if (!(v->suspect || (r.consumed == 0 && v->pending == 0))) break;
      uint32_t ghosts = find_ghosts(vm, v);
      if (ghosts == 0) break;
      mark_ghosts(vm, v, ghosts);
    }
  }
  return n;
}

/*
 * After a reset that returned fewer entries than we marked: either a signal cut it short (calling
 * again finishes it) or an overflowing vCPU overwrote one of our RESET marks with a new DIRTY entry,
 * which stops the kernel's walk. Re-mark such entries (their content is lost) so the walk can pass.
 */
static void repair_pending(struct vm *vm) {
  const uint32_t n = vm->ring_entries;
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    uint32_t behind = v->pending < n ? (uint32_t)v->pending : n;
    for (uint32_t k = 1; k <= behind; k++) {
      uint32_t *flags = &v->ring[(v->fetch - k) & (n - 1)].flags;
      uint32_t f = __atomic_load_n(flags, __ATOMIC_ACQUIRE);
      if ((f & KVM_DIRTY_GFN_F_DIRTY) && !(f & KVM_DIRTY_GFN_F_RESET)) {
        __atomic_store_n(flags, (uint32_t)KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
        vm_stat_add(vm, VM_STAT_RING_ENTRIES_LOST, 1);
      }
    }
  }
}

static int64_t ring_reset_once(struct vm *vm, struct vm_error *e) {
  int64_t total = 0;
  const uint64_t expected = vm->marked_since_reset;
  for (int attempt = 0; attempt < RESET_ATTEMPTS; attempt++) {
    /*
     * KVM_RESET_DIRTY_RINGS (VM fd): for every vCPU ring, walks the entries we marked RESET from
     * the kernel's reset index, re-write-protects their pages, frees the entries and returns how
     * many it reset. It stops early when this thread has a signal pending, so call it again while
     * fewer entries came back than we marked.
     */
    int r = ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return vm_fail_sys(e, "reset-dirty-rings", "ioctl(KVM_RESET_DIRTY_RINGS)", errno, "cannot reset the dirty rings");
    total += r;
    if ((uint64_t)total >= expected) break;
    if (r == 0) repair_pending(vm);
  }
  if ((uint64_t)total >= expected) {
    vm->marked_since_reset = 0;
    vm->ring_in_sync = true;
    for (uint32_t i = 0; i < vm->nvcpus; i++) vm->vcpus[i].pending = 0;
  } else {
    /* Some marks are still with the kernel; which ring holds them is unknown until a later reset
     * takes them all back, so overflow recovery waits until then. */
    vm->marked_since_reset -= (uint64_t)total;
    vm->ring_in_sync = false;
  }
  vm_stat_add(vm, VM_STAT_RESET_RETURNED_TOTAL, (uint64_t)total);
  return total;
}

/*
 * Proving a suspect ring at a pause. A ring drained full may have overflowed just before: its
 * ghosts (see above) only show once the kernel publishes its next entry, which may come after the
 * epoch that lost the overwritten entries was committed. So while the guest is paused, after a
 * complete reset, we make the kernel publish: writing MSR_KVM_WALL_CLOCK_NEW from the vCPU's own fd
 * makes KVM write the wall clock into guest memory (GUEST_PROBE_GPA, a page of the reserved area the
 * guest never touches) and log that page in this vCPU's ring at the kernel's dirty index (three
 * entries: kvm_write_wall_clock writes the page three times). Published at our fetch index: no
 * ghosts. Published further on: the slots in between are ghosts, counted lost, so the harvester
 * refuses to commit this epoch. The probe page's bytes are put back, and its entries are marked and
 * reset here, so no caller harvests them (the RESET statistics count them).
 *
 * Limits: ghosts are fewer than the ring's entries (an overflow runs at most one emulation batch, at
 * most 1024 stores, past a soft limit at least 64 below the end, and rings have >= 1024 entries), so
 * the first probe entry is found within one lap. The probe leaves the VM's wall-clock MSR pointing at
 * the probe page; the saved vCPU state (registers only) does not carry it.
 */
#define MSR_KVM_WALL_CLOCK_NEW 0x4b564d00U

static bool probe_entry(struct vm *vm, struct vcpu *v, uint32_t at) {
  struct kvm_dirty_gfn *g = &v->ring[at & (vm->ring_entries - 1)];
  uint32_t flags = entry_flags(vm, v, at);
  return (flags & KVM_DIRTY_GFN_F_DIRTY) && !(flags & KVM_DIRTY_GFN_F_RESET) &&
         __atomic_load_n(&g->slot, __ATOMIC_RELAXED) == 0 &&
         __atomic_load_n(&g->offset, __ATOMIC_RELAXED) == GUEST_PROBE_GPA / GUEST_PAGE_SIZE;
}

/* The probe does not work on this kernel: stop probing, and say so (VM_STAT_RING_PROBE_FAILED). */
static void probe_failed(struct vm *vm) {
  vm->probe_off = true;
  __atomic_store_n(&vm->stats[VM_STAT_RING_PROBE_FAILED], 1, __ATOMIC_RELAXED);
}

/* Probes one paused vCPU's ring; returns entries it marked RESET (ghosts + probe entries). */
static uint32_t probe_ring(struct vm *vm, struct vcpu *v) {
  const uint32_t n = vm->ring_entries;
  /* Entries the caller has not drained yet: they would read as ghosts. Prove the ring another time. */
  if (entry_flags(vm, v, v->fetch) & KVM_DIRTY_GFN_F_DIRTY) return 0;
  uint8_t saved[GUEST_PAGE_SIZE];
  uint8_t *page = vm->mem + GUEST_PROBE_GPA;
  memcpy(saved, page, sizeof saved);
  struct {
    struct kvm_msrs head;
    struct kvm_msr_entry entry;
  } msr;
  memset(&msr, 0, sizeof msr);
  msr.head.nmsrs = 1;
  msr.entry.index = MSR_KVM_WALL_CLOCK_NEW;
  msr.entry.data = GUEST_PROBE_GPA;
  int r;
  do r = ioctl(v->fd, KVM_SET_MSRS, &msr);
  while (r < 0 && errno == EINTR);
  memcpy(page, saved, sizeof saved);
  if (r != 1) {
    probe_failed(vm); /* the ring stays suspect: ghosts show at its next publish */
    return 0;
  }
  vm_stat_add(vm, VM_STAT_RING_PROBES, 1);
  /* Only the probe can have published since the reset (the guest is paused): find its first entry.
   * Any other published entry before it makes the answer unknown: leave the ring suspect. */
  uint32_t ghosts = 0;
  for (; ghosts < n && !probe_entry(vm, v, v->fetch + ghosts); ghosts++)
    if (entry_flags(vm, v, v->fetch + ghosts) & KVM_DIRTY_GFN_F_DIRTY) return 0;
  if (ghosts == n) {
    probe_failed(vm); /* the write was not logged: nothing to learn from it */
    return 0;
  }
  if (ghosts > 0) mark_ghosts(vm, v, ghosts);
  uint32_t mine = 0;
  while (mine < n - ghosts && probe_entry(vm, v, v->fetch + mine)) mine++;
  mark_reset(vm, v, mine);
  v->suspect = false; /* the kernel's dirty index is now known to be ours */
  return ghosts + mine;
}

static int64_t ring_reset(struct vm *vm, struct vm_error *e) {
  int64_t total = ring_reset_once(vm, e);
  if (total < 0 || !vm->ring_in_sync || vm->probe_off) return total;
  pthread_mutex_lock(&vm->lock);
  bool paused = vm->paused;
  pthread_mutex_unlock(&vm->lock);
  if (!paused) return total; /* a running ring can change under us; its next pause proves it */
  uint32_t marked = 0;
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    /* Quiescent: outside KVM_RUN (a failed pause can leave one inside, where the ioctl would block). */
    if (v->suspect && vm_vcpu_quiescent(vm, i)) marked += probe_ring(vm, v);
  }
  if (marked > 0 && ring_reset_once(vm, e) < 0) return -1;
  return total;
}

/* ---------------------------------------------------------------- bitmap mode */

static int bitmap_fetch(struct vm *vm, struct vm_error *e) {
  for (uint32_t i = 0; i < vm->nslots; i++) {
    struct vm_slot *s = &vm->slots[i];
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof log);
    log.slot = i;
    log.dirty_bitmap = s->bitmap;
    /*
     * KVM_GET_DIRTY_LOG (VM fd) copies slot i's dirty bitmap (one bit per page, 64-bit words) into
     * our buffer of ALIGN(pages, 64) bits. With manual protect it does not clear or re-protect
     * anything: that is KVM_CLEAR_DIRTY_LOG's job in reset().
     */
    int r;
    do r = ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log);
    while (r < 0 && errno == EINTR);
    if (r < 0) return vm_fail_sys(e, "get-dirty-log", "ioctl(KVM_GET_DIRTY_LOG)", errno, "cannot read the dirty log of slot %u", i);
    s->emit_lo = UINT64_MAX;
    s->emit_hi = 0;
  }
  vm->bm_fetched = true;
  vm->bm_slot = 0;
  vm->bm_bit = 0;
  return 0;
}

/* Emits set bits from the cursor (bm_slot, bm_bit) on; the cursor survives a full output. */
static uint32_t bitmap_emit(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap) {
  uint32_t n = 0;
  while (n < cap && vm->bm_slot < vm->nslots) {
    struct vm_slot *s = &vm->slots[vm->bm_slot];
    uint64_t w = vm->bm_bit >> 6;
    while (w < s->bitmap_words && n < cap) {
      uint64_t word = s->bitmap[w] & (~0ULL << (vm->bm_bit & 63));
      while (word != 0 && n < cap) {
        uint64_t b = (uint64_t)__builtin_ctzll(word);
        slots[n] = vm->bm_slot;
        offsets[n] = (uint32_t)(w * 64 + b);
        n++;
        if (w < s->emit_lo) s->emit_lo = w;
        s->emit_hi = w;
        word &= word - 1;
        vm->bm_bit = w * 64 + b + 1;
      }
      if (word != 0) break; /* output full in the middle of a word: bm_bit points past the last emitted bit */
      w++;
      vm->bm_bit = w * 64;
    }
    if (w >= s->bitmap_words) {
      vm->bm_slot++;
      vm->bm_bit = 0;
    }
  }
  vm->bm_emitted += n;
  return n;
}

static int64_t bitmap_drain(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap, struct vm_error *e) {
  if (!vm->bm_fetched && bitmap_fetch(vm, e) < 0) return -1;
  uint32_t n = bitmap_emit(vm, slots, offsets, cap);
  vm_stat_add(vm, VM_STAT_ENTRIES_HARVESTED, n);
  return n;
}

static int64_t bitmap_reset(struct vm *vm, struct vm_error *e) {
  if (!vm->bm_fetched) return 0;
  for (uint32_t i = 0; i < vm->nslots; i++) {
    struct vm_slot *s = &vm->slots[i];
    if (s->emit_lo > s->emit_hi) continue;
    /* Only what drain() emitted is cleared: bits past the cursor stay dirty in KVM and come back
     * with the next KVM_GET_DIRTY_LOG. Only the cursor's own word can be partly emitted. */
    if (i == vm->bm_slot && (vm->bm_bit >> 6) == s->emit_hi) {
      uint64_t keep = vm->bm_bit & 63;
      s->bitmap[s->emit_hi] &= keep == 0 ? 0 : (~0ULL >> (64 - keep));
    }
    uint64_t first = s->emit_lo * 64;
    uint64_t num = (s->emit_hi - s->emit_lo + 1) * 64;
    if (first + num > s->pages) num = s->pages - first;
    struct kvm_clear_dirty_log c;
    memset(&c, 0, sizeof c);
    c.slot = i;
    c.first_page = first;
    c.num_pages = (uint32_t)num;
    c.dirty_bitmap = &s->bitmap[s->emit_lo];
    /*
     * KVM_CLEAR_DIRTY_LOG (VM fd, manual protect): clears the given bits of slot i's dirty bitmap
     * and write-protects those pages again. first_page must be a multiple of 64 and num_pages too
     * unless the range ends at the slot's end; the bitmap pointer addresses bit first_page.
     */
    int r;
    do r = ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &c);
    while (r < 0 && errno == EINTR);
    if (r < 0)
      return vm_fail_sys(e, "clear-dirty-log", "ioctl(KVM_CLEAR_DIRTY_LOG)", errno, "cannot clear the dirty log of slot %u", i);
    s->emit_lo = UINT64_MAX;
    s->emit_hi = 0;
  }
  int64_t cleared = (int64_t)vm->bm_emitted;
  vm->bm_emitted = 0;
  vm->bm_fetched = false;
  vm_stat_add(vm, VM_STAT_BITMAP_PAGES_CLEARED, (uint64_t)cleared);
  return cleared;
}

/* ---------------------------------------------------------------- entry points */

int64_t vm_drain(struct vm *vm, uint32_t *slots, uint32_t *offsets, uint32_t cap, struct vm_error *e) {
  return vm->ring_mode ? ring_drain(vm, slots, offsets, cap) : bitmap_drain(vm, slots, offsets, cap, e);
}

int64_t vm_reset(struct vm *vm, struct vm_error *e) {
  int64_t n = vm->ring_mode ? ring_reset(vm, e) : bitmap_reset(vm, e);
  if (n >= 0) vm_wake_after_reset(vm);
  return n;
}
