"""A trained model as an MLflow model: one model, two flavours, no pickle.

The run of ``extune train`` logs its final checkpoint as the MLflow model ``model``
(:func:`log_checkpoint_model`), a *logged model* of the run that ``--register NAME`` adds to the
Model Registry. Its folder holds

- the ``pytorch`` flavour, written by ``mlflow.pytorch.save_model`` in MLflow's ``pt2`` format
  (``torch.export``: a traced graph and its weights, which MLflow loads without unpickling):
  ``mlflow.pytorch.load_model(uri)(images)`` takes float32 ``[B, 3, S, S]`` in ``[0, 1]`` and
  returns the logits ``[B, C]`` (the normalisation is inside: :class:`Classifier`);
- the ``python_function`` flavour, extune's own (``loader_module`` this module, data
  ``extune/``: the weights, config, class names and normalisation as an extune checkpoint,
  read with ``torch.load(weights_only=True)``): ``predict`` takes a batch of uint8 (0-255) or
  float (``[0, 1]``) images, channels first or last, and returns the class probabilities
  ``[B, C]``; with ``params={"saliency": True}`` a dict of ``probabilities`` and ``saliency``
  ``[B, S, S]`` (the training explainer, for the predicted class). ``mlflow models serve``
  serves it (``--env-manager local`` in an environment where extune is installed).

Why one model with both flavours, the pyfunc extune's: a registered version is then what every
MLflow user expects of it (``mlflow.pytorch.load_model`` and ``mlflow.pyfunc.load_model`` both
work on ``models:/NAME/1``), and the pyfunc can explain (which needs the network's layers, not
a traced graph). MLflow's own pyfunc of a PyTorch model would return logits of normalised
tensors. Why not ``mlflow.pytorch.log_model``: it logs to the fluent active run, the global
tracking URI and the default experiment; extune's writes go through its journal
(:mod:`~extune.tracking.journal`) with an explicit client, so an outage costs no
training and ``extune sync`` can log the model later. :func:`log_checkpoint_model` takes the
steps ``log_model`` takes (a logged model of the run, its folder saved by
``mlflow.pytorch.save_model``, uploaded, finalised, registered), once per run.

The signature names the outputs (probabilities ``[-1, C]``) and the ``saliency`` param; the input
is described by the input example and the metadata, not by a tensor schema: MLflow enforces one
dtype per tensor input, and the model takes both uint8 and float images.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from extune import __version__
from extune.errors import ConfigError, ExtuneError, one_line
from extune.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

__all__ = ["MODEL_NAME", "DATA_DIR", "Classifier", "ImageClassifier", "save_model",
           "log_checkpoint_model", "link_model_pages", "model_note", "MODEL_VERSIONS_TAG",
           "is_model_uri", "model_checkpoint", "model_slug"]

MODEL_NAME = "model"
"""Name of the logged model of a run (``runs:/<run id>/model``)."""
DATA_DIR = "extune"
"""Folder of the model that holds the pyfunc's checkpoint (``extune/checkpoint.pt``)."""
MODEL_KEYS = ("epoch", "model", "config", "classes", "mean", "std")
"""What the model's checkpoint keeps of a run's checkpoint (no optimiser, history or RNG)."""
INFERENCE_PACKAGES = ("torch", "torchvision", "captum", "kornia", "numpy", "PyYAML")
"""Packages the pyfunc imports (pinned in the model's requirements; extune itself is not on
PyPI: the environment that loads the pyfunc must have it installed)."""


