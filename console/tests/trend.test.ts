import { describe, expect, it } from "vitest";
import { trend } from "../src/lib/trend";

const DAY = 86400_000;
const since = Date.parse("2026-11-01T00:00:00Z");
const now = since + 30 * DAY;
const at = (days: number) => new Date(since + days * DAY).toISOString();

describe("a wallet's balance over 30 days", () => {
  it("opens at the balance before the window, however many entries the window has", () => {
    // Only the newest entry of a busy window was read: the change is still exact.
    const t = trend([{ amount: "-0.01", balance_after: "7.99", created_at: at(29) }], "7.99", "25.00", since, now);
    expect(t.first).toBe("25.00");
    expect(t.change).toBe("-17.01");
    expect(t.points[0]).toEqual([0, 2]); // the highest, at the start
  });

  it("starts before the first entry and steps at each one, exactly", () => {
    const t = trend(
      [
        // newest first, as the ledger gives them
        { amount: "-0.30", balance_after: "19.70", created_at: at(20) },
        { amount: "10.00", balance_after: "20.00", created_at: at(10) },
      ],
      "19.70",
      "10.00",
      since,
      now,
    );
    expect(t.first).toBe("10.00");
    expect(t.change).toBe("9.70");
    expect(t.points[0]).toEqual([0, 22]); // the lowest, at the start
    expect(t.points.at(-1)?.[0]).toBe(100);
    // the top-up on day 10: a vertical step from the low to the high
    expect(t.points[1]).toEqual([33.33, 22]);
    expect(t.points[2]).toEqual([33.33, 2]);
  });

  it("is flat in the middle without entries, and keeps precision a float would lose", () => {
    const flat = trend([], "0.10", "0.10", since, now);
    expect(flat.change).toBe("0.00");
    expect(flat.points.every(([, y]) => y === 12)).toBe(true);
    const small = trend(
      [{ amount: "0.000000001", balance_after: "1234567890.100000001", created_at: at(1) }],
      "1234567890.100000001",
      "1234567890.1",
      since,
      now,
    );
    expect(small.first).toBe("1234567890.100000000");
    expect(small.change).toBe("0.000000001");
  });

  it("reads a falling balance as a negative change", () => {
    const t = trend([{ amount: "-5", balance_after: "0.50", created_at: at(29) }], "0.50", "5.50", since, now);
    expect(t.first).toBe("5.50");
    expect(t.change).toBe("-5.00");
  });
});
