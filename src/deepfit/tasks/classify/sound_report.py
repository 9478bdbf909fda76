"""What a sound classifier's report shows of a clip: its spectrogram, as the network saw it, and a player to hear it.

Both are embedded in the HTML page (a PNG and a 16-bit WAV as data URIs), so report.html stays one file that can be
mailed or archived: a clip of one second at 16 kHz adds about 40 KB.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepfit.errors import DataError
from deepfit.modalities.sound.frontend import FrontEndConfig, LogMel
from deepfit.modalities.sound.io import fit_length, read_audio
from deepfit.report.html import esc


def spectrogram_png(picture: np.ndarray) -> bytes:
    """A (bins, frames) spectrogram as a small PNG, low frequencies at the bottom."""
    fig = Figure(figsize=(2.2, 1.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(picture, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_axis_off()
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def clip_media(frontend: FrontEndConfig, samples: int, channels: int = 1) -> Callable[[str], str | None]:
    """path -> the HTML of a report card's picture: the clip's spectrogram and an audio player; None if unreadable."""
    layer = LogMel(frontend)

    def media(path: str) -> str | None:
        try:
            wave = fit_length(read_audio(path, frontend.sample_rate, channels=channels), samples)  # (C, T)
        except DataError:
            return None
        with torch.inference_mode():
            picture = layer(torch.from_numpy(np.ascontiguousarray(wave))[None])[0, 0].numpy()  # (bins, frames)
        sound = io.BytesIO()
        soundfile.write(sound, wave.T, frontend.sample_rate, format="WAV", subtype="PCM_16")
        png = base64.b64encode(spectrogram_png(picture)).decode()
        wav = base64.b64encode(sound.getvalue()).decode()
        name = esc(Path(path).name)
        return (f'<img src="data:image/png;base64,{png}" alt="spectrogram of {name}">'
                f'<audio controls preload="none" style="width:100%" src="data:audio/wav;base64,{wav}"></audio>')

    return media
