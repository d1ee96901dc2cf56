"""The io package loads its submodules on first use and exports every documented name."""

from __future__ import annotations

import subprocess
import sys

import pytest

import magicbokeh.io as io_package


def test_every_exported_name_resolves_to_its_submodule() -> None:
    for name in io_package.__all__:
        value = getattr(io_package, name)
        assert value is getattr(sys.modules[io_package._SOURCES[name]], name)
    assert set(io_package._SOURCES) == set(io_package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        io_package.nothing  # noqa: B018


def test_reading_a_photo_imports_neither_opencv_nor_the_depth_readers() -> None:
    code = (
        "import sys\n"
        "from magicbokeh.io import load_image\n"
        "print(sorted(m for m in ('cv2', 'magicbokeh.io.depth_files', 'magicbokeh.io.sidecar')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_depth_readers_import_neither_tifffile_nor_opencv_until_needed() -> None:
    code = (
        "import sys\n"
        "import magicbokeh.api, magicbokeh.depth.resolve, magicbokeh.io.depth_files\n"
        "print(sorted(m for m in ('cv2', 'tifffile') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
