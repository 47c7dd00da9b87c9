"""The README's results table, generated from the full reports (`metrics/<stage>_details.json`) of the last `dvc repro`.

    python -m dreamdiffusion.tools.results_table            # print it
    python -m dreamdiffusion.tools.results_table --write    # replace the block between the markers in README.md

A test checks that the README's block is what the committed metrics give, so the table can never
drift from the run it describes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"

ROWS = [  # (label, how to read it, metrics file, format of the values, keys)
    ("`nway_top1` (± std over samples)", "judge's n-way top-1 on images generated from test EEG ({samples} samples per "
     "trial, {draws} distractor draws; MinD-Vis protocol); chance {chance:.2f}", "eval", "{:.3f} ± {:.3f}",
     ("nway_top1", "nway_top1_std")),
    ("`nway_top5`", "true class among the top 5 of the n candidates", "eval", "{:.3f}", ("nway_top5",)),
    ("`controls.nway_top1`", "the same, each image generated from the EEG of a trial that saw another image: "
     "must sit near chance", "eval", "{:.3f}", ("controls.nway_top1",)),
    ("`clip_2way` / `controls.clip_2way`", "identification in CLIP space against the other test images (chance "
     "0.5); the control also leaves out the image its EEG saw", "eval", "{:.3f} / {:.3f}",
     ("clip_2way", "controls.clip_2way")),
    ("`clip_similarity`", "cosine of CLIP embeddings, generated vs its ground truth", "eval", "{:.3f}",
     ("clip_similarity",)),
    ("`ssim` / `pixcorr`", "low-level similarity (pose and background are not in the EEG)", "eval",
     "{:.3f} / {:.3f}", ("ssim", "pixcorr")),
    ("`eeg_top1` / `eeg_top5`", "class from the EEG alone (CLIP head vs class prototypes)", "eval",
     "{:.3f} / {:.3f}", ("eeg_top1", "eeg_top5")),
    ("`fid` / `is_mean` / `kid_mean`", "torch-fidelity with the {extractor} features ({n_generated} generated vs "
     "{n_reference} distinct test images)", "eval", "{:.1f} / {:.2f} / {:.1f}", ("fid", "is_mean", "kid_mean")),
    ("`caption_to_image_acc`", "the foundation's own text-to-image model on clean class captions (judge top-1)",
     "foundation", "{:.3f}", ("caption_to_image_acc",)),
    ("`probe_top1` / random init", "linear probe of the pretrained encoder's cls token vs random-init encoders "
     "(val trials)", "pretrain", "{:.3f} / {:.3f}", ("probe_top1", "probe_top1_random_init")),
    ("`val_nway_top1` (finetune)", "the kept epoch's quick n-way on val (selection only; never test)", "finetune",
     "{:.3f}", ("val_nway_top1",)),
]


def lookup(metrics: dict, key: str):
    """A (dotted) key of a metrics dict."""
    for part in key.split("."):
        metrics = metrics[part]
    return metrics


def table(metrics_dir: Path) -> str:
    """The markdown table of the full reports in `metrics_dir`."""
    files = {name: json.loads((metrics_dir / f"{name}_details.json").read_text())
             for name in ("eval", "foundation", "pretrain", "finetune")}
    found = files["eval"]
    context = {"samples": found["samples_per_eeg"], "draws": found["nway_draws"], "chance": found["chance"],
               **found.get("fidelity", {})}
    lines = ["| metric | value | how to read it |", "|---|---|---|"]
    for label, note, source, form, keys in ROWS:
        value = form.format(*(lookup(files[source], k) for k in keys))
        lines.append(f"| {label} | {value} | {note.format(**context)} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with the part between START and END replaced by `block`."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--write", type=Path, nargs="?", const=Path("README.md"), help="the file to update")
    args = parser.parse_args()
    block = table(args.metrics)
    if args.write is None:
        print(block)
        return
    args.write.write_text(replace_block(args.write.read_text(), block))


if __name__ == "__main__":
    main()
