"""
The CPU pre/post (value contract and mirror padding).
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['image_window', 'postprocess', 'preprocess']
def image_window(lo: typing.SupportsFloat | typing.SupportsIndex, hi: typing.SupportsFloat | typing.SupportsIndex) -> tuple[float, float, float]:
    """
    (lo, span, inv_span) as float32 numbers of a robust range (lo, hi).
    """
def postprocess(net: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]], size_multiple: typing.SupportsInt | typing.SupportsIndex, dtype: str, image_windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]] | None = None, offsets: collections.abc.Sequence[bool] = []) -> numpy.ndarray:
    """
    (N, C, Hp, Wp) float32 -> (C, N, H, W) uint16/float32; image_windows applied after the windows, channel c adding the image's lo where offsets[c].
    """
def preprocess(images: numpy.ndarray, window: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex], size_multiple: typing.SupportsInt | typing.SupportsIndex, image_windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]] | None = None) -> numpy.ndarray:
    """
    (N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32 network input. image_windows: per image (lo, span, inv_span), applied before the window (default: none).
    """
