"""Loading a study: the YAML file, `--set` overrides, the file's `scales.<scale>` block and
its plugins, then resolution (`resolve`, `load_study`)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.config.errors import StudyConfigError
from bench.config.resolution import build_study, deep_merge, scale_overlay
from bench.config.resolved import Study
from bench.config.schema import validate_file
from bench.scales import SCALES

MAX_YAML_NODES = 100_000  # a study file has hundreds; aliases may not expand a file beyond this


class YamlRefused(yaml.YAMLError):
    """A YAML text that parses but is refused: a duplicate key, aliases that expand too far."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys and alias bombs, and reads `1e-3` as the float
    everyone means (YAML 1.1 reads it as a string)."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with `<<` may be overridden; keys written twice may not
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it
                if first is not None:
                    raise YamlRefused(
                        f"duplicate key '{key}' (line {first} and line {line}); "
                        "a key may appear once in a mapping"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes in the document once every alias is replaced by what it names (each shared node is
    sized once, so an alias bomb is measured without being expanded)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise YamlRefused("an alias refers to the node that contains it (a recursive structure)")
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    open_.discard(id(node))
    if size > MAX_YAML_NODES:
        raise YamlRefused(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
    sizes[id(node)] = size
    return size


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a study file, or a `StudyConfigError` saying why there is none."""
    path = Path(path)
    if not path.exists():
        raise StudyConfigError(f"study file not found: {path}")
    if path.is_dir():
        raise StudyConfigError(
            f"{path}: is a directory; give a study file such as {path / 'patch_size.yaml'}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyConfigError(
            f"{path}: not a text (UTF-8) file (byte {e.start}); a study file is YAML"
        ) from None
    except OSError as e:
        raise StudyConfigError(f"{path}: cannot read the study file: {e.strerror or e}") from None
    if "\x00" in text:
        raise StudyConfigError(f"{path}: a binary file (it holds NUL bytes); a study file is YAML")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except YamlRefused as e:
        raise StudyConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(
            f"{path}: a study file is a mapping of fields (name, retriever, space, ...), got "
            f"{type(data).__name__}"
        )
    return data


def load_study(path: str | Path, scale: str | None = None, overrides: list[str] | None = None) -> Study:
    """Read, validate and resolve a study file at `scale` (default: the file's own), after
    `overrides` such as "dataset.root=/data/imagenet" (see `apply_overrides`)."""
    path = Path(path)
    return resolve(read_yaml(path), scale=scale, source=str(path), overrides=overrides or [])


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "<study>") -> dict[str, Any]:
    """Set fields from "path.to.field=value" strings (value read as YAML), as `bench run --set`
    does. Below `fixed`, `query` and `space` the rest of the path is one key, so
    "space.dataset.n_total=[128, 256]" sets the `dataset.n_total` dimension."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise StudyConfigError(
                f"{source}: --set {item!r}: write FIELD=VALUE, e.g. dataset.root=/data/imagenet"
            )
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if part in ("fixed", "query", "space", "params") and i + 1 < len(parts):
                parts = parts[: i + 1] + [".".join(parts[i + 1 :])]
                break
        try:
            value = yaml.load(raw, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
        except YamlRefused as e:
            raise StudyConfigError(f"{source}: --set {item!r}: {e}") from None
        except yaml.YAMLError as e:
            raise StudyConfigError(f"{source}: --set {item!r}: the value is not valid YAML: {e}") from None
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def resolve(
    data: dict[str, Any],
    *,
    scale: str | None = None,
    source: str = "<study>",
    overrides: list[str] | None = None,
) -> Study:
    """Validate a study mapping (as read from YAML) and resolve it at `scale`.

    `overrides` ("field=value", as `bench run --set`) win over every layer of the file: they
    are applied after the file's `scales.<scale>` block is merged in (an override of
    `scales.*` itself, or of `scale`, is applied to the file before the merge)."""

    overrides = list(overrides or [])
    early = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] in ("scales", "scale")]
    late = [o for o in overrides if o not in early]
    data = apply_overrides(data, early, source=source)
    reject_non_finite(data, source)
    base = validate_file(data, source)
    scale = scale or base.scale
    if scale not in SCALES:
        where = "--scale" if scale != base.scale else "field `scale`"
        raise StudyConfigError(f"{source}: {where}: unknown scale '{scale}'; allowed: {', '.join(SCALES)}")
    overlay = scale_overlay(base, scale, source)
    study_file = base
    if scale in base.scales or late:
        merged = deep_merge({k: v for k, v in data.items() if k != "scales"}, overlay)
        merged = apply_overrides(merged, late, source=source)
        reject_non_finite(merged, source + " (with --set applied)" if late else source)
        where = [f"`scales.{scale}`"] * (scale in base.scales) + ["--set"] * bool(late)
        study_file = validate_file(merged, f"{source} (with {' and '.join(where)} applied)")
    import_plugins(study_file.plugins, Path(source).parent if source != "<study>" else Path.cwd(), source)
    return build_study(study_file, scale, source)


def reject_non_finite(data: Any, source: str, path: str = "") -> None:
    """A `StudyConfigError` naming the first field that holds NaN or an infinity (`.nan`, `.inf`):
    no setting means them, and a trial would run with them to a meaningless result."""
    if isinstance(data, float) and not math.isfinite(data):
        raise StudyConfigError(f"{source}: field `{path or '(top level)'}`: {data} is not a finite number")
    if isinstance(data, dict):
        for key, value in data.items():
            reject_non_finite(value, source, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            reject_non_finite(value, source, f"{path}.{i}" if path else str(i))


def import_plugins(plugins: list[str], base_dir: Path, source: str) -> None:
    """Import modules (dotted names) or .py files (relative to the study file) that register
    retrievers; each is imported once per process."""
    for entry in plugins:
        try:
            if entry.endswith(".py"):
                path = (base_dir / entry).resolve()
                if not path.exists():
                    raise StudyConfigError(f"{source}: field `plugins`: no file {path}")
                mod_name = "bench_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
                if mod_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(mod_name, None)
                    raise
            else:
                importlib.import_module(entry)
        except StudyConfigError:
            raise
        except Exception as e:
            raise StudyConfigError(
                f"{source}: field `plugins`: cannot import '{entry}': {type(e).__name__}: {e}"
            ) from None
