"""The README's results table is what the committed metrics files say (no hand-copied numbers)."""
from pathlib import Path

from dreamdiffusion.tools.results_table import END, START, replace_block, table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_block_is_generated_from_the_committed_metrics():
    readme = (ROOT / "README.md").read_text()
    expected = replace_block(readme, table(ROOT / "metrics"))
    assert readme == expected, "README.md's results table is stale: run python -m dreamdiffusion.tools.results_table --write"


def test_replace_block_keeps_the_rest_of_the_text():
    text = f"before\n{START}\nold\n{END}\nafter\n"
    assert replace_block(text, "new") == f"before\n{START}\nnew\n{END}\nafter\n"
