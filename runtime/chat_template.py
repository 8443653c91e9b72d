"""Chat templates are code from the model's files: rendered in jinja2's immutable sandbox (no attribute of Python's
internals, no mutation of the messages), and bounded so that a template cannot hang or exhaust memory.

Bounds, per render: MAX_STEPS template lines executed (a line counter through sys.settrace, for this thread and
only for jinja's compiled code, so nested loops over anything end), MAX_SECONDS of wall time, MAX_SIZE characters
or items for any string or list that one operation makes (`'x' * n`, `[..] * n`, `**` of big numbers, widths in
formats, integer arguments to calls and filters), and MAX_OUTPUT characters of output. Breaking one is a
`TemplateLimitError` (a jinja2 SecurityError), which `Tokenizer.apply_chat_template` reports in one line.
"""
from __future__ import annotations

import functools
import json
import re
import sys
import time
from datetime import datetime
from typing import Any

MAX_STEPS = 2_000_000
MAX_SECONDS = 5.0
MAX_SIZE = 1 << 20
MAX_OUTPUT = 16 << 20
_WIDE_FORMAT = re.compile(r"\d{7,}")  # a width or precision of a million or more


def compile_chat_template(source: str) -> Any:
    """A `BoundedTemplate` for `source`; jinja2.TemplateSyntaxError if it does not parse."""
    import jinja2
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class TemplateLimitError(SecurityError):
        pass

    def limit(what: str) -> TemplateLimitError:
        return TemplateLimitError(f"the template {what}")

    def check_size(value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_SIZE:
            raise limit(f"made a value of {len(value):,} items (the limit is {MAX_SIZE:,})")
        return value

    def check_ints(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
                raise limit(f"passed the integer {value} to a call (the limit is {MAX_SIZE:,})")

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                        raise limit(f"repeated a value to {len(seq) * n:,} items (the limit is {MAX_SIZE:,})")
            elif operator == "**":
                if isinstance(right, int) and isinstance(left, (int, float)) and abs(left) > 1 and (
                        abs(right) > 4096 or abs(right) * max(1, int(abs(left)).bit_length()) > 65536):
                    raise limit(f"raised a number to the power {right} (too big to compute)")
            elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
                raise limit("formats with a width of a million characters or more")
            return check_size(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            check_ints(args, kwargs)
            owner = getattr(__obj, "__self__", None)
            if isinstance(owner, str) and getattr(__obj, "__name__", "") in ("format", "format_map") and \
                    _WIDE_FORMAT.search(owner):
                raise limit("formats with a width of a million characters or more")
            return check_size(super().call(__context, __obj, *args, **kwargs))

    class GenerationTag(Extension):
        """`{% generation %}...{% endgeneration %}` (HF marks assistant tokens with it) renders its body as is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
        return check_size(json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                     sort_keys=sort_keys))

    def bounded_filter(fn: Any) -> Any:
        @functools.wraps(fn)  # (keeps jinja's pass_context/pass_environment marks)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_ints(args, kwargs)
            return check_size(fn(*args, **kwargs))

        return wrapper

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: bounded_filter(fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return BoundedTemplate(env.from_string(source), limit)


class BoundedTemplate:
    def __init__(self, template: Any, limit: Any) -> None:
        self.template = template
        self._limit = limit

    def render(self, **context: Any) -> str:
        """Render within the bounds in the module docstring."""
        steps = 0
        deadline = time.monotonic() + MAX_SECONDS
        limit = self._limit

        def local(frame: Any, event: str, _arg: Any) -> Any:
            nonlocal steps
            if event == "line":
                steps += 1
                if steps > MAX_STEPS:
                    raise limit(f"ran more than {MAX_STEPS:,} steps (a loop that does not end?)")
                if steps % 4096 == 0 and time.monotonic() > deadline:
                    raise limit(f"ran longer than {MAX_SECONDS:g} s")
            return local

        def trace(frame: Any, event: str, _arg: Any) -> Any:
            return local if frame.f_code.co_filename == "<template>" else None

        previous = sys.gettrace()
        if previous is None:  # (under a debugger or coverage tool, the other bounds still hold)
            sys.settrace(trace)
        try:
            pieces: list[str] = []
            size = 0
            for piece in self.template.generate(**context):
                size += len(piece)
                if size > MAX_OUTPUT:
                    raise limit(f"wrote more than {MAX_OUTPUT:,} characters")
                pieces.append(piece)
            return "".join(pieces)
        finally:
            if previous is None:
                sys.settrace(None)


__all__ = ["MAX_OUTPUT", "MAX_SECONDS", "MAX_SIZE", "MAX_STEPS", "BoundedTemplate", "compile_chat_template"]
