"""``cxrdx serve``: a Gradio page to look at one chest X-ray's findings, and its API.

Upload a PNG, JPEG or DICOM; the page shows the image as read, a bar chart of the
14 probabilities with the checkpoint's thresholds marked, the positive findings,
Grad-CAM overlays of the top findings (and of any finding picked from a list),
and a model card (training data, recorded AUROCs, the disclaimer). A file that
cannot be used gets a message in the page; the server keeps serving.

The same analysis is a clean API endpoint, ``/predict`` (file in, JSON out), for
``gradio_client``. Serving is local by default (127.0.0.1); binding another
address needs ``--allow-remote``, and the server never starts without real
weights: random weights would produce confident-looking nonsense.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdx.errors import ConfigError, CxrdxError, ImageReadError

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from cxrdx.predict import Prediction, Predictor

log = logging.getLogger("cxrdx.app")

DISCLAIMER = (
    "For research and education only. Not a medical device and not a replacement for a clinician's diagnosis."
)
NO_WEIGHTS_MESSAGE = (
    "no model given: serve needs --weights CKPT (a cxrdx .safetensors checkpoint); it will not serve "
    "random weights. Get a model one of these ways: `make demo` trains a small demo model on synthetic "
    "phantoms into demo/ (for trying the app, not for real images); `cxrdx train ...` trains one on NIH "
    "ChestX-ray14; `cxrdx import --from chexnet|xrv|keras SOURCE --out model.safetensors` converts "
    "published weights. Then run `cxrdx serve --weights model.safetensors`"
)
DEFAULT_MAX_UPLOAD_MB = 50
TOP_K = 3
DISPLAY_MAX_SIDE = 768  # the image shown in the page; the model always sees the full one
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CSS = """
#cxrdx-status .error {color: #b91c1c; font-weight: 600;}
#cxrdx-disclaimer {font-size: 0.9em; opacity: 0.85;}
"""


# --------------------------------------------------------------------------- pictures


def _display_image(image: np.ndarray) -> Image.Image:
    """The [0, 1] image as an 8-bit PIL image, at most DISPLAY_MAX_SIDE on its longer side."""
    from PIL import Image

    from cxrdx.io import image_to_uint8

    pil = Image.fromarray(image_to_uint8(image), mode="L")
    pil.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.LANCZOS)
    return pil


def overlay_image(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Heatmap (jet) blended over the gray image, as an RGB PIL image at display size.

    Pure numpy + a colormap lookup (no pyplot), so it is safe from Gradio's worker threads.
    """
    from matplotlib import colormaps
    from PIL import Image

    gray = np.asarray(_display_image(image), dtype=np.float32) / 255.0
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        (gray.shape[1], gray.shape[0]), Image.Resampling.BILINEAR
    )
    colour = colormaps["jet"](np.clip(np.asarray(heat), 0.0, 1.0))[..., :3]
    blend = (1 - alpha) * gray[..., None] + alpha * colour
    return Image.fromarray(np.round(np.clip(blend, 0, 1) * 255).astype(np.uint8), mode="RGB")


