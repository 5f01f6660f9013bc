/**
 * CPU time of processes, for figures like "CPU milliseconds per MB carried" that hold on a shared,
 * noisy machine better than throughput does.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticksPerSecond: number | undefined;

/** The kernel's clock ticks per second (/proc's unit for CPU times); 100 when getconf cannot say. */
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/**
 * CPU milliseconds a process has used (user + system, all its threads, plus its children it has
 * waited for, such as redis-server's AOF rewrites), from /proc/<pid>/stat. Null when it cannot be read:
 * the process is gone, or this is not Linux.
 */
export function processCpuMs(pid: number): number | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces: fields are counted from after its closing parenthesis,
  // where field 3 (state) is index 0; utime, stime, cutime, cstime are fields 14-17.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  return Number.isFinite(ticks) ? (ticks * 1000) / clockTicks() : null;
}
