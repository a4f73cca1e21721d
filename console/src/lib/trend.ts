// A wallet's balance over a window, from its ledger (each entry's signed amount and
// the balance after it): the figures exactly (decimal strings, never a float), and a
// step line's points for a 100 x 24 sparkline. Pure: no DOM.

export interface LedgerPoint {
  amount: string;
  balance_after: string;
  created_at: string;
}

export interface Trend {
  /** The balance when the window opened. */
  first: string;
  /** The balance now less `first`, signed ("-12.50", "30.00"). */
  change: string;
  /** [x, y]: x from 0 (the window's start) to 100 (now); y from 22 (low) to 2 (high). */
  points: [number, number][];
}

const places = (v: string) => (v.includes(".") ? v.length - v.indexOf(".") - 1 : 0);

function scaled(v: string, n: number): bigint {
  const negative = v.startsWith("-");
  const [whole, fraction = ""] = (negative ? v.slice(1) : v).split(".");
  const digits = BigInt((whole || "0") + fraction.padEnd(n, "0"));
  return negative ? -digits : digits;
}

function decimal(v: bigint, n: number): string {
  const negative = v < 0n;
  const digits = (negative ? -v : v).toString().padStart(n + 1, "0");
  const text = n ? `${digits.slice(0, -n)}.${digits.slice(-n)}` : digits;
  return negative ? `-${text}` : text;
}

/**
 * `entries`: the window's, newest first, as `GET /wallet/ledger` gives them (the
 * newest page of them: a busy wallet has more than one page a month, and the line
 * then starts at the oldest one read); `opening`: the balance when the window opened
 * (the `balance_after` of the last entry before it; "0" when there is none, as every
 * wallet starts empty); `since` and `now` in ms.
 */
export function trend(
  entries: LedgerPoint[],
  balance: string,
  opening: string,
  since: number,
  now: number = Date.now(),
): Trend {
  const chronological = entries
    .map((e) => ({ ...e, t: Date.parse(e.created_at) }))
    .filter((e) => Number.isFinite(e.t))
    .reverse();
  const n = Math.max(
    places(balance),
    places(opening),
    ...chronological.flatMap((e) => [places(e.amount), places(e.balance_after)]),
  );
  const current = scaled(balance, n);
  const start = scaled(opening, n);
  // A step line: the balance holds until the next entry moves it.
  const samples: [number, bigint][] = [[since, start]];
  let held = start;
  for (const e of chronological) {
    const t = Math.max(e.t, since);
    samples.push([t, held]);
    held = scaled(e.balance_after, n);
    samples.push([t, held]);
  }
  samples.push([Math.max(now, since), current]);
  const values = samples.map(([, v]) => Number(v));
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = Math.max(1, now - since);
  const points: [number, number][] = samples.map(([t, v]) => [
    Math.round(Math.min(100, Math.max(0, ((t - since) / span) * 100)) * 100) / 100,
    high === low ? 12 : Math.round((22 - ((Number(v) - low) / (high - low)) * 20) * 100) / 100,
  ]);
  return { first: decimal(start, n), change: decimal(current - start, n), points };
}
