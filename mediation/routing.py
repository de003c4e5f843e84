"""The route table: which routes a client of each entrypoint sends along and receives from.

Pure. A client connecting to entrypoint E sends upstream along every route whose source is E and
receives downstream along every route whose target is E (docs/design.md, "Configuration"); a
route between two endpoints is a bridge. The engine holds one table and replaces it whole on
reload, so a session always sees one consistent version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .config import RouteConfig


@dataclass(frozen=True)
class EntrypointRoutes:
    upstream: tuple[RouteConfig, ...] = ()
    downstream: tuple[RouteConfig, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upstream or self.downstream)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(route.name for route in (*self.upstream, *self.downstream))


class RouteTable:
    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        routes = tuple(routes)
        self.bridges = tuple(r for r in routes if r.direction == "bridge")
        names = {r.source for r in routes if r.direction == "upstream"} | {
            r.target for r in routes if r.direction == "downstream"
        }
        self._by_entrypoint = {
            name: EntrypointRoutes(
                upstream=tuple(r for r in routes if r.direction == "upstream" and r.source == name),
                downstream=tuple(
                    r for r in routes if r.direction == "downstream" and r.target == name
                ),
            )
            for name in names
        }

    def for_entrypoint(self, name: str) -> EntrypointRoutes:
        return self._by_entrypoint.get(name, EntrypointRoutes())
