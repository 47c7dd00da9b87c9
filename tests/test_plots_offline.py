"""Offline plots: every DVC plot of dvc.yaml becomes a PNG and the index page fetches nothing."""
import re
from pathlib import Path

import yaml
from PIL import Image

from dreamdiffusion.tools.plots_offline import draw_lines, drawn_elsewhere, dvc_plots_json, write_plots

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def payload() -> dict:
    """What `dvc plots diff --json` gives for a line plot and a bar plot over two revisions."""
    lines = [{"epoch": str(e), "dvc_inferred_y_value": str(1 / e), "rev": rev, "field": field}
             for rev in ("main", "exp-a") for field in ("train_loss", "val_loss") for e in (1, 2, 3)]
    bars = [{"class": c, "nway_top1": "0.5", "rev": rev} for rev in ("main", "exp-a") for c in ("a", "b")]
    return {"data": {
        "loss": [{"type": "vega", "revisions": ["main", "exp-a"], "content": {
            "title": {"text": "loss"}, "encoding": {"x": {"field": "epoch"}}, "data": {"values": lines}}}],
        "per_class": [{"type": "vega", "revisions": ["main", "exp-a"], "content": {
            "mark": {"type": "bar"}, "encoding": {"x": {"field": "nway_top1"}, "y": {"field": "class"}},
            "data": {"values": bars}}}]}}


def test_plots_render_as_pngs_with_an_index_that_loads_nothing(tmp_path):
    figure = tmp_path / "dvc_plots/workspace_metrics_figure.png"  # where DVC copies a stage's figure
    figure.parent.mkdir()
    Image.new("RGB", (7, 5), "red").save(figure)
    data = payload()
    data["data"]["metrics/figure.png"] = [{"type": "image", "revisions": ["workspace"], "url": str(figure)}]
    pngs = write_plots(data, tmp_path / "out")
    assert sorted(p.name for p in pngs) == ["loss.png", "per_class.png", "workspace_metrics_figure.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "out/workspace_metrics_figure.png").read_bytes() == figure.read_bytes()
    page = (tmp_path / "out/index.html").read_text()
    assert "<script" not in page and not EXTERNAL.search(page) and 'src="loss.png"' in page
    assert 'src="workspace_metrics_figure.png"' in page


def test_axis_labels_come_from_the_plot_definition():
    import matplotlib.pyplot as plt

    content = payload()["data"]["loss"][0]["content"]
    content["encoding"]["x"]["title"] = "epoch (1-based)"
    content["layer"] = [{"encoding": {"y": {"title": "masked MSE"}}}, {"encoding": {"y": {"title": "masked MSE"}}}]
    fig, ax = plt.subplots()
    draw_lines(ax, content)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch (1-based)", "masked MSE")
    plt.close(fig)


def test_the_repository_plots_render_from_dvc(tmp_path):
    skip = drawn_elsewhere(ROOT / "dvc.yaml")  # the loss and per-class tables are drawn by the definitions
    assert skip == {"metrics/pretrain_loss.csv", "metrics/finetune_loss.csv", "metrics/eval_per_class.csv"}
    pngs = write_plots(dvc_plots_json([], cwd=ROOT), tmp_path, skip)
    drawn = {"pretrain_loss", "finetune_loss", "eval_per_class"}
    assert drawn <= {p.stem for p in pngs}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
    figures = {ROOT / name for stage in stages for entry in stage.get("plots", []) for name in entry
               if name.endswith(".png") and (ROOT / name).is_file()}
    assert figures  # the stages' own figures are copied too, byte for byte
    assert sorted(p.read_bytes() for p in pngs if p.stem not in drawn) == sorted(f.read_bytes() for f in figures)
    assert not EXTERNAL.search((tmp_path / "index.html").read_text())
