"""Attribution backends: score image patches against a text query."""

from .base import BACKENDS, AttentionMap, Attributor, create_attributor

__all__ = ["BACKENDS", "AttentionMap", "Attributor", "create_attributor"]
