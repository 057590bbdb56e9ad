"""The project carries its own design notes, and nothing points at files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if f.endswith(suffixes)]


def test_design_notes_exist_and_cover_the_design():
    text = (ROOT / "docs" / "design.md").read_text()
    for section in (
        "Architecture",
        "retriever interface",
        "Data sources and splits",
        "Id schemes",
        "DSI model",
        "Metrics and chance levels",
        "Optuna and MLflow",
        "Latency",
        "Reports",
        "Scale presets",
        "Fair comparison",
    ):
        assert re.search(rf"^## .*{section}", text, re.M | re.I), section


def test_no_reference_to_a_missing_design_file_or_outside_the_repository():
    bad = []
    for path in tracked(".py", ".md", ".yaml", "Makefile"):
        rel = str(path.relative_to(ROOT))
        if not path.exists() or path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "DESIGN.md" in line or "../shared" in line:
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "point at docs/design.md instead:\n" + "\n".join(bad)


def test_demo_pins_one_thread_and_the_patch_size_study_says_what_the_demo_runs():
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.config import load_study
    from vitdsi.data.split import split_sizes

    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    runs = [line.strip() for line in recipe.splitlines() if "/bench run " in line or "/bench report " in line]
    assert runs and all(line.startswith("OMP_NUM_THREADS=1 ") for line in runs)
    run = next(line for line in runs if "bench run " in line)
    assert "--threads 1" in run and "--scale smoke" in run
    assert "--threads" in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output

    study = load_study(ROOT / "studies" / "patch_size.yaml", scale="smoke")
    text = " ".join(study.description.split())
    d, params = study.dataset, study.methods["dsi-vit"].params
    sizes = split_sizes(d.n_total, d.split_ratio, d.query_fractions)
    patches = [str(p) for p in study.space["patch_size"].choices]
    assert (
        f"on {d.size} px images (smoke, small) the same ratios are {', '.join(patches[:-1])} and "
        f"{patches[-1]} px" in text
    )
    assert (
        f"{d.n_total} {d.name} at {d.size} px, {sizes['idb']} indexed and {sizes['test']} test queries"
        in text
    )
    assert study.repeats == 1 and "one seed" in text
    assert f"a ViT encoder of {params['depth']} blocks and width {params['dim']}" in text
    assert (
        f"at most {params['index_epochs']} indexing and {params['retrieval_epochs']} fine-tuning epochs"
        in text
    )
    assert params["mode"] == "fine-tuned" and params["id_scheme"] == "clustered" and "Clustered ids" in text
    assert study.metric == "MAP@10" and "best validation MAP@10" in text


def test_readme_own_images_study_passes_check(tmp_path, monkeypatch):
    import numpy as np
    import yaml
    from PIL import Image
    from typer.testing import CliRunner

    from bench.cli import app

    section = (ROOT / "README.md").read_text().split("### A study of your own images", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    study = yaml.safe_load(block)
    assert study["dataset"]["name"] == "imagefolder" and len(study["methods"]) >= 3
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    per_class = study["dataset"]["n_total"] // 2
    for c in ("cats", "dogs"):
        folder = tmp_path / study["dataset"]["root"] / c
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "my_photos.yaml").write_text(block)
    res = CliRunner().invoke(app, ["run", "my_photos.yaml", "--check"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    n = study["dataset"]["n_total"]
    assert f"split: {n} images, {round(n * study['dataset']['split_ratio'])} indexed" in res.output
    assert f"{len(study['methods'])} trials" in res.output
