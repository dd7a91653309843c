"""The files a browser session may read: images under the server's data root, and uploads.

The page lists the root's images by name (:func:`list_images`); a name sent back is turned
into a file by :func:`resolve_image`, which refuses anything else (an absolute path, ``..``,
a hidden or unlisted file, a symlink or a header's data file that leads out of the root)
with one message, so a refusal never tells whether a path exists on the server.

MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) headers can name another file
that holds the pixels, anywhere on the disk: :func:`separate_data_file` reads that name
(SimpleITK would follow it), so an upload cannot make the server read a file it was not given.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..conventions import IMAGE_SUFFIXES, is_image_name
from ..errors import KeypointsError

MAX_LISTED = 5000  # the page's list stays small enough to send; the rest are logged as left out
HEADER_BYTES = 65536  # MetaImage and NRRD headers are text lines before the pixels
_HEADER_FORMATS = {".mha": "meta", ".mhd": "meta", ".nrrd": "nrrd", ".nhdr": "nrrd"}


class PathRefusedError(KeypointsError, ValueError):
    """A name that is not one of the server's images (whether or not such a file exists)."""


class UnsafeImageError(KeypointsError, ValueError):
    """A file the server will not read as an image: not named as one, or its header names
    another file for its pixels."""


def _refused(name) -> PathRefusedError:
    return PathRefusedError(f"{str(name)[:200]!r} is not one of this server's images: pick one from the list")


def list_images(root, limit: int = MAX_LISTED) -> list[str]:
    """The images under ``root`` as relative POSIX names, sorted; hidden files and folders and
    symlinked folders are left out, and so is every file :func:`resolve_image` would refuse."""
    root = Path(root).resolve()
    names: list[str] = []
    for folder, subfolders, files in os.walk(root):  # followlinks=False: a linked folder may lead out
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file in sorted(files):
            if not is_image_name(file):
                continue
            name = (Path(folder) / file).relative_to(root).as_posix()
            try:
                resolve_image(root, name)
            except PathRefusedError:
                continue
            names.append(name)
            if len(names) >= limit:
                return names
    return names


def resolve_image(root, name) -> Path:
    """The file of ``name`` (one of :func:`list_images`' names) under ``root``, resolved.

    Raises :class:`PathRefusedError`, with the same message whatever the reason."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise _refused(name)
    # the name as listed: relative, no empty, '.', '..' or hidden parts (split as written, not normalised)
    if PurePosixPath(name).is_absolute() or any(not part or part.startswith(".") for part in name.split("/")):
        raise _refused(name)
    root = Path(root).resolve()
    try:
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, a name too long
        raise _refused(name) from None
    if not path.is_relative_to(root) or not path.is_file() or not is_image_name(path.name):
        raise _refused(name)
    try:
        data_file = separate_data_file(path)
    except (OSError, UnsafeImageError):
        raise _refused(name) from None
    if data_file is not None and not _plain_file_inside(path.parent / data_file, root):
        raise _refused(name)
    return path


def _plain_file_inside(path: Path, root: Path) -> bool:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved.is_relative_to(root) and resolved.is_file()


def separate_data_file(path) -> str | None:
    """The file a MetaImage or NRRD header names for its pixels; None when the pixels are in
    ``path`` itself (or it is another format). A name that is not one plain file (NRRD's
    ``LIST`` or a numbered pattern, MetaImage's ``LIST``) and a header that is not understood
    raise :class:`UnsafeImageError`."""
    path = Path(path)
    kind = _HEADER_FORMATS.get(path.suffix.lower())
    if kind is None:
        return None
    with open(path, "rb") as file:
        text = file.read(HEADER_BYTES).decode("latin-1")
    lines = text.splitlines()
    if kind == "meta":
        for line in lines:
            key, equals, value = line.partition("=")
            if equals and key.strip().lower() == "elementdatafile":
                return _one_file(value.strip(), local="local", where=path.name)
        raise UnsafeImageError(f"{path.name}: no ElementDataFile line in its header")
    for line in lines[1:]:  # the first line is the NRRD magic
        if not line.strip():
            return None  # the end of the header: the pixels follow
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in ("data file", "datafile"):
            return _one_file(value.strip(), local=None, where=path.name)
    raise UnsafeImageError(f"{path.name}: its header does not end within {HEADER_BYTES} bytes")


def _one_file(value: str, local: str | None, where: str) -> str | None:
    if local is not None and value.lower() == local:
        return None
    if not value or value.split()[0] != value or value.upper() == "LIST":
        raise UnsafeImageError(f"{where} names its pixel files as {value[:80]!r}, not one file")
    return value


def check_upload_name(name: str) -> None:
    """An upload's name must end in an image suffix: SimpleITK picks its reader by it."""
    if not is_image_name(name):
        raise UnsafeImageError(f"{name} is not an image file this app opens (one of {', '.join(IMAGE_SUFFIXES)})")


def check_self_contained(path, display_name: str) -> None:
    """Refuse an uploaded header that would make the server read another file for its pixels."""
    if separate_data_file(path) is not None:
        raise UnsafeImageError(
            f"{display_name} keeps its pixels in another file; upload an image whose pixels are in the file itself"
        )
