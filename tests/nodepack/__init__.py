"""Node packs used by the tests: ``basic`` (the node contract) and ``exec_nodes`` (execution)."""
