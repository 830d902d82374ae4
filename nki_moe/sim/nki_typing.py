"""Emulated `nki.typing`: shape annotations (`nt.tensor[128, 512]`) are accepted and ignored."""

from __future__ import annotations


class _Annotation:
    def __init__(self, name: str):
        self._name = name

    def __getitem__(self, item) -> _Annotation:
        return self

    def __repr__(self) -> str:
        return f"nki.typing.{self._name}"


tensor = _Annotation("tensor")
mutable_tensor = _Annotation("mutable_tensor")
scalar = _Annotation("scalar")
