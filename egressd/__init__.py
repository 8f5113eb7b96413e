"""egressd: highly available egress IPs for Kubernetes."""

__version__ = "0.1.0"
