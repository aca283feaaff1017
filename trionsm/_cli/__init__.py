"""The ``trionsm`` sub-commands, one module each; :mod:`trionsm.cli` parses and dispatches."""
