"""THE label-table record: the rows (a DataFrame) and what the reader learned about them, typed.

``tables.read_label_table`` returns a ``LabelTable``; the metadata travels as fields of this
record, passed explicitly to whoever needs it, never in ``DataFrame.attrs`` (which pandas
calls experimental and drops in many operations, e.g. ``pd.concat`` of tables whose attrs
differ). Operations on the rows go through ``with_frame`` (same metadata, new rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ViewSelection:
    """What a view filter kept (view codes, ``(none)`` for rows without one) and dropped (view -> images)."""

    kept: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class LabelTable:
    """A label table (``frame``: the columns of docs/architecture.md "Label table") and its reading.

    ``dataset``: the reader that read it (a name in ``settings.DATASETS``); ``format``: that
    reader's finer format (``nih``, ``finding-labels``, ``binary``, ``generic``, ``mimic-chexpert``,
    ...); ``source``: the file; ``findings``: the findings it labels (``labels.ALL_FINDINGS``
    order; others are missing, never negative); ``uncertain`` / ``blank``: the policies applied
    and how many cells they touched; ``notes``: what the reader noticed; ``unmapped_terms``:
    source terms with no cxrdx finding -> images; ``views``: the view filter, when one ran.
    """

    frame: pd.DataFrame
    dataset: str
    format: str
    source: str
    findings: tuple[str, ...]
    uncertain: str = "ignore"
    uncertain_labels: int = 0
    blank: str = "negative"
    blank_labels: int = 0
    notes: tuple[str, ...] = ()
    unmapped_terms: dict[str, int] = field(default_factory=dict)
    views: ViewSelection | None = None

    def with_frame(self, frame: pd.DataFrame) -> LabelTable:
        """The same reading over other rows (a filter, a copy, added columns)."""
        return replace(self, frame=frame)

    @property
    def views_dropped(self) -> dict[str, int]:
        """View -> images the view filter left out (empty when none ran or none were dropped)."""
        return dict(self.views.dropped) if self.views is not None else {}

    def __len__(self) -> int:
        return len(self.frame)
