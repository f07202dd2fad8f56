"""Argument and shape checks shared by the keras_dmpo layers.

Errors name the argument and the value, so a wrong configuration is found
from the message alone.
"""

import math
import numbers


def check_positive_int(name, value):
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {name}={value!r}.")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown `{name}`={value!r}; expected one of {list(choices)}.")
    return value


def check_tokens_shape(name, shape):
    """Tokens must be 3-D: (batch, tokens, width), with a known width."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(
            f"`{name}` must be 3-D tokens (batch, tokens, width); got a "
            f"{len(shape)}-D input of shape {shape}."
        )
    if shape[-1] is None:
        raise ValueError(f"`{name}` must have a known width (last axis); got shape {shape}.")
    return shape


def check_prefix_tokens(value):
    """``num_prefix_tokens``: an integer >= 1 (the class token comes first)."""
    return check_positive_int("num_prefix_tokens", value)


def grid_shape_for(name, num_tokens, num_prefix_tokens=1, grid_shape=None):
    """Patch grid ``(rows, cols)`` behind ``num_tokens`` tokens.

    The tokens are ``num_prefix_tokens`` special tokens (class first; DeiT adds
    a distillation token, DINOv2 its register tokens) followed by the patch
    grid row by row. ``grid_shape`` fixes the grid (non-square images);
    without it the grid must be square. Returns None when the token count is
    not known (dynamic shape).
    """
    if num_tokens is None:
        return None if grid_shape is None else tuple(grid_shape)
    num_patches = int(num_tokens) - num_prefix_tokens
    if grid_shape is not None:
        rows, cols = (int(v) for v in grid_shape)
        if rows * cols != num_patches:
            raise ValueError(
                f"`{name}` has {num_tokens} tokens; expected {num_prefix_tokens} "
                f"prefix token(s) plus a {rows}x{cols} patch grid "
                f"({num_prefix_tokens + rows * cols} tokens)."
            )
        return rows, cols
    side = math.isqrt(max(num_patches, 0))
    if side < 1 or side * side != num_patches:
        raise ValueError(
            f"`{name}` has {num_tokens} tokens; expected {num_prefix_tokens} "
            "prefix token(s) (class token first) plus a square patch grid, i.e. "
            f"{num_prefix_tokens} + g*g tokens. Pass `grid_shape` for a "
            "non-square grid."
        )
    return side, side


def check_grid_shape(grid_shape):
    """``None`` or a pair of integers >= 1."""
    if grid_shape is None:
        return None
    try:
        rows, cols = grid_shape
    except (TypeError, ValueError):
        raise ValueError(
            f"`grid_shape` must be None or (rows, cols); got grid_shape={grid_shape!r}."
        ) from None
    return check_positive_int("grid_shape[0]", rows), check_positive_int("grid_shape[1]", cols)
