"""Into the hospital's systems: results as DICOM (SR, heatmap SEG, secondary captures) and FHIR, and a DICOM node.

``codes`` (the coded concepts), ``study`` (the source's study and THE result UIDs), ``sr``
(the TID 1500 Structured Report; ``results_for``), ``segmentation`` (the Grad-CAM heatmaps as one
DICOM SEG), ``secondary_capture`` (optional Grad-CAM pictures as DICOM), ``fhir`` (R4 DiagnosticReport + Observations), ``result_files`` (``predict --format
dicom|fhir``); the node's files sit beside them. Above inference and explain, below app and cli.
"""
