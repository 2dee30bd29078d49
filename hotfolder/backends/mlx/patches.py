"""Workarounds for defects upstream of the MLX backend, and the probes that say they are still needed.

Defects worked around (mlx-video-with-audio 0.1.37, mlx 0.32.4), and where:
- rms_norm: mlx_video.utils.rms_norm is compiled shapeless with a weight built from the
  first call's width; the transformer calls it at two widths (video, audio), which crashes
  on the CPU. Replaced by mx.fast.rms_norm(x, None, eps) (apply_rms_norm_fix, here).
- writer: its OpenCV 'avc1' writer fails silently on Linux and its ffmpeg mux uses
  -shortest from PATH. Never used: the Clip goes to the project's media code (backend.py).
- strict=False: every loader keeps missing weights random. Checked (weights._WeightAudit).
- downloads: loaders fall back to the network. Never reached (weights._resolve).
- mlx: a thread that used MLX must call mx.clear_streams() before it ends (backend._MlxThread).

Cheap to import: mlx is imported inside the functions.
"""

from __future__ import annotations


def _rms_norm_fixed(x, eps: float = 1e-6):
    import mlx.core as mx

    return mx.fast.rms_norm(x, None, eps)


def apply_rms_norm_fix() -> None:
    """Swap the package's broken compiled `rms_norm` in the modules that call it (idempotent)."""
    from mlx_video.models.ltx import text_encoder, transformer

    text_encoder.rms_norm = _rms_norm_fixed
    transformer.rms_norm = _rms_norm_fixed


def upstream_rms_norm_is_broken() -> bool:
    """Probe the package's own `mlx_video.utils.rms_norm`: narrow first, then wide.

    That order fails on the CPU (a broadcast error) and reads past the weight on
    a GPU. Float16 5-D inputs keep the compiled function's cache entries for the
    pipeline's shapes untouched. True while the upstream bug exists.
    """
    import mlx.core as mx
    from mlx_video.utils import rms_norm

    narrow = mx.full((1, 1, 1, 2, 4), 3.0, dtype=mx.float16)
    wide = mx.full((1, 1, 1, 2, 8), 3.0, dtype=mx.float16)
    try:
        mx.eval(rms_norm(narrow))
        out = rms_norm(wide)
        mx.eval(out)
    except Exception:
        return True
    return tuple(out.shape) != tuple(wide.shape) or not mx.allclose(out, mx.ones_like(wide), atol=1e-2).item()