class Classifier(nn.Module):
    """The exported network: images float ``[B, 3, S, S]`` in ``[0, 1]`` -> logits ``[B, C]``,
    normalised with the training set's statistics first."""

    def __init__(self, network: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.network = network
        for name, values in (("mean", mean), ("std", std)):
            stat = torch.tensor([float(v) for v in values], dtype=torch.float32)
            self.register_buffer(name, stat.view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.network((images - self.mean) / self.std)


# ------------------------------------------------------------------ saving and logging
def save_model(path: str | Path, checkpoint: str | Path, mlflow_model: Any = None) -> dict:
    """Write the MLflow model of an extune checkpoint to the folder ``path`` (see the module
    docstring); returns its metadata (classes, normalisation, input, versions).

    Raises:
        ExtuneError: not an extune checkpoint.
    """
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    from extune.train.checkpoint_eval import model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    network, cfg = model_from_checkpoint(ckpt, checkpoint)
    size, classes = cfg.data.image_size, [str(c) for c in ckpt.get("classes", [])]
    metadata = _metadata(cfg, classes, ckpt)
    mlflow_model = mlflow_model or Model()
    example = np.full((2, 3, size, size), 0.5, dtype=np.float32)  # batch 2: a dynamic batch
    traced = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]))
    with _quiet_export():
        mlflow.pytorch.save_model(
            Classifier(network.eval(), metadata["mean"], metadata["std"]).eval(), str(path),
            mlflow_model=mlflow_model, signature=traced, input_example=example,
            serialization_format="pt2", pip_requirements=_requirements(), metadata=metadata)
    data = Path(path) / DATA_DIR
    data.mkdir()
    save_checkpoint({k: ckpt[k] for k in MODEL_KEYS if k in ckpt}, data / CHECKPOINT_NAME)
    mlflow_model.flavors.pop(pyfunc.FLAVOR_NAME, None)  # MLflow's: logits of normalised input
    pyfunc.add_to_model(mlflow_model, loader_module=__name__, data=DATA_DIR,
                        conda_env="conda.yaml", python_env="python_env.yaml",
                        model_config={"device": "cpu"})
    mlflow_model.signature = ModelSignature(
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(classes)), "probabilities")]),
        params=ParamSchema([ParamSpec("saliency", "boolean", False)]))
    mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))
    return metadata


def _metadata(cfg: Any, classes: list[str], ckpt: dict) -> dict[str, Any]:
    size = cfg.data.image_size
    return {
        "classes": classes, "mean": [float(v) for v in ckpt.get("mean", (0.5,) * 3)],
        "std": [float(v) for v in ckpt.get("std", (0.5,) * 3)], "image_size": size,
        "method": cfg.method, "backbone": cfg.model.backbone,
        "explainer": cfg.explain.explainer, "epochs": int(ckpt["epoch"]) + 1,
        "pyfunc_input": f"uint8 [B, 3, {size}, {size}] in 0-255 or float [B, 3, {size}, {size}] "
                        "in [0, 1] (channels last too; other sizes are resized)",
        "pyfunc_output": "probabilities [B, C] in the order of `classes`; with params "
                         "{saliency: true}: {probabilities, saliency [B, S, S]}",
        "pytorch_input": f"float32 [B, 3, {size}, {size}] in [0, 1] -> logits [B, C] "
                         "(normalisation inside)",
        "extune_version": __version__,
    }


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in INFERENCE_PACKAGES:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """MLflow's and torch.export's warnings and INFO lines stay off extune's console."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("mlflow", "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def log_checkpoint_model(tracker: Any, run_id: str, checkpoint: Path, *, name: str = MODEL_NAME,
                         register: str | None = None, step: int = 0) -> str | None:
    """Log ``checkpoint`` as the MLflow model ``name`` of the run (once: a model the run has
    already is kept), with ``register`` add it to the Model Registry (once per run), and link
    the pages (:func:`link_model_pages`).

    Returns:
        The registered version, or ``None``.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    client = tracker.client
    model = _logged_model(client, tracker.experiment_id, run_id, name)
    if model is None or model.status != LoggedModelStatus.READY:
        if model is None:
            model = client.create_logged_model(tracker.experiment_id, name=name,
                                               source_run_id=run_id, model_type="extune")
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
        _upload(client, model, run_id, checkpoint)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    version = _register(client, tracker.uri, register, model, run_id) if register else None
    link_model_pages(client, run_id, model, register, version)
    return version


