"""Paper studies: the field's key results, reproduced from one command.

>>> from byzlearn.studies import names, run_study
>>> names()                                           # doctest: +SKIP
['kardam-2018', 'krum-2017', 'leeway-2018', 'servers-2020']
>>> report, analysis = run_study("krum-2017", "small", "studies/krum-2017")  # doctest: +SKIP

Each study runs a packaged, resumable set of runs at a scale (``tiny``, ``small``: the default,
``paper``) and writes ``report.md`` with figures, a table, the paper's claim and a verdict. See
``docs/studies/``.
"""

from byzlearn.studies import papers as _papers  # noqa: F401  (registers the studies)
from byzlearn.studies.base import SCALES, STUDIES, Analysis, Study, StudyRun, run_study

__all__ = ["SCALES", "STUDIES", "Analysis", "Study", "StudyRun", "names", "run_study"]


def names() -> list[str]:
    """The studies available."""
    return STUDIES.names()
