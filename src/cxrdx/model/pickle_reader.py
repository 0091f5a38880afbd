"""The one pickle reader: PyTorch files read without running code, unless the user trusts the file.

Pickles are read with ``torch.load(weights_only=True)``. A file that holds a whole
pickled model (torchxrayvision's release files do) needs full unpickling, which can
run code embedded in the file; that is refused unless ``trust_pickle`` (``--trust-pickle``)
is given. Even then, when the model's own package is not installed here, the file is
read structurally by an unpickler that turns every class it names into an inert
record, so nothing from the file is imported or executed.
"""

from __future__ import annotations

import pickle
import re
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from cxrdx.errors import CheckpointError


class _Inert:
    """Stands in for every class a pickled model names: it keeps the state and runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._inert_args = args

    def __setstate__(self, state: object) -> None:
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(s is None or isinstance(s, dict) for s in state)
        ):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


# Only what rebuilds tensors and plain containers is resolved for real; everything else
# (model classes, and any function a malicious file names) becomes an inert record.
_REAL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol 2 names
        if (module, name) in _REAL_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": f"cxrdx.inert.{module}"})


_INERT_PICKLE = types.SimpleNamespace(
    __name__="cxrdx_inert_pickle",
    Unpickler=_InertUnpickler,
    load=lambda fh, **kw: _InertUnpickler(fh, **kw).load(),
)


def _unsupported_globals(message: str) -> list[str]:
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def load_torch_file(path: Path, trust_pickle: bool = False, inert: bool = False) -> tuple[object, list[str]]:
    """A pickled PyTorch file's object, read with ``weights_only=True`` unless trusted.

    ``inert``: a whole pickled model is read structurally only (never fully unpickled,
    whatever is installed), as for files cxrdx downloads itself from a known publisher.
    """
    notes: list[str] = []
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    from safetensors import SafetensorError  # torch.load reads a *.safetensors name with safetensors

    try:
        return torch.load(path, map_location="cpu", weights_only=True), notes
    except pickle.UnpicklingError as exc:
        names = _unsupported_globals(str(exc))
        if inert:
            notes.append(
                f"whole pickled model ({', '.join(names) or 'custom objects'}) read structurally; nothing in it ran"
            )
            return _load_inert(path), notes
        if not trust_pickle:
            named = f" (it names {', '.join(names[:6])})" if names else ""
            raise CheckpointError(
                f"{path}: this file holds a whole pickled Python object{named}, not just tensors. "
                "Loading it needs full unpickling, which can run any code hidden in the file. Rerun with "
                "--trust-pickle only if you trust where the file came from, or re-save it where it loads as "
                "`torch.save(model.state_dict(), 'weights.pt')` and import that."
            ) from None
        notes.append(
            f"fully unpickled (--trust-pickle); the file names {', '.join(names) or 'custom objects'}"
        )
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({exc}); it may be truncated or corrupt"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), notes
    except (ImportError, AttributeError) as exc:
        # The model's own package (e.g. torchxrayvision) is not installed here: read the
        # tensors structurally instead, without importing or running anything from the file.
        notes.append(f"classes not importable here ({exc}); tensors read structurally without running them")
    return _load_inert(path), notes


def _load_inert(path: Path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE)
        except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot be read
            raise CheckpointError(
                f"{path}: could not read the pickled model ({type(exc).__name__}: {exc})"
            ) from None


def _module_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a module (real or inert), by state_dict name."""
    state = getattr(obj, "__dict__", {})
    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else ()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _is_module(obj: object) -> bool:
    return isinstance(obj, nn.Module) or "_modules" in getattr(obj, "__dict__", {})


def extract_state_dict(obj: object, source: str) -> tuple[dict[str, torch.Tensor], object]:
    """The tensors of a loaded file (state_dict, training checkpoint dict or whole model), and the model object."""
    if _is_module(obj):
        return _module_tensors(obj), obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if _is_module(inner):
                return _module_tensors(inner), inner
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner), None
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors, None
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise CheckpointError(f"{source}: a dict without a state_dict in it (top-level keys: {keys})")
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state_dict or a model")
