"""Implementations of the registered rules; import the public ones from byzlearn.aggregators."""

from byzlearn.aggregators.rules import (  # noqa: F401  (importing registers them)
    bulyan,
    clipping,
    coordinatewise,
    filters,
    geometric_median,
    krum,
    mda,
    mixing,
)
