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
        canonical_list(["Mass", "Covid", "Broken Heart"])
    assert "'Covid'" in str(err.value) and "'Broken Heart'" in str(err.value)


def test_extended_vocabulary():
    from cxrdx.labels import ALL_FINDINGS, EXTRA_FINDINGS, in_vocabulary_order, is_nih_finding

    assert ALL_FINDINGS[:14] == FINDINGS and set(EXTRA_FINDINGS).isdisjoint(FINDINGS)
    assert canonical("Lung Lesion") == "Lung_Lesion" and canonical("support devices") == "Support_Devices"
    assert canonical("Nodule/Mass") == "Nodule_Mass" and not is_nih_finding("Fracture")
    assert in_vocabulary_order(["Fracture", "effusion", "Atelectasis"]) == [
        "Atelectasis",
        "Effusion",
        "Fracture",
    ]
    with pytest.raises(LabelError, match="NIH's findings"):
        parse_finding_labels("Effusion|Fracture")  # an NIH cell names NIH's 14 only


def test_finding_labels_cell():
    assert parse_finding_labels("No Finding") == []
    assert parse_finding_labels("Effusion|Infiltrate") == ["Effusion", "Infiltration"]
    with pytest.raises(LabelError):
        parse_finding_labels("Effusion|Broken Heart")


def test_vector_round_trip():
    vec = to_vector(["Hernia", "Atelectasis"])
    assert vec.dtype == np.uint8 and vec.sum() == 2 and vec[7] == 1
    assert from_vector(vec) == ["Atelectasis", "Hernia"]
