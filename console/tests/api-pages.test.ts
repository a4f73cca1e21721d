import { describe, expect, it } from "vitest";
import { Api, ApiError, idempotencyKey, memoryStore, type AuthResult } from "../src/lib/api";

// What the billing and account pages ask of the Api beyond JSON calls: extra headers,
// a text answer (an invoice's HTML), a password change that replaces the session.

type Call = { method: string; path: string; headers: Record<string, string>; body: any };

function server(answer: (call: Call) => Response) {
  const calls: Call[] = [];
  const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), "http://nefos.test");
    const call = {
      method: init?.method ?? "GET",
      path: url.pathname + url.search,
      headers: (init?.headers ?? {}) as Record<string, string>,
      body: init?.body ? JSON.parse(String(init.body)) : undefined,
    };
    calls.push(call);
    return answer(call);
  };
  return { fetch: fetch as typeof globalThis.fetch, calls };
}

const json = (status: number, data: unknown) =>
  new Response(JSON.stringify(status < 400 ? { success: true, data } : { success: false, error: data }), { status });
const user = { id: "u1", email: "a@example.com", default_project_id: "p1" };
const pair = (n: number): AuthResult => ({ user, access_token: `access-${n}`, refresh_token: `refresh-${n}`, expires_in: 7200 });

async function signedIn(answer: (call: Call) => Response) {
  const store = memoryStore();
  const srv = server((call) => (call.path === "/api/v1/auth/login" ? json(200, pair(1)) : answer(call)));
  const api = new Api({ fetch: srv.fetch, store });
  await api.login("a@example.com", "pw");
  return { api, srv, store };
}

describe("Api for the billing and account pages", () => {
  it("sends the caller's headers, such as an Idempotency-Key, with the credentials", async () => {
    const { api, srv } = await signedIn(() => json(201, { id: "pay1" }));
    await api.post("/payments", { amount: "25" }, { headers: { "Idempotency-Key": "k1" } });
    const call = srv.calls.at(-1)!;
    expect(call.headers["Idempotency-Key"]).toBe("k1");
    expect(call.headers.Authorization).toBe("Bearer access-1");
    expect(call.headers.Accept).toBe("application/json");
  });

  it("reads an HTML answer as text, asking for HTML", async () => {
    const { api, srv } = await signedIn(() => new Response("<html><body>NEF-2026-000001</body></html>", { status: 200 }));
    expect(await api.text("/invoices/i1/html")).toContain("NEF-2026-000001");
    expect(srv.calls.at(-1)!.headers.Accept).toBe("text/html, application/json");
  });

  it("turns a text route's error envelope into the API's message", async () => {
    const { api } = await signedIn(() => json(404, { code: "NOT_FOUND", message: "Invoice not found" }));
    const error = await api.text("/invoices/nope/html").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).message).toBe("Invoice not found");
  });

  it("adopts the new pair a password change answers (the old session is over)", async () => {
    const { api, srv, store } = await signedIn((call) =>
      call.path === "/api/v1/users/password" ? json(200, pair(2)) : json(200, user),
    );
    await api.changePassword({ current_password: "old-password", new_password: "new-password" });
    expect(srv.calls.at(-1)!.body).toEqual({ current_password: "old-password", new_password: "new-password" });
    expect(store.load()).toBe("refresh-2");
    await api.get("/auth/me");
    expect(srv.calls.at(-1)!.headers.Authorization).toBe("Bearer access-2");
  });

  it("reads the user again and tells the pages", async () => {
    const seen: unknown[] = [];
    const srv = server((call) =>
      call.path === "/api/v1/auth/login" ? json(200, pair(1)) : json(200, { ...user, default_project_id: "p2" }),
    );
    const api = new Api({ fetch: srv.fetch, onUser: (u) => seen.push(u?.default_project_id) });
    await api.login("a@example.com", "pw");
    await api.refreshUser();
    expect(api.user?.default_project_id).toBe("p2");
    expect(seen).toEqual(["p1", "p2"]);
  });

  it("makes a new idempotency key each time, 128 bits in hex", () => {
    const a = idempotencyKey();
    expect(a).toMatch(/^[0-9a-f]{32}$/);
    expect(idempotencyKey()).not.toBe(a);
  });
});
