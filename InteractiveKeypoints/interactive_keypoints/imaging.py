"""Radiograph loading, preprocessing to the network input, and exact coordinate mapping.

Coordinates are (x, y) = (column, row) in pixels with pixel centres at integer positions.
The network input is the whole radiograph resized (no crop, no padding) with the
``align_corners=False`` convention, so a pixel *edge* of the original maps to a pixel edge
of the input: ``x_in = (x + 0.5) * W_in / W - 0.5`` (same for y).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    Resize,
    ScaleIntensity,
    ScaleIntensityRangePercentiles,
)

from . import dicom
from .conventions import describe_spacing, header_spacing, ijk_to_lps
from .errors import KeypointsError

# ITU-R BT.601 luma weights (what PIL's "L" mode and most viewers use for RGB -> grey).
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])


class ImageError(KeypointsError, ValueError):
    """An image that cannot be used as a radiograph (unreadable, wrong shape, no contrast...)."""


@dataclass
class Radiograph:
    """A 2-D grey radiograph in its original pixels.

    ``spacing`` is (sx, sy) in mm per pixel; ``spacing_known`` is False when the file
    carried no real spacing (PNG/JPEG), in which case ``spacing`` is (1.0, 1.0).
    ``origin`` is the physical LPS position (mm) of pixel (0, 0) and ``direction`` the LPS
    directions of the columns, rows and normal (as columns), as the reader gave them (a DICOM's
    Image Position and Orientation (Patient)); :meth:`ijk_to_lps` combines them with the spacing.
    ``spacing_source`` names where the spacing came from and ``presentation`` how the pixel
    values were prepared (DICOM window, MONOCHROME1), for the output.
    """

    array: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)
    spacing_known: bool = False
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    path: str | None = None
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    spacing_source: str = ""
    presentation: str = ""

    def __post_init__(self):
        self.spacing = (float(self.spacing[0]), float(self.spacing[1]))
        origin = np.asarray(self.origin, dtype=float).reshape(-1)
        self.origin = np.append(origin, np.zeros(3 - origin.size)) if origin.size < 3 else origin[:3]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """(4, 4) pixel (x, y, 0, 1) -> LPS mm: origin, spacing and direction together."""
        return ijk_to_lps(self.spacing, self.origin, self.direction)

    def spacing_description(self) -> str:
        """The spacing and where it came from, as the outputs state it."""
        return describe_spacing(self.spacing, self.spacing_known, self.spacing_source)

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return (self.height, self.width)


# ---------------------------------------------------------------------------- loading


def load_radiograph(source, spacing=None) -> Radiograph:
    """Load a radiograph from a file path or a numpy array.

    Files are read with SimpleITK (PNG, JPEG, BMP, TIFF, DICOM, NRRD, NIfTI, MHA, ...).
    An explicit ``spacing`` (sx, sy) overrides the file's and marks it as known.
    Raises :class:`ImageError` with the file name and the problem.
    """
    if isinstance(source, (str, Path)):
        radiograph = _load_file(Path(source))
    elif isinstance(source, np.ndarray):
        radiograph = Radiograph(array=_grey_from_array(source, "the array"))
    elif isinstance(source, torch.Tensor):
        radiograph = Radiograph(array=_grey_from_array(source.detach().cpu().numpy(), "the tensor"))
    else:
        raise ImageError(f"cannot load a radiograph from {type(source).__name__}; give a file path or a numpy array")
    if spacing is not None:
        radiograph.spacing = _checked_spacing(spacing, radiograph.path or "the image")
        radiograph.spacing_known = True
        radiograph.spacing_source = "the user"
    return radiograph


def _header_reader(path: Path):
    """(SimpleITK reader with the file's header read, no pixels yet; the reader's IO name)."""
    import SimpleITK as sitk  # here, not at the top: reading a training pack must work without it

    name = str(path)
    if not path.exists():
        raise ImageError(f"image file not found: {name}")
    if path.is_dir():
        raise ImageError(f"{name} is a folder, not an image file")
    reader = sitk.ImageFileReader()
    io_name = reader.GetImageIOFromFileName(name)
    if not io_name:
        raise ImageError(f"{name} is not an image file in a format SimpleITK can read")
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ImageError(f"cannot read image {name}: {_sitk_message(e)}") from None
    return reader, io_name


def image_geometry(path: str | Path):
    """((H, W), spacing (sx, sy), origin (x, y), spacing_known) from the header only: no
    pixel decoding. Raises :class:`ImageError`."""
    reader, io_name = _header_reader(Path(path))
    size = reader.GetSize()
    spacing, known = header_spacing(io_name, reader.GetSpacing()[:2])
    return (int(size[1]), int(size[0])), spacing, np.array(reader.GetOrigin()[:2], dtype=float), known


def _load_file(path: Path) -> Radiograph:
    import SimpleITK as sitk

    name = str(path)
    # header first: reject volumes before reading all their voxels
    reader, io_name = _header_reader(path)
    size = reader.GetSize()
    if reader.GetDimension() > 2 and int(np.prod(size[2:])) > 1:
        raise ImageError(
            f"{name} has {int(np.prod(size[2:]))} slices; InteractiveKeypoints needs a single 2-D radiograph"
        )
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ImageError(f"cannot read image {name}: {_sitk_message(e)}") from None

    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1 and image.GetDimension() > 2:
        array = array.reshape(array.shape[-2:])  # single-slice volume -> 2-D
    elif image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() > 2:
        array = array.reshape(array.shape[-3:])
    spacing, spacing_known = header_spacing(io_name, image.GetSpacing()[:2])
    tags = dicom.tags_of(reader) if io_name == dicom.ITK_DICOM_IO else {}
    if tags and image.GetNumberOfComponentsPerPixel() == 1:
        array = dicom.displayed_values(array, tags)  # the file's window, MONOCHROME2 polarity
    grey = _grey_from_array(array, name)
    source = (dicom.spacing_source(tags, spacing) if tags else "the file header") if spacing_known else ""
    return Radiograph(
        array=grey,
        spacing=spacing,
        spacing_known=spacing_known,
        origin=np.array(image.GetOrigin(), dtype=float),
        path=name,
        direction=_direction3(image.GetDirection(), image.GetDimension()),
        spacing_source=source,
        presentation=dicom.presentation_note(tags),
    )


def _direction3(direction, dimension: int) -> np.ndarray:
    """ITK's row-major direction of a 2-D or 3-D image as a 3 x 3 matrix."""
    matrix = np.eye(3)
    matrix[:dimension, :dimension] = np.asarray(direction, dtype=float).reshape(dimension, dimension)
    return matrix


