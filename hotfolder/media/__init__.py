"""Media: the clip a backend returns, ffmpeg (encode, GIF, thumbnail, probe, soundtrack), fitting, narration.

`from hotfolder import media` gives the ffmpeg functions and the fits by name, so
callers need not know which file of the package holds which.
"""

from hotfolder.media.clip import Clip
from hotfolder.media.ffmpeg import (
    ENCODE_TIMEOUT_S,
    TIMEOUT_S,
    AudioInfo,
    MediaError,
    MediaInfo,
    VideoInfo,
    encode_mp4,
    ffmpeg_exe,
    is_faststart,
    make_gif,
    make_thumbnail,
    mix_audio,
    probe,
    replace_audio,
    write_wav,
)
from hotfolder.media.fit import MIX_RATE, cover_crop_box, describe_fit, describe_image_fit, fit_audio, fit_image

__all__ = [
    "ENCODE_TIMEOUT_S", "MIX_RATE", "TIMEOUT_S", "AudioInfo", "Clip", "MediaError", "MediaInfo", "VideoInfo",
    "cover_crop_box", "describe_fit", "describe_image_fit", "encode_mp4", "ffmpeg_exe", "fit_audio", "fit_image",
    "is_faststart", "make_gif", "make_thumbnail", "mix_audio", "probe", "replace_audio", "write_wav",
]
