import { describe, expect, it } from "vitest";
import { loadOrReload } from "../src/lib/lazy";

function memory() {
  const items = new Map<string, string>();
  return {
    getItem: (k: string) => items.get(k) ?? null,
    setItem: (k: string, v: string) => void items.set(k, v),
  };
}

describe("a page's chunk that fails to load", () => {
  it("is the page itself when it loads", async () => {
    let reloads = 0;
    expect(await loadOrReload(async () => "page", memory(), () => reloads++)).toBe("page");
    expect(reloads).toBe(0);
  });

  it("reloads the page once, then shows the error within the minute", async () => {
    const storage = memory();
    let reloads = 0;
    let clock = 1_000_000;
    const failing = async () => {
      throw new Error("Failed to fetch dynamically imported module");
    };
    const first = loadOrReload(failing, storage, () => reloads++, () => clock);
    await Promise.resolve();
    await Promise.resolve();
    expect(reloads).toBe(1); // the page reloads; `first` never settles
    void first;
    clock += 30_000;
    await expect(loadOrReload(failing, storage, () => reloads++, () => clock)).rejects.toThrow(
      /dynamically imported module/,
    );
    expect(reloads).toBe(1);
    clock += 31_000; // a minute on: once more
    void loadOrReload(failing, storage, () => reloads++, () => clock);
    await Promise.resolve();
    await Promise.resolve();
    expect(reloads).toBe(2);
  });
});