def _sitk_message(error: RuntimeError) -> str:
    # SimpleITK messages start with a C++ source location; keep the readable last line.
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1].removeprefix("sitk::ERROR: ") if lines else "unknown error"


def _grey_from_array(array: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (1, H, W), (H, W, 1) grey or (H, W, 2/3/4) grey+alpha/RGB/RGBA -> (H, W) float32."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageError(f"{name} has pixel type {array.dtype}; expected grey or RGB numbers")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # grey (+ alpha)
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float64) @ LUMINANCE_WEIGHTS  # RGB(A) -> luminance
    if array.ndim != 2:
        raise ImageError(f"{name} has shape {tuple(array.shape)}; expected a 2-D grey image (H, W) or RGB (H, W, 3)")
    if array.size == 0:
        raise ImageError(f"{name} is empty ({array.shape[0]} x {array.shape[1]} pixels)")
    grey = array.astype(np.float32)
    if not np.isfinite(grey).all():
        raise ImageError(f"{name} contains NaN or infinite pixel values")
    if grey.min() == grey.max():
        raise ImageError(
            f"{name} has the same value ({grey.flat[0]:g}) in every pixel: no contrast, it cannot be normalised"
        )
    return grey


def _checked_spacing(spacing, name: str) -> tuple[float, float]:
    values = np.asarray(spacing, dtype=float).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.size != 2 or not np.isfinite(values).all() or (values <= 0).any():
        raise ImageError(f"invalid pixel spacing {spacing!r} for {name}: need two positive mm values (sx, sy)")
    return (float(values[0]), float(values[1]))


