// The console's one way to the API: fetch, the envelope unwrapped, credentials kept
// fresh the way the Python SDK does it (src/nefos/sdk/_client.py):
//
// * The access token lives in this object's memory only, never in storage.
// * Before each call, an access token that expires within `marginMs` (at most half
//   its lifetime) is renewed first with POST /auth/refresh; renewals are
//   single-flight (the server rotates refresh tokens, and replaying a spent one
//   revokes the whole session), so concurrent calls share one renewal.
// * A call answered 401 with details.reason "token_expired" (clocks disagree) is
//   retried once after one renewal.
// * The refresh token is kept in the tab's sessionStorage (a TokenStore), so that a
//   reload of the page can renew the session; it dies with the tab, and signing out
//   revokes it on the server.

import { LineSplitter } from "./market";

export interface ErrorBody {
  code: string;
  message: string;
  details?: Record<string, unknown> | null;
}

/** Wait before a read that met a network error is tried again. */
const RETRY_READ_MS = 250;

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown>;

  constructor(status: number, error: ErrorBody) {
    super(error.message);
    this.name = "ApiError";
    this.status = status;
    this.code = error.code;
    this.details = error.details ?? {};
  }

  /** The message with each field's complaint, for a form's alert. */
  describe(): string {
    const fields = Object.entries(this.details)
      .filter(([key, value]) => key !== "request_id" && typeof value === "string")
      .map(([key, value]) => `${key}: ${value as string}`);
    return fields.length ? `${this.message} (${fields.join("; ")})` : this.message;
  }
}

export interface User {
  id: string;
  email: string;
  username?: string | null;
  name?: string | null;
  role?: string;
  is_admin?: boolean;
  default_project_id?: string | null;
  [key: string]: unknown;
}

export interface AuthResult {
  user: User;
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

export interface TokenStore {
  load(): string | null;
  save(refreshToken: string | null): void;
}

export const memoryStore = (): TokenStore => {
  let value: string | null = null;
  return {
    load: () => value,
    save: (v) => {
      value = v;
    },
  };
};

export const sessionStore = (key = "nefos.refresh"): TokenStore => ({
  load: () => {
    try {
      return window.sessionStorage.getItem(key);
    } catch {
      return null; // storage disabled: a reload signs out
    }
  },
  save: (v) => {
    try {
      if (v) window.sessionStorage.setItem(key, v);
      else window.sessionStorage.removeItem(key);
    } catch {
      /* storage disabled */
    }
  },
});

interface Session {
  user: User;
  accessToken: string;
  expiresAt: number;
  lifetime: number;
}

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  body?: unknown;
  query?: Query;
  /** false: send no credentials (public routes, and the auth calls themselves). */
  auth?: boolean;
  signal?: AbortSignal;
  /** Extra headers (`Idempotency-Key` on a payment). */
  headers?: Record<string, string>;
  /** What to accept instead of JSON (an invoice's `text/html`). */
  accept?: string;
}

export interface ApiOptions {
  base?: string;
  fetch?: typeof fetch;
  now?: () => number;
  store?: TokenStore;
  marginMs?: number;
  onUser?: (user: User | null) => void;
}

export const DEFAULT_MARGIN_MS = 60_000;

export class Api {
  private readonly base: string;
  private readonly fetcher: typeof fetch;
  private readonly now: () => number;
  private readonly store: TokenStore;
  private readonly marginMs: number;
  private readonly onUser: (user: User | null) => void;
  private session: Session | null = null;
  private renewal: Promise<void> | null = null;

  constructor(options: ApiOptions = {}) {
    this.base = options.base ?? "/api/v1";
    this.fetcher = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.now = options.now ?? Date.now;
    this.store = options.store ?? memoryStore();
    this.marginMs = options.marginMs ?? DEFAULT_MARGIN_MS;
    this.onUser = options.onUser ?? (() => {});
  }

  get user(): User | null {
    return this.session?.user ?? null;
  }

  get signedIn(): boolean {
    return this.session !== null;
  }

  // --- sessions -------------------------------------------------------------------
  async login(identity: string, password: string): Promise<User> {
    const body = identity.includes("@")
      ? { email: identity, password }
      : { username: identity, password };
    return this.adopt(await this.request<AuthResult>("POST", "/auth/login", { body, auth: false }));
  }

  async register(fields: { email: string; password: string; name?: string }): Promise<User> {
    const body: Record<string, string> = { email: fields.email, password: fields.password };
    if (fields.name) body.name = fields.name;
    return this.adopt(
      await this.request<AuthResult>("POST", "/auth/register", { body, auth: false }),
    );
  }

