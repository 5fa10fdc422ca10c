"""Audio helpers plugins may use: the audio sample, the DSP core and voice metrics.

    from styletx.audio import AudioSample     # float32 mono wave (samples,), its rate
    from styletx.audio import SpectrogramEncoder  # base of normalised log-spectrogram encoders
    from styletx.audio import resampled, resampled_length, scaled_output  # for other voice
    #                                                encoders (world's)
    from styletx.audio import is_silent  # no sample above -80 dBFS
    from styletx.audio import encoding_wave, LEVEL_DB  # a wave at one speech level, to encode
    from styletx.audio import pieces_at_pauses, joined  # long recordings converted in pieces
    from styletx.audio.dsp import stft_magnitude, mel_filterbank, mel_to_linear, griffinlim
    from styletx.audio.metrics import mcd, log_f0_rmse
    from styletx.audio.decoder import MelToLinear, fit_mel_decoder  # learned mel decoder
    from styletx.audio.vocoder import world_resynthesis, moved_f0  # WORLD (needs pyworld)
    from styletx.audio.matching import FrameMatching  # frames pulled onto a voice's own
"""

from styletx.audio.encoder import (
    FEATURE_DEFAULTS,
    LEVEL_DB,
    NORMALIZE,
    SpectrogramEncoder,
    encoding_wave,
    is_silent,
    match_loudness,
    resampled,
    resampled_length,
    scaled_output,
)
from styletx.audio.sample import AudioSample, joined, pieces_at_pauses

__all__ = ["AudioSample", "FEATURE_DEFAULTS", "LEVEL_DB", "NORMALIZE", "SpectrogramEncoder",
           "encoding_wave", "is_silent", "joined", "match_loudness", "pieces_at_pauses",
           "resampled", "resampled_length", "scaled_output"]
