import { afterEach, describe, expect, it, vi } from "vitest";
import { Api, memoryStore } from "../src/lib/api";
import {
  TerminalSocket,
  closeReason,
  consoleBusy,
  containerExec,
  targetUrl,
  terminalUrl,
  vmConsole,
  vmConsoleUrl,
  type TerminalRefusal,
  type TerminalState,
  type TerminalTarget,
} from "../src/lib/terminal";

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

function terminal(api: Api, target: string | TerminalTarget = "c-1") {
  const output: string[] = [];
  const states: [TerminalState, string][] = [];
  const refusals: TerminalRefusal[] = [];
  const t = new TerminalSocket(
    api,
    target,
    {
      output: (bytes) => output.push(new TextDecoder().decode(bytes)),
      state: (state, message, refusal) => {
        states.push([state, message]);
        if (refusal) refusals.push(refusal);
      },
    },
    { socket: (url) => new FakeSocket(url), origin: "https://nefos.example" },
  );
  return { t, output, states, refusals };
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
    expect(closeReason(4404, "console")).toBe("The console closed: the VM is gone.");
  });
});

describe("vmConsoleUrl", () => {
  it("carries the ticket and, to take over, force=true; no size; wss for https", () => {
    expect(vmConsoleUrl("https://h", "vm-1", "tk")).toBe("wss://h/api/v1/vms/vm-1/console?ticket=tk");
    expect(vmConsoleUrl("http://h:8000", "vm 1", "tk", true)).toBe(
      "ws://h:8000/api/v1/vms/vm%201/console?ticket=tk&force=true",
    );
  });

  it("is the URL of a console target; a container's target is its exec", () => {
    const size = { cols: 80, rows: 24 };
    expect(targetUrl("https://h", vmConsole("v", true), "tk", size)).toBe(
      "wss://h/api/v1/vms/v/console?ticket=tk&force=true",
    );
    expect(targetUrl("https://h", containerExec("c", 1), "tk", size)).toBe(
      "wss://h/api/v1/containers/c/exec?ticket=tk&cols=80&rows=24&replica=1",
    );
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

describe("TerminalSocket on a VM's serial console", () => {
  it("opens with a ticket, says it is connected to the console, sends keystrokes, no resize", async () => {
    const api = await signedIn();
    const { t, output, states } = terminal(api, vmConsole("vm-1"));
    await t.open({ cols: 100, rows: 30 });
    const socket = FakeSocket.opened[0];
    expect(socket.url).toBe("wss://nefos.example/api/v1/vms/vm-1/console?ticket=t-1");
    expect(socket.url).not.toContain("secret-jwt");

    socket.text({ type: "connected", data: { vm_id: "vm-1", forced: false } });
    expect(t.state).toBe("open");
    expect(states.at(-1)).toEqual(["open", "Connected to the serial console."]);
    socket.bytes("~ # ");
    expect(output).toEqual(["~ # "]);
    t.input("echo hi\r");
    expect(new TextDecoder().decode(socket.sent[0] as Uint8Array)).toBe("echo hi\r");
    // A serial line has no size: nothing is sent.
    t.resize({ cols: 90, rows: 20 });
    expect(socket.sent).toHaveLength(1);

    // The VM stopped, or another client took the console over: no exit code.
    socket.text({ type: "exit", data: { code: null } });
    socket.end(1000);
    expect(t.state).toBe("exited");
    expect(states.at(-1)).toEqual(["exited", "The console ended."]);
    expect(states.map(([, m]) => m).join(" ")).not.toContain("null");
  });

  it("takes over with force=true and says so", async () => {
    const api = await signedIn();
    const connected: unknown[] = [];
    const states: string[] = [];
    const t = new TerminalSocket(
      api,
      vmConsole("vm-1", true),
      { output: () => {}, state: (_, message) => states.push(message), connected: (i) => connected.push(i) },
      { socket: (url) => new FakeSocket(url), origin: "http://nefos.example" },
    );
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    expect(socket.url).toBe("ws://nefos.example/api/v1/vms/vm-1/console?ticket=t-1&force=true");
    socket.text({ type: "connected", data: { vm_id: "vm-1", forced: true } });
    expect(connected).toEqual([{ kind: "console", vmId: "vm-1", forced: true }]);
    expect(states.at(-1)).toMatch(/^Connected to the serial console/);
    t.close();
    expect(socket.closed).toBe(1000);
    expect(states.at(-1)).toBe("The console closed.");
  });

  it("a console open elsewhere is a busy refusal with the server's message", async () => {
    const api = await signedIn();
    const { t, states, refusals } = terminal(api, vmConsole("vm-1"));
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    const message = "Another console is open on this VM (force=true takes it over)";
    socket.text({ type: "error", data: { code: "CONFLICT", message, details: { console: "busy" } } });
    socket.end(4409);
    expect(t.state).toBe("refused");
    expect(states.at(-1)).toEqual(["refused", message]);
    expect(refusals).toEqual([{ code: "CONFLICT", message, details: { console: "busy" } }]);
    expect(consoleBusy(t.refusal)).toBe(true);
  });

  it("a stopped VM is a refusal, not a busy one", async () => {
    const api = await signedIn();
    const { t, states } = terminal(api, vmConsole("vm-1"));
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    socket.text({ type: "error", data: { code: "CONFLICT", message: "The VM is not running" } });
    socket.end(4409);
    expect(states.at(-1)).toEqual(["refused", "The VM is not running"]);
    expect(consoleBusy(t.refusal)).toBe(false);
  });

  it("a close without a message names the console", async () => {
    const api = await signedIn();
    const { t, states } = terminal(api, vmConsole("vm-1"));
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    socket.text({ type: "connected", data: { vm_id: "vm-1", forced: false } });
    socket.end(4404);
    expect(t.state).toBe("closed");
    expect(states.at(-1)).toEqual(["closed", "The console closed: the VM is gone."]);
  });
});

describe("TerminalSocket on a container's target", () => {
  it("takes the replica from the target; a command without an exit code ended", async () => {
    const api = await signedIn();
    const { t, states } = terminal(api, containerExec("c-2", 3));
    await t.open({ cols: 80, rows: 24 });
    const socket = FakeSocket.opened[0];
    expect(socket.url).toBe("wss://nefos.example/api/v1/containers/c-2/exec?ticket=t-1&cols=80&rows=24&replica=3");
    socket.text({ type: "connected", data: { replica: 3, command: ["/bin/sh"] } });
    expect(states.at(-1)).toEqual(["open", "Connected to replica 3."]);
    socket.text({ type: "exit", data: { code: null } });
    expect(states.at(-1)).toEqual(["exited", "The command ended."]);
  });
});
