"""First-use errors of the CLI: each is one `error:` line naming the file or field, exit 2,
before any trial starts (no MLflow or Optuna store is touched)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app


def bench(*args: str, cwd=None):
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return res.exit_code, res.output


def one_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("kind", ["directory", "binary", "png"])
def test_study_file_that_is_a_directory_or_binary(tmp_path, kind):
    if kind == "directory":
        path = tmp_path / "studies"
        path.mkdir()
    elif kind == "binary":
        path = tmp_path / "study.yaml"
        path.write_bytes(b"name: x\x00\x01\x02")
    else:
        path = tmp_path / "photo.yaml"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    assert str(path) in one_error(out)


def _write(tmp_path, **data):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "retriever": "pixels-knn", "scale": "smoke", **data}))
    return path


def test_check_prints_the_values_set_on_the_command_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "retriever": "dsi-vit",
                "scale": "small",
                "space": {"patch_size": [8, 16, 32]},
                "scales": {"smoke": {"fixed": {"index_epochs": 60}, "space": {"patch_size": [4, 8, 16]}}},
            }
        )
    )
    code, out = bench(
        "run",
        str(path),
        "--scale",
        "smoke",
        "--set",
        "space.patch_size=[16]",
        "--set",
        "fixed.index_epochs=5",
        "--check",
    )
    assert code == 0, out
    assert "index_epochs: 5" in out and "index_epochs: 60" not in out
    assert "1 trials" in out


def _folder(root, n_per_class=6, side=28, classes=("a", "b"), odd=()):
    """A tiny imagefolder: `n_per_class` PNGs per class; `odd` names files written non-square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape = (side, 3 * side) if f"{c}/{i}" in odd else (side, side)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_check_fails_on_a_missing_imagefolder_root(tmp_path):
    path = _write(tmp_path, dataset={"name": "imagefolder", "root": str(tmp_path / "nowhere"), "size": 32})
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    line = one_error(out)
    assert str(tmp_path / "nowhere") in line and "does not exist" in line and "dataset.root=PATH" in line


def test_check_fails_when_n_total_exceeds_the_images(tmp_path):
    path = _write(tmp_path, dataset={"n_total": 5000})
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    line = one_error(out)
    assert "dataset.n_total" in line and "1797" in line and "give its location" not in line
    folder = _folder(tmp_path / "imgs")
    path = _write(tmp_path, dataset={"name": "imagefolder", "root": str(folder), "size": 28, "n_total": 50})
    code, out = bench("run", str(path), "--check")
    assert code == 2 and "at most 12" in one_error(out), out


@pytest.mark.parametrize(
    "space, expect",
    [
        ({"dataset.split_ratio": [0.25, 1.0]}, "no query images"),
        ({"dataset.split_ratio": [0.25, 1.5]}, "split_ratio must be in (0, 1]"),
        ({"dataset.n_total": [256, 3]}, "empty test set"),
    ],
)
def test_check_validates_every_grid_point_of_the_split(tmp_path, space, expect):
    code, out = bench("run", str(_write(tmp_path, space=space)), "--check")
    assert code == 2, out
    line = one_error(out)
    assert expect in line and "s.yaml" in line and list(space)[0] in line


def test_check_rejects_a_patch_size_that_does_not_divide_the_images(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "p", "retriever": "dsi-vit", "scale": "smoke", "space": {"patch_size": [4, 5]}}
        )
    )
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    line = one_error(out)
    assert "'patch_size': 5" in line and "does not divide the image size 32" in line


def test_check_and_run_header_print_the_image_size_and_warn_on_upscaling(tmp_path):
    folder = _folder(tmp_path / "imgs", n_per_class=10)
    path = _write(tmp_path, dataset={"name": "imagefolder", "root": str(folder), "n_total": 20})
    code, out = bench("run", str(path), "--check", "--scale", "small")  # imagefolder's default size: 160 px
    assert code == 0, out
    assert "images: imagefolder at 160 px (source images about 28 px)" in out
    assert "upscaled 5.7x" in out and "--set dataset.size=28" in out
    code, out = bench("run", str(path), "--check", "--set", "dataset.size=32")
    assert code == 0 and "upscaled" not in out and "images: imagefolder at 32 px" in out


