"""Independent reference implementations that the fast code in ``stm_core`` is checked against.

Each module here is written from a spec in ``shared/spec/`` and shares no code with ``stm_core``.
"""
