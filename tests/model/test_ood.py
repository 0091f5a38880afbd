"""OOD reference statistics (cxrdx.model.ood): Ledoit-Wolf, Mahalanobis, threshold, checkpoint storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrdx.errors import DataError
from cxrdx.imaging.preprocessing import Preprocessing
from cxrdx.model import ood
from cxrdx.model.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    update_checkpoint_meta,
)
from cxrdx.model.networks import build_model, features_and_logits


def _correlated(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    mix = rng.standard_normal((p, p)) / np.sqrt(p)
    return rng.standard_normal((n, p)) @ mix + rng.standard_normal(p)


@pytest.mark.parametrize(("n", "p"), [(40, 64), (500, 16), (30, 30)])
def test_ledoit_wolf_matches_scikit_learn(n, p):
    covariance = pytest.importorskip("sklearn.covariance")
    x = _correlated(np.random.default_rng(n + p), n, p)
    cov, shrinkage = ood.ledoit_wolf(x)
    ref = covariance.LedoitWolf().fit(x)
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-9, atol=1e-12)


def test_ledoit_wolf_formula_by_hand():
    """The closed form, written out element by element (no scikit-learn needed)."""
    rng = np.random.default_rng(1)
    x = _correlated(rng, 12, 5)
    n, p = x.shape
    z = x - x.mean(0)
    s = z.T @ z / n
    mu = np.trace(s) / p
    delta = np.sum((s - mu * np.eye(p)) ** 2) / p
    beta = sum(np.sum((np.outer(zk, zk) - s) ** 2) for zk in z) / (n * n * p)
    expect = min(beta, delta) / delta
    cov, shrinkage = ood.ledoit_wolf(x)
    assert shrinkage == pytest.approx(expect, rel=1e-9)
    np.testing.assert_allclose(cov, (1 - expect) * s + expect * mu * np.eye(p), rtol=1e-9, atol=1e-12)


def test_shrinkage_makes_few_samples_invertible_and_tracks_the_truth():
    rng = np.random.default_rng(2)
    few = _correlated(rng, 20, 64)  # fewer images than features: the sample covariance is singular
    z = few - few.mean(0)
    assert np.linalg.matrix_rank(z.T @ z) < 64
    cov, shrinkage = ood.ledoit_wolf(few)
    assert 0 < shrinkage <= 1 and np.all(np.linalg.eigvalsh(cov) > 0)
    # isotropic data: the target mu*I is the truth, so shrinkage is strong; strongly correlated
    # data with many samples: little shrinkage
    assert ood.ledoit_wolf(rng.standard_normal((200, 20)))[1] > 0.5
    strong = rng.standard_normal((5000, 10)) @ np.diag(np.geomspace(0.01, 10, 10))
    assert ood.ledoit_wolf(strong)[1] < 0.05


def test_mahalanobis_matches_scipy_and_the_threshold_is_the_99th_percentile():
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(3)
    train = _correlated(rng, 300, 8)
    stats = ood.fit(train)
    cov, _ = ood.ledoit_wolf(train)
    ridge = ood.RIDGE * np.trace(cov) / len(cov) * np.eye(len(cov))  # the documented diagonal floor
    np.testing.assert_allclose(stats.precision, np.linalg.inv(cov + ridge), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(stats.mean, train.mean(0))
    probe = _correlated(rng, 5, 8)
    expect = [distance.mahalanobis(v, stats.mean, stats.precision) for v in probe]
    np.testing.assert_allclose(ood.score(stats, probe), expect, rtol=1e-10)
    val = ood.score(stats, _correlated(np.random.default_rng(3), 200, 8))
    with_t = stats.with_threshold(val)
    assert with_t.threshold == pytest.approx(np.percentile(val, 99))
    assert with_t.in_distribution(val).mean() == pytest.approx(0.99, abs=0.006)
    assert stats.in_distribution(val) is None  # no threshold yet
    with pytest.raises(DataError, match="32 features|8 features"):
        stats.score(np.zeros((2, 32)))
    with pytest.raises(DataError, match="at least 2"):
        ood.fit(np.zeros((1, 8)))


def test_features_and_logits_is_the_network_forward():
    torch.manual_seed(0)
    model = build_model("densenet-tiny").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats, logits = features_and_logits(model, x)
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-6)
    assert feats.shape == (3, model.class_layers.out.in_features) and bool((feats >= 0).all())


def _tiny_ckpt(path, seed=0):
    torch.manual_seed(seed)
    model = build_model("densenet-tiny")
    save_checkpoint(
        path, model, CheckpointMeta(architecture="densenet-tiny", preprocessing=Preprocessing(size=64))
    )
    return path


def _phantoms(n, seed):
    from cxrdx.phantom.render import make_phantom

    rng = np.random.default_rng(seed)
    return [make_phantom(rng, 64, [])[0].astype(np.float32) / 255 for _ in range(n)]


def test_store_and_load_round_trip_keeps_the_state_dict_strict(tmp_path):
    path = _tiny_ckpt(tmp_path / "m.safetensors")
    assert read_checkpoint_meta(path).ood is None  # absent: null, not an error
    record = ood.fit_ood_into_checkpoint(path, _phantoms(30, 0), _phantoms(10, 1), fitted_on={"by": "test"})
    assert record["fitted_on"]["train_images"] == 30 and record["fitted_on"]["by"] == "test"

    tensors, meta = read_checkpoint(path)
    assert not any(k.startswith("ood.") for k in tensors)  # the network's tensors only
    model, loaded = load_checkpoint(path)  # strict load still passes
    header_only = read_checkpoint_meta(path)  # the torch-free path gets the arrays too
    last = f"precision_{len(record['layers']) - 1}"
    for m in (meta, loaded, header_only):
        stats = ood.reference(m.ood)
        assert isinstance(stats, ood.DepthOod) and m.ood["method"] == ood.DEPTHS_METHOD
        np.testing.assert_array_equal(stats.parts[-1].precision, record[last])
        assert stats.threshold == record["threshold"]
    assert '"precision' not in loaded.to_json()  # the arrays are tensors, not JSON

    # other metadata edits and re-saves keep the arrays
    update_checkpoint_meta(path, lambda m: setattr(m, "thresholds", {"Mass": 0.5}))
    again = read_checkpoint_meta(path)
    np.testing.assert_array_equal(again.ood[last], record[last])
    save_checkpoint(tmp_path / "copy.safetensors", model, loaded)
    np.testing.assert_array_equal(read_checkpoint_meta(tmp_path / "copy.safetensors").ood[last], record[last])

    # removing the record removes the tensors
    update_checkpoint_meta(path, lambda m: setattr(m, "ood", None))
    tensors, meta = read_checkpoint(path)
    assert meta.ood is None and ood.reference(meta.ood) is None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        assert not [k for k in fh.keys() if k.startswith("ood.")]  # noqa: SIM118 - safe_open is not a dict


def test_incomplete_records_mean_no_reference():
    assert ood.OodStats.from_meta(None) is None
    assert ood.OodStats.from_meta({"method": "mahalanobis", "mean": [0.0, 1.0]}) is None  # no precision
    assert ood.OodStats.from_meta({"method": "other", "mean": [0.0], "precision": np.eye(1)}) is None
    bad = {"method": "mahalanobis", "mean": [0.0, 1.0], "precision": np.eye(3)}
    assert ood.OodStats.from_meta(bad) is None


def test_fit_ood_for_accepts_batch_sources_arrays_and_paths(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    model = build_model("densenet-tiny")
    pre = Preprocessing(size=64)
    images = _phantoms(12, 4)

    class Squares:  # the training batch sources' interface (cache / file batches)
        def __len__(self):
            return len(images)

        def squares(self, positions):
            return np.stack([np.rint(images[i] * 255).astype(np.uint8) for i in positions])

    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.rint(im * 255).astype(np.uint8)).save(paths[-1])
    paths.append(tmp_path / "broken.png")
    paths[-1].write_bytes(b"not a png")
    inputs = np.stack([pre(im)[0] for im in images])
    a = ood.fit_ood_for(model, Squares(), Squares(), preprocessing=pre)
    b = ood.fit_ood_for(
        (model, CheckpointMeta(architecture="densenet-tiny", preprocessing=pre)), inputs, inputs
    )
    c = ood.fit_ood_for(model, paths, paths, preprocessing=pre)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["mean"], c["mean"], rtol=1e-4, atol=1e-6)
    assert c["fitted_on"]["skipped"] == 2 and c["fitted_on"]["train_images"] == 12
    capped = ood.fit_ood_for(model, Squares(), Squares(), preprocessing=pre, max_train=5)
    assert capped["fitted_on"]["train_images"] == 5
    with pytest.raises(TypeError):
        ood.fit_ood_for(model, inputs, inputs)


# --------------------------------------------------------------------------- several depths (issue 26)


def test_depth_features_are_one_pass_and_end_with_the_final_features():
    from cxrdx.model.networks import depth_features_and_logits, depth_names, depth_parts

    torch.manual_seed(0)
    model = build_model("densenet-tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = depth_features_and_logits(model, x)
        final, _ = features_and_logits(model, x)
        parts, _ = depth_parts(model, x)
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-6)
    assert len(parts) == len(depth_names()) == 5 and depth_names()[-1] == "class_layers.flatten"
    assert feats.shape == (2, sum(p.shape[1] for p in parts)) and feats.shape[1] > final.shape[1]
    np.testing.assert_allclose(feats[:, -final.shape[1] :].numpy(), final.numpy(), atol=1e-6)
    with torch.no_grad():  # the stem's pooled output is the first block
        stem = model.features.pool0(model.features.relu0(model.features.norm0(model.features.conv0(x))))
    np.testing.assert_allclose(feats[:, : stem.shape[1]].numpy(), stem.mean((2, 3)).numpy(), atol=1e-6)


def test_fit_depths_normalises_each_depth_and_flags_a_shift_at_one_depth_only():
    """A shift confined to an early depth (the final features unchanged) is what the ensemble adds."""
    rng = np.random.default_rng(0)
    widths, names = [4, 6, 8], ["a", "b", "final"]
    everything = _correlated(rng, 700, 18)  # one distribution: train, validation, probes
    train, val, odd = everything[:400], everything[400:600], everything[600:].copy()
    ref = ood.fit_depths(train, val, widths, names)
    per_depth = ref.depth_scores(val)
    np.testing.assert_allclose(per_depth.mean(0), ref.scales)  # each depth's mean on validation is 1
    assert ref.score(val).mean() == pytest.approx(len(widths))
    assert ref.threshold == pytest.approx(np.percentile(ref.score(val), 99))
    assert ref.in_distribution(ref.score(odd)).mean() > 0.9  # unchanged: in distribution
    odd[:, :4] += 6.0 * train[:, :4].std(0)  # only depth "a" moves
    assert ref.in_distribution(ref.score(odd)).mean() < 0.05  # all flagged
    final_only = ood.fit(train[:, -8:]).with_threshold(ood.fit(train[:, -8:]).score(val[:, -8:]))
    assert final_only.in_distribution(final_only.score(odd[:, -8:])).mean() > 0.9  # the old gate misses it
    # round trip through the record (arrays stay arrays)
    back = ood.reference(ref.to_meta(fitted_on={}))
    np.testing.assert_allclose(back.score(odd), ref.score(odd), rtol=1e-5)
    assert back.names == tuple(names) and back.threshold == ref.threshold
    with pytest.raises(DataError, match="18 features of 3 depths"):
        ref.score(np.zeros((2, 8)))
    with pytest.raises(DataError, match="do not add up"):
        ood.fit_depths(train, val, [4, 6], names[:2])


def test_a_first_format_reference_still_scores_the_final_features():
    """Checkpoints written before issue 26 hold method "mahalanobis" on the final features: it keeps working."""
    rng = np.random.default_rng(1)
    everything = _correlated(rng, 400, 8)
    train, val = everything[:300], everything[300:]
    stats = ood.fit(train).with_threshold(ood.fit(train).score(val))
    old = ood.reference(stats.to_meta())
    assert isinstance(old, ood.OodStats) and old.trailing
    wide = np.concatenate([rng.standard_normal((5, 12)), val[:5]], axis=1)  # earlier depths, then the final
    np.testing.assert_allclose(old.score(wide), stats.score(val[:5]))
    assert old.threshold == stats.threshold


def test_the_gate_flags_foreign_inputs_with_an_untrained_network():
    """Before the network is any good (random weights), the early depths already tell noise and
    inverted films from phantoms; the held-out phantoms stay in."""
    torch.manual_seed(0)
    model = build_model("densenet-tiny")
    pre = Preprocessing(size=64)
    record = ood.fit_ood_for(model, _phantoms(80, 10), _phantoms(40, 11), preprocessing=pre)
    ref = ood.reference(record)
    assert record["method"] == ood.DEPTHS_METHOD and len(record["layers"]) == 5

    def flagged(images):
        f, _, _ = ood.image_features(model, images, pre, cap=1000)
        return 1.0 - ref.in_distribution(ref.score(f)).mean()

    rng = np.random.default_rng(3)
    held = _phantoms(40, 12)
    assert flagged(held) <= 0.1
    assert flagged([1.0 - im for im in held]) >= 0.8
    assert flagged([rng.random((64, 64)).astype(np.float32) for _ in range(20)]) >= 0.8


def test_early_depths_flag_what_collapsed_final_features_cannot():
    """A network whose final features carry nothing (norm5 zeroed: every image gives the same pooled
    vector, the extreme of a weak model's collapsed features): the first-format gate, on those
    features alone, flags nothing; the depth gate still flags noise and inverted films."""
    torch.manual_seed(0)
    model = build_model("densenet-tiny")
    with torch.no_grad():
        model.features.norm5.weight.zero_()
        model.features.norm5.bias.fill_(0.5)
    pre = Preprocessing(size=64)
    train, val, held = _phantoms(60, 20), _phantoms(30, 21), _phantoms(30, 22)
    rng = np.random.default_rng(4)
    foreign = [1.0 - im for im in held[:15]] + [rng.random((64, 64)).astype(np.float32) for _ in range(15)]

    def features(images):
        return ood.image_features(model, images, pre, cap=1000)[0]

    width = model.class_layers.out.in_features
    final = ood.fit(features(train)[:, -width:])
    final = final.with_threshold(final.score(features(val)[:, -width:]))
    assert final.in_distribution(final.score(features(foreign)[:, -width:])).all()  # flags nothing

    ref = ood.reference(ood.fit_ood_for(model, train, val, preprocessing=pre))
    assert (~ref.in_distribution(ref.score(features(foreign)))).mean() >= 0.8
    assert (~ref.in_distribution(ref.score(features(held)))).mean() <= 0.1
