"""Text from users, links and files shown as data: markdown and HTML in it are never rendered."""

import re

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:])")


def plain(text: object, limit: int = 400) -> str:
    """``text`` with every markdown/HTML control character escaped, cut to ``limit`` characters.

    Example:
        >>> plain("![x](http://evil/img.png)")
        '\\\\!\\\\[x\\\\]\\\\(http\\\\://evil/img\\\\.png\\\\)'
    """
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[:limit] + "…"
    return _MARKDOWN.sub(r"\\\1", s)
