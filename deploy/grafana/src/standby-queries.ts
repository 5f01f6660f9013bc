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

/** VMs a harvester checkpoints that are not protected: no standby yet, an old one, or a stale one. */
export const AT_RISK_VMS = `max by (vm) (ckpt_harvester_last_epoch) unless on (vm) (${PROTECTED_VMS})`;

/** VMs whose standby image is stale. */
export const STALE_VMS = `${vmStale()} == 1`;
