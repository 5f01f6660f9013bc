/*
 * The Node-API layer: argument checking, typed-array access and error conversion around the VM
 * core (kvm-vm.h). Every function is declared in ts/native.ts; keep the two in step.
 *
 * A VM is handed to JS as an empty object tagged with VM_TAG and wrapped (napi_wrap) around a
 * small handle; no pointer ever becomes a JS value. destroy() and the wrap's finalizer both
 * release the VM, whichever comes first.
 *
 * Errors: argument mistakes throw TypeError/RangeError naming the argument; everything else
 * throws an Error with `op`, `syscall` and `errno` properties (ts/index.ts turns those into
 * KvmError codes).
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crc32c.h"
#include "kvm-vm.h"
#include "layout.h"

/* Largest integer a JS number holds exactly. */
#define MAX_SAFE_INTEGER 9007199254740991.0

struct vm_handle {
  struct vm *vm;           /* NULL once destroyed */
  bool has_last_error;     /* kept across destroy() so lastError() still answers */
  char last_error[256];
};

static const napi_type_tag VM_TAG = {0x636b70742d6b766dULL, 0x6e61746976652d31ULL};

/* ---------------------------------------------------------------- error plumbing */

/* A failed napi_* call: keep a pending JS exception if there is one, else throw a generic Error. */
static void throw_napi_failure(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char msg[256];
  snprintf(msg, sizeof msg, "kvm-native: %s failed: %s", what,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown N-API error");
  napi_throw_error(env, NULL, msg);
}

#define NAPI_OK(env, call)                \
  do {                                    \
    if ((call) != napi_ok) {              \
      throw_napi_failure((env), #call);   \
      return NULL;                        \
    }                                     \
  } while (0)

/* Same, for helpers that return bool. */
#define NAPI_OK_B(env, call)              \
  do {                                    \
    if ((call) != napi_ok) {              \
      throw_napi_failure((env), #call);   \
      return false;                       \
    }                                     \
  } while (0)

static void set_string_prop(napi_env env, napi_value obj, const char *name, const char *value) {
  napi_value v;
  if (napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, obj, name, v);
}

static void set_number_prop(napi_env env, napi_value obj, const char *name, double value) {
  napi_value v;
  if (napi_create_double(env, value, &v) == napi_ok) napi_set_named_property(env, obj, name, v);
}

static void throw_vm_error(napi_env env, const struct vm_error *e) {
  if (e->kind == VM_ERR_RANGE) {
    napi_throw_range_error(env, NULL, e->message);
    return;
  }
  if (e->kind == VM_ERR_TYPE) {
    napi_throw_type_error(env, NULL, e->message);
    return;
  }
  napi_value msg, err;
  if (napi_create_string_utf8(env, e->message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, NULL, msg, &err) != napi_ok) {
    napi_throw_error(env, NULL, e->message);
    return;
  }
  set_string_prop(env, err, "op", e->op != NULL ? e->op : "");
  set_string_prop(env, err, "syscall", e->syscall != NULL ? e->syscall : "");
  set_number_prop(env, err, "errno", e->err);
  napi_throw(env, err);
}

static void throw_type(napi_env env, const char *fmt, const char *name) {
  char msg[256];
  snprintf(msg, sizeof msg, fmt, name);
  napi_throw_type_error(env, NULL, msg);
}

/* ---------------------------------------------------------------- argument helpers */

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *fn) {
  size_t argc = want;
  NAPI_OK_B(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < want) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s() expects %zu arguments, got %zu", fn, want, argc);
    napi_throw_type_error(env, NULL, msg);
    return false;
  }
  return true;
}

/*
 * The argument helpers make one N-API call where that call itself reports a wrong type (its status),
 * rather than napi_typeof first: the drain runs inside the checkpoint pause, where each N-API function
 * it enters is cold after the guest has run. Dropping the five extra calls per drain saved 0.4-1.7 us
 * at 100 pages and 4.5-5.3 us at 1000 in an A/B within one process (8 GiB guest, 65536-entry ring).
 */
static bool get_number(napi_env env, napi_value v, const char *name, double *out) {
  napi_status st = napi_get_value_double(env, v, out);
  if (st == napi_number_expected) {
    throw_type(env, "%s must be a number", name);
    return false;
  }
  NAPI_OK_B(env, st);
  return true;
}

/* A JS number that is an integer in [0, max]. */
static bool get_uint(napi_env env, napi_value v, const char *name, double max, uint64_t *out) {
  double d;
  if (!get_number(env, v, name, &d)) return false;
  if (!(d >= 0 && d <= max) || (double)(uint64_t)d != d) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s must be an integer in 0..%.0f, got %g", name, max, d);
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

static bool get_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  uint64_t x;
  if (!get_uint(env, v, name, (double)UINT32_MAX, &x)) return false;
  *out = (uint32_t)x;
  return true;
}

static bool get_bool(napi_env env, napi_value v, const char *name, bool *out) {
  napi_status st = napi_get_value_bool(env, v, out);
  if (st == napi_boolean_expected) {
    throw_type(env, "%s must be a boolean", name);
    return false;
  }
  NAPI_OK_B(env, st);
  return true;
}

static bool get_string(napi_env env, napi_value v, const char *name, char *buf, size_t len) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  if (t != napi_string) {
    throw_type(env, "%s must be a string", name);
    return false;
  }
  size_t n = 0;
  NAPI_OK_B(env, napi_get_value_string_utf8(env, v, buf, len, &n));
  if (n + 1 >= len || strlen(buf) != n) {
    throw_type(env, "%s must be a path without NUL bytes, shorter than PATH_MAX", name);
    return false;
  }
  return true;
}

