"""``comfy_execution.graph_utils``: the kernel's GraphBuilder under the reference's names."""

from kernel.nodes import GraphBuilder, add_graph_prefix, is_link
from kernel.nodes import GraphNode as Node

__all__ = ["GraphBuilder", "Node", "add_graph_prefix", "is_link"]
