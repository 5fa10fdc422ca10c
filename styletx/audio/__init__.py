"""Audio helpers plugins may use: the audio sample, the DSP core and voice metrics.

    from styletx.audio import AudioSample     # float32 mono wave (samples,), its rate
    from styletx.audio.dsp import stft_magnitude, mel_filterbank, mel_to_linear, griffinlim
    from styletx.audio.metrics import mcd, log_f0_rmse
"""

from styletx.audio.sample import AudioSample

__all__ = ["AudioSample"]