def probability_chart(pred: Prediction, thresholds: dict[str, float] | None) -> Image.Image:
    """Horizontal bars of every finding's probability, thresholds as black ticks, positives in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from PIL import Image

    names = list(pred.probabilities)
    probs = [pred.probabilities[n] for n in names]
    positive = pred.positive or {}
    colours = ["#dc2626" if positive.get(n) else "#3b82f6" for n in names]
    fig = Figure(figsize=(6.4, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, probs, color=colours, height=0.7)
    for i, n in enumerate(names):
        ax.text(min(probs[i] + 0.01, 0.9), i, f"{probs[i]:.2f}", va="center", fontsize=8)
        if thresholds and n in thresholds:
            ax.plot([thresholds[n]] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2)
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    handles = [Patch(color="#3b82f6", label="negative" if thresholds else "probability")]
    if thresholds:
        handles = [Patch(color="#dc2626", label="positive"), *handles]
        handles.append(Line2D([], [], color="black", linewidth=2, label="threshold"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Findings" + ("" if thresholds else " (no thresholds in this checkpoint)"), fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy(), mode="RGB")


# --------------------------------------------------------------------------- text


_CARD_SKIP = ("config", "val_auroc", "torch", "processes")  # too long or not about the data


def _fmt_value(v: Any) -> str:
    """Short text for a metadata value; dicts of scalars inline (splits: train 800, val 100)."""
    if isinstance(v, dict):
        items = [f"{k} {x}" for k, x in v.items() if not isinstance(x, dict | list)]
        return "(" + ", ".join(items) + ")" if items else ""
    if isinstance(v, list):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def model_card(predictor: Predictor) -> str:
    """Markdown: what the model is, what it was trained on, its recorded evaluation, the disclaimer."""
    meta = predictor.meta
    pre = meta.preprocessing
    lines = [
        "### Model card",
        f"**Disclaimer.** {DISCLAIMER}",
        "",
        f"- **Network:** {meta.architecture}, {len(meta.labels)} findings, "
        f"input {pre.size}x{pre.size} px, {pre.channels} channel(s), letterboxed",
        f"- **Inference backend:** {predictor.backend}",
    ]
    prov = meta.provenance or {}
    if prov:
        shown = [f"{k}: {_fmt_value(v)}" for k, v in prov.items() if k not in _CARD_SKIP and _fmt_value(v)]
        lines.append(
            f"- **Trained on / provenance:** {', '.join(shown) or 'recorded (see checkpoint metadata)'}"
        )
    else:
        lines.append("- **Trained on / provenance:** not recorded in this checkpoint")
    if meta.source:
        shown = [f"{k}: {_fmt_value(v)}" for k, v in meta.source.items() if _fmt_value(v)]
        lines.append(f"- **Imported weights:** {', '.join(shown)}")
    if meta.thresholds:
        lines.append(
            f"- **Thresholds:** {len(meta.thresholds)} findings, chosen by {meta.threshold_method or 'unknown method'}"
        )
    else:
        lines.append(
            "- **Thresholds:** none recorded, so no finding is called positive; choose them with `cxrdx evaluate`"
        )
    evaluation = meta.evaluation or {}
    auroc = evaluation.get("auroc")
    if isinstance(auroc, dict) and auroc:
        where = evaluation.get("dataset") or evaluation.get("split") or "the recorded evaluation set"
        extra = [f"n = {evaluation['n']}"] if evaluation.get("n") else []
        if isinstance(evaluation.get("mean_auroc"), int | float):
            extra.append(f"mean AUROC {evaluation['mean_auroc']:.3f}")
        lines += ["", f"**Evaluation AUROC** on {where}" + (f" ({', '.join(extra)})" if extra else "") + ":"]
        lines += ["", "| finding | AUROC |", "|---|---|"]
        for name, value in auroc.items():
            v = value.get("auroc", value.get("value")) if isinstance(value, dict) else value
            lines.append(f"| {name} | {v:.3f} |" if isinstance(v, int | float) else f"| {name} | n/a |")
    else:
        lines.append("- **Evaluation:** no AUROCs recorded in this checkpoint (run `cxrdx evaluate`)")
    return "\n".join(lines)


def positives_markdown(pred: Prediction) -> str:
    if pred.positive is None:
        top = ", ".join(f"{n} ({p:.2f})" for n, p in pred.ranked()[:TOP_K])
        return (
            "**Positive findings:** not called: this checkpoint has no thresholds. "
            f"Highest probabilities: {top}."
        )
    pos = [f"**{n}** ({p:.2f})" for n, p in pred.ranked() if pred.positive.get(n)]
    return "**Positive findings:** " + (", ".join(pos) if pos else "none above their thresholds")


def findings_table(pred: Prediction, thresholds: dict[str, float] | None) -> str:
    """Every finding as text (the chart is a picture; screen readers and copy-paste need words)."""
    thresholds = thresholds or {}
    rows = ["| finding | probability | threshold | call |", "|---|---:|---:|---|"]
    for name, p in pred.ranked():
        t = thresholds.get(name)
        call = (
            "-"
            if t is None or pred.positive is None
            else ("**positive**" if pred.positive.get(name) else "negative")
        )
        rows.append(f"| {name} | {p:.3f} | {'-' if t is None else f'{t:.3f}'} | {call} |")
    return "\n".join(rows)


def _user_message(exc: Exception, upload: str) -> str:
    """The error without Gradio's temp-folder path: the user knows the file by its name."""
    if isinstance(exc, ImageReadError):
        return f"{Path(exc.path).name}: {exc.problem}"
    return str(exc).replace(str(upload), Path(upload).name)


