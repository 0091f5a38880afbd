"""The weight-importer registry: every source registers itself, and the shared pipeline runs each one.

Each test is parametrised over ``registry.importers()``, so a new source file is covered the moment it
exists (and the sample-file table below fails until the new source gets a sample).
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from test_importers import TINY, XRV_NIH_FILE, make_tv_state, tv_to_keras, write_chexnet, write_keras2_h5

from cxrdx import settings
from cxrdx.cli import main
from cxrdx.errors import CheckpointError, ConfigError
from cxrdx.jobs import import_weights as job
from cxrdx.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from cxrdx.model.import_weights import KINDS, import_weights
from cxrdx.model.importers import registry
from cxrdx.model.networks import build_model


def _torchvision(tmp: Path) -> Path:
    path = tmp / "densenet121-a639ec97.pth"  # torchvision's own download name
    torch.save(make_tv_state(TINY, 3, 1000, seed=1), path)
    return path


def _chexnet(tmp: Path) -> Path:
    path = tmp / "model.pth.tar"
    write_chexnet(path, make_tv_state(TINY, 3, 14, seed=2))
    return path


def _xrv(tmp: Path) -> Path:
    path = tmp / XRV_NIH_FILE
    torch.save(make_tv_state(TINY, 1, 18, seed=3), path)
    return path


def _keras(tmp: Path) -> Path:
    path = tmp / "weights.h5"
    write_keras2_h5(path, tv_to_keras(make_tv_state(TINY, 3, 14, seed=4), TINY["blocks"]))
    return path


def _cxrdx(tmp: Path) -> Path:
    path = tmp / "ours.safetensors"
    save_checkpoint(path, build_model("densenet-tiny"), CheckpointMeta(architecture="densenet-tiny"))
    return path


SAMPLES = {"torchvision": _torchvision, "chexnet": _chexnet, "xrv": _xrv, "keras": _keras, "cxrdx": _cxrdx}
SOURCES = list(registry.importers())


def test_settings_names_are_the_registry():
    """`cxrdx import --help` offers settings.IMPORT_SOURCES without torch: the same names, the same order."""
    assert settings.IMPORT_SOURCES == tuple(registry.importers()) == KINDS
    assert set(SAMPLES) == set(SOURCES), "every registered source needs a sample file in this test"


@pytest.mark.parametrize("name", SOURCES)
def test_each_source_is_complete(name):
    importer = registry.importers()[name]
    assert importer.name == name and importer.suffixes and importer.title
    assert (importer.read is None) != (importer.convert is None)  # reads a foreign file, or re-validates ours
    assert (importer.preprocessing is not None) == (importer.read is not None)
    flags = {f.name for f in fields(job.Config)}
    assert set(importer.options) <= set(registry.OPTION_FLAGS) and set(importer.options) <= flags


@pytest.mark.parametrize("name", SOURCES)
def test_each_source_detects_its_own_file_only_and_imports_it(name, tmp_path):
    sample = SAMPLES[name](tmp_path)
    assert registry.detect(sample) == [name]
    assert any(sample.name.endswith(s) for s in registry.importers()[name].suffixes)
    result = import_weights(name, sample, tmp_path / "out.safetensors")
    tensors, meta = read_checkpoint(result.out)
    assert meta.architecture == "densenet-tiny" and len(tensors) >= result.mapped_tensors > 0
    assert meta.source.get("kind") == name or meta.source.get("revalidated_from") == sample.name
    importer = registry.importers()[name]
    if importer.preprocessing is not None:  # the publisher's recipe is the one recorded
        expected = importer.preprocessing(registry.Request(sample))
        assert meta.preprocessing.to_dict() == expected.to_dict()


@pytest.mark.parametrize("name", SOURCES)
def test_without_from_the_source_is_recognised(name, tmp_path):
    sample = SAMPLES[name](tmp_path)
    result = import_weights(None, sample, tmp_path / "auto.safetensors")
    assert result.notes[0].startswith(f"recognised as --from {name} ")
    given = import_weights(name, sample, tmp_path / "given.safetensors")
    a, b = read_checkpoint(result.out), read_checkpoint(given.out)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1].preprocessing.to_dict() == b[1].preprocessing.to_dict() and a[1].labels == b[1].labels


def test_a_file_nothing_recognises_needs_from(tmp_path, capsys):
    src = (
        tmp_path / "weights.pt"
    )  # a plain state dict under a generic name: any torch source could have made it
    torch.save(make_tv_state(TINY, 3, 14, seed=6), src)
    assert registry.detect(src) == []
    with pytest.raises(ConfigError, match=r"cannot tell which source .* give `kind`, one of torchvision"):
        import_weights(None, src, tmp_path / "x.safetensors")
    assert main(["import", str(src), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "give --from, one of" in err and "Traceback" not in err
    assert main(["import", str(_xrv(tmp_path)), "--out", str(tmp_path / "x.safetensors")]) == 0
    assert "recognised as --from xrv" in capsys.readouterr().out


def test_a_file_given_as_the_wrong_source_names_the_right_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"looks like --from keras"):
        import_weights("chexnet", _keras(tmp_path), tmp_path / "x.safetensors")


def test_source_options_belong_to_their_source(tmp_path):
    with pytest.raises(ConfigError, match="--keras-norm applies to --from keras only"):
        import_weights("chexnet", _chexnet(tmp_path), tmp_path / "x.safetensors", keras_norm="per-image")
    with pytest.raises(ConfigError, match="--xrv-weights applies to --from xrv only"):
        import_weights("keras", _keras(tmp_path), tmp_path / "x.safetensors", xrv_weights="nih")
    with pytest.raises(ConfigError, match="--from 'nope' is unknown; choose one of torchvision, chexnet"):
        import_weights("nope", _chexnet(tmp_path), tmp_path / "x.safetensors")


def test_a_new_source_is_one_file(tmp_path, monkeypatch):
    """A module dropped into the importers package registers itself and runs the shared pipeline."""
    import cxrdx.model.importers as package

    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "reversed_chexnet.py").write_text(
        textwrap.dedent(
            """
            from cxrdx.model.importers.chexnet import CHEXNET_LABELS
            from cxrdx.model.importers.registry import Importer, register
            from cxrdx.model.importers.torchvision import imagenet_preprocessing, read_torch

            def read(request):
                weights, _state, _obj = read_torch(request, ())
                weights.labels = list(reversed(CHEXNET_LABELS))
                return weights

            register(Importer(name="reversed", title="test", suffixes=(".rev",),
                              detect=lambda path: path.suffix == ".rev",
                              preprocessing=lambda r: imagenet_preprocessing(r.size), read=read))
            """
        )
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(registry, "_LOADED", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "cxrdx.model.importers.reversed_chexnet", raising=False)
    assert list(registry.importers())[-1] == "reversed"
    src = tmp_path / "w.rev"
    state = make_tv_state(TINY, 3, 14, seed=5)
    torch.save(state, src)
    assert registry.detect(src) == ["reversed"]
    meta = read_checkpoint(import_weights("reversed", src, tmp_path / "r.safetensors").out)[1]
    # the head was reordered by name: our first finding (Atelectasis) is the source's last output
    tensors = read_checkpoint(tmp_path / "r.safetensors")[0]
    assert meta.labels[0] == "Atelectasis"
    assert torch.equal(tensors["class_layers.out.weight"][0], state["classifier.weight"][-1])
    sys.modules.pop("cxrdx.model.importers.reversed_chexnet", None)


def test_registering_a_name_twice_is_an_error():
    chexnet = registry.importers()["chexnet"]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.Importer(name="chexnet", title="x", suffixes=(), detect=chexnet.detect))