def link_model_pages(client: Any, run_id: str, model: Any, register: str | None,
                     version: str | None) -> None:
    """Connect the pages of a final run, its logged model and its registered version, each
    linking to the next and back (MLflow fills none of this for a model logged with the
    client):

    - the logged model gets the run's final metrics (the test split's, else the last
      validation's: logged again with the model's id, MLflow's way of giving a model metrics),
      the run's params, a description (:func:`model_note`) and MLflow's tag
      ``mlflow.modelVersions`` (the page then says "registered", lists the version and offers
      no second "Register model");
    - the run's description names the model and the version as links (its ``Model:``
      sentence, :func:`~extune.tracking.notes.model_sentence`).

    Each step is skipped where it was done (``extune sync`` may send the write twice).
    """
    from extune.tracking.client import model_page, version_page
    from extune.tracking.notes import NOTE_TAG, model_sentence

    run = client.get_run(run_id)
    model = client.get_logged_model(model.model_id)
    if not model.metrics:
        _copy_final_metrics(client, run, model.model_id)
    if not model.params and run.data.params:
        client.log_model_params(model.model_id, dict(run.data.params))
    tags = {NOTE_TAG: model_note(run, model, register, version)}
    if register and version:
        listed = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
        if {"name": register, "version": version} not in listed:
            tags[MODEL_VERSIONS_TAG] = json.dumps([*listed, {"name": register,
                                                             "version": version}])
    client.set_logged_model_tags(model.model_id, tags)
    note = run.data.tags.get(NOTE_TAG, "")
    sentence = model_sentence(model.name, model_page(model.experiment_id, model.model_id),
                              register, version_page(register, version) if version else None,
                              version)
    linked = re.sub(r"Model: [^\n]*", lambda _: sentence, note, count=1)
    if linked != note:
        client.set_tag(run_id, NOTE_TAG, linked)


MODEL_VERSIONS_TAG = "mlflow.modelVersions"
"""A logged model's tag listing its registered versions (JSON ``[{"name", "version"}]``): what
``mlflow.register_model`` sets and the model's page reads."""


def _copy_final_metrics(client: Any, run: Any, model_id: str) -> None:
    """The run's final metrics (``test/...``; ``val/...`` without a test split) logged again
    with the model's id: the same points (step, time, value), so the run keeps one of each."""
    from mlflow.entities import Metric

    keys = [k for k in run.data.metrics if k.startswith("test/")] or \
        [k for k in run.data.metrics if k.startswith("val/")]
    points = []
    for key in keys:
        history = client.get_metric_history(run.info.run_id, key)
        if history:
            last = max(history, key=lambda m: (m.step, m.timestamp))
            points.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id,
                                 run_id=run.info.run_id))
    for i in range(0, len(points), 1000):
        client.log_batch(run.info.run_id, metrics=points[i:i + 1000])


def model_note(run: Any, model: Any, register: str | None, version: str | None) -> str:
    """A logged model's description: what it is, with links to the run that logged it and to
    its registered version, its final metrics, where its config came from, how to load it."""
    from extune.tracking.client import run_page, version_page
    from extune.tracking.notes import NOTE_TAG, headline_metrics, source_sentence

    tags = run.data.tags
    link = f"[{run.info.run_name}]({run_page(run.info.experiment_id, run.info.run_id)})"
    what = tags.get("extune.method", "a")
    scores = headline_metrics(run.data.metrics)
    lines = [f"**{model.name}**: the {what} model of the run {link} (`extune train`)"
             + (f": {scores}." if scores else ".")]
    if register and version:
        uri = f"models:/{register}/{version}"
        lines += ["", f"Registered as [{register} version {version}]"
                      f"({version_page(register, version)}) (`{uri}`)."]
    else:
        uri = f"models:/{model.model_id}"
    source = source_sentence(tags.get(NOTE_TAG, ""))
    lines += ["", source] if source else []
    lines += ["", f"Load it with `mlflow.pyfunc.load_model(\"{uri}\")` (images -> class "
                  f"probabilities; the saliency with `params={{\"saliency\": True}}`) or "
                  f"`mlflow.pytorch.load_model(\"{uri}\")` (float images in [0, 1] -> logits)."]
    return "\n".join(lines)


