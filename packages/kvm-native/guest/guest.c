/*
 * The test guest: a freestanding 64-bit long-mode program (docs/guest-program.md).
 *
 * Each vCPU asks the host for a page budget with a 32-bit IN from GUEST_BUDGET_PORT (the only VM
 * exit), writes that many pages of the workload region with a stamp, and counts its progress in its
 * status page. The simulator (services/harvester/src/sources/sim/workload.ts) implements the same
 * page sequence bit for bit: change both or neither.
 *
 * All per-vCPU state lives in registers, on the vCPU's own stack and in its status page, so a copy
 * of guest memory plus kvm_regs/kvm_sregs is a complete snapshot of the guest. There are no globals
 * (the loaded image has no .data/.bss), and no SSE (built with -mgeneral-regs-only; CR4.OSFXSR is
 * clear).
 */
#include "layout.h"

/* A 32-bit IN: the host answers with the number of pages to write now. */
static inline uint32_t budget_in(void) {
  uint32_t v;
  __asm__ volatile("inl %w1, %0" : "=a"(v) : "Nd"((uint16_t)GUEST_BUDGET_PORT) : "memory");
  return v;
}

static inline uint32_t xorshift32(uint32_t x) {
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return x;
}

struct workload {
  uint32_t kind;
  uint32_t region_pages;
  uint32_t hot_pages;
  uint32_t hot_percent;
  uint32_t rng;
  uint32_t cursor;
};

static uint32_t next_page(struct workload *w) {
  switch (w->kind) {
  case GUEST_WORKLOAD_SEQUENTIAL: {
    uint32_t i = w->cursor;
    w->cursor = i + 1 == w->region_pages ? 0 : i + 1;
    return i;
  }
  case GUEST_WORKLOAD_RANDOM:
    w->rng = xorshift32(w->rng);
    return w->rng % w->region_pages;
  case GUEST_WORKLOAD_HOTSET: {
    w->rng = xorshift32(w->rng);
    uint32_t r = w->rng;
    w->rng = xorshift32(w->rng);
    if (r % 100 < w->hot_percent) return w->rng % w->hot_pages;
    return w->rng % w->region_pages;
  }
  default:
    return 0;
  }
}

/*
 * Stamp: one 64-bit store, magic | vcpu << 16 | seq << 24, so a stamped page is one write (hosts that
 * log every store, such as kvm-pvm, log it once); with fill, words 4..1023 are xorshift32 outputs.
 */
static void write_stamp(volatile uint32_t *page, uint32_t vcpu, uint64_t seq, int fill) {
  *(volatile uint64_t *)page = GUEST_STAMP_MAGIC | (uint64_t)vcpu << 16 | seq << 24;
  if (!fill) return;
  uint32_t x = ((uint32_t)seq * 0x9E3779B1U) ^ (vcpu + 1);
  if (x == 0) x = 1;
  for (uint32_t k = 4; k < GUEST_PAGE_SIZE / 4; k++) {
    x = xorshift32(x);
    page[k] = x;
  }
}

/* Called by entry.S with RDI = vCPU index; never returns. */
__attribute__((noreturn)) void guest_main(uint64_t vcpu_index) {
  const volatile struct guest_control *ctl = (const volatile struct guest_control *)GUEST_CONTROL_GPA;
  uint32_t vcpu = (uint32_t)vcpu_index;

  /* A guest started without a valid control block (or a bad one) must not write anything: it
   * executes HLT, which the host reports as an unexpected exit. */
  if (ctl->magic != GUEST_CONTROL_MAGIC || ctl->version != GUEST_CONTROL_VERSION || vcpu >= GUEST_MAX_VCPUS ||
      ctl->vcpus == 0 || vcpu >= ctl->vcpus || ctl->region_pages == 0 ||
      (ctl->workload == GUEST_WORKLOAD_HOTSET && (ctl->hot_pages == 0 || ctl->hot_pages > ctl->region_pages))) {
    for (;;) __asm__ volatile("hlt");
  }

  volatile struct guest_status *st =
      (volatile struct guest_status *)(GUEST_STATUS_GPA + (uint64_t)vcpu * GUEST_STATUS_STRIDE);
  struct workload w = {
      .kind = ctl->workload,
      .region_pages = ctl->region_pages,
      .hot_pages = ctl->hot_pages,
      .hot_percent = ctl->hot_percent,
      .rng = ctl->seed ^ ((vcpu + 1) * 0x9E3779B9U),
      .cursor = vcpu * (ctl->region_pages / ctl->vcpus),
  };
  if (w.rng == 0) w.rng = 0x6B8B4567U;
  const int fill = ctl->fill_pages != 0;

  /* The counter lives in a register during a burst and is published after it: one status-page store
   * per burst instead of one per page. A snapshot taken mid-burst holds it in the vCPU's registers. */
  uint64_t written = st->pages_written;
  for (;;) {
    uint32_t budget = budget_in();
    if (w.kind == GUEST_WORKLOAD_IDLE) budget = 0;
    for (uint32_t n = 0; n < budget; n++) {
      uint32_t i = next_page(&w);
      write_stamp((volatile uint32_t *)(GUEST_REGION_GPA + (uint64_t)i * GUEST_PAGE_SIZE), vcpu, ++written, fill);
    }
    st->pages_written = written;
    st->loops = st->loops + 1;
  }
}
