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
