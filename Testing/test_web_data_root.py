"""What a browser session may read from the server's disk (web/data_root.py): the data root's
images by name, never a path that leads out of it, and no upload that names another file.

Real files, folders and symlinks in a temporary folder; SimpleITK shows that the header
formats would be followed out of the folder if they were let through.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from interactive_keypoints.web.data_root import (
    PathRefusedError,
    UnsafeImageError,
    check_self_contained,
    check_upload_name,
    list_images,
    resolve_image,
    separate_data_file,
)

PIXELS = (np.arange(32 * 48).reshape(32, 48) % 251).astype(np.uint8)


def write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(PIXELS), str(path))
    return path


def meta_header(data_file: str) -> str:
    return f"ObjectType = Image\nNDims = 2\nDimSize = 48 32\nElementType = MET_UCHAR\nElementDataFile = {data_file}\n"


@pytest.fixture
def folders(tmp_path):
    """A data root with images, hidden and non-image files, symlinks in and out, and
    header-format images whose pixels lie inside and outside it; beside it, private files."""
    root = tmp_path / "root"
    write_png(root / "a.png")
    write_png(root / "sub" / "b.png")
    write_png(root / ".hidden.png")
    write_png(root / ".cache" / "c.png")
    (root / "notes.txt").write_text("not an image")
    (root / "link-in.png").symlink_to(root / "sub" / "b.png")
    outside = tmp_path / "private"
    write_png(outside / "secret.png")
    PIXELS.tofile(outside / "secret.raw")
    (root / "link-out.png").symlink_to(outside / "secret.png")
    (root / "linked-folder").symlink_to(outside)
    write_png(tmp_path / "root-evil" / "x.png")  # a sibling whose name starts with the root's
    PIXELS.tofile(root / "inside.raw")
    (root / "inside.mhd").write_text(meta_header("inside.raw"))
    (root / "outside.mhd").write_text(meta_header(str(outside / "secret.raw")))
    (root / "climbs.mhd").write_text(meta_header("../private/secret.raw"))
    return root, outside


def test_the_list_holds_the_roots_images_only(folders):
    root, _ = folders
    assert list_images(root) == ["a.png", "inside.mhd", "link-in.png", "sub/b.png"]
    assert list_images(root, limit=2) == ["a.png", "inside.mhd"]


def test_a_listed_name_opens_its_file(folders):
    root, _ = folders
    assert resolve_image(root, "sub/b.png") == (root / "sub" / "b.png").resolve()
    assert resolve_image(root, "link-in.png") == (root / "sub" / "b.png").resolve()  # a link that stays inside
    image = sitk.ReadImage(str(resolve_image(root, "inside.mhd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), PIXELS)


REFUSED = [
    "../private/secret.png",  # exists
    "../private/missing.png",  # does not
    "sub/../../private/secret.png",
    "sub/../a.png",  # stays inside, but a '..' is never resolved
    "./a.png",
    "%2e%2e/private/secret.png",  # URL-encoded: never decoded, so never found
    "..%2fprivate%2fsecret.png",
    "%2E%2E%2Fprivate%2Fsecret.png",
    "..\\private\\secret.png",
    "~/secret.png",
    "link-out.png",  # a symlink that leads out
    "linked-folder/secret.png",
    "../root-evil/x.png",  # a sibling that shares the root's name as a prefix
    ".hidden.png",
    ".cache/c.png",
    "notes.txt",
    "sub",
    "sub/",
    "missing.png",
    "a.png\0.txt",
    "",
    "outside.mhd",  # its pixels lie outside the root (SimpleITK would read them)
    "climbs.mhd",
]


@pytest.mark.parametrize("name", REFUSED)
def test_every_other_name_is_refused_with_one_message(folders, name):
    root, _ = folders
    with pytest.raises(PathRefusedError) as refused:
        resolve_image(root, name)
    # the same words whatever the reason: a refusal does not tell whether a path exists
    assert str(refused.value) == f"{name!r} is not one of this server's images: pick one from the list"


def test_absolute_paths_are_refused_even_inside_the_root(folders):
    root, outside = folders
    for path in (root / "a.png", root.resolve() / "a.png", outside / "secret.png", Path("/etc/passwd")):
        with pytest.raises(PathRefusedError):
            resolve_image(root, str(path))


def test_a_non_string_choice_is_refused(folders):
    root, _ = folders
    for value in (None, 3, ["a.png"], {"path": "a.png"}):
        with pytest.raises(PathRefusedError):
            resolve_image(root, value)


def test_a_header_that_names_another_file_is_refused_as_an_upload(tmp_path, folders):
    _, outside = folders
    secret = outside / "secret.raw"
    cases = {
        "points-out.mha": meta_header(str(secret)),
        "points-out.mhd": meta_header(str(secret)),
        "points-out.nrrd": f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 32\nencoding: raw\ndata file: {secret}\n\n",
        "points-out.nhdr": f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 32\nencoding: raw\ndatafile: {secret}\n\n",
        "list.mha": meta_header("LIST"),
        "pattern.nrrd": "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 32\nencoding: raw\ndata file: s%03d.raw 1 3 1\n\n",
        "no-data-line.mha": "ObjectType = Image\nNDims = 2\n",
    }
    for name, header in cases.items():
        path = tmp_path / name
        path.write_text(header)
        if name.startswith("points-out"):  # what it would do if read: the outside file's pixels
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), PIXELS)
        with pytest.raises(UnsafeImageError, match="pixels|names its pixel files|header") as refused:
            check_self_contained(path, name)
        assert name in str(refused.value)


def test_images_with_their_pixels_inside_pass(tmp_path):
    local = tmp_path / "local.mha"
    sitk.WriteImage(sitk.GetImageFromArray(PIXELS), str(local))  # ElementDataFile = LOCAL
    attached = tmp_path / "attached.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(PIXELS), str(attached))
    png = write_png(tmp_path / "plain.png")
    for path in (local, attached, png):
        assert separate_data_file(path) is None
        check_self_contained(path, path.name)


@pytest.mark.parametrize("name", ["scan.exe", "scan", "scan.png.txt", ".hidden.png", ""])
def test_an_upload_must_be_named_as_an_image(name):
    with pytest.raises(UnsafeImageError, match="not an image file"):
        check_upload_name(name)


def test_a_folder_that_lists_itself_in_a_loop_ends(tmp_path):
    root = tmp_path / "root"
    write_png(root / "a.png")
    os.symlink(root, root / "loop")  # a symlinked folder is not entered
    (root / "self.png").symlink_to(root / "self.png")  # a symlink loop
    assert list_images(root) == ["a.png"]
    with pytest.raises(PathRefusedError):
        resolve_image(root, "self.png")
