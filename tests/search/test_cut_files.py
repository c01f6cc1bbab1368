"""Files cut short or stores in the way, in one line (issue 28): a journal line cut by a kill is
said and the next write starts a line of its own; MLflow's SQL errors of a locked store do not
print tracebacks; metrics JSON holds no bare NaN; paths beyond the system's limits."""

from __future__ import annotations

import json
import logging
import math

import pytest

from extune.errors import ConfigError
from extune.evaluate.metric_info import metrics_json
from extune.files import check_path_length
from extune.tracking.client import SqlErrorOneLine
from extune.tracking.journal import Journal, Op


def test_a_cut_journal_line_is_counted_and_the_next_write_starts_a_new_line(tmp_path):
    journal = Journal(tmp_path)
    for epoch in (1, 2, 3):
        journal.append(Op("metrics", metrics={"train/loss": 1.0}, step=epoch))
    ops = tmp_path / "journal.jsonl"
    ops.write_text(ops.read_text()[:-10])  # the third write cut by a kill
    assert [op.step for op in Journal(tmp_path).unsent()] == [1, 2]
    assert Journal(tmp_path).unreadable_lines() == [3]

    again = Journal(tmp_path)  # the next process (a resumed search) goes on writing
    again.append(Op("metrics", metrics={"train/loss": 0.5}, step=4))
    assert [op.step for op in Journal(tmp_path).unsent()] == [1, 2, 4]
    assert Journal(tmp_path).unreadable_lines() == [3]
    assert json.loads(ops.read_text().splitlines()[-1])["step"] == 4


def _logged(error: BaseException) -> list[logging.LogRecord]:
    logger = logging.getLogger("test.sql")
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addFilter(SqlErrorOneLine())
    logger.addHandler(Keep())
    try:
        raise error
    except Exception as e:
        logger.exception("SQLAlchemy database error. The following exception is caught.\n%s",
                         e)
    return records


def test_sql_errors_of_the_store_are_one_line_and_a_lock_is_left_to_the_writer():
    import sqlite3

    assert _logged(sqlite3.OperationalError("database is locked")) == []
    (record,) = _logged(sqlite3.OperationalError("no such table: runs\n[SQL: SELECT ...]"))
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert record.getMessage().startswith("MLflow's store: no such table: runs")


def test_metrics_json_writes_null_where_a_metric_is_not_a_number():
    text = metrics_json({"final": {"val/ece": math.nan, "val/accuracy": 0.5},
                         "history": [{"loss": math.inf}, {"loss": 1.0}]})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"final": {"val/ece": None, "val/accuracy": 0.5},
                                "history": [{"loss": None}, {"loss": 1.0}]}


def test_paths_beyond_the_systems_limits_are_refused_before_any_call(tmp_path):
    check_path_length(tmp_path / "a" / "b", "--out")
    with pytest.raises(ConfigError, match=r"--out .*\.\.\. is \d+ bytes long \(at most 4095\)"):
        check_path_length(tmp_path.joinpath(*["d" * 200] * 21), "--out")
    with pytest.raises(ConfigError, match=r"has a name of 256 bytes \(at most 255\)"):
        check_path_length(tmp_path / ("n" * 256), "--out")
