"""The ``scoresde`` commands besides LightningCLI's ``fit``/``validate``/``test``: one module each, with a typed
config, a task and a merge; what they share lives in :mod:`._common`."""
