// A small history router: the console's pages are paths the server answers with the
// same HTML shell (src/nefos/api/console.py), and links between them change the URL
// without a reload.

export const route = $state({ path: location.pathname, query: location.search });

export function navigate(to: string, replace = false): void {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  route.path = location.pathname;
  route.query = location.search;
  window.scrollTo(0, 0);
}

window.addEventListener("popstate", () => {
  route.path = location.pathname;
  route.query = location.search;
});

/** Same-origin links navigate in the page (unless a modifier key asks for a new tab). */
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const anchor = (event.target as Element | null)?.closest?.("a");
  if (!anchor || anchor.target || anchor.hasAttribute("download")) return;
  const url = new URL(anchor.href, location.href);
  if (url.origin !== location.origin) return;
  if (/^\/(api|docs|redoc|openapi\.json|gw|svc|ws|health)(\/|$)/.test(url.pathname)) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

/** `/containers/:id` against a path: the parameters, or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const p = pattern.split("/").filter(Boolean);
  const s = path.split("/").filter(Boolean);
  if (p.length !== s.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(":")) params[p[i].slice(1)] = decodeURIComponent(s[i]);
    else if (p[i] !== s[i]) return null;
  }
  return params;
}

/** Where to go once signed in: the query's `next`, if it is a path of this console
 *  (never another origin, never `//host`), else the overview. */
export function nextPath(query: string): string {
  const target = new URLSearchParams(query).get("next") ?? "";
  return /^\/(?!\/)/.test(target) ? target : "/overview";
}