# --------------------------------------------------------------------------- analysis


class Analyzer:
    """The app's work, independent of Gradio (so it is testable without a server)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def read(self, path: str) -> tuple[np.ndarray, list[str]]:
        """Read an upload; refuse DICOMs that are not radiographs (the reader only warns)."""
        from cxrdx.io import CHEST_MODALITIES, read_image

        image, meta = read_image(path)
        if meta.format == "DICOM" and meta.modality and meta.modality not in CHEST_MODALITIES:
            raise ImageReadError(
                path,
                f"DICOM modality is {meta.modality}, not a radiograph ({'/'.join(CHEST_MODALITIES)}): "
                "this model only reads chest X-rays; upload a chest radiograph",
            )
        return image, list(meta.warnings)

    def predict(self, path: str) -> tuple[np.ndarray, Prediction]:
        image, warnings = self.read(path)
        pred = self.predictor.predict([image], batch_size=1, workers=0)[0]
        if not pred.ok:
            raise CxrdxError(pred.error or "prediction failed")
        pred.source = Path(path).name
        pred.warnings = warnings + pred.warnings
        return image, pred

    def record(self, pred: Prediction) -> dict[str, Any]:
        """The JSON the API returns: the Prediction plus the thresholds used and the disclaimer."""
        out = pred.to_dict()
        out["thresholds"] = self.predictor.thresholds
        out["labels"] = self.predictor.labels
        out["disclaimer"] = DISCLAIMER
        return out


def build_app(predictor: Predictor, max_file_size: int | str | None = None) -> gr.Blocks:
    """The Gradio page and its ``/predict`` API for one loaded Predictor.

    ``max_file_size`` is applied by :func:`launch` (Gradio takes it at launch time);
    it is accepted here so callers can set it once.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    analyzer = Analyzer(predictor)
    labels = predictor.labels

    def empty(status: str) -> tuple:
        return (status, None, None, "", "", [], gr.update(choices=labels, value=None), None, None)

    def analyze(path: str | None):
        if not path:
            return empty("")
        try:
            image, pred = analyzer.predict(path)
            top = [n for n, _ in pred.ranked()[:TOP_K]]
            overlays = [overlay_image(image, predictor.explain(image, n)) for n in top]
        except CxrdxError as exc:
            return empty(f'<p class="error">Could not analyse this file. {_user_message(exc, path)}</p>')
        except Exception as exc:  # noqa: BLE001 - the page must say something and keep serving
            log.exception("unexpected failure on %s", path)
            return empty(
                f'<p class="error">Could not analyse this file: unexpected {type(exc).__name__} '
                f"({_user_message(exc, path)}). The server log has details.</p>"
            )
        gallery = [(im, f"{n}: p={pred.probabilities[n]:.2f}") for n, im in zip(top, overlays, strict=True)]
        notes = "".join(f"<br>warning: {w}" for w in pred.warnings)
        status = f"Analysed <b>{pred.source}</b> ({image.shape[1]}x{image.shape[0]} px).{notes}"
        choices = [n for n, _ in pred.ranked()]
        return (
            status,
            _display_image(image),
            probability_chart(pred, predictor.thresholds),
            positives_markdown(pred),
            findings_table(pred, predictor.thresholds),
            gallery,
            gr.update(choices=choices, value=top[0]),
            overlays[0],
            image,
        )

    def explain_pick(image: np.ndarray | None, finding: str | None):
        if image is None or not finding:
            return None
        return overlay_image(image, predictor.explain(image, finding))

    def api_predict(path: str | None) -> dict[str, Any]:
        """Findings for one uploaded chest X-ray (PNG, JPEG or DICOM) as JSON."""
        if not path:
            raise gr.Error("no file uploaded: send a PNG, JPEG or DICOM chest X-ray", print_exception=False)
        try:
            _, pred = analyzer.predict(path)
        except CxrdxError as exc:
            raise gr.Error(_user_message(exc, path), print_exception=False) from None
        return analyzer.record(pred)

    with gr.Blocks(
        title="cxrdx: chest X-ray findings", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(
            "## cxrdx: chest X-ray findings\n"
            f"Upload a frontal chest radiograph (PNG, JPEG or DICOM) to see the probabilities of the "
            f"{len(labels)} NIH ChestX-ray14 findings and where the network looked (Grad-CAM)."
        )
        gr.Markdown(f"**{DISCLAIMER}**", elem_id="cxrdx-disclaimer")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Chest X-ray (PNG, JPEG or DICOM)",
                    file_count="single",
                    type="filepath",
                    elem_id="cxrdx-upload",
                )
                status = gr.HTML(elem_id="cxrdx-status")
                shown = gr.Image(
                    label="Image as read",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=420,
                    buttons=["download", "fullscreen"],
                    elem_id="cxrdx-image",
                )
            with gr.Column(scale=1):
                positives = gr.Markdown(elem_id="cxrdx-positives")
                chart = gr.Image(
                    label="Probabilities",
                    type="pil",
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="cxrdx-chart",
                )
                with gr.Accordion("All findings as a table", open=True):
                    table = gr.Markdown(elem_id="cxrdx-table")
        with gr.Row():
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label=f"Grad-CAM: top {TOP_K} findings",
                    columns=TOP_K,
                    format="png",
                    height=320,
                    preview=False,
                    object_fit="contain",
                    buttons=["download", "fullscreen"],
                    elem_id="cxrdx-gallery",
                )
            with gr.Column(scale=1):
                pick = gr.Dropdown(
                    choices=labels, label="Grad-CAM for another finding", value=None, elem_id="cxrdx-pick"
                )
                picked = gr.Image(
                    label="Grad-CAM (picked finding)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=320,
                    buttons=["download", "fullscreen"],
                    elem_id="cxrdx-picked",
                )
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card(predictor), elem_id="cxrdx-model-card")
        image_state = gr.State(None)
        api_out = gr.JSON(visible=False)

        outputs = [status, shown, chart, positives, table, gallery, pick, picked, image_state]
        upload.change(analyze, inputs=upload, outputs=outputs, api_visibility="private", concurrency_limit=2)
        pick.input(explain_pick, inputs=[image_state, pick], outputs=picked, api_visibility="private")
        api_trigger = gr.Button(visible=False)
        api_trigger.click(
            api_predict, inputs=upload, outputs=api_out, api_name="predict", concurrency_limit=2
        )
    demo.cxrdx_max_file_size = max_file_size  # read by launch()
    return demo


