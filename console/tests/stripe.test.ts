import { afterEach, describe, expect, it, vi } from "vitest";
import { confirmation, loadStripe, type StripeFactory } from "../src/lib/stripe";

// A document just big enough for the loader: scripts appended to <head>, and the
// window Stripe.js defines `Stripe` on.
function fakeDocument() {
  const win: { Stripe?: StripeFactory } = {};
  type Script = { src: string; onload?: () => void; onerror?: () => void; removed: boolean; remove(): void };
  const scripts: Script[] = [];
  const doc = {
    defaultView: win,
    createElement: (): Script => {
      const script: Script = {
        src: "",
        removed: false,
        remove() {
          script.removed = true;
        },
      };
      return script;
    },
    head: { appendChild: (s: Script) => scripts.push(s) },
  };
  return { doc: doc as unknown as Document, win, scripts };
}

const factory = (() => ({})) as unknown as StripeFactory;

afterEach(() => vi.useRealTimers());

describe("loading Stripe.js", () => {
  it("adds the script once and resolves with the Stripe it defines", async () => {
    const { doc, win, scripts } = fakeDocument();
    const url = "https://js.stripe.com/v3/?once";
    const first = loadStripe(url, doc);
    const second = loadStripe(url, doc);
    expect(scripts).toHaveLength(1);
    expect(scripts[0].src).toBe(url);
    win.Stripe = factory;
    scripts[0].onload?.();
    expect(await first).toBe(factory);
    expect(await second).toBe(factory);
    // Defined already: no second script.
    expect(await loadStripe(url, doc)).toBe(factory);
    expect(scripts).toHaveLength(1);
  });

  it("rejects a script that fails to load, and may be tried again", async () => {
    const { doc, scripts } = fakeDocument();
    const url = "https://js.stripe.com/v3/?fails";
    const failed = loadStripe(url, doc);
    scripts[0].onerror?.();
    await expect(failed).rejects.toThrow(/could not be loaded: card payments are unavailable/);
    expect(scripts[0].removed).toBe(true);
    void loadStripe(url, doc).catch(() => {});
    expect(scripts).toHaveLength(2);
  });

  it("gives up on a script that never answers, and on one without Stripe", async () => {
    vi.useFakeTimers();
    const { doc, scripts } = fakeDocument();
    const hung = loadStripe("https://js.stripe.com/v3/?hangs", doc, 1000);
    vi.advanceTimersByTime(1000);
    await expect(hung).rejects.toThrow(/did not load in time/);
    const empty = loadStripe("https://js.stripe.com/v3/?empty", doc, 1000);
    scripts[1].onload?.();
    await expect(empty).rejects.toThrow(/loaded without Stripe/);
  });
});

describe("what the payer is told", () => {
  it("passes Stripe's own message for a declined card", () => {
    expect(confirmation({ error: { type: "card_error", message: "Your card was declined." } })).toEqual({
      ok: false,
      message: "Your card was declined.",
    });
    expect(confirmation({ error: {} }).message).toBe("The card was not accepted.");
  });

  it("is paid when the PaymentIntent succeeded or is processing, and not otherwise", () => {
    expect(confirmation({ paymentIntent: { status: "succeeded" } }).ok).toBe(true);
    expect(confirmation({ paymentIntent: { status: "processing" } })).toMatchObject({ ok: true });
    expect(confirmation({ paymentIntent: { status: "requires_action" } }).ok).toBe(false);
    expect(confirmation({}).ok).toBe(false);
  });
});
