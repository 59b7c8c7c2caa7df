"""The navigation: each installed domain registers its place in it."""

from __future__ import annotations

from dataclasses import dataclass

from careplane.security import Principal, Role


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str
    summary: str
    roles: frozenset[Role] | None = None  # None: everyone signed in

    def visible_to(self, principal: Principal) -> bool:
        return self.roles is None or principal.has(*self.roles)


_ITEMS: dict[str, NavItem] = {}


def register(item: NavItem) -> None:
    _ITEMS[item.key] = item


def items_for(principal: Principal) -> list[NavItem]:
    return [item for item in _ITEMS.values() if item.visible_to(principal)]


register(NavItem("dashboard", "Dashboard", "/", "Your work at a glance"))
register(NavItem("jobs", "Jobs", "/jobs",
                 "Pipelines, AI inference and exports: progress, logs, cancel and retry",
                 roles=frozenset(r for r in Role if r is not Role.patient)))
