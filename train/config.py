"""``Config``: the one dataclass tree spoken by the CLI, the search spaces, MLflow and exports.

Every setting has a dotted key (``optim.lr``, ``excon.mask_threshold``). A config

- round-trips through YAML: ``Config.from_yaml(cfg.to_yaml()) == cfg``;
- takes dotted overrides: ``cfg.with_overrides({"optim.lr": 0.1})`` or CLI ``--set optim.lr=0.1``;
- flattens to dotted keys (``cfg.flatten()``) for MLflow params and search spaces;
- is validated on construction: an unknown key, a wrong type or an out-of-range value raises
  :class:`ConfigError` naming the key, the value and what is allowed (closest key for typos).

Registered names (``method``, ``data.name``, ``model.backbone``, ``explain.explainer``,
``eval.explainer``, ``eval.corruptions``) are checked against their registries by
:func:`extune.train.validate.validate_config`, which every entry point (``fit``, the CLI, a
search and each sampled draw of its space, a study) calls before anything trains; this module
imports no registry, so it stays light and every package may use it.

``None`` means "the component's default" (for example ``explain.layer=None`` is the backbone's
last stage).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from extune.errors import ConfigError, one_line
from extune.files import atomic_write_text, read_text_file

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ExplainConfig",
    "SupConConfig",
    "ExConConfig",
    "EDDAConfig",
    "EvalConfig",
    "RuntimeConfig",
    "parse_assignments",
    "load_yaml",
    "load_lineage",
    "LINEAGE_KEY",
    "as_float",
]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``5E+4`` as floats (YAML 1.2 does; PyYAML
    follows YAML 1.1, whose floats need a dot, and would read them as strings)."""


def _mapping_without_repeats(loader: _Loader, node: yaml.MappingNode, deep: bool = False
                            ) -> dict[Any, Any]:
    """A YAML mapping whose keys are all different: PyPI's loader keeps the last of a repeated
    key silently, which hides a typo'd or pasted-twice setting (as most YAML linters say)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise ConfigError(f"YAML key '{key}' is repeated (lines {seen[key]} and {line}): "
                                  "the last value would win silently; keep one")
            seen[key] = line
        except TypeError:  # an unhashable key: PyYAML refuses it itself
            continue
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping_without_repeats)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in
                                   yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads exponent floats without a dot (``1e-3``) as numbers.

    Every YAML extune reads (config files, ``--set`` values, space files, MLflow params) goes
    through it. Raises ``yaml.YAMLError`` as ``yaml.safe_load`` does, also for text nested
    deeper than Python's recursion limit allows PyYAML to read (a ``RecursionError``).
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise yaml.YAMLError("its lists or mappings are nested too deeply to read (hundreds "
                             "of levels); no extune file nests more than a few") from None


def parse_yaml(text: str, source: str) -> Any:
    """:func:`load_yaml` for a file the user gave; ``source`` names it in errors (``config
    file x.yaml``).

    Raises:
        ConfigError: not YAML, or a repeated key, in one line.
    """
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {one_line(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def as_float(value: Any) -> float:
    """``value`` as a float: an int or float (not a bool), or any string ``float()`` reads
    (``"1e-3"``, ``" 5E+4 "``, ``"1_000.5"``).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> dict[str, Any]:
    """Field metadata: allowed interval of a numeric setting."""
    return {"range": (low, high, low_open, high_open)}


def _num(default: Any, low: float | None = None, high: float | None = None, **kw: Any) -> Any:
    return field(default=default, metadata=_range(low, high, **kw))


SEED_MAX = 2**63 - 1
"""Largest seed: torch and NumPy generators take 64-bit seeds, Ray and JSON readers 63-bit."""

THREADS_MAX = 1024
"""Most torch CPU threads (``runtime.threads``): far above any machine's cores, far below what
crashes OpenMP (50000 threads segfaulted, 2**31 - 1 aborted libgomp, 10**11 overflowed)."""

IMAGES_MAX = 10_000_000
"""Most synthetic images of a split (``data.train_size``, ``data.test_size``): 10**20 overflowed
NumPy's generator (the real limit is memory: 10**7 images of 32 px take 30 GB)."""

WIDTH_MAX = 65536
"""Widest projection head (``model.projection_dim``, ``model.projection_hidden``): 10**20
crashed torch's native code."""

EPOCHS_MAX = 100_000
"""Most epochs of a training (``optim.epochs``, its warm-up): a bound of typing mistakes
(10**20 was accepted and would never end)."""


