/*
 * VM setup and teardown: /dev/kvm probing, the VM fd and its dirty-logging mode, memfd-backed guest
 * RAM and its memslots, vCPUs in 64-bit long mode, loading the test guest, guest-memory access and
 * vCPU register state.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "guest-blob.h"
#include "layout.h"
#include "vm-internal.h"

#define GIB (1ULL << 30)

/* x86 control-register and EFER bits used to enter long mode. */
#define CR0_PE (1ULL << 0)
#define CR0_MP (1ULL << 1)
#define CR0_ET (1ULL << 4)
#define CR0_NE (1ULL << 5)
#define CR0_WP (1ULL << 16)
#define CR0_PG (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

/* Page-table entry bits. A (and D on leaves) are preset so the CPU never writes the tables. */
#define PTE_P (1ULL << 0)
#define PTE_RW (1ULL << 1)
#define PTE_A (1ULL << 5)
#define PTE_D (1ULL << 6)
#define PTE_PS (1ULL << 7)

_Static_assert(sizeof(guest_blob) <= GUEST_CODE_MAX_BYTES, "guest code overlaps the stacks");

/* ---------------------------------------------------------------- errors */

static void vm_set_error(struct vm_error *e, enum vm_error_kind kind, const char *op, const char *syscall, int errnum,
                         const char *fmt, va_list ap) {
  e->kind = kind;
  e->op = op;
  e->syscall = syscall;
  e->err = errnum;
  int n = vsnprintf(e->message, sizeof e->message, fmt, ap);
  if (n < 0) n = 0;
  if (kind == VM_ERR_SYSCALL && errnum != 0 && (size_t)n < sizeof e->message) {
    char buf[128];
    /* GNU strerror_r: returns a pointer to the message, which may or may not be buf. */
    const char *desc = strerror_r(errnum, buf, sizeof buf);
    snprintf(e->message + n, sizeof e->message - (size_t)n, ": %s (%s)", desc, syscall);
  }
}

int vm_fail_sys(struct vm_error *e, const char *op, const char *syscall, int errnum, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vm_set_error(e, VM_ERR_SYSCALL, op, syscall, errnum, fmt, ap);
  va_end(ap);
  return -1;
}

int vm_fail(struct vm_error *e, enum vm_error_kind kind, const char *op, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vm_set_error(e, kind, op, "", 0, fmt, ap);
  va_end(ap);
  return -1;
}

uint64_t vm_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- small accessors */

size_t vm_vcpu_state_bytes(void) { return sizeof(struct kvm_regs) + sizeof(struct kvm_sregs); }
uint32_t vm_page_size(const struct vm *vm) { return vm->page_size; }
uint32_t vm_vcpu_count(const struct vm *vm) { return vm->nvcpus; }
uint32_t vm_slot_count(const struct vm *vm) { return vm->nslots; }
uint64_t vm_slot_pages(const struct vm *vm, uint32_t slot) { return slot < vm->nslots ? vm->slots[slot].pages : 0; }
bool vm_ring_mode(const struct vm *vm) { return vm->ring_mode; }
uint32_t vm_ring_entries(const struct vm *vm) { return vm->ring_entries; }

/* ---------------------------------------------------------------- probing */

