"""Model registry: `@register_model("name")` on a model class, `create_model(name, ...)` to build.

Each registered class carries a dataclass `config_class`; `create_model` builds that config from
keyword arguments (unknown keys are an error, never silently ignored) and instantiates the model.
Each entry also records a tiny configuration so that the shared conformance tests can run every
registered model in seconds (the diffusers habit).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

_REGISTRY: dict[str, "ModelEntry"] = {}

T = TypeVar("T")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type
    description: str
    tiny: dict[str, Any] = field(default_factory=dict)
    modality: str = "image"  # "image" or "video"
    #: named tiny variants (hyperparameters over `tiny`) the conformance suite also runs
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


def register_model(
    name: str, *, tiny: dict[str, Any] | None = None, description: str = "", modality: str = "image",
    variants: dict[str, dict[str, Any]] | None = None,
) -> Callable[[T], T]:
    """Class decorator that registers a model under `name` (must be unique).

    `variants`: named sets of hyperparameters over `tiny` (e.g. other attention patterns) that the
    conformance suite runs as well, so every configuration path of a family is checked.
    """

    def deco(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].cls!r}")
        if not hasattr(cls, "config_class"):
            raise TypeError(f"{cls!r} needs a `config_class` dataclass attribute to be registered")
        doc = description or next(iter((cls.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = ModelEntry(name, cls, doc, dict(tiny or {}), modality, {k: dict(v) for k, v in (variants or {}).items()})
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _ensure_models_imported() -> None:
    # Importing the models package runs every @register_model decorator once.
    import argen.models  # noqa: F401


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _ensure_models_imported()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_models_imported()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_config(name: str, **kwargs: Any) -> Any:
    """Build the config dataclass of model `name` from keyword arguments, rejecting unknown keys.

    Values are checked (by type and range) when the model validates the config, not converted.
    """
    entry = get_entry(name)
    cfg_cls = entry.cls.config_class
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for model {name!r}; expected some of {sorted(known)}")
    # No conversion here: the config keeps what it was given (JSON lists become tuples in its
    # __post_init__) and `validate` rejects wrong types, e.g. image_shape=(1, 2.5, 8).
    return cfg_cls(**kwargs)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model: `create_model("pixelcnn", image_shape=(1, 28, 28), levels=256)`."""
    entry = get_entry(name)
    return entry.cls(build_config(name, **kwargs))


def tiny_kwargs(name: str) -> dict[str, Any]:
    """The tiny configuration a model registered for tests (hyperparameters only)."""
    return dict(get_entry(name).tiny)


def tiny_variants(name: str) -> dict[str, dict[str, Any]]:
    """The tiny configuration ("") and each registered variant, as full hyperparameter dicts."""
    entry = get_entry(name)
    return {"": dict(entry.tiny), **{k: {**entry.tiny, **v} for k, v in entry.variants.items()}}
