"""
The TensorRT backend in this build.
"""
from __future__ import annotations
import typing
__all__: list[str] = ['compiled', 'library_version']
def library_version() -> typing.Any:
    ...
compiled: bool = False