static const char *typed_array_name(napi_typedarray_type t) {
  switch (t) {
  case napi_uint8_array: return "a Uint8Array";
  case napi_uint32_array: return "a Uint32Array";
  case napi_float64_array: return "a Float64Array";
  default: return "a typed array";
  }
}

/* A typed array of exactly `want` type: its data pointer and length in elements. */
static bool get_typed(napi_env env, napi_value v, const char *name, napi_typedarray_type want, void **data,
                      size_t *length) {
  napi_typedarray_type type = napi_int8_array;
  napi_status st = napi_get_typedarray_info(env, v, &type, length, data, NULL, NULL);
  if (st != napi_ok && st != napi_invalid_arg) NAPI_OK_B(env, st);
  if (st == napi_invalid_arg || type != want) { /* invalid_arg: not a typed array */
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be %s", name, typed_array_name(want));
    napi_throw_type_error(env, NULL, msg);
    return false;
  }
  static uint64_t empty; /* an empty or detached array has no data: hand out a valid, unused address */
  if (*data == NULL) *data = &empty;
  return true;
}

static bool get_handle(napi_env env, napi_value v, struct vm_handle **out) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, v, &t));
  bool ok = false;
  if (t == napi_object) NAPI_OK_B(env, napi_check_object_type_tag(env, v, &VM_TAG, &ok));
  if (!ok) {
    napi_throw_type_error(env, NULL, "vm must be a VM returned by createVm()");
    return false;
  }
  NAPI_OK_B(env, napi_unwrap(env, v, (void **)out));
  return true;
}

/* False, with CKPT_ERR_KVM_STATE thrown, once the VM was destroyed. */
static bool vm_alive(napi_env env, const struct vm_handle *h) {
  if (h->vm != NULL) return true;
  struct vm_error e;
  memset(&e, 0, sizeof e);
  e.kind = VM_ERR_STATE;
  e.op = "use-vm";
  e.syscall = "";
  snprintf(e.message, sizeof e.message, "cannot use the VM: it was destroyed");
  throw_vm_error(env, &e);
  return false;
}

/* The live VM behind argument 0, or a thrown error when it was destroyed. */
static bool get_vm(napi_env env, napi_value v, struct vm **out) {
  struct vm_handle *h;
  if (!get_handle(env, v, &h)) return false;
  if (!vm_alive(env, h)) return false;
  *out = h->vm;
  return true;
}

static napi_value number(napi_env env, double d) {
  napi_value v;
  NAPI_OK(env, napi_create_double(env, d, &v));
  return v;
}

static napi_value undefined(napi_env env) {
  napi_value v;
  NAPI_OK(env, napi_get_undefined(env, &v));
  return v;
}

/* ---------------------------------------------------------------- probe / create / destroy */

