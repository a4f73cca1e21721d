import { afterEach, describe, expect, it, vi } from "vitest";
import { Api, memoryStore } from "../src/lib/api";
import { EventStream } from "../src/lib/events";

class FakeSocket {
  static opened: FakeSocket[] = [];
  readyState = 1;
  onopen: ((ev: Event) => unknown) | null = null;
  onmessage: ((ev: MessageEvent) => unknown) | null = null;
  onclose: ((ev: CloseEvent) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.opened.push(this);
  }
  send() {}
  close() {
    this.closed = true;
  }
  deliver(event: unknown) {
    this.onmessage?.({ data: JSON.stringify(event) } as MessageEvent);
  }
  drop() {
    this.onclose?.({} as CloseEvent);
  }
}

function signedInApi() {
  let tickets = 0;
  const requests: { path: string; auth: string | undefined }[] = [];
  const fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const path = new URL(String(input), "http://nefos.test").pathname;
    const headers = (init?.headers ?? {}) as Record<string, string>;
    requests.push({ path, auth: headers.Authorization });
    const data =
      path === "/api/v1/auth/login"
        ? { user: { id: "u1", email: "a@b.c" }, access_token: "secret-jwt", refresh_token: "r", expires_in: 7200 }
        : { ticket: `ticket-${++tickets}`, expires_in: 30 };
    return new Response(JSON.stringify({ success: true, data }), { status: 200 });
  }) as typeof globalThis.fetch;
  return { api: new Api({ fetch, store: memoryStore() }), requests };
}

afterEach(() => {
  FakeSocket.opened = [];
  vi.useRealTimers();
});

describe("EventStream", () => {
  it("opens /ws with a one-time ticket, never the access token, and hands events on", async () => {
    const { api, requests } = signedInApi();
    await api.login("a@b.c", "pw");
    const stream = new EventStream(api, { socket: (url) => new FakeSocket(url), origin: "https://nefos.example" });
    const seen: string[] = [];
    stream.subscribe((e) => seen.push(e.type));
    stream.start();
    await vi.waitFor(() => expect(FakeSocket.opened).toHaveLength(1));

    const url = FakeSocket.opened[0].url;
    expect(url).toBe("wss://nefos.example/api/v1/ws?ticket=ticket-1");
    expect(url).not.toContain("secret-jwt");
    expect(requests.at(-1)).toEqual({ path: "/api/v1/ws/ticket", auth: "Bearer secret-jwt" });

    FakeSocket.opened[0].deliver({ type: "connected", data: {} });
    FakeSocket.opened[0].deliver({ type: "container_status_update", data: { status: "running" } });
    expect(seen).toEqual(["connected", "container_status_update"]);
    expect(stream.connected).toBe(true);
    stream.stop();
    expect(FakeSocket.opened[0].closed).toBe(true);
  });

  it("reconnects after a drop with a fresh ticket (a ticket opens one socket only)", async () => {
    vi.useFakeTimers();
    const { api } = signedInApi();
    await api.login("a@b.c", "pw");
    const stream = new EventStream(api, { socket: (url) => new FakeSocket(url), origin: "http://h" });
    stream.start();
    await vi.waitFor(() => expect(FakeSocket.opened).toHaveLength(1));
    FakeSocket.opened[0].drop();
    expect(stream.connected).toBe(false);
    await vi.advanceTimersByTimeAsync(600);
    await vi.waitFor(() => expect(FakeSocket.opened).toHaveLength(2));
    expect(FakeSocket.opened[1].url).toBe("ws://h/api/v1/ws?ticket=ticket-2");
    stream.stop();
  });
});
