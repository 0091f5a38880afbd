"""Imaging layer: read image files and DICOM, letterbox, and turn gray images into network input."""
