// The console's graphs, drawn by uPlot on a canvas. This module is imported only
// with import() by the pages that draw (a VM's detail), so uPlot is a chunk of its
// own and never in the first page's JavaScript.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { Shaped } from "./series";

export interface ChartSpec {
  shaped: Shaped;
  /** The right axis: a percent as an absolute figure ("0.5 vCPU", "256 MiB"). */
  absolute: (percent: number) => string;
  width: number;
  height?: number;
  /** Called once the first frame is drawn (for the render budget's mark). */
  onDrawn?: () => void;
}

function css(name: string, fallback: string): string {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** A percent graph (0-100) of a metric's average and peak, absolute on the right. */
export function drawChart(target: HTMLElement, spec: ChartSpec): uPlot {
  const text = css("--muted", "#57606a");
  const grid = css("--border", "#d0d7de");
  const avg = css("--primary", "#0b57d0");
  const peak = css("--focus", "#e37400");
  let told = false;
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
  const options: uPlot.Options = {
    width: spec.width,
    height: spec.height ?? 180,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: [0, 100] } },
    series: [
      {},
      { label: "Average", stroke: avg, width: 2, spanGaps: false, points: { show: false } },
      { label: "Max", stroke: peak, width: 1, dash: [4, 3], spanGaps: false, points: { show: false } },
    ],
    axes: [
      { ...axis },
      { ...axis, size: 48, values: (_u, ticks) => ticks.map((t) => `${t}%`) },
      {
        ...axis,
        side: 1,
        scale: "y",
        size: 72,
        grid: { show: false },
        values: (_u, ticks) => ticks.map((t) => spec.absolute(t)),
      },
    ],
    hooks: {
      draw: [
        () => {
          if (!told) {
            told = true;
            spec.onDrawn?.();
          }
        },
      ],
    },
  };
  const { x, avg: a, max: m } = spec.shaped;
  return new uPlot(options, [x, a, m] as uPlot.AlignedData, target);
}

export interface CountSeries {
  label: string;
  values: (number | null)[];
  /** A CSS custom property for the line's colour, and its fallback. */
  color: [string, string];
}

/** Counts over time (requests per bucket and the like): one line each, from zero. */
export function drawCounts(
  target: HTMLElement,
  spec: { x: number[]; series: CountSeries[]; width: number; height?: number },
): uPlot {
  const text = css("--muted", "#57606a");
  const grid = css("--border", "#d0d7de");
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
  const options: uPlot.Options = {
    width: spec.width,
    height: spec.height ?? 180,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
    series: [
      {},
      ...spec.series.map((s) => ({
        label: s.label,
        stroke: css(s.color[0], s.color[1]),
        width: 2,
        points: { show: false },
      })),
    ],
    axes: [{ ...axis }, { ...axis, size: 56 }],
  };
  return new uPlot(options, [spec.x, ...spec.series.map((s) => s.values)] as uPlot.AlignedData, target);
}