def _all_corruptions() -> list[str]:
    """Every corruption of :mod:`extune.evaluate.corruptions`, in its order (the default)."""
    from extune.evaluate.corruptions import list_corruptions

    return list_corruptions()


@dataclass
class DataConfig:
    """Which images to train on and how they are prepared."""

    name: str = "synthetic"  # a registered data set: see extune.train.data.list_datasets()
    root: str = "./data"  # folder of the data set files (not used by `synthetic`)
    download: bool = False  # cifar10/cifar100 only: fetch the files when missing
    image_size: int = _num(32, 8, 512)  # images are resized to image_size x image_size once
    val_fraction: float = _num(0.1, 0.0, 0.9, low_open=True)  # held out of train for the objective
    split_seed: int = _num(0, 0, SEED_MAX)  # seed of the validation split: the same for every trial
    limit: int | None = _num(None, 1)  # at most this many training images (val is not capped)
    cache_dir: str = "~/.cache/extune"  # decoded uint8 arrays are cached here ("": no cache)
    # training images decoded into memory (true) or read per batch from their files (false,
    # imagefolder); auto: in memory where the decoded images fit memory_gb
    in_memory: bool | Literal["auto"] = "auto"
    memory_gb: float | None = _num(None, 0.0, low_open=True)  # None: half the free memory
    strict: bool = False  # imagefolder: an undecodable image is an error (else skipped, warned)
    num_classes: int = _num(10, 2, 56)  # synthetic only: number of classes
    train_size: int = _num(6000, 10, IMAGES_MAX)  # synthetic only: training images (before val)
    test_size: int = _num(1000, 10, IMAGES_MAX)  # synthetic only: test images
    synthetic_seed: int = _num(0, 0, SEED_MAX)  # synthetic only: generator seed
    distractors: int = _num(2, 0, 8)  # synthetic only: distractor objects per image


@dataclass
class ModelConfig:
    """Backbone and heads."""

    backbone: str = "resnet_mini"  # a registered backbone: extune.models.list_backbones()
    cifar_stem: bool | None = None  # None: 3x3 stride-1 stem without max-pool when image_size <= 64
    projection_dim: int = _num(128, 8, WIDTH_MAX)  # output of the projection head (L2-normalised)
    projection_hidden: int | None = _num(None, 8, WIDTH_MAX)  # None: the backbone's width


@dataclass
class OptimConfig:
    """SGD with momentum and a cosine schedule."""

    epochs: int = _num(10, 1, EPOCHS_MAX)
    batch_size: int = _num(128, 2)
    lr: float = _num(0.1, 0.0, low_open=True)
    probe_lr: float | None = _num(None, 0.0, low_open=True)  # online linear probe; None: optim.lr
    momentum: float = _num(0.9, 0.0, 1.0, high_open=True)
    weight_decay: float = _num(1e-4, 0.0)
    warmup_epochs: int = _num(0, 0, EPOCHS_MAX)  # linear warm-up before the cosine decay
    label_smoothing: float = _num(0.0, 0.0, 1.0, high_open=True)  # ce only


@dataclass
class ExplainConfig:
    """The explainer that drives ExCon/EDDA and the explanation metrics."""

    explainer: str = "gradcam"  # a registered explainer: extune.augment.list_explainers()
    layer: str | None = None  # gradcam: named layer ("layer3"); None: the backbone's last stage
    steps: int = _num(16, 1, 512)  # integrated_gradients: interpolation steps


@dataclass
class SupConConfig:
    """Supervised contrastive loss (Khosla et al. 2020)."""

    temperature: float = _num(0.1, 0.0, low_open=True)
    base_temperature: float = _num(0.07, 0.0, low_open=True)


@dataclass
class ExConConfig:
    """Explanation-driven supervised contrastive learning (arXiv 2111.14271)."""

    mask_threshold: float = _num(0.5, 0.0, 1.0, high_open=True)
    # share of optim.epochs trained as plain SupCon first: floor(share * epochs) epochs, so
    # that any share below 1 leaves the method at least its last epoch
    warmup_fraction: float = _num(0.1, 0.0, 1.0, high_open=True)
    negative_pair: bool = False  # rejected masked images join the batch as background samples
    background_anchor: bool = False  # background samples are anchors too (else only negatives)


