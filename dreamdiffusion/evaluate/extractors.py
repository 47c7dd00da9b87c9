"""The ImageNet extractors of the MindEye reconstruction suite, built by torchvision from local weight files.

MindEye's metrics (Scotti et al., NeurIPS 2023: github.com/MedARC-AI/fMRI-reconstruction-NSD,
src/Reconstruction_Metrics.py), which ATM applies unchanged to THINGS-EEG2 (Li et al. 2024:
github.com/dongyangli-del/EEG_Image_decode, Generation/Reconstruction_Metrics_ATM.ipynb), resize every image
to 256 x 256 first, then give each network its own bilinear `Resize(size)` and the ImageNet mean/std, and read
one node of `torchvision.models.feature_extraction.create_feature_extractor`:

    AlexNet (IMAGENET1K_V1)           Resize(256)  'features.4' (layer 2), 'features.11' (layer 5)  2-way
    Inception-v3 (IMAGENET1K_V1)      Resize(342)  'avgpool'                                         2-way
    EfficientNet-B1 (DEFAULT: V2)     Resize(255)  'avgpool'                        correlation distance
    SwAV ResNet-50 (torch.hub         Resize(224)  'avgpool'                        correlation distance
      facebookresearch/swav resnet50)

The networks are torchvision's builders (inception_v3 with `transform_input=True`, as its builder sets for
released weights); the weights come from a file inside the repository whose sha256 matches the params before
it is read (torch weights-only or safetensors), and a file of another architecture is refused by name.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from torch import nn

from dreamdiffusion.core.fileio import REPO_ROOT, DataError, repository_file, safe_torch_load, sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MINDEYE_SIZE = 256  # MindEye resizes every image to 256 x 256 before any metric
UNUSED_IN_EVAL = ("num_batches_tracked",)  # BatchNorm counters: absent from some released files, never read in eval


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
    """How MindEye reads one torchvision network, and what its weight file must hold."""

    architecture: str  # names the expected weights in errors and in the report
    nodes: dict[str, str]  # suite entry -> create_feature_extractor node
    size: int  # MindEye's bilinear Resize(size), after 256 x 256
    score: str  # "2way": 2-way identification (correlation); "distance": mean correlation distance of pairs
    may_lack: tuple[str, ...] = ()  # state-dict prefixes the file may lack (unused by the nodes)
    may_add: tuple[str, ...] = ()  # state-dict prefixes the file may add (the self-supervised heads)


SPECS = {
    "alexnet": ExtractorSpec("torchvision alexnet (AlexNet_Weights.IMAGENET1K_V1)",
                             {"alexnet2_2way": "features.4", "alexnet5_2way": "features.11"}, 256, "2way"),
    "inception_v3": ExtractorSpec("torchvision inception_v3 (Inception_V3_Weights.IMAGENET1K_V1)",
                                  {"inception_2way": "avgpool"}, 342, "2way"),
    "efficientnet_b1": ExtractorSpec("torchvision efficientnet_b1 (EfficientNet_B1_Weights.DEFAULT, IMAGENET1K_V2)",
                                     {"effnet_b_distance": "avgpool"}, 255, "distance"),
    "swav_resnet50": ExtractorSpec("SwAV resnet50 (facebookresearch/swav torch.hub, swav_800ep_pretrain): a "
                                   "torchvision resnet50 trunk", {"swav_distance": "avgpool"}, 224, "distance",
                                   may_lack=("fc.",), may_add=("projection_head.", "prototypes")),
}
ENTRIES = {entry: name for name, spec in SPECS.items() for entry in spec.nodes}  # suite entry -> extractor


def build_network(name: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """The torchvision network of extractor `name`, randomly initialised (its weights are loaded next)."""
    import torchvision.models as tv

    if name == "alexnet":
        return tv.alexnet(weights=None)
    if name == "inception_v3":  # what inception_v3(weights=...) builds: ImageNet input re-normalised inside
        aux = any(key.startswith("AuxLogits.") for key in state)
        return tv.inception_v3(weights=None, aux_logits=aux, transform_input=True, init_weights=False)
    if name == "efficientnet_b1":
        return tv.efficientnet_b1(weights=None)
    return tv.resnet50(weights=None)  # SwAV's hub entry point: torchvision resnet50 + its weights (strict=False)


def read_state(path: Path, architecture: str) -> dict[str, torch.Tensor]:
    """The flat state dict (DataParallel's 'module.' prefix removed) of a safetensors or weights-only torch file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # a header or data the format does not allow
            raise DataError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                            f"{str(err).strip()[:200]}); expected the {architecture} weights") from None
    else:
        state = safe_torch_load(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise DataError(f"{path}: expected a state dict of tensors (the {architecture} weights)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def mismatch(model: nn.Module, state: dict[str, torch.Tensor], may_lack: tuple[str, ...] = (),
             may_add: tuple[str, ...] = ()) -> list[str]:
    """What keeps `state` from being `model`'s weights: missing, foreign and wrongly shaped tensors (empty: none),
    the state-dict prefixes `may_lack` and `may_add` aside."""
    expected = model.state_dict()
    unused = tuple(f".{name}" for name in UNUSED_IN_EVAL)
    missing = [k for k in expected if k not in state and not (k.startswith(may_lack) or k.endswith(unused))]
    foreign = [k for k in state if k not in expected and not k.startswith(may_add)]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [(missing, "missing"), (foreign, "unexpected"), (shapes, "wrong shape")]
    return [f"{len(keys)} {what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for keys, what in problems
            if keys]


@dataclasses.dataclass
class Extractor:
    """One loaded suite network: the feature extractor of its nodes and what the report records of it."""

    name: str
    spec: ExtractorSpec
    model: nn.Module  # GraphModule: (B, 3, size, size) normalised images -> {node: features}
    weights: dict  # {"file": repository-relative path, "sha256": hex}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int, antialias: bool = True) -> dict[str, torch.Tensor]:
        """Flattened float32 CPU features (B, D) per suite entry of 256 x 256 images (B, 3, 256, 256) in [0, 1]."""
        device = next(self.model.parameters()).device
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        parts = {entry: [] for entry in self.spec.nodes}
        for start in range(0, len(images), batch):
            x = mindeye_resize(images[start:start + batch].to(device), self.spec.size, antialias)  # (b, 3, size, size)
            out = self.model((x - mean) / std)
            for entry, node in self.spec.nodes.items():
                parts[entry].append(out[node].float().flatten(1).cpu())
        return {entry: torch.cat(feats) for entry, feats in parts.items()}


def mindeye_resize(images: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Float images (B, 3, H, W) -> (B, 3, size, size): torchvision's bilinear Resize, as MindEye (`antialias`:
    torchvision >= 0.17's default for tensors, ATM's; MindEye's torchvision 0.14 did not antialias tensors)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    if images.shape[-2:] == (size, size):
        return images
    return resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=antialias)


def checked_file(path: str, sha256: str, path_key: str, sha256_key: str, root: Path) -> Path:
    """The configured weight file, inside the repository and of the configured sha256 (checked before any read);
    errors name the params `path_key` and `sha256_key`."""
    target = repository_file(path, path_key, root)
    if (got := sha256_file(target)) != sha256:
        raise DataError(f"{target}: sha256 {got} differs from {sha256_key} {sha256}: not the file configured "
                        f"(refused unread); fix the file or the sha256")
    return target


def load_extractor(name: str, path: str, sha256: str, device, root: str | Path | None = None) -> Extractor:
    """Extractor `name` from its weight file: checked (place, sha256), read, matched to the network, traced."""
    from torchvision.models.feature_extraction import create_feature_extractor

    spec, root = SPECS[name], Path(root or REPO_ROOT).resolve()
    key = f"evaluate.suite_weights.{name}"
    target = checked_file(path, sha256, f"{key}.path", f"{key}.sha256", root)
    state = read_state(target, spec.architecture)
    network = build_network(name, state)
    if problems := mismatch(network, state, spec.may_lack, spec.may_add):
        raise DataError(f"{target}: not the {spec.architecture} weights that {key} expects: "
                        f"{'; '.join(problems)}")
    network.load_state_dict({k: v for k, v in state.items() if k in network.state_dict()}, strict=False)
    with warnings.catch_warnings():  # inception: its eval-mode graph is a part of the train-mode one (no aux head)
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        model = create_feature_extractor(network.eval(), return_nodes=list(spec.nodes.values()))
    model = model.eval().requires_grad_(False).to(device)
    return Extractor(name, spec, model, {"file": target.relative_to(root).as_posix(), "sha256": sha256})


def load_extractors(weights, device, root: str | Path | None = None) -> tuple[list[Extractor], dict[str, str]]:
    """The extractors whose files `weights` (evaluate.suite_weights) names, and why each other entry is missing."""
    loaded, missing = [], {}
    for name, spec in SPECS.items():
        entry = getattr(weights, name)
        if entry.path is None:
            why = (f"evaluate.suite_weights.{name}.path is null: set it to a local file of the {spec.architecture} "
                   f"weights inside the repository, and its sha256")
            missing.update(dict.fromkeys(spec.nodes, why))
        else:
            loaded.append(load_extractor(name, entry.path, entry.sha256, device, root))
    return loaded, missing
