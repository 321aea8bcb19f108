"""The one exception type for user mistakes: the launcher prints it as one line and exits 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A problem with the user's config, data or workdir, with its fix in the message."""


def unknown_name(kind: str, name: str, valid: Iterable[str], field: str) -> UserError:
    """An error for an unknown name that suggests the nearest valid ones."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
    return UserError(f"unknown {kind} {name!r} ({field}); {hint}valid: {', '.join(valid)}")
