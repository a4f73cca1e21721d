// What a VM's page decides without the network: which actions its status allows,
// how the serial log grows between two reads, and when to read it again.

/** Statuses that are on the way somewhere: the page waits for the event that ends them. */
export const TRANSITIONAL = ["creating", "starting", "stopping", "rebooting", "resizing", "deleting"];

export type VmAction = "start" | "stop" | "reboot" | "resize" | "delete" | "snapshot" | "backup";

/** The actions the API accepts in a status (docs/api.md, "compute II"): deleting
 * from any status but "deleting"; reboot while running; resize, snapshots and
 * backups while stopped. */
export function allowed(status: string): Set<VmAction> {
  switch (status) {
    case "running":
      return new Set(["stop", "reboot", "delete"]);
    case "stopped":
      return new Set(["start", "resize", "delete", "snapshot", "backup"]);
    case "error":
      return new Set(["start", "stop", "delete"]);
    case "deleting":
    case "deleted":
      return new Set();
    default:
      return new Set(["delete"]);
  }
}

/**
 * What to write to the terminal when the log read before was `before` and now is
 * `after`. The API answers the last N lines, so once the log is longer than that its
 * start moves on: the new text is what follows the end of `before` found in `after`.
 * When nothing of `before` is found (the VM was recreated, the log rotated), the
 * terminal starts over.
 */
export function consoleDelta(before: string, after: string): { reset: boolean; append: string } {
  if (after === before) return { reset: false, append: "" };
  if (after.startsWith(before)) return { reset: false, append: after.slice(before.length) };
  // The last two lines of what we have (at most 256 characters), found in what came.
  const anchor = before.split("\n").slice(-3).join("\n").slice(-256);
  if (anchor.length >= 16) {
    const at = after.lastIndexOf(anchor);
    if (at >= 0) return { reset: false, append: after.slice(at + anchor.length) };
  }
  return { reset: true, append: after };
}

/**
 * The serial log's reads while a VM boots: quick at first, then backing off, never
 * more than `attempts` reads (under five minutes in all with the defaults), so a page
 * left open does not read forever. A user's "Refresh" or a new boot starts again.
 */
export function backoffDelays(attempts = 24, firstMs = 1000, factor = 1.4, capMs = 15_000): number[] {
  const out: number[] = [];
  let d = firstMs;
  for (let i = 0; i < attempts; i++) {
    out.push(Math.round(d));
    d = Math.min(d * factor, capMs);
  }
  return out;
}

/** Memory as the API's sizes give it: 0.125 GB is 128 MiB. */
export function memoryLabel(memoryMb: number): string {
  return memoryMb < 1024 ? `${memoryMb} MiB` : `${Math.round((memoryMb / 1024) * 100) / 100} GiB`;
}
