"""The frozen CLIP teacher: any open_clip model, loaded so that missing or random weights are errors, not warnings.

Three ways to name the weights (``TeacherSpec``):
- an open_clip model name and a ``pretrained`` tag (``ViT-B-16`` + ``openai``): open_clip downloads the file into its
  cache on a user's machine;
- an open_clip model name and a local state dict ``checkpoint`` (``.pt``/``.pth``/``.bin``/``.safetensors``, a plain
  state dict, ``{"state_dict": ...}``, ``module.``-prefixed keys or an OpenAI TorchScript archive);
- ``local-dir:PATH``, an open_clip local folder: ``open_clip_config.json`` (``{"model_cfg": {...},
  "preprocess_cfg": {...}}``) beside one weights file, found in open_clip's order of preference
  (``open_clip_model.safetensors`` first, see ``weights_in_local_dir``). ``save_local_dir`` writes such a folder; the
  toy teacher and ``froster export`` use it.

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, but open_clip 3.3 builds ``ViT-B-16`` with GELU and only
warns when it is given the ``openai`` tag, which silently shifts every feature. ``decide_quick_gelu`` makes the choice
explicit; it is recorded in the provenance, so stage two rebuilds the same network.

Image size, mean and std come from the model's preprocess config (the tag's, or the local folder's), with the user's
overrides on top. Every user-caused failure is a FrosterError naming the option or file.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from froster.pipeline.errors import ConfigError, FrosterError

logger = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
LOCAL_DIR_CONFIG = "open_clip_config.json"
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"  # the file open_clip 3.3 prefers in a local folder
# open_clip 3.3 factory._find_checkpoint_in_dir: these names first in this order, else the first of the sorted
# *.safetensors, then *.bin / *.pth files.
_LOCAL_DIR_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # what a local folder's preprocess_cfg carries


@dataclass(frozen=True)
class TeacherSpec:
    """Which CLIP to load and how; JSON-able through ``LoadedClip.provenance`` / ``from_provenance``."""

    model: str  # open_clip model name ("ViT-B-16") or "local-dir:PATH" (--model)
    pretrained: str | None = None  # open_clip pretrained tag, e.g. "openai" (--pretrained); not with local-dir
    checkpoint: str | None = None  # local state dict file for `model` (--checkpoint); not with pretrained/local-dir
    quick_gelu: bool | None = None  # None: decide_quick_gelu; True/False forces it (--quick-gelu)
    allow_random: bool = False  # accept random weights; for tests only (--allow-random-teacher)
    image_mean: tuple[float, ...] | None = None  # 3 values overriding the model's preprocess mean (--image-mean)
    image_std: tuple[float, ...] | None = None  # 3 values > 0 overriding the model's preprocess std (--image-std)
    # Expected SHA-256 of the weights file; set by from_provenance so stage two notices changed weights.
    checkpoint_sha256: str | None = None

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"teacher model (--model) must be an open_clip name or local-dir:PATH, got {self.model!r}"
            )
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.pretrained is not None and self.checkpoint is not None:
            raise ConfigError(
                f"teacher: give either a pretrained tag (--pretrained {self.pretrained}) or a checkpoint file "
                f"(--checkpoint {self.checkpoint}), not both"
            )
        if self.model.startswith(LOCAL_DIR_PREFIX):
            if not self.model[len(LOCAL_DIR_PREFIX):].strip():
                raise ConfigError("teacher model (--model): 'local-dir:' needs a folder path after the colon")
            for name, value in (("pretrained", self.pretrained), ("checkpoint", self.checkpoint)):
                if value is not None:
                    raise ConfigError(
                        f"teacher: --{name} {value} cannot be used with --model {self.model}; "
                        "a local-dir folder holds its own weights"
                    )
        if self.model.startswith("hf-hub:"):
            raise ConfigError(
                f"teacher model (--model) {self.model}: hf-hub models are not loaded directly; download the repository "
                "(open_clip_config.json + weights) and pass --model local-dir:PATH"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is None:
                continue
            option = f"{name} (--{name.replace('_', '-')})"
            try:
                vals = tuple(float(v) for v in value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"teacher {option} must be 3 numbers, got {value!r}") from e
            if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
                raise ConfigError(f"teacher {option} must be 3 finite numbers, got {value!r}")
            if name == "image_std" and min(vals) <= 0:
                raise ConfigError(f"teacher image_std (--image-std) must be > 0, got {value!r}")
            object.__setattr__(self, name, vals)

    @property
    def local_dir(self) -> Path | None:
        """The folder of a ``local-dir:`` model, else None."""
        if self.model.startswith(LOCAL_DIR_PREFIX):
            return Path(self.model[len(LOCAL_DIR_PREFIX):]).expanduser()
        return None

    @classmethod
    def from_provenance(cls, d: Mapping[str, Any]) -> TeacherSpec:
        """The spec that reloads the teacher of a provenance dict (a store's ``attrs["teacher"]``).

        QuickGELU is taken as decided (not decided again) and the weights must have the recorded SHA-256. A provenance
        without weights (a test store's random teacher) allows random weights again: there is nothing to protect.
        """
        missing = [k for k in ("model", "pretrained", "checkpoint", "quick_gelu") if k not in d]
        if missing:
            raise FrosterError(
                f"teacher provenance: missing key(s) {missing}; expected a dict written by froster's load_clip, "
                f"found keys {sorted(d)}"
            )
        return cls(
            model=d["model"],
            pretrained=d["pretrained"],
            checkpoint=d["checkpoint"],
            quick_gelu=bool(d["quick_gelu"]),
            allow_random=bool(d.get("allow_random", d.get("random_weights", d.get("checkpoint_sha256") is None))),
            image_mean=d.get("image_mean"),
            image_std=d.get("image_std"),
            checkpoint_sha256=d.get("checkpoint_sha256"),
        )


@dataclass(frozen=True)
class LoadedClip:
    """A loaded, frozen open_clip model with what the stages need around it."""

    model: nn.Module  # open_clip CLIP (or CustomTextCLIP), fp32, eval, requires_grad False
    tokenizer: Callable  # open_clip tokenizer: list[str] -> LongTensor [N, context_length]
    image_size: int  # square input side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    provenance: dict  # JSON-able; TeacherSpec.from_provenance rebuilds the spec
    model_config: dict = field(default_factory=dict)  # open_clip model_cfg as built (quick_gelu set); for local-dir
    preprocess_cfg: dict = field(default_factory=dict)  # JSON-able: mean, std, interpolation, resize_mode, size


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def freeze(model: nn.Module) -> nn.Module:
    """eval() and requires_grad False on every parameter; returns the model. Run it under torch.no_grad() too."""
    model.eval()
    model.requires_grad_(False)
    return model


def _openai_weight_hashes() -> frozenset[str]:
    # open_clip's URLs for OpenAI's files carry their SHA-256 (".../models/<sha256>/ViT-B-16.pt"): a local copy of one
    # of them is recognisable without any flag.
    import open_clip

    hashes = set()
    for name, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_cfg(name, tag).get("url", "")
        if "openaipublic" in url:
            hashes.add(url.split("/")[-2].lower())
    return frozenset(hashes)


def decide_quick_gelu(
    model_name: str,
    pretrained: str | None,
    flag: bool | None,
    config: Mapping[str, Any] | None,
    *,
    checkpoint_sha256: str | None = None,
) -> bool:
    """Whether the network must use QuickGELU. Pure: looks at open_clip's tables only, downloads nothing.

    An explicit ``flag`` (--quick-gelu, or the provenance's decision) wins. Otherwise QuickGELU when the model config
    says so (``*-quickgelu`` names, local folders), when the pretrained tag's config says so or the tag is "openai",
    or when the weights file is one of OpenAI's own (its SHA-256 is in open_clip's download URLs).
    """
    import open_clip

    reasons = []
    if config and config.get("quick_gelu"):
        reasons.append(f"the model config of {model_name} has quick_gelu")
    if pretrained:
        if pretrained.strip().lower() == "openai":
            reasons.append("the pretrained tag is openai (OpenAI trained with QuickGELU)")
        elif open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained).get("quick_gelu"):
            reasons.append(f"open_clip's config of tag {pretrained!r} has quick_gelu")
    if checkpoint_sha256 and checkpoint_sha256.lower() in _openai_weight_hashes():
        reasons.append("the weights file is one of OpenAI's (by SHA-256)")
    inferred = bool(reasons)
    if flag is None:
        if inferred:
            logger.info("QuickGELU on: %s", "; ".join(reasons))
        return inferred
    if bool(flag) != inferred:
        logger.warning(
            "QuickGELU forced %s for %s although %s",
            "on" if flag else "off",
            model_name,
            "; ".join(reasons) if reasons else "nothing indicates OpenAI-trained weights",
        )
    return bool(flag)


def weights_in_local_dir(path: str | os.PathLike) -> Path | None:
    """The weights file open_clip loads from a local folder (same choice as open_clip 3.3), or None."""
    path = Path(path)
    found = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.pth"))
    for name in _LOCAL_DIR_PREFERRED:
        if path / name in found:
            return path / name
    # Otherwise the first by name, .safetensors before the rest.
    return min(found, key=lambda p: (p.suffix != ".safetensors", str(p)), default=None)


def _read_local_dir_config(folder: Path) -> dict:
    cfg_path = folder / LOCAL_DIR_CONFIG
    if not folder.is_dir():
        raise FrosterError(f"teacher model (--model) local-dir:{folder}: no such folder")
    if not cfg_path.is_file():
        raise FrosterError(
            f"teacher model (--model) local-dir:{folder}: expected {LOCAL_DIR_CONFIG} (open_clip's local folder "
            f"format: config + weights), found {sorted(p.name for p in folder.iterdir())}"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FrosterError(f"{cfg_path}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise FrosterError(
            f"{cfg_path}: expected an object with a 'model_cfg' object (and optionally 'preprocess_cfg'), "
            f"found keys {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}"
        )
    return cfg


def _json_pp(pp: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in pp.items():
        out[k] = [float(x) for x in v] if isinstance(v, (tuple, list)) and k in ("mean", "std") else v
        if k == "size" and isinstance(v, (tuple, list)):
            out[k] = [int(x) for x in v]
    return out


def _name_preprocess(name: str, warn: bool = True) -> dict:
    """The preprocess settings the model name's pretrained tags agree on (a --checkpoint has no config of its own)."""
    import open_clip

    seen = set()
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag)
        seen.add(tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(cfg.items())
                       if k in _PREPROCESS_KEYS))
    if len(seen) == 1:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in next(iter(seen))}
    if len(seen) > 1 and warn:
        logger.warning(
            "the pretrained tags of %s disagree on preprocessing; the checkpoint gets open_clip's defaults (OpenAI's "
            "mean/std): give --image-mean/--image-std if its weights were trained with others",
            name,
        )
    return {}


