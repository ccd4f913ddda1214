"""kalib: Amalgamating Filtered Knowledge (Ye et al., IJCAI 2019), a notebook-first reproduction."""

__version__ = "0.1.0"