@dataclass
class EDDAConfig:
    """Explanation-driven data augmentation (arXiv 2105.14162)."""

    # share of optim.epochs trained as plain CE first (floor(share * epochs) epochs)
    warmup_fraction: float = _num(0.1, 0.0, 1.0, high_open=True)
    ratio: float = _num(0.5, 0.0, 1.0)  # fraction of each batch that is occluded
    keep_fraction: float = _num(0.3, 0.0, 1.0, low_open=True, high_open=True)
    occlude_fraction: float = _num(0.3, 0.0, 1.0, low_open=True, high_open=True)
    salient_target: Literal["uniform", "smooth"] = "uniform"
    smoothing: float = _num(0.5, 0.0, 1.0)  # salient_target=smooth: label smoothing
    fill: Literal["mean", "blur", "noise"] = "mean"
    nonsalient_weight: float = _num(1.0, 0.0)
    salient_weight: float = _num(1.0, 0.0)


@dataclass
class EvalConfig:
    """What is measured on the validation split during training and on the test set at the end."""

    every: int = _num(1, 1)  # evaluate every N epochs (and always after the last)
    batch_size: int = _num(256, 1)
    test: bool = False  # also evaluate on the test set after the last epoch (final runs)
    # keep the test split's per-image outputs (predictions, confidences, explanation scores)
    # in test_outputs.npz beside the checkpoint, so a study can resample the test images
    per_image: bool = False
    # The explanation metrics' protocol. explainer None: the training explainer as it is
    # (explain.*); else this explainer with eval.layer and eval.steps, whatever the model
    # trained with (a study scores every method alike this way).
    explainer: str | None = None
    layer: str | None = None  # with eval.explainer=gradcam: the layer; None: the last stage
    steps: int = _num(16, 1, 512)  # with eval.explainer=integrated_gradients: its steps
    explain_samples: int = _num(256, 0)  # validation images used for explanation metrics
    top_fraction: float = _num(0.15, 0.0, 1.0, low_open=True, high_open=True)
    deletion_steps: int = _num(16, 2, 256)
    # the explanation audit (docs/metrics.md, "Explanation audit") on the same images and
    # protocol, once per run on its result: the test split if evaluated, else the validation
    # split after the last epoch; and extune evaluate (never the per-epoch validation: it costs
    # 2-4 times the explanation metrics)
    audit: bool = True
    corruptions: list[str] = field(default_factory=_all_corruptions)  # default: every one
    severity: int = _num(3, 1, 5)
    fgsm_eps: float = _num(4 / 255, 0.0, 1.0)  # in [0, 1] pixel space
    grid_images: int = _num(8, 0, 64)  # images in the saliency grid PNG
    grid_every: bool = False  # also write the grid at every evaluation (else only at the end)


