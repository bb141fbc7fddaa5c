"""
dexrt's compiled runtime (private: use the `dexrt` package)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
from . import prepost
from . import cuda
from . import tensorrt
__all__: list[str] = ['ConeBeam', 'Engine', 'cuda', 'drr_polyenergetic', 'drr_project', 'max_working_side', 'normalisation', 'pad_geometry', 'prepost', 'resample_tolerance', 'resize', 'robust_range', 'tensorrt', 'wait_for_background_closes', 'working_size']
class Engine:
    """
    A network behind the value contract: (N, H, W) images -> (C, N, H, W) images.
    """
    def __init__(self, *, backend: str, device: str, model: bytes, weights: bytes, input_window: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex], output_windows: collections.abc.Sequence[tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex]], size_multiple: typing.SupportsInt | typing.SupportsIndex, performance_hint: str = 'LATENCY', num_threads: typing.SupportsInt | typing.SupportsIndex = 0, max_batch: typing.SupportsInt | typing.SupportsIndex = 8, max_delay_us: typing.SupportsInt | typing.SupportsIndex = 1000, workers: typing.SupportsInt | typing.SupportsIndex = 2, cuda_device: typing.SupportsInt | typing.SupportsIndex = 0, contexts: typing.SupportsInt | typing.SupportsIndex = 2, cuda_graphs: bool = False, cache_dir: str = '', normalised: bool = False, channels: collections.abc.Sequence[str] = [], model_spacing_mm: typing.SupportsFloat | typing.SupportsIndex = 0.0, upsampling: str = 'guided', guide_radius: typing.SupportsInt | typing.SupportsIndex = 2, guide_epsilon: typing.SupportsFloat | typing.SupportsIndex = 9.999999747378752e-05, soft_correction: bool = True) -> None:
        ...
    def close(self, cancel: bool = False) -> None:
        """
        Stop accepting work; run (or, with cancel, cancel) what is queued; wait for the workers.
        """
    def infer(self, images: numpy.ndarray, spacing_mm: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex] | None = None, model_spacing_mm: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> numpy.ndarray:
        """
        (N, H, W) uint16 or float32 -> (C, N, H, W) of the same dtype. With spacing_mm (row, col), the images run at the model's pixel spacing (model_spacing_mm, 0: the engine's) and come back at their own size. Releases the GIL.
        """
    def infer_device(self, pointer: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, dtype: str, stream: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.ndarray:
        """
        (N, H, W) images in CUDA device memory -> (C, N, H, W) host array. GPU backends only.
        """
    def reset_stats(self) -> None:
        ...
    def stats(self) -> dict:
        """
        Per-stage latency summaries (microseconds) and the batch-size histogram.
        """
    def submit(self, image: numpy.ndarray, future: typing.Any, spacing_mm: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex] | None = None, model_spacing_mm: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
        """
        Queue one (H, W) image (copied); `future` (concurrent.futures.Future) receives a tuple of C (H, W) arrays, or the exception. spacing_mm as for infer.
        """
    @property
    def backend(self) -> str:
        ...
    @property
    def device(self) -> str:
        ...
    @property
    def max_batch(self) -> int:
        ...
    @property
    def max_delay_us(self) -> int:
        ...
    @property
    def model_spacing_mm(self) -> float:
        ...
    @property
    def normalised(self) -> bool:
        ...
    @property
    def output_channels(self) -> int:
        ...
    @property
    def pending(self) -> int:
        """
        Requests queued and not yet running.
        """
    @property
    def size_multiple(self) -> int:
        ...
    @property
    def workers(self) -> int:
        ...
class ConeBeam:
    """
    One kV imager view: cone-beam geometry in millimetres and degrees.
    """
    def __init__(self, *, sid_mm: typing.SupportsFloat | typing.SupportsIndex, sdd_mm: typing.SupportsFloat | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, cols: typing.SupportsInt | typing.SupportsIndex, pixel_row_mm: typing.SupportsFloat | typing.SupportsIndex, pixel_col_mm: typing.SupportsFloat | typing.SupportsIndex, gantry_deg: typing.SupportsFloat | typing.SupportsIndex = 0.0, couch_deg: typing.SupportsFloat | typing.SupportsIndex = 0.0, tilt_deg: typing.SupportsFloat | typing.SupportsIndex = 0.0, iso_mm: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex] = [0.0, 0.0, 0.0]) -> None:
        ...
    def frame(self) -> dict:
        """
        Source, pixel (0, 0) centre, column/row steps and beam direction, world mm.
        """
    @property
    def cols(self) -> int:
        ...
    @property
    def couch_deg(self) -> float:
        ...
    @property
    def gantry_deg(self) -> float:
        ...
    @property
    def iso_mm(self) -> numpy.typing.NDArray[numpy.float64]:
        ...
    @property
    def pixel_col_mm(self) -> float:
        ...
    @property
    def pixel_row_mm(self) -> float:
        ...
    @property
    def rows(self) -> int:
        ...
    @property
    def sdd_mm(self) -> float:
        ...
    @property
    def sid_mm(self) -> float:
        ...
    @property
    def tilt_deg(self) -> float:
        ...
def drr_polyenergetic(line: numpy.ndarray, mu: numpy.ndarray, weights: numpy.ndarray, threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.float64]:
    """
    out[s, ...] = sum_e weights[s, e] * exp(-sum_c mu[c, e] * line[c, ...]) -> (sums, ...) float64.
    """
def drr_project(volume: numpy.ndarray, affine: numpy.ndarray, views: collections.abc.Sequence[ConeBeam], threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.float32]:
    """
    Siddon line integrals (value x mm) of each channel: -> (n_views, channels, rows, cols) float32.
    """
def pad_geometry(height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, size_multiple: typing.SupportsInt | typing.SupportsIndex) -> tuple[int, int, int, int]:
    """
    (padded_height, padded_width, top, left) of an image inside the network input.
    """
def resize(image: numpy.ndarray, height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
    """
    (H, W) -> (height, width) float32: area averaging where it shrinks, linear interpolation where it grows (the full-resolution path's resampling).
    """
def robust_range(image: numpy.ndarray) -> tuple:
    """
    (lo, hi) of one (H, W) image: the 1st and 99th percentiles of its central 80 % (sampled), as a normalised engine maps it. uint16, float32 or any real dtype (as float64).
    """
def wait_for_background_closes() -> None:
    """
    Wait until engines released without close() have finished their queued work (run at exit).
    """
def working_size(height: typing.SupportsInt | typing.SupportsIndex, width: typing.SupportsInt | typing.SupportsIndex, spacing_mm: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex], model_spacing_mm: typing.SupportsFloat | typing.SupportsIndex) -> tuple[int, int]:
    """
    (h, w) an (H, W) image of (row, col) spacing runs at for a model of model_spacing_mm: (H, W) when within the resampling tolerance.
    """
__version__: str = '0.1.0'
max_working_side: int = 4096
normalisation: dict = {'method': 'robust-percentile', 'percentiles': (1.0, 99.0), 'central_fraction': 0.8, 'max_samples': 65536}
resample_tolerance: float = 0.01