  /** After a reload: renew the session from the stored refresh token, if any. */
  async restore(): Promise<User | null> {
    if (this.session) return this.session.user;
    if (!this.store.load()) return null;
    try {
      await this.renew();
    } catch {
      return null;
    }
    return this.user;
  }

  async logout(): Promise<void> {
    const refresh = this.store.load();
    if (this.session) {
      try {
        await this.request("POST", "/auth/logout", {
          body: refresh ? { refresh_token: refresh } : {},
        });
      } catch {
        /* signed out here whatever the server said */
      }
    }
    this.forget();
  }

  private adopt(result: AuthResult): User {
    const lifetime = Math.max(0, result.expires_in * 1000);
    this.session = {
      user: result.user,
      accessToken: result.access_token,
      expiresAt: this.now() + lifetime,
      lifetime,
    };
    this.store.save(result.refresh_token);
    this.onUser(result.user);
    return result.user;
  }

  private forget(): void {
    const had = this.session !== null;
    this.session = null;
    this.store.save(null);
    if (had) this.onUser(null);
  }

  private expiring(): boolean {
    const s = this.session;
    if (!s) return false;
    const margin = Math.min(this.marginMs, s.lifetime / 2);
    return this.now() >= s.expiresAt - margin;
  }

  /** One renewal at a time: callers that arrive meanwhile wait for the same one. */
  private renew(): Promise<void> {
    if (!this.renewal) {
      this.renewal = (async () => {
        const refresh = this.store.load();
        if (!refresh) {
          this.forget();
          throw new ApiError(401, { code: "UNAUTHORIZED", message: "Signed out" });
        }
        try {
          const result = await this.request<AuthResult>("POST", "/auth/refresh", {
            body: { refresh_token: refresh },
            auth: false,
          });
          this.adopt(result);
        } catch (error) {
          if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
            this.forget();
          }
          throw error;
        }
      })().finally(() => {
        this.renewal = null;
      });
    }
    return this.renewal;
  }

  // --- calls ----------------------------------------------------------------------
  url(path: string, query?: Query): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
    }
    const qs = params.toString();
    return `${this.base}${path}${qs ? `?${qs}` : ""}`;
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    return this.unwrap<T>(await this.exchange(method, path, options));
  }

  /** A route that answers other than JSON (an invoice's HTML): its text. Errors are
   *  the envelope's, as for any call. */
  async text(path: string, query?: Query, accept = "text/html"): Promise<string> {
    const answer = await this.exchange("GET", path, { query, accept });
    if (answer.status >= 200 && answer.status < 300) return answer.text;
    return this.unwrap<never>(answer);
  }

  /** Read the signed-in user again (after a change to the profile or the default
   *  project), for every page that shows it. */
  async refreshUser(): Promise<User> {
    const user = await this.get<User>("/auth/me");
    if (this.session) this.session.user = user;
    this.onUser(user);
    return user;
  }

  /** Change the password: the server ends every session and answers a new pair,
   *  which this session adopts. */
  async changePassword(fields: {
    current_password: string;
    new_password: string;
    revoke_api_keys?: boolean;
  }): Promise<User> {
    return this.adopt(await this.request<AuthResult>("PUT", "/users/password", { body: fields }));
  }

  private async exchange(
    method: string,
    path: string,
    options: RequestOptions,
  ): Promise<{ status: number; body: unknown; text: string }> {
    const auth = options.auth ?? true;
    if (auth && this.renewal) await this.renewal.catch(() => {});
    if (auth && this.expiring()) await this.renew();
    const first = await this.send(method, path, options, auth);
    if (
      auth &&
      first.status === 401 &&
      this.session &&
      (first.body as { error?: ErrorBody })?.error?.details?.reason === "token_expired"
    ) {
      await this.renew();
      return this.send(method, path, options, auth);
    }
    return first;
  }

  get<T>(path: string, query?: Query, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("GET", path, { ...options, query });
  }

  post<T>(path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("POST", path, { ...options, body: body ?? {} });
  }

  delete<T>(path: string, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("DELETE", path, options);
  }

  /** A multipart/form-data POST (an image's files): `form` as the browser encodes it. */
  upload<T>(path: string, form: FormData, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("POST", path, { ...options, body: form });
  }

  put<T>(path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("PUT", path, { ...options, body: body ?? {} });
  }

  patch<T>(path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>("PATCH", path, { ...options, body: body ?? {} });
  }

  private async send(
    method: string,
    path: string,
    options: RequestOptions,
    auth: boolean,
  ): Promise<{ status: number; body: unknown; text: string }> {
    const headers: Record<string, string> = {
      ...options.headers,
      Accept: options.accept ? `${options.accept}, application/json` : "application/json",
    };
    if (auth && this.session) headers.Authorization = `Bearer ${this.session.accessToken}`;
    let body: string | FormData | undefined;
    if (options.body instanceof FormData) {
      body = options.body; // multipart/form-data: the browser writes its boundary
    } else if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    let response: Response | undefined;
    // A read that meets a network error (the machine's network changed under the
    // browser: a new interface, another Wi-Fi) is tried once more; a write is not,
    // since it may have arrived.
    const attempts = method === "GET" || method === "HEAD" ? 2 : 1;
    for (let attempt = 1; response === undefined; attempt++) {
      try {
        response = await this.fetcher(this.url(path, options.query), {
          method,
          headers,
          body,
          signal: options.signal,
          credentials: "same-origin",
        });
      } catch (error) {
        if ((error as Error)?.name === "AbortError") throw error;
        if (attempt < attempts) {
          await new Promise((resolve) => setTimeout(resolve, RETRY_READ_MS));
          continue;
        }
        throw new ApiError(0, {
          code: "NETWORK_ERROR",
          message: "The server could not be reached; check your connection and try again.",
        });
      }
    }
    let parsed: unknown = null;
    const text = await response.text();
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    return { status: response.status, body: parsed, text };
  }

  private unwrap<T>(answer: { status: number; body: unknown }): T {
    const envelope = answer.body as { success?: boolean; data?: T; error?: ErrorBody } | null;
    if (answer.status >= 200 && answer.status < 300 && envelope && envelope.success !== false) {
      return envelope.data as T;
    }
    const error = envelope?.error ?? {
      code: answer.status >= 500 ? "INTERNAL_ERROR" : "HTTP_ERROR",
      message: `The server answered ${answer.status}`,
    };
    if (answer.status === 401 && this.session) {
      const reason = error.details?.reason;
      if (reason === "session_revoked" || reason === "invalid_token") this.forget();
    }
    throw new ApiError(answer.status, error);
  }

  /** A streamed answer (`application/x-ndjson`, e.g. `GET /apis/{id}/logs?follow=true`):
   *  each line's JSON to `onItem` as it arrives, until the server ends the stream or
   *  `signal` aborts it (then it resolves quietly). An error answer throws its
   *  ApiError, as `request` does. */
  async stream<T>(
    path: string,
    query: Query,
    onItem: (item: T) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    if (this.renewal) await this.renewal.catch(() => {});
    if (this.expiring()) await this.renew();
    const headers: Record<string, string> = { Accept: "application/x-ndjson" };
    if (this.session) headers.Authorization = `Bearer ${this.session.accessToken}`;
    let response: Response;
    try {
      response = await this.fetcher(this.url(path, query), {
        method: "GET",
        headers,
        signal,
        credentials: "same-origin",
      });
    } catch (error) {
      if ((error as Error)?.name === "AbortError") return;
      throw new ApiError(0, {
        code: "NETWORK_ERROR",
        message: "The server could not be reached; check your connection and try again.",
      });
    }
    if (!response.ok || !response.body) {
      const text = await response.text();
      let parsed: unknown = null;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        parsed = null;
      }
      this.unwrap({ status: response.ok ? 502 : response.status, body: parsed });
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const lines = new LineSplitter();
    const emit = (line: string) => {
      try {
        onItem(JSON.parse(line) as T);
      } catch {
        /* a line cut by an abort: skipped */
      }
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lines.push(value).forEach(emit);
      }
      lines.end().forEach(emit);
    } catch (error) {
      if ((error as Error)?.name !== "AbortError") throw error;
    }
  }
}

/** A list page of any list route. */
export interface Page<T> {
  items: T[];
  pagination: {
    page: number | null;
    limit: number;
    total: number | null;
    pages: number | null;
    next_cursor?: string | null;
  };
}

/** What to tell the person about a failed call: the API's own message. */
export function describe(error: unknown): string {
  return error instanceof ApiError ? error.describe() : String(error);
}

/** A fresh `Idempotency-Key` (also where crypto.randomUUID is not offered: plain http). */
export function idempotencyKey(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
