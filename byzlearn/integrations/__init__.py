"""Bridges to other federated-learning frameworks (optional extras).

- :mod:`byzlearn.integrations.flower`: byzlearn's rules as a Flower strategy, Byzantine Flower
  clients for simulations and an in-process grid (``pip install -e ".[flower]"``).
"""
