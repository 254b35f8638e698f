"""The ``crowdtrain`` command: ``app.py`` registers one module per subcommand
(``coordinator.py``, ``join.py``, ``status.py``, ``demo.py``); ``common.py`` holds shared options."""
