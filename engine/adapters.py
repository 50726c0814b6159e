"""Trained adapters the engine applies at run time: a minimal LoRA (Hu et al. 2021)
that never changes the shared model, and the thought adapter self mode applies.

The low-rank update ``x A^T B^T * alpha/r`` rides on forward hooks of the target
Linear layers and is attached only inside ``attached(model)``. Outside it the model
is exactly the base model, so one loaded model serves novels with and without an
adapter (the caller holds the model lock while it is attached). An adapter is a
folder: ``adapter.safetensors`` plus ``adapter.json`` naming the base model's
fingerprint, rank, targets and a checksum of the weights, so a foreign or damaged
file is refused with one clear sentence instead of silently steering the model.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .models import ModelError, cache_dir

FORMAT = "mnemosyne-lora/1"
WEIGHTS, CONFIG = "adapter.safetensors", "adapter.json"
QV = ("q_proj", "v_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "c_attn", "c_proj", "c_fc")  # Llama-family and GPT-2 names
_ATTACHED = "_mnemosyne_lora"  # set on a model while an adapter is attached


class AdapterError(ModelError):
    """An adapter that is missing, damaged, or made for another model."""


def targets_of(spec: str | tuple) -> tuple[str, ...]:
    """'qv' | 'all' | 'q_proj,v_proj' -> module name suffixes."""
    if not isinstance(spec, str):
        return tuple(spec)
    return {"qv": QV, "all": ALL_LINEAR}.get(spec) or tuple(s.strip() for s in spec.split(",")
                                                           if s.strip())


def _linears(model, targets) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets}


class LoRA(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int = 8, alpha: float = 16.0,
                 targets=QV, seed: int = 0):
        super().__init__()
        if rank < 1:
            raise AdapterError("The LoRA rank must be at least 1.")
        self.names, self.rank, self.alpha = list(shapes), int(rank), float(alpha)
        self.targets = tuple(targets)
        self.scale = self.alpha / self.rank
        g = torch.Generator().manual_seed(int(seed))
        # A like nn.Linear's default init, B zero: the adapter starts as the identity.
        self.A = nn.ParameterList(nn.Parameter(torch.empty(rank, i).uniform_(
            -i ** -0.5, i ** -0.5, generator=g)) for i, _ in shapes.values())
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(o, rank)) for _, o in shapes.values())

    @classmethod
    def for_model(cls, model, rank: int = 8, alpha: float = 16.0, targets=QV,
                  seed: int = 0) -> "LoRA":
        targets = targets_of(targets)
        found = _linears(model, targets)
        if not found:
            raise AdapterError(f"The model has no Linear layer named {', '.join(targets)}.")
        lora = cls({n: (m.in_features, m.out_features) for n, m in found.items()},
                   rank, alpha, targets, seed)
        return lora.to(next(model.parameters()).device)

    @property
    def key(self) -> str:
        """Identifies these weights (e.g. in a prefix-cache key)."""
        h = hashlib.sha256()
        for p in self.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    @contextmanager
    def attached(self, model):
        """The model with this adapter applied, for the duration of the block only."""
        if getattr(model, _ATTACHED, None) is not None:
            raise AdapterError("An adapter is already attached to this model.")
        modules = dict(model.named_modules())
        missing = [n for n in self.names if not isinstance(modules.get(n), nn.Linear)]
        if missing:
            raise AdapterError(f"The model has no layer {missing[0]}: the adapter is for "
                               "another model.")
        handles = []
        try:
            setattr(model, _ATTACHED, True)  # a flag, not the module: never a submodule
            for name, A, B in zip(self.names, self.A, self.B):
                handles.append(modules[name].register_forward_hook(self._hook(A, B)))
            yield model
        finally:
            for h in handles:
                h.remove()
            setattr(model, _ATTACHED, None)

    def _hook(self, A, B):
        def hook(module, inputs, output):
            x = inputs[0]
            return output + ((x.to(A.dtype) @ A.t()) @ B.t() * self.scale).to(output.dtype)
        return hook

    # -- files ---------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, A, B in zip(self.names, self.A, self.B):
            out[f"{name}.lora_A"] = A.detach().float().cpu().contiguous()
            out[f"{name}.lora_B"] = B.detach().float().cpu().contiguous()
        return out

    def save(self, folder, lm, extra: dict | None = None) -> Path:
        """Write the adapter atomically (weights first, then the config that vouches
        for them), stamped with the base model's fingerprint."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (WEIGHTS + ".partial")
        save_file(self.tensors(), str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, folder / WEIGHTS)
        cfg = {"format": FORMAT, "base_model": lm.name, "base_fingerprint": lm.fingerprint,
               "rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
               "modules": self.names, "weights_sha256": digest, **(extra or {})}
        tmp = folder / (CONFIG + ".partial")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, folder / CONFIG)
        return folder

    @classmethod
    def load(cls, folder, lm) -> "LoRA":
        """The adapter in ``folder`` for model ``lm``, or an AdapterError saying why not."""
        folder = Path(folder).expanduser()
        cfg = read_config(folder)
        if cfg["base_fingerprint"] != lm.fingerprint:
            raise AdapterError(f"The adapter in {folder} was trained for another model "
                               f"({cfg.get('base_model', '?')}, fingerprint "
                               f"{cfg['base_fingerprint']}), not {lm.name} ({lm.fingerprint}).")
        path = folder / WEIGHTS
        if not path.is_file():
            raise AdapterError(f"The adapter in {folder} has no {WEIGHTS}.")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != cfg.get("weights_sha256"):
            raise AdapterError(f"The adapter weights in {folder} are corrupt (checksum "
                               "mismatch); train it again.")
        from safetensors.torch import load as st_load
        try:
            tensors = st_load(data)
        except Exception as e:  # noqa: BLE001 - one sentence for the writer
            raise AdapterError(f"The adapter weights in {folder} are corrupt: {e}") from e
        found = _linears(lm.model, tuple(cfg["targets"]))
        try:
            shapes = {n: (found[n].in_features, found[n].out_features) for n in cfg["modules"]}
            lora = cls(shapes, cfg["rank"], cfg["alpha"], cfg["targets"])
            with torch.no_grad():
                for name, A, B in zip(lora.names, lora.A, lora.B):
                    a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
                    if a.shape != A.shape or b.shape != B.shape:
                        raise ValueError(f"{name} has the wrong shape")
                    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                        raise ValueError(f"{name} holds NaN or infinite values")
                    A.copy_(a)
                    B.copy_(b)
        except (KeyError, ValueError) as e:
            raise AdapterError(f"The adapter in {folder} does not fit {lm.name}: {e}") from e
        lora.config = cfg
        return lora.to(next(lm.model.parameters()).device).requires_grad_(False)


