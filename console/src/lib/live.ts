// Page helpers for live data: events of some types, and a reload that coalesces a
// burst of events into one request.

import { onDestroy } from "svelte";
import type { NefosEvent } from "./events";
import { events } from "./session.svelte";

/** Call `handler` for each event of `types` while the calling component lives. */
export function onEvents(types: string[], handler: (event: NefosEvent) => void): void {
  const off = events.subscribe((event) => {
    if (types.includes(event.type)) handler(event);
  });
  onDestroy(off);
}

/** `fn` at most once per `ms`, trailing: the last burst's call always runs. */
export function coalesce(fn: () => void, ms = 250): () => void {
  let timer: ReturnType<typeof setTimeout> | null = null;
  onDestroy(() => {
    if (timer) clearTimeout(timer);
  });
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
