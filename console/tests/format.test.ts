import { describe, expect, it } from "vitest";
import { ago, bytes, countBy, money, number, percent, usedOf } from "../src/lib/format";

describe("absolute figures beside percentages", () => {
  it("shows what is used, of what, and the share", () => {
    expect(usedOf(3, 10)).toBe("3 of 10 (30%)");
    expect(usedOf(1.5, 8, "GB")).toBe("1.5 GB of 8 GB (19%)");
  });
  it("says when there is no limit instead of a percentage", () => {
    expect(usedOf(4, null)).toBe("4 (no limit)");
    expect(usedOf(2, undefined, "GB")).toBe("2 GB (no limit)");
  });
  it("never rounds a small share down to a false 0%", () => {
    expect(percent(1, 1000)).toBe("<1%");
    expect(percent(0, 1000)).toBe("0%");
    expect(percent(5, 0)).toBe("–");
  });
  it("keeps at most two decimals", () => {
    expect(number(0.333333)).toBe("0.33");
    expect(number(2)).toBe("2");
    expect(number(Number.NaN)).toBe("–");
  });
});

describe("money", () => {
  it("keeps the API's digits and groups thousands", () => {
    expect(money("1234567.50", "USD")).toBe("1,234,567.50 USD");
    expect(money("60", "JPY")).toBe("60 JPY");
    expect(money("-3.10", "EUR")).toBe("−3.10 EUR");
    expect(money(null, "EUR")).toBe("–");
  });
});

describe("times and counts", () => {
  const now = Date.parse("2026-01-10T12:00:00Z");
  it("says how long ago", () => {
    expect(ago("2026-01-10T11:59:50Z", now)).toBe("just now");
    expect(ago("2026-01-10T11:55:00Z", now)).toBe("5 min ago");
    expect(ago("2026-01-10T09:00:00Z", now)).toBe("3 h ago");
    expect(ago("2026-01-08T12:00:00Z", now)).toBe("2 d ago");
    expect(ago("2025-10-01T00:00:00Z", now)).toBe("2025-10-01");
    expect(ago("not a date", now)).toBe("–");
  });
  it("counts by status, largest first", () => {
    const items = [{ s: "running" }, { s: "stopped" }, { s: "running" }];
    expect(countBy(items, (i) => i.s)).toEqual([["running", 2], ["stopped", 1]]);
  });
});

describe("bytes", () => {
  it("uses binary units with three significant figures at most", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(1536)).toBe("1.5 KiB");
    expect(bytes(12.25 * 1024 * 1024)).toBe("12.3 MiB");
    expect(bytes(300.4 * 1024 * 1024)).toBe("300 MiB");
    expect(bytes(2 * 1024 ** 3)).toBe("2 GiB");
    expect(bytes(null)).toBe("–");
  });
});
