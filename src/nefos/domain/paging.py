from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PageParams:
    """A window over a list: both ``page``+``limit`` and ``skip``+``limit`` map here."""

    offset: int
    limit: int

    @property
    def page(self) -> int:
        return self.offset // self.limit + 1

    def pages(self, total: int) -> int:
        return max(1, math.ceil(total / self.limit)) if total else 0
