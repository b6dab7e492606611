"""Reading recipe YAML and applying command-line overrides.

PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*. rmkit's loader adds a float
resolver so scientific notation is always a number, as every ML user expects.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from rmkit.errors import ConfigError


class _Loader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Replace the YAML 1.1 float resolver by one that also accepts "1e-5" and "3E4". The resolver
# table is copied first: it is a class attribute shared with SafeLoader/SafeDumper.
_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx)
        for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, [])
        if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def load_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Load a recipe file into a dict. Relative paths inside stay relative to the recipe."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"recipe not found: {path}",
            hint="give a path to a .yaml file, e.g. recipes/tiny/sft.yaml",
        )
    data = load_yaml(p.read_text(encoding="utf-8"), str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: a recipe must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key.path=value", hint="e.g. optim.lr=1e-5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key", hint="e.g. optim.lr=1e-5")
    value = load_yaml(raw, f"override {key}") if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` set (intermediate dicts created)."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            if isinstance(node, list):
                node = _list_item(node, part, text)
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = nxt
        if isinstance(node, list):
            idx = _list_index(node, path[-1], text)
            node[idx] = value
        else:
            node[path[-1]] = value
    return out


def _list_index(node: list, part: str, text: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override '{text}': '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _list_item(node: list, part: str, text: str) -> Any:
    return node[_list_index(node, part, text)]
