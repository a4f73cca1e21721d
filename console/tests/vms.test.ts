import { describe, expect, it } from "vitest";
import { bytes, cpuUsed, memoryUsed } from "../src/lib/format";
import {
  RANGES,
  cpuAbsolute,
  memoryAbsolute,
  containerPeriod,
  memoryMbOf,
  shape,
  summarize,
  usageOf,
  type SeriesPoint,
} from "../src/lib/series";
import { allowed, backoffDelays, consoleDelta, memoryLabel } from "../src/lib/vms";

const at = (minute: number) => new Date(Date.UTC(2026, 0, 10, 12, minute)).toISOString();

describe("series shaping", () => {
  it("keeps each point's average and peak, a raw sample's value as both", () => {
    const points: SeriesPoint[] = [
      { timestamp: at(0), value: 10, max: 30 },
      { timestamp: at(1), value: 20 },
    ];
    const s = shape(points, 60);
    expect(s.x).toEqual([Date.parse(at(0)) / 1000, Date.parse(at(1)) / 1000]);
    expect(s.avg).toEqual([10, 20]);
    expect(s.max).toEqual([30, 20]);
  });
  it("breaks the line over a gap longer than a step and a half", () => {
    const s = shape(
      [
        { timestamp: at(0), value: 1 },
        { timestamp: at(5), value: 2 },
      ],
      60,
    );
    expect(s.avg).toEqual([1, null, 2]);
    expect(s.x[1]).toBe(Date.parse(at(1)) / 1000);
  });
  it("shapes nothing into empty columns and skips bad timestamps", () => {
    expect(shape(undefined, 60)).toEqual({ x: [], avg: [], max: [] });
    expect(shape([{ timestamp: "nope", value: 1 }], 60).x).toEqual([]);
  });
  it("a month at one-hour resolution is 720 points per series", () => {
    const month = RANGES.find((r) => r.key === "month")!;
    const points = Array.from({ length: month.hours }, (_, i) => ({
      timestamp: new Date(Date.UTC(2026, 0, 1) + i * 3600_000).toISOString(),
      value: i % 100,
      max: 100,
    }));
    const s = shape(points, 3600);
    expect(s.x.length).toBe(720);
    expect(s.avg.includes(null)).toBe(false);
    const metrics = {
      resolution: "1h",
      step_seconds: 3600,
      metrics: { cpu_percent: points, memory_percent: points, memory_bytes: points },
    };
    const usage = usageOf(metrics as never);
    expect(usage.cpu.length + usage.memory.length).toBe(1440);
    expect(usage.resolution).toBe("1h");
  });
  it("a container's memory limit in MiB, as nefos.domain.units reads it", () => {
    expect(memoryMbOf("512m")).toBe(512);
    expect(memoryMbOf("1Gi")).toBe(1024);
    expect(memoryMbOf("256")).toBe(256);
    expect(memoryMbOf("1gb")).toBeCloseTo(953.67, 2);
    expect(memoryMbOf("")).toBeNull();
    expect(memoryMbOf(undefined)).toBeNull();
    expect(memoryMbOf("12 parsecs")).toBeNull();
  });
  it("a container's period for each range", () => {
    expect(RANGES.map((r) => containerPeriod(r.hours))).toEqual(["1h", "24h", "7d", "30d"]);
  });
});

describe("summaries", () => {
  it("averages the averages, takes the highest peak and the last value, skipping gaps", () => {
    const s = summarize({ x: [1, 2, 3], avg: [10, null, 30], max: [50, null, 40] });
    expect(s).toEqual({ avg: 20, max: 50, last: 30 });
    expect(summarize({ x: [], avg: [], max: [] })).toEqual({ avg: null, max: null, last: null });
  });
  it("turns percents of the VM's size into absolute figures", () => {
    expect(cpuAbsolute(25, 2)).toBe(0.5);
    expect(memoryAbsolute(50, 512)).toBe(256 * 1024 * 1024);
  });
});

describe("units", () => {
  it("bytes in binary units", () => {
    expect(bytes(0)).toBe("0 B");
    expect(bytes(512 * 1024 * 1024)).toBe("512 MiB");
    expect(bytes(1.5 * 1024 ** 3)).toBe("1.5 GiB");
    expect(bytes(123456)).toBe("121 KiB");
    expect(bytes(null)).toBe("–");
    expect(bytes(-1)).toBe("–");
  });
  it("CPU and memory, absolute beside the percent", () => {
    expect(cpuUsed(25, 2)).toBe("0.5 of 2 vCPUs (25%)");
    expect(cpuUsed(0.4, 1)).toBe("0 of 1 vCPU (<1%)");
    expect(cpuUsed(null, 1)).toBe("–");
    expect(memoryUsed(128 * 1024 * 1024, 512)).toBe("128 MiB of 512 MiB (25%)");
    expect(memoryUsed(undefined, 512)).toBe("–");
    expect(memoryLabel(128)).toBe("128 MiB");
    expect(memoryLabel(1536)).toBe("1.5 GiB");
  });
});

describe("a VM's actions", () => {
  it("offers what its status allows", () => {
    expect([...allowed("running")].sort()).toEqual(["delete", "reboot", "stop"]);
    expect(allowed("stopped").has("resize")).toBe(true);
    expect(allowed("stopped").has("snapshot")).toBe(true);
    expect(allowed("running").has("snapshot")).toBe(false);
    expect([...allowed("creating")]).toEqual(["delete"]);
    expect(allowed("deleting").size).toBe(0);
  });
});

describe("the serial log", () => {
  it("appends what is new", () => {
    expect(consoleDelta("", "boot\n")).toEqual({ reset: false, append: "boot\n" });
    expect(consoleDelta("boot\n", "boot\nready\n")).toEqual({ reset: false, append: "ready\n" });
    expect(consoleDelta("same", "same")).toEqual({ reset: false, append: "" });
  });
  it("follows a tail window whose start moved on", () => {
    const before = "line 1\nline 2 of the boot log\nline 3 of the boot log\n";
    const after = "line 2 of the boot log\nline 3 of the boot log\nline 4\n";
    expect(consoleDelta(before, after)).toEqual({ reset: false, append: "line 4\n" });
  });
  it("starts over when nothing of the old log is found", () => {
    expect(consoleDelta("an old boot log, long enough", "a new one\n")).toEqual({
      reset: true,
      append: "a new one\n",
    });
  });
  it("reads again on a bounded, backed-off schedule", () => {
    const d = backoffDelays();
    expect(d.length).toBe(24);
    expect(d[0]).toBe(1000);
    expect(d[1]).toBe(1400);
    expect(Math.max(...d)).toBe(15_000);
    for (let i = 1; i < d.length; i++) expect(d[i]).toBeGreaterThanOrEqual(d[i - 1]);
    const total = d.reduce((a, b) => a + b, 0);
    expect(total).toBeLessThan(5 * 60_000);
  });
});
