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

/** What a graph of CPU and memory draws, whoever's metrics they are. */
export interface Usage {
  resolution: string;
  step_seconds: number;
  cpu: SeriesPoint[];
  memory: SeriesPoint[];
}

/** A VM's or a host's metrics (cpu_percent, memory_percent) as a graph's usage. */
export function usageOf(metrics: VmMetrics): Usage {
  return {
    resolution: metrics.resolution,
    step_seconds: metrics.step_seconds,
    cpu: metrics.metrics.cpu_percent ?? [],
    memory: metrics.metrics.memory_percent ?? [],
  };
}

/** The container metrics' period for a graph's range (seed 004's 1h, 24h, 7d, 30d). */
export function containerPeriod(hours: number): string {
  return hours <= 1 ? "1h" : hours <= 24 ? "24h" : hours <= 24 * 7 ? "7d" : "30d";
}

const MEMORY_UNITS: Record<string, number> = {
  b: 1,
  k: 1000,
  kb: 1000,
  ki: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mi: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gi: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  ti: 1024 ** 4,
  tib: 1024 ** 4,
};

/** A container's memory limit as the API keeps it ("512m", "1Gi", "256": MiB) in MiB;
 * null when there is none or it cannot be read (nefos.domain.units's units). */
export function memoryMbOf(text: string | null | undefined): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text ?? "");
  if (!m) return null;
  const unit = m[2].toLowerCase();
  const scale = unit === "" ? 1024 ** 2 : MEMORY_UNITS[unit];
  if (scale === undefined) return null;
  const mb = (Number(m[1]) * scale) / 1024 ** 2;
  return mb > 0 ? mb : null;
}
