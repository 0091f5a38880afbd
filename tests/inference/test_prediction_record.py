"""The prediction record names the image `image` everywhere: the API, --format json/csv, label tables."""

from __future__ import annotations

from cxrdx.inference.formats import format_csv
from cxrdx.inference.prediction import Prediction


def test_image_is_the_one_name_and_source_still_reads():
    p = Prediction("a.png", {"Effusion": 0.25})
    assert p.image == "a.png" == p.source == p.to_dict()["image"]
    assert "source" not in p.to_dict()
    assert format_csv([p], ["Effusion"], None).splitlines()[0].startswith("image,")