def _theme():
    import gradio as gr

    # System fonts only: the default theme fetches web fonts, and the page must work offline.
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_size: int | str | None = None,
    share: bool = False,
    block: bool = True,
) -> Any:
    """Start the server (blocking unless ``block=False``), local and offline by default."""
    size = max_file_size if max_file_size is not None else getattr(demo, "cxrdx_max_file_size", None)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=size if size is not None else f"{DEFAULT_MAX_UPLOAD_MB}mb",
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=False,
        quiet=True,
        theme=_theme(),
        css=CSS,
        footer_links=["api"],
        mcp_server=False,
    )


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="web app: upload a chest X-ray, see findings and Grad-CAM",
        description="Serve a Gradio page (and a /predict API for gradio_client) for one checkpoint. "
        "Local only unless --allow-remote.",
    )
    p.add_argument("--weights", metavar="CKPT", help="cxrdx .safetensors checkpoint (required)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback --host: other machines can then upload images to this server",
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="also open a public gradio.live tunnel (uploads pass through Gradio's servers; off by default)",
    )
    p.add_argument("--backend", choices=("auto", "torch", "onnx", "openvino"), default="auto")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    if not args.weights:
        raise ConfigError(NO_WEIGHTS_MESSAGE)
    if args.host not in LOOPBACK and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host} would let other machines upload images to this server; "
            "add --allow-remote if that is intended (and put it behind authentication), "
            "or keep the default --host 127.0.0.1"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from cxrdx.export import available_threads
    from cxrdx.predict import Predictor

    torch.set_num_threads(available_threads())
    predictor = Predictor.load(args.weights, backend=args.backend)
    demo = build_app(predictor)
    size = int(args.max_upload_mb * 1024 * 1024)
    print(
        f"cxrdx serve: {args.weights} ({predictor.meta.architecture}, backend {predictor.backend}) "
        f"on http://{args.host}:{args.port}  (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        launch(demo, args.host, args.port, max_file_size=size, share=args.share, block=True)
    except OSError as exc:
        raise ConfigError(
            f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc}); choose another --port"
        ) from None
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
