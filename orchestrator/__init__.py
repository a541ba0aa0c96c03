"""perstack-sandbox: run one Perstack Expert's MCP skills in a hardened Docker sandbox."""
