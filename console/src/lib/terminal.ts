// A terminal over a WebSocket, opened with a one-time ticket (POST /ws/ticket) as the
// event socket is, so no credential is ever in a URL. Two targets speak the same
// protocol (docs/api.md "Container terminals"): a command in a container's replica,
// `WS /containers/{id}/exec`, and a running VM's serial console, `WS /vms/{id}/console`
// (`force=true` takes over a console another client has open, which then ends).
// Binary messages both ways are the terminal's bytes; text messages are JSON: the
// server's `connected`, `exit`, `error` and `pong`, the client's `resize` (a serial
// line has no size: the console ignores it). No reconnection: a terminal that ends
// has ended (its shell is gone, or its console was taken over).

import { ApiError, type Api } from "./api";

export type TerminalState = "connecting" | "open" | "exited" | "refused" | "closed";

export interface TerminalSize {
  cols: number;
  rows: number;
}

/** What a terminal attaches to. */
export type TerminalTarget =
  | { kind: "exec"; containerId: string; replica?: number | null }
  | { kind: "console"; vmId: string; force?: boolean };

/** A command on a terminal in a container's replica (default: the lowest running). */
export const containerExec = (containerId: string, replica?: number | null): TerminalTarget => ({
  kind: "exec",
  containerId,
  replica,
});

/** A running VM's serial console; `force` takes over one open elsewhere. */
export const vmConsole = (vmId: string, force = false): TerminalTarget => ({
  kind: "console",
  vmId,
  force,
});

/** The server's refusal (an `error` before `connected`), or a refused ticket. */
export interface TerminalRefusal {
  code: string;
  message: string;
  details: Record<string, unknown>;
}

/** Whether a refusal is the VM's console being open elsewhere (force takes it over). */
export const consoleBusy = (refusal: TerminalRefusal | null | undefined): boolean =>
  refusal?.code === "CONFLICT" && refusal.details.console === "busy";

/** The server's `connected`: a replica and its command, or a VM's console. */
export type TerminalConnected =
  | { kind: "exec"; replica: number; command: string[] }
  | { kind: "console"; vmId: string; forced: boolean };

export interface TerminalHandlers {
  /** The terminal's output, as the server sent it. */
  output(bytes: Uint8Array): void;
  /** Each change of state, with a line to show (the exit code, a refusal's message);
   *  a refusal comes with what the server said. */
  state(state: TerminalState, message: string, refusal?: TerminalRefusal): void;
  /** The server's `connected`. */
  connected?(info: TerminalConnected): void;
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

/** A VM console's URL: the ticket and (to take over) `force=true`; never a token. */
export function vmConsoleUrl(origin: string, vmId: string, ticket: string, force = false): string {
  const query = new URLSearchParams({ ticket });
  if (force) query.set("force", "true");
  const ws = origin.replace(/^http/, "ws");
  return `${ws}/api/v1/vms/${encodeURIComponent(vmId)}/console?${query}`;
}

/** The URL of a target's socket. */
export function targetUrl(
  origin: string,
  target: TerminalTarget,
  ticket: string,
  size: TerminalSize,
): string {
  return target.kind === "console"
    ? vmConsoleUrl(origin, target.vmId, ticket, target.force)
    : terminalUrl(origin, target.containerId, ticket, size, target.replica);
}

/** What a close code means when no `exit` or `error` message said it first. */
export function closeReason(code: number, kind: TerminalTarget["kind"] = "exec"): string {
  const what = kind === "console" ? "The console" : "The terminal";
  switch (code) {
    case 1000:
      return `${what} closed.`;
    case 1009:
      return `${what} closed: a message was too large.`;
    case 4401:
      return `${what} closed: signed out.`;
    case 4403:
      return `${what} closed: no permission.`;
    case 4404:
      return `${what} closed: ${kind === "console" ? "the VM is gone" : "the container or replica is gone"}.`;
    case 4408:
      return `${what} closed: idle for too long.`;
    default:
      return `${what} closed (code ${code}).`;
  }
}

export class TerminalSocket {
  private readonly makeSocket: (url: string) => Socket;
  private readonly origin: string;
  private readonly target: TerminalTarget;
  private socket: Socket | null = null;
  private encoder = new TextEncoder();
  state: TerminalState = "connecting";
  /** Why the terminal was refused, once it was. */
  refusal: TerminalRefusal | null = null;

