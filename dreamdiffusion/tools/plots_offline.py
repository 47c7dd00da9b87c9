"""The DVC plots of dvc.yaml rendered without network: PNGs (matplotlib; the stages' own figures copied)
and an index.html that loads nothing.

`dvc plots show` writes an HTML page that loads vega, vega-lite and vega-embed from a CDN, so it is
blank on a machine without internet, and no installed package ships those libraries. This reads
the data DVC prepares for its templates (`dvc plots show --json`, or `dvc plots diff --json REV...`
to compare revisions and experiments) and draws each plot with matplotlib:

    python -m dreamdiffusion.tools.plots_offline                      # the workspace -> plots/
    python -m dreamdiffusion.tools.plots_offline main exp-1a2b3 --out plots/compare
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from dreamdiffusion.core.fileio import atomic_path

Y_FIELD = "dvc_inferred_y_value"  # where DVC puts the y value of each row in its templates' data


def dvc_plots_json(revisions: list[str], cwd: Path = Path(".")) -> dict:
    """DVC's template data for every plot of dvc.yaml: of the workspace, or of `revisions` compared."""
    action = ["diff", "--json", *revisions] if revisions else ["show", "--json"]
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", *action], cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def number(text) -> float | None:
    """A CSV cell as a float, None when empty or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def draw_lines(ax, content: dict) -> None:
    """One line per (revision, column), x from the spec's x field (DVC's linear/smooth templates)."""
    x_field = content["encoding"]["x"]["field"]
    lines: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for row in content["data"]["values"]:
        x, y = number(row.get(x_field)), number(row.get(Y_FIELD))
        if x is not None and y is not None:
            lines[(row.get("rev", ""), row.get("field", ""))].append((x, y))
    for (rev, field), points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, label=f"{rev}: {field}" if rev else field)
    ax.set_xlabel(content["encoding"]["x"].get("title", x_field))
    y_titles = {layer.get("encoding", {}).get("y", {}).get("title") for layer in content.get("layer", [])}
    y_titles.discard(None)
    if len(y_titles) == 1:  # dvc.yaml's y_label (DVC puts it on every layer)
        ax.set_ylabel(y_titles.pop())
    ax.legend(fontsize=7)


def draw_bars(ax, content: dict) -> None:
    """Horizontal bars, one group per category and one bar per revision (DVC's bar_horizontal template)."""
    x_field, y_field = content["encoding"]["x"]["field"], content["encoding"]["y"]["field"]
    rows = content["data"]["values"]
    revisions = sorted({row.get("rev", "") for row in rows})
    categories = sorted({row[y_field] for row in rows})
    height = 0.8 / len(revisions)
    for k, rev in enumerate(revisions):
        values = {row[y_field]: number(row.get(x_field)) or 0.0 for row in rows if row.get("rev", "") == rev}
        positions = [i + k * height for i in range(len(categories))]
        ax.barh(positions, [values.get(c, 0.0) for c in categories], height=height, label=rev)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(categories))], categories, fontsize=7)
    ax.set_xlabel(x_field)
    ax.legend(fontsize=7)


def render(name: str, content: dict, out: Path) -> Path:
    """Draw one DVC vega plot's data as `<out>/<name>.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    mark = content.get("mark", {})
    (draw_bars if isinstance(mark, dict) and mark.get("type") == "bar" else draw_lines)(ax, content)
    title = content.get("title", name)
    ax.set_title(title.get("text", name) if isinstance(title, dict) else str(title))
    fig.tight_layout()
    path = out / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def copy_image(item: dict, out: Path) -> Path:
    """A figure a stage wrote (a DVC image plot; `url` is DVC's copy of it for one revision), copied into `out`."""
    source = Path(item["url"])
    path = out / source.name
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


def index_html(pngs: list[Path]) -> str:
    """A page showing the PNGs by relative path: no script, no stylesheet, no external URL."""
    figures = "\n".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in pngs)
    head = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>DVC plots</title></head>'
    return f"{head}\n<body>\n{figures}\n</body></html>\n"


def drawn_elsewhere(dvc_file: Path = Path("dvc.yaml")) -> set[str]:
    """Data files the top-level plot definitions of dvc.yaml draw: their stage-level entries (DVC's
    default rendering of the same file, kept as plot outputs so the run cache can restore them) are skipped."""
    import yaml

    if not dvc_file.is_file():
        return set()
    found = set()
    for definition in yaml.safe_load(dvc_file.read_text()).get("plots", []):
        for spec in definition.values():
            y = spec.get("y", {}) if isinstance(spec, dict) else {}
            found.update(y if isinstance(y, dict) else [])
    return found


def write_plots(payload: dict, out: Path, skip: set[str] = frozenset()) -> list[Path]:
    """Render every vega plot of `dvc plots ... --json` output into `out`, copy every image plot (the
    figures stages write) there, and write an index.html showing them all; return the PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [(name, item) for name, items in payload.get("data", {}).items() if name not in skip for item in items]
    pngs = [render(name, item["content"], out) for name, item in plots if item.get("type") == "vega"]
    pngs += [copy_image(item, out) for _, item in plots if item.get("type") == "image"]
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(index_html(pngs))
    return pngs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*", help="revisions or experiment names to compare (default: workspace)")
    parser.add_argument("--out", type=Path, default=Path("plots"))
    args = parser.parse_args(argv)
    pngs = write_plots(dvc_plots_json(args.revisions), args.out, drawn_elsewhere())
    print(f"{len(pngs)} plots in {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