def _unknown_model(name: str) -> FrosterError:
    import open_clip

    close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {close}" if close else "; see open_clip.list_models()"
    return FrosterError(f"teacher model (--model) {name!r} is not an open_clip model{hint}")


def _load_error(source: str, model_id: str, e: Exception) -> FrosterError:
    """A readable error for weights that do not fit the network (torch lists every key; keep the first few)."""
    import re

    msg = str(e)
    parts = []
    for label, pattern in (
        ("missing keys", r'Missing key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*$|\n\s*Unexpected|$)'),
        ("unexpected keys", r'Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*$|\n\s*size mismatch|$)'),
    ):
        m = re.search(pattern, msg, flags=re.S)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
            parts.append(f"{label} {keys[:8]}{more}")
    mism = re.findall(r"size mismatch for ([^:]+): copying a param with shape (\S+ ?\S*) from checkpoint, "
                      r"the shape in current model is (\S+ ?\S*)\.", msg)
    if mism:
        k, a, b = mism[0]
        more = f" and {len(mism) - 1} more" if len(mism) > 1 else ""
        parts.append(f"size mismatch for {k}: file has {a}, model {model_id} expects {b}{more}")
    detail = "; ".join(parts) if parts else (msg.strip().splitlines() or [type(e).__name__])[0]
    return FrosterError(f"teacher {source}: the weights do not fit model {model_id}: {detail}")


