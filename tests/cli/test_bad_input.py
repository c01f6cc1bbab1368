"""Bad input, one row each: what a new user might type or have on disk, and what must happen.

Every row is ``(setup, command, exit code, words of the message, paths that must not exist)``.
A row passes when the command exits with that code, prints those words (in a one-line
``error:`` for a non-zero code; a warning counts as printed), shows no traceback and leaves
none of those paths behind.
``{tmp}`` in a command is the row's temporary folder (also the working folder) and ``{ro}`` a
folder nothing can be written to. Most rows fail before Ray or MLflow start; the few that need
them are marked ``slow``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image

from extune.cli import main
from extune.train.checkpoint import save_checkpoint
from extune.train.config import Config, DataConfig
from extune.train.data import load_data
from extune.train.methods import config_model

FAST = {"optim.epochs": 1, "eval.corruptions": "contrast", "eval.explain_samples": 4,
        "eval.grid_images": 0, "optim.batch_size": 4}


# --------------------------------------------------------------------------- setups
def _images(folder: Path, colour: tuple[int, int, int], n: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")


def two_classes(tmp: Path) -> None:
    _images(tmp / "data" / "train" / "ant", (250, 0, 0))
    _images(tmp / "data" / "train" / "bee", (0, 250, 0))


def one_class(tmp: Path) -> None:
    _images(tmp / "data" / "train" / "ant", (250, 0, 0))


def empty_class(tmp: Path) -> None:
    two_classes(tmp)
    (tmp / "data" / "train" / "cow").mkdir()


def bad_files(tmp: Path) -> None:
    """A zero-byte file, a truncated JPEG and a text file named like an image."""
    two_classes(tmp)
    ant = tmp / "data" / "train" / "ant"
    (ant / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(jpeg, "JPEG")
    (ant / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp / "data" / "train" / "bee" / "notes.jpg").write_text("not an image")


def cached_then_edited(tmp: Path) -> None:
    """Decode (and cache) the tree, then replace one image in place by a broken file."""
    two_classes(tmp)
    load_data(DataConfig(name="imagefolder", root=str(tmp / "data"), image_size=16,
                         cache_dir=str(tmp / "cache"), strict=True))
    (tmp / "data" / "train" / "ant" / "0.png").write_bytes(b"edited: no longer an image")


def space_file(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "space.yaml").write_text(text)
    return setup


def config_file(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "cfg.yaml").write_text(text)
    return setup


def plan_file(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "plan.yaml").write_text(text)
    return setup


def foreign_torch_file(tmp: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp / "other.pt")


def pickled_objects(tmp: Path) -> None:
    torch.save({"epoch": 0, "model": {}, "config": Fraction(1, 3)}, tmp / "objects.pt")


def checkpoint(tmp: Path, truncate: bool = False) -> None:
    """An extune checkpoint of a tiny 4-class network (no training needed)."""
    cfg = Config().with_overrides({"model.backbone": "tiny_cnn", "data.num_classes": 4,
                                   "data.image_size": 16})
    path = save_checkpoint({"epoch": 0, "model": config_model(cfg, 4).state_dict(),
                            "config": cfg.to_dict()}, tmp / "run" / "checkpoint.pt")
    if truncate:
        path.write_bytes(path.read_bytes()[:500])


def failed_search(tmp: Path) -> None:
    """A search folder whose start failed after it was created (e.g. the MLflow store)."""
    folder = tmp / "runs" / "s"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({
        "name": "s", "status": "failed", "error": "cannot use the MLflow tracking store"}))


def pruned_run(tmp: Path) -> None:
    """An MLflow store with one trial run that ASHA pruned."""
    from extune.tracking.client import mlflow_client, param_value

    client = mlflow_client(f"sqlite:///{tmp}/mlflow.db")
    run = client.create_run(client.create_experiment("e"), run_name="trial-001",
                            tags={"extune.state": "pruned"})
    for key, value in Config().flatten().items():
        client.log_param(run.info.run_id, key, param_value(value))
    client.set_terminated(run.info.run_id, "FINISHED")
    (tmp / "run_id").write_text(run.info.run_id)


def search_run(tmp: Path) -> None:
    """An MLflow store with one search's parent run, ``demo``."""
    from extune.tracking.client import mlflow_client

    client = mlflow_client(f"sqlite:///{tmp}/mlflow.db")
    client.create_run(client.create_experiment("e"), run_name="demo",
                      tags={"extune.role": "search", "extune.search_id": "abc"})


