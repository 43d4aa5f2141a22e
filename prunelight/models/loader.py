"""Turn a :class:`ModelSpec` into a model, a tokenizer and the family adapter.

Resolution order for ``spec.path``: a zoo name, an existing local folder or ``.gguf`` file, a
path-looking string that does not exist (an error), and otherwise a hub id. Every check that can fail on
user input runs on the config alone, before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunelight.errors import ModelError
from prunelight.hub import hub_status
from prunelight.models import zoo
from prunelight.models.adapters import FamilyAdapter, adapter_for
from prunelight.models.checkpoint import check_folder, check_gguf_file, check_tokenizer_files
from prunelight.models.gguf import drop_quantization_config, gguf_tokenizer, require_gguf
from prunelight.models.spec import ModelSpec


@dataclass(frozen=True)
class Source:
    """Where the files of a spec are: ``location`` is a local folder or a hub id."""

    location: str
    gguf_file: str | None
    local: bool

    def kwargs(self, spec: ModelSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
        if self.gguf_file:
            out["gguf_file"] = self.gguf_file
        if spec.revision and not self.local:
            out["revision"] = spec.revision
        return out


def resolve(spec: ModelSpec) -> Source:
    path = spec.path
    if path in zoo.ZOO:
        return Source(str(zoo.ensure(path)), spec.gguf_file, True)
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise ModelError(
                f"{path} is a file but not a .gguf checkpoint; give a Hugging Face folder instead"
            )
        check_gguf_file(local)
        return Source(str(local.parent), local.name, True)
    if local.is_dir():
        if spec.gguf_file:
            if not (local / spec.gguf_file).is_file():
                raise ModelError(f"gguf_file {spec.gguf_file!r} not found in {local}")
            check_gguf_file(local / spec.gguf_file)
        elif not (local / "config.json").is_file():
            raise ModelError(
                f"{local} has no config.json, so it is not a Hugging Face model folder; "
                "give a folder written "
                "by save_pretrained, a .gguf file, a hub id, or a zoo name "
                f"({', '.join(sorted(zoo.ZOO))})"
            )
        return Source(str(local), spec.gguf_file, True)
    if _looks_like_path(path):
        raise ModelError(
            f"model path {path!r} does not exist; give an existing folder or .gguf file, a hub id "
            f"(org/name), or a zoo name ({', '.join(sorted(zoo.ZOO))})"
        )
    hub_status()  # a hub id: decide once whether the hub answers (offline: the local HF cache only)
    return Source(path, spec.gguf_file, False)


def _looks_like_path(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or path.endswith(".gguf") or "\\" in path


def load_config(spec: ModelSpec, source: Source | None = None) -> Any:
    source = source or resolve(spec)
    if source.gguf_file:
        require_gguf(source.gguf_file)
    try:
        return AutoConfig.from_pretrained(source.location, **source.kwargs(spec))
    except (OSError, ValueError, KeyError) as err:  # no/corrupt config.json, unknown model_type, bad GGUF
        hint = ""
        if not source.local:
            status = hub_status()
            hint = (
                f" ({status.describe()}: use a local folder, a .gguf file or a zoo name)"
                if not status.reachable
                else " (a hub id must name an existing model repository)"
            )
        raise ModelError(f"could not read the config of {spec.path!r}: {_first_line(err)}{hint}") from None


def check_checkpoint(source: Source, config: Any) -> None:
    """A local folder's weights are there, complete and of ``config``'s shapes (from the headers only)."""
    if source.local and not source.gguf_file:
        check_folder(Path(source.location), config)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_tokenizer(spec: ModelSpec, source: Source | None = None) -> PreTrainedTokenizerBase:
    source = source or resolve(spec)
    if source.local and not source.gguf_file:
        check_tokenizer_files(Path(source.location))
    try:
        if source.local and source.gguf_file:  # some GGUF vocabularies transformers rebuilds wrongly
            tokenizer = gguf_tokenizer(Path(source.location) / source.gguf_file)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs(spec))
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(
            f"could not load the tokenizer of {spec.path!r}: {_first_line(err)}; a model folder needs its "
            "tokenizer files: copy those of the model it came from (tokenizer.save_pretrained(folder))"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: FamilyAdapter
    spec: ModelSpec


def load(spec: ModelSpec | str | None = None, **overrides: Any) -> LoadedModel:
    """Load a causal LM with its tokenizer and family adapter.

    ``load("smollm2-135m", dtype="bfloat16")`` and ``load(ModelSpec(...))`` are the same call. The family is
    checked from the config before the weights are read, so an unsupported model fails in a second.
    """
    if spec is None or isinstance(spec, str):
        spec = ModelSpec(**({"path": spec} if spec else {}), **overrides)
    elif overrides:
        spec = replace(spec, **overrides)
    source = resolve(spec)
    config = load_config(spec, source)
    adapter = adapter_for(config)
    check_checkpoint(source, config)
    model = load_weights(spec, source)
    return LoadedModel(model, load_tokenizer(spec, source), adapter, spec)


def load_weights(spec: ModelSpec, source: Source | None = None) -> PreTrainedModel:
    source = source or resolve(spec)
    kwargs = source.kwargs(spec)
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=spec.torch_dtype(), **kwargs)
    except (OSError, SafetensorError) as err:  # what check_checkpoint cannot see: a hub id's files
        raise ModelError(f"could not load the weights of {spec.path!r}: {_first_line(err)}") from None
    if source.gguf_file:
        drop_quantization_config(model)
    model.eval()
    return model
