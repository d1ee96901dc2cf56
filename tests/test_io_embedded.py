"""Depth maps embedded in photos: HEIC depth images, GDepth XMP, Dynamic Depth containers.

Every test builds a real file: JPEGs with XMP (standard and extended) or appended items,
and a HEIC whose second image is turned into the primary's depth auxiliary image by editing
the HEIF boxes (pillow-heif can read depth images but not write them).
"""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from magicbokeh.errors import MagicBokehError
from magicbokeh.io import load_image, normalize_disparity, read_embedded_depth
from magicbokeh.io.embedded_depth import heif_depth_to_disparity

NEAR, FAR = 1.0, 5.0
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
EXTENDED_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"


def _scene_depth(height: int = 24, width: int = 32) -> np.ndarray:
    """Metric depth in [NEAR, FAR]: a tilted floor with a near box in the middle."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    depth = FAR - (FAR - NEAR) * (0.8 * y / (height - 1) + 0.1 * x / (width - 1))
    depth[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = NEAR
    return depth


def _expected_disparity(depth: np.ndarray) -> np.ndarray:
    return normalize_disparity(1.0 / depth)


def _encode_range(depth: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "RangeLinear":
        v = (depth - NEAR) / (FAR - NEAR)
    else:
        v = FAR * (depth - NEAR) / (depth * (FAR - NEAR))
    return np.rint(np.clip(v, 0, 1) * 65535).astype(np.uint16)


def _png(codes: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", codes)
    assert ok
    return encoded.tobytes()


def _jpeg(height: int = 24, width: int = 32, orientation: int | None = None) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    options = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _with_app1(jpeg: bytes, payloads: list[bytes]) -> bytes:
    """Insert APP1 segments right after SOI and any APP0."""
    position = 2
    if jpeg[2:4] == b"\xff\xe0":
        position += 2 + struct.unpack(">H", jpeg[4:6])[0]
    segments = b"".join(
        b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload for payload in payloads
    )
    return jpeg[:position] + segments + jpeg[position:]


def _xmp(description: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        f'<rdf:RDF xmlns:rdf="{RDF_NS}">{description}</rdf:RDF>'
        '</x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _standard_xmp(description: str) -> bytes:
    return b"http://ns.adobe.com/xap/1.0/\x00" + _xmp(description)


def _gdepth_description(fmt: str, data: str | None, extra: str = "") -> str:
    data_attr = f' GDepth:Data="{data}"' if data is not None else ""
    return (
        '<rdf:Description rdf:about="" '
        'xmlns:GDepth="http://ns.google.com/photos/1.0/depthmap/" '
        'xmlns:xmpNote="http://ns.adobe.com/xmp/note/" '
        f'GDepth:Format="{fmt}" GDepth:Near="{NEAR}" GDepth:Far="{FAR}" '
        f'GDepth:Mime="image/png"{data_attr}{extra}/>'
    )


# ----------------------------------------------------------------------------------------
# GDepth


@pytest.mark.parametrize("fmt", ["RangeInverse", "RangeLinear"])
def test_gdepth_in_standard_xmp(tmp_path: Path, fmt: str) -> None:
    depth = _scene_depth()
    data = base64.b64encode(_png(_encode_range(depth, fmt))).decode()
    path = tmp_path / "gdepth.jpg"
    path.write_bytes(_with_app1(_jpeg(), [_standard_xmp(_gdepth_description(fmt, data))]))
    disparity = read_embedded_depth(path)
    assert disparity is not None and disparity.dtype == np.float32
    assert disparity.shape == depth.shape
    np.testing.assert_allclose(disparity, _expected_disparity(depth), atol=2e-4)
    assert disparity[12, 16] == pytest.approx(1.0)  # the near box is the nearest thing
    assert load_image(path).rgb.shape == (24, 32, 3)  # the photo itself still loads


def test_gdepth_in_extended_xmp_reassembled_by_offset(tmp_path: Path) -> None:
    depth = _scene_depth(40, 48)
    data = base64.b64encode(_png(_encode_range(depth, "RangeInverse"))).decode()
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    main = _standard_xmp(
        _gdepth_description("RangeInverse", None, f' xmpNote:HasExtendedXMP="{guid.decode()}"')
    )
    extended = _xmp(
        '<rdf:Description rdf:about="" '
        'xmlns:GDepth="http://ns.google.com/photos/1.0/depthmap/" '
        f'GDepth:Data="{data}"/>'
    )
    chunk = 700
    pieces = [
        EXTENDED_HEADER + guid + struct.pack(">II", len(extended), start) + extended[start:][:chunk]
        for start in range(0, len(extended), chunk)
    ]
    assert len(pieces) >= 3
    decoy = EXTENDED_HEADER + b"F" * 32 + struct.pack(">II", 10, 0) + b"not xml!!!"
    payloads = [main, pieces[-1], decoy, *pieces[:-1][::-1]]  # out of order on purpose
    path = tmp_path / "extended.jpg"
    path.write_bytes(_with_app1(_jpeg(), payloads))
    disparity = read_embedded_depth(path)
    assert disparity is not None
    np.testing.assert_allclose(disparity, _expected_disparity(depth), atol=2e-4)


def test_gdepth_follows_exif_orientation(tmp_path: Path) -> None:
    depth = _scene_depth()
    data = base64.b64encode(_png(_encode_range(depth, "RangeLinear"))).decode()
    path = tmp_path / "rotated.jpg"
    xmp = _standard_xmp(_gdepth_description("RangeLinear", data))
    path.write_bytes(_with_app1(_jpeg(orientation=6), [xmp]))
    disparity = read_embedded_depth(path)
    assert disparity is not None and disparity.shape == (32, 24)
    assert disparity.shape == load_image(path).rgb.shape[:2]
    np.testing.assert_allclose(disparity, np.rot90(_expected_disparity(depth), -1), atol=2e-4)


def test_gdepth_with_8_bit_jpeg_and_no_range(tmp_path: Path) -> None:
    v = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))  # grows with distance
    ok, encoded = cv2.imencode(".jpg", v, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    data = base64.b64encode(encoded.tobytes()).decode()
    description = (
        '<rdf:Description rdf:about="" '
        'xmlns:GDepth="http://ns.google.com/photos/1.0/depthmap/" '
        f'GDepth:Format="RangeLinear" GDepth:Mime="image/jpeg" GDepth:Data="{data}"/>'
    )
    path = tmp_path / "norange.jpg"
    path.write_bytes(_with_app1(_jpeg(), [_standard_xmp(description)]))
    disparity = read_embedded_depth(path)
    assert disparity is not None
    np.testing.assert_allclose(disparity, 1.0 - v / 255.0, atol=0.02)


def test_broken_gdepth_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    xmp = _standard_xmp(_gdepth_description("RangeInverse", "bm90IGFuIGltYWdl"))
    path.write_bytes(_with_app1(_jpeg(), [xmp]))
    with pytest.raises(MagicBokehError, match="cannot be decoded"):
        read_embedded_depth(path)


# ----------------------------------------------------------------------------------------
# Dynamic Depth


def _dynamic_depth_xmp(items: list[dict[str, str]], depth_map: str) -> bytes:
    entries = "".join(
        '<rdf:li rdf:parseType="Resource"><Container:Item '
        + " ".join(f'Item:{key}="{value}"' for key, value in item.items())
        + "/></rdf:li>"
        for item in items
    )
    return _standard_xmp(
        '<rdf:Description rdf:about="" '
        'xmlns:Device="http://ns.google.com/photos/dd/1.0/device/" '
        'xmlns:Container="http://ns.google.com/photos/dd/1.0/container/" '
        'xmlns:Item="http://ns.google.com/photos/dd/1.0/item/" '
        'xmlns:Camera="http://ns.google.com/photos/dd/1.0/camera/" '
        'xmlns:DepthMap="http://ns.google.com/photos/dd/1.0/depthmap/">'
        "<Device:Container><Container:Directory><rdf:Seq>"
        f"{entries}"
        "</rdf:Seq></Container:Directory></Device:Container>"
        '<Device:Cameras><rdf:Seq><rdf:li rdf:parseType="Resource"><Device:Camera>'
        f"<Camera:DepthMap {depth_map}/>"
        "</Device:Camera></rdf:li></rdf:Seq></Device:Cameras>"
        "</rdf:Description>"
    )


@pytest.mark.parametrize("by_semantic", [True, False])
def test_dynamic_depth_appended_item(tmp_path: Path, by_semantic: bool) -> None:
    depth = _scene_depth()
    depth_png = _png(_encode_range(depth, "RangeInverse"))
    original = _jpeg(24, 32)  # an earlier item, so the depth item's offset depends on order
    depth_item = {"Mime": "image/png", "Length": str(len(depth_png)), "DataURI": "depth/map"}
    if by_semantic:
        depth_item["Semantic"] = "Depth"
    items = [
        {"Mime": "image/jpeg", "Semantic": "Primary"},
        {"Mime": "image/jpeg", "Semantic": "Original", "Length": str(len(original))},
        depth_item,
    ]
    depth_map = (
        f'DepthMap:Format="RangeInverse" DepthMap:Near="{NEAR}" DepthMap:Far="{FAR}" '
        'DepthMap:Units="Meters" DepthMap:DepthURI="depth/map" DepthMap:ItemSemantic="Depth"'
    )
    primary = _with_app1(_jpeg(), [_dynamic_depth_xmp(items, depth_map)])
    path = tmp_path / "dynamic.jpg"
    path.write_bytes(primary + original + depth_png)
    disparity = read_embedded_depth(path)
    assert disparity is not None
    np.testing.assert_allclose(disparity, _expected_disparity(depth), atol=2e-4)
    assert load_image(path).rgb.shape == (24, 32, 3)


def test_container_without_depth_item_gives_none(tmp_path: Path) -> None:
    gain_map = _jpeg(12, 16)
    items = [
        {"Mime": "image/jpeg", "Semantic": "Primary"},
        {"Mime": "image/jpeg", "Semantic": "GainMap", "Length": str(len(gain_map))},
    ]
    path = tmp_path / "ultrahdr.jpg"
    path.write_bytes(_with_app1(_jpeg(), [_dynamic_depth_xmp(items, "")]) + gain_map)
    assert read_embedded_depth(path) is None


# ----------------------------------------------------------------------------------------
# Files without depth


def test_plain_files_give_none(tmp_path: Path) -> None:
    (tmp_path / "plain.jpg").write_bytes(_jpeg())
    assert read_embedded_depth(tmp_path / "plain.jpg") is None
    other = _with_app1(_jpeg(), [_standard_xmp('<rdf:Description rdf:about=""/>')])
    (tmp_path / "xmp.jpg").write_bytes(other)
    assert read_embedded_depth(tmp_path / "xmp.jpg") is None
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "plain.png")
    assert read_embedded_depth(tmp_path / "plain.png") is None
    pillow_heif.from_bytes("RGB", (16, 8), bytes(16 * 8 * 3)).save(tmp_path / "plain.heic")
    assert read_embedded_depth(tmp_path / "plain.heic") is None
    with pytest.raises(MagicBokehError, match="does not exist"):
        read_embedded_depth(tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------------------
# HEIC


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, box start, payload start, box end) for the boxes in data[start:end]."""
    found, position = [], start
    while position < end:
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        found.append((kind, position, position + 8, position + size))
        position += size
    return found


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _add_depth_property(iprp: bytes) -> bytes:
    """Give item 2 an ``auxC`` property naming the HEVC depth auxiliary type."""
    children = {kind: iprp[p:e] for kind, _, p, e in _boxes(iprp, 0, len(iprp))}
    ipco, ipma = children[b"ipco"], bytearray(children[b"ipma"])
    property_index = len(_boxes(ipco, 0, len(ipco))) + 1
    ipco += _box(b"auxC", b"\0\0\0\0" + b"urn:mpeg:hevc:2015:auxid:2\0")
    version, large = ipma[0], ipma[3] & 1
    assert version == 0 and not large  # what libheif writes for two small images
    entries, position = [], 8
    for _ in range(struct.unpack(">I", ipma[4:8])[0]):
        item_id, count = struct.unpack(">HB", ipma[position : position + 3])
        entries.append([item_id, list(ipma[position + 3 : position + 3 + count])])
        position += 3 + count
    entries[1][1].append(property_index)
    body = bytes(ipma[:8]) + b"".join(
        struct.pack(">HB", item_id, len(props)) + bytes(props) for item_id, props in entries
    )
    return _box(b"ipco", ipco) + _box(b"ipma", body)