def check_size(radiograph: Radiograph, max_pixels: int) -> None:
    """Refuse images larger than ``max_pixels`` (protects memory before preprocessing)."""
    pixels = radiograph.height * radiograph.width
    if pixels > max_pixels:
        raise ImageError(
            f"{radiograph.path or 'the image'} has {radiograph.width} x {radiograph.height} = "
            f"{pixels} pixels, more than the limit of {max_pixels} pixels"
        )


# ---------------------------------------------------------------------- preprocessing


def intensity_transform(intensity: dict):
    """The MONAI intensity normalisation described by a ModelConfig ``intensity`` dict."""
    mode = intensity.get("mode", "minmax")
    low, high = (float(v) for v in intensity.get("range", (-1.0, 1.0)))
    if mode == "minmax":
        return ScaleIntensity(minv=low, maxv=high)
    if mode == "percentile":
        return ScaleIntensityRangePercentiles(
            lower=float(intensity.get("lower", 0.5)),
            upper=float(intensity.get("upper", 99.5)),
            b_min=low,
            b_max=high,
            clip=True,
        )
    raise ValueError(f"unknown intensity mode {mode!r}; expected 'minmax' or 'percentile'")


def preprocess_transform(input_size, intensity: dict) -> Compose:
    """(1, H, W) array/tensor -> (1, H_in, W_in) float32 tensor: normalise, then resize.

    Resize uses align_corners=False (see :func:`to_input`); anti-aliasing is a Gaussian
    blur before downsampling, symmetric, so it does not shift point positions.
    """
    return Compose(
        [
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
            intensity_transform(intensity),
            Resize(
                spatial_size=tuple(int(v) for v in input_size),
                mode="bilinear",
                align_corners=False,
                anti_aliasing=True,
            ),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def preprocess(radiograph: Radiograph, input_size, intensity: dict) -> torch.Tensor:
    """The radiograph as the network input: a (1, H_in, W_in) float32 tensor."""
    return preprocess_transform(input_size, intensity)(radiograph.array[np.newaxis])


# ------------------------------------------------------------------ coordinate mapping


def _scale(original_size, input_size) -> np.ndarray:
    """(W_in / W, H_in / H): input pixels per original pixel along x and y."""
    (h, w), (h_in, w_in) = original_size, input_size
    return np.array([w_in / w, h_in / h], dtype=float)


def resize_matrix(original_size, input_size) -> np.ndarray:
    """:func:`to_input` as a (3, 3) matrix on (x, y, 1), to compose with other maps."""
    sx, sy = _scale(original_size, input_size)
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def about_centre(linear: np.ndarray, size) -> np.ndarray:
    """A (2, 2) linear map applied about the centre of an (H, W) image, as a (3, 3) matrix."""
    h, w = size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = centre - linear @ centre
    return m


def to_input(points, original_size, input_size) -> np.ndarray:
    """Original-pixel (x, y) -> network-input pixels; points (..., 2), sizes (H, W)."""
    points = np.asarray(points, dtype=float)
    return (points + 0.5) * _scale(original_size, input_size) - 0.5


def to_original(points, original_size, input_size) -> np.ndarray:
    """Network-input pixel (x, y) -> original pixels; the inverse of :func:`to_input`."""
    points = np.asarray(points, dtype=float)
    return (points + 0.5) / _scale(original_size, input_size) - 0.5


@dataclass(frozen=True)
class CoordinateMap:
    """The mapping between one radiograph (original_size) and the network input (input_size)."""

    original_size: tuple[int, int]  # (H, W)
    input_size: tuple[int, int]  # (H, W)

    @property
    def scale(self) -> np.ndarray:
        """(sx, sy): input pixels per original pixel."""
        return _scale(self.original_size, self.input_size)

    def to_input(self, points) -> np.ndarray:
        return to_input(points, self.original_size, self.input_size)

    def to_original(self, points) -> np.ndarray:
        return to_original(points, self.original_size, self.input_size)
