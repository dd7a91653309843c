"""DICOM radiographs (CR, DX) as ITK reads them, made to look as a viewer shows them.

Slicer's DICOM scalar volume plugin and SimpleITK read a file with the same ITK GDCMImageIO
(Slicer 5.10: ITK 5.4; SimpleITK >= 2.3: ITK >= 5.3), which

* applies Rescale Slope/Intercept (0028,1053/1052);
* turns MONOCHROME1 (minimum = white) into MONOCHROME2 by inverting the *stored* values before
  rescaling (GDCM ``ImageCodec::DoInvertMonochrome``: ``2**BitsStored - 1 - s`` unsigned,
  ``-1 - s`` signed), while the tags keep saying MONOCHROME1;
* takes the spacing of CR, DX, MG, IO, XA and RF images from Imager Pixel Spacing (0018,1164),
  at the detector, and never from Pixel Spacing (0028,0030), even when both are present
  (GDCM ``ImageHelper::GetSpacingTagFromMediaStorage``); other classes from Pixel Spacing;
* applies no VOI: Slicer only offers Window Center/Width (0028,1050/1051) as display presets.

A clinic's PNG export of a radiograph is its VOI-windowed view. So that the model sees the
same image whichever way the radiograph arrives, :func:`displayed_values` applies the
file's first window (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID, DICOM PS3.3 C.11.2.1.2)
on the modality values and returns MONOCHROME2 polarity. A VOI LUT Sequence (0028,3010) is
neither read nor seen (ITK's dictionary skips sequences): a file that has only that is used
over its full range.

Tags come as ITK's metadata dictionary: ``{"0028|0004": "MONOCHROME1", ...}``; numpy only, but
:func:`read_tags` (SimpleITK, imported when called; no torch).
"""

from __future__ import annotations

import numpy as np

PHOTOMETRIC = "0028|0004"
BITS_ALLOCATED = "0028|0100"
BITS_STORED = "0028|0101"
PIXEL_REPRESENTATION = "0028|0103"
RESCALE_INTERCEPT = "0028|1052"
RESCALE_SLOPE = "0028|1053"
WINDOW_CENTER = "0028|1050"
WINDOW_WIDTH = "0028|1051"
VOI_LUT_FUNCTION = "0028|1056"
# the spacing tags, in the order GDCM would consult them for some class; (row, column) spacing
SPACING_TAGS = {
    "0018|1164": "Imager Pixel Spacing (0018,1164), at the detector",
    "0028|0030": "Pixel Spacing (0028,0030)",
    "0018|2010": "Nominal Scanned Pixel Spacing (0018,2010)",
}
MAGNIFICATION = "0018|1114"  # Estimated Radiographic Magnification Factor
ITK_DICOM_IO = "GDCMImageIO"
WINDOW_BLOCK_ROWS = 256


def tags_of(reader) -> dict:
    """The public DICOM tags a SimpleITK reader has read, as ITK keys them."""
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys() if "|" in key}


def read_tags(path) -> dict:
    """A DICOM file's tags, from its header (the reader ITK would use); {} for any other file
    or one that cannot be read (the pixels' reader reports that)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    try:
        if reader.GetImageIOFromFileName(str(path)) != ITK_DICOM_IO:
            return {}
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return tags_of(reader)


def _text(tags: dict, key: str) -> str:
    return str(tags.get(key, "")).strip()


def _numbers(tags: dict, key: str) -> list[float]:
    """A DS/IS value (``"0.2\\0.15"``) as floats; [] when absent or unreadable."""
    try:
        return [float(v) for v in _text(tags, key).split("\\") if v.strip()]
    except ValueError:
        return []


def _first(tags: dict, key: str, default: float) -> float:
    values = _numbers(tags, key)
    return values[0] if values else default


def is_monochrome1(tags: dict) -> bool:
    return _text(tags, PHOTOMETRIC).upper() == "MONOCHROME1"


def voi_window(tags: dict) -> tuple[float, float, str] | None:
    """(center, width, function) of the file's first VOI window, or None when it has none usable."""
    centers, widths = _numbers(tags, WINDOW_CENTER), _numbers(tags, WINDOW_WIDTH)
    if not centers or not widths:
        return None
    function = _text(tags, VOI_LUT_FUNCTION).upper() or "LINEAR"
    center, width = centers[0], widths[0]
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return center, width, function


