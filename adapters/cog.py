"""A stand-in for cog's pre-0.1 predictor API (``cog.Predictor`` and ``@cog.input``), for ``clipag run``.

Replicate-era repositories, kvfrans/clipdraw's ``predict.py`` among them, subclass ``cog.Predictor`` and declare
their inputs with ``@cog.input(name, type=..., default=..., help=...)``. No cog release on PyPI has that API
(0.0.3 has ``cog.Model``; later ones ``BasePredictor`` and ``Input``), so such a script cannot even be imported
today. Under ``clipag run``, ``import cog`` finds this module when cog is not installed (``--standin cog``
when a newer cog is). As the old cog server did, a declared input that the caller leaves out takes its
default, a missing input with no default is an error naming it, and ``options``/``min``/``max`` are checked.
Nothing here serves HTTP or builds containers: a driver script calls ``setup()`` and ``predict(...)`` itself.
"""

from __future__ import annotations

import functools
import inspect
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Predictor", "input", "Path"]

_NO_DEFAULT = object()


class Path(type(pathlib.Path())):  # PosixPath or WindowsPath, as pathlib.Path() itself picks
    """cog's file type: a plain :class:`pathlib.Path` (the old cog uploaded it; here it is just the path)."""


class Predictor:
    """Base class of an old-API predictor: override ``setup`` (load models) and ``predict`` (run once)."""

    def setup(self) -> None:
        """Load models; called once before any ``predict``."""

    def predict(self, **inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define predict()")


@dataclass(frozen=True)
class _Input:
    name: str
    type: type | None
    default: Any
    options: tuple | None
    minimum: float | None
    maximum: float | None

    def check(self, value: Any) -> Any:
        if self.type in (int, float, str) and isinstance(value, str) and self.type is not str:
            value = self.type(value)  # the old server received form fields as text
        if self.options is not None and value not in self.options:
            raise ValueError(f"input {self.name!r} must be one of {list(self.options)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"input {self.name!r} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"input {self.name!r} must be <= {self.maximum}, got {value!r}")
        return value


def input(name: str, type: type | None = None, default: Any = _NO_DEFAULT, min: float | None = None,
          max: float | None = None, options: list | None = None, help: str | None = None,
          ) -> Callable[[Callable], Callable]:
    """Declare one input of ``predict``; stacked decorators declare several (old cog's ``@cog.input``)."""
    declared = _Input(name, type, default, tuple(options) if options is not None else None, min, max)

    def decorate(predict: Callable) -> Callable:
        inner = getattr(predict, "__wrapped__", predict)
        inputs = {declared.name: declared, **getattr(predict, "cog_inputs", {})}
        parameters = inspect.signature(inner).parameters
        if name not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise TypeError(f"@cog.input({name!r}): {inner.__qualname__}() has no parameter {name!r}")

        @functools.wraps(inner)
        def predict_with_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
            names = list(parameters)[1:]
            if len(args) > len(names):
                raise TypeError(f"{inner.__qualname__}() takes {len(names)} inputs, {len(args)} given")
            bound = dict(zip(names, args, strict=False))
            for spec in inputs.values():
                if spec.name in kwargs or spec.name in bound:
                    value = kwargs[spec.name] if spec.name in kwargs else bound[spec.name]
                elif spec.default is not _NO_DEFAULT:
                    value = spec.default
                else:
                    raise TypeError(f"{inner.__qualname__}() is missing the input {spec.name!r} (it has no default)")
                kwargs[spec.name] = spec.check(value)
            rest = {k: v for k, v in bound.items() if k not in inputs}
            return inner(self, **rest, **kwargs)

        predict_with_inputs.cog_inputs = inputs  # type: ignore[attr-defined]
        return predict_with_inputs

    return decorate