def _shift_iloc(iloc: bytes, delta: int) -> bytes:
    """Move every file offset in an ``iloc`` box payload by ``delta`` bytes."""
    data = bytearray(iloc)
    version = data[0]
    offset_size, length_size, base_size = data[4] >> 4, data[4] & 15, data[5] >> 4
    index_size = data[5] & 15 if version in (1, 2) else 0
    count_size = 4 if version == 2 else 2
    count = int.from_bytes(data[6 : 6 + count_size], "big")
    position = 6 + count_size

    def shift(at: int, size: int) -> None:
        value = int.from_bytes(data[at : at + size], "big") + delta
        data[at : at + size] = value.to_bytes(size, "big")

    for _ in range(count):
        position += 4 if version == 2 else 2
        if version in (1, 2):
            assert data[position + 1] & 15 == 0  # data stored in the file
            position += 2
        position += 2
        base_at = position
        has_base = base_size and int.from_bytes(data[position : position + base_size], "big")
        if has_base:
            shift(base_at, base_size)
        position += base_size
        extents = int.from_bytes(data[position : position + 2], "big")
        position += 2
        for _ in range(extents):
            position += index_size
            if not has_base:
                shift(position, offset_size)
            position += offset_size + length_size
    return bytes(data)


def _heic_with_depth(rgb: np.ndarray, depth_codes: np.ndarray) -> bytes:
    height, width = rgb.shape[:2]
    heif = pillow_heif.from_bytes("RGB", (width, height), rgb.tobytes())
    heif.add_frombytes("L", depth_codes.shape[::-1], depth_codes.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=-1, primary_index=0)
    data = buffer.getvalue()
    top = {kind: (s, p, e) for kind, s, p, e in _boxes(data, 0, len(data))}
    meta_start, meta_payload, meta_end = top[b"meta"]
    assert meta_end <= top[b"mdat"][0]
    children = []
    for kind, _, p, e in _boxes(data, meta_payload + 4, meta_end):
        payload = data[p:e]
        children.append((kind, _add_depth_property(payload) if kind == b"iprp" else payload))
    # item 2 is an auxiliary image of item 1
    children.append((b"iref", b"\0\0\0\0" + _box(b"auxl", struct.pack(">HHH", 2, 1, 1))))

    def meta(parts: list[tuple[bytes, bytes]]) -> bytes:
        return _box(
            b"meta", data[meta_payload : meta_payload + 4] + b"".join(_box(*c) for c in parts)
        )

    delta = len(meta(children)) - (meta_end - meta_start)
    children = [(k, _shift_iloc(p, delta) if k == b"iloc" else p) for k, p in children]
    return data[:meta_start] + meta(children) + data[meta_end:]


