"""The settings a user chooses that more than one layer reads, each defined once, importing nothing.

The library validates against these and the jobs' ``Config`` fields offer them as defaults and
choices, so ``cxrdx CMD --help`` shows them without loading torch, pandas or numpy.
"""

from __future__ import annotations

IMAGE_SIZE = 320  # the network's input side in pixels unless a cache or checkpoint says otherwise
TOP_K = 3  # findings shown with a heatmap (predict's overlays, the app's gallery)
BATCH_SIZE = 8  # images per network call for predict and listen (when predict's autotune measures none)

BACKENDS = ("auto", "torch", "onnx", "openvino")  # how a Predictor runs the network
# auto: the fastest backend and precision that passes the reference check on this machine (measured once,
# cached; inference/autotune.py); fp32 exact; bf16 OpenVINO where the CPU has it; int8: `cxrdx quantize`'s model
PRECISIONS = ("auto", "fp32", "bf16", "int8")
PRECISION = "auto"  # predict's default
# the check a reduced precision passes before `predict` may choose it (inference/reference.py): on phantoms
# stored with their fp32 outputs beside the export
REFERENCE_IMAGES = 48
REDUCED_MAX_ABS_DIFF = 0.02  # largest |p - p fp32| (calibrated) over the images and findings
REDUCED_MAX_CALLS_FLIPPED = 0.01  # share of (image, finding) calls at the stored thresholds that flip
REDUCED_MAX_AUROC_DIFF = 0.002  # |mean AUROC - mean AUROC fp32|, findings with both classes among them
REDUCED_MAX_OOD_FLIPPED = 0.05  # share of out-of-distribution verdicts that flip (what quantize allows int8)
ONNX_OPSET = 17  # the ONNX opset an export targets
INT8_CALIBRATION_IMAGES = 128  # training images that set an int8 model's activation ranges
INT8_MAX_AUROC_DROP = 0.005  # mean validation AUROC an int8 model may lose against fp32 and still be kept

BLANK_POLICIES = ("negative", "unlabelled")  # what a CheXpert / MIMIC-CXR "not mentioned" cell means
BLANK_HELP = (
    "CheXpert / MIMIC-CXR cells the labeler left blank ('not mentioned') on a row that is not No Finding: "
    "negative (default; the CheXpert paper's baselines) or unlabelled (masked). Blanks on a No Finding "
    "row are always negative"
)
DATASETS = ("nih", "google", "chexpert", "mimic", "padchest", "vindr", "generic")  # label-table layouts
IMPORT_SOURCES = (
    "torchvision",
    "chexnet",
    "xrv",
    "keras",
    "cxrdx",
)  # where `cxrdx import` takes weights from
XRV_VARIANTS = ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")  # torchxrayvision's DenseNet121s

# the FHIR Patient identifier's system when the source DICOM names no issuer of its Patient ID
# (`--fhir-patient-system`; a hospital sets its own namespace)
FHIR_PATIENT_SYSTEM = "urn:cxrdx:patient-id"

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts that only this machine can reach
MAX_UPLOAD_MB = 50  # the largest file the web app accepts
