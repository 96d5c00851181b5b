"""The built-in tasks: name -> factory. Each module builds its Task from data that ships with
gossipd's dependencies or with Python itself, so a fresh machine trains without downloads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossipd.tasks import Task, TaskContext


def _digits(ctx: TaskContext) -> Task:
    from gossipd.tasks_builtin import digits

    return digits.factory(ctx)


def _wine(ctx: TaskContext) -> Task:
    from gossipd.tasks_builtin import wine

    return wine.factory(ctx)


def _charlm(ctx: TaskContext) -> Task:
    from gossipd.tasks_builtin import charlm

    return charlm.factory(ctx)


# Imported lazily so naming one task does not load every data set.
BUILTIN: dict[str, Callable[[TaskContext], Task]] = {
    "digits-mlp": _digits,
    "wine-mlp": _wine,
    "charlm": _charlm,
}
