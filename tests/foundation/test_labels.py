import numpy as np
import pytest

from cxrdx.errors import LabelError
from cxrdx.labels import (
    FINDINGS,
    NUM_FINDINGS,
    canonical,
    canonical_list,
    from_vector,
    parse_finding_labels,
    to_vector,
)


def test_nih_order_is_fixed():
    assert NUM_FINDINGS == 14
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[7] == "Hernia" and FINDINGS[-1] == "Pneumothorax"
    assert list(FINDINGS) == sorted(FINDINGS)  # NIH lists them alphabetically


@pytest.mark.parametrize(
    "alias,name",
    [
        ("Infiltrate", "Infiltration"),
        ("infiltration", "Infiltration"),
        ("Pleural Thickening", "Pleural_Thickening"),
        ("PLEURAL_THICKENING", "Pleural_Thickening"),
        ("  effusion ", "Effusion"),
    ],
)
def test_aliases_map_to_canonical(alias, name):
    assert canonical(alias) == name


def test_unknown_names_are_all_reported():
    with pytest.raises(LabelError) as err:
        canonical_list(["Mass", "Fracture", "Lung Lesion"])
    assert "'Fracture'" in str(err.value) and "'Lung Lesion'" in str(err.value)


def test_finding_labels_cell():
    assert parse_finding_labels("No Finding") == []
    assert parse_finding_labels("Effusion|Infiltrate") == ["Effusion", "Infiltration"]
    with pytest.raises(LabelError):
        parse_finding_labels("Effusion|Broken Heart")


def test_vector_round_trip():
    vec = to_vector(["Hernia", "Atelectasis"])
    assert vec.dtype == np.uint8 and vec.sum() == 2 and vec[7] == 1
    assert from_vector(vec) == ["Atelectasis", "Hernia"]
