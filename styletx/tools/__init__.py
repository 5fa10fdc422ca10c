"""Tools built on the engine for particular model kinds (the latent space of VAE/GAN runs)."""
