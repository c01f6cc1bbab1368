"""Data sets: containers, registry, cache, splits, and every built-in loader on generated files."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extune.errors import DataError, RegistryError
from extune.train.config import DataConfig
from extune.train.data import (
    DATASETS,
    DataSplits,
    DecodedData,
    ImageSet,
    channel_stats,
    list_datasets,
    load_data,
    register_dataset,
)
from extune.train.datasets import imagefolder as imagefolder_mod
from extune.train.datasets.synthetic import COLOURS, synthetic_class_pairs

CIFAR10_SUBSET = Path("/work/shared/data/cifar10-subset")


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return DataConfig(**kw)


# ----------------------------------------------------------------------------- a toy data set
@pytest.fixture
def toy():
    """Registers ``toy``: 200 images whose first pixels encode their index; counts loads.

    Whatever a test registers is removed afterwards.
    """
    before = set(DATASETS)
    calls = []

    @register_dataset("toy", key=lambda cfg: {"tag": "toy"})
    def _load(cfg: DataConfig) -> DecodedData:
        calls.append(cfg)
        n, s = 200, cfg.image_size
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=gen)
        idx = torch.arange(n)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = (idx % 256).byte(), (idx // 256).byte()
        labels = torch.cat([torch.zeros(100), torch.ones(60), torch.full((40,), 2)]).long()
        test = ImageSet(images[:10].clone(), labels[:10].clone())
        return DecodedData(ImageSet(images, labels), test, ["a", "b", "c"])

    yield calls
    for name in set(DATASETS) - before:
        DATASETS.remove(name)


def _ids(s: ImageSet) -> set[int]:
    return set((s.images[:, 0, 0, 0].long() + 256 * s.images[:, 0, 0, 1].long()).tolist())


# ----------------------------------------------------------------------------- containers
def test_imageset_checks_len_subset_to():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.arange(4)
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    s = ImageSet(images, labels, masks)
    assert len(s) == 4
    sub = s.subset(torch.tensor([3, 1]))
    assert sub.labels.tolist() == [3, 1] and sub.masks.shape == (2, 1, 8, 8)
    assert s.subset(labels > 1).labels.tolist() == [2, 3]
    assert s.to("cpu").images.device.type == "cpu"
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), labels)
    with pytest.raises(ValueError, match="int64"):
        ImageSet(images, labels.int())
    with pytest.raises(ValueError, match="masks"):
        ImageSet(images, labels, masks[:, :, :4])


def test_datasplits_to_and_num_classes(tmp_path, toy):
    splits = load_data(_cfg(tmp_path, name="toy", image_size=8))
    moved = splits.to("cpu")
    assert isinstance(moved, DataSplits) and moved.num_classes == 3
    assert moved.classes == ["a", "b", "c"] and len(moved.test) == 10
    back = pickle.loads(pickle.dumps(splits))  # Ray's object store pickles it
    assert torch.equal(back.train.images, splits.train.images) and back.mean == splits.mean


def test_loader_with_bad_labels_is_a_bug(tmp_path, toy):
    @register_dataset("bad")
    def _bad(cfg: DataConfig) -> DecodedData:
        images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
        return DecodedData(ImageSet(images, torch.tensor([0, 1, 2, 5])), None, ["a", "b"])

    with pytest.raises(ValueError, match="labels outside"):
        load_data(_cfg(tmp_path, name="bad", image_size=8))


# ----------------------------------------------------------------------------- registry
def test_builtins_registered():
    assert {"synthetic", "cifar10", "cifar100", "tiny-imagenet", "imagefolder"} <= set(
        list_datasets())


def test_unknown_name_lists_registered(tmp_path):
    with pytest.raises(RegistryError, match="registered: .*cifar10.*synthetic") as e:
        load_data(_cfg(tmp_path, name="imagenet-22k"))
    assert "imagenet-22k" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- splits
def test_val_split_is_seeded_stratified_and_disjoint(tmp_path, toy):
    splits = load_data(_cfg(tmp_path, name="toy", image_size=8, val_fraction=0.2, split_seed=3))
    assert len(splits.val) == 40 and len(splits.train) == 160
    assert torch.bincount(splits.val.labels).tolist() == [20, 12, 8]  # stratified
    train_ids, val_ids = _ids(splits.train), _ids(splits.val)
    assert not train_ids & val_ids and train_ids | val_ids == set(range(200))
    again = load_data(_cfg(tmp_path, name="toy", image_size=8, val_fraction=0.2, split_seed=3))
    assert _ids(again.val) == val_ids
    other = load_data(_cfg(tmp_path, name="toy", image_size=8, val_fraction=0.2, split_seed=4))
    assert _ids(other.val) != val_ids


def test_limit_caps_train_after_the_split(tmp_path, toy):
    full = load_data(_cfg(tmp_path, name="toy", image_size=8))
    capped = load_data(_cfg(tmp_path, name="toy", image_size=8, limit=50))
    assert len(capped.train) == 50 and _ids(capped.val) == _ids(full.val)
    assert _ids(capped.train) <= _ids(full.train)
    assert torch.bincount(capped.train.labels).tolist() == [25, 15, 10]  # stratified too


def test_mean_std_are_those_of_the_train_split(tmp_path, toy):
    splits = load_data(_cfg(tmp_path, name="toy", image_size=8, limit=30))
    x = splits.train.images.double() / 255
    assert splits.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert splits.std == pytest.approx(x.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    const = torch.full((2, 3, 4, 4), 7, dtype=torch.uint8)
    assert channel_stats(const)[1] == (1 / 255,) * 3  # floored, never 0


# ----------------------------------------------------------------------------- cache
def test_cache_is_reused_and_keyed_by_image_size(tmp_path, toy):
    a = load_data(_cfg(tmp_path, name="toy", image_size=8))
    b = load_data(_cfg(tmp_path, name="toy", image_size=8))
    assert len(toy) == 1
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    load_data(_cfg(tmp_path, name="toy", image_size=12))
    assert len(toy) == 2
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.startswith("toy-") and f.endswith(".npz") for f in files)


def test_unwritable_cache_warns_and_continues(tmp_path, toy):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cannot write the data cache"):
        splits = load_data(_cfg(tmp_path, name="toy", image_size=8, cache_dir=str(blocker)))
    assert len(splits.train) == 180


def test_corrupt_cache_is_ignored(tmp_path, toy):
    load_data(_cfg(tmp_path, name="toy", image_size=8))
    (path,) = (tmp_path / "cache").iterdir()
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        splits = load_data(_cfg(tmp_path, name="toy", image_size=8))
    assert len(splits.train) == 180 and len(toy) == 2


def test_cache_dir_expands_home_and_empty_disables(tmp_path, toy, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    load_data(_cfg(tmp_path, name="toy", image_size=8, cache_dir="~/c"))
    assert len(list((tmp_path / "c").glob("toy-*.npz"))) == 1
    load_data(_cfg(tmp_path, name="toy", image_size=8, cache_dir=""))
    load_data(_cfg(tmp_path, name="toy", image_size=8, cache_dir=""))
    assert len(toy) == 3


# ----------------------------------------------------------------------------- synthetic
SYN = {"train_size": 300, "test_size": 60, "image_size": 32, "num_classes": 10}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> DataSplits:
    return load_data(_cfg(tmp_path_factory.mktemp("syn"), **SYN))


def test_synthetic_shapes_and_classes(synthetic):
    s = synthetic
    assert s.classes[:3] == ["red_circle", "green_square", "blue_triangle"]
    assert s.classes[8:] == ["green_circle", "blue_square"]
    assert len(s.train) == 270 and len(s.val) == 30 and len(s.test) == 60
    for split in (s.train, s.val, s.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.masks.dtype == torch.bool and split.masks.shape[1:] == (1, 32, 32)
    assert torch.bincount(s.train.labels, minlength=10).min() >= 25  # balanced
    area = s.train.masks.float().mean((1, 2, 3))
    assert area.min() > 0.03 and area.max() < 0.45


def test_synthetic_is_deterministic(tmp_path, synthetic):
    threads = torch.get_num_threads()
    again = load_data(_cfg(tmp_path, **SYN))
    assert torch.get_num_threads() == threads  # rendering runs on one thread, then restores
    assert torch.equal(again.train.images, synthetic.train.images)
    assert torch.equal(again.test.masks, synthetic.test.masks)
    other = load_data(_cfg(tmp_path, **SYN, synthetic_seed=1))
    assert not torch.equal(other.train.images, synthetic.train.images)


def test_synthetic_mask_covers_an_object_of_the_class_colour(synthetic):
    palette = torch.tensor(list(COLOURS.values()))
    colour_of = torch.tensor([c for _, c in synthetic_class_pairs(10)])
    s = synthetic.test
    m = s.masks.float()
    mean = (s.images.float() / 255 * m).sum((2, 3)) / m.sum((2, 3))  # [N, 3]
    nearest = torch.cdist(mean, palette).argmin(1)
    assert (nearest == colour_of[s.labels]).float().mean() >= 0.97


def test_synthetic_class_pairs_are_distinct_and_leave_free_pairs():
    pairs = synthetic_class_pairs(56)
    assert len(set(pairs)) == 56
    assert all((c - s) % 8 != 7 for s, c in pairs)  # offset 7: distractor-only colours
    for s in range(8):  # every shape and every colour also exists as a non-class pair
        assert any((s, c) not in pairs for c in range(8))
        assert any((t, s) not in pairs for t in range(8))


def test_synthetic_many_classes_and_no_distractors(tmp_path):
    s = load_data(_cfg(tmp_path, num_classes=56, train_size=112, test_size=10, image_size=16,
                       distractors=0, val_fraction=0.5))
    assert s.num_classes == 56 and len(set(s.classes)) == 56 and s.train.images.shape[-1] == 16
    assert torch.bincount(s.val.labels, minlength=56).tolist() == [1] * 56


# ----------------------------------------------------------------------------- cifar
def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _batch(n: int, label_key: str, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, n).tolist()}


@pytest.fixture
def accept_fake_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # batches.meta


def test_cifar10_fake_batches(tmp_path, accept_fake_md5):
    folder = tmp_path / "cifar-10-batches-py"
    batches = [_batch(4, "labels", 10, i) for i in range(5)]
    for i, b in enumerate(batches):
        _write_pickle(folder / f"data_batch_{i + 1}", b)
    test = _batch(6, "labels", 10, 9)
    _write_pickle(folder / "test_batch", test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _write_pickle(folder / "batches.meta", {"label_names": names})
    s = load_data(_cfg(tmp_path, name="cifar10", root=str(tmp_path), val_fraction=0.25))
    assert s.classes == names and len(s.train) == 15 and len(s.val) == 5
    assert s.test.images.shape == (6, 3, 32, 32) and s.test.masks is None
    assert s.test.labels.tolist() == test["labels"]
    expected = torch.from_numpy(test["data"]).view(6, 3, 32, 32)  # rows: R plane, G, B
    assert torch.equal(s.test.images, expected)
    small = load_data(_cfg(tmp_path, name="cifar10", root=str(tmp_path), image_size=16))
    assert small.test.images.shape == (6, 3, 16, 16)


def test_cifar100_fake_batches(tmp_path, accept_fake_md5):
    folder = tmp_path / "cifar-100-python"
    train = _batch(12, "fine_labels", 100, 0)
    _write_pickle(folder / "train", train)
    _write_pickle(folder / "test", _batch(5, "fine_labels", 100, 1))
    names = [f"class{i}" for i in range(100)]
    _write_pickle(folder / "meta", {"fine_label_names": names})
    s = load_data(_cfg(tmp_path, name="cifar100", root=str(tmp_path)))
    assert s.num_classes == 100 and len(s.train) + len(s.val) == 12 and len(s.test) == 5
    labels = torch.cat([s.train.labels, s.val.labels]).sort().values
    assert labels.tolist() == sorted(train["fine_labels"])


@pytest.mark.parametrize(("name", "missing"), [("cifar10", "data_batch_1"),
                                               ("cifar100", "train")])
def test_cifar_missing_files_say_what_to_do(tmp_path, name, missing):
    with pytest.raises(DataError, match="data.download=true") as e:
        load_data(_cfg(tmp_path, name=name, root=str(tmp_path / "nowhere")))
    assert missing in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- tiny-imagenet
def _jpeg(path: Path, colour: tuple[int, int, int], size: int = 64, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), colour)
    (img.convert("L") if mode == "L" else img).save(path, quality=95)


def _tiny_tree(root: Path, boxes_for: tuple[str, ...] = ("n01", "n02", "n03")) -> Path:
    top = root / "tiny-imagenet-200"
    top.mkdir(parents=True)
    (top / "wnids.txt").write_text("n02\nn01\nn03\n")
    (top / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tbullfrog\n"
                                   "n99\tnot used\n")
    colours = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200),
               "n99": (9, 9, 9)}
    for wnid, colour in colours.items():  # n99: a folder of a class not in wnids.txt
        lines = []
        for i in range(3):
            name = f"{wnid}_{i}.JPEG"
            _jpeg(top / "train" / wnid / "images" / name, colour,
                  mode="L" if (wnid, i) == ("n03", 0) else "RGB")
            lines.append(f"{name}\t0\t0\t31\t31")
        if wnid in boxes_for:
            (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    notes = []
    for i, wnid in enumerate(["n01", "n02", "n03", "n99", "n01"]):
        _jpeg(top / "val" / "images" / f"val_{i}.JPEG", colours[wnid])
        notes.append(f"val_{i}.JPEG\t{wnid}\t32\t0\t63\t63")
    (top / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    return top


def test_tiny_imagenet_fake_tree(tmp_path):
    top = _tiny_tree(tmp_path / "data")
    s = load_data(_cfg(tmp_path, name="tiny-imagenet", root=str(top), image_size=32,
                       val_fraction=1 / 3))
    assert s.classes == ["goldfish", "bullfrog", "n03"]  # sorted wnids; words.txt names
    assert len(s.train) == 6 and len(s.val) == 3 and len(s.test) == 4  # n99 ignored
    assert s.test.labels.tolist() == [0, 1, 2, 0]
    # Boxes are scaled masks: val boxes cover the right half, train boxes the top-left quarter.
    right = torch.zeros(1, 32, 32, dtype=torch.bool)
    right[:, :, 16:] = True
    assert all(torch.equal(m, right) for m in s.test.masks)
    quarter = torch.zeros(1, 32, 32, dtype=torch.bool)
    quarter[:, :16, :16] = True
    assert all(torch.equal(m, quarter) for m in s.train.masks)
    # Colours survive decoding; the greyscale JPEG became 3 equal channels.
    red = s.test.images[0].float().mean((1, 2))
    assert red[0] > 150 and red[1] < 80
    grey = torch.cat([s.train.images, s.val.images])[torch.cat([s.train.labels,
                                                                s.val.labels]) == 2]
    assert any(torch.equal(g[0], g[1]) and torch.equal(g[1], g[2]) for g in grey)


def test_tiny_imagenet_parent_root_and_missing_boxes(tmp_path):
    _tiny_tree(tmp_path / "data", boxes_for=("n01", "n02"))
    s = load_data(_cfg(tmp_path, name="tiny-imagenet", root=str(tmp_path / "data"),
                       image_size=16))
    assert s.train.masks is None and s.test.masks is not None  # n03 has no boxes file
    assert s.test.images.shape == (4, 3, 16, 16)


def test_tiny_imagenet_missing_root(tmp_path):
    with pytest.raises(DataError, match="wnids.txt.*tiny-imagenet-200"):
        load_data(_cfg(tmp_path, name="tiny-imagenet", root=str(tmp_path)))


# ----------------------------------------------------------------------------- imagefolder
def _folder_tree(root: Path) -> None:
    colours = {"ant": (250, 0, 0), "bee": (0, 250, 0), "cow": (0, 0, 250)}
    for cls, colour in colours.items():  # several sizes, modes and extensions
        d = root / "train" / cls
        d.mkdir(parents=True)
        Image.new("RGB", (40, 24), colour).save(d / "0.jpg")
        Image.new("RGB", (32, 32), colour).convert("RGBA").save(d / "1.png")
        Image.new("RGB", (32, 32), colour).convert("P").save(d / "2.PNG")
        Image.new("RGB", (32, 32), colour).save(d / "3.jpeg")
    (root / "train" / "cow" / "notes.txt").write_text("not an image")
    for cls in ("bee", "zebra"):  # test: a subset of the classes + an unknown one
        (root / "test" / cls).mkdir(parents=True)
        Image.new("L", (32, 32), 128).save(root / "test" / cls / "0.png")


def test_imagefolder_generated_tree(tmp_path):
    _folder_tree(tmp_path / "tree")
    with pytest.warns(UserWarning, match="zebra"):
        s = load_data(_cfg(tmp_path, name="imagefolder", root=str(tmp_path / "tree"),
                           image_size=16, val_fraction=0.25))
    assert s.classes == ["ant", "bee", "cow"]
    assert len(s.train) == 9 and len(s.val) == 3
    assert s.test.labels.tolist() == [1] and s.test.images.shape == (1, 3, 16, 16)
    assert (s.test.images == 128).all()
    train = s.train
    for label, channel in ((0, 0), (1, 1), (2, 2)):
        mean = train.images[train.labels == label].float().mean((0, 2, 3))
        assert mean[channel] > 200 and mean.sum() - mean[channel] < 60


def test_imagefolder_missing_train(tmp_path):
    with pytest.raises(DataError, match="train/<class>/<image>"):
        load_data(_cfg(tmp_path, name="imagefolder", root=str(tmp_path)))


@pytest.mark.skipif(not CIFAR10_SUBSET.is_dir(), reason="shared cifar10-subset not present")
def test_imagefolder_real_cifar10_subset_and_cache(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, name="imagefolder", root=str(CIFAR10_SUBSET))
    first = load_data(cfg)
    assert first.num_classes == 10 and first.classes[0] == "airplane"
    assert len(first.train) == 4500 and len(first.val) == 500 and len(first.test) == 1000
    assert first.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(first.test.labels).tolist() == [100] * 10
    assert 0.3 < first.mean[0] < 0.7 and 0.15 < first.std[0] < 0.35

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder_mod, "decode_file_set", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_data(cfg)
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)


def test_image_sets_pickle_as_numpy_and_share_memory_when_unpickled():
    """Ray's object store hands numpy buffers out without a copy (pickle protocol 5)."""
    from extune.train.data import ImageSet

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(ImageSet(images, torch.arange(4), masks), protocol=5,
                        buffer_callback=buffers.append)
    assert len(data) < images.numel()  # the pixels went out of band
    back = pickle.loads(data, buffers=buffers)
    assert torch.equal(back.images, images) and torch.equal(back.masks, masks)
    pixels = np.frombuffer(buffers[0], dtype=np.uint8)
    assert back.images.data_ptr() == pixels.__array_interface__["data"][0]  # no copy
