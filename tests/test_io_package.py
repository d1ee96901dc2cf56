"""The io package loads its submodules on first use and exports every documented name."""

from __future__ import annotations

import json
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


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after running ``statement``."""
    code = f"import json, sys\n{statement}\n"
    code += f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_reading_a_photo_imports_neither_opencv_nor_the_depth_readers() -> None:
    modules = ("cv2", "magicbokeh.io.depth_files", "magicbokeh.io.sidecar")
    assert _loaded_after("from magicbokeh.io import load_image", modules) == []


def test_the_depth_readers_import_neither_tifffile_nor_opencv_until_needed() -> None:
    statement = "import magicbokeh.api, magicbokeh.depth.resolve, magicbokeh.io.depth_files"
    assert _loaded_after(statement, ("cv2", "tifffile")) == []
