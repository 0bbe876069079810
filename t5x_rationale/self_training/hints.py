"""STaR's rationalization hint: how the gold answer is shown in a prompt, and how any trace
of it is taken out of a rationale before the rationale is kept."""

from __future__ import annotations

import re

HINT_TEMPLATE = " (hint: {label})"
# The hint as the model may echo it: "(hint: 42)", "hint: 42", "[HINT: 42]"; any other
# mention of a hint is not stripped, and `mentions_hint` rejects the rationale.
_HINT_ECHO = re.compile(r"[\(\[]?\s*hint\s*:\s*[^\s\)\]]*\s*[\)\]]?", re.IGNORECASE)


def with_hint(question: str, label: str) -> str:
    """The rationalization prompt: the question with its gold answer as a hint."""
    return question + HINT_TEMPLATE.format(label=label)


def strip_hint(rationale: str) -> tuple[str, bool]:
    """(the rationale without any echo of the hint, whether one was removed)."""
    stripped, count = _HINT_ECHO.subn(" ", rationale)
    stripped = re.sub(r"\s+", " ", stripped).strip() if count else rationale
    return stripped, count > 0


def mentions_hint(text: str) -> bool:
    """True when `text` still carries the word "hint" (such a rationale is never kept)."""
    return re.search(r"hint", text, re.IGNORECASE) is not None