static napi_value js_probe(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char path[PATH_MAX];
  if (!get_args(env, info, 1, argv, "probe") || !get_string(env, argv[0], "devPath", path, sizeof path)) return NULL;
  struct vm_probe p;
  struct vm_error e;
  if (vm_probe(path, &p, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  napi_value o;
  NAPI_OK(env, napi_create_object(env, &o));
  set_number_prop(env, o, "apiVersion", p.api_version);
  set_number_prop(env, o, "dirtyRingMaxBytes", (double)p.dirty_ring_max_bytes);
  set_number_prop(env, o, "dirtyRingAcqRelMaxBytes", (double)p.dirty_ring_acq_rel_max_bytes);
  set_number_prop(env, o, "manualProtect", (double)p.manual_protect);
  set_number_prop(env, o, "recommendedVcpus", (double)p.recommended_vcpus);
  set_number_prop(env, o, "maxVcpus", (double)p.max_vcpus);
  set_number_prop(env, o, "pageSize", (double)p.page_size);
  return o;
}

static bool get_prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  NAPI_OK_B(env, napi_get_named_property(env, obj, name, out));
  return true;
}

static bool parse_options(napi_env env, napi_value obj, struct vm_options *o, char *path, size_t path_len) {
  napi_valuetype t;
  NAPI_OK_B(env, napi_typeof(env, obj, &t));
  if (t != napi_object) {
    napi_throw_type_error(env, NULL, "options must be an object");
    return false;
  }
  napi_value v;
  memset(o, 0, sizeof *o);
  if (!get_prop(env, obj, "devPath", &v) || !get_string(env, v, "options.devPath", path, path_len)) return false;
  o->dev_path = path;

  if (!get_prop(env, obj, "slotBytes", &v)) return false;
  bool is_array = false;
  NAPI_OK_B(env, napi_is_array(env, v, &is_array));
  if (!is_array) {
    napi_throw_type_error(env, NULL, "options.slotBytes must be an array of numbers");
    return false;
  }
  uint32_t n = 0;
  NAPI_OK_B(env, napi_get_array_length(env, v, &n));
  if (n == 0 || n > VM_MAX_SLOTS) {
    char msg[128];
    snprintf(msg, sizeof msg, "options.slotBytes must have 1..%u entries, got %u", VM_MAX_SLOTS, n);
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  o->nslots = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    char name[48];
    snprintf(name, sizeof name, "options.slotBytes[%u]", i);
    NAPI_OK_B(env, napi_get_element(env, v, i, &el));
    if (!get_uint(env, el, name, MAX_SAFE_INTEGER, &o->slot_bytes[i])) return false;
  }

  uint64_t u;
  if (!get_prop(env, obj, "vcpus", &v) || !get_u32(env, v, "options.vcpus", &o->vcpus)) return false;
  if (!get_prop(env, obj, "ringBytes", &v) || !get_uint(env, v, "options.ringBytes", (double)UINT32_MAX, &u)) return false;
  o->ring_bytes = u;
  if (!get_prop(env, obj, "loadGuest", &v) || !get_bool(env, v, "options.loadGuest", &o->load_guest)) return false;
  if (!get_prop(env, obj, "workload", &v) || !get_u32(env, v, "options.workload", &o->workload)) return false;
  if (!get_prop(env, obj, "ratePagesPerSec", &v) || !get_number(env, v, "options.ratePagesPerSec", &o->rate_pages_per_sec))
    return false;
  if (!get_prop(env, obj, "seed", &v) || !get_u32(env, v, "options.seed", &o->seed)) return false;
  if (!get_prop(env, obj, "hotPages", &v) || !get_u32(env, v, "options.hotPages", &o->hot_pages)) return false;
  if (!get_prop(env, obj, "hotPercent", &v) || !get_u32(env, v, "options.hotPercent", &o->hot_percent)) return false;
  if (!get_prop(env, obj, "fillPages", &v) || !get_bool(env, v, "options.fillPages", &o->fill_pages)) return false;
  if (!get_prop(env, obj, "maxWritesPerVcpu", &v) ||
      !get_uint(env, v, "options.maxWritesPerVcpu", MAX_SAFE_INTEGER, &o->max_writes_per_vcpu))
    return false;
  if (!get_prop(env, obj, "tickUs", &v) || !get_u32(env, v, "options.tickUs", &o->tick_us)) return false;
  if (!get_prop(env, obj, "probeFullRings", &v) || !get_bool(env, v, "options.probeFullRings", &o->probe_full_rings)) return false;
  return true;
}

static void vm_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct vm_handle *h = data;
  if (h->vm != NULL) vm_destroy(h->vm);
  free(h);
}

