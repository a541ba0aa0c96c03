"""The egress proxy that runs inside the proxy container (imports nothing from orchestrator).

`NON_PUBLIC_NETWORKS` is public: the Kubernetes backend's NetworkPolicy excludes the same
ranges the proxy refuses to dial (one list, docs/architecture.md decision 44). The import is
relative because the image copies this package as `proxy/`.
"""

from ._netrules import NON_PUBLIC_NETWORKS

__all__ = ["NON_PUBLIC_NETWORKS"]
