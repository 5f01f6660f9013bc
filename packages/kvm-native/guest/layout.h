/*
 * The test guest's fixed guest-physical layout (docs/guest-program.md), shared by the guest
 * program and the host. services/harvester/src/sources/guest-layout.ts holds the same numbers and
 * a test checks that the native `guestLayout` export agrees with it.
 *
 * Everything below GUEST_REGION_GPA is the "reserved area": page tables, control block, status
 * pages, code and stacks. The workload only writes region pages, the status page and its stack.
 */
#ifndef CKPT_GUEST_LAYOUT_H
#define CKPT_GUEST_LAYOUT_H

/* The guest uses 4 KiB pages for its accounting; the identity map itself uses 2 MiB pages. */
#define GUEST_PAGE_SIZE 0x1000ULL
#define GUEST_LARGE_PAGE_SIZE 0x200000ULL

/* PML4 at 0x1000, PDPT at 0x2000, one page directory per GiB from 0x3000. */
#define GUEST_PAGE_TABLES_GPA 0x1000ULL
#define GUEST_PML4_GPA 0x1000ULL
#define GUEST_PDPT_GPA 0x2000ULL
#define GUEST_PD_GPA 0x3000ULL
/* Page directories must end before the control block: 0x3000..0x7ffff holds 125 of them. */
#define GUEST_MAX_GIB ((GUEST_CONTROL_GPA - GUEST_PD_GPA) / GUEST_PAGE_SIZE)

/* Written by the host before the first run, read-only for the guest. */
#define GUEST_CONTROL_GPA 0x80000ULL

/* Status page of vCPU v at GUEST_STATUS_GPA + v * GUEST_STATUS_STRIDE. */
#define GUEST_STATUS_GPA 0x81000ULL
#define GUEST_STATUS_STRIDE 0x1000ULL

/* Probe page: never touched by the guest. The host makes KVM write its wall clock here (and log the
 * page) to prove a dirty ring that was seen full; the host puts the bytes back (dirty-harvest.c). */
#define GUEST_PROBE_GPA 0xFF000ULL

#define GUEST_CODE_GPA 0x100000ULL
/* The code blob must end before the first stack. */
#define GUEST_CODE_MAX_BYTES (GUEST_STACKS_GPA - GUEST_CODE_GPA)

/* Stack of vCPU v: [GUEST_STACKS_GPA + v * GUEST_STACK_BYTES, + GUEST_STACK_BYTES), grows down. */
#define GUEST_STACKS_GPA 0x110000ULL
#define GUEST_STACK_BYTES 0x4000ULL

/*
 * Workload region: page i at GUEST_REGION_GPA + i * 4096, ending at the end of guest memory or at
 * GUEST_REGION_END_GPA, whichever comes first: regionPages = min(totalPages, 1043456) - 1024
 * (docs/guest-program.md; the simulator uses the same formula). GUEST_REGION_END_GPA is the bottom of
 * x86's APIC window (IOAPIC at 0xfec00000, local APIC at 0xfee00000): KVM turns a guest write there
 * into an MMIO exit even where a memslot maps the page, so a workload reaching it stopped its vCPU.
 * Memory from there up is mapped, logged and harvested, but the workload does not write it.
 */
#define GUEST_REGION_GPA 0x400000ULL
#define GUEST_RESERVED_PAGES (GUEST_REGION_GPA / GUEST_PAGE_SIZE)
#define GUEST_REGION_END_GPA 0xFEC00000ULL
#define GUEST_REGION_END_MAX_PAGES (GUEST_REGION_END_GPA / GUEST_PAGE_SIZE)

#ifndef __ASSEMBLER__
/* The workload region's size in pages for a guest of `total_pages` pages. */
static inline unsigned long long guest_region_pages(unsigned long long total_pages) {
  unsigned long long end = total_pages < GUEST_REGION_END_MAX_PAGES ? total_pages : GUEST_REGION_END_MAX_PAGES;
  return end - GUEST_RESERVED_PAGES;
}
#endif

/* Slot 0 holds the reserved area and at least some region. */
#define GUEST_MIN_SLOT0_BYTES 0x800000ULL

#define GUEST_MAX_VCPUS 64

/* The only exit: a 32-bit IN from this port asks the host for a page budget. */
#define GUEST_BUDGET_PORT 0x7c0

/* "CK" little-endian: bits 0-15 of the stamp, the first 64-bit word of every page the workload writes
 * (bits 16-23: vCPU, bits 24-63: sequence number). */
#define GUEST_STAMP_MAGIC 0x4B43U
/* First word of the control block, so a guest started on garbage stops instead of scribbling. */
#define GUEST_CONTROL_MAGIC 0x4C525443U /* "CTRL" */
#define GUEST_CONTROL_VERSION 1U

#define GUEST_WORKLOAD_IDLE 0U
#define GUEST_WORKLOAD_SEQUENTIAL 1U
#define GUEST_WORKLOAD_RANDOM 2U
#define GUEST_WORKLOAD_HOTSET 3U

#ifndef __ASSEMBLER__
#include <stdint.h>

/* The control block at GUEST_CONTROL_GPA. All fields little-endian, naturally aligned. */
struct guest_control {
  uint32_t magic;        /* GUEST_CONTROL_MAGIC */
  uint32_t version;      /* GUEST_CONTROL_VERSION */
  uint32_t workload;     /* GUEST_WORKLOAD_* */
  uint32_t vcpus;        /* number of vCPUs (for the sequential cursor's start) */
  uint32_t region_pages; /* total pages - GUEST_RESERVED_PAGES */
  uint32_t seed;
  uint32_t hot_pages;    /* hotset: size of the hot set, 1..region_pages */
  uint32_t hot_percent;  /* hotset: 0..100 */
  uint32_t fill_pages;   /* nonzero: fill words 4..1023 after the stamp */
  uint32_t reserved[7];
};

/* The status page of one vCPU; the host reads both counters (guestCounters()). */
struct guest_status {
  uint64_t loops;
  uint64_t pages_written;
};

_Static_assert(sizeof(struct guest_control) == 64, "control block layout");
_Static_assert(sizeof(struct guest_status) == 16, "status page layout");
_Static_assert(GUEST_STATUS_GPA + GUEST_MAX_VCPUS * GUEST_STATUS_STRIDE <= GUEST_CODE_GPA, "status pages overlap code");
_Static_assert(GUEST_PROBE_GPA >= GUEST_STATUS_GPA + GUEST_MAX_VCPUS * GUEST_STATUS_STRIDE && GUEST_PROBE_GPA < GUEST_CODE_GPA, "probe page overlaps");
_Static_assert(GUEST_STACKS_GPA + GUEST_MAX_VCPUS * GUEST_STACK_BYTES <= GUEST_REGION_GPA, "stacks overlap region");
#endif

#endif
