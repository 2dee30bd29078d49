"""Loading real checkpoints, proven as far as a machine without them allows: every component of every Diffusers
model, built from its PUBLISHED configuration on the `meta` device (shapes only: no memory, no weights), has the
parameter count the memory table (`backends/memory.py`) says, and the counts are the published sizes.

A wrong configuration, a class that ignores a key, or a table that drifted from the configurations fails here,
not on a user's machine after a 40 GB download. The configurations are committed under
`hotfolder/backends/configs/<architecture>/<component>.json`, each with the `_source` it was copied from.

Not covered (no configuration could be had offline): LTX-2.5's Gemma 4 text encoder and its text connectors
(their sizes follow from Gemma 4's config); `memory.ASSUMED` takes LTX-2.3's, and `models list` marks them "~".
"""

from __future__ import annotations

import inspect

import pytest

from hotfolder.backends import configs, memory
from hotfolder.config import BUILTIN_MODELS

COMPONENTS = [(arch, component) for arch in configs.architectures() for component in configs.components(arch)]


def test_every_architecture_of_the_memory_table_has_its_configurations_committed() -> None:
    assert configs.architectures() == sorted(memory.PARAMS)
    for arch, counted in memory.PARAMS.items():
        assert sorted(counted) == configs.components(arch), arch  # one truth: a count for each config, no more


@pytest.mark.parametrize("arch, component", COMPONENTS, ids=[f"{a}/{c}" for a, c in COMPONENTS])
def test_the_table_is_the_meta_device_count_of_the_published_configuration(arch: str, component: str) -> None:
    config = configs.load(arch, component)
    assert config["_source"], "each configuration says where its values come from"
    model = configs.build(arch, component)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated
    counted = sum(p.numel() for p in model.parameters())
    assert memory.PARAMS[arch][component] == counted, (arch, component, f"{counted:,}")

    if "model_type" not in config:  # a Diffusers class: each key of the configuration is one it takes
        accepted = set(inspect.signature(type(model).__init__).parameters)
        ignored = sorted(k for k in config if not k.startswith("_") and k not in accepted)
        assert ignored == [], f"{type(model).__name__} ignores {ignored}: a wrong class or configuration"


@pytest.mark.parametrize("arch, parts, billions, what", memory.PUBLISHED, ids=[p[3] for p in memory.PUBLISHED])
def test_the_counts_are_the_published_sizes(arch: str, parts: tuple[str, ...], billions: float, what: str) -> None:
    total = sum(memory.PARAMS[arch][p] for p in parts)
    assert abs(total / 1e9 - billions) <= 0.05 * billions, f"{what}: {' + '.join(parts)} is {total / 1e9:.2f}B"


def test_ltx_2_5s_transformer_is_ltx_2_3s_without_the_video_feed_forward_biases() -> None:
    """What the Diffusers conversion says of 2.5: 2.3's transformer, its video feed-forward without biases
    (4 x 4096 in, 4096 out, in each of 48 blocks) and one learned keyframe embedding (4096)."""
    dim, layers = 32 * 128, 48
    difference = memory.PARAMS["ltx-2.3"]["transformer"] - memory.PARAMS["ltx-2.5"]["transformer"]
    assert difference == layers * (4 * dim + dim) - dim


@pytest.mark.parametrize("name", [n for n, m in BUILTIN_MODELS.items() if not m.tiny])
def test_every_real_model_of_the_table_has_a_proven_architecture(name: str) -> None:
    """Read from the model table at run time: a model added there without its configurations fails here."""
    model = BUILTIN_MODELS[name]
    arch = memory.architecture(model)
    assert arch in memory.PARAMS, (name, arch)
    assert "transformer" in memory.PARAMS[arch] and "vae" in memory.PARAMS[arch]
    if model.family == "ltx":
        assert arch == "ltx-video"
    else:
        assert arch.startswith("ltx-2") and "audio_vae" in memory.PARAMS[arch] and "vocoder" in memory.PARAMS[arch]
    counts, proven = memory.params(arch)
    assert proven == (arch not in memory.ASSUMED)
    assert {"transformer", "text_encoder", "vae"} <= set(counts)


def test_a_distilled_checkpoint_has_its_base_models_architecture() -> None:
    distilled = [m for m in BUILTIN_MODELS.values() if getattr(m, "distilled", False) and not m.tiny]
    assert distilled, "the table has distilled models"
    for model in distilled:
        arch = memory.architecture(model)
        version = getattr(model, "version", "2") or "2"
        assert arch == f"ltx-{version}", (model.name, arch)
