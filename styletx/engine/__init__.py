"""The engine: run folders, training, conversion, evaluation and export, driving the plugins
only through the contract (``styletx.contract``)."""