static napi_value js_create_vm(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "createVm")) return NULL;
  /* vm_options carries VM_MAX_SLOTS sizes; keep it off the stack. */
  struct vm_options *o = malloc(sizeof *o);
  char *path = malloc(PATH_MAX);
  struct vm_handle *h = calloc(1, sizeof *h);
  if (o == NULL || path == NULL || h == NULL) {
    free(o);
    free(path);
    free(h);
    napi_throw_error(env, NULL, "cannot create a VM: out of memory");
    return NULL;
  }
  struct vm_error e;
  bool ok = parse_options(env, argv[0], o, path, PATH_MAX);
  if (ok && vm_create(o, &h->vm, &e) < 0) {
    throw_vm_error(env, &e);
    ok = false;
  }
  free(o);
  free(path);
  if (!ok) {
    free(h);
    return NULL;
  }
  napi_value obj;
  if (napi_create_object(env, &obj) != napi_ok || napi_type_tag_object(env, obj, &VM_TAG) != napi_ok ||
      napi_wrap(env, obj, h, vm_finalize, NULL, NULL) != napi_ok) {
    vm_destroy(h->vm);
    free(h);
    throw_napi_failure(env, "wrapping the VM");
    return NULL;
  }
  return obj;
}

static napi_value js_destroy(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct vm_handle *h;
  if (!get_args(env, info, 1, argv, "destroy") || !get_handle(env, argv[0], &h)) return NULL;
  if (h->vm != NULL) {
    h->has_last_error = vm_last_error(h->vm, h->last_error, sizeof h->last_error);
    vm_destroy(h->vm);
    h->vm = NULL;
  }
  return undefined(env);
}

/* ---------------------------------------------------------------- run control */

