"""What a nursery raised, as the one exception to raise at a public boundary (never a group).

Trio-side (it knows :class:`trio.Cancelled`), hence not in the pure :mod:`mediation.errors`.
"""

from __future__ import annotations

import trio

from .errors import MediationError


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception to raise for what a nursery raised: never a group at a public boundary.

    A domain error wins (it says what happened to the client); else the only other error (the
    caller's own, or a cancellation); else a :class:`MediationError` naming them all.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    domain = [leaf for leaf in leaves if isinstance(leaf, MediationError)]
    if domain:
        return domain[0]
    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if len(errors) <= 1:
        return (errors or leaves)[0]
    return MediationError("; ".join(repr(leaf) for leaf in leaves))
