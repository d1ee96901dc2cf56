"""Depth maps that cameras embed in the photo file.

:func:`read_embedded_depth` returns ``H×W`` float32 disparity in [0, 1] (larger = nearer) at
the depth map's own resolution, or None when the file carries no depth map. Callers bring it
to the image size with :func:`magicbokeh.io.depth_files.match_depth_to_image`.

Sources, tried in this order:

* **HEIC/HEIF** (iPhone portrait photos and other HEIF writers): the depth auxiliary image
  of the primary image (as exposed by pillow-heif), else an auxiliary image whose type names
  depth or disparity. The HEVC depth representation info, when present, decides the
  meaning: ``uniform_Z`` means values grow with distance (converted through ``z_near``/
  ``z_far`` when both are given, else by ``1 − v``); the other types (inverse Z, uniform
  or non-uniform disparity) grow toward the camera and are used as they are. Without that
  info (Apple stores none there) the map is taken as disparity, which is what iPhones
  record. The map comes as the decoder delivers it (with the depth item's own rotation).
* **JPEG, Google Dynamic Depth 1.0**: the XMP ``Container:Directory`` lists the items
  appended after the primary JPEG, in order, with ``Item:Mime``, ``Item:Length`` and
  ``Item:Padding``; the item whose ``Item:Semantic`` is ``Depth`` (or whose ``Item:DataURI``
  equals ``DepthMap:DepthURI``) is decoded, with ``DepthMap:Format``/``Near``/``Far``.
* **JPEG, legacy Google depth map** (``GDepth``): ``GDepth:Data`` holds a base64 PNG or
  JPEG, either in the main XMP or in the extended XMP (APP1 ``http://ns.adobe.com/xmp/
  extension/`` segments, reassembled by offset), with ``GDepth:Format``/``Near``/``Far``.

Both Google formats store a normalised value ``v`` in [0, 1] (8-bit codes / 255 or 16-bit
codes / 65535) that grows with distance: ``RangeLinear`` gives depth
``d = v·(far − near) + near``, ``RangeInverse`` gives ``d = far·near / (far − (far − near)·v)``.
Disparity is ``1 / d``, then min-max normalised. Without usable ``Near``/``Far`` the map is
``1 − v``. The JPEG's EXIF orientation is applied to the depth map, as :func:`load_image`
does to the photo.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.depth_files import normalize_disparity
from magicbokeh.io.images import apply_exif_orientation

__all__ = ["heif_depth_to_disparity", "range_to_disparity", "read_embedded_depth"]

GDEPTH_NS = "http://ns.google.com/photos/1.0/depthmap/"
XMP_NOTE_NS = "http://ns.adobe.com/xmp/note/"
DD_DEPTHMAP_NS = "http://ns.google.com/photos/dd/1.0/depthmap/"
CONTAINER_NAMESPACES = (
    "http://ns.google.com/photos/dd/1.0/container/",
    "http://ns.google.com/photos/1.0/container/",
)
ITEM_NAMESPACES = (
    "http://ns.google.com/photos/dd/1.0/item/",
    "http://ns.google.com/photos/1.0/container/item/",
)
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXTENDED_XMP_HEADER = b"http://ns.adobe.com/xmp/extension/\x00"
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_UNIFORM_Z = 2  # heif_depth_representation_type_uniform_Z


def read_embedded_depth(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Disparity ``H×W`` float32 in [0, 1] (larger = nearer) from the photo, or None.

    Raises:
        MagicBokehError: the file is missing, or it announces a depth map that cannot be
            decoded.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise MagicBokehError(f"image {file} does not exist; check the path")
    try:
        data = file.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MagicBokehError(
            f"cannot read image {file} ({reason}); check its permissions"
        ) from None
    if data[:2] == b"\xff\xd8":
        return _jpeg_depth(file, data)
    if _is_heif(data):
        return _heif_depth(file)
    return None


# ----------------------------------------------------------------------------------------
# HEIF


def _is_heif(data: bytes) -> bool:
    if len(data) < 16 or data[4:8] != b"ftyp":
        return False
    box_size = struct.unpack(">I", data[:4])[0]
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(box_size, len(data)), 4)}
    return bool(brands & _HEIF_BRANDS)


def _heif_depth(file: Path) -> np.ndarray | None:
    try:
        heif = pillow_heif.open_heif(file, convert_hdr_to_8bit=False, hdr_to_16bit=True)
        image = heif[heif.primary_index]
        depth_images = image.info.get("depth_images") or []
        metadata: dict = {}
        if depth_images:
            values = np.asarray(depth_images[0])
            metadata = depth_images[0].info.get("metadata") or {}
        else:
            aux_ids = [
                aux_id
                for aux_type, ids in (image.info.get("aux") or {}).items()
                if "depth" in aux_type.lower() or "disparity" in aux_type.lower()
                for aux_id in ids
            ]
            if not aux_ids:
                return None
            values = np.asarray(image.get_aux_image(aux_ids[0]))
    except (OSError, ValueError, SyntaxError, RuntimeError, EOFError) as exc:
        raise MagicBokehError(
            f"the depth image embedded in {file} cannot be decoded ({exc}); "
            "give a depth file (--depth-file) or let an estimator compute depth"
        ) from None
    return heif_depth_to_disparity(values, metadata)


def heif_depth_to_disparity(values: np.ndarray, metadata: dict) -> np.ndarray:
    """A decoded HEIF depth image and its representation info → normalised disparity.

    ``metadata`` is pillow-heif's depth metadata (``representation_type``, ``z_near``,
    ``z_far``, ...; empty when the file has none). Integer samples are scaled by their
    type's full range first. See the module docstring for the rule.
    """
    v = _unit_values(values)
    if metadata.get("representation_type") == _UNIFORM_Z:
        near, far = metadata.get("z_near"), metadata.get("z_far")
        if _usable_range(near, far):
            n, f = float(near), float(far)  # type: ignore[arg-type]
            return normalize_disparity(1.0 / (n + v * (f - n)))
        return normalize_disparity(1.0 - v)
    return normalize_disparity(v)


def _unit_values(values: np.ndarray) -> np.ndarray:
    """Integer or float image (first channel) → float64 in [0, 1] by its type's full scale."""
    array = np.asarray(values)
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.dtype.kind in "iu":
        return array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _usable_range(near: object, far: object) -> bool:
    try:
        n, f = float(near), float(far)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(n) and np.isfinite(f) and n > 0 and f > 0 and n != f)


