"""Which checkpoint layout a folder holds, its hyper-parameters and where its tensors are.

Two layouts are published: the Hugging Face one at the repository root (``config.json`` naming
``GptOssForCausalLM``, ``model-*.safetensors`` shards with an index) and OpenAI's own under
``original/`` (one ``model.safetensors``, a config with ``num_experts`` and no ``architectures``).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

from ossrun.errors import ConvertError

from .safetensors import TensorEntry, read_header

HF_ARCHITECTURE = "GptOssForCausalLM"
HF_MODEL_TYPE = "gpt_oss"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Values every gpt-oss has; the original layout's config leaves them out.
DEFAULT_RMS_NORM_EPS = 1e-5
DEFAULT_SWIGLU_LIMIT = 7.0


class Layout(enum.Enum):
    HF = "hf"
    ORIGINAL = "original"


@dataclass(frozen=True)
class HyperParams:
    """The architecture numbers of one gpt-oss checkpoint, whatever its layout."""

    n_layers: int
    n_experts: int
    n_experts_used: int
    hidden: int
    expert_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_rows: int
    context_length: int
    rms_norm_eps: float
    sliding_window: int
    rope_theta: float
    rope_factor: float
    rope_original_context: int
    rope_beta_fast: float
    rope_beta_slow: float
    swiglu_limit: float


def read_json(path: Path, what: str) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path} is not valid JSON ({exc}): {what}") from None
    if not isinstance(document, dict):
        raise ConvertError(f"{path} is not a JSON object: {what}")
    return document


def detect_layout(src: Path) -> tuple[Layout, dict]:
    """The layout of ``src`` and its parsed ``config.json``."""
    if not src.exists():
        raise ConvertError(f"{src} does not exist: give the folder of a gpt-oss checkpoint")
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder: give the folder of a gpt-oss checkpoint (with config.json)")
    config_path = src / "config.json"
    if not config_path.is_file():
        hint = " (its original/ subfolder?)" if (src / "original" / "config.json").is_file() else ""
        raise ConvertError(f"{src} is not a gpt-oss checkpoint{hint}: it has no config.json")
    config = read_json(config_path, "a gpt-oss checkpoint needs its config.json")
    if "architectures" in config or "model_type" in config:
        architectures = config.get("architectures") or []
        if HF_ARCHITECTURE not in architectures and config.get("model_type") != HF_MODEL_TYPE:
            found = ", ".join(map(str, architectures)) or config.get("model_type")
            raise ConvertError(f"{config_path} describes {found}, not gpt-oss ({HF_ARCHITECTURE}): ossrun converts gpt-oss only")
        return Layout.HF, config
    if "num_experts" in config and "experts_per_token" in config:
        return Layout.ORIGINAL, config
    raise ConvertError(f"{config_path} describes no known model (no architectures, no num_experts): ossrun converts gpt-oss only")


def _number(config: dict, key: str, kind: type, path: Path, default: object = None) -> float:
    value = config.get(key, default)
    if value is None:
        raise ConvertError(f"{path} has no {key}: the config is incomplete")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConvertError(f"{path}: {key} is {value!r}, not a {kind.__name__}")
    return kind(value)


def read_hyper_params(layout: Layout, config: dict, config_path: Path) -> HyperParams:
    """The architecture numbers of ``config`` in either layout's key names."""

    def num(key: str, kind: type = int, default: object = None):
        return _number(config, key, kind, config_path, default)

    if layout is Layout.HF:
        rope = config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) != "yarn":
            raise ConvertError(f"{config_path}: rope_scaling is {rope!r}, gpt-oss uses yarn")
        rope_factor = _number(rope, "factor", float, config_path)
        params = dict(
            n_layers=num("num_hidden_layers"),
            n_experts=num("num_local_experts"),
            n_experts_used=num("num_experts_per_tok", int, config.get("experts_per_token")),
            context_length=num("max_position_embeddings"),
            rms_norm_eps=num("rms_norm_eps", float, DEFAULT_RMS_NORM_EPS),
            rope_factor=rope_factor,
            rope_original_context=_number(rope, "original_max_position_embeddings", int, config_path),
            rope_beta_fast=_number(rope, "beta_fast", float, config_path),
            rope_beta_slow=_number(rope, "beta_slow", float, config_path),
        )
    else:
        rope_factor = num("rope_scaling_factor", float)
        original_context = num("initial_context_length")
        params = dict(
            n_layers=num("num_hidden_layers"),
            n_experts=num("num_experts"),
            n_experts_used=num("experts_per_token"),
            context_length=int(original_context * rope_factor),
            rms_norm_eps=DEFAULT_RMS_NORM_EPS,
            rope_factor=rope_factor,
            rope_original_context=original_context,
            rope_beta_fast=num("rope_ntk_beta", float),
            rope_beta_slow=num("rope_ntk_alpha", float),
        )
    hp = HyperParams(
        **params,
        hidden=num("hidden_size"),
        expert_ff=num("intermediate_size"),
        n_heads=num("num_attention_heads"),
        n_kv_heads=num("num_key_value_heads"),
        head_dim=num("head_dim"),
        vocab_rows=num("vocab_size"),
        sliding_window=num("sliding_window"),
        rope_theta=num("rope_theta", float),
        swiglu_limit=num("swiglu_limit", float, DEFAULT_SWIGLU_LIMIT),
    )
    _check_hyper_params(hp, config_path)
    return hp


def _check_hyper_params(hp: HyperParams, config_path: Path) -> None:
    positive = {k: v for k, v in vars(hp).items() if isinstance(v, int) and v <= 0}
    if positive:
        key = next(iter(positive))
        raise ConvertError(f"{config_path}: {key} must be positive, not {positive[key]}")
    if hp.n_experts_used > hp.n_experts:
        raise ConvertError(f"{config_path}: {hp.n_experts_used} experts per token but only {hp.n_experts} experts")
    if hp.n_heads % hp.n_kv_heads:
        raise ConvertError(f"{config_path}: {hp.n_heads} attention heads do not split into {hp.n_kv_heads} KV heads")
    # MXFP4 and Q8_0 blocks are 32 values along a row.
    for key, value in (
        ("hidden_size", hp.hidden),
        ("intermediate_size", hp.expert_ff),
        ("heads x head_dim", hp.n_heads * hp.head_dim),
    ):
        if value % 32:
            raise ConvertError(f"{config_path}: {key} {value} is not a multiple of 32, which MXFP4 and Q8_0 need")


def checkpoint_files(src: Path) -> list[Path]:
    """The safetensors files of ``src``: those the index names, else the single file, else all."""
    index_path = src / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path, "the index lists the checkpoint's shards")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConvertError(f"{index_path} has no weight_map: the index is damaged")
        names = sorted(set(map(str, weight_map.values())))
        for name in names:
            if not (src / name).is_file():
                raise ConvertError(f"shard {src / name} named by {INDEX_FILE} is missing: download it again")
        return [src / name for name in names]
    if (src / SINGLE_FILE).is_file():
        return [src / SINGLE_FILE]
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ConvertError(f"{src} has config.json but no .safetensors files: download the weights too")
    return shards


def read_tensor_entries(files: list[Path]) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint by name; a name found in two files is an error."""
    entries: dict[str, TensorEntry] = {}
    for path in files:
        for name, entry in read_header(path).items():
            if name in entries:
                raise ConvertError(f"tensor {name} is in both {entries[name].path.name} and {path.name}")
            entries[name] = entry
    return entries
