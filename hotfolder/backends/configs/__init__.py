"""The published configurations of the real models, as small JSON files, and how to build a model from them.

One folder per architecture (`ltx-2`, `ltx-2.3`, `ltx-2.5`, `ltx-video`), one file per component
(`transformer.json`, `text_encoder.json`, ...), each with a `_source` key naming where its values
were copied from. They are what `backends/memory.py`'s parameter table is proven against
(tests/test_meta_params.py builds every component on the `meta` device: no memory, no weights)
and what `bench/gpu.py` builds at real size with random weights (the classes' own initialisation).
Reading a file is cheap; `build` imports torch, diffusers and transformers: only the test and the
benchmark call it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# The class of each component, by the name Diffusers gives it in model_index.json.
_DIFFUSERS = {"transformer", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler"}


def architectures() -> list[str]:
    """The architectures whose configurations are committed here."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def components(arch: str) -> list[str]:
    """The components of `arch` with a committed configuration."""
    folder = resources.files(__name__) / arch
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load(arch: str, component: str) -> dict[str, Any]:
    """The configuration of one component, as published (with `_source` and `_class_name`)."""
    text = (resources.files(__name__) / arch / f"{component}.json").read_text(encoding="utf-8")
    return json.loads(text)


def build(arch: str, component: str, *, device: str = "meta", dtype: Any = None) -> Any:
    """The component built from its configuration on `device`, in eval mode.

    On `meta`: shapes only, no memory (what the parameter counts are taken from). On a real device:
    the real size with the classes' own random initialisation, created in `dtype` directly (no float32
    copy first), for `bench/gpu.py`.
    """
    import torch

    config = load(arch, component)
    class_name = config["_class_name"]
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    default = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if component in _DIFFUSERS:
                import diffusers

                cls = getattr(diffusers, class_name, None)
                if cls is None:
                    from diffusers.pipelines import ltx2

                    cls = getattr(ltx2, class_name)
                model = cls.from_config(kwargs)
            else:
                import transformers

                cls = getattr(transformers, class_name)
                settings = {k: v for k, v in kwargs.items() if k not in ("model_type", "architectures")}
                model = cls(transformers.AutoConfig.for_model(kwargs["model_type"], **settings))
    finally:
        torch.set_default_dtype(default)
    if dtype is not None and device != "meta":
        model = model.to(dtype)
    return model.eval()


def count(arch: str, component: str) -> int:
    """Parameters of one component, counted on the meta device."""
    model = build(arch, component)
    return sum(p.numel() for p in model.parameters())
