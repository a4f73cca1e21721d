import { describe, expect, it } from "vitest";
import { minorUnits, parseAmount, signedMoney } from "../src/lib/money";

describe("minor units by currency (ISO 4217)", () => {
  it("knows two, none and three places", () => {
    expect(minorUnits("USD")).toBe(2);
    expect(minorUnits("EUR")).toBe(2);
    expect(minorUnits("JPY")).toBe(0);
    expect(minorUnits("BHD")).toBe(3);
    expect(minorUnits("KWD")).toBe(3);
  });
  it("falls back to two for a code it cannot read", () => {
    expect(minorUnits("not a code")).toBe(2);
  });
});

describe("an amount typed for a top-up", () => {
  it("keeps the digits as typed, without a float on the way", () => {
    expect(parseAmount("25", "USD")).toEqual({ ok: true, amount: "25" });
    expect(parseAmount(" 1,250.50 ", "USD")).toEqual({ ok: true, amount: "1250.50" });
    expect(parseAmount("0.10", "EUR")).toEqual({ ok: true, amount: "0.10" });
    expect(parseAmount("007.5", "USD")).toEqual({ ok: true, amount: "7.5" });
    expect(parseAmount(".5", "USD")).toEqual({ ok: true, amount: "0.5" });
    expect(parseAmount("0.1", "USD")).toEqual({ ok: true, amount: "0.1" });
    // 0.1 + 0.2 stays what was typed.
    expect(parseAmount("1234567890.12", "USD")).toEqual({ ok: true, amount: "1234567890.12" });
  });
  it("refuses more places than the currency has", () => {
    expect(parseAmount("10.001", "USD")).toMatchObject({ ok: false, error: expect.stringContaining("2 decimal places") });
    expect(parseAmount("10.5", "JPY")).toMatchObject({ ok: false, error: expect.stringContaining("whole amount") });
    expect(parseAmount("10.125", "BHD")).toEqual({ ok: true, amount: "10.125" });
    expect(parseAmount("10.1255", "BHD")).toMatchObject({ ok: false });
  });
  it("allows trailing zeros past the minor unit, which change nothing", () => {
    expect(parseAmount("10.500", "USD")).toEqual({ ok: true, amount: "10.500" });
    expect(parseAmount("500.0", "JPY")).toEqual({ ok: true, amount: "500.0" });
  });
  it("refuses nothing, zero, negatives and words", () => {
    expect(parseAmount("", "USD")).toMatchObject({ ok: false, error: "Enter an amount." });
    expect(parseAmount("0", "USD")).toMatchObject({ ok: false, error: expect.stringContaining("more than zero") });
    expect(parseAmount("0.00", "USD")).toMatchObject({ ok: false });
    expect(parseAmount("-5", "USD")).toMatchObject({ ok: false });
    expect(parseAmount("1e3", "USD")).toMatchObject({ ok: false });
    expect(parseAmount("ten", "USD")).toMatchObject({ ok: false });
    expect(parseAmount("1.2.3", "USD")).toMatchObject({ ok: false });
  });
});

describe("a ledger amount with its sign", () => {
  it("marks credits with + and debits with a minus sign", () => {
    expect(signedMoney("25.00", "USD")).toBe("+25.00 USD");
    expect(signedMoney("-0.13", "USD")).toBe("−0.13 USD");
    expect(signedMoney("1500", "JPY")).toBe("+1,500 JPY");
  });
  it("gives zero no sign", () => {
    expect(signedMoney("0.00", "USD")).toBe("0.00 USD");
  });
});
