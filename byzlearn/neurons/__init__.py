"""Robust learning machines: how many neurons and synapses of a network can fail?

References (El Mhamdi et al.):

* *When Neurons Fail*, El Mhamdi & Guerraoui, IPDPS 2017 (arXiv 1706.08884): the worst-case
  Forward Error Propagation (FEP) bound for crashed and Byzantine neurons and synapses
  (:mod:`byzlearn.neurons.fep`).
* *On the Robustness of a Neural Network*, El Mhamdi, Guerraoui & Rouault, SRDS 2017: expected
  error under random crashes (:func:`expected_error_recursion`).
* *The Probabilistic Fault Tolerance of Neural Networks in the Continuous Limit*, El Mhamdi,
  Guerraoui, Kucharavy & Volodin (arXiv 1902.01686): the b3/b4 estimates, (ε, δ) certification
  (Algorithm 1) and fault-tolerance regularisers (:mod:`byzlearn.neurons.probabilistic`,
  :mod:`byzlearn.neurons.train`).

>>> import torch
>>> from torch import nn
>>> import byzlearn.neurons as bn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
>>> net = bn.extract_network(model)
>>> bound = bn.fep_bound(net, neurons=[1])            # one crashed neuron in hidden layer 0
>>> worst = bn.worst_case_search(net, torch.rand(16, 4), neurons=[1]).error
>>> worst <= bound
True

Hidden layers are indexed from 0; see ``docs/neurons.md``.
"""

from byzlearn.neurons.activations import (
    ActivationInfo,
    CrashDropout,
    DeclaredActivation,
    ScaledSigmoid,
)
from byzlearn.neurons.fep import fep_bound, max_failures, neuron_error, paper_fep, tolerates
from byzlearn.neurons.inject import (
    InjectionStats,
    WorstCase,
    confidence_interval,
    evaluate_configs,
    module_faults,
    output_error,
    random_faults,
    with_crashed_synapses,
    worst_case_search,
)
from byzlearn.neurons.modelfile import (
    ModelFileError,
    architectures,
    build_architecture,
    load_pickled_module,
    load_state_dict_file,
    load_weights,
    save_state_dict_file,
)
from byzlearn.neurons.network import HiddenLayerError, Layer, Network, extract_network
from byzlearn.neurons.probabilistic import (
    Certificate,
    Moments,
    algorithm1_conditions,
    b3,
    b4,
    certify,
    compare_estimates,
    crash_moment_bound,
    expected_error_recursion,
    failure_frequency,
    layer_gain,
    layer_jacobian,
    median_of_repeats,
    median_repeats_needed,
    monte_carlo,
)
from byzlearn.neurons.train import (
    ACTIVATIONS,
    LOSSES,
    crash_report,
    load_digits_data,
    make_mlp,
    strip_crash_dropout,
    synthetic_data,
    train_mlp,
)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "ActivationInfo",
    "Certificate",
    "CrashDropout",
    "DeclaredActivation",
    "HiddenLayerError",
    "InjectionStats",
    "Layer",
    "ModelFileError",
    "Moments",
    "Network",
    "ScaledSigmoid",
    "WorstCase",
    "algorithm1_conditions",
    "architectures",
    "b3",
    "b4",
    "build_architecture",
    "certify",
    "compare_estimates",
    "confidence_interval",
    "crash_moment_bound",
    "crash_report",
    "evaluate_configs",
    "expected_error_recursion",
    "extract_network",
    "failure_frequency",
    "fep_bound",
    "layer_gain",
    "layer_jacobian",
    "load_digits_data",
    "load_pickled_module",
    "load_state_dict_file",
    "load_weights",
    "make_mlp",
    "max_failures",
    "median_of_repeats",
    "median_repeats_needed",
    "module_faults",
    "monte_carlo",
    "neuron_error",
    "output_error",
    "paper_fep",
    "random_faults",
    "save_state_dict_file",
    "strip_crash_dropout",
    "synthetic_data",
    "tolerates",
    "train_mlp",
    "with_crashed_synapses",
    "worst_case_search",
]
