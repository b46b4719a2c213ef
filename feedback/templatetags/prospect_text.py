"""Template filters that make long model outputs readable: fenced code blocks become monospaced blocks."""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()

# ```lang\n ... ``` (the closing fence may be missing while a model rambles on).
FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@register.filter
def with_code_blocks(text) -> str:
    """Escape `text`; fenced code becomes <pre><code>. The rest keeps its line breaks (CSS pre-wrap)."""
    text = "" if text is None else str(text)
    parts, position = [], 0
    for match in FENCE.finditer(text):
        parts.append(escape(text[position : match.start()]))
        language = match.group(1)
        css = f' class="language-{escape(language)}"' if language else ""
        parts.append(f"<pre><code{css}>{escape(match.group(2).rstrip(chr(10)))}</code></pre>")
        position = match.end()
    parts.append(escape(text[position:]))
    return mark_safe("".join(parts))


@register.filter
def percent(part, whole) -> int:
    """Whole percent of part / whole, 0 when whole is 0."""
    try:
        return round(100 * float(part) / float(whole)) if float(whole) else 0
    except (TypeError, ValueError):
        return 0