/* KVM_CREATE_VM may fail with EINTR when a signal arrives while the kernel sets up the VM. */
static int create_vm_fd(int kvm_fd) {
  int fd;
  do {
    /* Machine type 0: the default x86 VM. Returns a new VM fd (O_CLOEXEC set by KVM). */
    fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

static int open_kvm(const char *dev_path, struct vm_error *e) {
  int fd = open(dev_path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return vm_fail_sys(e, "open-dev", "open", errno, "cannot open %s", dev_path);
  /* KVM_GET_API_VERSION: 12 on every kernel since 2.6.22; anything else is not a usable KVM. */
  int api = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) {
    int err = api < 0 ? errno : ENOTSUP;
    close(fd);
    if (api < 0) return vm_fail_sys(e, "check-api", "ioctl(KVM_GET_API_VERSION)", err, "cannot use %s", dev_path);
    return vm_fail_sys(e, "check-api", "ioctl(KVM_GET_API_VERSION)", err,
                       "cannot use %s: KVM API version %d, expected %d", dev_path, api, KVM_API_VERSION);
  }
  return fd;
}

/* KVM_CHECK_EXTENSION returns 0 for unknown capabilities; treat a failing call the same way. */
static int64_t check_ext(int fd, long cap) {
  int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

int vm_probe(const char *dev_path, struct vm_probe *p, struct vm_error *e) {
  memset(p, 0, sizeof *p);
  int kvm_fd = open_kvm(dev_path, e);
  if (kvm_fd < 0) return -1;
  p->api_version = KVM_API_VERSION;
  /* The dirty-ring capabilities are only reported on a VM fd, so probe a scratch VM. */
  int vm_fd = create_vm_fd(kvm_fd);
  if (vm_fd < 0) {
    int err = errno;
    close(kvm_fd);
    return vm_fail_sys(e, "create-vm", "ioctl(KVM_CREATE_VM)", err, "cannot create a scratch VM on %s", dev_path);
  }
  p->dirty_ring_max_bytes = check_ext(vm_fd, KVM_CAP_DIRTY_LOG_RING);
  p->dirty_ring_acq_rel_max_bytes = check_ext(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
  p->manual_protect = check_ext(vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
  p->recommended_vcpus = check_ext(vm_fd, KVM_CAP_NR_VCPUS);
  p->max_vcpus = check_ext(vm_fd, KVM_CAP_MAX_VCPUS);
  p->page_size = sysconf(_SC_PAGESIZE);
  close(vm_fd);
  close(kvm_fd);
  return 0;
}

/* ---------------------------------------------------------------- options */

int vm_validate_options(const struct vm_options *o, struct vm_error *e) {
  const char *op = "validate-options";
  if (o->dev_path == NULL || o->dev_path[0] == '\0')
    return vm_fail(e, VM_ERR_TYPE, op, "options.devPath must be a non-empty string");
  if (o->nslots == 0 || o->nslots > VM_MAX_SLOTS)
    return vm_fail(e, VM_ERR_RANGE, op, "options.slotBytes must have 1..%u entries, got %u", VM_MAX_SLOTS, o->nslots);
  uint64_t total = 0;
  for (uint32_t i = 0; i < o->nslots; i++) {
    uint64_t b = o->slot_bytes[i];
    if (b == 0 || b % GUEST_LARGE_PAGE_SIZE != 0)
      return vm_fail(e, VM_ERR_RANGE, op, "options.slotBytes[%u] must be a positive multiple of 2 MiB, got %llu", i,
                     (unsigned long long)b);
    if (b > GUEST_MAX_GIB * GIB)
      return vm_fail(e, VM_ERR_RANGE, op, "options.slotBytes[%u] is above the guest's %llu GiB limit", i,
                     (unsigned long long)GUEST_MAX_GIB);
    total += b;
  }
  if (o->slot_bytes[0] < GUEST_MIN_SLOT0_BYTES)
    return vm_fail(e, VM_ERR_RANGE, op, "options.slotBytes[0] must be at least 8 MiB (the guest's reserved area), got %llu",
                   (unsigned long long)o->slot_bytes[0]);
  if (total > GUEST_MAX_GIB * GIB)
    return vm_fail(e, VM_ERR_RANGE, op,
                   "options.slotBytes must add up to at most %llu GiB (the guest's page tables map no more), got %llu bytes",
                   (unsigned long long)GUEST_MAX_GIB, (unsigned long long)total);
  if (o->vcpus == 0 || o->vcpus > VM_MAX_VCPUS)
    return vm_fail(e, VM_ERR_RANGE, op, "options.vcpus must be 1..%u, got %u", VM_MAX_VCPUS, o->vcpus);
  if (o->ring_bytes != 0 && ((o->ring_bytes & (o->ring_bytes - 1)) != 0 || o->ring_bytes > UINT32_MAX))
    return vm_fail(e, VM_ERR_RANGE, op, "options.ringBytes must be 0 (bitmap mode) or a power of two, got %llu",
                   (unsigned long long)o->ring_bytes);
  if (o->workload > GUEST_WORKLOAD_HOTSET)
    return vm_fail(e, VM_ERR_RANGE, op, "options.workload must be 0..3 (idle, sequential, random, hotset), got %u",
                   o->workload);
  if (!(o->rate_pages_per_sec >= 0 && o->rate_pages_per_sec <= 1e9))
    return vm_fail(e, VM_ERR_RANGE, op, "options.ratePagesPerSec must be 0..1e9 (0 = unpaced)");
  uint64_t region_pages = guest_region_pages(total / GUEST_PAGE_SIZE);
  if (o->workload == GUEST_WORKLOAD_HOTSET && (o->hot_pages == 0 || o->hot_pages > region_pages))
    return vm_fail(e, VM_ERR_RANGE, op, "options.hotPages must be 1..%llu (the region's pages) for the hotset workload, got %u",
                   (unsigned long long)region_pages, o->hot_pages);
  if (o->hot_percent > 100)
    return vm_fail(e, VM_ERR_RANGE, op, "options.hotPercent must be 0..100, got %u", o->hot_percent);
  if (o->tick_us < VM_MIN_TICK_US || o->tick_us > VM_MAX_TICK_US)
    return vm_fail(e, VM_ERR_RANGE, op, "options.tickUs must be %u..%u, got %u", VM_MIN_TICK_US, VM_MAX_TICK_US,
                   o->tick_us);
  return 0;
}

/* ---------------------------------------------------------------- guest loading */

/* Identity-maps [0, mem_bytes) with 2 MiB pages: PML4 -> PDPT -> one PD per GiB. */
static void write_page_tables(struct vm *vm) {
  uint64_t *pml4 = (uint64_t *)(vm->mem + GUEST_PML4_GPA);
  uint64_t *pdpt = (uint64_t *)(vm->mem + GUEST_PDPT_GPA);
  uint64_t gibs = (vm->mem_bytes + GIB - 1) / GIB;
  pml4[0] = GUEST_PDPT_GPA | PTE_P | PTE_RW | PTE_A;
  for (uint64_t g = 0; g < gibs; g++) {
    uint64_t pd_gpa = GUEST_PD_GPA + g * GUEST_PAGE_SIZE;
    uint64_t *pd = (uint64_t *)(vm->mem + pd_gpa);
    pdpt[g] = pd_gpa | PTE_P | PTE_RW | PTE_A;
    for (uint64_t j = 0; j < 512; j++) {
      uint64_t gpa = g * GIB + j * GUEST_LARGE_PAGE_SIZE;
      if (gpa >= vm->mem_bytes) break;
      pd[j] = gpa | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS;
    }
  }
}

static void load_guest(struct vm *vm, const struct vm_options *o) {
  write_page_tables(vm);
  struct guest_control *ctl = (struct guest_control *)(vm->mem + GUEST_CONTROL_GPA);
  memset(ctl, 0, sizeof *ctl);
  ctl->magic = GUEST_CONTROL_MAGIC;
  ctl->version = GUEST_CONTROL_VERSION;
  ctl->workload = o->workload;
  ctl->vcpus = o->vcpus;
  ctl->region_pages = (uint32_t)guest_region_pages(vm->mem_bytes / GUEST_PAGE_SIZE);
  ctl->seed = o->seed;
  ctl->hot_pages = o->hot_pages;
  ctl->hot_percent = o->hot_percent;
  ctl->fill_pages = o->fill_pages ? 1 : 0;
  memcpy(vm->mem + GUEST_CODE_GPA, guest_blob, sizeof guest_blob);
}

/* 64-bit code segment and flat data segments. No GDT is needed: the guest never reloads a segment. */
static void long_mode_sregs(struct kvm_sregs *s) {
  struct kvm_segment code = {
      .base = 0, .limit = 0xffffffff, .selector = 0x8, .type = 11 /* execute/read, accessed */,
      .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
  };
  struct kvm_segment data = code;
  data.selector = 0x10;
  data.type = 3; /* read/write, accessed */
  data.l = 0;
  data.db = 1;
  s->cs = code;
  s->ds = s->es = s->fs = s->gs = s->ss = data;
  s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
  s->cr3 = GUEST_PML4_GPA;
  s->cr4 = CR4_PAE;
  s->efer = EFER_LME | EFER_LMA;
}

static struct kvm_cpuid2 *supported_cpuid(int kvm_fd, struct vm_error *e) {
  for (uint32_t nent = 64; nent <= 4096; nent *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + nent * sizeof(struct kvm_cpuid_entry2));
    if (c == NULL) {
      vm_fail_sys(e, "get-supported-cpuid", "calloc", ENOMEM, "cannot allocate the CPUID table");
      return NULL;
    }
    c->nent = nent;
    /* KVM_GET_SUPPORTED_CPUID: fails with E2BIG when nent is too small; then retry larger. */
    if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) return c;
    int err = errno;
    free(c);
    if (err != E2BIG) {
      vm_fail_sys(e, "get-supported-cpuid", "ioctl(KVM_GET_SUPPORTED_CPUID)", err, "cannot read the supported CPUID");
      return NULL;
    }
  }
  vm_fail_sys(e, "get-supported-cpuid", "ioctl(KVM_GET_SUPPORTED_CPUID)", E2BIG, "cannot read the supported CPUID");
  return NULL;
}

/* ---------------------------------------------------------------- creation */

static int enable_cap(int vm_fd, uint32_t cap, uint64_t arg0) {
  struct kvm_enable_cap c;
  memset(&c, 0, sizeof c);
  c.cap = cap;
  c.args[0] = arg0;
  return ioctl(vm_fd, KVM_ENABLE_CAP, &c);
}

static int setup_dirty_logging(struct vm *vm, const struct vm_options *o, struct vm_error *e) {
  if (o->ring_bytes == 0) {
    /*
     * Bitmap mode with manual protect: KVM_GET_DIRTY_LOG then only reads the bitmap, and
     * KVM_CLEAR_DIRTY_LOG re-protects what we harvested. Not KVM_DIRTY_LOG_INITIALLY_SET: every
     * page starts clean and write-protected, so the first harvest reports only pages the guest wrote.
     */
    int64_t caps = check_ext(vm->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if ((caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) == 0)
      return vm_fail_sys(e, "enable-manual-protect", "ioctl(KVM_CHECK_EXTENSION)", ENOTSUP,
                         "cannot enable manual dirty-log protection: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is absent");
    if (enable_cap(vm->vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) < 0)
      return vm_fail_sys(e, "enable-manual-protect", "ioctl(KVM_ENABLE_CAP)", errno,
                         "cannot enable manual dirty-log protection");
    return 0;
  }
  /*
   * The ring capability must be enabled before any vCPU exists (KVM allocates each vCPU's ring at
   * KVM_CREATE_VCPU). ACQ_REL is the same ring with an explicit contract that userspace publishes
   * RESET with store-release and reads DIRTY with load-acquire, which is what we do either way.
   * KVM checks the size: a power of two, at least a page and the reserved entries, at most 1 MiB
   * on current kernels (EINVAL / E2BIG otherwise).
   */
  uint32_t cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
  if (check_ext(vm->vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0) {
    vm->acq_rel = true;
  } else if (check_ext(vm->vm_fd, KVM_CAP_DIRTY_LOG_RING) > 0) {
    cap = KVM_CAP_DIRTY_LOG_RING;
  } else {
    return vm_fail_sys(e, "enable-dirty-ring", "ioctl(KVM_CHECK_EXTENSION)", ENOTSUP,
                       "cannot enable the dirty ring: KVM_CAP_DIRTY_LOG_RING is absent");
  }
  if (enable_cap(vm->vm_fd, cap, o->ring_bytes) < 0)
    return vm_fail_sys(e, "enable-dirty-ring", "ioctl(KVM_ENABLE_CAP)", errno,
                       "cannot enable a dirty ring of %llu bytes per vCPU", (unsigned long long)o->ring_bytes);
  vm->ring_mode = true;
  vm->ring_bytes = o->ring_bytes;
  vm->ring_entries = (uint32_t)(o->ring_bytes / sizeof(struct kvm_dirty_gfn));
  return 0;
}

static int setup_memory(struct vm *vm, const struct vm_options *o, struct vm_error *e) {
  vm->nslots = o->nslots;
  vm->slots = calloc(o->nslots, sizeof *vm->slots);
  vm->slot_pages = calloc(o->nslots, sizeof *vm->slot_pages);
  if (vm->slots == NULL || vm->slot_pages == NULL)
    return vm_fail_sys(e, "create-vm", "calloc", ENOMEM, "cannot allocate the memslot table");
  uint64_t total = 0;
  for (uint32_t i = 0; i < o->nslots; i++) total += o->slot_bytes[i];
  vm->mem_bytes = total;

  int64_t max_slots = check_ext(vm->kvm_fd, KVM_CAP_NR_MEMSLOTS);
  if (max_slots > 0 && o->nslots > max_slots)
    return vm_fail(e, VM_ERR_RANGE, "set-memory-region", "options.slotBytes has %u slots, this KVM allows %lld",
                   o->nslots, (long long)max_slots);

  /*
   * One memfd for all slots: anonymous shared memory whose pages are only allocated when touched
   * (memfd is created with VM_NORESERVE, so an 8 GiB guest costs nothing until written), and which
   * readRanges() can pread() without populating holes.
   */
  vm->mem_fd = memfd_create("ckpt-guest-ram", MFD_CLOEXEC);
  if (vm->mem_fd < 0) return vm_fail_sys(e, "create-memfd", "memfd_create", errno, "cannot create guest memory");
  if (ftruncate(vm->mem_fd, (off_t)total) < 0)
    return vm_fail_sys(e, "create-memfd", "ftruncate", errno, "cannot size guest memory to %llu bytes",
                       (unsigned long long)total);
  /* MAP_SHARED so KVM and we see the same pages; MAP_NORESERVE: no swap reservation for the size. */
  void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, vm->mem_fd, 0);
  if (mem == MAP_FAILED) return vm_fail_sys(e, "map-memory", "mmap", errno, "cannot map guest memory");
  vm->mem = mem;

  uint64_t gpa = 0;
  for (uint32_t i = 0; i < o->nslots; i++) {
    struct vm_slot *s = &vm->slots[i];
    s->gpa = gpa;
    s->bytes = o->slot_bytes[i];
    s->pages = s->bytes / vm->page_size;
    s->host = vm->mem + gpa;
    vm->slot_pages[i] = s->pages;
    /*
     * KVM_SET_USER_MEMORY_REGION: slot i (address space 0) maps [gpa, gpa+bytes) onto our mapping.
     * KVM_MEM_LOG_DIRTY_PAGES write-protects the slot so each first write after an arm is logged
     * (to the vCPU's ring, or to the slot's bitmap in bitmap mode). Both must be 2 MiB aligned here.
     */
    struct kvm_userspace_memory_region r = {
        .slot = i,
        .flags = KVM_MEM_LOG_DIRTY_PAGES,
        .guest_phys_addr = gpa,
        .memory_size = s->bytes,
        .userspace_addr = (uint64_t)(uintptr_t)s->host,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
      return vm_fail_sys(e, "set-memory-region", "ioctl(KVM_SET_USER_MEMORY_REGION)", errno,
                         "cannot add memslot %u (%llu bytes at GPA 0x%llx)", i, (unsigned long long)s->bytes,
                         (unsigned long long)gpa);
    if (!vm->ring_mode) {
      s->bitmap_words = (s->pages + 63) / 64;
      s->bitmap = calloc(s->bitmap_words, sizeof(uint64_t));
      if (s->bitmap == NULL) return vm_fail_sys(e, "create-vm", "calloc", ENOMEM, "cannot allocate dirty bitmaps");
    }
    s->emit_lo = UINT64_MAX;
    s->emit_hi = 0;
    gpa += s->bytes;
  }
  return 0;
}

static int setup_vcpu(struct vm *vm, const struct vm_options *o, uint32_t i, struct vm_error *e) {
  struct vcpu *v = &vm->vcpus[i];
  v->vm = vm;
  v->index = i;
  v->allowance = o->max_writes_per_vcpu == 0 ? VM_ALLOWANCE_UNLIMITED : o->max_writes_per_vcpu;

  /* KVM_CREATE_VCPU: vCPU id i (ids are dense from 0, below KVM_CAP_MAX_VCPU_ID). */
  v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
  if (v->fd < 0) return vm_fail_sys(e, "create-vcpu", "ioctl(KVM_CREATE_VCPU)", errno, "cannot create vCPU %u", i);

  /* The kvm_run page(s) at offset 0 of the vCPU fd: exit reasons, I/O data, immediate_exit. */
  void *run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
  if (run == MAP_FAILED) return vm_fail_sys(e, "map-vcpu-run", "mmap", errno, "cannot map kvm_run of vCPU %u", i);
  v->run = run;

  if (vm->ring_mode) {
    /*
     * The dirty ring lives at page KVM_DIRTY_LOG_PAGE_OFFSET (64 on x86) of the vCPU fd, ring_bytes
     * long. Read-write: we publish RESET into each harvested entry's flags. MAP_POPULATE maps every
     * ring page now: otherwise the first lap of a ring takes a page fault every 256 entries, inside
     * the pause (3-5 us each on this host; the plain C harvest of 1000 pages went from 55 to 26 ns
     * per page with it).
     */
    void *ring = mmap(NULL, vm->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, v->fd,
                      (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * vm->page_size);
    if (ring == MAP_FAILED)
      return vm_fail_sys(e, "map-dirty-ring", "mmap", errno, "cannot map the dirty ring of vCPU %u", i);
    v->ring = ring;
  }

  /* KVM_SET_CPUID2 before any KVM_RUN and before SET_SREGS: KVM checks EFER.LME against CPUID.LM. */
  if (ioctl(v->fd, KVM_SET_CPUID2, vm->cpuid) < 0)
    return vm_fail_sys(e, "set-cpuid", "ioctl(KVM_SET_CPUID2)", errno, "cannot set the CPUID of vCPU %u", i);

  if (!o->load_guest) return 0; /* restore: the caller sets the state with setVcpuState() */

  /* Start from the reset state so TR and LDTR keep the valid (busy TSS / unusable) values KVM gave them. */
  struct kvm_sregs sregs;
  if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
    return vm_fail_sys(e, "get-sregs", "ioctl(KVM_GET_SREGS)", errno, "cannot read the special registers of vCPU %u", i);
  long_mode_sregs(&sregs);
  if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
    return vm_fail_sys(e, "set-sregs", "ioctl(KVM_SET_SREGS)", errno, "cannot put vCPU %u in long mode", i);

  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = GUEST_CODE_GPA;
  regs.rsp = GUEST_STACKS_GPA + (uint64_t)(i + 1) * GUEST_STACK_BYTES;
  regs.rdi = i;
  regs.rflags = 0x2; /* bit 1 is reserved and must be set; interrupts off */
  if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
    return vm_fail_sys(e, "set-regs", "ioctl(KVM_SET_REGS)", errno, "cannot set the registers of vCPU %u", i);
  v->has_state = true;
  return 0;
}

static int init_sync(struct vm *vm, struct vm_error *e) {
  pthread_condattr_t ca;
  int r = pthread_condattr_init(&ca);
  if (r == 0) r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (r == 0) r = pthread_cond_init(&vm->wake, &ca);
  if (r == 0) {
    r = pthread_cond_init(&vm->parked, &ca);
    if (r != 0) pthread_cond_destroy(&vm->wake);
  }
  if (r == 0) {
    r = pthread_mutex_init(&vm->lock, NULL);
    if (r != 0) {
      pthread_cond_destroy(&vm->wake);
      pthread_cond_destroy(&vm->parked);
    }
  }
  pthread_condattr_destroy(&ca);
  if (r != 0) return vm_fail_sys(e, "create-vm", "pthread_cond_init", r, "cannot initialise VM locks");
  vm->sync_init = true;
  return 0;
}

int vm_create(const struct vm_options *o, struct vm **out, struct vm_error *e) {
  *out = NULL;
  if (vm_validate_options(o, e) < 0) return -1;
  long ps = sysconf(_SC_PAGESIZE);
  if (ps != (long)GUEST_PAGE_SIZE)
    return vm_fail(e, VM_ERR_STATE, "create-vm", "cannot create a VM: the host page size is %ld, the guest needs 4096", ps);

  struct vm *vm = calloc(1, sizeof *vm);
  if (vm == NULL) return vm_fail_sys(e, "create-vm", "calloc", ENOMEM, "cannot allocate the VM");
  vm->kvm_fd = vm->vm_fd = vm->mem_fd = -1;
  vm->page_size = (uint32_t)ps;
  vm->workload = o->workload;
  vm->rate = o->rate_pages_per_sec;
  /* A paced vCPU gets at most ~10 ms worth of pages per burst, so a backlog never turns into a storm. */
  vm->burst_cap = vm->rate > 0 ? (vm->rate / 100 < 1 ? 1 : vm->rate / 100) : VM_UNPACED_BURST;
  if (vm->burst_cap > VM_UNPACED_BURST * 16) vm->burst_cap = VM_UNPACED_BURST * 16;
  vm->tick_us = o->tick_us;
  vm->stats[VM_STAT_MODE] = o->ring_bytes != 0;
  vm->ring_in_sync = true;
  vm->probe_off = !o->probe_full_rings;

  if (init_sync(vm, e) < 0) goto fail;
  vm->kvm_fd = open_kvm(o->dev_path, e);
  if (vm->kvm_fd < 0) goto fail;
  if (o->vcpus > 1) {
    int64_t max = check_ext(vm->kvm_fd, KVM_CAP_MAX_VCPUS);
    if (max > 0 && o->vcpus > max) {
      vm_fail(e, VM_ERR_RANGE, "create-vcpu", "options.vcpus is %u, this KVM allows %lld", o->vcpus, (long long)max);
      goto fail;
    }
  }
  vm->vm_fd = create_vm_fd(vm->kvm_fd);
  if (vm->vm_fd < 0) {
    vm_fail_sys(e, "create-vm", "ioctl(KVM_CREATE_VM)", errno, "cannot create a VM on %s", o->dev_path);
    goto fail;
  }
  /* Right after KVM_CREATE_VM: the ring must be enabled before memslots and vCPUs exist. */
  if (setup_dirty_logging(vm, o, e) < 0) goto fail;
  vm->stats[VM_STAT_ACQ_REL] = vm->acq_rel;
  vm->stats[VM_STAT_RING_ENTRIES] = vm->ring_entries;
  if (setup_memory(vm, o, e) < 0) goto fail;
  if (o->load_guest) load_guest(vm, o);

  /* KVM_GET_VCPU_MMAP_SIZE: size of the per-vCPU kvm_run mapping (kvm_run + PIO data page(s)). */
  int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < (int)sizeof(struct kvm_run)) {
    vm_fail_sys(e, "create-vcpu", "ioctl(KVM_GET_VCPU_MMAP_SIZE)", run_size < 0 ? errno : EINVAL,
                "cannot size the kvm_run mapping");
    goto fail;
  }
  vm->run_size = (size_t)run_size;
  vm->cpuid = supported_cpuid(vm->kvm_fd, e);
  if (vm->cpuid == NULL) goto fail;

  vm->vcpus = calloc(o->vcpus, sizeof *vm->vcpus);
  if (vm->vcpus == NULL) {
    vm_fail_sys(e, "create-vcpu", "calloc", ENOMEM, "cannot allocate vCPUs");
    goto fail;
  }
  for (uint32_t i = 0; i < o->vcpus; i++) vm->vcpus[i].fd = -1;
  vm->nvcpus = o->vcpus;
  for (uint32_t i = 0; i < o->vcpus; i++)
    if (setup_vcpu(vm, o, i, e) < 0) goto fail;

  *out = vm;
  return 0;
fail:
  vm_destroy(vm);
  return -1;
}

void vm_destroy(struct vm *vm) {
  if (vm == NULL) return;
  if (vm->sync_init) vm_stop_threads(vm);
  for (uint32_t i = 0; vm->vcpus != NULL && i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    if (v->ring != NULL) munmap(v->ring, vm->ring_bytes);
    if (v->run != NULL) munmap(v->run, vm->run_size);
    if (v->fd >= 0) close(v->fd);
  }
  free(vm->vcpus);
  free(vm->cpuid);
  /* Closing the VM fd drops KVM's memslots before the mapping behind them goes away. */
  if (vm->vm_fd >= 0) close(vm->vm_fd);
  if (vm->kvm_fd >= 0) close(vm->kvm_fd);
  if (vm->mem != NULL) munmap(vm->mem, vm->mem_bytes);
  if (vm->mem_fd >= 0) close(vm->mem_fd);
  for (uint32_t i = 0; vm->slots != NULL && i < vm->nslots; i++) free(vm->slots[i].bitmap);
  free(vm->slots);
  free(vm->slot_pages);
  if (vm->sync_init) {
    pthread_mutex_destroy(&vm->lock);
    pthread_cond_destroy(&vm->wake);
    pthread_cond_destroy(&vm->parked);
  }
  free(vm);
}

/* ---------------------------------------------------------------- guest memory */

static int check_page(const struct vm *vm, const char *op, const char *what, uint32_t i, uint32_t slot, uint64_t page,
                      uint64_t count, struct vm_error *e) {
  if (slot >= vm->nslots)
    return vm_fail(e, VM_ERR_RANGE, op, "%s[%u]: slot %u out of range 0..%u", what, i, slot, vm->nslots - 1);
  if (page > vm->slots[slot].pages || count > vm->slots[slot].pages - page)
    return vm_fail(e, VM_ERR_RANGE, op, "%s[%u]: pages %llu..%llu are outside slot %u (%llu pages)", what, i,
                   (unsigned long long)page, (unsigned long long)(page + count), slot,
                   (unsigned long long)vm->slots[slot].pages);
  return 0;
}

int vm_read_pages(struct vm *vm, const uint32_t *slots, const uint32_t *offsets, uint32_t count, uint8_t *out,
                  size_t out_len, struct vm_error *e) {
  const size_t ps = vm->page_size;
  if ((uint64_t)count * ps > out_len)
    return vm_fail(e, VM_ERR_RANGE, "read-pages", "out holds %zu bytes, %u pages need %llu", out_len, count,
                   (unsigned long long)count * ps);
  /* Validate everything first so a bad entry never leaves `out` half written. */
  for (uint32_t i = 0; i < count; i++)
    if (check_page(vm, "read-pages", "slots/offsets", i, slots[i], offsets[i], 1, e) < 0) return -1;
  /* Plain copies from our mapping: harvested pages were written by the guest, so they are resident. */
  for (uint32_t i = 0; i < count; i++)
    memcpy(out + (size_t)i * ps, vm->slots[slots[i]].host + (size_t)offsets[i] * ps, ps);
  return 0;
}

int64_t vm_read_ranges(struct vm *vm, const uint32_t *slots, const uint32_t *firsts, const uint32_t *counts,
                       uint32_t n, uint8_t *out, size_t out_len, bool resident, struct vm_error *e) {
  const uint64_t ps = vm->page_size;
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (check_page(vm, "read-ranges", "ranges", i, slots[i], firsts[i], counts[i], e) < 0) return -1;
    total += (uint64_t)counts[i] * ps;
  }
  if (total > out_len)
    return vm_fail(e, VM_ERR_RANGE, "read-ranges", "out holds %zu bytes, the ranges need %llu", out_len,
                   (unsigned long long)total);
  uint64_t off = 0;
  if (resident) {
    /* Harvested dirty pages were written by the guest: copying from the mapping costs no syscall per
     * range (a 1000-page random epoch is 1000 ranges) and populates nothing new. */
    for (uint32_t i = 0; i < n; i++) {
      uint64_t len = (uint64_t)counts[i] * ps;
      memcpy(out + off, vm->slots[slots[i]].host + (uint64_t)firsts[i] * ps, len);
      off += len;
    }
    return (int64_t)off;
  }
  /*
   * pread() from the memfd rather than memcpy() from the mapping: reading a never-written page
   * through the mapping would allocate it, while pread() returns zeros for holes and allocates
   * nothing, so a full-image read of a big sparse guest does not populate its RAM.
   */
  for (uint32_t i = 0; i < n; i++) {
    uint64_t len = (uint64_t)counts[i] * ps;
    uint64_t src = vm->slots[slots[i]].gpa + (uint64_t)firsts[i] * ps;
    uint64_t done = 0;
    while (done < len) {
      ssize_t r = pread(vm->mem_fd, out + off + done, len - done, (off_t)(src + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        return vm_fail_sys(e, "read-ranges", "pread", r < 0 ? errno : EIO, "cannot read guest memory at GPA 0x%llx",
                           (unsigned long long)(src + done));
      done += (uint64_t)r;
    }
    off += len;
  }
  return (int64_t)off;
}

static bool page_is_zero(const uint8_t *p, size_t len) {
  uint64_t acc = 0;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, sizeof w); /* src comes from JS and may be unaligned */
    acc |= w;
  }
  return acc == 0;
}

/* Writes pages [from, to) of src: a copy, or a hole punch for a run of zero pages. */
static int write_run(struct vm *vm, uint8_t *dst, uint64_t file_off, const uint8_t *src, size_t from, size_t to,
                     bool zero, struct vm_error *e) {
  if (!zero) {
    memcpy(dst + from, src + from, to - from);
    return 0;
  }
  if (fallocate(vm->mem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(file_off + from), (off_t)(to - from)) == 0)
    return 0;
  if (errno != EOPNOTSUPP) return vm_fail_sys(e, "write-range", "fallocate", errno, "cannot zero guest pages");
  memset(dst + from, 0, to - from);
  return 0;
}

int vm_write_range(struct vm *vm, uint32_t slot, uint64_t first_page, const uint8_t *src, size_t len,
                   struct vm_error *e) {
  const size_t ps = vm->page_size;
  if (len % ps != 0)
    return vm_fail(e, VM_ERR_RANGE, "write-range", "src must be whole pages (a multiple of %zu bytes), got %zu", ps, len);
  if (check_page(vm, "write-range", "slot/firstPage", 0, slot, first_page, len / ps, e) < 0) return -1;
  uint8_t *dst = vm->slots[slot].host + first_page * ps;
  uint64_t file_off = vm->slots[slot].gpa + first_page * ps;
  /*
   * Copy non-zero pages; punch holes for runs of zero pages instead of writing them, so restoring
   * a sparse image leaves the untouched part of guest RAM unallocated (a hole reads as zeros).
   * writeRange is for restore, while the VM does not run, so nothing races with the hole punch.
   */
  size_t run_start = 0;
  bool run_zero = len > 0 && page_is_zero(src, ps);
  for (size_t i = ps; i < len; i += ps) {
    bool zero = page_is_zero(src + i, ps);
    if (zero == run_zero) continue;
    if (write_run(vm, dst, file_off, src, run_start, i, run_zero, e) < 0) return -1;
    run_start = i;
    run_zero = zero;
  }
  if (len > 0 && write_run(vm, dst, file_off, src, run_start, len, run_zero, e) < 0) return -1;
  return 0;
}

void vm_guest_counters(struct vm *vm, double *out) {
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    const uint64_t *st = (const uint64_t *)(vm->mem + GUEST_STATUS_GPA + (uint64_t)i * GUEST_STATUS_STRIDE);
    /* The guest updates these aligned words while we read them: atomic 8-byte loads, no tearing. */
    out[2 * i] = (double)__atomic_load_n(&st[0], __ATOMIC_RELAXED);
    out[2 * i + 1] = (double)__atomic_load_n(&st[1], __ATOMIC_RELAXED);
  }
}

/* ---------------------------------------------------------------- vCPU state */

static int check_state_access(struct vm *vm, const char *op, uint32_t index, struct vm_error *e) {
  if (index >= vm->nvcpus)
    return vm_fail(e, VM_ERR_RANGE, op, "index %u out of range 0..%u", index, vm->nvcpus - 1);
  if (!vm_vcpu_quiescent(vm, index))
    return vm_fail(e, VM_ERR_STATE, op, "cannot access the state of vCPU %u: it is running; pause() the VM first", index);
  return 0;
}

/*
 * A vCPU paused right after an IN exit still has the IN "pending": RIP points at the IN and RAX has
 * not been written yet (KVM completes the instruction on the next KVM_RUN). The state captured here
 * is that consistent pre-IN state; a guest restored from it simply executes the IN again and asks
 * its new host for a budget, which is exactly what the guest program expects.
 */
int vm_get_vcpu_state(struct vm *vm, uint32_t index, uint8_t *out, size_t out_len, struct vm_error *e) {
  if (check_state_access(vm, "get-vcpu-state", index, e) < 0) return -1;
  if (out_len < vm_vcpu_state_bytes())
    return vm_fail(e, VM_ERR_RANGE, "get-vcpu-state", "out holds %zu bytes, vcpuStateBytes is %zu", out_len,
                   vm_vcpu_state_bytes());
  struct kvm_regs regs;
  struct kvm_sregs sregs;
  int fd = vm->vcpus[index].fd;
  /* KVM_GET_REGS / KVM_GET_SREGS: safe from this thread because the vCPU is outside KVM_RUN. */
  if (ioctl(fd, KVM_GET_REGS, &regs) < 0)
    return vm_fail_sys(e, "get-vcpu-state", "ioctl(KVM_GET_REGS)", errno, "cannot read the registers of vCPU %u", index);
  if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0)
    return vm_fail_sys(e, "get-vcpu-state", "ioctl(KVM_GET_SREGS)", errno,
                       "cannot read the special registers of vCPU %u", index);
  memcpy(out, &regs, sizeof regs);
  memcpy(out + sizeof regs, &sregs, sizeof sregs);
  return (int)vm_vcpu_state_bytes();
}

/*
 * A vCPU that has run may have an IN pending (see above). Its completion would be applied on the
 * next KVM_RUN, on top of the registers we are about to set (writing EAX, stepping RIP). KVM_RUN
 * with immediate_exit set completes pending I/O and returns -EINTR without running any guest
 * instruction (Documentation/virt/kvm/api.rst, "kvm_run"), so do that first.
 */
static int complete_pending_io(struct vm *vm, struct vcpu *v, struct vm_error *e) {
  (void)vm;
  __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELEASE);
  int r = ioctl(v->fd, KVM_RUN, 0);
  if (r < 0 && errno != EINTR)
    return vm_fail_sys(e, "set-vcpu-state", "ioctl(KVM_RUN)", errno, "cannot complete the pending I/O of vCPU %u",
                       v->index);
  return 0;
}

int vm_set_vcpu_state(struct vm *vm, uint32_t index, const uint8_t *src, size_t len, struct vm_error *e) {
  if (check_state_access(vm, "set-vcpu-state", index, e) < 0) return -1;
  if (len != vm_vcpu_state_bytes())
    return vm_fail(e, VM_ERR_RANGE, "set-vcpu-state", "src must be vcpuStateBytes (%zu) bytes, got %zu",
                   vm_vcpu_state_bytes(), len);
  struct vcpu *v = &vm->vcpus[index];
  struct kvm_regs regs;
  struct kvm_sregs sregs;
  memcpy(&regs, src, sizeof regs);
  memcpy(&sregs, src + sizeof regs, sizeof sregs);
  /* `ran` is only written by the vCPU thread under vm->lock, and that thread is parked now. */
  pthread_mutex_lock(&vm->lock);
  bool ran = v->ran;
  pthread_mutex_unlock(&vm->lock);
  if (ran && complete_pending_io(vm, v, e) < 0) return -1;
  /* SREGS first: KVM validates CR0/CR4/EFER against the CPUID set at creation (EINVAL if bad). */
  if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
    return vm_fail_sys(e, "set-vcpu-state", "ioctl(KVM_SET_SREGS)", errno,
                       "cannot set the special registers of vCPU %u", index);
  if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
    return vm_fail_sys(e, "set-vcpu-state", "ioctl(KVM_SET_REGS)", errno, "cannot set the registers of vCPU %u", index);
  v->has_state = true;
  return 0;
}