# open_clip's load_checkpoint interpolates these when the file's shape differs (e.g. 224 weights into a 336 model)
# instead of failing; for a teacher that silently changes every feature.
_POS_EMBED_KEYS = ("visual.positional_embedding", "positional_embedding", "text.positional_embedding")


def _file_shapes(path: Path, keys: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``keys`` in a weights file, read without loading the whole file; {} when that is not possible."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                names = set(f.keys())
                return {k: tuple(f.get_slice(k).get_shape()) for k in keys if k in names}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # legacy or TorchScript files: open_clip converts them; skip this extra check
        logger.debug("shape check skipped for %s: %s", path, e)
        return {}
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        return {}
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    return {k: tuple(sd[k].shape) for k in keys if k in sd and hasattr(sd[k], "shape")}


def _check_no_resized_embeddings(weights: Path, model: nn.Module, source: str, model_id: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k in _POS_EMBED_KEYS}
    for key, shape in _file_shapes(weights, _POS_EMBED_KEYS).items():
        if key in expected and shape != expected[key]:
            raise FrosterError(
                f"teacher {source}: size mismatch for {key}: the file has {list(shape)}, model {model_id} expects "
                f"{list(expected[key])} (open_clip would interpolate it; pick the model name the weights were "
                "trained as)"
            )


def load_clip(spec: TeacherSpec, device: str | torch.device = "cpu", *, cache_dir: str | None = None) -> LoadedClip:
    """Build the open_clip model of ``spec`` with its weights (strictly: every key present, none extra), frozen.

    ``cache_dir`` is open_clip's download cache for pretrained tags (default ~/.cache/clip or the Hugging Face cache).
    """
    import open_clip

    folder = spec.local_dir
    weights: Path | None = None
    tag_pp: dict = {}
    if folder is not None:
        folder = folder.resolve()
        local_cfg = _read_local_dir_config(folder)
        model_cfg = copy.deepcopy(local_cfg["model_cfg"])
        model_id = f"{LOCAL_DIR_PREFIX}{folder}"
        weights = weights_in_local_dir(folder)
        source = f"local-dir:{folder}"
    else:
        model_id = spec.model.replace("/", "-")  # open_clip's own spelling ("ViT-B/16" -> "ViT-B-16")
        model_cfg = open_clip.get_model_config(model_id)
        if model_cfg is None:
            raise _unknown_model(spec.model)
        if spec.pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(model_id, spec.pretrained)
            if not tag_cfg:
                if os.path.isfile(spec.pretrained):
                    raise FrosterError(
                        f"teacher --pretrained {spec.pretrained} is a file; pass a state dict file as --checkpoint"
                    )
                tags = open_clip.list_pretrained_tags_by_model(model_id)
                raise FrosterError(
                    f"teacher --pretrained {spec.pretrained!r} is not an open_clip tag of {model_id}; "
                    f"known tags: {tags or 'none (use --checkpoint FILE or local-dir:PATH)'}"
                )
            try:
                weights = Path(open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir))
            except Exception as e:  # network, hub or checksum failures all end the same way for the user
                raise FrosterError(
                    f"teacher --model {model_id} --pretrained {spec.pretrained}: could not download the weights "
                    f"({type(e).__name__}: {e}); without internet, copy them and use --checkpoint FILE"
                ) from e
            tag_pp = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
            source = f"--pretrained {spec.pretrained}"
        elif spec.checkpoint is not None:
            weights = Path(spec.checkpoint).expanduser().resolve()
            if not weights.is_file():
                raise FrosterError(f"teacher --checkpoint {spec.checkpoint}: no such file")
            tag_pp = _name_preprocess(model_id, warn=spec.image_mean is None or spec.image_std is None)
            source = f"--checkpoint {weights}"
        else:
            source = f"--model {model_id}"

    if weights is None and not spec.allow_random:
        where = f"the folder {folder} has no weights file" if folder is not None else "no weights were given"
        raise FrosterError(
            f"teacher {spec.model}: {where}, so it would have random weights; give --pretrained TAG, "
            "--checkpoint FILE or a local-dir folder with weights (--allow-random-teacher is for tests only)"
        )
    sha = sha256_file(weights) if weights is not None else None
    if spec.checkpoint_sha256 is not None and sha != spec.checkpoint_sha256:
        raise FrosterError(
            f"teacher {source}: the weights file {weights} has SHA-256 {sha}, expected {spec.checkpoint_sha256} "
            "(the file the store/checkpoint was made with has changed)"
        )
    pretrained_for_decision = spec.pretrained if folder is None else None
    quick_gelu = decide_quick_gelu(model_id, pretrained_for_decision, spec.quick_gelu, model_cfg, checkpoint_sha256=sha)

    force_pp = dict(tag_pp)
    if spec.image_mean is not None:
        force_pp["mean"] = tuple(spec.image_mean)
    if spec.image_std is not None:
        force_pp["std"] = tuple(spec.image_std)
    if weights is None:
        logger.warning("teacher %s has RANDOM weights (allow_random): fine for tests, useless otherwise", model_id)
    try:
        model = open_clip.create_model(
            model_id,
            # A local folder loads its own weights; otherwise open_clip loads our file strictly (strict=True).
            pretrained=None if folder is not None or weights is None else str(weights),
            precision="fp32",
            device=device,
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=force_pp or None,
            quick_gelu=quick_gelu,  # the model kwarg also turns it off when a config says on and the flag says off
        )
    except RuntimeError as e:
        if "state_dict" in str(e) or "size mismatch" in str(e):
            raise _load_error(source, model_id, e) from e
        raise FrosterError(f"teacher {source}: open_clip could not build {model_id}: {e}") from e
    except (ValueError, OSError, KeyError, TypeError) as e:
        # Malformed configs (TypeError: unexpected config field) and unreadable weights files.
        raise FrosterError(f"teacher {source}: open_clip could not load {model_id}: {type(e).__name__}: {e}") from e
    freeze(model)
    if weights is not None:
        _check_no_resized_embeddings(weights, model, source, model_id)

    pp = _json_pp(open_clip.get_model_preprocess_cfg(model))
    size = pp.get("size", getattr(model.visual, "image_size", None))
    sizes = [int(s) for s in (size if isinstance(size, (list, tuple)) else (size, size))]
    if len(set(sizes)) != 1:
        raise FrosterError(f"teacher {model_id}: non-square input size {sizes} is not supported (views are square)")
    mean = tuple(float(v) for v in pp["mean"])
    std = tuple(float(v) for v in pp["std"])
    model_config = copy.deepcopy(model_cfg)
    model_config["quick_gelu"] = quick_gelu
    tokenizer = _tokenizer(model_id, model_cfg.get("text_cfg", {}))

    provenance = {
        "model": model_id,
        "pretrained": spec.pretrained,
        "checkpoint": str(weights) if spec.checkpoint is not None else None,
        "checkpoint_sha256": sha,
        "local_dir": str(folder) if folder is not None else None,
        "weights_file": str(weights) if weights is not None else None,
        "quick_gelu": quick_gelu,
        "random_weights": weights is None,
        "allow_random": spec.allow_random,
        "image_mean": list(spec.image_mean) if spec.image_mean is not None else None,
        "image_std": list(spec.image_std) if spec.image_std is not None else None,
        "image_size": sizes[0],
        "mean": list(mean),
        "std": list(std),
        "open_clip_version": open_clip.__version__,
    }
    logger.info("teacher %s loaded from %s (QuickGELU %s, input %d, sha256 %s)", model_id, source, quick_gelu,
                sizes[0], sha)
    return LoadedClip(model, tokenizer, sizes[0], mean, std, provenance, model_config, pp)