def bomb_image(tmp: Path) -> None:
    """A checkpoint, and a PNG whose header claims 20000 x 10000 pixels (twice PIL's limit):
    PIL refuses it before decoding a pixel."""
    import struct
    import zlib

    checkpoint(tmp)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    (tmp / "images").mkdir()
    (tmp / "images" / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def non_utf8(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(b"optim:\n  lr: 0.1 # caf\xe9 (latin-1)\n")
    return setup


def all_fail(tmp: Path) -> None:
    """A space whose only trial diverges (a learning rate of a million)."""
    space_file("method: ce\noptim.lr: 1e6\n")(tmp)


def fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "pipe")


def symlink(target: str) -> Callable[[Path], None]:
    """``{tmp}/link`` pointing at ``target`` (``{tmp}`` filled in; ``link`` itself: a loop)."""
    def setup(tmp: Path) -> None:
        (tmp / "link").symlink_to(target.format(tmp=tmp))
    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for each in setups:
            each(tmp)
    return setup


def tune_experiment(tmp: Path) -> None:
    """A failed search whose ``trials/`` holds Ray Tune's saved state."""
    failed_search(tmp)
    (tmp / "runs" / "s" / "trials").mkdir()
    (tmp / "runs" / "s" / "trials" / "tuner.pkl").write_bytes(b"")


def started_run(tmp: Path) -> None:
    """An output folder with the config of a training that never saved a checkpoint."""
    (tmp / "run").mkdir()
    Config().save(tmp / "run" / "config.yaml")


_HELD: list[int] = []
"""Lock files held by :func:`in_use` (released after the row)."""


def in_use(folder: str, kind: str | None = None) -> Callable[[Path], None]:
    """``{tmp}/folder`` (a new ``search`` or ``study`` folder, or an empty one) locked as
    another writer would lock it: ``flock`` on a file descriptor of its own."""
    def setup(tmp: Path) -> None:
        import fcntl

        from extune.locks import LOCK_NAME

        path = tmp / folder
        if kind == "search":
            from extune.search.folder import SearchDir
            from extune.search.settings import SearchSettings
            from extune.spaces import get_space

            SearchDir.create(SearchSettings(out=str(path.parent), name=path.name), Config(),
                             get_space("ce")).set_status("interrupted")
        elif kind == "study":
            from extune.study.folder import StudyDir
            from extune.study.settings import StudySettings

            StudyDir.create(StudySettings(out=str(path.parent), name=path.name))
        path.mkdir(parents=True, exist_ok=True)
        from extune.locks import unlock_folder

        unlock_folder(path)  # SearchDir.create holds it for this process
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242 elsewhere\n")
        _HELD.append(fd)
    return setup


def _release_held() -> None:
    while _HELD:
        os.close(_HELD.pop())
    while _CLEANUPS:
        _CLEANUPS.pop()()


# issue 28: numbers bounded, damaged files named (setups)
_CLEANUPS: list[Callable[[], None]] = []
"""What a row's setup holds until the row ends (a mounted disk, a lock on a store)."""

LONG = "/".join(["d" * 200] * 21)
"""A relative path longer than PATH_MAX (4096 bytes on Linux), each name a legal length."""


def nested(name: str, key: str) -> Callable[[Path], None]:
    """A YAML file whose ``key`` holds lists nested 5000 deep (PyYAML's reader recursed)."""
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(f"{key}: " + "[" * 5000 + "]" * 5000 + "\n")
    return setup


def empty_model(tmp: Path) -> None:
    """A checkpoint with every entry, whose model holds no weights."""
    save_checkpoint({"epoch": 0, "model": {}, "config": Config().to_dict()},
                    tmp / "run" / "checkpoint.pt")


def random_bytes(tmp: Path) -> None:
    import random

    (tmp / "run").mkdir()
    (tmp / "run" / "checkpoint.pt").write_bytes(random.Random(28).randbytes(4096))


def full_disk(tmp: Path) -> None:
    """``{tmp}/full``: a tmpfs of 1 MiB, full to the last byte (unmounted after the row)."""
    import subprocess

    disk = tmp / "full"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    _CLEANUPS.append(lambda: subprocess.run(["umount", "-l", str(disk)], capture_output=True))
    with (disk / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def finished_search(tmp: Path) -> None:
    """``{tmp}/runs/s``: a finished search with one complete trial in its Optuna study."""
    import optuna

    from extune.locks import unlock_folder
    from extune.search.folder import SearchDir
    from extune.search.settings import SearchSettings
    from extune.spaces import get_space

    sdir = SearchDir.create(SearchSettings(out=str(tmp / "runs"), name="s", space="ce"),
                            Config(), get_space("ce"))
    unlock_folder(sdir.path)
    sdir.set_status("finished")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=sdir.meta["optuna_storage"],
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": 0.1}, value=0.5,
        distributions={"optim.lr": optuna.distributions.FloatDistribution(0.01, 1.0)}))


def search_with_storage(storage: str) -> Callable[[Path], None]:
    """``{tmp}/runs/s``: an interrupted search whose trials went to ``storage`` (as one an
    older extune left when ``--storage`` failed after the folder was made)."""
    def setup(tmp: Path) -> None:
        from extune.locks import unlock_folder
        from extune.search.folder import SearchDir
        from extune.search.settings import SearchSettings
        from extune.spaces import get_space

        settings = SearchSettings(out=str(tmp / "runs"), name="s", space="ce", storage=storage)
        sdir = SearchDir.create(settings, Config(), get_space("ce"))
        unlock_folder(sdir.path)
        sdir.set_status("interrupted")
    return setup


def search_json(text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "runs" / "s").mkdir(parents=True)
        (tmp / "runs" / "s" / "search.json").write_text(text)
    return setup


LOCK_WAIT = {"EXTUNE_STORE_LOCK_WAIT_S": "0.5"}
"""A locked store is said after half a second (5 s by default): the wait proves nothing more."""


def damaged_store(how: str) -> Callable[[Path], None]:
    """``{tmp}/mlflow.db``: random bytes, cut to half, or held by another writer's lock."""
    def setup(tmp: Path) -> None:
        import random
        import sqlite3

        db = tmp / "mlflow.db"
        if how == "random":
            db.write_bytes(random.Random(28).randbytes(8192))
            return
        search_run(tmp)
        if how == "cut":
            db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
            return
        held = sqlite3.connect(db, check_same_thread=False)
        held.execute("BEGIN EXCLUSIVE")
        _CLEANUPS.append(held.close)
    return setup


def cut_journal(tmp: Path) -> None:
    """A tracked training's output folder whose MLflow journal holds 10 writes and an 11th
    cut short (its process was killed while writing it)."""
    from extune.tracking.journal import Journal, Op

    folder = tmp / "run" / "tracking"
    journal = Journal(folder)
    journal.append(Op("start", name="demo", params={"method": "ce"}))
    for epoch in range(1, 10):
        journal.append(Op("metrics", metrics={"train/loss": 1.0 / epoch}, step=epoch))
    journal.append(Op("end", status="FINISHED"))
    text = (folder / "journal.jsonl").read_text()
    (folder / "journal.jsonl").write_text(text[: len(text) - 12])
    (folder / "run.json").write_text(json.dumps({
        "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "e", "train_id": "t28",
        "name": "demo"}))


