"""dynroute: dynamically-routed neural networks."""

__version__ = "0.1.0"
