"""Result files into a real Orthanc by each transport: C-STORE, C-STORE over DICOM TLS, STOW-RS (issue 29).

``--sets`` result sets, each a ``--px`` px RGB secondary capture (uncompressed, the size of the
node's Grad-CAM captures at 1024 px: 3 MB) and a small DX copy, sent as the node sends them:
one association kept open for C-STORE, one STOW-RS request per set (the node's Sender's transports).
Orthanc (Debian, DICOMweb plugin; a second one configured for DICOM TLS) on loopback, with
certificates made by openssl. Prints sets/s and MB/s per transport.

    python benchmarks/send_rates.py [--sets 20] [--px 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "interop")]
from common import machine_line  # noqa: E402


def result_sets(folder: Path, sets: int, px: int) -> list[list[Path]]:
    import numpy as np
    import pydicom
    from node_kit import phantom_dicom

    out = []
    rng = np.random.default_rng(0)
    for i in range(sets):
        dx = phantom_dicom(5000 + i)
        sc = phantom_dicom(5000 + i, sop_class=pydicom.uid.SecondaryCaptureImageStorage, modality="OT")
        sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        sc.StudyInstanceUID = dx.StudyInstanceUID
        sc.set_pixel_data(rng.integers(0, 255, (px, px, 3), dtype=np.uint8), "RGB", 8)
        paths = [folder / f"{i:03d}-dx.dcm", folder / f"{i:03d}-sc.dcm"]
        dx.save_as(paths[0], enforce_file_format=True)
        sc.save_as(paths[1], enforce_file_format=True)
        out.append(paths)
    return out


def timed(sets: list[list[Path]], destination, tls=None) -> float:
    from cxrdx.interop.send import transport_for

    transport = transport_for(destination, tls=tls)  # the node's sender: one transport for all sets
    start = time.perf_counter()
    try:
        for files in sets:
            metas = [_meta(f) for f in files]
            assert transport.send(files, metas) is None
    finally:
        transport.close()
    return time.perf_counter() - start


def _meta(path: Path) -> tuple[str, str, str]:
    from pydicom.filereader import read_file_meta_info

    m = read_file_meta_info(path)
    return str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID), str(m.TransferSyntaxUID)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=20)
    ap.add_argument("--px", type=int, default=1024)
    args = ap.parse_args()
    from node_kit import Orthanc
    from tls_kit import make_pki

    from cxrdx.interop.destination import Destination, WebDestination
    from cxrdx.interop.tls import TlsFiles

    with tempfile.TemporaryDirectory(prefix="cxrdx-send-") as tmp:
        work = Path(tmp)
        (work / "files").mkdir()
        sets = result_sets(work / "files", args.sets, args.px)
        mb = sum(p.stat().st_size for s in sets for p in s) / 2**20
        pki = make_pki(work / "pki")
        (work / "plain").mkdir()
        (work / "tls").mkdir()
        plain = Orthanc(work / "plain", dicomweb=True)
        secure = Orthanc(work / "tls", dicom_tls=pki.pacs.files())
        try:
            print(machine_line())
            print(f"{args.sets} result sets ({args.px} px RGB capture + DX copy), {mb:.1f} MB in all")
            runs = [
                ("C-STORE", Destination("ORTHANC", "127.0.0.1", plain.dicom_port), None),
                ("C-STORE over TLS", Destination("ORTHANC", "127.0.0.1", secure.dicom_port), "tls"),
                ("STOW-RS (http)", WebDestination(plain.dicomweb_url), None),
            ]
            for name, dest, tls in runs:
                files = TlsFiles(pki.node.cert, pki.node.key, pki.ca) if tls else None
                seconds = timed(sets, dest, files)
                print(
                    f"{name:18s} {args.sets / seconds:6.1f} sets/s  {mb / seconds:6.1f} MB/s  ({seconds:.2f} s)"
                )
        finally:
            plain.stop()
            secure.stop()


if __name__ == "__main__":
    main()
