"""Standard knowledge-update benchmarks (CounterFact, zsRE/KnowEdit, TOFU) as data sources.

One module per published format, each a pure converter ``records -> Converted`` (KB v0, KB v1,
questions by split); :mod:`.convert` caches the result as an ordinary update folder, which the
pipeline loads like any other -- it never knows which dataset it runs.
"""

from updatelab.data.formats.convert import CONVERTERS, ensure_converted

FORMATS = tuple(CONVERTERS)

__all__ = ["CONVERTERS", "FORMATS", "ensure_converted"]
