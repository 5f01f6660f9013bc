/*
 * vCPU threads: one pthread per vCPU loops on KVM_RUN, answers the guest's budget IN with a paced
 * page budget, parks when the VM is paused or its dirty ring is full, and stops on destroy or on
 * any exit the guest program never causes.
 *
 * Synchronisation: vm->lock protects every flag the controlling thread and the vCPU threads share
 * (paused, stopping, in_run, ring_full, allowance, reset_gen, the error message). A vCPU thread
 * never holds the lock inside KVM_RUN. To get a vCPU out of KVM_RUN the controlling thread sets
 * run->immediate_exit and sends it KICK_SIGNAL (see kick()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "layout.h"
#include "vm-internal.h"

/* A real-time signal nothing else in a Node process uses (glibc keeps SIGRTMIN-2..-1 for itself). */
#define KICK_SIGNAL (SIGRTMIN + 5)
/* pause() and destroy() re-send the kick this often while a vCPU is still inside KVM_RUN. */
#define KICK_RETRY_NS (20 * 1000000ULL)
/* pause() gives up (with an error) after this long. */
#define PAUSE_TIMEOUT_NS (10 * 1000000000ULL)
#define VCPU_THREAD_STACK (256 * 1024)

/* ---------------------------------------------------------------- the kick signal */

/* The handler does nothing: its delivery alone makes a blocking KVM_RUN return -EINTR. */
static void kick_handler(int sig) { (void)sig; }

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static int kick_install_errno;

static void install_kick_handler(void) {
  struct sigaction old;
  if (sigaction(KICK_SIGNAL, NULL, &old) < 0) {
    kick_install_errno = errno;
    return;
  }
  bool ours = !(old.sa_flags & SA_SIGINFO) && old.sa_handler == kick_handler;
  bool free_slot = !(old.sa_flags & SA_SIGINFO) && (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN);
  if (ours) return;
  if (!free_slot) {
    kick_install_errno = EBUSY; /* someone else owns the signal: do not steal it */
    return;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR, not be restarted */
  if (sigaction(KICK_SIGNAL, &sa, NULL) < 0) kick_install_errno = errno;
}

/*
 * Makes a vCPU leave KVM_RUN (vm->lock held). immediate_exit covers the window where the thread has
 * decided to run but not yet entered the kernel (KVM_RUN then returns -EINTR at once); the signal
 * covers a thread already inside, whose KVM_RUN returns -EINTR as soon as the signal is pending.
 */
static void kick(struct vcpu *v) {
  __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELEASE);
  pthread_kill(v->thread, KICK_SIGNAL);
  vm_stat_add(v->vm, VM_STAT_KICKS, 1);
}

/* ---------------------------------------------------------------- errors and pacing */

static void timespec_in(struct timespec *ts, uint64_t ns_from_now) {
  uint64_t t = vm_now_ns() + ns_from_now;
  ts->tv_sec = (time_t)(t / 1000000000ULL);
  ts->tv_nsec = (long)(t % 1000000000ULL);
}

