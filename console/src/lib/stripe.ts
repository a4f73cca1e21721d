// Cards through Stripe.js (https://docs.stripe.com/payments/accept-a-payment?ui=elements).
// Stripe.js is loaded from where the platform says (GET /payments/methods: Stripe's own
// https://js.stripe.com/v3/ in production), never bundled: Stripe requires its script
// from its own origin, and the console's Content-Security-Policy allows that origin
// only where cards are set up. The card form is Stripe's Payment Element; the card
// number never reaches Nefos.

/** The part of Stripe.js's API the console uses. */
export interface StripeError {
  type?: string;
  code?: string;
  message?: string;
}
export interface PaymentElement {
  mount(target: HTMLElement): void;
  on(event: "ready", handler: () => void): PaymentElement;
  destroy(): void;
}
export interface StripeElements {
  create(kind: "payment"): PaymentElement;
}
export interface Stripe {
  elements(options: { clientSecret: string; appearance?: { theme?: string } }): StripeElements;
  confirmPayment(options: {
    elements: StripeElements;
    redirect: "if_required";
    confirmParams: { return_url: string };
  }): Promise<{ error?: StripeError; paymentIntent?: { id: string; status: string } }>;
}
export type StripeFactory = (publishableKey: string) => Stripe;

export interface CardSettings {
  publishable_key: string;
  js_url: string;
}

const LOAD_TIMEOUT_MS = 20_000;
const loading = new Map<string, Promise<StripeFactory>>();

/** Stripe.js from `url`, loaded once (a failed load may be tried again). */
export function loadStripe(
  url: string,
  doc: Document = document,
  timeoutMs = LOAD_TIMEOUT_MS,
): Promise<StripeFactory> {
  const win = doc.defaultView as (Window & { Stripe?: StripeFactory }) | null;
  if (win?.Stripe) return Promise.resolve(win.Stripe);
  const pending = loading.get(url);
  if (pending) return pending;
  const promise = new Promise<StripeFactory>((resolve, reject) => {
    const script = doc.createElement("script");
    script.src = url;
    script.async = true;
    const timer = setTimeout(() => fail("Stripe.js did not load in time"), timeoutMs);
    function fail(message: string) {
      clearTimeout(timer);
      script.remove();
      loading.delete(url);
      reject(new Error(`${message}: card payments are unavailable; try again later.`));
    }
    script.onload = () => {
      clearTimeout(timer);
      const factory = win?.Stripe;
      if (factory) resolve(factory);
      else fail("Stripe.js loaded without Stripe");
    };
    script.onerror = () => fail("Stripe.js could not be loaded");
    doc.head.appendChild(script);
  });
  loading.set(url, promise);
  return promise;
}

/** What to tell the payer after `confirmPayment`. */
export function confirmation(result: {
  error?: StripeError;
  paymentIntent?: { status: string };
}): { ok: boolean; message: string } {
  if (result.error) {
    return { ok: false, message: result.error.message || "The card was not accepted." };
  }
  switch (result.paymentIntent?.status) {
    case "succeeded":
      return { ok: true, message: "Paid." };
    case "processing":
      return { ok: true, message: "The payment is processing; the wallet is credited once it clears." };
    default:
      return { ok: false, message: "The payment was not completed; try again." };
  }
}
