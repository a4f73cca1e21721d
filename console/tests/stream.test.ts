import { describe, expect, it } from "vitest";
import { Api, ApiError } from "../src/lib/api";

// A streamed answer in chunks that cut lines anywhere, as a network does.
function streamed(chunks: string[], status = 200): typeof fetch {
  return (async () => {
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const c of chunks) controller.enqueue(encoder.encode(c));
        controller.close();
      },
    });
    return new Response(body, { status, headers: { "Content-Type": "application/x-ndjson" } });
  }) as typeof fetch;
}

describe("Api.stream (NDJSON follows)", () => {
  it("gives each line's JSON once, whatever the chunks", async () => {
    const api = new Api({ fetch: streamed(['{"id":"a"}\n{"i', 'd":"b"}\n', '{"id":"c"}']) });
    const got: string[] = [];
    await api.stream<{ id: string }>("/apis/x/logs", { follow: true }, (item) => got.push(item.id));
    expect(got).toEqual(["a", "b", "c"]);
  });

  it("throws the API's error for an error answer", async () => {
    const body = JSON.stringify({ success: false, error: { code: "RATE_LIMITED", message: "Too many follows" } });
    const api = new Api({ fetch: streamed([body], 429) });
    const error = await api.stream("/apis/x/logs", {}, () => {}).catch((e) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).message).toBe("Too many follows");
    expect((error as ApiError).status).toBe(429);
  });

  it("ends quietly when aborted", async () => {
    const controller = new AbortController();
    const api = new Api({
      fetch: (async (_i: RequestInfo | URL, init?: RequestInit) => {
        init?.signal?.throwIfAborted();
        return new Response("");
      }) as typeof fetch,
    });
    controller.abort();
    await expect(api.stream("/apis/x/logs", {}, () => {}, controller.signal)).resolves.toBeUndefined();
  });
});
