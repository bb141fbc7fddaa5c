"""
The CPU pre/post (value contract and mirror padding).
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['postprocess', 'preprocess']
def postprocess(net: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]], size_multiple: typing.SupportsInt | typing.SupportsIndex, dtype: str) -> numpy.ndarray:
    """
    (N, C, Hp, Wp) float32 -> (C, N, H, W) uint16/float32.
    """
def preprocess(images: numpy.ndarray, window: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex], size_multiple: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
    """
    (N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32 network input.
    """
