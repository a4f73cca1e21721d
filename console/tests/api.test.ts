import { describe, expect, it } from "vitest";
import { Api, ApiError, memoryStore, type AuthResult } from "../src/lib/api";

// A scripted server: each call is recorded, and answered by the route's handler.
type Handler = (body: any, headers: Record<string, string>) => [number, unknown];

function server(routes: Record<string, Handler>) {
  const calls: { method: string; path: string; body: any; headers: Record<string, string> }[] = [];
  const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), "http://nefos.test");
    const method = init?.method ?? "GET";
    const headers = (init?.headers ?? {}) as Record<string, string>;
    const body = init?.body ? JSON.parse(String(init.body)) : undefined;
    calls.push({ method, path: url.pathname + url.search, body, headers });
    const handler = routes[`${method} ${url.pathname}`];
    const [status, payload] = handler
      ? handler(body, headers)
      : [404, { success: false, error: { code: "NOT_FOUND", message: "no route" } }];
    // A real macrotask, like a network answer: concurrent callers really overlap.
    await new Promise((resolve) => setTimeout(resolve, 1));
    return new Response(JSON.stringify(payload), { status });
  };
  return { fetch: fetch as typeof globalThis.fetch, calls };
}

const ok = (data: unknown): [number, unknown] => [200, { success: true, data, error: null }];
const user = { id: "u1", email: "a@example.com", default_project_id: "p1" };
const pair = (n: number, expiresIn = 7200): AuthResult => ({
  user,
  access_token: `access-${n}`,
  refresh_token: `refresh-${n}`,
  expires_in: expiresIn,
});

