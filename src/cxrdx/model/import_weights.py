"""Turn public DenseNet121 chest X-ray weights into cxrdx checkpoints (``cxrdx import``).

Every well-known chest X-ray model is a DenseNet121, but each ships in its own
layout: torchvision key names (old ``norm.1`` style or new ``norm1``), DataParallel
``module.`` prefixes, a CheXNet wrapper with a ``Sequential(Linear, Sigmoid)`` head,
torchxrayvision's 18 outputs in its own order, Keras HDF5 files with HWIO kernels.
Loading them by hand is where people silently end up with random weights
(``strict=False``), shuffled labels or the wrong input range. Here each tensor is
mapped by name, every shape is checked, anything left over on either side is an
error that lists it, and the checkpoint records the label mapping and the exact
preprocessing the source expects, so predict, evaluate, explain and serve feed it
the input it was trained on.

This module runs the steps every source shares; each source registers itself in
``cxrdx.model.importers.registry`` from its own file in ``cxrdx.model.importers`` (its name,
how its files are recognised, its preprocessing, its key mapping and ignore list, its reader),
and pickles are read only through ``cxrdx.model.pickle_reader``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.files import file_sha256
from cxrdx.labels import FINDINGS, canonical, is_nih_finding
from cxrdx.model.checkpoint import CheckpointMeta, check_state_dict, load_checkpoint, save_checkpoint
from cxrdx.model.importers import registry
from cxrdx.model.importers.registry import OPTION_FLAGS, Importer, Request, SourceWeights
from cxrdx.model.networks import ARCHITECTURES, build_model


def __getattr__(name: str) -> object:
    """``KINDS``: the registered sources' names (the registry loads its modules on first use)."""
    if name == "KINDS":
        return tuple(registry.importers())
    raise AttributeError(name)


@dataclass
class ImportResult:
    """What `import_weights` wrote, for the CLI summary and for tests."""

    out: Path
    meta: CheckpointMeta
    mapped_tensors: int
    notes: list[str] = field(default_factory=list)


def _select_head(
    mapped: dict[str, torch.Tensor], source_labels: list[str], source: str, output_names: Iterable[str] = ()
) -> tuple[list[str], dict[str, int], list[str]]:
    """Reorder the classifier rows into FINDINGS order by name; returns (labels, mapping, dropped)."""
    weight = mapped.get("class_layers.out.weight")
    bias = mapped.get("class_layers.out.bias")
    if weight is None or bias is None:
        raise CheckpointError(f"{source}: no classifier (Linear) weights found; is --from right?")
    if weight.ndim != 2 or weight.shape[0] != len(source_labels) or bias.shape != (weight.shape[0],):
        raise CheckpointError(
            f"{source}: the classifier has {weight.shape[0]} outputs (weight {tuple(weight.shape)}, bias "
            f"{tuple(bias.shape)}) but {len(source_labels)} source labels were given: {source_labels}"
        )
    index: dict[str, int] = {}
    dropped: list[str] = []
    output_names = list(output_names)
    for i, name in enumerate(source_labels):
        if name and is_nih_finding(name):
            ours = canonical(name)
            if ours in index:
                raise CheckpointError(f"{source}: source labels name {ours} twice: {source_labels}")
            index[ours] = i
        elif name:
            dropped.append(name)
        else:
            known = output_names[i] if i < len(output_names) else f"output {i}"
            dropped.append(f"{known} (not trained in these weights)")
    if not index:
        raise CheckpointError(f"{source}: none of the source outputs is one of ours ({', '.join(FINDINGS)})")
    labels = [name for name in FINDINGS if name in index]
    rows = torch.tensor([index[name] for name in labels])
    mapped["class_layers.out.weight"] = weight[rows].clone()
    mapped["class_layers.out.bias"] = bias[rows].clone()
    return labels, {name: index[name] for name in labels}, dropped


def _fit_architecture(
    mapped: dict[str, torch.Tensor],
    unmapped: list[str],
    num_classes: int,
    in_channels: int,
    bn_eps: float,
    source: str,
) -> tuple[str, nn.Module, dict[str, torch.Tensor], list[str]]:
    """The registry architecture whose keys and shapes match exactly; else an error listing every difference."""
    notes: list[str] = []
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in mapped.items()}
    best: tuple[int, str, nn.Module, dict] | None = None
    for arch in ARCHITECTURES:
        model = build_model(arch, num_classes, in_channels, bn_eps)
        expected = model.state_dict()
        filled = dict(state)
        added = [k for k in expected if k.endswith("num_batches_tracked") and k not in filled]
        for k in added:
            filled[k] = torch.zeros((), dtype=torch.long)
        same = sum(k in filled and tuple(filled[k].shape) == tuple(v.shape) for k, v in expected.items())
        if same == len(expected) == len(filled) and not unmapped:
            if added:
                notes.append(
                    f"{len(added)} BatchNorm num_batches_tracked counters absent in the source set to 0"
                )
            return arch, model, filled, notes
        if best is None or same > best[0]:
            best = (same, arch, model, filled)
    assert best is not None
    _, arch, model, filled = best
    problems = []
    try:
        check_state_dict(model, filled, source)
    except CheckpointError as exc:
        problems.append(str(exc))
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (f" ... (+{len(unmapped) - 8} more)" if len(unmapped) > 8 else "")
        problems.append(f"{len(unmapped)} source tensors map to nothing in cxrdx's DenseNet: {shown}")
    raise CheckpointError(
        f"{source}: does not match {arch} (closest of {', '.join(ARCHITECTURES)}): "
        + "; ".join(problems)
        + ". Check that --from names the right kind of file; nothing was written."
    )


def _parse_labels(text: str | Iterable[str] | None) -> list[str] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items]


