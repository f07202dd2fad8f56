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
        raise ValueError(
            f"Unknown `{name}`={value!r}; expected one of {list(choices)}."
        )
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
        raise ValueError(
            f"`{name}` must have a known width (last axis); got shape {shape}."
        )
    return shape


def grid_side(name, num_tokens):
    """Side ``g`` of the patch grid for ``num_tokens = 1 + g * g`` tokens.

    Returns None when the token count is not known (dynamic shape).
    """
    if num_tokens is None:
        return None
    side = math.isqrt(max(int(num_tokens) - 1, 0))
    if side < 1 or side * side != num_tokens - 1:
        raise ValueError(
            f"`{name}` has {num_tokens} tokens; expected a class token plus a "
            "square patch grid, i.e. 1 + g*g tokens (e.g. 17, 50 or 197)."
        )
    return side