/* Records the first fatal error of the VM (vm->lock held). */
static void vcpu_fatal(struct vcpu *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vcpu_fatal(struct vcpu *v, const char *fmt, ...) {
  struct vm *vm = v->vm;
  vm_stat_add(vm, VM_STAT_RUN_ERRORS, 1);
  if (vm->has_error) return;
  char msg[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* From the vCPU thread itself, outside KVM_RUN, reading registers is safe. */
  struct kvm_regs regs;
  if (ioctl(v->fd, KVM_GET_REGS, &regs) == 0)
    snprintf(vm->last_error, sizeof vm->last_error, "vCPU %u stopped: %s (RIP 0x%llx)", v->index, msg,
             (unsigned long long)regs.rip);
  else
    snprintf(vm->last_error, sizeof vm->last_error, "vCPU %u stopped: %s", v->index, msg);
  vm->has_error = true;
}

/*
 * How many pages the vCPU may write now (vm->lock held): what the rate made due since the last
 * call (a token bucket holding at most one burst, so a backlog after a stall or a pause is dropped
 * rather than replayed), bounded by the remaining write allowance and the burst cap.
 */
static uint32_t take_budget(struct vcpu *v) {
  struct vm *vm = v->vm;
  if (vm->workload == GUEST_WORKLOAD_IDLE) return 0;
  double avail = vm->burst_cap;
  if (vm->rate > 0) {
    uint64_t now = vm_now_ns();
    v->tokens += vm->rate * (double)(now - v->last_ns) / 1e9;
    v->last_ns = now;
    if (v->tokens > vm->burst_cap) v->tokens = vm->burst_cap;
    avail = floor(v->tokens);
  }
  uint64_t b = (uint64_t)avail;
  if (b > v->allowance) b = v->allowance;
  if (b == 0) return 0;
  if (vm->rate > 0) v->tokens -= (double)b;
  if (v->allowance != VM_ALLOWANCE_UNLIMITED) v->allowance -= b;
  return (uint32_t)b;
}

/* The guest's budget request: IN32 from GUEST_BUDGET_PORT (vm->lock held). */
static int handle_io(struct vcpu *v) {
  struct vm *vm = v->vm;
  struct kvm_run *run = v->run;
  if (run->io.direction != KVM_EXIT_IO_IN || run->io.port != GUEST_BUDGET_PORT || run->io.size != 4 ||
      run->io.count != 1) {
    vcpu_fatal(v, "unexpected port I/O: %s port 0x%x size %u count %u", run->io.direction == KVM_EXIT_IO_IN ? "IN" : "OUT",
               run->io.port, run->io.size, run->io.count);
    return -1;
  }
  if (run->io.data_offset < sizeof(struct kvm_run) || run->io.data_offset > vm->run_size - sizeof(uint32_t)) {
    vcpu_fatal(v, "KVM put the I/O data outside kvm_run (offset %llu)", (unsigned long long)run->io.data_offset);
    return -1;
  }
  vm_stat_add(vm, VM_STAT_IO_EXITS, 1);
  uint32_t budget = 0;
  if (!vm->paused && !vm->stopping) {
    budget = take_budget(v);
    if (budget == 0) {
      /* Nothing to do yet: sleep one tick outside KVM_RUN. pause(), destroy(), grantWrites()
       * and reset() broadcast `wake`, so none of them waits for the tick to end. */
      struct timespec until;
      timespec_in(&until, (uint64_t)vm->tick_us * 1000ULL);
      pthread_cond_timedwait(&vm->wake, &vm->lock, &until);
      if (!vm->paused && !vm->stopping) budget = take_budget(v);
    }
  }
  /*
   * The answer goes into the data area; KVM copies it into EAX and steps past the IN on the next
   * KVM_RUN. If the VM is paused first, the IN stays pending until resume() (see
   * vm_get_vcpu_state() for what that means for a snapshot).
   */
  memcpy((uint8_t *)run + run->io.data_offset, &budget, sizeof budget);
  return 0;
}

static const char *exit_name(uint32_t reason) {
  switch (reason) {
  case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
  case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
  case KVM_EXIT_HYPERCALL: return "KVM_EXIT_HYPERCALL";
  case KVM_EXIT_DEBUG: return "KVM_EXIT_DEBUG";
  case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
  case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
  case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN";
  case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
  case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
  case KVM_EXIT_SYSTEM_EVENT: return "KVM_EXIT_SYSTEM_EVENT";
  case KVM_EXIT_X86_RDMSR: return "KVM_EXIT_X86_RDMSR";
  case KVM_EXIT_X86_WRMSR: return "KVM_EXIT_X86_WRMSR";
  default: return "unexpected exit";
  }
}

/* Handles one exit (vm->lock held). Returns -1 when the vCPU must stop. */
static int handle_exit(struct vcpu *v, uint32_t reason) {
  struct vm *vm = v->vm;
  struct kvm_run *run = v->run;
  switch (reason) {
  case KVM_EXIT_IO:
    return handle_io(v);
  case KVM_EXIT_DIRTY_RING_FULL:
    vm_stat_add(vm, VM_STAT_RING_FULL_EXITS, 1);
    /* A reset that ran while we were in KVM_RUN may already have made room: try again at once. */
    if (vm->reset_gen != v->run_gen) return 0;
    v->ring_full = true;
    v->stall_gen = vm->reset_gen;
    return 0;
  case KVM_EXIT_INTR:
    return 0;
  case KVM_EXIT_SHUTDOWN:
    vcpu_fatal(v, "KVM_EXIT_SHUTDOWN: the guest triple-faulted");
    return -1;
  case KVM_EXIT_FAIL_ENTRY:
    vcpu_fatal(v, "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x%llx",
               (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
    return -1;
  case KVM_EXIT_INTERNAL_ERROR:
    vcpu_fatal(v, "KVM_EXIT_INTERNAL_ERROR: suberror %u", run->internal.suberror);
    return -1;
  case KVM_EXIT_MMIO:
    vcpu_fatal(v, "KVM_EXIT_MMIO: %s of %u bytes at GPA 0x%llx, which KVM does not treat as guest RAM (outside the memslots, or x86's APIC window 0xfec00000-0xfeffffff)",
               run->mmio.is_write ? "write" : "read", run->mmio.len, (unsigned long long)run->mmio.phys_addr);
    return -1;
  case KVM_EXIT_HLT:
    vcpu_fatal(v, "KVM_EXIT_HLT: the guest halted (no valid control block?)");
    return -1;
  default:
    vcpu_fatal(v, "%s (exit reason %u)", exit_name(reason), reason);
    return -1;
  }
}

/* ---------------------------------------------------------------- the vCPU thread */

static void *vcpu_main(void *arg) {
  struct vcpu *v = arg;
  struct vm *vm = v->vm;
  /* Created with every signal blocked; let only the kick through. */
  sigset_t kick_set;
  sigemptyset(&kick_set);
  sigaddset(&kick_set, KICK_SIGNAL);
  pthread_sigmask(SIG_UNBLOCK, &kick_set, NULL);
  char name[16];
  snprintf(name, sizeof name, "kvm-vcpu-%u", v->index);
  pthread_setname_np(pthread_self(), name);

  pthread_mutex_lock(&vm->lock);
  for (;;) {
    /* Parked: paused, or stalled on a full ring until the next reset. */
    while (!vm->stopping && (vm->paused || (v->ring_full && vm->reset_gen == v->stall_gen)))
      pthread_cond_wait(&vm->wake, &vm->lock);
    if (vm->stopping) break;
    v->ring_full = false;
    v->in_run = true;
    v->ran = true;
    v->run_gen = vm->reset_gen;
    /* Cleared under the lock: a kick that takes the lock after this point sets it again. */
    __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&vm->lock);

    /* KVM_RUN: runs the guest until an exit that needs us, a pending signal, or immediate_exit. */
    int r = ioctl(v->fd, KVM_RUN, 0);
    int err = errno;

    pthread_mutex_lock(&vm->lock);
    v->in_run = false;
    pthread_cond_broadcast(&vm->parked);
    if (r < 0) {
      if (err == EINTR || err == EAGAIN) continue; /* kicked */
      vcpu_fatal(v, "KVM_RUN failed: %s", strerror(err));
      break;
    }
    if (handle_exit(v, v->run->exit_reason) < 0) break;
  }
  v->exited = true;
  v->ring_full = false;
  pthread_cond_broadcast(&vm->parked);
  pthread_mutex_unlock(&vm->lock);
  return NULL;
}

/* Asks every thread to stop and waits until each has left its loop (vm->lock held). */
static void stop_and_wait(struct vm *vm) {
  vm->stopping = true;
  pthread_cond_broadcast(&vm->wake);
  for (;;) {
    bool waiting = false;
    for (uint32_t i = 0; i < vm->nvcpus; i++) {
      struct vcpu *v = &vm->vcpus[i];
      if (!v->thread_created || v->exited) continue;
      waiting = true;
      if (v->in_run) kick(v);
    }
    if (!waiting) return;
    struct timespec until;
    timespec_in(&until, KICK_RETRY_NS);
    pthread_cond_timedwait(&vm->parked, &vm->lock, &until);
  }
}

static void join_threads(struct vm *vm) {
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    if (!v->thread_created) continue;
    pthread_join(v->thread, NULL);
    v->thread_created = false;
  }
}

void vm_stop_threads(struct vm *vm) {
  if (vm->vcpus == NULL) return;
  pthread_mutex_lock(&vm->lock);
  stop_and_wait(vm);
  pthread_mutex_unlock(&vm->lock);
  join_threads(vm);
}

int vm_start(struct vm *vm, struct vm_error *e) {
  pthread_once(&kick_once, install_kick_handler);
  if (kick_install_errno == EBUSY)
    return vm_fail(e, VM_ERR_STATE, "start",
                   "cannot start vCPUs: signal SIGRTMIN+5, used to kick vCPUs out of KVM_RUN, already has a handler");
  if (kick_install_errno != 0)
    return vm_fail_sys(e, "start", "sigaction", kick_install_errno, "cannot install the vCPU kick signal handler");

  pthread_mutex_lock(&vm->lock);
  bool already = vm->started;
  pthread_mutex_unlock(&vm->lock);
  if (already) return 0;
  for (uint32_t i = 0; i < vm->nvcpus; i++)
    if (!vm->vcpus[i].has_state)
      return vm_fail(e, VM_ERR_STATE, "start",
                     "cannot start vCPU %u: it has no state; the VM was created with loadGuest=false, call setVcpuState() first",
                     i);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, VCPU_THREAD_STACK);
  /* Threads inherit this mask, so no signal can reach a vCPU thread before it unblocks the kick. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);

  pthread_mutex_lock(&vm->lock);
  vm->started = true;
  vm->paused = false;
  pthread_mutex_unlock(&vm->lock);
  int rc = 0;
  uint32_t failed_at = 0;
  uint64_t now = vm_now_ns();
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    v->last_ns = now;
    v->tokens = 0;
    rc = pthread_create(&v->thread, &attr, vcpu_main, v);
    if (rc != 0) {
      failed_at = i;
      break;
    }
    v->thread_created = true;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (rc == 0) return 0;

  /* Undo: stop the threads that did start, so the VM is back to "not started". */
  pthread_mutex_lock(&vm->lock);
  stop_and_wait(vm);
  pthread_mutex_unlock(&vm->lock);
  join_threads(vm);
  pthread_mutex_lock(&vm->lock);
  vm->stopping = false;
  vm->started = false;
  for (uint32_t i = 0; i < vm->nvcpus; i++) vm->vcpus[i].exited = false;
  pthread_mutex_unlock(&vm->lock);
  return vm_fail_sys(e, "start", "pthread_create", rc, "cannot start the thread of vCPU %u", failed_at);
}

int vm_pause(struct vm *vm, struct vm_error *e) {
  pthread_mutex_lock(&vm->lock);
  if (!vm->started || vm->stopping) {
    pthread_mutex_unlock(&vm->lock);
    return 0;
  }
  vm->paused = true;
  pthread_cond_broadcast(&vm->wake); /* cut pacing sleeps short so threads park promptly */
  uint64_t deadline = vm_now_ns() + PAUSE_TIMEOUT_NS;
  bool first = true;
  for (;;) {
    uint32_t running = 0, stuck = 0;
    for (uint32_t i = 0; i < vm->nvcpus; i++) {
      struct vcpu *v = &vm->vcpus[i];
      if (!v->in_run) continue;
      running++;
      stuck = i;
      if (first) kick(v);
    }
    if (running == 0) break;
    if (vm_now_ns() > deadline) {
      pthread_mutex_unlock(&vm->lock);
      return vm_fail_sys(e, "pause", "pthread_kill", ETIMEDOUT, "cannot pause the VM: vCPU %u did not leave KVM_RUN",
                         stuck);
    }
    struct timespec until;
    timespec_in(&until, KICK_RETRY_NS);
    /* On a timeout, kick the vCPUs still inside again (a lost wakeup must not hang pause()). */
    first = pthread_cond_timedwait(&vm->parked, &vm->lock, &until) == ETIMEDOUT;
  }
  pthread_mutex_unlock(&vm->lock);
  return 0;
}

void vm_resume(struct vm *vm) {
  pthread_mutex_lock(&vm->lock);
  if (vm->started && !vm->stopping) {
    vm->paused = false;
    pthread_cond_broadcast(&vm->wake);
  }
  pthread_mutex_unlock(&vm->lock);
}

void vm_grant_writes(struct vm *vm, uint64_t n) {
  pthread_mutex_lock(&vm->lock);
  for (uint32_t i = 0; i < vm->nvcpus; i++) {
    struct vcpu *v = &vm->vcpus[i];
    if (v->allowance == VM_ALLOWANCE_UNLIMITED) continue;
    /* Saturate just below "unlimited" so a huge grant never turns into no limit at all. */
    v->allowance = n >= VM_ALLOWANCE_UNLIMITED - 1 - v->allowance ? VM_ALLOWANCE_UNLIMITED - 1 : v->allowance + n;
  }
  pthread_cond_broadcast(&vm->wake);
  pthread_mutex_unlock(&vm->lock);
}

/* Called by reset(): vCPUs stalled on a full ring may run again. */
void vm_wake_after_reset(struct vm *vm) {
  pthread_mutex_lock(&vm->lock);
  vm->reset_gen++;
  /* Paused vCPUs would only wake to park again (inside the checkpoint pause, on the harvester's
   * time); vm_resume wakes them, and a ring-full stall then sees the new reset_gen. */
  if (!vm->paused) pthread_cond_broadcast(&vm->wake);
  pthread_mutex_unlock(&vm->lock);
}

bool vm_vcpu_quiescent(struct vm *vm, uint32_t index) {
  struct vcpu *v = &vm->vcpus[index];
  pthread_mutex_lock(&vm->lock);
  bool q = !v->in_run && (!vm->started || vm->paused || v->exited);
  pthread_mutex_unlock(&vm->lock);
  return q;
}

bool vm_last_error(struct vm *vm, char *buf, size_t len) {
  pthread_mutex_lock(&vm->lock);
  bool has = vm->has_error;
  if (has) snprintf(buf, len, "%s", vm->last_error);
  pthread_mutex_unlock(&vm->lock);
  return has;
}

void vm_stats(struct vm *vm, double out[VM_STAT_LENGTH]) {
  uint32_t stalled = 0;
  pthread_mutex_lock(&vm->lock);
  for (uint32_t i = 0; i < vm->nvcpus; i++) stalled += vm->vcpus[i].ring_full;
  pthread_mutex_unlock(&vm->lock);
  for (int i = 0; i < VM_STAT_LENGTH; i++) out[i] = (double)__atomic_load_n(&vm->stats[i], __ATOMIC_RELAXED);
  out[VM_STAT_VCPUS_STALLED_RING_FULL] = stalled;
}
