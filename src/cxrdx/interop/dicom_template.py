"""A pydicom data set compiled once into its encoded bytes with holes, filled per use.

The result objects repeat the same content again and again (an SR's measurement groups differ from
image to image only in a few UIDs and numbers), and pydicom's writer costs about 30 us per element.
``compile_item`` encodes a sequence item once, with pydicom's own writer, in explicit VR little endian
(the result objects' transfer syntax), and keeps as holes

- the leaf values that equal a *placeholder* (``slots``: (VR, value) -> name; VR UI, DS or FD, one value),
  filled by ``render`` with the value given for that name, encoded as pydicom encodes it;
- the sequences named in ``splices`` (tag -> name, at the item's own level), filled with items already
  encoded (bytes, each a whole item).

Lengths of the items and sequences around a hole are computed when rendered. ``compile_item`` renders
its placeholders back and compares the bytes with pydicom's encoding of the same item: a template that
would not reproduce pydicom is refused (``TemplateError``), so callers fall back to pydicom.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from cxrdx.errors import CxrdxError

_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = b"\xff\xff\xff\xff"
SLOT_VRS = ("UI", "DS", "FD")


class TemplateError(CxrdxError):
    """A data set cannot be compiled into a template that pydicom's writer would agree with."""


@dataclass(frozen=True)
class _Slot:
    name: str
    vr: str
    head: bytes  # tag and VR


@dataclass(frozen=True)
class _Splice:
    name: str
    head: bytes  # tag, VR SQ, reserved


@dataclass
class _Seq:
    head: bytes  # tag, VR SQ, reserved
    undefined: bool
    items: list[Item] = field(default_factory=list)


@dataclass
class Item:
    """One compiled sequence item: literal bytes, slots, splices and nested sequences, in tag order."""

    parts: list[bytes | _Slot | _Splice | _Seq]
    undefined: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # how many leaves each slot name replaced


def value_bytes(vr: str, value: Any) -> bytes:
    """One slot value as pydicom writes it (padded to an even length)."""
    if vr == "FD":
        return struct.pack("<d", float(value))
    if vr == "DS":
        from pydicom.valuerep import DS

        text = str(DS(value, auto_format=True)).encode("ascii")
        return text + b" " if len(text) % 2 else text
    text = str(value).encode("ascii")  # UI
    return text + b"\x00" if len(text) % 2 else text


def _element_bytes(elem, encodings) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _slot_name(elem, slots: Mapping[tuple[str, Any], str]) -> str | None:
    if elem.VR not in SLOT_VRS or elem.VM != 1:
        return None
    value = elem.value
    key = (elem.VR, str(value) if elem.VR == "UI" else float(value))
    return slots.get(key)


def _compile(ds: Dataset, slots, splices, encodings, counts, top: bool) -> list:
    parts: list = []
    encodings = ds.get("SpecificCharacterSet", encodings)
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths: pydicom does not write them either
        elem = ds[tag]
        head = struct.pack("<HH", tag.group, tag.element)
        if top and int(tag) in splices:
            parts.append(_Splice(splices[int(tag)], head + b"SQ\x00\x00"))
        elif elem.VR == "SQ":
            seq = _Seq(head + b"SQ\x00\x00", bool(elem.is_undefined_length))
            for item in elem.value:
                body = _compile(item, slots, {}, encodings, counts, False)
                seq.items.append(Item(body, bool(getattr(item, "is_undefined_length_sequence_item", False))))
            parts.append(seq)
        elif (name := _slot_name(elem, slots)) is not None:
            parts.append(_Slot(name, elem.VR, head + elem.VR.encode("ascii")))
            counts[name] = counts.get(name, 0) + 1
        else:
            parts.append(_element_bytes(elem, encodings))
    return parts


def compile_item(
    item: Dataset,
    slots: Mapping[tuple[str, Any], str] | None = None,
    splices: Mapping[int, str] | None = None,
    encodings: str | Sequence[str] | None = None,
) -> Item:
    """``item`` as a template; ``slots``: (VR, placeholder value) -> name; ``splices``: tag -> name.

    ``encodings``: the Specific Character Set of the data set the item will be part of.
    """
    from pydicom.charset import default_encoding

    slots = dict(slots or {})
    encodings = encodings or default_encoding
    counts: dict[str, int] = {}
    parts = _compile(item, slots, dict(splices or {}), encodings, counts, True)
    compiled = Item(parts, bool(getattr(item, "is_undefined_length_sequence_item", False)), counts)
    _check(compiled, item, slots, splices or {}, encodings)
    return compiled


def _check(compiled: Item, item: Dataset, slots, splices, encodings) -> None:
    """The template with its placeholders back in must be pydicom's encoding of ``item``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_sequence_item

    values = {name: value for (_, value), name in slots.items()}
    spliced = {}
    for tag, name in splices.items():
        spliced[name] = [_item_bytes(i, encodings) for i in item[tag].value] if tag in item else []
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_sequence_item(fp, item, encodings)
    try:
        ok = render(compiled, values, spliced) == fp.getvalue()
    except (KeyError, ValueError, TypeError) as exc:
        raise TemplateError(f"template does not render ({type(exc).__name__}: {exc})") from None
    if not ok:
        raise TemplateError("the template does not reproduce pydicom's encoding of the item")


def _item_bytes(item: Dataset, encodings) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_sequence_item

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_sequence_item(fp, item, encodings)
    return fp.getvalue()


def encode_items(items: Sequence[Dataset], encodings: str | Sequence[str] | None = None) -> bytes:
    """Sequence items encoded by pydicom (explicit VR little endian), each whole."""
    from pydicom.charset import default_encoding

    return b"".join(_item_bytes(item, encodings or default_encoding) for item in items)


def _body(
    parts: list, values: Mapping[str, Any], spliced: Mapping[str, Sequence[bytes]], cache: dict
) -> bytes:
    out: list[bytes] = []
    for part in parts:
        if type(part) is bytes:
            out.append(part)
        elif type(part) is _Slot:
            key = (part.name, part.vr)
            data = cache.get(key)
            if data is None:
                data = cache[key] = value_bytes(part.vr, values[part.name])
            out += (part.head, struct.pack("<H", len(data)), data)
        elif type(part) is _Seq:
            body = b"".join(_one(i, values, spliced, cache) for i in part.items)
            out.append(_sequence(part.head, body, part.undefined))
        else:  # a splice
            out.append(_sequence(part.head, b"".join(spliced[part.name]), False))
    return b"".join(out)


def _sequence(head: bytes, body: bytes, undefined: bool) -> bytes:
    if undefined:
        return head + _UNDEFINED + body + _SEQ_END
    return head + struct.pack("<I", len(body)) + body


def _one(item: Item, values, spliced, cache) -> bytes:
    body = _body(item.parts, values, spliced, cache)
    if item.undefined:
        return _ITEM + _UNDEFINED + body + _ITEM_END
    return _ITEM + struct.pack("<I", len(body)) + body


def render(
    item: Item, values: Mapping[str, Any], spliced: Mapping[str, Sequence[bytes]] | None = None
) -> bytes:
    """The item's bytes (item tag and length included) with ``values`` in its slots, ``spliced`` items in
    its splices."""
    return _one(item, values, spliced or {}, {})


def raw_sequence(tag: int, items: bytes):
    """A data element holding already encoded sequence items, which pydicom writes as they are (a data set
    holding one needs ``set_original_encoding(False, True, ...)``) and parses when it is read."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    return RawDataElement(Tag(tag), "SQ", len(items), items, 0, False, True)
