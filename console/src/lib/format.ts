// Figures as the console shows them: an absolute figure beside its percentage,
// money as the API gives it (a decimal string in the currency's minor units, never
// turned into a float), times relative to now.

/** "3 of 10 (30%)"; "3 GB of 8 GB (38%)"; no limit: "3 (no limit)". */
export function usedOf(used: number, limit: number | null | undefined, unit = ""): string {
  const u = unit ? ` ${unit}` : "";
  if (limit === null || limit === undefined) return `${number(used)}${u} (no limit)`;
  return `${number(used)}${u} of ${number(limit)}${u} (${percent(used, limit)})`;
}

/** A share as a whole percent; below 1% but above 0 it says "<1%", never a false 0%. */
export function percent(part: number, whole: number): string {
  if (!(whole > 0)) return "–";
  const p = (part / whole) * 100;
  if (p > 0 && p < 1) return "<1%";
  return `${Math.round(p)}%`;
}

/** At most two decimals, none when whole: 1, 1.5, 0.25. */
export function number(value: number): string {
  if (!Number.isFinite(value)) return "–";
  return Number.isInteger(value) ? String(value) : String(Math.round(value * 100) / 100);
}

/** Money from the wire ("45.67", "USD") as "45.67 USD", digits untouched. */
export function money(amount: string | null | undefined, currency: string): string {
  if (amount === null || amount === undefined || amount === "") return "–";
  const negative = amount.startsWith("-");
  const digits = negative ? amount.slice(1) : amount;
  const [whole, fraction] = digits.split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${negative ? "−" : ""}${grouped}${fraction !== undefined ? `.${fraction}` : ""} ${currency}`;
}

/** "just now", "5 min ago", "3 h ago", "2 d ago", then the date. */
export function ago(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "–";
  const s = Math.round((now - t) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  if (s < 30 * 86400) return `${Math.round(s / 86400)} d ago`;
  return new Date(t).toISOString().slice(0, 10);
}

/** Counts by status, largest first, for "2 running, 1 stopped". */
export function countBy<T>(items: T[], key: (item: T) => string): [string, number][] {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

/** Bytes in binary units: "512 B", "1.5 KiB", "12.25 MiB", "2 GiB". */
export function bytes(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = value;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${number(v)} ${units[i]}`;
}
