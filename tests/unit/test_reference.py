import csv
import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.cli import main
from app.errors import ReferenceDataError, StateError
from app.reference import (
    NumericReference,
    Reference,
    build_reference,
    load_reference_file,
    read_rows,
)
from app.settings import settings_from_mapping

CONFIG = {
    "models": {"m": {
        "features": {"x": {"type": "numeric"},
                     "plan": {"type": "categorical", "values": ["free", "pro", "team"]}},
        "reference": {"warmup": 100},
        "drift": {"bins": 10},
    }},
}


@pytest.fixture
def model():
    return settings_from_mapping(CONFIG, env={}).models["m"]


def data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 2, n)
    plan = rng.choice(["free", "pro"], n, p=(0.7, 0.3))
    return [{"x": float(x[i]) if i % 50 else None, "plan": str(plan[i])} for i in range(n)]


def test_numeric_bins_are_reference_quantiles(model):
    ref = build_reference(data(), "m", model, origin="t")
    x = ref.features["x"]
    assert isinstance(x, NumericReference)
    assert len(x.edges) == 9 and x.missing == 40
    shares = np.array(x.counts) / sum(x.counts)
    assert np.allclose(shares, 0.1, atol=0.01)  # deciles: equal mass per bin
    assert x.mean == pytest.approx(10, abs=0.2)


def test_declared_categories_join_the_vocabulary(model):
    ref = build_reference(data(), "m", model, origin="t")
    plan = ref.features["plan"]
    assert plan.categories == ("free", "pro", "team")
    assert plan.counts[2] == 0 and plan.counts[3] == 0  # team unseen, other empty


def test_round_trip_and_version_check(model):
    ref = build_reference(data(), "m", model, version="v1", origin="t")
    again = Reference.from_dict(orjson.loads(orjson.dumps(ref.to_dict())))
    assert again == ref
    bad = {**ref.to_dict(), "v": 99}
    with pytest.raises(StateError, match="version 99 is not supported"):
        Reference.from_dict(bad)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_data_files_give_the_same_reference(tmp_path, model, fmt):
    rows = data()
    path = tmp_path / f"train.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["x", "plan"])
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    elif fmt == "jsonl":
        path.write_bytes(b"\n".join(orjson.dumps({"features": r}) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    ref = load_reference_file(path, "m", model)
    expected = build_reference(rows, "m", model, origin="x")
    assert ref.features["x"].edges == pytest.approx(expected.features["x"].edges)
    assert ref.features["plan"] == expected.features["plan"]
    assert ref.n == len(rows)


def test_unreadable_files_are_clear_errors(tmp_path, model):
    with pytest.raises(ReferenceDataError, match="no such file"):
        read_rows(tmp_path / "nope.csv", model.features)
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ReferenceDataError, match="unknown data format"):
        read_rows(tmp_path / "a.xlsx", model.features)
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(ReferenceDataError, match=r"b\.jsonl:1: not JSON"):
        read_rows(tmp_path / "b.jsonl", model.features)
    # a feature without usable data is reported and skipped, not fatal...
    ref = build_reference([{"x": None, "plan": "a"}], "m", model, origin="t")
    assert set(ref.features) == {"plan"} and "no finite values" in ref.skipped["x"]
    assert "x                        skipped: no finite values" in ref.summary()
    # ...unless no feature has any
    with pytest.raises(ReferenceDataError, match="no feature of model 'm'"):
        build_reference([{"x": None}], "m", model.model_copy(
            update={"features": {"x": model.features["x"]}}), origin="t")


def test_odd_values_never_break_a_reference(model):
    rows = [{"x": 10**400, "plan": "__other__"}, {"x": True, "plan": "free"},
            {"x": 2.5, "plan": "pro"}] * 50
    ref = build_reference(rows, "m", model, origin="t")
    assert "__other__" not in ref.features["plan"].categories
    assert ref.features["plan"].counts[-1] == 50  # the literal "__other__" values
    assert sum(ref.features["x"].counts) == 100  # True counts as 1.0, 10**400 is not finite


def test_reference_build_command(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    src = tmp_path / "train.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in data()))
    out = tmp_path / "m.reference.json"
    assert main(["reference", "build", str(src), "-c", str(cfg), "--model", "m",
                 "--version", "v1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reference for model 'm' version v1: 2000 rows" in text
    assert re.search(r"plan +categorical +3 values: free (69|70|71)%", text)
    assert re.search(r"\n  x +numeric +mean (9\.9|10)", text), text
    model = settings_from_mapping(CONFIG, env={}).models["m"]
    assert load_reference_file(out, "m", model).version == "v1"
    assert main(["reference", "build", str(src), "-c", str(cfg), "--model", "zz"]) == 2
