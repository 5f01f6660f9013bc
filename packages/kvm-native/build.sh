#!/usr/bin/env bash
# Builds the native KVM helper with plain gcc (no node-gyp, no downloads):
#   guest/out/guest.bin, guest-blob.h   the test guest (freestanding long-mode C)
#   build/Release/kvm_native.node       the Node-API addon
#   build/Release/kvm-harvest-baseline  the plain C harvest benchmark
#   build/Release/deny-kvm-cap          runs a program as on a kernel without some KVM capabilities
# Needs gcc, binutils (ld, objcopy) and the Node headers at <node prefix>/include/node
# (Debian: the nodejs package ships them in /usr/include/node). NODE_INCLUDE_DIR overrides.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

CC="${CC:-gcc}"
OBJCOPY="${OBJCOPY:-objcopy}"

die() {
  echo "kvm-native build: $*" >&2
  exit 1
}

command -v "$CC" >/dev/null 2>&1 || die "cannot find the C compiler '$CC' (apt-get install gcc)"
command -v "$OBJCOPY" >/dev/null 2>&1 || die "cannot find '$OBJCOPY' (apt-get install binutils)"

if [[ -z "${NODE_INCLUDE_DIR:-}" ]]; then
  node_bin="$(command -v node || true)"
  [[ -n "$node_bin" ]] || die "cannot find node to locate its headers; set NODE_INCLUDE_DIR=<dir containing node_api.h>"
  node_prefix="$(dirname "$(dirname "$(readlink -f "$node_bin")")")"
  NODE_INCLUDE_DIR="$node_prefix/include/node"
fi
[[ -f "$NODE_INCLUDE_DIR/node_api.h" ]] ||
  die "cannot find node_api.h in $NODE_INCLUDE_DIR: install the Node.js headers (Debian: they come with the nodejs package; nodejs.org tarballs ship include/node) or set NODE_INCLUDE_DIR"

out_guest="guest/out"
out_rel="build/Release"
mkdir -p "$out_guest" "$out_rel"

# Skip the build when nothing it reads changed since the last one (every `npm run drill` and `npm test`
# runs it): the sources, this script, the compiler, Node and its headers. CKPT_FORCE_BUILD=1 rebuilds.
stamp="$out_rel/.inputs.sha256"
inputs="$( (find src guest tools -path guest/out -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum
  sha256sum build.sh "$NODE_INCLUDE_DIR/node_api.h"; "$CC" --version | head -1; node --version) | sha256sum | cut -d' ' -f1)"
outputs=("$out_rel/kvm_native.node" "$out_rel/kvm-harvest-baseline" "$out_rel/deny-kvm-cap" "$out_guest/guest.bin")
if [[ "${CKPT_FORCE_BUILD:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$inputs" ]] && ls "${outputs[@]}" >/dev/null 2>&1; then
  echo "kvm-native build: up to date (CKPT_FORCE_BUILD=1 rebuilds)"
  exit 0
fi
rm -f "$stamp"

# ---- the guest: 64-bit, freestanding, general-purpose registers only (CR4.OSFXSR is clear).
GUEST_CFLAGS=(-m64 -ffreestanding -fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only -nostdlib -static -O2
  -fno-stack-protector -fcf-protection=none -fno-asynchronous-unwind-tables -Wall -Wextra -Werror -Iguest)
"$CC" "${GUEST_CFLAGS[@]}" -c guest/guest.c -o "$out_guest/guest.o"
"$CC" "${GUEST_CFLAGS[@]}" -c guest/entry.S -o "$out_guest/entry.o"
"$CC" "${GUEST_CFLAGS[@]}" -no-pie -Wl,-T,guest/guest.ld -Wl,--build-id=none -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
  -o "$out_guest/guest.elf" "$out_guest/entry.o" "$out_guest/guest.o"

# The host loads only the flat image: writable data would not survive a snapshot/restore.
writable="$(size -A "$out_guest/guest.elf" | awk '$1 == ".data" || $1 == ".bss" { s += $2 } END { print s + 0 }')"
[[ "$writable" == 0 ]] || die "the guest has $writable bytes of .data/.bss; keep all guest state on its stack"
entry="$(nm "$out_guest/guest.elf" | awk '$3 == "_start" { print $1 }')"
[[ "$entry" == "0000000000100000" ]] || die "the guest entry point is at 0x$entry, expected 0x100000"

"$OBJCOPY" -O binary "$out_guest/guest.elf" "$out_guest/guest.bin"
bash guest/bin-to-header.sh "$out_guest/guest.bin" "$out_guest/guest-blob.h"

# ---- the addon and the baseline tool share the VM core.
HOST_CFLAGS=(-std=gnu11 -O2 -fPIC -pthread -Wall -Wextra -Werror -Isrc -Iguest -I"$out_guest")
CORE=(src/kvm-vm.c src/vcpu-thread.c src/dirty-harvest.c src/harvest-rounds.c)

"$CC" "${HOST_CFLAGS[@]}" -I"$NODE_INCLUDE_DIR" -shared -fvisibility=hidden \
  -o "$out_rel/kvm_native.node.tmp" "${CORE[@]}" src/crc32c.c src/napi-binding.c -lm
mv "$out_rel/kvm_native.node.tmp" "$out_rel/kvm_native.node"

"$CC" "${HOST_CFLAGS[@]}" -o "$out_rel/kvm-harvest-baseline" tools/harvest-baseline.c "${CORE[@]}" -lm

# ---- runs a program as on a kernel without given KVM capabilities (tests of the "no dirty ring" path).
"$CC" -std=gnu11 -O2 -Wall -Wextra -Werror -o "$out_rel/deny-kvm-cap" tools/deny-kvm-cap.c

echo "$inputs" > "$stamp"
echo "kvm-native build: $out_rel/kvm_native.node, $out_rel/kvm-harvest-baseline, $out_rel/deny-kvm-cap (guest $(wc -c < "$out_guest/guest.bin") bytes)"
