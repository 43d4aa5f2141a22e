"""JSON Schemas of the diagnostics files, owned here so that writers, ``report`` and tests agree.

``report`` validates the files it reads, so a hand-edited or truncated file gives one line naming the file
and the field, not a KeyError from deep inside a plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from prunelight.errors import ConfigError

_NUMBER = {"type": "number"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_STATS = {s: _NUMBER for s in ("mean", "std", "norm", "min", "max")}

_GRADIENT = {
    "type": ["object", "null"],
    "required": [*_STATS, "elements", "passes"],
    "properties": {**_STATS, "elements": {"type": "integer"}, "passes": {"type": "integer"}},
}
_IMPORTANCE = {
    "type": "object",
    "required": [*_STATS, "groups", "histogram"],
    "properties": {
        **_STATS,
        "groups": {"type": "integer", "minimum": 1},
        "histogram": {
            "type": "object",
            "required": ["edges", "counts"],
            "properties": {
                "edges": {"type": "array", "items": _NUMBER, "minItems": 2},
                "counts": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            },
        },
    },
}
_KIND = {
    "type": "object",
    "required": ["gradient", "importance", "rate"],
    "properties": {
        "gradient": _GRADIENT,
        "importance": _IMPORTANCE,
        "rate": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

GRADIENT_STATISTICS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "analysis/gradient_statistics.json",
    "type": "object",
    "required": ["schema", "criterion", "gradients_collected", "calibration_loss", "num_layers", "layers"],
    "properties": {
        "schema": {"const": "prunelight/gradient_statistics/1"},
        "criterion": {"type": "string"},
        "gradients_collected": {"type": "boolean"},
        "calibration_loss": _NULLABLE_NUMBER,
        "num_layers": {"type": "integer", "minimum": 1},
        "layers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["layer", "attention", "mlp"],
                "properties": {"layer": {"type": "integer", "minimum": 0}, "attention": _KIND, "mlp": _KIND},
            },
        },
    },
}

_LAYER_LIST = {"type": "array", "items": {"type": "integer", "minimum": 0}}

GRADIENT_DIAGNOSIS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "analysis/gradient_diagnosis.json",
    "type": "object",
    "required": ["schema", "status", "summary", "counts", "issues", "checks", "settings"],
    "properties": {
        "schema": {"const": "prunelight/gradient_diagnosis/1"},
        "status": {"enum": ["no_issues", "issues_found"]},
        "summary": {"type": "string", "minLength": 1},
        "counts": {
            "type": "object",
            "required": ["error", "warning", "info"],
            "additionalProperties": {"type": "integer", "minimum": 0},
        },
        "issues": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "severity", "kind", "layers", "evidence", "message", "recommendation"],
                "properties": {
                    "id": {
                        "enum": [
                            "calibration_loss_not_finite",
                            "non_finite_gradients",
                            "vanishing_gradients",
                            "exploding_gradients",
                            "scale_spread",
                            "many_layers_over_pruned",
                            "early_layers_over_pruned",
                        ]
                    },
                    "severity": {"enum": ["error", "warning", "info"]},
                    "kind": {"enum": ["attention", "mlp", None]},
                    "layers": _LAYER_LIST,
                    "evidence": {"type": "object"},
                    "message": {"type": "string", "minLength": 1},
                    "recommendation": {"type": "string", "minLength": 1},
                },
            },
        },
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "status", "reason"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["passed", "failed", "skipped"]},
                    "reason": {"type": ["string", "null"]},
                },
            },
        },
        "settings": {"type": "object"},
    },
}

_ERRORS = {
    "type": ["object", "null"],
    "required": ["before", "after"],
    "properties": {"before": _NUMBER, "after": _NUMBER},
}

RECONSTRUCTION = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "analysis/reconstruction.json",
    "type": "object",
    "required": ["method", "damping", "layers"],
    "properties": {
        "method": {"type": "string"},
        "damping": {"type": "number", "minimum": 0},
        "layer_map": {"enum": ["none", "lsq"]},
        "layers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["layer", "removed"],
                "properties": {
                    "layer": {"type": "integer", "minimum": 0},
                    "removed": {"type": "boolean"},
                    "o": _ERRORS,
                    "down": _ERRORS,
                    "map": {
                        "type": "object",
                        "required": ["span"],
                        "properties": {
                            "span": {
                                "type": "array",
                                "items": {"type": "integer", "minimum": 0},
                                "minItems": 2,
                                "maxItems": 2,
                            },
                            "into_layer": {"type": "integer", "minimum": 0},
                            "before": _NUMBER,
                            "after": _NUMBER,
                            "skipped": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "gradient_statistics": GRADIENT_STATISTICS,
    "gradient_diagnosis": GRADIENT_DIAGNOSIS,
    "reconstruction": RECONSTRUCTION,
}


def validate(name: str, data: Any, source: str | Path | None = None) -> None:
    """Raise a :class:`ConfigError` naming the file and the offending field if ``data`` breaks the schema."""
    try:
        jsonschema.validate(data, SCHEMAS[name])
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{source or name}: {where}: {err.message}") from None


def load(path: Path, name: str | None = None) -> Any:
    """Read a JSON file of a run, validated when it has a schema; a missing file is a clear error."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {path.parent.parent} a finished prunelight prune run?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err})") from None
    if name is not None:
        validate(name, data, path)
    return data
