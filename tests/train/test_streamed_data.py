"""Training images read per batch from their files (``data.in_memory``): the same splits, pixels
and metrics as decoded into memory; the choice made from the decoded size before decoding; one
line where neither can work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from extune.errors import ConfigError, DataError
from extune.train import data as data_module
from extune.train import fit
from extune.train.config import Config
from extune.train.data import load_data
from extune.train.datasets.streamed import StreamedSet, decoded_bytes
from extune.train.validate import validate_config

SIZE = 16
CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An imagefolder tree: 3 classes x 20 training and 4 test PNGs of 20x24 px."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 4)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
                pixels[:, :, k] = 200  # a class colour: something to learn
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def config(tree, tmp_path, **data):
    return Config().with_overrides({
        "method": "ce", "data.name": "imagefolder", "data.root": str(tree),
        "data.image_size": SIZE, "data.cache_dir": str(tmp_path / "cache"),
        "model.backbone": "tiny_cnn", "optim.epochs": 2, "optim.batch_size": 8,
        "eval.explain_samples": 8, "eval.corruptions": ["contrast"], "eval.grid_images": 2,
        "runtime.progress": False, "runtime.threads": 1,
        **{f"data.{k}": v for k, v in data.items()}})


def test_read_per_batch_it_trains_on_the_same_pixels_with_the_same_metrics(tree, tmp_path):
    decoded = load_data(config(tree, tmp_path, in_memory=True).data)
    streamed = load_data(config(tree, tmp_path, in_memory=False).data)
    assert isinstance(streamed.train, StreamedSet) and not isinstance(decoded.train, StreamedSet)
    assert torch.equal(streamed.train.labels, decoded.train.labels)  # the same split and seed
    assert torch.equal(streamed.val.images, decoded.val.images)
    assert torch.equal(streamed.test.images, decoded.test.images)
    assert streamed.mean == pytest.approx(decoded.mean, abs=1e-6)
    assert streamed.std == pytest.approx(decoded.std, abs=1e-6)
    again = load_data(config(tree, tmp_path, in_memory=False).data)  # the stats, cached
    assert again.mean == streamed.mean and again.std == streamed.std

    results = {mode: fit(config(tree, tmp_path / str(mode), in_memory=mode)).metrics
               for mode in (True, False)}
    timing = ("train/seconds", "train/images_per_s")
    same = {k: v for k, v in results[True].items() if k not in timing}
    assert {k: v for k, v in results[False].items() if k not in timing} == same
    assert same["val/accuracy"] > 0


def test_auto_reads_per_batch_what_does_not_fit_the_budget_and_says_so(tree, tmp_path):
    files = 3 * (20 + 4)
    budget = decoded_bytes(files, SIZE) - 1  # one byte short of every image decoded
    cfg = config(tree, tmp_path, memory_gb=budget / 2**30)
    with pytest.warns(UserWarning, match=r"more than the .* GiB of data.memory_gb: the training "
                      r"images are read per batch"):
        splits = load_data(cfg.data)
    assert isinstance(splits.train, StreamedSet)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the budget: decoded, nothing said
        roomy = load_data(config(tree, tmp_path, memory_gb=1.0).data)
    assert not isinstance(roomy.train, StreamedSet)


def test_where_neither_way_can_work_one_line_says_what_to_set(tree, tmp_path, monkeypatch):
    tiny = config(tree, tmp_path, memory_gb=1e-9, in_memory=False)
    with pytest.raises(DataError, match="even read per batch, its .* validation and test images "
                       ".* lower data.val_fraction or data.image_size, or raise data.memory_gb"):
        load_data(tiny.data)
    monkeypatch.setattr(data_module, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r"data.in_memory=true: imagefolder's 72 images take .* "
                       "set data.in_memory=auto"):
        load_data(config(tree, tmp_path, in_memory=True).data)
    synthetic = Config().with_overrides({"data.in_memory": False, "data.train_size": 20})
    with pytest.raises(DataError, match="which synthetic does not have .* set "
                       "data.in_memory=auto"):
        load_data(synthetic.data)
    with pytest.raises(ConfigError, match="which synthetic does not have"):
        validate_config(synthetic)  # before any run starts


def test_a_file_that_breaks_while_training_is_named(tree, tmp_path):
    import shutil

    broken = tmp_path / "tree"
    shutil.copytree(tree, broken)
    cfg = config(broken, tmp_path, in_memory=False)
    splits = load_data(cfg.data)
    bad = splits.train.paths[3]
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DataError, match=f"cannot decode image {bad} .* set data.in_memory=true"):
        fit(cfg, data=splits)