def monochrome1_reflection(tags: dict) -> float:
    """K such that ITK's value of a MONOCHROME1 pixel is ``K - m``, m its modality value
    (rescaled stored value): the constant of GDCM's inversion carried through the rescale."""
    slope, intercept = _first(tags, RESCALE_SLOPE, 1.0), _first(tags, RESCALE_INTERCEPT, 0.0)
    if int(_first(tags, PIXEL_REPRESENTATION, 0)):
        top = -1.0  # signed: stored s becomes -1 - s
    elif int(_first(tags, BITS_ALLOCATED, 16)) == 8:
        top = 255.0
    else:
        top = 2.0 ** int(_first(tags, BITS_STORED, 16)) - 1.0
    return slope * top + 2.0 * intercept


def _apply_voi(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: modality values -> [0, 1]."""
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def displayed_values(array: np.ndarray, tags: dict) -> np.ndarray:
    """ITK's pixel values of a DICOM radiograph as the file asks them to be shown: its first
    VOI window applied (0 = black, 1 = white), MONOCHROME2 polarity. Without a usable window
    the values are returned as ITK gave them (already MONOCHROME2)."""
    window = voi_window(tags)
    if window is None:
        return array
    array = np.asarray(array)
    shown = np.empty(array.shape, dtype=np.float32)
    reflection = monochrome1_reflection(tags) if is_monochrome1(tags) else None
    # float64 rounds once, at the end, whatever the polarity (a MONOCHROME1 and a MONOCHROME2
    # copy of a film give the same float32 image); by blocks of rows: a 4000 x 5000 film
    # needs no extra gigabyte
    for rows in range(0, array.shape[0], WINDOW_BLOCK_ROWS):
        values = array[rows : rows + WINDOW_BLOCK_ROWS].astype(np.float64)
        if reflection is None:
            shown[rows : rows + WINDOW_BLOCK_ROWS] = _apply_voi(values, *window)
        else:  # the window is defined on the file's own values; the minimum is shown white after it
            shown[rows : rows + WINDOW_BLOCK_ROWS] = 1.0 - _apply_voi(reflection - values, *window)
    return shown


def spacing_source(tags: dict, spacing) -> str:
    """Which tag the reader's spacing (sx, sy) came from, and what else a reader of the
    numbers should know (a calibrated Pixel Spacing that was not used, the magnification)."""
    sx, sy = (float(v) for v in spacing)
    used = ""
    for key in SPACING_TAGS:
        values = _numbers(tags, key)
        if len(values) == 2 and np.allclose(values, (sy, sx), rtol=1e-6, atol=1e-9):  # DICOM: row\column
            used = key
            break
    if not used:
        return "the DICOM header"
    notes = [SPACING_TAGS[used]]
    pixel_spacing = _numbers(tags, "0028|0030")
    if used != "0028|0030" and len(pixel_spacing) == 2 and not np.allclose(pixel_spacing, (sy, sx)):
        row, column = pixel_spacing
        notes.append(f"Pixel Spacing (0028,0030) {column:g} x {row:g} mm is not used, as in Slicer")
    magnification = _numbers(tags, MAGNIFICATION)
    if used == "0018|1164" and magnification:
        notes.append(f"estimated radiographic magnification {magnification[0]:g}")
    return "; ".join(notes)


def presentation_note(tags: dict) -> str:
    """How the pixel values were prepared, for the output (empty for a plain MONOCHROME2 file)."""
    window = voi_window(tags)
    parts = []
    if is_monochrome1(tags):
        parts.append("MONOCHROME1 shown inverted")
    if window is not None:
        center, width, function = window
        parts.append(f"VOI window {center:g}/{width:g} ({function})")
    elif _text(tags, WINDOW_CENTER):
        parts.append("window not usable, full range used")
    return ", ".join(parts)