def _tokenizer(model_id: str, text_cfg: Mapping[str, Any]) -> Callable:
    # Building CLIP's BPE tokenizer takes ~0.3 s, so equal tokenizers are shared. open_clip 3.3 picks a Hugging Face
    # tokenizer when text_cfg names one (from the folder, for local-dir), SigLIP's by model name, else CLIP's
    # SimpleTokenizer with the config's context length and kwargs; the key says exactly what the choice depends on.
    if text_cfg.get("hf_tokenizer_name") or (
        not model_id.startswith(LOCAL_DIR_PREFIX) and "siglip" in model_id.lower()
    ):
        key = ("named", model_id, json.dumps(dict(text_cfg), sort_keys=True, default=str))
    else:
        key = ("simple", text_cfg.get("context_length"), json.dumps(text_cfg.get("tokenizer_kwargs", {}),
                                                                   sort_keys=True, default=str))
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            import open_clip

            _TOKENIZERS[key] = open_clip.get_tokenizer(model_id)
        return _TOKENIZERS[key]


_TOKENIZERS: dict[tuple, Callable] = {}
_TOKENIZERS_LOCK = threading.Lock()  # extraction may load teachers from several threads


def tokenizer_for(spec: TeacherSpec) -> Callable:
    """The open_clip tokenizer of ``spec``'s model (a local folder's config decides its tokenizer)."""
    import open_clip

    folder = spec.local_dir
    if folder is not None:
        model_cfg = _read_local_dir_config(folder.resolve())["model_cfg"]
        model_id = f"{LOCAL_DIR_PREFIX}{folder.resolve()}"
    else:
        model_id = spec.model.replace("/", "-")
        model_cfg = open_clip.get_model_config(model_id)
        if model_cfg is None:
            raise _unknown_model(spec.model)
    return _tokenizer(model_id, model_cfg.get("text_cfg", {}))


