import { afterEach, describe, expect, it, vi } from "vitest";
import { Api, memoryStore } from "../src/lib/api";
import { TerminalSocket, closeReason, terminalUrl, type TerminalState } from "../src/lib/terminal";

class FakeSocket {
  static opened: FakeSocket[] = [];
  readyState = 1;
  binaryType: BinaryType = "blob";
  onopen: ((ev: Event) => unknown) | null = null;
  onmessage: ((ev: MessageEvent) => unknown) | null = null;
  onclose: ((ev: CloseEvent) => unknown) | null = null;
  onerror: ((ev: Event) => unknown) | null = null;
  sent: (string | Uint8Array)[] = [];
  closed: number | null = null;
  constructor(readonly url: string) {
    FakeSocket.opened.push(this);
  }
  send(data: string | Uint8Array) {
    this.sent.push(data);
  }
  close(code = 1000) {
    this.closed = code;
  }
  text(message: unknown) {
    this.onmessage?.({ data: JSON.stringify(message) } as MessageEvent);
  }
  bytes(text: string) {
    this.onmessage?.({ data: new TextEncoder().encode(text).buffer } as MessageEvent);
  }
  end(code: number) {
    this.readyState = 3;
    this.onclose?.({ code } as CloseEvent);
  }
}

async function signedIn(ticketStatus = 201) {
  const fetch = (async (input: RequestInfo | URL) => {
    const path = new URL(String(input), "http://nefos.test").pathname;
    if (path === "/api/v1/auth/login") {
      const data = { user: { id: "u1", email: "a@b.c" }, access_token: "secret-jwt", refresh_token: "r", expires_in: 7200 };
      return new Response(JSON.stringify({ success: true, data }), { status: 200 });
    }
    if (ticketStatus !== 201) {
      const error = { code: "UNAUTHORIZED", message: "Sign in again" };
      return new Response(JSON.stringify({ success: false, error }), { status: ticketStatus });
    }
    return new Response(JSON.stringify({ success: true, data: { ticket: "t-1" } }), { status: 201 });
  }) as typeof globalThis.fetch;
  const api = new Api({ fetch, store: memoryStore() });
  await api.login("a@b.c", "pw");
  return api;
}

function terminal(api: Api) {
  const output: string[] = [];
  const states: [TerminalState, string][] = [];
  const t = new TerminalSocket(
    api,
    "c-1",
    {
      output: (bytes) => output.push(new TextDecoder().decode(bytes)),
      state: (state, message) => states.push([state, message]),
    },
    { socket: (url) => new FakeSocket(url), origin: "https://nefos.example" },
  );
  return { t, output, states };
}

afterEach(() => {
  FakeSocket.opened = [];
});

describe("terminalUrl", () => {
  it("carries the ticket, the size within bounds and the replica; wss for https", () => {
    expect(terminalUrl("https://h", "abc", "tk", { cols: 120.7, rows: 0 })).toBe(
      "wss://h/api/v1/containers/abc/exec?ticket=tk&cols=120&rows=1",
    );
    expect(terminalUrl("http://h:8000", "abc", "tk", { cols: 5000, rows: 30 }, 2)).toBe(
      "ws://h:8000/api/v1/containers/abc/exec?ticket=tk&cols=1000&rows=30&replica=2",
    );
  });

  it("says what a close code means", () => {
    expect(closeReason(4408)).toContain("idle");
    expect(closeReason(4999)).toContain("4999");
  });
});

describe("TerminalSocket", () => {
  it("opens with a ticket, shows output, sends keystrokes as bytes and resizes as JSON", async () => {
    const api = await signedIn();
    const { t, output, states } = terminal(api);
    await t.open({ cols: 100, rows: 30 });
    const socket = FakeSocket.opened[0];
    expect(socket.url).toBe("wss://nefos.example/api/v1/containers/c-1/exec?ticket=t-1&cols=100&rows=30");
    expect(socket.url).not.toContain("secret-jwt");
    expect(socket.binaryType).toBe("arraybuffer");

    // Nothing is sent before the server says "connected".
    t.input("ls\r");
    expect(socket.sent).toEqual([]);
    socket.text({ type: "connected", data: { replica: 0, command: ["/bin/sh"] } });
    expect(t.state).toBe("open");
    socket.bytes("$ ");
    expect(output).toEqual(["$ "]);

    t.input("echo hi\r");
    expect(new TextDecoder().decode(socket.sent[0] as Uint8Array)).toBe("echo hi\r");
    t.resize({ cols: 90, rows: 20 });
    expect(JSON.parse(socket.sent[1] as string)).toEqual({ type: "resize", cols: 90, rows: 20 });

    socket.text({ type: "exit", data: { code: 3 } });
    socket.end(1000);
    expect(states.at(-1)).toEqual(["exited", "The command exited with code 3."]);
    t.input("more");
    expect(socket.sent).toHaveLength(2);
  });

  it("shows a refusal's message, not the close that follows it", async () => {
    const api = await signedIn();
    const { t, states } = terminal(api);
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    socket.text({ type: "error", data: { code: "CONFLICT", message: "No replica of web is running" } });
    socket.end(4409);
    expect(t.state).toBe("refused");
    expect(states.at(-1)).toEqual(["refused", "No replica of web is running"]);
  });

  it("a malformed-message error after connecting keeps the terminal open", async () => {
    const api = await signedIn();
    const { t, states } = terminal(api);
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    socket.text({ type: "connected", data: { replica: 1, command: ["/bin/sh"] } });
    socket.text({ type: "error", data: { code: "VALIDATION_ERROR", message: "Bad message" } });
    expect(t.state).toBe("open");
    expect(states.at(-1)).toEqual(["open", "Bad message"]);
    socket.end(4408);
    expect(states.at(-1)).toEqual(["closed", closeReason(4408)]);
  });

  it("a refused ticket is a refusal with the API's message; close is quiet after", async () => {
    const api = await signedIn(401);
    const { t, states } = terminal(api);
    await t.open({ cols: 80, rows: 24 });
    expect(FakeSocket.opened).toHaveLength(0);
    expect(states.at(-1)).toEqual(["refused", "Sign in again"]);
    t.close();
    expect(states).toHaveLength(2);
  });

  it("closing stops the socket with 1000", async () => {
    const api = await signedIn();
    const { t } = terminal(api);
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    t.close();
    expect(socket.closed).toBe(1000);
    expect(t.state).toBe("closed");
    vi.restoreAllMocks();
  });
});
