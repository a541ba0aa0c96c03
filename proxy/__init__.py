"""The egress proxy that runs inside the proxy container (imports nothing from orchestrator)."""