def _uses_quick_gelu(model: nn.Module) -> bool | None:
    """True/False when the network's activations say so, None when it has neither (e.g. timm towers)."""
    from open_clip.transformer import QuickGELU

    kinds = {type(m) for m in model.modules()}
    if QuickGELU in kinds:
        return True
    return False if nn.GELU in kinds else None


def save_local_dir(
    model: nn.Module,
    config_dict: Mapping[str, Any],
    path: str | os.PathLike,
    preprocess_cfg: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
) -> Path:
    """Write an open_clip local folder that ``load_clip(TeacherSpec("local-dir:PATH"))`` and open_clip load.

    ``config_dict`` is the open_clip model config (``LoadedClip.model_config``); ``quick_gelu`` is set from the network
    itself when the config leaves it out. ``preprocess_cfg`` defaults to the model's own (mean, std, interpolation,
    resize_mode). Writes ``open_clip_model.safetensors`` then ``open_clip_config.json``, each atomically. A text tower
    with a Hugging Face tokenizer needs ``tokenizer`` (saved with ``save_pretrained``) since open_clip reads it from
    the folder.
    """
    import open_clip
    from safetensors.torch import save_file

    folder = Path(path)
    model_cfg = copy.deepcopy(dict(config_dict))
    for key in ("vision_cfg", "text_cfg", "embed_dim"):
        if key not in model_cfg:
            raise ValueError(f"save_local_dir: config_dict lacks {key!r}; pass LoadedClip.model_config")
    actual = _uses_quick_gelu(model)
    if actual is not None:
        if "quick_gelu" in model_cfg and bool(model_cfg["quick_gelu"]) != actual:
            raise ValueError(
                f"save_local_dir: config_dict says quick_gelu={model_cfg['quick_gelu']} but the network uses "
                f"{'QuickGELU' if actual else 'GELU'}"
            )
        model_cfg["quick_gelu"] = actual
    pp_src = preprocess_cfg if preprocess_cfg is not None else open_clip.get_model_preprocess_cfg(model)
    pp = _json_pp({k: pp_src[k] for k in _PREPROCESS_KEYS if k in pp_src})
    if "mean" not in pp or "std" not in pp:
        raise ValueError(f"save_local_dir: preprocess_cfg needs mean and std, got {sorted(pp_src)}")

    folder.mkdir(parents=True, exist_ok=True)
    hf_name = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_name:
        if tokenizer is None or not hasattr(getattr(tokenizer, "tokenizer", tokenizer), "save_pretrained"):
            raise ValueError(f"save_local_dir: the text tower uses the Hugging Face tokenizer {hf_name!r}; pass it")
        getattr(tokenizer, "tokenizer", tokenizer).save_pretrained(str(folder))
    # safetensors refuses tensors that share storage; clone so that any network can be saved.
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(folder / LOCAL_DIR_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    payload = json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}, indent=2) + "\n"
    _atomic_write(folder / LOCAL_DIR_CONFIG, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    chosen = weights_in_local_dir(folder)
    if chosen != folder / LOCAL_DIR_WEIGHTS:  # pragma: no cover - only if open_clip's preference changes
        raise FrosterError(f"{folder}: open_clip would load {chosen} rather than the weights just written")
    return folder


def _atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()