def test_location_hint_only_when_the_data_are_missing(tmp_path):
    """Too few usable images (non-square ones are dropped on load) is not a location problem."""
    folder = _folder(
        tmp_path / "imgs", n_per_class=6, odd={f"a/{i}" for i in range(5)} | {f"b/{i}" for i in range(5)}
    )
    path = _write(tmp_path, dataset={"name": "imagefolder", "root": str(folder), "size": 28, "n_total": 10})
    store = tmp_path / "store"
    store.mkdir()
    code, out = bench(
        "run",
        str(path),
        "--tracking-uri",
        f"sqlite:///{store}/mlflow.db",
        "--storage",
        f"sqlite:///{store}/optuna.db",
    )
    assert code == 2, out
    line = one_error(out)
    assert "asked for 10" in line and "give its location" not in line


def test_report_accepts_a_study_file_path(tmp_path, monkeypatch):
    from bench.commands.report import study_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "heldout.yaml").write_text("name: held_out\nretriever: random\n")
    (tmp_path / "mine.yaml").write_text("name: mine_study\nretriever: random\n")
    assert study_name("patch_size") == "patch_size"
    assert study_name("heldout.yaml") == "held_out"  # found in studies/, as `bench run` finds it
    assert study_name("studies/heldout.yaml") == "held_out"
    assert study_name(str(tmp_path / "mine.yaml")) == "mine_study"
    assert study_name("gone.yaml") == "gone"  # no file: the stem
    code, out = bench("report", "heldout.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert code == 2, out
    line = one_error(out)
    assert "no study 'held_out'" in line and ".yaml.yaml" not in line


def test_search_takes_a_run_id_prefix(tmp_path):
    from mlflow import MlflowClient

    from bench.runs import resolve_run_id
    from vitdsi.errors import VitDSIError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("prefixes")
    ids: list[str] = []
    while len({i[0] for i in ids}) == len(ids):  # until two ids share their first character
        ids.append(client.create_run(experiment).info.run_id)
    one = ids[0]
    assert resolve_run_id(client, one[:8], uri) == one
    assert resolve_run_id(client, one.upper(), uri) == one
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    with pytest.raises(VitDSIError, match="matches several runs") as e:
        resolve_run_id(client, shared, uri)
    assert sorted(i for i in ids if i.startswith(shared)) == sorted(
        str(e.value).split("(")[1].split(")")[0].split(", ")
    )
    image = tmp_path / "q.png"
    image.write_bytes(b"")
    code, out = bench("search", "--run", one[:8], str(image), "--tracking-uri", uri)
    assert code == 2 and f"run {one} is not a trial run" in one_error(out), out
    unknown = next(
        f"{c}{'0' * 7}" for c in "0123456789abcdef" if not any(i.startswith(f"{c}{'0' * 7}") for i in ids)
    )
    code, out = bench("search", "--run", unknown, str(image), "--tracking-uri", uri)
    assert code == 2 and f"no MLflow run in {uri} has an id starting with '{unknown}'" in one_error(out), out
    code, out = bench("search", "--run", "best.run_id", str(image), "--tracking-uri", uri)
    assert code == 2 and "not an MLflow run id" in one_error(out), out


def test_check_prints_the_queries_of_each_split(tmp_path):
    from vitdsi.data.split import split_sizes

    path = _write(
        tmp_path,
        dataset={"n_total": 200, "split_ratio": 0.5},
        repeats=3,
        space={"dataset.n_total": [200, 120]},
    )
    code, out = bench("run", str(path), "--check")
    assert code == 0, out
    assert "split: 200 images, 100 indexed; per seed 80 train / 10 validation / 10 test queries" in out
    for n in (200, 120):
        sizes = split_sizes(n, 0.5, (0.8, 0.1, 0.1))
        assert (
            f"split: {n} images, {sizes['idb']} indexed; per seed {sizes['train']} train / {sizes['val']} "
            f"validation / {sizes['test']} test queries; 3 seed(s) per trial, each its own split"
        ) in out, out


def test_check_prints_the_view_queries_of_an_instance_study_and_its_description_as_written(tmp_path):
    """Under `protocol: instance` the queries are views of indexed images, so the split line counts
    views (the protocol's own numbers), not the images set aside; a multi-line description is
    shown as the literal block it is in the study file."""
    description = "First line of what the study asks.\nSecond line, kept as a line."
    path = _write(
        tmp_path,
        description=description,
        dataset={
            "n_total": 200,
            "split_ratio": 0.5,
            "protocol": "instance",
            "instance": {"train_views": 2, "trained_images": 30, "queries": 40},
        },
    )
    code, out = bench("run", str(path), "--check")
    assert code == 0, out
    flat = " ".join(out.split())
    assert (
        "split: 200 images, 100 indexed, 100 set aside; per seed 60 train / 40 validation / 40 test "
        "queries, each a new view of an indexed image"
    ) in flat, out
    assert "description: |-\n  First line of what the study asks.\n  Second line, kept as a line.\n" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# listens after a second, answers one connection, then exits
LATE_SERVER = (
    "import socket, sys, time; time.sleep(1); s = socket.socket(); "
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); "
    "s.listen(); s.accept()[0].close(); s.close()"
)


