"""Widget values checked against each node's own schema, for the nodes' `validate_inputs`.

ComfyUI skips its own range and dropdown checks for every input a node's validate_inputs takes (all of them when
it takes **kwargs), and its float check lets NaN through (every comparison with NaN is false). So each node of the
pack takes all its widget values here and gets one message naming the input: wrong type, NaN or infinity, out of
bounds, or a dropdown value that is not an option. ComfyUI shows the message when the prompt is queued.
"""

from __future__ import annotations

import inspect
import math

from ..wan_core.config import InputRefused
from .api_version import io


def _options(widget: io.Combo.Input) -> list:
    options = widget.options
    return list(options) if options is not None else []


def _problem(widget: io.Input, value: object) -> str | None:
    name = widget.id
    if isinstance(widget, io.Combo.Input):
        options = _options(widget)
        if value not in options:
            shown = ", ".join(map(str, options[:12])) + (", ..." if len(options) > 12 else "")
            return f"{name}: {value!r} is not one of the options ({shown or 'none available'})"
        return None
    if isinstance(widget, io.Boolean.Input):
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if isinstance(widget, io.String.Input):
        return None if isinstance(value, str) else f"{name} must be text, got {type(value).__name__}"
    if isinstance(widget, io.Int.Input):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be a whole number, got {value!r}"
    elif isinstance(widget, io.Float.Input):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r}"
    else:
        return None
    if widget.min is not None and value < widget.min:
        return f"{name} must be at least {widget.min}, got {value!r}"
    if widget.max is not None and value > widget.max:
        return f"{name} must be at most {widget.max}, got {value!r}"
    return None


def widget_problem(node: type[io.ComfyNode], values: dict) -> str | None:
    """The first problem with the widget values ComfyUI passes `node.validate_inputs`, or None when all are fine.

    Linked inputs are absent from `values` or None during validation (their producers have not run; ComfyUI passes
    None for a linked input when validate_inputs takes **kwargs); they are not checked here.
    """
    for widget in node.define_schema().inputs:
        if values.get(widget.id) is not None:
            problem = _problem(widget, values[widget.id])
            if problem:
                return problem
    return None


def with_value_checks(node: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """`node` with every widget value checked by `widget_problem` at validation, NaN included.

    A node's own `validate_inputs` keeps the inputs it names (its messages first); the node's other widgets get the
    checks ComfyUI would have made (it makes none once validate_inputs takes **kwargs) plus NaN/inf. Nodes whose
    validate_inputs already takes **kwargs check all their values themselves and are returned unchanged.
    """
    _refuse_null_widgets_at_run(node)
    own = node.__dict__.get("validate_inputs")
    function = own.__func__ if isinstance(own, classmethod) else None
    if function is not None and inspect.getfullargspec(function).varkw is not None:
        return node
    named = inspect.getfullargspec(function).args[1:] if function is not None else []

    def validate_inputs(cls, **values) -> bool | str:
        if function is not None:
            result = function(cls, **{k: values[k] for k in named if k in values})
            if result is not True:
                return result
        return widget_problem(cls, {k: v for k, v in values.items() if k not in named}) or True

    node.validate_inputs = classmethod(validate_inputs)
    return node


def _refuse_null_widgets_at_run(node: type[io.ComfyNode]) -> None:
    """`node.execute` refusing a widget whose value is still None when the node runs.

    Validation cannot tell a linked input (None until its producer runs) from a prompt that sends null for a widget,
    so a null widget is let through there and named here, before the node does anything with it.
    """
    own = node.__dict__.get("execute")
    function = own.__func__ if isinstance(own, classmethod) else None
    if function is None:
        return
    widgets = (io.Combo.Input, io.Boolean.Input, io.String.Input, io.Int.Input, io.Float.Input)

    def execute(cls, *args, **kwargs):
        schema = cls.define_schema()
        for widget in schema.inputs:
            if isinstance(widget, widgets) and widget.id in kwargs and kwargs[widget.id] is None:
                raise InputRefused(f"{schema.node_id}: {widget.id} has no value (the prompt sends null); set it on the "
                                 "node or connect an input that gives one")
        return function(cls, *args, **kwargs)

    node.execute = classmethod(execute)
