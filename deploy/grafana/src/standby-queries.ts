/**
 * How the dashboards read the replicator's per-VM gauges. A replicator drops the series of a VM whose
 * partition it loses at a rebalance, but around a rebalance (and with an instance that is stuck) two
 * instances may report the same VM. All instances write the same Redis standby, so the image is as
 * fresh as the freshest report: the age is the minimum across instances, the applied epoch the
 * maximum, while flags (stale, epochs behind) take the worst.
 */

/** A standby older than this is not counted as protecting its VM (epochs are cut every 50 ms by default). */
export const FRESH_STANDBY_SECONDS = 10;

/** Standby age per VM (`matchers` filters, e.g. `vm="$vm"`): what a failover now would lose. */
export const standbyAge = (matchers = ''): string => `min by (vm) (ckpt_replicator_standby_age_seconds${matchers ? `{${matchers}}` : ''})`;

/** 1 per VM whose standby image is stale (waiting for a baseline), 0 otherwise. */
export const vmStale = (matchers = ''): string => `max by (vm) (ckpt_replicator_vm_stale${matchers ? `{${matchers}}` : ''})`;

/**
 * Epochs seen on the topic but not yet applied, per VM: the owner's view (`min`) while two instances
 * report a VM around a rebalance, as the alerts take it (docs/alerts.md).
 */
export const lagEpochs = (matchers = ''): string => `min by (vm) (ckpt_replicator_lag_epochs${matchers ? `{${matchers}}` : ''})`;

/** VMs (one series each) whose standby is fresh and not stale: a failover now loses at most its age. */
export const PROTECTED_VMS = `(${standbyAge()} < ${FRESH_STANDBY_SECONDS}) unless on (vm) (${vmStale()} == 1)`;

/**
 * The series that name a VM: its harvester's (one process per guest) and the standby age a replicator
 * reports for it. The second outlives the first when the VM's host is lost (the harvester's series go
 * stale with it, while the replicator keeps reporting the standby a failover needs, docs/alerts.md).
 */
export const VM_SERIES = ['ckpt_harvester_last_epoch', 'ckpt_replicator_standby_age_seconds'] as const;

/**
 * Every VM known now, one series each: those a harvester checkpoints and those with a standby, so a VM
 * whose host was lost (no harvester series any more) still counts, exactly when it matters.
 */
export const KNOWN_VMS = `max by (vm) (${VM_SERIES[0]}) or ${standbyAge()}`;

/**
 * VMs known (a harvester or a standby) that are not protected: no standby yet, an old one, or a stale
 * one. A VM whose harvester is gone stays here as its standby ages, until a harvester protects it again
 * or it is retired (its standby deleted from Redis, docs/alerts.md).
 */
export const AT_RISK_VMS = `(${KNOWN_VMS}) unless on (vm) (${PROTECTED_VMS})`;

/** The `$vm` variable's query: every VM with a harvester or a standby series in the selected range. */
export const VM_VARIABLE_QUERY = `label_values({__name__=~"${VM_SERIES.join('|')}"}, vm)`;

/** VMs whose standby image is stale. */
export const STALE_VMS = `${vmStale()} == 1`;
