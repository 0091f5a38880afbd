#!/usr/bin/env bash
# The DICOM node tests (tests/interop/test_node*.py) run against a real PACS: Debian's Orthanc
# (with its DICOMweb plugin, orthanc-dicomweb, for the STOW-RS tests),
# started by the tests themselves with a temporary configuration (no system service), and
# DCMTK's echoscu/storescu; the DICOM results tests validate with dicom3tools' dciodvfy and DCMTK's
# dsr2xml. Install them when missing and we may (root with apt); otherwise
# those tests skip with a reason. Never fails the build.
set -u
have() { [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1; }
have_dicomweb() { ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1; }
if have && have_dicomweb && [ -x /usr/bin/storescu ] && [ -x /usr/bin/dciodvfy ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian orthanc and dcmtk for the DICOM node tests..."
  had_orthanc=0; have && had_orthanc=1
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc dcmtk) \
    >/tmp/cxrdx-dicom-tools.log 2>&1 \
    || echo "could not install orthanc/dcmtk (see /tmp/cxrdx-dicom-tools.log); DICOM node tests will skip"
  # Orthanc's DICOMweb plugin: the STOW-RS destination of tests/interop/test_node_dicomweb.py
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc-dicomweb >>/tmp/cxrdx-dicom-tools.log 2>&1 \
    || echo "could not install orthanc-dicomweb; the DICOMweb (STOW-RS) tests will skip"
  # dicom3tools' dciodvfy: the independent validator of the SR and secondary captures (tests/interop)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dicom3tools >>/tmp/cxrdx-dicom-tools.log 2>&1 \
    || echo "could not install dicom3tools; the dciodvfy checks of DICOM results will skip"
  # The tests start their own Orthanc; the package's system service is not wanted (we installed it)
  if [ "$had_orthanc" = 0 ] && have && command -v systemctl >/dev/null && systemctl is-active -q orthanc 2>/dev/null; then
    systemctl disable --now orthanc >>/tmp/cxrdx-dicom-tools.log 2>&1 || true
  fi
else
  echo "no Orthanc/dcmtk; DICOM node tests will skip (install Debian's orthanc, orthanc-dicomweb and dcmtk to run them)"
fi
exit 0
