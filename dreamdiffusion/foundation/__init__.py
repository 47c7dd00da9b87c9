"""Foundation models (Stable Diffusion, CLIP, the judges): real by id, miniature by default.

Later stages use only `load_foundation(models/foundation) -> Foundation`.
"""
from .config import FoundationConfig
from .load import Foundation, load_foundation

__all__ = ["Foundation", "FoundationConfig", "load_foundation"]
