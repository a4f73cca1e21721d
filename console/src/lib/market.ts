// Pure helpers of the API pages (creator portal, marketplace, subscriptions): a plan's
// terms in words, a plan form to its wire body, an environment text to its object, an
// OpenAPI document to the endpoints a listing shows, and NDJSON lines from a stream.

import { money } from "./format";
import type { Plan } from "./types";

/** A plan's terms as a consumer reads them. */
export function planTerms(plan: Plan): string {
  const c = plan.currency;
  switch (plan.model) {
    case "free":
      return plan.included_calls ? `${plan.included_calls} calls a month, free` : "Free";
    case "pay_per_use":
      return `${money(plan.price_per_call, c)} a call`;
    case "freemium":
      return `${plan.included_calls ?? 0} calls a month free, then ${money(plan.price_per_call, c)} a call`;
    case "monthly":
      return `${money(plan.monthly_price, c)} a month for ${plan.included_calls ?? 0} calls${
        plan.overage_price ? `, then ${money(plan.overage_price, c)} a call` : ""
      }`;
    default:
      return plan.model;
  }
}

/** A plan as the publish form holds it: every field a string, as typed. */
export interface PlanDraft {
  name: string;
  model: "free" | "pay_per_use" | "freemium" | "monthly";
  included_calls: string;
  price_per_call: string;
  monthly_price: string;
  overage_price: string;
  rate_limit_per_minute: string;
}

export const emptyPlan = (model: PlanDraft["model"] = "free"): PlanDraft => ({
  name: "",
  model,
  included_calls: "",
  price_per_call: "",
  monthly_price: "",
  overage_price: "",
  rate_limit_per_minute: "60",
});

/** The fields each model takes (the API refuses the others with a 422). */
export const PLAN_FIELDS: Record<PlanDraft["model"], (keyof PlanDraft)[]> = {
  free: ["included_calls"],
  pay_per_use: ["price_per_call"],
  freemium: ["included_calls", "price_per_call"],
  monthly: ["monthly_price", "included_calls", "overage_price"],
};

/** The wire body (`PlanIn`) of a draft: only the fields its model takes, blanks left
 *  out, prices as the decimal strings typed (the API checks them), counts as numbers. */
export function planBody(draft: PlanDraft): Record<string, string | number> {
  const body: Record<string, string | number> = { name: draft.name.trim(), model: draft.model };
  for (const field of PLAN_FIELDS[draft.model]) {
    const value = String(draft[field] ?? "").trim();
    if (!value) continue;
    body[field] = field === "included_calls" ? Number(value) : value;
  }
  const rate = String(draft.rate_limit_per_minute ?? "").trim();
  if (rate) body.rate_limit_per_minute = Number(rate);
  return body;
}

/** A listed plan as a draft to edit (what `planBody` sends back unchanged). */
export function planDraft(plan: Plan): PlanDraft {
  const model = plan.model as PlanDraft["model"];
  const text = (v: string | number | null | undefined) => (v === null || v === undefined ? "" : String(v));
  return {
    name: plan.name,
    model,
    included_calls: text(plan.included_calls),
    price_per_call: text(plan.price_per_call),
    monthly_price: text(plan.monthly_price),
    overage_price: text(plan.overage_price),
    rate_limit_per_minute: text(plan.rate_limit_per_minute ?? 60),
  };
}

/** "KEY=value" lines to an environment; blank lines and "#" comments skipped. A line
 *  without "=" or with an empty name is an error naming its line. */
export function parseEnvironment(text: string): { env: Record<string, string>; error: string } {
  const env: Record<string, string> = {};
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) return { env: {}, error: `Line ${i + 1}: write NAME=value` };
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return { env, error: "" };
}

/** One rule of an API's units (`PUT /apis/{id}` `units`): what a matching call weighs. */
export interface UnitRule {
  method: string;
  path: string;
  units: number;
}

/** Rules as lines to edit: "POST /v1/translate 5", one a line. */
export function unitsText(rules: UnitRule[]): string {
  return rules.map((r) => `${r.method} ${r.path} ${r.units}`).join("\n");
}

/** "METHOD PATH UNITS" lines (blank lines and "#" comments skipped) to rules, in
 *  order (the first match wins); a line not of that shape is an error naming it. The
 *  API checks the rest (methods, paths, at most 100 rules). */
export function parseUnits(text: string): { rules: UnitRule[]; error: string } {
  const rules: UnitRule[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const parts = line.split(/\s+/);
    const units = Number(parts[2]);
    if (parts.length !== 3 || !Number.isInteger(units) || units < 1) {
      return { rules: [], error: `Line ${i + 1}: write METHOD PATH UNITS, e.g. POST /v1/translate 5` };
    }
    rules.push({ method: parts[0].toUpperCase(), path: parts[1], units });
  }
  return { rules, error: "" };
}

export interface Endpoint {
  method: string;
  path: string;
  summary: string;
  parameters: { name: string; in: string; required: boolean; description: string }[];
  responses: { status: string; description: string }[];
}

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/** The operations of an OpenAPI document, in its order of paths, methods in HTTP's
 *  usual order. Anything malformed is skipped, never thrown: the document is the
 *  creator's. */
export function endpointsOf(doc: unknown): Endpoint[] {
  const paths = (doc as { paths?: unknown } | null)?.paths;
  if (!paths || typeof paths !== "object") return [];
  const found: Endpoint[] = [];
  for (const [path, item] of Object.entries(paths as Record<string, unknown>)) {
    if (!item || typeof item !== "object") continue;
    const shared = asArray((item as Record<string, unknown>).parameters);
    for (const method of METHODS) {
      const op = (item as Record<string, unknown>)[method] as Record<string, unknown> | undefined;
      if (!op || typeof op !== "object") continue;
      const parameters = [...shared, ...asArray(op.parameters)]
        .filter((p): p is Record<string, unknown> => !!p && typeof p === "object" && "name" in p)
        .map((p) => ({
          name: String(p.name),
          in: String(p.in ?? ""),
          required: p.required === true,
          description: String(p.description ?? ""),
        }));
      const responses = Object.entries((op.responses as Record<string, unknown>) ?? {}).map(
        ([status, r]) => ({
          status,
          description: String((r as { description?: unknown } | null)?.description ?? ""),
        }),
      );
      found.push({
        method: method.toUpperCase(),
        path,
        summary: String(op.summary ?? op.description ?? ""),
        parameters,
        responses,
      });
    }
  }
  return found;
}

function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** Splits a byte stream's text into lines (NDJSON): `push` a decoded chunk, get the
 *  whole lines it completed; `end` gives what is left. Blank lines are dropped. */
export class LineSplitter {
  private rest = "";

  push(chunk: string): string[] {
    const text = this.rest + chunk;
    const parts = text.split("\n");
    this.rest = parts.pop() ?? "";
    return parts.map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
  }

  end(): string[] {
    const last = this.rest.trim();
    this.rest = "";
    return last ? [last] : [];
  }
}

/** The gateway URL of an API's slug, from the console's own origin. */
export function gatewayUrl(origin: string, slug: string, path = "/"): string {
  return `${origin}/gw/${slug}${path.startsWith("/") ? path : `/${path}`}`;
}

/** Latency as the metrics show it: "12 ms", "1.2 s", "–" for none. */
export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  if (value >= 1000) return `${Math.round(value / 100) / 10} s`;
  return `${Math.round(value * 10) / 10} ms`;
}
