"""Block-decomposed backbones (paper Eq. 3, docs/design.md §1)."""
from .blocknet import ARCHS, BlockNet, build_backbone

__all__ = ["ARCHS", "BlockNet", "build_backbone"]
