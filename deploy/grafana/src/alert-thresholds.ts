/**
 * Limits that the dashboards colour by and the alert rules (deploy/prometheus/rules) fire on, written
 * once here: the rules are YAML and cannot import them, so deploy/test/dashboards.test.ts fails when a
 * rule's threshold and the value here differ.
 */

/** CkptPauseP99OverBudget fires when a VM's checkpoint pause p99 stays above this (10 ms); panels turn red from it. */
export const PAUSE_P99_BUDGET_SECONDS = 0.01;

/** Half the budget: panels turn orange from it, before the alert. */
export const PAUSE_P99_WATCH_SECONDS = PAUSE_P99_BUDGET_SECONDS / 2;