def test_ui_waits_for_the_server_to_answer(tmp_path, monkeypatch):
    import sys
    import time

    from bench.commands import ui
    from vitdsi.errors import VitDSIError

    port = _free_port()
    server = ui.start_server([sys.executable, "-c", LATE_SERVER, str(port)], "127.0.0.1", port, wait=20)
    assert server.poll() is None or server.returncode == 0  # it answered the probe, then may exit
    assert server.wait(timeout=20) == 0

    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(VitDSIError, match=f"did not answer on 127.0.0.1:{port} within 1 s"):
        ui.start_server(silent, "127.0.0.1", port, wait=1)
    assert time.monotonic() - start < 10  # bounded, and the silent server was stopped
    with pytest.raises(VitDSIError, match="exited \\(code 3\\) before answering"):
        ui.start_server([sys.executable, "-c", "raise SystemExit(3)"], "127.0.0.1", port, wait=20)

    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.setattr(
        ui, "server_command", lambda uri, host, p: [sys.executable, "-c", LATE_SERVER, str(p)]
    )
    code, out = bench("ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port))
    assert code == 0 and f"MLflow UI on http://127.0.0.1:{port}" in out, out
    monkeypatch.setattr(ui, "server_command", lambda uri, host, p: silent)
    code, out = bench(
        "ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port), "--wait", "1"
    )
    assert code == 2 and "MLflow UI on" not in out and "did not answer" in one_error(out), out


def test_list_retrievers_fits_80_columns_and_names_allowed_values():
    res = CliRunner().invoke(app, ["list", "retrievers"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    assert "dsi-vit: Seq2seq ViT" in res.output and "learns from (at most): label-free" in res.output
    res = CliRunner().invoke(app, ["list", "retrievers", "dsi-vit"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    lines = [line.strip() for line in res.output.splitlines()]
    scheme = lines.index("id_scheme: str = 'random'")
    assert lines[scheme + 1] == "allowed: random | clustered | semantic | rq | atomic"
    assert "beam_size: int = 10" in lines
    code, out = bench("list", "retrievers", "dsi-vti")
    assert code == 2 and "unknown retriever 'dsi-vti'" in one_error(out), out


def test_listed_allowed_values_are_what_the_retrievers_accept():
    from bench.choices import OPEN, param_choices
    from vitdsi.errors import VitDSIError
    from vitdsi.retrievers.params import retriever_params
    from vitdsi.retrievers.registry import registered

    checked = 0
    for cls in registered().values():
        names = {p.name for p in retriever_params(cls)}
        for param, allowed in param_choices().items():
            if param not in names or param in OPEN:
                continue
            for value in allowed:
                cls(**{param: value}, device="cpu")
            with pytest.raises(VitDSIError):
                cls(**{param: "not-a-choice"}, device="cpu")
            checked += 1
    assert checked >= 10


def test_check_names_both_lines_of_a_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: dup\nretriever: pixels-knn\nscale: smoke\nfixed: {center: true}\nspace:\n"
        "  batch_size: [64]\nfixed:\n  center: false\n"
    )
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    line = one_error(out)
    assert "duplicate key 'fixed'" in line and "line 4 and line 7" in line and str(path) in line


def test_keys_merged_in_with_an_anchor_may_be_overridden(tmp_path):
    from bench.config.loading import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("common: &b {center: true, batch_size: 64}\nfixed:\n  <<: *b\n  center: false\n")
    assert read_yaml(path)["fixed"] == {"center": False, "batch_size": 64}


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    import time

    levels = ['l0: &l0 ["lol"]'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\nname: bomb\nretriever: pixels-knn\n")
    t0 = time.perf_counter()
    code, out = bench("run", str(path), "--check")
    assert time.perf_counter() - t0 < 1.0
    assert code == 2, out
    assert "aliases expand to more than" in one_error(out)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("fixed: {lr: .inf}", "fixed.lr"),
        ("space:\n  lr: {type: float, low: .nan, high: 0.1}", "space.lr.low"),
        ("space:\n  weight_decay: [0.1, -.inf]", "space.weight_decay.1"),
    ],
)
def test_check_refuses_nan_and_infinite_floats_naming_the_field(tmp_path, text, field):
    path = tmp_path / "nan.yaml"
    path.write_text(f"name: nan\nretriever: dsi-vit\nscale: smoke\n{text}\n")
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    line = one_error(out)
    assert f"field `{field}`" in line and "not a finite number" in line
    code, out = bench("run", str(_write(tmp_path)), "--check", "--set", "fixed.lr=.nan")
    assert code == 2 and "field `fixed.lr`" in one_error(out)


@pytest.mark.parametrize(
    ("setting", "field", "message"),
    [
        ("dataset.n_total=100000000000000000000000", "dataset.n_total", "less than or equal to 100000000"),
        ("dataset.size=100000", "dataset.size", "less than or equal to 4096"),
        ("space.dataset.size=[32, 100000]", "dataset.size", "less than or equal to 4096"),
        (f"seed={2**66}", "seed", "less than or equal to 4294967295"),
        ("dataset.seed=-1", "dataset.seed", "greater than or equal to 0"),
        ("repeats=1000000", "repeats", "less than or equal to 100"),
        ("fixed.dim=-64", "fixed.dim", "parameter 'dim' must be in 1..16,384, got -64"),
        (
            "space.ff_dim=[64, 1000000]",
            "space.ff_dim",
            "parameter 'ff_dim' must be in 1..16,384, got 1,000,000",
        ),
        ("fixed.index_epochs=10000000000", "fixed.index_epochs", "must be in 0..100,000,000"),
    ],
)
def test_check_bounds_sizes_seeds_and_build_parameters(tmp_path, setting, field, message):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "retriever": "dsi-vit", "scale": "smoke"}))
    code, out = bench("run", str(path), "--check", "--set", setting)
    assert code == 2, out
    assert "Traceback" not in out and f"`{field}`" in out and message in " ".join(out.split()), out


def test_check_refuses_seeds_that_repeats_push_past_the_largest(tmp_path):
    code, out = bench(
        "run", str(_write(tmp_path)), "--check", "--set", f"seed={2**32 - 2}", "--set", "repeats=3"
    )
    assert code == 2 and "exceeds the largest seed 4294967295" in " ".join(out.split()), out
    code, out = bench(
        "run", str(_write(tmp_path)), "--check", "--set", f"seed={2**32 - 3}", "--set", "repeats=3"
    )
    assert code == 0, out
