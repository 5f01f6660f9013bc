/**
 * VM ids: the Kafka key of a VM's records and the hash tag of its Redis keys, so one rule for every
 * command and service.
 */
const VM_ID_RE = /^[A-Za-z0-9._:-]{1,200}$/;

/** The rule, for messages and help. */
export const VM_ID_RULE = '1-200 of A-Z a-z 0-9 . _ : -';

export function validVmId(vm: string): boolean {
  return VM_ID_RE.test(vm);
}

/** The configuration problem with `vm` given as `setting` (a flag or variable name), or null. */
export function vmIdProblem(setting: string, vm: string): string | null {
  return validVmId(vm) ? null : `${setting} ${JSON.stringify(vm)} is not a VM id (${VM_ID_RULE})`;
}