def range_to_disparity(v: np.ndarray, fmt: str, near: object, far: object) -> np.ndarray:
    """Google ``RangeLinear``/``RangeInverse`` values ``v`` in [0, 1] → normalised disparity.

    ``v`` grows with distance. With usable ``near``/``far`` (positive, different) the depth is
    recovered (see the module docstring) and inverted; otherwise ``1 − v`` is used.
    """
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    if not _usable_range(near, far):
        return normalize_disparity(1.0 - v)
    n, f = float(near), float(far)  # type: ignore[arg-type]
    linear = fmt.strip().lower() == "rangelinear"
    depth = v * (f - n) + n if linear else f * n / (f - (f - n) * v)
    return normalize_disparity(1.0 / depth)


# ----------------------------------------------------------------------------------------
# JPEG structure


def _scan_jpeg(data: bytes) -> tuple[list[bytes], int | None]:
    """APP1 payloads of a JPEG, and the offset just past the primary image's EOI (or None)."""
    app1: list[bytes] = []
    pos = 2
    size = len(data)
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return app1, None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return app1, pos + 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if pos + 4 > size:
            return app1, None
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment_end = pos + 2 + length
        if marker == 0xE1:
            app1.append(data[pos + 4 : segment_end])
        pos = segment_end
        if marker == 0xDA:  # entropy-coded data follows until the next real marker
            while pos + 1 < size:
                if (
                    data[pos] == 0xFF
                    and data[pos + 1] != 0x00
                    and not 0xD0 <= data[pos + 1] <= 0xD7
                ):
                    break
                pos += 1
    return app1, None


def _xmp_documents(app1: list[bytes]) -> tuple[bytes | None, bytes | None]:
    """The main XMP packet and the reassembled extended XMP (or None for either)."""
    main = next((p[len(XMP_HEADER) :] for p in app1 if p.startswith(XMP_HEADER)), None)
    chunks: dict[str, list[tuple[int, int, bytes]]] = {}
    for payload in app1:
        if (
            payload.startswith(EXTENDED_XMP_HEADER)
            and len(payload) >= len(EXTENDED_XMP_HEADER) + 40
        ):
            body = payload[len(EXTENDED_XMP_HEADER) :]
            guid = body[:32].decode("ascii", "replace")
            total, offset = struct.unpack(">II", body[32:40])
            chunks.setdefault(guid, []).append((offset, total, body[40:]))
    if not chunks:
        return main, None
    wanted = None
    if main is not None:
        wanted = _properties(_parse_xmp(main)).get((XMP_NOTE_NS, "HasExtendedXMP"))
    guid = wanted if wanted in chunks else next(iter(chunks))
    parts = sorted(chunks[guid])
    total = parts[0][1]
    extended = bytearray(total)
    covered = 0
    for offset, _, piece in parts:
        extended[offset : offset + len(piece)] = piece
        covered += len(piece)
    if covered < total:
        raise ValueError(f"the extended XMP is incomplete ({covered} of {total} bytes)")
    return main, bytes(extended[:total])


def _parse_xmp(packet: bytes) -> ET.Element:
    text = packet.rstrip(b"\x00 \t\r\n")
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        start, end = text.find(b"<x:xmpmeta"), text.rfind(b"</x:xmpmeta>")
        if start < 0 or end < 0:
            raise
        return ET.fromstring(text[start : end + len(b"</x:xmpmeta>")])


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, local = tag[1:].split("}", 1)
        return namespace, local
    return "", tag


def _properties(root: ET.Element) -> dict[tuple[str, str], str]:
    """Simple XMP properties, as attributes or as leaf elements: (namespace, name) → value."""
    found: dict[tuple[str, str], str] = {}
    for element in root.iter():
        for key, value in element.attrib.items():
            found.setdefault(_split_tag(key), value)
        if len(element) == 0 and element.text and element.text.strip():
            found.setdefault(_split_tag(element.tag), element.text.strip())
    return found


