"""How much work compiling an org's subject pattern takes, before it is compiled.

The `regex` module expands counted repeats when it compiles: `(?:a{3000}){3000}`, 17 characters, took 7 s and
2.4 GiB, and `(?:a{65535}){65535}` did not finish. Matching is bounded by a timeout (app.policy), compiling is not,
so a pattern is measured first: its size with every counted repeat written out (a repeat's body times its largest
count, nested repeats multiplied, `*` and `+` counted once since they loop rather than expand). Python's own parser
(re._parser) reads the pattern's structure; a pattern it cannot read (syntax only `regex` has) is measured
textually: its length times every count in it, an upper bound of any nesting.
"""

from __future__ import annotations

import functools
import re
import re._constants as sre_constants  # type: ignore[import-not-found]  # Python's own, untyped
import re._parser as sre_parse  # type: ignore[import-not-found]
from typing import Any

MAX_EXPANDED = 50_000  # about 15 ms to compile; a subject pattern needs far less
# The verbose flag, inline (`(?x)`, `(?ix:...)`): `regex` then reads `{30 00}` as a count of 3000, Python's parser as
# literal text, so such a pattern cannot be measured. Refused (a subject pattern has no need of it).
_VERBOSE = re.compile(r"\(\?[-a-zA-Z0-9^]*x")
_COUNT = re.compile(r"(?<!\\)\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def expanded_size(pattern: str) -> int:
    """The pattern's size with its counted repeats written out (see the module's note)."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return _textual(pattern)
    return _size(parsed)


@functools.lru_cache(maxsize=256)
def verbose(pattern: str) -> bool:
    """Whether the pattern turns on verbose mode, which this measure cannot read."""
    return _VERBOSE.search(pattern) is not None


def too_costly(pattern: str) -> bool:
    """Whether compiling the pattern could take long (over MAX_EXPANDED, or unmeasurable: verbose): such a pattern is
    never compiled."""
    return verbose(pattern) or expanded_size(pattern) > MAX_EXPANDED


def _size(items: Any) -> int:
    total = 0
    for op, value in items:
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            low, high, body = value
            count = high if high != sre_constants.MAXREPEAT else low
            total += max(count, 1) * _size(body)
        elif op is sre_constants.SUBPATTERN:
            total += _size(value[-1])
        elif op is sre_constants.BRANCH:
            total += sum(_size(b) for b in value[1])
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            total += _size(value[1])
        elif op is sre_constants.ATOMIC_GROUP:
            total += _size(value)
        elif op is sre_constants.GROUPREF_EXISTS:
            total += _size(value[1]) + (_size(value[2]) if value[2] is not None else 0)
        else:
            total += 1
        if total > MAX_EXPANDED:  # no need to add up the rest
            return total
    return total


def _textual(pattern: str) -> int:
    size = max(len(pattern), 1)
    for low, high in _COUNT.findall(pattern):
        size *= max(int(high or low or "1"), 1)
        if size > MAX_EXPANDED:
            return size
    return size
