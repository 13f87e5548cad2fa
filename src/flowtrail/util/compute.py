"""Arrow's compute functions, called the way ``pyarrow.compute`` calls them, without importing it.

Importing ``pyarrow.compute`` builds a Python wrapper, signature and docstring for every one of
Arrow's ~600 kernels (``_make_global_functions``, with numpydoc scraping): ~70 ms of every
command's start-up here, ~6 % of `observe` over the 1M-flow benchmark. This module makes a
wrapper the first time a function is used, with the same calling convention (data arguments
first, then the options class's arguments, or ``options=``), through the same registry
(``pyarrow._compute``). ``cast``, ``take`` and ``fill_null``, which pyarrow writes by hand,
are written here the same way.

Arrow's own methods (``Array.cast``, ``Table.take``, ``ChunkedArray.dictionary_encode``, …)
still import ``pyarrow.compute`` on first use: code on a start-up-sensitive path calls the
functions here instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
from pyarrow import _compute

_RENAMED = {"and_": "and", "or_": "or"}  # Python keywords, renamed as pyarrow.compute does


def _wrapper(name: str) -> Callable[..., Any]:
    func = _compute.get_function(_RENAMED.get(name, name))
    arity = func.arity
    class_name = func._doc.options_class
    options_class = getattr(_compute, class_name) if class_name else None

    def call(*args: Any, memory_pool: Any = None, options: Any = None, **kwargs: Any) -> Any:
        if arity is not Ellipsis:
            if len(args) < arity:
                raise TypeError(f"{name} takes {arity} positional argument(s), but {len(args)} were given")
            option_args, args = args[arity:], args[:arity]
        else:
            option_args = ()
        if option_args or kwargs:
            if options is not None:
                raise TypeError(f"Function {name!r} called with both an 'options' argument and additional arguments")
            if options_class is None:
                raise TypeError(f"{name} takes no options")
            options = options_class(*option_args, **kwargs)
        elif isinstance(options, dict):
            assert options_class is not None
            options = options_class(**options)
        if args and isinstance(args[0], _compute.Expression):
            return _compute.Expression._call(name, list(args), options)
        return func.call(list(args), options, memory_pool)

    call.__name__ = name
    return call


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        fn = _wrapper(name)
    except pa.ArrowKeyError:
        raise AttributeError(f"no Arrow compute function {name!r}") from None
    globals()[name] = fn  # made once
    return fn


def cast(arr: Any, target_type: Any = None, safe: bool | None = None, options: Any = None,
         memory_pool: Any = None) -> Any:
    if options is None:
        target = pa.lib.ensure_type(target_type)
        options = _compute.CastOptions.unsafe(target) if safe is False else _compute.CastOptions.safe(target)
    elif safe is not None or target_type is not None:
        raise ValueError("Must either pass values for 'target_type' and 'safe' or pass a value for 'options'")
    return _compute.call_function("cast", [arr], options, memory_pool)


def take(data: Any, indices: Any, *, boundscheck: bool = True, memory_pool: Any = None) -> Any:
    return _compute.call_function("take", [data, indices], _compute.TakeOptions(boundscheck=boundscheck),
                                  memory_pool)


def fill_null(values: Any, fill_value: Any) -> Any:
    if not isinstance(fill_value, (pa.Array, pa.ChunkedArray, pa.Scalar)):
        fill_value = pa.scalar(fill_value, type=values.type)
    elif values.type != fill_value.type:
        fill_value = pa.scalar(fill_value.as_py(), type=values.type)
    return _compute.call_function("coalesce", [values, fill_value])
