// The live feed: one WebSocket to /api/v1/ws, authenticated by a one-time ticket
// (POST /ws/ticket, valid 30 s, good for one socket) so that no long-lived credential
// is ever put in a URL. Reconnects with a capped backoff; every connection asks for
// a fresh ticket.

import type { Api } from "./api";

export interface NefosEvent {
  id?: string;
  type: string;
  data: Record<string, unknown>;
  timestamp?: string;
}

type Handler = (event: NefosEvent) => void;
type Socket = Pick<WebSocket, "close" | "send" | "readyState"> & {
  onopen: ((ev: Event) => unknown) | null;
  onmessage: ((ev: MessageEvent) => unknown) | null;
  onclose: ((ev: CloseEvent) => unknown) | null;
  onerror: ((ev: Event) => unknown) | null;
};

export interface EventStreamOptions {
  socket?: (url: string) => Socket;
  origin?: string;
  maxBackoffMs?: number;
}

export class EventStream {
  private readonly handlers = new Set<Handler>();
  private readonly makeSocket: (url: string) => Socket;
  private readonly origin: string;
  private readonly maxBackoffMs: number;
  private socket: Socket | null = null;
  private running = false;
  private backoffMs = 500;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Connected and told "connected" by the server. */
  connected = false;
  onStatus: (connected: boolean) => void = () => {};

  constructor(
    private readonly api: Api,
    options: EventStreamOptions = {},
  ) {
    this.makeSocket = options.socket ?? ((url) => new WebSocket(url, ["nefos.v1"]) as Socket);
    this.origin = options.origin ?? (typeof location !== "undefined" ? location.origin : "");
    this.maxBackoffMs = options.maxBackoffMs ?? 30_000;
  }

  subscribe(handler: Handler): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.connect();
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
    this.setConnected(false);
  }

  private setConnected(value: boolean): void {
    if (this.connected !== value) {
      this.connected = value;
      this.onStatus(value);
    }
  }

  private async connect(): Promise<void> {
    if (!this.running || !this.api.signedIn) return;
    let ticket: string;
    try {
      ticket = (await this.api.post<{ ticket: string }>("/ws/ticket")).ticket;
    } catch {
      this.retry();
      return;
    }
    if (!this.running) return;
    const ws = this.origin.replace(/^http/, "ws");
    const socket = this.makeSocket(`${ws}/api/v1/ws?ticket=${encodeURIComponent(ticket)}`);
    this.socket = socket;
    socket.onmessage = (message) => {
      let event: NefosEvent;
      try {
        event = JSON.parse(String(message.data)) as NefosEvent;
      } catch {
        return;
      }
      if (event.type === "connected") {
        this.backoffMs = 500;
        this.setConnected(true);
      }
      for (const handler of this.handlers) handler(event);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.setConnected(false);
      this.retry();
    };
    socket.onerror = () => {};
  }

  private retry(): void {
    if (!this.running || !this.api.signedIn) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, delay);
  }
}
