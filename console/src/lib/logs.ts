import type { OutputLine, ReplicaLogs } from "./types";

/** The replicas' logs with one followed line added at the end of its replica's text
 *  (a replica not shown yet is added, in slot order), each replica keeping its last
 *  `keep` lines. A new array: the page's state is replaced, not changed in place. */
export function appendOutput(logs: ReplicaLogs[], line: OutputLine, keep: number): ReplicaLogs[] {
  const known = logs.some((r) => r.replica === line.replica);
  const all = known
    ? logs
    : [...logs, { replica: line.replica, state: "running", logs: "" }].sort((a, b) => a.replica - b.replica);
  return all.map((r) => {
    if (r.replica !== line.replica) return r;
    const lines = r.logs ? r.logs.replace(/\n$/, "").split("\n") : [];
    lines.push(line.line);
    return { ...r, logs: lines.slice(-keep).join("\n") + "\n" };
  });
}