def test_heic_depth_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    y, x = np.mgrid[0:16, 0:24]
    codes = np.clip(x * 10 + y * 3, 0, 255).astype(np.uint8)  # disparity codes
    path = tmp_path / "portrait.heic"
    path.write_bytes(_heic_with_depth(rgb, codes))
    assert len(pillow_heif.open_heif(path)) == 1  # the depth item is no longer a top image
    disparity = read_embedded_depth(path)
    assert disparity is not None and disparity.shape == (16, 24)
    np.testing.assert_allclose(disparity, normalize_disparity(codes), atol=1e-6)
    assert load_image(path).rgb.shape == (32, 48, 3)


def test_heif_representation_rules() -> None:
    codes = np.array([[0, 85], [170, 255]], dtype=np.uint8)
    v = codes / 255.0
    np.testing.assert_allclose(heif_depth_to_disparity(codes, {}), v, atol=1e-6)
    np.testing.assert_allclose(
        heif_depth_to_disparity(codes, {"representation_type": 1}), v, atol=1e-6
    )
    linear_z = {"representation_type": 2, "z_near": 1.0, "z_far": 4.0}
    expected = normalize_disparity(1.0 / (1.0 + 3.0 * v))
    np.testing.assert_allclose(heif_depth_to_disparity(codes, linear_z), expected, atol=1e-6)
    np.testing.assert_allclose(
        heif_depth_to_disparity(codes, {"representation_type": 2}), 1.0 - v, atol=1e-6
    )
    sixteen = (codes.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_allclose(heif_depth_to_disparity(sixteen, {}), v, atol=1e-6)


def test_unreadable_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(b"\xff\xd8\xff\xd9")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(MagicBokehError, match="cannot read image .*Permission denied"):
        read_embedded_depth(path)