@dataclass
class RuntimeConfig:
    """Where and how training runs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = _num(0, 0, SEED_MAX)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    threads: int | None = _num(None, 1, THREADS_MAX)  # torch CPU threads; None: torch's default
    progress: bool = True  # progress bar per epoch


@dataclass
class Config:
    """The whole training configuration. See the module docstring."""

    method: str = "excon"  # a registered method: extune.train.methods.list_methods()
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    supcon: SupConConfig = field(default_factory=SupConConfig)
    excon: ExConConfig = field(default_factory=ExConConfig)
    edda: EDDAConfig = field(default_factory=EDDAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _validate(self, prefix="")

    # ----------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (YAML/JSON/``torch.save(weights_only=True)`` safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Build from a nested dict; missing keys keep their defaults."""
        return _build(cls, data or {}, prefix="")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> Config:
        """Build from YAML text; ``source`` names it in errors (``config file x.yaml``)."""
        data = parse_yaml(text, source)
        if data is not None and not isinstance(data, dict):
            raise ConfigError("config YAML must be a mapping of sections (data:, optim:, ...)")
        return cls.from_dict({k: v for k, v in (data or {}).items() if k != LINEAGE_KEY})

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a YAML config file."""
        return cls.from_yaml(read_text_file(path, "config file"), source=f"config file {path}")

    def save(self, path: str | Path) -> None:
        """Write the config as YAML, atomically."""
        atomic_write_text(path, self.to_yaml())

    def flatten(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. ``{"optim.lr": 0.1, ...}``."""
        flat: dict[str, Any] = {}

        def walk(d: dict[str, Any], prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    flat[f"{prefix}{k}"] = v

        walk(self.to_dict(), "")
        return flat

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A new config with dotted-key overrides applied (values are type-checked)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return Config.from_dict(data)

    @staticmethod
    def keys() -> list[str]:
        """Every dotted key."""
        return list(Config().flatten())


LINEAGE_KEY = "lineage"
"""Top-level key of an exported config file: where the config came from (search, trial, MLflow
run, selection rule, extune version), as ``extune export`` writes it. It is not a setting:
:meth:`Config.from_yaml` skips it, and ``extune train`` records it with its MLflow run
(:func:`load_lineage`)."""


def load_lineage(path: str | Path) -> dict[str, str]:
    """The ``lineage:`` mapping of a config file as strings (empty when it has none).

    Raises:
        ConfigError: an unreadable file, or a ``lineage`` that is not a mapping.
    """
    source = f"config file {path}"
    try:
        data = load_yaml(read_text_file(path, "config file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {one_line(e)}") from None
    lineage = data.get(LINEAGE_KEY) if isinstance(data, dict) else None
    if lineage is None:
        return {}
    if not isinstance(lineage, dict):
        raise ConfigError(f"{source}: '{LINEAGE_KEY}' must be a mapping (where an exported "
                          f"config came from), got {lineage!r}")
    return {str(k): str(v) for k, v in lineage.items() if v is not None}


# --------------------------------------------------------------------- internals
def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            _unknown_key(".".join(parts[: i + 1]), key)
        node = node[part]
    if parts[-1] not in node:
        _unknown_key(key, key)
    if isinstance(node[parts[-1]], dict):
        raise ConfigError(f"'{key}' is a config section; set one of its keys instead, "
                          f"e.g. '{key}.{next(iter(node[parts[-1]]))}'")
    node[parts[-1]] = value


RENAMED_KEYS = {
    "excon.warmup_epochs": "excon.warmup_fraction",
    "edda.warmup_epochs": "edda.warmup_fraction",
}
"""Keys of earlier versions -> the key that replaced them (the warm-ups became a share of
``optim.epochs``, so that a value chosen on short search trials means the same in a long run
and no value switches the method off)."""


def _unknown_key(bad: str, full: str) -> typing.NoReturn:
    if full in RENAMED_KEYS:
        raise ConfigError(f"'{full}' was replaced by '{RENAMED_KEYS[full]}', a share of "
                          "optim.epochs in [0, 1) (1 warm-up epoch of 10 is 0.1)")
    keys = Config.keys()
    close = difflib.get_close_matches(full, keys, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `extune config` to list the keys"
    raise ConfigError(f"unknown config key '{full}'{hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            _unknown_key(f"{prefix}{key}", f"{prefix}{key}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = data[f.name]
    obj = cls.__new__(cls)
    # Fill defaults first so that __post_init__-free sections validate the merged values.
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            value = kwargs[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        object.__setattr__(obj, f.name, value)
    if cls is Config:
        _validate(obj, prefix="")
    return obj


def _validate(obj: Any, prefix: str) -> None:
    """Coerce and check every field of a (nested) config dataclass in place."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"config section '{key}' must be a mapping")
            _validate(value, f"{key}.")
            continue
        value = _coerce(key, value, tp)
        rng = f.metadata.get("range")
        if rng is not None and value is not None:
            _check_range(key, value, *rng)
        setattr(obj, f.name, value)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming key, value and type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid value; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not allowed{hint}; allowed: "
                              + ", ".join(str(a) for a in allowed))
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a list")
        return [_coerce(key, v, item) for v in value]
    if tp is float:
        return _coerce_float(key, value)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not a valid value; expected {_type_name(tp)}")
    return value


def _coerce_float(key: str, value: Any) -> float:
    """A float setting: any number :func:`as_float` reads, finite."""
    try:
        number = as_float(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a valid value; expected float") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return number


def _check_range(key: str, value: float, low: float | None, high: float | None,
                 low_open: bool, high_open: bool) -> None:
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {_bound(low)}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {_bound(high)}")
        raise ConfigError(f"{key}: {value!r} is out of range; allowed: {' and '.join(parts)}")


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def parse_assignments(items: list[str] | tuple[str, ...], option: str = "--set"
                      ) -> dict[str, Any]:
    """Parse CLI ``KEY=VALUE`` strings; values are read as YAML scalars (``0.1``, ``true``).

    >>> parse_assignments(["optim.lr=0.1", "method=excon"])
    {'optim.lr': 0.1, 'method': 'excon'}
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE (e.g. optim.lr=0.1), got '{item}'")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.strip().lower() in ("none", "null", "~"):
            value = None
        overrides[key.strip()] = value
    return overrides
