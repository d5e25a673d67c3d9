/**
 * The memory this process may use: the kernel's MemAvailable (Linux; capped by a cgroup
 * v2 memory.max when one is set), the installed memory elsewhere (macOS counts cached
 * pages as used, so its free count would refuse runs that fit).
 */
import { readFileSync } from "node:fs";
import { freemem, totalmem } from "node:os";

function readNumber(path: string, pattern: RegExp, scale: number): number | null {
  try {
    const m = pattern.exec(readFileSync(path, "utf8"));
    return m ? Number(m[1]) * scale : null;
  } catch {
    return null;
  }
}

/** Bytes this process may allocate before the machine runs out (see above). */
export function availableMemoryBytes(): number {
  if (process.platform !== "linux") return process.platform === "darwin" ? totalmem() : freemem();
  const available = readNumber("/proc/meminfo", /^MemAvailable:\s+(\d+) kB$/m, 1024) ?? freemem();
  const cgroupMax = readNumber("/sys/fs/cgroup/memory.max", /^(\d+)\s*$/, 1);
  return cgroupMax === null ? available : Math.min(available, cgroupMax);
}