function clock(start = 1_000_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

describe("Api sessions", () => {
  it("sends the access token it got at login and keeps only the refresh token in the store", async () => {
    const store = memoryStore();
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1)),
      "GET /api/v1/auth/me": () => ok(user),
    });
    const api = new Api({ fetch: srv.fetch, store });
    await api.login("a@example.com", "pw");
    await api.get("/auth/me");
    expect(srv.calls[0].body).toEqual({ email: "a@example.com", password: "pw" });
    expect(srv.calls[0].headers.Authorization).toBeUndefined();
    expect(srv.calls[1].headers.Authorization).toBe("Bearer access-1");
    expect(store.load()).toBe("refresh-1");
  });

  it("logs in by username when the identity has no @", async () => {
    const srv = server({ "POST /api/v1/auth/login": () => ok(pair(1)) });
    await new Api({ fetch: srv.fetch }).login("alice", "pw");
    expect(srv.calls[0].body).toEqual({ username: "alice", password: "pw" });
  });

  it("renews the access token before a call once it is within the margin of expiry", async () => {
    const c = clock();
    const store = memoryStore();
    let issued = 1;
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1, 3600)),
      "POST /api/v1/auth/refresh": (body) => {
        expect(body).toEqual({ refresh_token: `refresh-${issued}` });
        issued += 1;
        return ok(pair(issued, 3600));
      },
      "GET /api/v1/containers": () => ok({ items: [] }),
    });
    const api = new Api({ fetch: srv.fetch, now: c.now, store, marginMs: 60_000 });
    await api.login("a@example.com", "pw");

    c.t += 3600_000 - 61_000; // not yet within the margin
    await api.get("/containers");
    expect(srv.calls.map((x) => x.path)).not.toContain("/api/v1/auth/refresh");

    c.t += 2_000; // 59 s before expiry
    await api.get("/containers");
    const paths = srv.calls.map((x) => `${x.method} ${x.path}`);
    expect(paths.slice(-2)).toEqual(["POST /api/v1/auth/refresh", "GET /api/v1/containers"]);
    expect(srv.calls.at(-1)!.headers.Authorization).toBe("Bearer access-2");
    expect(store.load()).toBe("refresh-2");
  });

  it("caps the margin at half the token's life, so a short-lived token is not renewed on every call", async () => {
    const c = clock();
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1, 60)),
      "POST /api/v1/auth/refresh": () => ok(pair(2, 60)),
      "GET /api/v1/x": () => ok({}),
    });
    const api = new Api({ fetch: srv.fetch, now: c.now, marginMs: 60_000 });
    await api.login("a@example.com", "pw");
    c.t += 29_000;
    await api.get("/x");
    expect(srv.calls.filter((x) => x.path === "/api/v1/auth/refresh")).toHaveLength(0);
    c.t += 2_000;
    await api.get("/x");
    expect(srv.calls.filter((x) => x.path === "/api/v1/auth/refresh")).toHaveLength(1);
  });

  it("shares one renewal among concurrent calls (a second would replay a spent refresh token)", async () => {
    const c = clock();
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1, 100)),
      "POST /api/v1/auth/refresh": () => ok(pair(2, 100)),
      "GET /api/v1/x": () => ok({}),
    });
    const api = new Api({ fetch: srv.fetch, now: c.now });
    await api.login("a@example.com", "pw");
    c.t += 99_000;
    await Promise.all([api.get("/x"), api.get("/x"), api.get("/x")]);
    expect(srv.calls.filter((x) => x.path === "/api/v1/auth/refresh")).toHaveLength(1);
    const xs = srv.calls.filter((x) => x.path === "/api/v1/x");
    expect(xs.map((x) => x.headers.Authorization)).toEqual(Array(3).fill("Bearer access-2"));
  });

  it("retries once after a renewal when the server says token_expired (clocks disagree)", async () => {
    let calls = 0;
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1)),
      "POST /api/v1/auth/refresh": () => ok(pair(2)),
      "GET /api/v1/x": (_b, headers) => {
        calls += 1;
        if (headers.Authorization === "Bearer access-1") {
          return [401, { success: false, error: { code: "UNAUTHORIZED", message: "Token has expired", details: { reason: "token_expired" } } }];
        }
        return ok({ fine: true });
      },
    });
    const api = new Api({ fetch: srv.fetch });
    await api.login("a@example.com", "pw");
    expect(await api.get("/x")).toEqual({ fine: true });
    expect(calls).toBe(2);
  });

  it("signs out when the refresh token is refused, and tells the page", async () => {
    const c = clock();
    const seen: (string | null)[] = [];
    const store = memoryStore();
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1, 100)),
      "POST /api/v1/auth/refresh": () => [401, { success: false, error: { code: "UNAUTHORIZED", message: "Session revoked", details: { reason: "session_revoked" } } }],
    });
    const api = new Api({ fetch: srv.fetch, now: c.now, store, onUser: (u) => seen.push(u?.id ?? null) });
    await api.login("a@example.com", "pw");
    c.t += 100_000;
    await expect(api.get("/x")).rejects.toBeInstanceOf(ApiError);
    expect(api.signedIn).toBe(false);
    expect(store.load()).toBeNull();
    expect(seen).toEqual(["u1", null]);
  });

  it("restores a session after a reload from the stored refresh token", async () => {
    const store = memoryStore();
    store.save("refresh-7");
    const srv = server({ "POST /api/v1/auth/refresh": () => ok(pair(8)) });
    const api = new Api({ fetch: srv.fetch, store });
    expect((await api.restore())?.id).toBe("u1");
    expect(srv.calls[0].body).toEqual({ refresh_token: "refresh-7" });
    expect(store.load()).toBe("refresh-8");
  });

  it("logout revokes the refresh token on the server and forgets both tokens", async () => {
    const store = memoryStore();
    const srv = server({
      "POST /api/v1/auth/login": () => ok(pair(1)),
      "POST /api/v1/auth/logout": () => ok({}),
    });
    const api = new Api({ fetch: srv.fetch, store });
    await api.login("a@example.com", "pw");
    await api.logout();
    expect(srv.calls[1].body).toEqual({ refresh_token: "refresh-1" });
    expect(srv.calls[1].headers.Authorization).toBe("Bearer access-1");
    expect(api.signedIn).toBe(false);
    expect(store.load()).toBeNull();
  });
});

