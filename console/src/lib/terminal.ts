// A terminal in a container's replica: `WS /containers/{id}/exec` (docs/api.md
// "Container terminals"), opened with a one-time ticket (POST /ws/ticket) as the
// event socket is, so no credential is ever in a URL. Binary messages both ways are
// the terminal's bytes; text messages are JSON: the server's `connected`, `exit`,
// `error` and `pong`, the client's `resize`. No reconnection: a terminal that ends
// has ended (its shell is gone).

import type { Api } from "./api";

export type TerminalState = "connecting" | "open" | "exited" | "refused" | "closed";

export interface TerminalSize {
  cols: number;
  rows: number;
}

export interface TerminalHandlers {
  /** The terminal's output, as the server sent it. */
  output(bytes: Uint8Array): void;
  /** Each change of state, with a line to show (the exit code, a refusal's message). */
  state(state: TerminalState, message: string): void;
  /** The server's `connected`: which replica, the command. */
  connected?(info: { replica: number; command: string[] }): void;
}

type Socket = Pick<WebSocket, "close" | "send" | "readyState"> & {
  binaryType: BinaryType;
  onopen: ((ev: Event) => unknown) | null;
  onmessage: ((ev: MessageEvent) => unknown) | null;
  onclose: ((ev: CloseEvent) => unknown) | null;
  onerror: ((ev: Event) => unknown) | null;
};

export interface TerminalOptions {
  socket?: (url: string) => Socket;
  origin?: string;
}

const OPEN = 1;
const clamp = (n: number) => Math.max(1, Math.min(1000, Math.floor(n) || 1));

/** The socket's URL: the ticket, the size and (if chosen) the replica; never a token. */
export function terminalUrl(
  origin: string,
  containerId: string,
  ticket: string,
  size: TerminalSize,
  replica?: number | null,
): string {
  const query = new URLSearchParams({
    ticket,
    cols: String(clamp(size.cols)),
    rows: String(clamp(size.rows)),
  });
  if (replica !== undefined && replica !== null) query.set("replica", String(replica));
  const ws = origin.replace(/^http/, "ws");
  return `${ws}/api/v1/containers/${encodeURIComponent(containerId)}/exec?${query}`;
}

/** What a close code means when no `exit` or `error` message said it first. */
export function closeReason(code: number): string {
  switch (code) {
    case 1000:
      return "The terminal closed.";
    case 1009:
      return "The terminal closed: a message was too large.";
    case 4401:
      return "The terminal closed: signed out.";
    case 4403:
      return "The terminal closed: no permission.";
    case 4404:
      return "The terminal closed: the container or replica is gone.";
    case 4408:
      return "The terminal closed: idle for too long.";
    default:
      return `The terminal closed (code ${code}).`;
  }
}

export class TerminalSocket {
  private readonly makeSocket: (url: string) => Socket;
  private readonly origin: string;
  private socket: Socket | null = null;
  private encoder = new TextEncoder();
  state: TerminalState = "connecting";

  constructor(
    private readonly api: Api,
    private readonly containerId: string,
    private readonly handlers: TerminalHandlers,
    options: TerminalOptions = {},
  ) {
    this.makeSocket =
      options.socket ?? ((url) => new WebSocket(url, ["nefos.v1"]) as unknown as Socket);
    this.origin = options.origin ?? (typeof location !== "undefined" ? location.origin : "");
  }

  private setState(state: TerminalState, message: string): void {
    this.state = state;
    this.handlers.state(state, message);
  }

  /** Ask for a ticket, then open the socket. A refused ticket is a refusal. */
  async open(size: TerminalSize, replica?: number | null): Promise<void> {
    this.setState("connecting", "Connecting…");
    let ticket: string;
    try {
      ticket = (await this.api.post<{ ticket: string }>("/ws/ticket")).ticket;
    } catch (e) {
      this.setState("refused", e instanceof Error ? e.message : String(e));
      return;
    }
    if (this.state !== "connecting") return; // closed meanwhile
    const socket = this.makeSocket(terminalUrl(this.origin, this.containerId, ticket, size, replica));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.state === "connecting" || this.state === "open") {
        this.setState("closed", closeReason(event.code));
      }
    };
    socket.onerror = () => {};
  }

  private receive(data: unknown): void {
    if (data instanceof ArrayBuffer) {
      this.handlers.output(new Uint8Array(data));
      return;
    }
    if (ArrayBuffer.isView(data)) {
      this.handlers.output(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      return;
    }
    let message: { type?: string; data?: Record<string, unknown> };
    try {
      message = JSON.parse(String(data));
    } catch {
      return;
    }
    const body = message.data ?? {};
    if (message.type === "connected") {
      this.handlers.connected?.({
        replica: Number(body.replica),
        command: (body.command as string[]) ?? [],
      });
      this.setState("open", `Connected to replica ${String(body.replica)}.`);
    } else if (message.type === "exit") {
      this.setState("exited", `The command exited with code ${String(body.code)}.`);
    } else if (message.type === "error") {
      const text = String(body.message ?? body.code ?? "The terminal was refused.");
      // Before "connected", an error is a refusal; after it, the terminal carries on
      // (a malformed message) unless the server closes it (a timeout, a revocation).
      if (this.state === "connecting") this.setState("refused", text);
      else this.handlers.state(this.state, text);
    }
  }

  /** Keystrokes (as xterm.js gives them: a string), sent as a binary message. */
  input(text: string): void {
    if (this.socket?.readyState === OPEN && this.state === "open") {
      this.socket.send(this.encoder.encode(text));
    }
  }

  resize(size: TerminalSize): void {
    if (this.socket?.readyState === OPEN && this.state === "open") {
      this.socket.send(JSON.stringify({ type: "resize", cols: clamp(size.cols), rows: clamp(size.rows) }));
    }
  }

  close(): void {
    const socket = this.socket;
    this.socket = null;
    if (this.state === "connecting" || this.state === "open") this.setState("closed", "The terminal closed.");
    socket?.close(1000);
  }
}
