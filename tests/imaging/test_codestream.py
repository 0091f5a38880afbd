"""The compressed frame's own header is checked before decoding (issue 28, item 2).

The codestream bombs of tests/corpus/codestream_bombs.py must be refused in a process whose
address space is capped at 1 GiB (a decoder that trusted them would need 0.9 to 8 GB), and
genuine compressed files (every syntax the corpus writes, the real SIIM JPEG) must still read.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from corpus.bad_inputs import chest, dicom_dataset
from corpus.codestream_bombs import SIZE, codestream_cases, compressed_frame, deflate_bomb, dicom_with_frame

from cxrdx.errors import ImageReadError
from cxrdx.imaging.read import read_image


def test_codestream_bombs_are_refused_in_1_gib(tmp_path):
    cases = codestream_cases(tmp_path)
    assert len(cases) == 8
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cxrdx.errors import ImageReadError
        from cxrdx.imaging.read import read_image
        for path, expect in {[(str(c.path), c.message) for c in cases]!r}:
            try:
                read_image(path)
                print("READ", path)
            except ImageReadError as exc:
                print("REFUSED" if expect.lower() in str(exc).lower() else "OTHER", exc)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print("peak_kb", hwm.split()[1])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [x.split()[0] for x in lines[:-1]] == ["REFUSED"] * len(cases), lines
    assert int(lines[-1].split()[1]) / 1024 < 300, lines[-1]


def test_sizes_are_read_from_the_codestream_not_the_header(tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    for tsuid in (JPEGLSLossless, JPEG2000Lossless):
        frame = compressed_frame(tsuid)
        path = tmp_path / "a.dcm"
        dicom_with_frame(
            path, frame, tsuid, bits=12, rows=SIZE, cols=SIZE * 2
        )  # the header lies, not the frame
        with pytest.raises(ImageReadError, match=f"declares {SIZE}x{SIZE} pixels .* says {SIZE * 2}x{SIZE}"):
            read_image(path)
        dicom_with_frame(path, frame, tsuid, bits=12)
        assert read_image(path)[0].shape == (SIZE, SIZE)


def test_genuine_compressed_files_still_read(tmp_path):
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless

    g16 = chest().astype(np.uint16) * 16
    for k, tsuid in enumerate([RLELossless, JPEG2000Lossless, JPEG2000, JPEGLSLossless, JPEGLSNearLossless]):
        ds = dicom_dataset(np.stack([g16, g16 // 2]), bits_stored=12)  # multi-frame: the first is checked
        kw = {"j2k_cr": [5]} if tsuid == JPEG2000 else {"jls_error": 2} if tsuid == JPEGLSNearLossless else {}
        ds.compress(tsuid, **kw)
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
        image, meta = read_image(tmp_path / f"{k}.dcm")
        assert image.shape == (SIZE, SIZE) and "first frame" in " ".join(meta.warnings), tsuid.name


def test_rle_padding_is_tolerated_but_not_a_second_plane(tmp_path):
    from pydicom.uid import RLELossless

    plane = SIZE * SIZE
    literal = b"".join(b"\x7f" + bytes(128) for _ in range(plane // 128))  # exactly one plane
    for extra, ok in ((b"\x00\x00", True), (b"\x81\x00" * (plane // 64 + 4), False)):
        frame = struct.pack("<16I", 1, 64, *[0] * 14) + literal + extra
        path = tmp_path / "rle.dcm"
        dicom_with_frame(path, frame, RLELossless)
        if ok:
            with pytest.warns(UserWarning, match="padding"):
                assert read_image(path)[0].shape == (SIZE, SIZE)
        else:
            with pytest.raises(ImageReadError, match="RLE segment decodes to more"):
                read_image(path)


@pytest.mark.realdata
def test_the_real_siim_jpeg_still_reads(shared_data):
    image, _ = read_image(shared_data / "dicom" / "siim_pneumothorax_sample.dcm")
    assert image.shape == (1024, 1024)


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path):
    """pydicom inflates a deflated data set whole when it opens it: 400 MB from a 400 KB file."""
    small, bomb = tmp_path / "small.dcm", tmp_path / "bomb.dcm"
    deflate_bomb(small, SIZE * SIZE)
    deflate_bomb(bomb, 400 << 20)
    assert read_image(small)[0].shape == (SIZE, SIZE)
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cxrdx.imaging.read import read_image
        try:
            read_image({str(bomb)!r})
            print("READ")
        except Exception as exc:
            print(type(exc).__name__, exc)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
        print("peak_kb", hwm.split()[1])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ImageReadError") and "deflated data set inflates to more than" in lines[0], (
        lines
    )
    assert int(lines[-1].split()[1]) / 1024 < 300, lines[-1]
