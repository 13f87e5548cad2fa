"""flowtrail: security monitoring of Kubernetes network flows in Hubble's vocabulary."""

__version__ = "0.1.0"