def _logged_model(client: Any, experiment_id: str, run_id: str, name: str) -> Any:
    found = client.search_logged_models(
        experiment_ids=[experiment_id], max_results=10,
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    return found[0] if found else None


def _upload(client: Any, model: Any, run_id: str, checkpoint: Path) -> None:
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="extune-model-") as tmp:
        local = Path(tmp) / "model"
        mlflow_model = Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                             run_id=run_id, model_id=model.model_id)
        save_model(local, checkpoint, mlflow_model)
        client.log_model_artifacts(model.model_id, str(local))


def _register(client: Any, store: str, name: str, model: Any, run_id: str) -> str:
    """Add the logged model to the registry under ``name`` unless a version of this run is
    there already; returns the version.

    Its source is ``models:/<model id>``, which MLflow's page of the version links as its
    "Source Model"; ``model_id`` is passed too, though MLflow's database registry (3.17)
    keeps no such field. MLflow's database registry resolves the source with a client of the
    process's default store, not of ``client``'s (:func:`_only_store` makes them one).
    """
    from mlflow.exceptions import MlflowException

    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return str(found[0].version)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with _only_store(store):
        version = client.create_model_version(
            name, source=f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id,
            description=_version_description(client, run_id, model))
    return str(version.version)


def _version_description(client: Any, run_id: str, model: Any) -> str:
    """A registered version's description: the logged model (a link) and the run that logged
    it (a link) with its final metrics, and where its config came from (the run description's
    "Trained from ..." line, :func:`~extune.tracking.notes.final_note`)."""
    from extune.tracking.client import model_page, run_page
    from extune.tracking.notes import NOTE_TAG, headline_metrics, source_sentence

    run = client.get_run(run_id)
    link = f"[{run.info.run_name}]({run_page(run.info.experiment_id, run_id)})"
    model_link = f"[{model.name}]({model_page(model.experiment_id, model.model_id)})"
    scores = headline_metrics(run.data.metrics)
    lines = [f"The logged model {model_link} of the run {link} (`extune train`)"
             + (f": {scores}." if scores else ".")]
    source = source_sentence(run.data.tags.get(NOTE_TAG, ""))
    return "\n\n".join([*lines, source] if source else lines)


# ------------------------------------------------------------------ the pyfunc
def _load_pyfunc(path: str, model_config: dict | None = None) -> ImageClassifier:
    """MLflow's entry point of the python_function flavour (``path``: the ``extune`` folder)."""
    device = (model_config or {}).get("device") or "cpu"
    return ImageClassifier(Path(path) / CHECKPOINT_NAME, device=device)


class ImageClassifier:
    """The pyfunc of an extune model: images -> class probabilities (+ saliency).

    Args:
        checkpoint: the model's checkpoint (weights, config, classes, normalisation), read
            with ``weights_only=True``.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        from extune.train.checkpoint_eval import model_from_checkpoint
        from extune.train.methods import config_explainer

        ckpt = load_checkpoint(checkpoint)
        network, self.config = model_from_checkpoint(ckpt, checkpoint)
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.classes = [str(c) for c in ckpt["classes"]]
        self.mean, self.std = tuple(ckpt["mean"]), tuple(ckpt["std"])
        self.explainer = config_explainer(self.config)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Class probabilities ``[B, C]`` (float32, in the order of ``self.classes``) of a
        batch of images; with ``params={"saliency": True}`` a dict of ``probabilities`` and
        ``saliency`` ``[B, S, S]`` in ``[0, 1]`` for the predicted class.

        Raises:
            MlflowException: (invalid parameter value) input that is not a batch of images.
        """
        from extune.augment import normalize

        x = normalize(_unit_images(model_input, self.config.data.image_size).to(self.device),
                      self.mean, self.std)
        with torch.no_grad():
            probabilities = self.network(x).float().softmax(1)
        out = probabilities.cpu().numpy()
        if not (params or {}).get("saliency"):
            return out
        saliency = self.explainer(self.network, x, probabilities.argmax(1))
        return {"probabilities": out, "saliency": saliency[:, 0].detach().cpu().numpy()}


