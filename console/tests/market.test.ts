import { describe, expect, it } from "vitest";
import {
  LineSplitter,
  emptyPlan,
  endpointsOf,
  gatewayUrl,
  ms,
  parseEnvironment,
  parseUnits,
  planBody,
  planDraft,
  planTerms,
  unitsText,
} from "../src/lib/market";
import type { Plan } from "../src/lib/types";

const plan = (fields: Partial<Plan>): Plan => ({ id: "p", name: "P", model: "free", currency: "USD", ...fields });

describe("a plan's terms", () => {
  it("says each model in words, money as the API gives it", () => {
    expect(planTerms(plan({ model: "free" }))).toBe("Free");
    expect(planTerms(plan({ model: "free", included_calls: 100 }))).toBe("100 calls a month, free");
    expect(planTerms(plan({ model: "pay_per_use", price_per_call: "0.002" }))).toBe("0.002 USD a call");
    expect(planTerms(plan({ model: "freemium", included_calls: 3, price_per_call: "4.00" }))).toBe(
      "3 calls a month free, then 4.00 USD a call",
    );
    expect(planTerms(plan({ model: "monthly", monthly_price: "9.00", included_calls: 1000 }))).toBe(
      "9.00 USD a month for 1000 calls",
    );
    expect(
      planTerms(plan({ model: "monthly", monthly_price: "9.00", included_calls: 1000, overage_price: "0.01" })),
    ).toBe("9.00 USD a month for 1000 calls, then 0.01 USD a call");
  });
});

describe("a plan form's body", () => {
  it("sends only the fields its model takes, blanks left out, counts as numbers", () => {
    const draft = { ...emptyPlan("freemium"), name: " Basic ", included_calls: "3", price_per_call: "4.00", monthly_price: "9" };
    expect(planBody(draft)).toEqual({
      name: "Basic",
      model: "freemium",
      included_calls: 3,
      price_per_call: "4.00",
      rate_limit_per_minute: 60,
    });
    expect(planBody({ ...emptyPlan("free"), name: "Free", included_calls: "" })).toEqual({
      name: "Free",
      model: "free",
      rate_limit_per_minute: 60,
    });
  });
  it("takes a rate limit a number input made a number", () => {
    const draft = { ...emptyPlan("free"), name: "F", rate_limit_per_minute: 120 as unknown as string };
    expect(planBody(draft).rate_limit_per_minute).toBe(120);
  });
});

describe("a listed plan to edit", () => {
  it("comes back as the body it was published with, unchanged", () => {
    const listed = plan({ name: "Pro", model: "monthly", monthly_price: "9.00", included_calls: 1000, overage_price: null, rate_limit_per_minute: 120 });
    const draft = planDraft(listed);
    expect(draft.monthly_price).toBe("9.00");
    expect(draft.overage_price).toBe("");
    expect(planBody(draft)).toEqual({ name: "Pro", model: "monthly", monthly_price: "9.00", included_calls: 1000, rate_limit_per_minute: 120 });
    expect(planBody(planDraft(plan({ model: "free", rate_limit_per_minute: null })))).toEqual({ name: "P", model: "free", rate_limit_per_minute: 60 });
  });
});

describe("an environment from NAME=value lines", () => {
  it("keeps values whole, skips blanks and comments", () => {
    expect(parseEnvironment("MODE=production\n\n# note\nURL=http://x/?a=b\n")).toEqual({
      env: { MODE: "production", URL: "http://x/?a=b" },
      error: "",
    });
  });
  it("names the line it cannot read", () => {
    expect(parseEnvironment("A=1\nnot a pair").error).toBe("Line 2: write NAME=value");
    expect(parseEnvironment("=x").error).toBe("Line 1: write NAME=value");
  });
});

describe("the endpoints of an OpenAPI document", () => {
  it("lists operations with their parameters and answers", () => {
    const doc = {
      openapi: "3.1.0",
      paths: {
        "/forecast/{city}": {
          parameters: [{ name: "city", in: "path", required: true }],
          post: { summary: "Ask", responses: {} },
          get: {
            summary: "A forecast",
            parameters: [{ name: "days", in: "query", description: "How many" }],
            responses: { "200": { description: "OK" }, "404": {} },
          },
        },
      },
    };
    const found = endpointsOf(doc);
    expect(found.map((e) => `${e.method} ${e.path}`)).toEqual(["GET /forecast/{city}", "POST /forecast/{city}"]);
    expect(found[0].parameters).toEqual([
      { name: "city", in: "path", required: true, description: "" },
      { name: "days", in: "query", required: false, description: "How many" },
    ]);
    expect(found[0].responses).toEqual([
      { status: "200", description: "OK" },
      { status: "404", description: "" },
    ]);
  });
  it("never throws on a malformed document", () => {
    expect(endpointsOf(null)).toEqual([]);
    expect(endpointsOf({ paths: 3 })).toEqual([]);
    expect(endpointsOf({ paths: { "/x": null, "/y": { get: "no" } } })).toEqual([]);
  });
});

describe("NDJSON lines from a stream", () => {
  it("joins lines cut across chunks and keeps the unfinished one", () => {
    const s = new LineSplitter();
    expect(s.push('{"a":1}\n{"b"')).toEqual(['{"a":1}']);
    expect(s.push(':2}\r\n\n{"c":3')).toEqual(['{"b":2}']);
    expect(s.end()).toEqual(['{"c":3']);
    expect(s.end()).toEqual([]);
  });
});

describe("small figures", () => {
  it("writes gateway URLs and latencies", () => {
    expect(gatewayUrl("https://n.example", "weather-1a2b3c4d")).toBe("https://n.example/gw/weather-1a2b3c4d/");
    expect(gatewayUrl("http://h", "s", "v1/x")).toBe("http://h/gw/s/v1/x");
    expect(ms(12.345)).toBe("12.3 ms");
    expect(ms(1530)).toBe("1.5 s");
    expect(ms(null)).toBe("–");
  });
});

describe("an API's units as lines", () => {
  it("reads METHOD PATH UNITS lines in order, and writes them back", () => {
    const { rules, error } = parseUnits("post /v1/translate 5\n\n# all the rest\n* /v1/* 2\n");
    expect(error).toBe("");
    expect(rules).toEqual([
      { method: "POST", path: "/v1/translate", units: 5 },
      { method: "*", path: "/v1/*", units: 2 },
    ]);
    expect(unitsText(rules)).toBe("POST /v1/translate 5\n* /v1/* 2");
    expect(parseUnits("")).toEqual({ rules: [], error: "" });
  });
  it("names the line that is not of that shape", () => {
    expect(parseUnits("GET /a 1\nGET /b").error).toMatch(/^Line 2:/);
    expect(parseUnits("GET /a 0").error).toMatch(/^Line 1:/);
    expect(parseUnits("GET /a 1.5").error).toMatch(/^Line 1:/);
  });
});