  /** `target`: a container's ID (its exec) or a {@link TerminalTarget}. */
  constructor(
    private readonly api: Api,
    target: string | TerminalTarget,
    private readonly handlers: TerminalHandlers,
    options: TerminalOptions = {},
  ) {
    this.target = typeof target === "string" ? containerExec(target) : target;
    this.makeSocket =
      options.socket ?? ((url) => new WebSocket(url, ["nefos.v1"]) as unknown as Socket);
    this.origin = options.origin ?? (typeof location !== "undefined" ? location.origin : "");
  }

  private get console(): boolean {
    return this.target.kind === "console";
  }

  private setState(state: TerminalState, message: string): void {
    this.state = state;
    this.handlers.state(state, message);
  }

  private refuse(refusal: TerminalRefusal): void {
    this.refusal = refusal;
    this.state = "refused";
    this.handlers.state("refused", refusal.message, refusal);
  }

  /** Ask for a ticket, then open the socket. A refused ticket is a refusal. A
   *  container's replica may be chosen here (else the target's). */
  async open(size: TerminalSize, replica?: number | null): Promise<void> {
    this.setState("connecting", "Connecting…");
    let ticket: string;
    try {
      ticket = (await this.api.post<{ ticket: string }>("/ws/ticket")).ticket;
    } catch (e) {
      this.refuse({
        code: e instanceof ApiError ? e.code : "UNAVAILABLE",
        message: e instanceof Error ? e.message : String(e),
        details: e instanceof ApiError ? e.details : {},
      });
      return;
    }
    if (this.state !== "connecting") return; // closed meanwhile
    const target =
      this.target.kind === "exec" && replica !== undefined ? { ...this.target, replica } : this.target;
    const socket = this.makeSocket(targetUrl(this.origin, target, ticket, size));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.state === "connecting" || this.state === "open") {
        this.setState("closed", closeReason(event.code, this.target.kind));
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
      if (this.console) {
        const forced = body.forced === true;
        this.handlers.connected?.({ kind: "console", vmId: String(body.vm_id), forced });
        this.setState(
          "open",
          forced
            ? "Connected to the serial console (taken over from another client)."
            : "Connected to the serial console.",
        );
      } else {
        this.handlers.connected?.({
          kind: "exec",
          replica: Number(body.replica),
          command: (body.command as string[]) ?? [],
        });
        this.setState("open", `Connected to replica ${String(body.replica)}.`);
      }
    } else if (message.type === "exit") {
      const code = body.code;
      this.setState(
        "exited",
        this.console
          ? "The console ended."
          : code === null || code === undefined
            ? "The command ended."
            : `The command exited with code ${String(code)}.`,
      );
    } else if (message.type === "error") {
      const text = String(body.message ?? body.code ?? "The terminal was refused.");
      // Before "connected", an error is a refusal; after it, the terminal carries on
      // (a malformed message) unless the server closes it (a timeout, a revocation).
      if (this.state === "connecting") {
        const details = body.details;
        this.refuse({
          code: String(body.code ?? "ERROR"),
          message: text,
          details: details && typeof details === "object" ? (details as Record<string, unknown>) : {},
        });
      } else this.handlers.state(this.state, text);
    }
  }

  /** Keystrokes (as xterm.js gives them: a string), sent as a binary message. */
  input(text: string): void {
    if (this.socket?.readyState === OPEN && this.state === "open") {
      this.socket.send(this.encoder.encode(text));
    }
  }

  /** The terminal's size (a console's serial line has none: nothing is sent). */
  resize(size: TerminalSize): void {
    if (this.console) return;
    if (this.socket?.readyState === OPEN && this.state === "open") {
      this.socket.send(JSON.stringify({ type: "resize", cols: clamp(size.cols), rows: clamp(size.rows) }));
    }
  }

  close(): void {
    const socket = this.socket;
    this.socket = null;
    if (this.state === "connecting" || this.state === "open") this.setState("closed", closeReason(1000, this.target.kind));
    socket?.close(1000);
  }
}