def import_weights(
    kind: str | None,
    source: str | os.PathLike,
    out: str | os.PathLike,
    trust_pickle: bool = False,
    size: int | None = None,
    source_labels: str | Iterable[str] | None = None,
    xrv_weights: str | None = None,
    inert_pickle: bool = False,
    keras_norm: str | None = None,
) -> ImportResult:
    """Convert ``source`` (a file of the given ``kind``) into a cxrdx checkpoint at ``out``.

    ``kind`` None: the one source whose files ``source`` looks like (``registry.detect``: its name
    or first bytes), else an error asking for it.

    ``inert_pickle``: a whole pickled model is read structurally, never fully unpickled
    (``cxrdx.model.pretrained`` uses this for the files it downloads). ``keras_norm``: the Keras
    model's test-time normalisation (``importers.keras.keras_preprocessing``): imagenet (default),
    per-image, or the training sample's "MEAN,STD".
    """
    importer = registry.get(kind) if kind is not None else None
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    detected: list[str] = []
    if importer is None:
        detected = registry.detect(path)
        if len(detected) != 1:
            looks = (
                f"it looks like {' and '.join(detected)}"
                if detected
                else "its name and first bytes match none"
            )
            raise ConfigError(
                f"{path}: cannot tell which source this file is from ({looks}); give `kind`, one of "
                f"{', '.join(registry.importers())}"
            )
        kind = detected[0]
        importer = registry.get(kind)
    out = Path(out)
    if out.resolve() == path.resolve():
        raise ConfigError(f"--out {out} is the source file itself; choose another output path")
    request = Request(
        path, trust_pickle, inert_pickle, _parse_labels(source_labels), xrv_weights, keras_norm, size
    )
    for option in OPTION_FLAGS:  # a source-specific option given for another source is a mistake
        if getattr(request, option) is not None and option not in importer.options:
            owners = [n for n, i in registry.importers().items() if option in i.options]
            raise ConfigError(f"{OPTION_FLAGS[option]} applies to --from {' / '.join(owners)} only")
    sha = file_sha256(path)

    said = [f"recognised as --from {kind} ({importer.title}) by the file"] if detected else []

    if importer.convert is not None:
        tensors, meta = _explained(importer, path, lambda: importer.convert(request, out, sha))
        return ImportResult(out, meta, tensors, [*said, "validated and re-saved"])

    assert importer.read is not None and importer.preprocessing is not None
    weights: SourceWeights = _explained(importer, path, lambda: importer.read(request))
    mapped, notes = weights.mapped, [*said, *weights.notes]
    conv0 = mapped.get("features.conv0.weight")
    if conv0 is None or conv0.ndim != 4:
        raise CheckpointError(
            f"{path}: no first convolution (features.conv0 / conv1/conv) found; is --from right?"
        )
    in_channels = int(conv0.shape[1])
    preprocessing = importer.preprocessing(request)
    if in_channels != preprocessing.channels:
        raise CheckpointError(
            f"{path}: the first convolution takes {in_channels} channel(s) but --from {kind} models take "
            f"{preprocessing.channels}{_channels_hint(in_channels)}"
        )

    if weights.head is not None:
        labels, label_mapping, dropped = weights.head
    else:
        labels, label_mapping, dropped = _select_head(mapped, weights.labels, str(path), weights.output_names)
    thresholds, threshold_method = weights.thresholds, weights.threshold_method
    if thresholds is not None:
        thresholds = {name: thresholds[name] for name in labels if name in thresholds} or None
        if thresholds is None:
            threshold_method = None

    arch, model, state, extra = _fit_architecture(
        mapped, weights.unmapped, len(labels), in_channels, weights.bn_eps, str(path)
    )
    notes += extra
    model.load_state_dict(state, strict=True)
    meta = CheckpointMeta(
        architecture=arch,
        labels=labels,
        in_channels=in_channels,
        bn_eps=weights.bn_eps,
        preprocessing=preprocessing,
        thresholds=thresholds,
        threshold_method=threshold_method,
        # imported operating points: on the source's own (uncalibrated) scale, chosen without TTA;
        # kept until the user replaces them (`cxrdx evaluate --out-weights`); `cxrdx calibrate` moves them
        threshold_info=(
            {"chosen_by": threshold_method, "calibration": "none", "tta": False} if thresholds else {}
        ),
        calibration={"method": "none", "log_prior_shift": {}, "temperature": {}, "fitted_on": {}},
        provenance={"imported_from": path.name, **weights.provenance},
        source={
            "kind": kind,
            "file": path.name,
            "sha256": sha,
            "label_mapping": label_mapping,
            "source_labels": weights.labels,
            "dropped_outputs": dropped,
            "notes": notes,
        },
    )
    save_checkpoint(out, model, meta)
    load_checkpoint(out)  # what we wrote must load exactly
    return ImportResult(out, meta, len(state), notes)


def _explained(importer: Importer, path: Path, step):
    """Run a source's reading step; a file that fails and looks like another source's says which."""
    try:
        return step()
    except CheckpointError as exc:
        looks = [n for n in registry.detect(path) if n != importer.name]
        if len(looks) != 1 or f"--from {looks[0]}" in str(exc):
            raise
        raise CheckpointError(f"{exc} (the file looks like --from {looks[0]})") from None


def _channels_hint(in_channels: int) -> str:
    """Which sources take that many input channels (e.g. torchxrayvision's 1-channel models)."""
    fits = [
        i for i in registry.importers().values()
        if i.preprocessing is not None and i.preprocessing(Request(Path())).channels == in_channels
    ]  # fmt: skip
    if len(fits) != 1:
        return ""
    return f" ({fits[0].title} models take {in_channels} channel(s): use --from {fits[0].name})"
