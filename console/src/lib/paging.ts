// Paging a list by cursor (docs/api.md "Paging"): each page names the next one with
// `next_cursor`; going back re-reads a page from the cursor that first led to it, so
// the trail of cursors walked is kept.

export class CursorTrail {
  /** The cursor of each page walked to, the first page's being null. */
  private trail: (string | null)[] = [null];

  /** The cursor to read the page shown (null: the first). */
  get cursor(): string | null {
    return this.trail[this.trail.length - 1];
  }

  /** The page shown, from 1. */
  get page(): number {
    return this.trail.length;
  }

  get hasPrevious(): boolean {
    return this.trail.length > 1;
  }

  /** On to the page after the one shown; its `next_cursor` must be set. */
  forward(nextCursor: string): string {
    this.trail.push(nextCursor);
    return nextCursor;
  }

  /** Back to the page before; the cursor to read it with. */
  back(): string | null {
    if (this.trail.length > 1) this.trail.pop();
    return this.cursor;
  }

  /** To the first page (after a filter changed: cursors are bound to the filters). */
  reset(): void {
    this.trail = [null];
  }
}

/** "1–20 of 45", "41–45 of 45", "none": which items of the list a page holds. */
export function pageRange(
  page: number,
  limit: number,
  shown: number,
  total: number | null | undefined,
): string {
  if (shown === 0) return page > 1 ? "no more" : "none";
  const first = (page - 1) * limit + 1;
  const last = first + shown - 1;
  return total === null || total === undefined
    ? `${first}–${last}`
    : `${first}–${last} of ${Math.max(total, last)}`;
}
