/// <reference types="vitest/config" />
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vite";

// The build lands inside the Python package, where `nefos serve` serves it
// (src/nefos/api/console.py); git ignores it. Hashed files go under /assets/ and are
// served with a year-long immutable cache; index.html is never cached.
const outDir = "../src/nefos/api/console_dist"; // relative to this directory

export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: false,
  },
  server: {
    // `npm run dev`: the API of a `make run` on 127.0.0.1:8000 behind Vite's server.
    proxy: {
      "/api": { target: "http://127.0.0.1:8000", ws: true },
      "/ws": { target: "http://127.0.0.1:8000", ws: true },
    },
  },
  test: {
    include: ["tests/**/*.test.ts"],
    environment: "node",
  },
});
