"""Imported first by every stage script, before anything imports torch:

- `dreamdiffusion` comes from the checkout this script lies in. The environment installs the package
  in editable mode, pointing at the checkout it was set up from; a queued `dvc exp run` (a copy under
  .dvc/tmp/exps) or any other copy of the repository must run its own code, or an experiment's numbers
  would come from other code than the one DVC hashed as its dependencies.
- the CPU kernels `compute.cpu_kernels` asks for (dreamdiffusion.core.kernels) are set before torch reads
  them. The stages that do not read `compute` (download, preprocess) always run portable kernels.
"""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)

from dreamdiffusion.core.kernels import apply_kernel_choice, kernel_choice  # noqa: E402  (imports no torch)

READS_COMPUTE = {"foundation", "pretrain", "finetune", "generate", "evaluate"}  # dvc.yaml: they list `compute`

if "torch" not in sys.modules:  # (a test harness that runs a stage in its own process has chosen already)
    stage = Path(sys.argv[0]).stem
    apply_kernel_choice(kernel_choice("params.yaml") if stage in READS_COMPUTE else "portable")
