// Pages loaded on demand: their code is a chunk of its own, fetched the first time the
// page is shown, so the first page's JavaScript does not grow with every area of the
// console (the budget in bench/bench_console_bundle.py).

import type { Component } from "svelte";
import Lazy from "../pages/Lazy.svelte";

type Loader = () => Promise<{ default: Component<any> }>;

/** A page component for the router's table that loads `load` when it is mounted. */
export function lazy(load: Loader): Component<{ params: Record<string, string> }> {
  return ((anchor: unknown, props: { params: Record<string, string> }) =>
    (Lazy as unknown as (a: unknown, p: unknown) => unknown)(anchor, {
      load,
      get params() {
        return props.params;
      },
    })) as unknown as Component<{ params: Record<string, string> }>;
}

const RELOADED = "nefos.chunk-reload";
const RELOAD_EVERY_MS = 60_000;

/** `load()`, and if its chunk cannot be fetched (a network that changed under the
 * request, a deploy that replaced the build) the page reloaded once: the browser
 * keeps a failed module import for the document's life, so only a new document
 * fetches it again. At most one such reload a minute: a chunk that is really gone
 * shows its error. */
export async function loadOrReload<T>(
  load: () => Promise<T>,
  storage: Pick<Storage, "getItem" | "setItem"> = sessionStorage,
  reload: () => void = () => location.reload(),
  now: () => number = Date.now,
): Promise<T> {
  try {
    return await load();
  } catch (error) {
    const last = Number(storage.getItem(RELOADED) ?? 0);
    if (now() - last < RELOAD_EVERY_MS) throw error;
    storage.setItem(RELOADED, String(now()));
    reload();
    return new Promise<T>(() => {}); // the page is going away
  }
}
