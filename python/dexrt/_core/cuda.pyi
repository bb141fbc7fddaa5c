"""
CUDA support in this build, and the CUDA pre/post kernels.
"""
from __future__ import annotations
import collections.abc
import numpy
import typing
__all__: list[str] = ['compiled', 'devices', 'max_channels', 'postprocess', 'preprocess', 'robust_ranges', 'status']
def devices() -> list:
    """
    The usable CUDA devices: index, name, compute_capability, memory.
    """
def postprocess(net: numpy.ndarray, height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]], size_multiple: typing.SupportsInt | typing.SupportsIndex, dtype: str, image_windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]] | None = None, offsets: collections.abc.Sequence[bool] = []) -> numpy.ndarray:
    """
    (N, C, Hp, Wp) float32/float16 -> (C, N, H, W) uint16/float32, on the GPU (host arrays in and out).
    """
def preprocess(images: numpy.ndarray, window: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex], size_multiple: typing.SupportsInt | typing.SupportsIndex, net_dtype: str = 'float32', image_windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]] | None = None) -> numpy.ndarray:
    """
    (N, H, W) uint16/float32 -> (N, 1, Hp, Wp) float32/float16, on the GPU (host arrays in and out).
    """
def robust_ranges(images: numpy.ndarray) -> list:
    """
    (N, H, W) uint16/float32 -> [(lo, hi)] per image, the pixels sampled on the GPU (as for device images).
    """
def status() -> dict:
    """
    CUDA runtime/driver versions and device count; `error` says why no device is usable.
    """
compiled: bool = True
max_channels: int = 16
