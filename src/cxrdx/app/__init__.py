"""The web app of ``cxrdx serve``: a Gradio page for one chest X-ray's findings, and its ``/predict`` API.

``analyzer`` is the work (read an upload, predict, the API's JSON), independent of
Gradio so it is testable without a server; ``components`` turns a Prediction into
what the page shows (pictures and Markdown); ``ui`` builds the page and launches it.
"""