/* start() and pause(): one VM argument, a core call that may fail with a vm_error, no result. */
static napi_value vm_op(napi_env env, napi_callback_info info, const char *name, int (*op)(struct vm *, struct vm_error *)) {
  napi_value argv[1];
  struct vm *vm;
  if (!get_args(env, info, 1, argv, name) || !get_vm(env, argv[0], &vm)) return NULL;
  struct vm_error e;
  if (op(vm, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return undefined(env);
}

static napi_value js_start(napi_env env, napi_callback_info info) { return vm_op(env, info, "start", vm_start); }

static napi_value js_pause(napi_env env, napi_callback_info info) { return vm_op(env, info, "pause", vm_pause); }

static napi_value js_resume(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct vm *vm;
  if (!get_args(env, info, 1, argv, "resume") || !get_vm(env, argv[0], &vm)) return NULL;
  vm_resume(vm);
  return undefined(env);
}

static napi_value js_grant_writes(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct vm *vm;
  uint64_t n;
  if (!get_args(env, info, 2, argv, "grantWrites") || !get_vm(env, argv[0], &vm) ||
      !get_uint(env, argv[1], "n", MAX_SAFE_INTEGER, &n))
    return NULL;
  vm_grant_writes(vm, n);
  return undefined(env);
}

/* ---------------------------------------------------------------- harvest */

static napi_value js_reset(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct vm *vm;
  if (!get_args(env, info, 1, argv, "reset") || !get_vm(env, argv[0], &vm)) return NULL;
  struct vm_error e;
  int64_t n = vm_reset(vm, &e);
  if (n < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return number(env, (double)n);
}

/*
 * bindDrain(vm, slots, offsets): the drain, as a function (at, thenReset) whose callback data holds the
 * VM's and the arrays' pointers. It harvests into slots[at..] and offsets[at..]; with thenReset, a
 * drain that emptied the rings (returned below the capacity left) also resets them in the same call:
 * the pause pays one crossing into native code instead of two. Bound, because a drain that took its
 * VM and arrays as arguments spent most of its fixed cost finding them (the VM's type tag and wrap,
 * two typed-array lookups, in N-API code that is cold in the pause: the guest ran since). The function
 * keeps the VM object and the arrays alive (references) and checks that the VM was not destroyed;
 * ts/index.ts binds again when the arrays change or are detached (a detached array reads length 0).
 */
struct bound_drain {
  struct vm_handle *h;
  napi_ref vm_ref, slots_ref, offsets_ref;
  uint32_t *slots, *offsets;
  size_t len;
};

static void bound_drain_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  struct bound_drain *b = data;
  napi_delete_reference(env, b->vm_ref);
  napi_delete_reference(env, b->slots_ref);
  napi_delete_reference(env, b->offsets_ref);
  free(b);
}

static napi_value js_bound_drain(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  void *data;
  NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  struct bound_drain *b = data;
  uint64_t at;
  bool then_reset;
  if (argc < 2) {
    napi_throw_type_error(env, NULL, "a bound drain() expects 2 arguments (at, thenReset)");
    return NULL;
  }
  if (!get_uint(env, argv[0], "at", MAX_SAFE_INTEGER, &at) || !get_bool(env, argv[1], "thenReset", &then_reset))
    return NULL;
  if (!vm_alive(env, b->h)) return NULL;
  if (at > b->len) {
    char msg[128];
    snprintf(msg, sizeof msg, "at (%llu) exceeds the arrays' length (%zu)", (unsigned long long)at, b->len);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  size_t cap = b->len - at;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  struct vm_error e;
  int64_t n = vm_drain(b->h->vm, b->slots + at, b->offsets + at, (uint32_t)cap, &e);
  if (n >= 0 && then_reset && (uint64_t)n < cap && vm_reset(b->h->vm, &e) < 0) n = -1;
  if (n < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return number(env, (double)n);
}

static napi_value js_bind_drain(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct vm_handle *h;
  void *slots, *offsets;
  size_t ns, no;
  if (!get_args(env, info, 3, argv, "bindDrain") || !get_handle(env, argv[0], &h) ||
      !get_typed(env, argv[1], "slots", napi_uint32_array, &slots, &ns) ||
      !get_typed(env, argv[2], "offsets", napi_uint32_array, &offsets, &no))
    return NULL;
  struct bound_drain *b = calloc(1, sizeof *b);
  if (b == NULL) {
    napi_throw_error(env, NULL, "bindDrain: out of memory");
    return NULL;
  }
  b->h = h;
  b->slots = slots;
  b->offsets = offsets;
  b->len = ns < no ? ns : no;
  napi_value fn;
  if (napi_create_reference(env, argv[0], 1, &b->vm_ref) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &b->slots_ref) != napi_ok ||
      napi_create_reference(env, argv[2], 1, &b->offsets_ref) != napi_ok ||
      napi_create_function(env, "drain", NAPI_AUTO_LENGTH, js_bound_drain, b, &fn) != napi_ok ||
      napi_add_finalizer(env, fn, b, bound_drain_finalize, NULL, NULL) != napi_ok) {
    if (b->vm_ref) napi_delete_reference(env, b->vm_ref);
    if (b->slots_ref) napi_delete_reference(env, b->slots_ref);
    if (b->offsets_ref) napi_delete_reference(env, b->offsets_ref);
    free(b);
    napi_throw_error(env, NULL, "bindDrain: could not create the function");
    return NULL;
  }
  return fn;
}

/*
 * harvestRounds(vm, pages, rounds, slots, offsets, us, seen): the benchmark's plain C loop
 * (harvest-rounds.c) on this guest, from this thread; us[r] and seen[r] (Float64Arrays of at least
 * `rounds`) get each round's drain+reset microseconds and entries.
 */
static napi_value js_harvest_rounds(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  struct vm *vm;
  uint32_t pages, rounds;
  void *slots, *offsets, *us, *seen;
  size_t ns, no, nu, nseen;
  if (!get_args(env, info, 7, argv, "harvestRounds") || !get_vm(env, argv[0], &vm) ||
      !get_u32(env, argv[1], "pages", &pages) || !get_u32(env, argv[2], "rounds", &rounds) ||
      !get_typed(env, argv[3], "slots", napi_uint32_array, &slots, &ns) ||
      !get_typed(env, argv[4], "offsets", napi_uint32_array, &offsets, &no) ||
      !get_typed(env, argv[5], "us", napi_float64_array, &us, &nu) ||
      !get_typed(env, argv[6], "seen", napi_float64_array, &seen, &nseen))
    return NULL;
  if (nu < rounds || nseen < rounds) {
    char msg[128];
    snprintf(msg, sizeof msg, "us and seen must hold %u rounds, they hold %zu and %zu", rounds, nu, nseen);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  size_t cap = ns < no ? ns : no;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  struct vm_error e;
  if (vm_harvest_rounds(vm, pages, rounds, slots, offsets, (uint32_t)cap, us, seen, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return undefined(env);
}

/* crc32c(data: Uint8Array, tableOnly: boolean): the CRC-32C of data (tableOnly: without the crc32 instruction). */
static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  void *data;
  size_t len;
  bool table_only;
  if (!get_args(env, info, 2, argv, "crc32c") || !get_typed(env, argv[0], "data", napi_uint8_array, &data, &len) ||
      !get_bool(env, argv[1], "tableOnly", &table_only))
    return NULL;
  return number(env, (double)(table_only ? crc32c_sw(0, data, len) : crc32c(0, data, len)));
}

/* threadCpuMs(): the CPU time of the calling thread, in milliseconds (CLOCK_THREAD_CPUTIME_ID). */
static napi_value js_thread_cpu_ms(napi_env env, napi_callback_info info) {
  (void)info;
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) {
    napi_throw_error(env, "CKPT_ERR_KVM_SYSCALL", strerror(errno));
    return NULL;
  }
  return number(env, (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6);
}

static napi_value js_parse_ring(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  void *ring, *slot_pages_d, *out_slots, *out_offsets;
  size_t ring_len, nslots, ns, no;
  uint32_t entries, fetch;
  if (!get_args(env, info, 6, argv, "parseRing") || !get_typed(env, argv[0], "ring", napi_uint8_array, &ring, &ring_len) ||
      !get_u32(env, argv[1], "ringEntries", &entries) || !get_u32(env, argv[2], "fetchIndex", &fetch) ||
      !get_typed(env, argv[3], "slotPages", napi_float64_array, &slot_pages_d, &nslots) ||
      !get_typed(env, argv[4], "outSlots", napi_uint32_array, &out_slots, &ns) ||
      !get_typed(env, argv[5], "outOffsets", napi_uint32_array, &out_offsets, &no))
    return NULL;
  char msg[160];
  if (entries == 0 || (entries & (entries - 1)) != 0 || entries > (1U << 26)) {
    snprintf(msg, sizeof msg, "ringEntries must be a power of two in 1..%u, got %u", 1U << 26, entries);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  if (ring_len < (size_t)entries * 16) {
    snprintf(msg, sizeof msg, "ring holds %zu bytes, %u entries need %zu", ring_len, entries, (size_t)entries * 16);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  if (((uintptr_t)ring & 7) != 0) {
    napi_throw_range_error(env, NULL, "ring must start at an 8-byte aligned address (byteOffset a multiple of 8)");
    return NULL;
  }
  if (nslots > 65536) {
    napi_throw_range_error(env, NULL, "slotPages must have at most 65536 entries (16-bit slot ids)");
    return NULL;
  }
  /* One small conversion buffer per call (slot count, not entry count). */
  uint64_t *pages = malloc((nslots > 0 ? nslots : 1) * sizeof *pages);
  if (pages == NULL) {
    napi_throw_error(env, NULL, "cannot parse the ring: out of memory");
    return NULL;
  }
  const double *sp = slot_pages_d;
  for (size_t i = 0; i < nslots; i++) {
    if (!(sp[i] >= 0 && sp[i] <= 4294967296.0) || floor(sp[i]) != sp[i]) {
      free(pages);
      snprintf(msg, sizeof msg, "slotPages[%zu] must be an integer in 0..2^32, got %g", i, sp[i]);
      napi_throw_range_error(env, NULL, msg);
      return NULL;
    }
    pages[i] = (uint64_t)sp[i];
  }
  size_t cap = ns < no ? ns : no;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  struct ring_parse_result r;
  ring_parse(ring, entries, fetch, pages, (uint32_t)nslots, out_slots, out_offsets, (uint32_t)cap, &r);
  free(pages);
  napi_value arr;
  NAPI_OK(env, napi_create_array_with_length(env, 3, &arr));
  /* nextFetchIndex is fetchIndex + consumed, not wrapped: the caller owns the index's width. */
  double vals[3] = {r.valid, r.invalid, (double)fetch + r.consumed};
  for (uint32_t i = 0; i < 3; i++) {
    napi_value x = number(env, vals[i]);
    if (x == NULL) return NULL;
    NAPI_OK(env, napi_set_element(env, arr, i, x));
  }
  return arr;
}

/* ---------------------------------------------------------------- memory */

static napi_value js_read_pages(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  struct vm *vm;
  void *slots, *offsets, *out;
  size_t ns, no, out_len;
  uint32_t count;
  if (!get_args(env, info, 5, argv, "readPages") || !get_vm(env, argv[0], &vm) ||
      !get_typed(env, argv[1], "slots", napi_uint32_array, &slots, &ns) ||
      !get_typed(env, argv[2], "offsets", napi_uint32_array, &offsets, &no) ||
      !get_u32(env, argv[3], "count", &count) || !get_typed(env, argv[4], "out", napi_uint8_array, &out, &out_len))
    return NULL;
  if (count > ns || count > no) {
    char msg[128];
    snprintf(msg, sizeof msg, "count (%u) exceeds slots.length (%zu) or offsets.length (%zu)", count, ns, no);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  struct vm_error e;
  if (vm_read_pages(vm, slots, offsets, count, out, out_len, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return undefined(env);
}

static napi_value js_read_ranges(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  struct vm *vm;
  void *slots, *firsts, *counts, *out;
  size_t ns, nf, nc, out_len;
  uint32_t n;
  bool resident;
  if (!get_args(env, info, 7, argv, "readRanges") || !get_vm(env, argv[0], &vm) ||
      !get_typed(env, argv[1], "slots", napi_uint32_array, &slots, &ns) ||
      !get_typed(env, argv[2], "firsts", napi_uint32_array, &firsts, &nf) ||
      !get_typed(env, argv[3], "counts", napi_uint32_array, &counts, &nc) || !get_u32(env, argv[4], "n", &n) ||
      !get_typed(env, argv[5], "out", napi_uint8_array, &out, &out_len) ||
      !get_bool(env, argv[6], "resident", &resident))
    return NULL;
  if (n > ns || n > nf || n > nc) {
    char msg[160];
    snprintf(msg, sizeof msg, "n (%u) exceeds the length of slots (%zu), firsts (%zu) or counts (%zu)", n, ns, nf, nc);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  struct vm_error e;
  int64_t bytes = vm_read_ranges(vm, slots, firsts, counts, n, out, out_len, resident, &e);
  if (bytes < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return number(env, (double)bytes);
}

static napi_value js_write_range(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  struct vm *vm;
  uint32_t slot;
  uint64_t first;
  void *src;
  size_t len;
  if (!get_args(env, info, 4, argv, "writeRange") || !get_vm(env, argv[0], &vm) || !get_u32(env, argv[1], "slot", &slot) ||
      !get_uint(env, argv[2], "firstPage", (double)UINT32_MAX, &first) ||
      !get_typed(env, argv[3], "src", napi_uint8_array, &src, &len))
    return NULL;
  struct vm_error e;
  if (vm_write_range(vm, slot, first, src, len, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return undefined(env);
}

static napi_value js_guest_counters(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct vm *vm;
  void *out;
  size_t len;
  if (!get_args(env, info, 2, argv, "guestCounters") || !get_vm(env, argv[0], &vm) ||
      !get_typed(env, argv[1], "out", napi_float64_array, &out, &len))
    return NULL;
  if (len < 2 * (size_t)vm_vcpu_count(vm)) {
    char msg[128];
    snprintf(msg, sizeof msg, "out must hold 2 * vcpus = %u numbers, got %zu", 2 * vm_vcpu_count(vm), len);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  vm_guest_counters(vm, out);
  return undefined(env);
}

/* ---------------------------------------------------------------- vCPU state */

static napi_value js_get_vcpu_state(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct vm *vm;
  uint32_t index;
  void *out;
  size_t len;
  if (!get_args(env, info, 3, argv, "getVcpuState") || !get_vm(env, argv[0], &vm) ||
      !get_u32(env, argv[1], "index", &index) || !get_typed(env, argv[2], "out", napi_uint8_array, &out, &len))
    return NULL;
  struct vm_error e;
  int n = vm_get_vcpu_state(vm, index, out, len, &e);
  if (n < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return number(env, n);
}

static napi_value js_set_vcpu_state(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct vm *vm;
  uint32_t index;
  void *src;
  size_t len;
  if (!get_args(env, info, 3, argv, "setVcpuState") || !get_vm(env, argv[0], &vm) ||
      !get_u32(env, argv[1], "index", &index) || !get_typed(env, argv[2], "src", napi_uint8_array, &src, &len))
    return NULL;
  struct vm_error e;
  if (vm_set_vcpu_state(vm, index, src, len, &e) < 0) {
    throw_vm_error(env, &e);
    return NULL;
  }
  return undefined(env);
}

/* ---------------------------------------------------------------- diagnostics */

static napi_value js_stats(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct vm *vm;
  void *out;
  size_t len;
  if (!get_args(env, info, 2, argv, "stats") || !get_vm(env, argv[0], &vm) ||
      !get_typed(env, argv[1], "out", napi_float64_array, &out, &len))
    return NULL;
  if (len < VM_STAT_LENGTH) {
    char msg[96];
    snprintf(msg, sizeof msg, "out must hold %d numbers (NativeStat.Length), got %zu", VM_STAT_LENGTH, len);
    napi_throw_range_error(env, NULL, msg);
    return NULL;
  }
  vm_stats(vm, out);
  return undefined(env);
}

static napi_value js_last_error(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct vm_handle *h;
  if (!get_args(env, info, 1, argv, "lastError") || !get_handle(env, argv[0], &h)) return NULL;
  char buf[256];
  bool has = h->vm != NULL ? vm_last_error(h->vm, buf, sizeof buf) : h->has_last_error;
  if (h->vm == NULL && has) snprintf(buf, sizeof buf, "%s", h->last_error);
  napi_value v;
  if (!has) {
    NAPI_OK(env, napi_get_null(env, &v));
    return v;
  }
  NAPI_OK(env, napi_create_string_utf8(env, buf, NAPI_AUTO_LENGTH, &v));
  return v;
}

/* ---------------------------------------------------------------- module */

static napi_value guest_layout(napi_env env) {
  napi_value o;
  NAPI_OK(env, napi_create_object(env, &o));
  set_number_prop(env, o, "pageTablesGpa", (double)GUEST_PAGE_TABLES_GPA);
  set_number_prop(env, o, "controlGpa", (double)GUEST_CONTROL_GPA);
  set_number_prop(env, o, "statusGpa", (double)GUEST_STATUS_GPA);
  set_number_prop(env, o, "statusStride", (double)GUEST_STATUS_STRIDE);
  set_number_prop(env, o, "codeGpa", (double)GUEST_CODE_GPA);
  set_number_prop(env, o, "stacksGpa", (double)GUEST_STACKS_GPA);
  set_number_prop(env, o, "stackBytes", (double)GUEST_STACK_BYTES);
  set_number_prop(env, o, "regionGpa", (double)GUEST_REGION_GPA);
  set_number_prop(env, o, "regionEndGpa", (double)GUEST_REGION_END_GPA);
  set_number_prop(env, o, "probeGpa", (double)GUEST_PROBE_GPA);
  set_number_prop(env, o, "maxVcpus", GUEST_MAX_VCPUS);
  set_number_prop(env, o, "maxGib", (double)GUEST_MAX_GIB);
  set_number_prop(env, o, "stampMagic", GUEST_STAMP_MAGIC);
  NAPI_OK(env, napi_object_freeze(env, o));
  return o;
}

NAPI_MODULE_INIT() {
  const napi_property_descriptor fns[] = {
      {"probe", NULL, js_probe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createVm", NULL, js_create_vm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"start", NULL, js_start, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pause", NULL, js_pause, NULL, NULL, NULL, napi_enumerable, NULL},
      {"resume", NULL, js_resume, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bindDrain", NULL, js_bind_drain, NULL, NULL, NULL, napi_enumerable, NULL},
      {"reset", NULL, js_reset, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readPages", NULL, js_read_pages, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readRanges", NULL, js_read_ranges, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writeRange", NULL, js_write_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getVcpuState", NULL, js_get_vcpu_state, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setVcpuState", NULL, js_set_vcpu_state, NULL, NULL, NULL, napi_enumerable, NULL},
      {"grantWrites", NULL, js_grant_writes, NULL, NULL, NULL, napi_enumerable, NULL},
      {"guestCounters", NULL, js_guest_counters, NULL, NULL, NULL, napi_enumerable, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lastError", NULL, js_last_error, NULL, NULL, NULL, napi_enumerable, NULL},
      {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"parseRing", NULL, js_parse_ring, NULL, NULL, NULL, napi_enumerable, NULL},
      {"crc32c", NULL, js_crc32c, NULL, NULL, NULL, napi_enumerable, NULL},
      {"threadCpuMs", NULL, js_thread_cpu_ms, NULL, NULL, NULL, napi_enumerable, NULL},
      {"harvestRounds", NULL, js_harvest_rounds, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_OK(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  napi_value layout = guest_layout(env);
  if (layout == NULL) return NULL;
  napi_value state_bytes = number(env, (double)vm_vcpu_state_bytes());
  if (state_bytes == NULL) return NULL;
  napi_value crc_impl;
  NAPI_OK(env, napi_create_string_utf8(env, crc32c_impl(), NAPI_AUTO_LENGTH, &crc_impl));
  const napi_property_descriptor values[] = {
      {"vcpuStateBytes", NULL, NULL, NULL, NULL, state_bytes, napi_enumerable, NULL},
      {"guestLayout", NULL, NULL, NULL, NULL, layout, napi_enumerable, NULL},
      {"crc32cImpl", NULL, NULL, NULL, NULL, crc_impl, napi_enumerable, NULL},
  };
  NAPI_OK(env, napi_define_properties(env, exports, sizeof values / sizeof values[0], values));
  return exports;
}