describe("Api envelopes", () => {
  it("turns an error envelope into an ApiError with the fields named", async () => {
    const srv = server({
      "POST /api/v1/containers": () => [422, { success: false, error: { code: "VALIDATION_ERROR", message: "Invalid input parameters", details: { name: "1-63 characters", request_id: "r1" } } }],
    });
    const api = new Api({ fetch: srv.fetch });
    const error: any = await api.post("/containers", { name: "!" }, { auth: false }).catch((e: any) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(422);
    expect(error.code).toBe("VALIDATION_ERROR");
    expect(error.describe()).toBe("Invalid input parameters (name: 1-63 characters)");
  });

  it("sends a form as multipart, leaving its Content-Type (and boundary) to fetch", async () => {
    let sent: RequestInit | undefined;
    const api = new Api({
      fetch: (async (_input: RequestInfo | URL, init?: RequestInit) => {
        sent = init;
        return new Response(JSON.stringify({ success: true, data: { image_id: "i1" }, error: null }), { status: 202 });
      }) as typeof fetch,
    });
    const form = new FormData();
    form.set("name", "tiny");
    form.set("disk", new Blob(["disk bytes"]), "tiny.qcow2");
    const answer = await api.upload<{ image_id: string }>("/images/upload", form, { auth: false, query: { project_id: "p1" } });
    expect(answer.image_id).toBe("i1");
    expect(sent?.body).toBe(form);
    expect((sent?.headers as Record<string, string>)["Content-Type"]).toBeUndefined();
    expect(sent?.method).toBe("POST");
  });

  it("builds query strings without empty parameters", () => {
    const api = new Api();
    expect(api.url("/marketplace/listings", { q: "weather api", category: "", sort: undefined, limit: 50 })).toBe(
      "/api/v1/marketplace/listings?q=weather+api&limit=50",
    );
  });

  it("reports an unreachable server as a NETWORK_ERROR, not a crash", async () => {
    const api = new Api({
      fetch: (async () => {
        throw new TypeError("Failed to fetch");
      }) as typeof fetch,
    });
    const error: any = await api.get("/x", undefined, { auth: false }).catch((e: any) => e);
    expect(error.code).toBe("NETWORK_ERROR");
  });
});

describe("Api network errors", () => {
  // A fetch that fails (TypeError, as a browser's does) the first `failures` times.
  function flaky(failures: number) {
    const calls: string[] = [];
    const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
      calls.push(`${init?.method ?? "GET"} ${new URL(String(input), "http://nefos.test").pathname}`);
      if (calls.length <= failures) throw new TypeError("Failed to fetch");
      return new Response(JSON.stringify({ success: true, data: { n: calls.length }, error: null }));
    };
    return { fetch: fetch as typeof globalThis.fetch, calls };
  }

  it("tries a read once more after a network error", async () => {
    const srv = flaky(1);
    const data = await new Api({ fetch: srv.fetch }).get<{ n: number }>("/marketplace/listings");
    expect(data).toEqual({ n: 2 });
    expect(srv.calls).toEqual(["GET /api/v1/marketplace/listings", "GET /api/v1/marketplace/listings"]);
  });

  it("gives up on a read after a second network error, with a NETWORK_ERROR", async () => {
    const srv = flaky(2);
    const failed = new Api({ fetch: srv.fetch }).get("/marketplace/listings");
    await expect(failed).rejects.toMatchObject({ status: 0, code: "NETWORK_ERROR" });
    expect(srv.calls).toHaveLength(2);
  });

  it("never sends a write twice (it may have arrived)", async () => {
    const srv = flaky(1);
    await expect(new Api({ fetch: srv.fetch }).post("/auth/register", {})).rejects.toBeInstanceOf(
      ApiError,
    );
    expect(srv.calls).toEqual(["POST /api/v1/auth/register"]);
  });
});
