"""Redis replies as text, and text that is safe to print on an operator's terminal.

redis-py answers bytes or str depending on `decode_responses`; `as_text` gives str
either way. Ids, key names and reasons can be hostile (a job id with an escape
sequence, a key with a newline): `printable` escapes what could act on a terminal or
forge an output line. Pure functions; no service imports.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["as_text", "printable"]


def as_text(value: object, *, errors: Literal["strict", "backslashreplace"] = "strict") -> str:
    """`value` as str: bytes decoded as UTF-8, anything else through `str()`.

    Args:
        errors: `strict` raises UnicodeDecodeError on bytes that are not UTF-8 (where
            such bytes mean a bug); `backslashreplace` shows them as `\\xNN` (operator output).
    """
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def printable(value: bytes | str, *, escape: Literal["repr", "hex"] = "repr") -> str:
    """`value` as text with every byte that is not UTF-8 and every non-printable character escaped.

    Args:
        escape: how a non-printable character is written: `repr` as Python writes it in a
            string (`\\n`, `\\x1b`, `\\u200b`); `hex` as `\\x` and its code point in hex
            (`\\x0a`, `\\x1b`, `\\x200b`).
    """
    text = as_text(value, errors="backslashreplace")
    if text.isprintable():
        return text
    if escape == "hex":
        return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
