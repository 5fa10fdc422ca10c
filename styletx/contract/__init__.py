"""The plugin contract: the three interfaces (domain, encoder, translator), the hooks a plugin
implements, plugin discovery, and the errors a plugin raises to show the user one line."""
