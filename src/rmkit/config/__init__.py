"""Recipe loading, ``key.path=value`` overrides and typed, validated configs."""

from rmkit.config.loader import apply_overrides, load_recipe, load_yaml, parse_override
from rmkit.config.validate import StrictModel, validate_config

__all__ = [
    "StrictModel",
    "apply_overrides",
    "load_recipe",
    "load_yaml",
    "parse_override",
    "validate_config",
]
