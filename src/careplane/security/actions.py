"""What a principal does to a target: the verbs of the access policy and of SMART scopes."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["READS", "WRITES", "Action"]


class Action(StrEnum):
    read = "read"
    search = "search"
    create = "create"
    update = "update"
    delete = "delete"
    export = "export"
    execute = "execute"


READS = frozenset({Action.read, Action.search})
WRITES = frozenset({Action.create, Action.update, Action.delete})
