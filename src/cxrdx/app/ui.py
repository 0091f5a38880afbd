"""The Gradio page and its ``/predict`` API for one loaded Predictor, and starting the server.

Upload a PNG, JPEG or DICOM; the page shows the image as read, a bar chart of the
14 probabilities with the checkpoint's thresholds marked, the positive findings,
Grad-CAM overlays of the top findings (and of any finding picked from a list),
and a model card (training data, recorded AUROCs, the disclaimer). A file that
cannot be used gets a message in the page; the server keeps serving.

The same analysis is a clean API endpoint, ``/predict`` (file in, JSON out), for
``gradio_client``. Serving is local by default (127.0.0.1) and offline (system
fonts, no analytics, no share tunnel unless asked).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np  # at runtime: Gradio reads the handlers' type hints

from cxrdx.app.analyzer import Analyzer, request_line, user_message
from cxrdx.app.components import (
    DISCLAIMER,
    TOP_K,
    banners_html,
    captioned_overlay,
    display_image,
    error_html,
    findings_table,
    model_card,
    overlay_caption,
    positives_markdown,
    probability_chart,
    status_html,
)
from cxrdx.errors import CxrdxError
from cxrdx.inference.formats import ood_warning, overlay_caveats
from cxrdx.settings import MAX_UPLOAD_MB

if TYPE_CHECKING:
    import gradio as gr

    from cxrdx.inference.predictor import Predictor

log = logging.getLogger("cxrdx.app")

DEFAULT_MAX_UPLOAD_MB = MAX_UPLOAD_MB
CSS = """
#cxrdx-status .error {color: #b91c1c; font-weight: 600;}
#cxrdx-disclaimer {font-size: 0.9em; opacity: 0.85;}
.cxrdx-banner {background: #fde8e8; border-left: 6px solid #b91c1c; color: #7f1d1d; font-weight: 600;
  padding: 0.6em 1em; margin: 0.3em 0; border-radius: 4px;}
"""


def build_app(predictor: Predictor, max_file_size: int | str | None = None) -> gr.Blocks:
    """The Gradio page and its ``/predict`` API for one loaded Predictor.

    ``max_file_size`` is applied by :func:`launch` (Gradio takes it at launch time);
    it is accepted here so callers can set it once.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    analyzer = Analyzer(predictor)
    labels = predictor.labels

    thresholds = predictor.thresholds

    def empty(status: str) -> tuple:
        picked = gr.update(value=None, label="Grad-CAM (picked finding)")
        return (status, None, None, "", "", [], gr.update(choices=labels, value=None), picked, None, None)

    def analyze(path: str | None):
        started, outcome = time.monotonic(), "ok"
        try:
            result = _analyze(path)
            if not path:
                outcome = "no-file"
            elif result[1] is None:
                outcome = "refused"  # a file the page could not use; it says why
            return result
        except BaseException:
            outcome = "failed"
            raise
        finally:
            log.info(request_line("page", path, time.monotonic() - started, outcome))

    def _analyze(path: str | None):
        if not path:
            return empty("")
        try:
            image, pred = analyzer.predict(path)
            top = [n for n, _ in pred.ranked()[:TOP_K]]
            captions = [overlay_caption(pred, n, thresholds) for n in top]
            caveats = overlay_caveats(predictor, pred)  # burnt in as `cxrdx explain` does
            overlays = [
                captioned_overlay(image, predictor.explain(image, n), c, caveats)
                for n, c in zip(top, captions, strict=True)
            ]
        except CxrdxError as exc:
            return empty(error_html(f". {user_message(exc, path)}"))
        except Exception as exc:  # noqa: BLE001 - the page must say something and keep serving
            log.exception("unexpected failure on an upload")
            return empty(
                error_html(
                    f": unexpected {type(exc).__name__} ({user_message(exc, path)}). The server log has details."
                )
            )
        gallery = list(zip(overlays, captions, strict=True))
        ood_threshold = predictor.ood.threshold if predictor.ood else None
        ood_text = ood_warning(pred, ood_threshold) if pred.in_distribution is False else None
        status = status_html(pred.source or "", image.shape[1], image.shape[0], pred.warnings, ood_text)
        choices = [n for n, _ in pred.ranked()]
        return (
            status,
            display_image(image),
            probability_chart(pred, predictor.thresholds),
            positives_markdown(pred, ood_threshold),
            findings_table(pred, predictor.thresholds),
            gallery,
            gr.update(choices=choices, value=top[0]),
            gr.update(value=overlays[0], label=f"Grad-CAM: {captions[0]}"),
            image,
            pred,
        )

    def explain_pick(image: np.ndarray | None, pred: Any, finding: str | None):
        if image is None or not finding:
            return gr.update(value=None, label="Grad-CAM (picked finding)")
        caption = overlay_caption(pred, finding, thresholds) if pred is not None else finding
        caveats = overlay_caveats(predictor, pred) if pred is not None else []
        return gr.update(
            value=captioned_overlay(image, predictor.explain(image, finding), caption, caveats),
            label=f"Grad-CAM: {caption}",
        )

    def api_predict(path: str | None) -> dict[str, Any]:
        """Findings for one uploaded chest X-ray (PNG, JPEG or DICOM) as JSON."""
        started, outcome = time.monotonic(), "ok"
        try:
            return _api_predict(path)
        except gr.Error:
            outcome = "refused"
            raise
        except BaseException:
            outcome = "failed"
            raise
        finally:
            log.info(request_line("api/predict", path, time.monotonic() - started, outcome))

    def _api_predict(path: str | None) -> dict[str, Any]:
        if not path:
            raise gr.Error("no file uploaded: send a PNG, JPEG or DICOM chest X-ray", print_exception=False)
        try:
            _, pred = analyzer.predict(path)
        except CxrdxError as exc:
            raise gr.Error(user_message(exc, path), print_exception=False) from None
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
        warnings = banners_html(predictor)  # phantom-trained, no evaluation, thresholds never reached
        gr.HTML(warnings, elem_id="cxrdx-banners", visible=bool(warnings))
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
        pred_state = gr.State(None)  # the picked finding's caption needs its probability and call
        api_out = gr.JSON(visible=False)

        outputs = [status, shown, chart, positives, table, gallery, pick, picked, image_state, pred_state]
        upload.change(analyze, inputs=upload, outputs=outputs, api_visibility="private", concurrency_limit=2)
        pick.input(
            explain_pick, inputs=[image_state, pred_state, pick], outputs=picked, api_visibility="private"
        )
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


def request_log() -> None:
    """The server log: one timestamped line per request on stderr (unless logging is set up already)."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_file_size: int | str | None = None,
    share: bool = False,
    block: bool = True,
) -> Any:
    """Start the server (blocking unless ``block=False``), local and offline by default."""
    request_log()
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
