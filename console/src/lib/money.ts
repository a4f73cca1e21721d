// Amounts a person types (a top-up, a margin), checked the way the API checks them
// before a request is made: a positive decimal with at most the currency's minor
// places (ISO 4217: 2 for USD and EUR, 0 for JPY, 3 for BHD), never turned into a
// float on the way.

import { money } from "./format";

/** The currency's minor places (ISO 4217), from the browser's own tables; 2 when
 *  the code is unknown to it. */
export function minorUnits(currency: string): number {
  try {
    return (
      new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
        .maximumFractionDigits ?? 2
    );
  } catch {
    return 2;
  }
}

export type Parsed = { ok: true; amount: string } | { ok: false; error: string };

/** "1,250.5" USD -> "1250.5"; "10.001" USD, "5.5" JPY, "0", "-3", "abc" -> why not. */
export function parseAmount(input: string, currency: string): Parsed {
  const text = input.trim().replace(/[\s,_]/g, "");
  if (!text) return { ok: false, error: "Enter an amount." };
  if (!/^\d+(\.\d*)?$|^\.\d+$/.test(text)) {
    return { ok: false, error: "Enter a positive amount in digits, such as 25.00." };
  }
  const [whole, fraction = ""] = text.split(".");
  const places = minorUnits(currency);
  if (fraction.replace(/0+$/, "").length > places) {
    return {
      ok: false,
      error:
        places === 0
          ? `${currency} has no minor unit: enter a whole amount.`
          : `${currency} amounts have at most ${places} decimal places.`,
    };
  }
  const digits = (whole.replace(/^0+(?=\d)/, "") || "0") + (fraction ? `.${fraction}` : "");
  if (!/[1-9]/.test(digits)) return { ok: false, error: "The amount must be more than zero." };
  return { ok: true, amount: digits };
}

/** A ledger amount with its sign shown both ways: "+25.00 USD", "−0.13 USD". */
export function signedMoney(amount: string, currency: string): string {
  const shown = money(amount, currency);
  return amount.startsWith("-") || !/[1-9]/.test(amount) ? shown : `+${shown}`;
}
