/**
 * The test guest's fixed guest-physical layout (docs/guest-program.md). The native helper's
 * `guest/layout.h` holds the same numbers; a test checks that both agree.
 */
export const GUEST_LAYOUT = Object.freeze({
  pageTablesGpa: 0x1000,
  controlGpa: 0x80000,
  statusGpa: 0x81000,
  statusStride: 0x1000,
  codeGpa: 0x100000,
  stacksGpa: 0x110000,
  stackBytes: 0x4000,
  regionGpa: 0x400000,
  /** The workload region ends here at the latest: x86's APIC window, where KVM turns writes into MMIO exits. */
  regionEndGpa: 0xfec00000,
  /** The host makes KVM log this page to prove a ring seen full (the guest never touches it). */
  probeGpa: 0xff000,
  maxVcpus: 64,
  /** Largest KVM guest the guest program's page tables map (all slots), in GiB. */
  maxGib: 125,
  stampMagic: 0x4b43,
});

/** The workload region ends below x86's APIC window, so it stays under 4 GiB and page indexes stay 32-bit (in 4 KiB pages). */
export const GUEST_REACH_PAGES = GUEST_LAYOUT.regionEndGpa / 4096;

/** Smallest slot 0 the guest program fits in. */
export const MIN_SLOT0_BYTES = 8 * 1024 * 1024;
/** Slots are whole 2 MiB pages of the guest's identity map. */
export const SLOT_ALIGN_BYTES = 2 * 1024 * 1024;
