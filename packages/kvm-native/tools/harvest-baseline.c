/*
 * The "plain C loop" baseline for the harvest benchmark: the same VM core as the Node addon
 * (src/kvm-vm.c, vcpu-thread.c, dirty-harvest.c), driven from C, so the TypeScript benchmark can
 * compare drain()+reset() through Node against exactly the same operations without Node.
 *
 *   kvm-harvest-baseline --mem-mib 1024 --pages 100 --rounds 20 --mode ring --ring-entries 4096
 *
 * One vCPU runs the sequential workload with a write allowance; the rounds are src/harvest-rounds.c
 * (grant K writes, wait until the guest has written them, pause, time only drain-into-arrays + reset,
 * resume), which the addon's harvestRounds() also runs. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvm-vm.h"
#include "layout.h"

struct args {
  const char *dev;
  uint64_t mem_mib;
  uint32_t pages;
  uint32_t rounds;
  bool ring;
  uint32_t ring_entries;
};

static void usage(const char *msg) {
  if (msg) fprintf(stderr, "kvm-harvest-baseline: %s\n", msg);
  fprintf(stderr,
          "usage: kvm-harvest-baseline [--dev /dev/kvm] --mem-mib N --pages K --rounds R --mode ring|bitmap "
          "[--ring-entries E]\n");
  exit(2);
}

static uint64_t parse_num(const char *flag, const char *s, uint64_t min, uint64_t max) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || *s == '\0' || v < min || v > max) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be an integer in %llu..%llu, got '%s'", flag, (unsigned long long)min,
             (unsigned long long)max, s);
    usage(msg);
  }
  return v;
}

static struct args parse_args(int argc, char **argv) {
  struct args a = {.dev = "/dev/kvm", .mem_mib = 1024, .pages = 100, .rounds = 20, .ring = true, .ring_entries = 0};
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    if (i + 1 >= argc) usage("every flag needs a value");
    const char *v = argv[++i];
    if (strcmp(f, "--dev") == 0) a.dev = v;
    else if (strcmp(f, "--mem-mib") == 0) a.mem_mib = parse_num(f, v, 16, 125 * 1024);
    else if (strcmp(f, "--pages") == 0) a.pages = (uint32_t)parse_num(f, v, 1, 1u << 24);
    else if (strcmp(f, "--rounds") == 0) a.rounds = (uint32_t)parse_num(f, v, 1, 100000);
    else if (strcmp(f, "--ring-entries") == 0) a.ring_entries = (uint32_t)parse_num(f, v, 1024, 1u << 16);
    else if (strcmp(f, "--mode") == 0) {
      if (strcmp(v, "ring") == 0) a.ring = true;
      else if (strcmp(v, "bitmap") == 0) a.ring = false;
      else usage("--mode must be ring or bitmap");
    } else {
      usage("unknown flag");
    }
  }
  if (a.mem_mib % 2 != 0) usage("--mem-mib must be even (slots are whole 2 MiB pages)");
  uint64_t region = guest_region_pages(a.mem_mib * 256);
  if (a.pages > region) usage("--pages is larger than the guest's workload region");
  if (a.ring) {
    if (a.ring_entries == 0) {
      /* Room for one round plus the reserved entries and the few stack/status pages. */
      a.ring_entries = 4096;
      while (a.ring_entries < a.pages + 256 && a.ring_entries < (1u << 16)) a.ring_entries *= 2;
    }
    if ((a.ring_entries & (a.ring_entries - 1)) != 0) usage("--ring-entries must be a power of two");
    if (a.ring_entries < a.pages + 128) usage("--ring-entries must exceed --pages by at least 128 (KVM reserves 64)");
  }
  return a;
}

static void die(const char *what, const struct vm_error *e) {
  fprintf(stderr, "kvm-harvest-baseline: %s: %s\n", what, e ? e->message : "");
  exit(1);
}

/* The first harvest of a guest, not timed: it also holds the stack and status pages. */
static void warm_up(struct vm *vm, uint32_t pages, uint32_t *slots, uint32_t *offsets, uint32_t cap) {
  struct vm_error e;
  if (vm_wait_written(vm, pages, 20000, &e) < 0) die("warm up", &e);
  if (vm_pause(vm, &e) < 0) die("pause", &e);
  for (;;) {
    int64_t n = vm_drain(vm, slots, offsets, cap, &e);
    if (n < 0) die("drain", &e);
    if ((uint32_t)n < cap) break;
  }
  if (vm_reset(vm, &e) < 0) die("reset", &e);
  vm_resume(vm);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double percentile(double *sorted, uint32_t n, double p) {
  uint32_t i = (uint32_t)(p * (n - 1) + 0.5);
  return sorted[i < n ? i : n - 1];
}

int main(int argc, char **argv) {
  struct args a = parse_args(argc, argv);
  static struct vm_options o;
  memset(&o, 0, sizeof o);
  o.dev_path = a.dev;
  o.nslots = 1;
  o.slot_bytes[0] = a.mem_mib << 20;
  o.vcpus = 1;
  o.ring_bytes = a.ring ? (uint64_t)a.ring_entries * 16 : 0;
  o.load_guest = true;
  o.workload = GUEST_WORKLOAD_SEQUENTIAL;
  o.rate_pages_per_sec = 0;
  o.seed = 1;
  o.max_writes_per_vcpu = a.pages;
  o.tick_us = 1000;
  o.probe_full_rings = true; /* as the Node path does */

  struct vm_error e;
  struct vm *vm;
  if (vm_create(&o, &vm, &e) < 0) die("create the VM", &e);

  uint32_t cap = a.pages + 4096;
  uint32_t *slots = calloc(cap, sizeof *slots);
  uint32_t *offsets = calloc(cap, sizeof *offsets);
  double *us = calloc(a.rounds, sizeof *us);
  double *seen = calloc(a.rounds, sizeof *seen);
  if (!slots || !offsets || !us || !seen) die("allocate arrays", NULL);

  if (vm_start(vm, &e) < 0) die("start", &e);
  warm_up(vm, a.pages, slots, offsets, cap);
  if (vm_harvest_rounds(vm, a.pages, a.rounds, slots, offsets, cap, us, seen, &e) < 0) die("harvest", &e);
  char err[256];
  if (vm_last_error(vm, err, sizeof err)) {
    fprintf(stderr, "kvm-harvest-baseline: guest error: %s\n", err);
    return 1;
  }
  vm_destroy(vm);

  qsort(us, a.rounds, sizeof *us, cmp_double);
  qsort(seen, a.rounds, sizeof *seen, cmp_double);
  double med = percentile(us, a.rounds, 0.5);
  double p90 = percentile(us, a.rounds, 0.9);
  double pages_seen = percentile(seen, a.rounds, 0.5);
  printf("{\"mode\":\"%s\",\"memMiB\":%llu,\"pages\":%u,\"rounds\":%u,\"drainResetUsMedian\":%.2f,"
         "\"drainResetUsP90\":%.2f,\"perPageNs\":%.1f,\"pagesPerRoundSeen\":%.0f}\n",
         a.ring ? "ring" : "bitmap", (unsigned long long)a.mem_mib, a.pages, a.rounds, med, p90,
         pages_seen > 0 ? med * 1000.0 / pages_seen : 0.0, pages_seen);
  free(slots);
  free(offsets);
  free(us);
  free(seen);
  return 0;
}
