"""The caller side of a run: the engine that hands ready units to a backend and collects their
outcomes, the store of results a resumed run reloads, the futures of ``submit`` and ``map``."""
