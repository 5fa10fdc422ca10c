"""styletx's built-in plugins. They register through the same hooks as third-party ones."""

BUILTIN_PLUGINS = [
    "styletx.plugins.image",
    "styletx.plugins.audio",
    "styletx.plugins.world",
    "styletx.plugins.cyclegan",
    "styletx.plugins.pix2pix",
    "styletx.plugins.vaegan",
    "styletx.plugins.match",
]
