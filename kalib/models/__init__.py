"""Block-decomposed backbones (paper Eq. 3, design.md §1)."""
from .blocknet import ARCHS, BlockNet, build_backbone

__all__ = ["ARCHS", "BlockNet", "build_backbone"]
