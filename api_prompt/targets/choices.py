"""The option lines of a multiple-choice question (``A. text``), for targets that answer only
multiple choice; torch-free, so the target registry can check a question without loading one.

>>> parse_options("Which?\\nA. a cat\\nB) a dog")
{'A': 'a cat', 'B': 'a dog'}
"""

from __future__ import annotations

import re

__all__ = ["parse_options"]

_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s+(.+?)\s*$")


def parse_options(question: str) -> dict[str, str]:
    """The ``X. text`` option lines of a multiple-choice prompt, in order.

    >>> parse_options("Question: Which?\\nOptions:\\nA. a red circle\\nB. a blue square\\nPlease select ...")
    {'A': 'a red circle', 'B': 'a blue square'}
    """
    options: dict[str, str] = {}
    for line in question.splitlines():
        match = _OPTION_LINE.match(line)
        if match and match.group(1) not in options:
            options[match.group(1)] = match.group(2)
    return options