def _container_items(root: ET.Element) -> list[dict[str, str]]:
    """Dynamic Depth ``Container:Directory`` items in document order (``Item:*`` fields)."""
    items = []
    for element in root.iter():
        if _split_tag(element.tag)[0] in ITEM_NAMESPACES:
            continue
        fields = {}
        for key, value in element.attrib.items():
            namespace, local = _split_tag(key)
            if namespace in ITEM_NAMESPACES:
                fields[local] = value
        for child in element:
            namespace, local = _split_tag(child.tag)
            if namespace in ITEM_NAMESPACES and child.text:
                fields[local] = child.text.strip()
        if fields:
            items.append(fields)
    return items


# ----------------------------------------------------------------------------------------
# JPEG depth


def _jpeg_depth(file: Path, data: bytes) -> np.ndarray | None:
    try:
        app1, primary_end = _scan_jpeg(data)
        main, extended = _xmp_documents(app1)
        roots = [_parse_xmp(doc) for doc in (main, extended) if doc is not None]
    except (ValueError, ET.ParseError, struct.error) as exc:
        raise MagicBokehError(
            f"the XMP metadata of {file} cannot be read ({exc}); give a depth file "
            "(--depth-file) or let an estimator compute depth"
        ) from None
    props: dict[tuple[str, str], str] = {}
    items: list[dict[str, str]] = []
    for root in roots:
        for key, value in _properties(root).items():
            props.setdefault(key, value)
        items.extend(_container_items(root))

    depth = _dynamic_depth(file, data, items, props, primary_end)
    if depth is None:
        depth = _gdepth(file, props)
    if depth is None:
        return None
    return apply_exif_orientation(depth, _jpeg_orientation(file))


def _dynamic_depth(
    file: Path,
    data: bytes,
    items: list[dict[str, str]],
    props: dict[tuple[str, str], str],
    primary_end: int | None,
) -> np.ndarray | None:
    if len(items) < 2:
        return None
    depth_uri = props.get((DD_DEPTHMAP_NS, "DepthURI"))
    index = next(
        (i for i, item in enumerate(items) if item.get("Semantic", "").lower() == "depth"), None
    )
    if index is None and depth_uri:
        index = next((i for i, it in enumerate(items) if it.get("DataURI") == depth_uri), None)
    if index is None or index == 0:
        return None
    try:
        lengths = [int(item.get("Length", "0") or 0) for item in items]
        paddings = [int(item.get("Padding", "0") or 0) for item in items]
    except ValueError:
        raise MagicBokehError(
            f"the Dynamic Depth directory of {file} has a non-numeric item length; "
            "give a depth file (--depth-file) instead"
        ) from None
    starts = []
    if primary_end is not None:
        starts.append(
            primary_end + paddings[0] + sum(lengths[i] + paddings[i] for i in range(1, index))
        )
    tail = sum(lengths[i] + paddings[i] for i in range(index, len(items)))
    starts.append(len(data) - tail)  # secondary items fill the end of the file
    encoded = b""
    values = None
    for start in starts:
        encoded = data[start : start + lengths[index]]
        if start < 0 or lengths[index] <= 0 or len(encoded) != lengths[index]:
            continue
        import cv2

        values = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if values is not None:
            break
    if values is None:
        raise MagicBokehError(
            f"the Dynamic Depth map in {file} cannot be decoded (item {index}, "
            f"{items[index].get('Mime', 'unknown type')}); give a depth file (--depth-file)"
        )
    return range_to_disparity(
        _first_channel_unit(values),
        props.get((DD_DEPTHMAP_NS, "Format"), "RangeInverse"),
        props.get((DD_DEPTHMAP_NS, "Near")),
        props.get((DD_DEPTHMAP_NS, "Far")),
    )


def _gdepth(file: Path, props: dict[tuple[str, str], str]) -> np.ndarray | None:
    encoded = props.get((GDEPTH_NS, "Data"))
    if not encoded:
        return None
    try:
        raw = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    import cv2

    values = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
    if values is None:
        raise MagicBokehError(
            f"the GDepth depth map in {file} cannot be decoded (bad base64 or image data); "
            "give a depth file (--depth-file) instead"
        )
    return range_to_disparity(
        _first_channel_unit(values),
        props.get((GDEPTH_NS, "Format"), "RangeInverse"),
        props.get((GDEPTH_NS, "Near")),
        props.get((GDEPTH_NS, "Far")),
    )


def _first_channel_unit(values: np.ndarray) -> np.ndarray:
    """Decoded (BGR) image → its first stored channel as float64 in [0, 1]."""
    if values.ndim == 3:
        values = values[:, :, 2] if values.shape[2] >= 3 else values[:, :, 0]
    return _unit_values(values)


def _jpeg_orientation(file: Path) -> int:
    try:
        with Image.open(file) as pil:
            value = int(pil.getexif().get(0x0112, 1))
    except (OSError, UnidentifiedImageError, ValueError, TypeError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1