def read_config(folder) -> dict:
    """The adapter's JSON config, checked for shape but not against a model."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"There is no adapter at {folder}: train one with "
                           "'python -m engine train thoughts --corpus FILE'.")
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterError(f"{folder} is not an adapter folder (no {CONFIG}).") from None
    except (OSError, ValueError) as e:
        raise AdapterError(f"The adapter config in {folder} is unreadable: {e}") from e
    need = ("format", "base_fingerprint", "rank", "alpha", "targets", "modules")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or any(k not in cfg for k in need):
        raise AdapterError(f"{folder / CONFIG} is not a Mnemosyne LoRA adapter config.")
    return cfg


# -- the thought adapter (trained by ``python -m engine train thoughts``) ------------------
def default_dir(lm) -> Path:
    """Where ``train thoughts`` puts the adapter, and where self mode looks by default."""
    return cache_dir() / "adapters" / f"thoughts-{lm.fingerprint}"


def tuned_in(lm) -> bool:
    """Whether the model itself was tuned with ``--mode full`` (needs no adapter)."""
    return bool(getattr(lm.model.config, "mnemosyne_thoughts", None))


def adapter_for(lm, path: str | None = None) -> LoRA | None:
    """The thought adapter self mode applies to ``lm``: the one at ``path``, else the
    default one for this model; None when the model itself is tuned. AdapterError
    (one sentence) when there is none or it is damaged or foreign."""
    if not path and tuned_in(lm) and not (default_dir(lm) / WEIGHTS).is_file():
        return None
    folder = Path(path).expanduser() if path else default_dir(lm)
    if not path and not folder.is_dir():
        raise AdapterError(f"Self-commentary needs a thought adapter for {lm.name}: train "
                           "one with 'python -m engine train thoughts --corpus FILE' (saved "
                           "where self mode looks), or name its folder with 'python -m "
                           "engine write --thought-adapter DIR'.")
    return LoRA.load(folder, lm)