def one_image_per_class(tmp: Path) -> None:
    _images(tmp / "data" / "train" / "ant", (250, 0, 0), n=1)
    _images(tmp / "data" / "train" / "bee", (0, 250, 0), n=1)


# --------------------------------------------------------------------------- the table
@dataclass
class Row:
    """One bad input and what must happen."""

    id: str
    command: list[str]
    code: int
    words: list[str]
    absent: list[str] = field(default_factory=list)
    setup: Callable[[Path], None] | None = None
    tiny: bool = False  # prepend the tiny config's --set options (train / search)
    marks: tuple = ()
    executable: bool = False  # run the installed `extune` executable, not main() in-process
    track: bool = False  # train with MLflow tracking (other train rows add --no-track)
    env: dict[str, str] = field(default_factory=dict)  # environment variables ({tmp} filled)


TRAIN_IF = ["train", "--set", "data.name=imagefolder", "--set", "data.root={tmp}/data",
            "--out", "{tmp}/run", "--no-test"]
SEARCH = ["search", "--trials", "1", "--set", "data.train_size=40", "--set",
          "data.cache_dir={tmp}/cache", "--no-live"]

ROWS = [
    # issue 14: floats
    Row("float-set", ["config", "--set", "optim.lr=1e-3", "--set", "optim.weight_decay=5E-4"],
        0, ["lr: 0.001", "weight_decay: 0.0005"]),
    Row("float-config-file", ["config", "--config", "{tmp}/cfg.yaml"], 0,
        ["lr: 0.0005", "probe_lr: 1000000.0"],
        setup=config_file("optim:\n  lr: 5e-4\n  probe_lr: 1e6\n")),
    Row("float-space-file", ["search", "--space", "{tmp}/space.yaml"], 2,
        ["optim.momentum: 1000000.0 is out of range"], absent=["runs", "mlflow.db"],
        setup=space_file("optim.lr: {type: choice, values: [1e-3, 5e-4]}\n"
                         "optim.weight_decay: 1e-4\n"
                         "optim.probe_lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
                         "optim.momentum: 1e6\n")),
    # issue 14 + 12: bad data
    Row("single-class", TRAIN_IF, 2, ["one class folder (ant)", "at least 2 classes"],
        absent=["run"], setup=one_class, tiny=True),
    Row("empty-class-folder", TRAIN_IF, 2, ["class folder(s) cow", "hold no image file"],
        absent=["run"], setup=empty_class, tiny=True),
    Row("undecodable-files-skipped", [*TRAIN_IF, *sum((["--set", f"{k}={v}"]
                                                      for k, v in FAST.items()), [])],
        0, ["skipped 3 file(s) that cannot be decoded", "empty.png", "cut.jpg", "notes.jpg",
            "data.strict=true"], setup=bad_files, tiny=True),
    Row("undecodable-files-strict", [*TRAIN_IF, "--set", "data.strict=true"], 2,
        ["cannot decode image", "remove or replace the file"], absent=["run"],
        setup=bad_files, tiny=True),
    Row("image-edited-in-place", [*TRAIN_IF, "--set", "data.strict=true"], 2,
        ["cannot decode image", "0.png"], absent=["run"], setup=cached_then_edited, tiny=True),
    Row("search-single-class", [*SEARCH, "--set", "data.name=imagefolder", "--set",
                                "data.root={tmp}/data"], 2, ["one class folder"],
        absent=["runs", "mlflow.db"], setup=one_class),
    # issue 14: tracebacks
    Row("train-read-only-out", ["train", "--out", "{ro}/run"], 2,
        ["cannot write the output folder (--out)", "not writable"], tiny=True),
    Row("search-read-only-out", [*SEARCH, "--out", "{ro}/runs"], 2,
        ["cannot write search folders in --out", "not writable"], absent=["mlflow.db"]),
    Row("evaluate-foreign-torch-file", ["evaluate", "--checkpoint", "{tmp}/other.pt"], 2,
        ["is not an extune checkpoint (no epoch, model, config entries)"],
        setup=foreign_torch_file),
    Row("evaluate-python-objects", ["evaluate", "--checkpoint", "{tmp}/objects.pt"], 2,
        ["is not an extune checkpoint: it holds Python objects"], setup=pickled_objects),
    Row("evaluate-truncated-checkpoint", ["evaluate", "--checkpoint", "{tmp}/run"], 2,
        ["cannot read checkpoint", "truncated or not a torch file"],
        setup=lambda tmp: checkpoint(tmp, truncate=True)),
    Row("evaluate-other-class-count", ["evaluate", "--checkpoint", "{tmp}/run", "--set",
                                       "data.num_classes=3", "--set", "data.train_size=30",
                                       "--set", "data.cache_dir={tmp}/cache"], 2,
        ["was trained on 4 classes", "has 3"], absent=["run/evaluation-val.json"],
        setup=checkpoint),
    Row("evaluate-read-only-out", ["evaluate", "--checkpoint", "{tmp}/run", "--out",
                                   "{ro}/e.json"], 2, ["not writable"], setup=checkpoint),
    Row("markup-in-path", ["train", "--config", "{tmp}/a[/b]/c.yaml"], 2,
        ["cannot read config file", "a[/b]/c.yaml"]),
    Row("brackets-in-value", ["train", "--set", "data.name=imagefolder", "--set",
                              "data.root={tmp}/no[x]"], 2, ["no[x]/train"]),
    Row("read-only-tracking-store", [*SEARCH, "--tracking-uri", "sqlite:///{ro}/mlflow.db"],
        2, ["cannot write the MLflow store", "not writable", "--tracking-uri"],
        absent=["runs"]),
    # issue 12: nothing half-written on a failed start
    Row("train-unknown-layer", ["train", "--set", "explain.layer=nolayer", "--out",
                                "{tmp}/run"], 2, ["explain.layer: unknown layer 'nolayer'"],
        absent=["run"], tiny=True),
    Row("search-unknown-layer", [*SEARCH, "--set", "explain.layer=nolayer"], 2,
        ["explain.layer: unknown layer 'nolayer'"], absent=["runs", "mlflow.db"]),
    Row("export-failed-search", ["export", "{tmp}/runs/s", "-o", "{tmp}/best.yaml"], 2,
        ["failed before any trial ran", "nothing to export"], absent=["best.yaml"],
        setup=failed_search),
    Row("search-more-gpus-than-cluster", [*SEARCH, "--gpus-per-trial", "256"], 2,
        ["--gpus-per-trial 256 but the Ray cluster has"], absent=["runs"],
        marks=(pytest.mark.slow,)),
    Row("search-all-trials-failed", [*SEARCH, "--space", "{tmp}/space.yaml", "--set",
                                     "optim.epochs=1", "--set", "optim.batch_size=4",
                                     "--max-failures", "0"], 1,
        ["all 1 trial failed", "non-finite", "summary.md"], setup=all_fail,
        marks=(pytest.mark.slow,)),
    # issue 21: usage errors through the installed executable (typer >= 0.29 raises its own
    # copy of click's exceptions)
    Row("usage-unknown-option", ["train", "--registr", "x"], 2,
        ["No such option: --registr", "see 'extune train --help'"], executable=True),
    Row("usage-unknown-command", ["serch"], 2,
        ["No such command 'serch'", "Did you mean 'search'?"], executable=True),
    Row("usage-bad-integer", ["search", "--trials", "abc"], 2,
        ["Invalid value for '--trials'", "see 'extune search --help'"], absent=["runs"],
        executable=True),
    # issue 21: tracebacks turned into one-line errors, nothing left behind
    Row("config-not-utf8", ["config", "--config", "{tmp}/cfg.yaml"], 2,
        ["cfg.yaml is not UTF-8 text (byte 0xe9", "save it as UTF-8"],
        setup=non_utf8("cfg.yaml")),
    Row("space-not-utf8", [*SEARCH, "--space", "{tmp}/space.yaml"], 2,
        ["space.yaml is not UTF-8 text", "save it as UTF-8"], absent=["runs", "mlflow.db"],
        setup=non_utf8("space.yaml")),
    Row("config-repeated-key", ["train", "--config", "{tmp}/cfg.yaml", "--out", "{tmp}/run"],
        2, ["YAML key 'lr' is repeated (lines 2 and 4)", "keep one"], absent=["run"],
        setup=config_file("optim:\n  lr: 0.1\n  momentum: 0.8\n  lr: 0.2\n")),
    Row("space-repeated-key", [*SEARCH, "--space", "{tmp}/space.yaml"], 2,
        ["YAML key 'optim.lr' is repeated (lines 1 and 2)"], absent=["runs", "mlflow.db"],
        setup=space_file("optim.lr: 0.1\noptim.lr: {type: float, low: 0.01, high: 0.1}\n")),
    Row("seed-beyond-64-bits", ["train", "--set", "runtime.seed=99999999999999999999999",
                                "--out", "{tmp}/run"], 2,
        ["runtime.seed: 99999999999999999999999 is out of range", "<= 9223372036854775807"],
        absent=["run"]),
    Row("name-of-300-characters", [*SEARCH, "--name", "x" * 300], 2,
        ["--name has 300 characters; use at most 100"], absent=["runs", "mlflow.db"]),
    Row("tracking-uri-ftp", [*SEARCH, "--tracking-uri", "ftp://host/store"], 2,
        ["--tracking-uri ftp://host/store", "cannot keep runs in a 'ftp' store"],
        absent=["runs", "mlflow.db"]),
    Row("export-out-is-a-folder", ["export", "{tmp}/runs/s", "-o", "{tmp}"], 2,
        ["is a folder; give the file to write", "best.yaml"], setup=failed_search),
    Row("explain-image-over-pixel-limit", ["explain", "--checkpoint", "{tmp}/run", "--images",
                                           "{tmp}/images", "-o", "{tmp}/grid.png"], 2,
        ["cannot decode image", "huge.png", "exceeds limit"], absent=["grid.png"],
        setup=bomb_image),
    Row("explain-out-unknown-suffix", ["explain", "--checkpoint", "{tmp}/run", "-o",
                                       "{tmp}/x.jpgx"], 2,
        ["x.jpgx: extune writes .png, .jpg", "x.png"], absent=["x.jpgx", "x.jpgx.png"],
        setup=checkpoint),
    Row("explain-out-is-a-folder", ["explain", "--checkpoint", "{tmp}/run", "-o", "{tmp}/run"],
        2, ["is a folder; give the file to write", "grid.png"], absent=["run.png"],
        setup=checkpoint),
    Row("explain-audit-unknown-checkpoint", ["explain", "--checkpoint", "{tmp}/nope",
                                             "--audit"], 2, ["checkpoint not found", "nope"],
        absent=["audit.png"]),
    Row("explain-audit-unknown-layer", ["explain", "--checkpoint", "{tmp}/run", "--audit",
                                        "--set", "explain.layer=nolayer"], 2,
        ["explain.layer: unknown layer 'nolayer'"], absent=["audit.png"], setup=checkpoint),
    Row("explain-audit-no-images", ["explain", "--checkpoint", "{tmp}/run", "--audit",
                                    "--set", "eval.explain_samples=0"], 2,
        ["the audit needs images: eval.explain_samples is 0"], absent=["audit.png"],
        setup=checkpoint),
    Row("explain-audit-out-unknown-suffix", ["explain", "--checkpoint", "{tmp}/run", "--audit",
                                             "-o", "{tmp}/a.pngx"], 2,
        ["a.pngx: extune writes .png, .jpg", "a.png"], absent=["a.pngx"], setup=checkpoint),
    Row("ui-port-negative", ["ui", "--port", "-1"], 2, ["--port -1 is not a TCP port"]),
    Row("ui-port-too-large", ["ui", "--port", "70000"], 2, ["--port 70000 is not a TCP port"]),
    Row("ui-host-not-an-address", ["ui", "--host", "999.1.1.1"], 2,
        ["--host 999.1.1.1 is not an address of this machine"]),
    Row("ui-unknown-search", ["ui", "--search", "nope", "--tracking-uri",
                              "sqlite:///{tmp}/mlflow.db"], 2,
        ["--search nope: no search or study of that name", "it has demo"],
        setup=search_run),
    Row("train-resume-other-backbone", ["train", "--resume", "{tmp}/run", "--set",
                                        "model.backbone=resnet_mini", "--out", "{tmp}/more"], 2,
        ["holds another model (model.backbone=tiny_cnn", "resume with the config"],
        absent=["more"], setup=checkpoint),
    Row("train-out-holds-a-run", ["train", "--out", "{tmp}/run"], 2,
        ["--out", "already holds a run (checkpoint.pt)", "--resume"], setup=checkpoint),
    # issue 24: tracked training, models in the registry
    Row("train-tracking-server-down", ["train", "--tracking-uri", "http://127.0.0.1:9",
                                       "--out", "{tmp}/run"], 2,
        ["cannot reach the MLflow tracking server at http://127.0.0.1:9"], absent=["run"],
        tiny=True, track=True),
    Row("train-register-untracked", ["train", "--register", "demo", "--out", "{tmp}/run"], 2,
        ["--register needs MLflow tracking; drop --no-track"], absent=["run"]),
    Row("train-register-bad-name", ["train", "--register", "a/b", "--out", "{tmp}/run"], 2,
        ["--register 'a/b'", "letters, digits"], absent=["run", "mlflow.db"], track=True),
    Row("evaluate-missing-model-version", ["evaluate", "--checkpoint", "models:/demo/9",
                                           "--tracking-uri", "sqlite:///{tmp}/mlflow.db"], 2,
        ["cannot load models:/demo/9 from sqlite:///", "demo"], setup=search_run),
    Row("evaluate-model-without-store", ["evaluate", "--checkpoint", "models:/demo/1",
                                         "--tracking-uri", "sqlite:///{tmp}/none.db"], 2,
        ["no MLflow store at", "none.db"], absent=["none.db"]),
    Row("evaluate-store-for-a-file", ["evaluate", "--checkpoint", "{tmp}/run",
                                      "--tracking-uri", "sqlite:///{tmp}/mlflow.db"], 2,
        ["--tracking-uri applies to a models:/ or runs:/ --checkpoint"], setup=checkpoint),
    # issue 27: study plans (checked before any folder, run or trial exists)
    Row("study-plan-missing", ["study", "--plan", "{tmp}/none.yaml", "--out", "{tmp}/runs"], 2,
        ["cannot read the plan file (--plan)", "none.yaml"], absent=["runs", "mlflow.db"]),
    Row("study-plan-unknown-metric", ["study", "--plan", "{tmp}/plan.yaml", "--out",
                                      "{tmp}/runs"], 2,
        ["plan file", "claim 1: unknown metric 'acuracy' in primary", "use accuracy"],
        absent=["runs", "mlflow.db"], setup=plan_file(
            "claims: [{a: excon, b: supcon, primary: [acuracy]}]")),
    Row("study-plan-not-yaml", ["study", "--plan", "{tmp}/plan.yaml"], 2,
        ["plan file", "is not valid YAML"], absent=["runs"], setup=plan_file("claims: [a: b")),
    Row("study-plan-method-not-compared", ["study", "--plan", "{tmp}/plan.yaml", "--methods",
                                           "ce,edda", "--out", "{tmp}/runs"], 2,
        ["the plan's claim excon vs supcon names a method not in --methods (ce,edda)"],
        absent=["runs"], setup=plan_file(
            "claims: [{a: excon, b: supcon, primary: [avg_drop]}]")),
    Row("study-protocol-layer-unknown", ["study", "--quick", "--methods", "ce", "--protocols",
                                         "gradcam,gradcam:nolayer", "--out", "{tmp}/runs"],
        2, ["--protocols gradcam:nolayer", "unknown layer 'nolayer'"],
        absent=["runs", "mlflow.db"]),
    Row("study-min-driven-share-above-one", ["study", "--min-driven-share", "1.5"], 2,
        ["--min-driven-share must be in [0, 1], got 1.5"], absent=["runs"]),
    Row("study-budget-seconds-zero", ["study", "--budget-seconds", "0"], 2,
        ["--budget-seconds must be > 0"], absent=["runs"]),
    # issue 28: outputs that are not regular files of the command's own, one writer
    Row("export-out-device", ["export", "{tmp}/runs/s", "-o", "/dev/null"], 2,
        ["/dev/null is a character device", "extune replaces only regular files"],
        setup=failed_search),
    Row("export-out-fifo", ["export", "{tmp}/runs/s", "-o", "{tmp}/pipe"], 2,
        ["pipe is a FIFO (named pipe)", "extune replaces only regular files"],
        setup=both(failed_search, fifo)),
    Row("export-out-symlink", ["export", "{tmp}/runs/s", "-o", "{tmp}/link"], 2,
        ["link is a symbolic link (to /proc/self/fd/1)", "e.g. best.yaml"],
        setup=both(failed_search, symlink("/proc/self/fd/1"))),
    Row("export-out-dangling-symlink", ["export", "{tmp}/runs/s", "-o", "{tmp}/link"], 2,
        ["is a symbolic link (to", "nowhere.yaml)"], absent=["nowhere.yaml"],
        setup=both(failed_search, symlink("{tmp}/nowhere.yaml"))),
    Row("export-out-looping-symlink", ["export", "{tmp}/runs/s", "-o", "{tmp}/link"], 2,
        ["is a symbolic link (to", "link)"], setup=both(failed_search, symlink("{tmp}/link"))),
    Row("export-out-optuna-db", ["export", "{tmp}/runs/s", "-o", "{tmp}/runs/s/optuna.db"], 2,
        ["is part of the search folder", "(optuna.db is its own)", "e.g. best.yaml"],
        absent=["runs/s/optuna.db"], setup=failed_search),
    Row("export-out-search-json", ["export", "{tmp}/runs/s", "-o", "{tmp}/runs/s/search.json"],
        2, ["is part of the search folder", "(search.json is its own)"], setup=failed_search),
    Row("export-out-in-tune-experiment", ["export", "{tmp}/runs/s", "-o",
                                          "{tmp}/runs/s/trials/best.yaml"], 2,
        ["is part of the Ray Tune experiment", "(best.yaml is its own)"],
        absent=["runs/s/trials/best.yaml"], setup=tune_experiment),
    Row("export-out-mlflow-store", ["export", "{tmp}/runs/s", "-o", "{tmp}/mlflow.db"], 2,
        ["mlflow.db is a SQLite database", "never writes over one"],
        setup=both(failed_search, search_run)),
    Row("evaluate-out-device", ["evaluate", "--checkpoint", "{tmp}/run", "-o", "/dev/null"], 2,
        ["/dev/null is a character device"], setup=checkpoint),
    Row("evaluate-out-run-config", ["evaluate", "--checkpoint", "{tmp}/run", "-o",
                                    "{tmp}/run/config.yaml"], 2,
        ["is part of the training run", "(config.yaml is its own)"],
        absent=["run/config.yaml"], setup=checkpoint),
    Row("evaluate-out-checkpoint", ["evaluate", "--checkpoint", "{tmp}/run", "-o",
                                    "{tmp}/run/checkpoint.pt"], 2,
        ["checkpoint.pt is a zip file (a torch checkpoint?)"], setup=checkpoint),
    Row("explain-out-symlink", ["explain", "--checkpoint", "{tmp}/run", "-o", "{tmp}/link"], 2,
        ["is a symbolic link (to /dev/stdout)"],
        setup=both(checkpoint, symlink("/dev/stdout"))),
    Row("train-out-fifo", ["train", "--out", "{tmp}/pipe"], 2,
        ["is a FIFO (named pipe), not a folder"], setup=fifo),
    Row("train-out-dangling-symlink", ["train", "--out", "{tmp}/link"], 2,
        ["is a symbolic link (to", "nowhere), not a folder"], absent=["nowhere"],
        setup=symlink("{tmp}/nowhere")),
    Row("train-out-search-folder", ["train", "--out", "{tmp}/runs/s"], 2,
        ["--out", "runs/s is a search folder; choose another --out"],
        absent=["runs/s/config.yaml"], setup=failed_search),
    Row("train-out-in-search-folder", ["train", "--out", "{tmp}/runs/s/trials"], 2,
        ["is part of the search folder", "(trials is its own)"], absent=["runs/s/trials"],
        setup=failed_search),
    Row("train-out-empty", ["train", "--out", ""], 2,
        ["--out is empty (it would train into the current folder)"],
        absent=["config.yaml", ".extune.lock"]),
    Row("train-out-start-without-checkpoint", ["train", "--out", "{tmp}/run"], 2,
        ["holds a run that saved no checkpoint (config.yaml)", "nothing in it to continue"],
        setup=started_run),
    Row("search-out-in-search-folder", [*SEARCH, "--out", "{tmp}/runs/s/plots"], 2,
        ["search folders in --out", "is part of the search folder", "(plots is its own)"],
        absent=["runs/s/plots", "mlflow.db"], setup=failed_search),
    Row("search-resume-in-use", ["search", "--resume", "{tmp}/runs/s"], 2,
        ["runs/s is in use: another extune search (process 4242 on elsewhere)"],
        setup=in_use("runs/s", "search")),
    Row("study-resume-in-use", ["study", "--resume", "{tmp}/runs/st"], 2,
        ["runs/st is in use: another extune study (process 4242 on elsewhere)"],
        setup=in_use("runs/st", "study")),
    Row("train-out-in-use", ["train", "--out", "{tmp}/run"], 2,
        ["run is in use: another extune training (process 4242 on elsewhere)",
         "choose another --out"], absent=["run/config.yaml"], setup=in_use("run")),
    Row("evaluate-model-store-from-environment", ["evaluate", "--checkpoint", "models:/demo/1"],
        2, ["cannot load models:/demo/1 from sqlite:///", "mlflow.db",
            "MLFLOW_TRACKING_URI (sqlite:///", "is not read"],
        absent=["other.db"], setup=search_run,
        env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/other.db"}),
    Row("evaluate-no-store-environment-elsewhere", ["evaluate", "--checkpoint",
                                                    "models:/demo/1"], 2,
        ["no MLflow store at", "mlflow.db", "MLFLOW_TRACKING_URI", "is not read"],
        absent=["mlflow.db", "other.db"],
        env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/other.db"}),
    # issue 28: every number bounded, damaged files named, one line each
    Row("config-nested-5000-deep", ["config", "--config", "{tmp}/cfg.yaml"], 2,
        ["cfg.yaml is not valid YAML", "nested too deeply"],
        setup=nested("cfg.yaml", "optim")),
    Row("space-nested-5000-deep", [*SEARCH, "--space", "{tmp}/space.yaml"], 2,
        ["space.yaml is not valid YAML", "nested too deeply"], absent=["runs", "mlflow.db"],
        setup=nested("space.yaml", "optim.lr")),
    Row("plan-nested-5000-deep", ["study", "--plan", "{tmp}/plan.yaml", "--out", "{tmp}/runs"],
        2, ["plan file", "is not valid YAML", "nested too deeply"], absent=["runs"],
        setup=nested("plan.yaml", "claims")),
    Row("threads-50000", ["train", "--set", "runtime.threads=50000", "--out", "{tmp}/run"], 2,
        ["runtime.threads: 50000 is out of range", "<= 1024"], absent=["run"]),
    Row("threads-int32-max", ["train", "--set", "runtime.threads=2147483647", "--out",
                              "{tmp}/run"], 2, ["runtime.threads: 2147483647 is out of range"],
        absent=["run"]),
    Row("threads-beyond-int32", ["train", "--set", "runtime.threads=99999999999", "--out",
                                 "{tmp}/run"], 2,
        ["runtime.threads: 99999999999 is out of range"], absent=["run"]),
    Row("search-seed-negative", [*SEARCH, "--seed", "-1"], 2,
        ["--seed must be in [0, 4294967295]", "got -1"], absent=["runs", "mlflow.db"]),
    Row("search-seed-beyond-32-bits", [*SEARCH, "--seed", "4294967296"], 2,
        ["--seed must be in [0, 4294967295]", "32-bit seeds"], absent=["runs", "mlflow.db"]),
    Row("study-seeds-beyond-32-bits", ["study", "--seed", "4294967295", "--search-seeds", "2",
                                       "--out", "{tmp}/runs"], 2,
        ["--seed 4294967295: the searches' sampler seeds 4294967295..4294967296"],
        absent=["runs", "mlflow.db"]),
    Row("study-searches-at-once-zero", ["study", "--searches-at-once", "0", "--out",
                                        "{tmp}/runs"], 2,
        ["--searches-at-once must be >= 1, got 0"], absent=["runs", "mlflow.db"]),
    Row("study-seed-negative", ["study", "--seed", "-1", "--out", "{tmp}/runs"], 2,
        ["--seed -1", "must be in [0, 4294967295]"], absent=["runs", "mlflow.db"]),
    Row("search-storage-not-writable", [*SEARCH, "--storage", "file:///proc/x"], 2,
        ["cannot write the trial storage (--storage) /proc/x"], absent=["runs", "mlflow.db"]),
    Row("search-storage-missing-bucket", [*SEARCH, "--storage",
                                          "s3://extune-no-such-bucket-28/trials"], 2,
        ["--storage s3://extune-no-such-bucket-28/trials cannot be reached"],
        absent=["runs", "mlflow.db"], env={"AWS_EC2_METADATA_DISABLED": "true"}),
    Row("search-resume-storage-not-writable", ["search", "--resume", "{tmp}/runs/s"], 2,
        ["cannot write the trial storage (--storage) /proc/x", "the search's trials are there"],
        setup=search_with_storage("file:///proc/x")),
    Row("train-out-beyond-path-max", ["train", "--out", "{tmp}/" + LONG], 2,
        ["the output folder (--out)", "bytes long (at most 4095)"], absent=["d" * 200]),
    Row("search-out-beyond-path-max", [*SEARCH, "--out", "{tmp}/" + LONG], 2,
        ["search folders in --out", "bytes long (at most 4095)"], absent=["d" * 200, "mlflow.db"]),
    Row("search-name-beyond-name-max", [*SEARCH, "--out", "{tmp}/" + "n" * 300], 2,
        ["has a name of 300 bytes (at most 255)"], absent=["mlflow.db"]),
    Row("tracking-uri-beyond-path-max", [*SEARCH, "--tracking-uri",
                                         "sqlite:///{tmp}/" + LONG + "/mlflow.db"], 2,
        ["the MLflow store of --tracking-uri", "bytes long (at most 4095)"],
        absent=["runs", "d" * 200]),
    Row("evaluate-out-beyond-path-max", ["evaluate", "--checkpoint", "{tmp}/run", "--out",
                                         "{tmp}/" + LONG + "/e.json"], 2,
        ["the evaluation file (--out)", "bytes long"], setup=checkpoint),
    Row("evaluate-empty-model", ["evaluate", "--checkpoint", "{tmp}/run"], 2,
        ["is not an extune checkpoint: its model entry holds no weights"], setup=empty_model),
    Row("evaluate-random-bytes", ["evaluate", "--checkpoint", "{tmp}/run"], 2,
        ["cannot read checkpoint", "it is not a torch file"], setup=random_bytes),
    Row("evaluate-out-on-full-disk", ["evaluate", "--checkpoint", "{tmp}/run", "--out",
                                      "{tmp}/full/e.json"], 2,
        ["only 0 KiB free on the disk of the evaluation file (--out)"],
        absent=["full/e.json"], setup=both(checkpoint, full_disk)),
    Row("explain-out-on-full-disk", ["explain", "--checkpoint", "{tmp}/run", "-o",
                                     "{tmp}/full/grid.png"], 2,
        ["only 0 KiB free on the disk of the grid image (-o)"], absent=["full/grid.png"],
        setup=both(checkpoint, full_disk)),
    Row("export-out-on-full-disk", ["export", "{tmp}/runs/s", "-o", "{tmp}/full/best.yaml"], 2,
        ["the disk of", "full is full (0 KiB free): the exported config", "was not written"],
        absent=["full/best.yaml"], setup=both(finished_search, full_disk)),
    Row("ui-store-not-sqlite", ["ui", "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--port",
                                "5999"], 2,
        ["the MLflow store", "cannot be read (SQLite: file is not a database)"],
        setup=damaged_store("random")),
    Row("ui-store-cut-short", ["ui", "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--port",
                               "5999"], 2, ["the MLflow store", "mlflow.db"],
        setup=damaged_store("cut")),
    Row("ui-store-locked", ["ui", "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--port",
                            "5999"], 2,
        ["the MLflow store", "is locked by another process", "try again when it is done"],
        setup=damaged_store("locked"), env=LOCK_WAIT),
    Row("export-run-store-locked", ["export", "--run", "abc", "--tracking-uri",
                                    "sqlite:///{tmp}/mlflow.db", "-o", "{tmp}/x.yaml"], 2,
        ["is locked by another process"], absent=["x.yaml"], setup=damaged_store("locked"),
        env=LOCK_WAIT),
    Row("store-lock-wait-not-a-number", ["export", "--run", "abc", "--tracking-uri",
                                         "sqlite:///{tmp}/mlflow.db", "-o", "{tmp}/x.yaml"], 2,
        ["EXTUNE_STORE_LOCK_WAIT_S='soon' is not a number of seconds >= 0"],
        absent=["x.yaml"], setup=search_run, env={"EXTUNE_STORE_LOCK_WAIT_S": "soon"}),
    Row("study-margin-nan", ["study", "--margin", "accuracy=nan", "--out", "{tmp}/runs"], 2,
        ["--margin accuracy=nan: the margin must be a finite number"], absent=["runs"]),
    Row("study-margin-infinite", ["study", "--margin", "accuracy=inf", "--out", "{tmp}/runs"],
        2, ["--margin accuracy=inf: the margin must be a finite number"], absent=["runs"]),
    Row("train-epochs-1e20", ["train", "--set", "optim.epochs=100000000000000000000", "--out",
                              "{tmp}/run"], 2,
        ["optim.epochs: 100000000000000000000 is out of range", "<= 100000"], absent=["run"]),
    Row("synthetic-train-size-1e20", ["train", "--set", "data.train_size=100000000000000000000",
                                      "--out", "{tmp}/run"], 2,
        ["data.train_size: 100000000000000000000 is out of range", "<= 10000000"],
        absent=["run"]),
    Row("projection-dim-1e20", ["train", "--set", "model.projection_dim=100000000000000000000",
                                "--out", "{tmp}/run"], 2,
        ["model.projection_dim: 100000000000000000000 is out of range", "<= 65536"],
        absent=["run"]),
    Row("search-trials-1e20", [*SEARCH, "--trials", "100000000000000000000"], 2,
        ["--trials must be <= 100000"], absent=["runs", "mlflow.db"]),
    Row("study-final-epochs-1e20", ["study", "--final-epochs", "100000000000000000000",
                                    "--out", "{tmp}/runs"], 2,
        ["--final-epochs must be <= 100000"], absent=["runs"]),
    Row("export-epochs-1e20", ["export", "{tmp}/runs/s", "--epochs", "100000000000000000000",
                               "-o", "{tmp}/x.yaml"], 2,
        ["--epochs must be <= 100000"], absent=["x.yaml"], setup=failed_search),
    Row("search-resume-search-json-list", ["search", "--resume", "{tmp}/runs/s"], 2,
        ["search.json holds a list, not the mapping extune writes"],
        setup=search_json("[]")),
    Row("export-search-json-without-settings", ["export", "{tmp}/runs/s", "-o",
                                                "{tmp}/x.yaml"], 2,
        ["search.json: its entry 'search_id' is missing"], absent=["x.yaml"],
        setup=search_json('{"name": "s", "status": "interrupted"}')),
    Row("sync-journal-cut-short", ["sync", "{tmp}/run"], 0,
        ["warning:", "journal.jsonl: 1 line(s) could not be read (line 11",
         "sent 10 write(s)"], setup=cut_journal),
    Row("one-image-per-class", [*TRAIN_IF, *sum((["--set", f"{k}={v}"]
                                                for k, v in FAST.items()), [])],
        0, ["the validation split holds 1 image(s) of 1 of the 2 classes",
            "cannot tell models apart"], setup=one_image_per_class, tiny=True),
    Row("export-pruned-run", ["export", "--run", "{run_id}", "--tracking-uri",
                              "sqlite:///{tmp}/mlflow.db", "-o", "{tmp}/x.yaml"], 0,
        ["warning:", "was pruned", "scores are partial"], setup=pruned_run,
        marks=(pytest.mark.slow,)),
]


# --------------------------------------------------------------------------- the test
def _read_only_folder(tmp: Path) -> Path:
    """A folder no file can be created in: mode 0555, or /sys where modes do not stop us
    (root)."""
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no read-only folder on this machine")


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input(row: Row, tmp_path, monkeypatch, capsys, tiny_args, request):
    monkeypatch.chdir(tmp_path)
    request.addfinalizer(_release_held)
    if row.setup is not None:
        row.setup(tmp_path)
    fill = {"tmp": str(tmp_path), "ro": str(_read_only_folder(tmp_path)),
            "run_id": (tmp_path / "run_id").read_text() if (tmp_path / "run_id").exists()
            else ""}
    args = [a.format(**fill) for a in row.command]
    for name, value in row.env.items():
        monkeypatch.setenv(name, value.format(**fill))
    if row.tiny:
        args = args[:1] + tiny_args + ["--set", f"data.cache_dir={tmp_path}/cache"] + args[1:]
    if args[0] == "train" and not row.track:
        args = args[:1] + ["--no-track"] + args[1:]
    if row.executable:
        code, out, err, caught = _run_executable(args, tmp_path)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(args)
        out, err = capsys.readouterr()
    printed = " ".join((out + err + " ".join(str(w.message) for w in caught)).split())
    assert code == row.code, printed
    assert "Traceback" not in out + err
    for words in row.words:
        assert words in printed, printed
    if row.code:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        assert all(w in errors[0] for w in row.words if w != "warning:"), errors[0]
    for path in row.absent:
        assert not (tmp_path / path).exists(), path


def _run_executable(args: list[str], cwd: Path) -> tuple[int, str, str, list]:
    """The installed ``extune`` console script, as a user types it."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "extune"
    done = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout, done.stderr, []
