"""Audio helpers plugins may use: the DSP core (spectrograms, Griffin-Lim), voice metrics and
synthetic voices."""
