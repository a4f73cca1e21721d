// A VM's metrics (GET /monitoring/vm-metrics/{id}?hours=) shaped for a graph and for
// figures: CPU and memory, each an average and a peak per point, in percent of the
// VM's own size and in absolute terms (vCPUs, bytes). Pure: no DOM, no uPlot.

export interface SeriesPoint {
  timestamp: string;
  value: number;
  /** A 1m or 1h bucket's highest sample; a raw sample has none (its value is it). */
  max?: number | null;
}

export interface VmMetrics {
  vm_id: string;
  hours: number;
  start: string;
  end: string;
  resolution: string;
  step_seconds: number;
  metrics: Record<string, SeriesPoint[]>;
}

export interface Range {
  key: string;
  label: string;
  hours: number;
}

/** The graph's ranges; a month at the API's 1-hour resolution is 720 points. */
export const RANGES: Range[] = [
  { key: "hour", label: "Hour", hours: 1 },
  { key: "day", label: "Day", hours: 24 },
  { key: "week", label: "Week", hours: 24 * 7 },
  { key: "month", label: "Month", hours: 24 * 30 },
];

export type Column = (number | null)[];

/** Columns for a graph: x in epoch seconds; null where no sample was (a gap). */
export interface Shaped {
  x: number[];
  avg: Column;
  max: Column;
}

/**
 * One metric's points as aligned columns. Points further apart than 1.5 steps get a
 * null between them, so the line breaks over a time the VM was off instead of
 * drawing a straight line across it.
 */
export function shape(points: SeriesPoint[] | undefined, stepSeconds: number): Shaped {
  const x: number[] = [];
  const avg: Column = [];
  const max: Column = [];
  let previous: number | null = null;
  for (const p of points ?? []) {
    const t = Date.parse(p.timestamp) / 1000;
    if (!Number.isFinite(t)) continue;
    if (previous !== null && stepSeconds > 0 && t - previous > stepSeconds * 1.5) {
      x.push(previous + stepSeconds);
      avg.push(null);
      max.push(null);
    }
    x.push(t);
    avg.push(p.value);
    max.push(p.max ?? p.value);
    previous = t;
  }
  return { x, avg, max };
}

export interface Summary {
  /** Average of the points' averages (null: no data). */
  avg: number | null;
  /** The highest peak. */
  max: number | null;
  /** The newest point's value. */
  last: number | null;
}

export function summarize(shaped: Shaped): Summary {
  let sum = 0;
  let n = 0;
  let peak: number | null = null;
  let last: number | null = null;
  for (let i = 0; i < shaped.x.length; i++) {
    const a = shaped.avg[i];
    const m = shaped.max[i];
    if (a !== null) {
      sum += a;
      n++;
      last = a;
    }
    if (m !== null && (peak === null || m > peak)) peak = m;
  }
  return { avg: n ? sum / n : null, max: peak, last };
}

/** A share of the VM's vCPUs, in vCPUs: 25% of 2 is 0.5. */
export function cpuAbsolute(percent: number, cores: number): number {
  return (percent / 100) * cores;
}

/** A share of the VM's memory, in bytes. */
export function memoryAbsolute(percent: number, memoryMb: number): number {
  return (percent / 100) * memoryMb * 1024 * 1024;
}

/** The points of every series of a response: what the budget counts. */
export function pointCount(metrics: VmMetrics, names: string[]): number {
  return names.reduce((n, name) => n + (metrics.metrics[name]?.length ?? 0), 0);
}
