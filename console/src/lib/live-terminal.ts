// An interactive terminal drawn by xterm.js and wired to a TerminalSocket: what the
// server sends is drawn, what is typed is sent, the terminal fits its box (and says
// its size). Shared by a container's terminal (pages/Terminal.svelte) and a VM's
// serial console (pages/VmConsole.svelte). xterm.js is loaded by dynamic import when
// a terminal is opened, so it is never in the first page's bundle.

import type { Api } from "./api";
import { TerminalSocket, type TerminalState, type TerminalRefusal, type TerminalTarget } from "./terminal";

export interface LiveTerminal {
  readonly socket: TerminalSocket;
  /** Ask for a ticket and open the socket, at the terminal's size. */
  open(): Promise<void>;
  /** Close the socket and remove the terminal from its box. */
  dispose(): void;
}

/** The modules, loaded once (a rejection if they cannot be fetched). */
export function loadXterm() {
  return Promise.all([
    import("@xterm/xterm"),
    import("@xterm/addon-fit"),
    import("@xterm/xterm/css/xterm.css"),
  ]);
}

/**
 * A terminal in `host` (emptied first) for `target`, not yet connected: call `open`.
 * `state` hears each change of the socket's state; the terminal takes the focus when
 * it opens. Rejects if xterm.js could not be loaded.
 */
export async function liveTerminal(
  host: HTMLElement,
  api: Api,
  target: TerminalTarget,
  state: (state: TerminalState, message: string, refusal?: TerminalRefusal) => void,
): Promise<LiveTerminal> {
  const [{ Terminal }, { FitAddon }] = await loadXterm();
  host.replaceChildren();
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const term = new Terminal({
    convertEol: false,
    cursorBlink: true,
    // An accessible tree of the rows and a live region for what is written.
    screenReaderMode: true,
    fontSize: 14,
    theme: dark
      ? { background: "#1c1f24", foreground: "#e8eaed", cursor: "#fdd663" }
      : { background: "#ffffff", foreground: "#1a1d21", cursor: "#0b57d0" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();
  const socket = new TerminalSocket(api, target, {
    output: (bytes) => term.write(bytes),
    state: (s, text, refusal) => {
      if (s === "open") term.focus();
      state(s, text, refusal);
    },
  });
  const typed = term.onData((data) => socket.input(data));
  const resized = term.onResize((size) => socket.resize(size));
  const observer = new ResizeObserver(() => {
    try {
      fit.fit();
    } catch {
      /* hidden */
    }
  });
  observer.observe(host);
  let disposed = false;
  return {
    socket,
    open: () => socket.open({ cols: term.cols, rows: term.rows }),
    dispose() {
      if (disposed) return;
      disposed = true;
      observer.disconnect();
      typed.dispose();
      resized.dispose();
      socket.close();
      term.dispose();
    },
  };
}
