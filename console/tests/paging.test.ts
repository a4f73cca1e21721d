import { describe, expect, it } from "vitest";
import { CursorTrail, pageRange } from "../src/lib/paging";

describe("a trail of cursors", () => {
  it("starts on the first page, with nothing before it", () => {
    const trail = new CursorTrail();
    expect(trail.cursor).toBeNull();
    expect(trail.page).toBe(1);
    expect(trail.hasPrevious).toBe(false);
  });
  it("goes forward by each page's next_cursor and back by the cursors that led there", () => {
    const trail = new CursorTrail();
    expect(trail.forward("c2")).toBe("c2");
    expect(trail.forward("c3")).toBe("c3");
    expect(trail.page).toBe(3);
    expect(trail.back()).toBe("c2");
    expect(trail.page).toBe(2);
    expect(trail.back()).toBeNull();
    expect(trail.hasPrevious).toBe(false);
    // Back from the first page stays there.
    expect(trail.back()).toBeNull();
    expect(trail.page).toBe(1);
  });
  it("starts again from the first page when the filters change", () => {
    const trail = new CursorTrail();
    trail.forward("c2");
    trail.reset();
    expect(trail.cursor).toBeNull();
    expect(trail.page).toBe(1);
  });
});

describe("which items a page holds", () => {
  it("counts from the page and the limit", () => {
    expect(pageRange(1, 20, 20, 45)).toBe("1–20 of 45");
    expect(pageRange(3, 20, 5, 45)).toBe("41–45 of 45");
  });
  it("goes without a total when the API gives none", () => {
    expect(pageRange(2, 10, 10, null)).toBe("11–20");
  });
  it("never shows a total below the items already seen (items added meanwhile)", () => {
    expect(pageRange(2, 10, 10, 15)).toBe("11–20 of 20");
  });
  it("says when a page is empty", () => {
    expect(pageRange(1, 20, 0, 0)).toBe("none");
    expect(pageRange(2, 20, 0, 20)).toBe("no more");
  });
});