def _unit_images(model_input: Any, size: int) -> Tensor:
    """A batch of images as float ``[B, 3, size, size]`` in ``[0, 1]``: integers are 0-255
    (uint8 images; JSON numbers without a point), floats ``[0, 1]``; channels first or last;
    one image without a batch dimension is a batch of one; other sizes are resized."""
    import torch.nn.functional as F

    array = _as_array(model_input)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[-1]):
        raise _bad_input(f"expected a batch of RGB images [B, 3, H, W] or [B, H, W, 3], got "
                         f"shape {list(array.shape)}")
    if array.shape[1] != 3:
        array = array.transpose(0, 3, 1, 2)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise _bad_input("integer images must be in 0-255 (uint8)")
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).div_(255.0)
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1 or
                           not np.isfinite(array).all()):
            raise _bad_input("float images must be in [0, 1] (pass uint8 for 0-255 values)")
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    else:
        raise _bad_input(f"images must be uint8 (0-255) or float ([0, 1]), got {array.dtype}")
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < min(x.shape[-2:]))
    return x


def _as_array(model_input: Any) -> np.ndarray:
    if isinstance(model_input, dict) and len(model_input) == 1:  # a named input: {"images": ...}
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, Tensor):
        return model_input.detach().cpu().numpy()
    if type(model_input).__name__ == "DataFrame":
        raise _bad_input("pass the images as a tensor ({\"inputs\": [...]} when served), not "
                         "as a DataFrame")
    try:
        return np.asarray(model_input)
    except (TypeError, ValueError) as e:
        raise _bad_input(f"cannot read the input as an array of images: {one_line(e, 120)}"
                         ) from None


def _bad_input(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


# ------------------------------------------------------------------ models:/ and runs:/
MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(text: str | Path) -> bool:
    """Whether ``text`` names an MLflow model (``models:/NAME/VERSION``, ``runs:/ID/model``)."""
    return str(text).startswith(MODEL_URI_SCHEMES)


def model_slug(uri: str) -> str:
    """A file-name part for a model URI: ``models:/demo/1`` -> ``demo-1``."""
    rest = uri.split(":/", 1)[1].strip("/")
    return "-".join(p for p in rest.replace("@", "-").split("/") if p) or "model"


@contextlib.contextmanager
def model_checkpoint(uri: str, tracking_uri: str | None) -> Iterator[Path]:
    """The extune checkpoint of an MLflow model (``models:/NAME/VERSION``, ``models:/NAME@alias``,
    ``runs:/RUN_ID/model``), downloaded to a temporary folder removed afterwards.

    The store is ``tracking_uri`` (default ``sqlite:///mlflow.db``), for the runs and the Model
    Registry both: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` are not read
    (:func:`_only_store`).

    Raises:
        ServiceError: the tracking store cannot be reached.
        ConfigError: no such model, or a model extune did not log (one line each).
    """
    import os

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from extune.tracking.store import existing_store, tracking_env_note

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = existing_store(tracking_uri)
    tmp = Path(tempfile.mkdtemp(prefix="extune-model-"))
    try:
        try:
            with _only_store(store):
                local = Path(download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                tracking_uri=store, registry_uri=store))
        except MlflowException as e:
            raise ConfigError(f"cannot load {uri} from {store}: "
                              f"{one_line(getattr(e, 'message', e), 200)}"
                              f"{tracking_env_note(tracking_uri, store)}") from None
        except OSError as e:
            raise ConfigError(f"cannot load {uri} from {store}: {one_line(e, 200)}"
                              f"{tracking_env_note(tracking_uri, store)}") from None
        found = local / DATA_DIR / CHECKPOINT_NAME
        if not found.is_file():
            raise ExtuneError(f"{uri} is not a model of `extune train` (no {DATA_DIR}/"
                              f"{CHECKPOINT_NAME} in it)")
        yield found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _only_store(store: str) -> Iterator[None]:
    """``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` set to ``store`` for the block.

    MLflow resolves a ``models:/`` URI with a client of the process's default store whatever
    store ``download_artifacts`` is given (``ModelsArtifactRepository._get_model_uri_infos``):
    with ``MLFLOW_TRACKING_URI`` naming another SQLite file, it looked there and created an
    empty database. extune reads only ``--tracking-uri``.
    """
    import os

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, store))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
