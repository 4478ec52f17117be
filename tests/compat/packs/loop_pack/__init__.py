"""Self-cloning loops that carry their counter in a hidden literal input.

The mechanics follow the loop nodes of the popular packs (a for-loop's open node with a hidden
``initial_value0``, a close node that clones the loop body with ``GraphBuilder``): each round
the close node expands a copy of the body and of itself, and the copied open node receives the
next counter as a *literal* for an input declared only under ``"hidden"``. If a server drops
such literals the counter never moves and the loop never ends; ``MAX_DEPTH`` turns that into an
error instead of a hang.
"""

from comfy_execution.graph_utils import GraphBuilder, is_link


class AnyType(str):
    """The packs' "any type": ``!=`` is always False, so it matches every other type."""

    def __ne__(self, other):
        return False


class AlwaysEqualProxy(str):
    """Another common spelling: equal to everything. Easy-Use declares its hidden loop index so."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


any_type = AnyType("*")

# Nesting of expansion ids ("5.0.0.Recurse.0.0.Recurse...") past which a loop is called runaway.
MAX_DEPTH = 200


def _check_depth(unique_id):
    if str(unique_id).count(".") > MAX_DEPTH:
        raise RuntimeError(f"runaway loop at {unique_id}: the hidden counter never changed")


class LoopCountdown:
    """Counts ``start`` down to zero by cloning itself with ``remaining - 1``; returns the rounds."""

    CATEGORY = "compat/loop"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"start": ("INT", {"default": 3, "min": 0, "max": 50})},
            "hidden": {"remaining": ("INT",), "rounds": ("INT",), "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start, remaining=None):
        # Hidden literals reach the validator too.
        if remaining is not None and remaining < 0:
            return "remaining must not be negative"
        return True

    def run(self, start, remaining=None, rounds=0, unique_id=None):
        _check_depth(unique_id)
        if remaining is None:
            remaining = start
        if remaining <= 0:
            return (rounds,)
        graph = GraphBuilder()
        clone = graph.node("LoopCountdown", start=start, remaining=remaining - 1, rounds=rounds + 1)
        return {"result": (clone.out(0),), "expand": graph.finalize()}


class LoopOpen:
    """Start of a for loop: yields the flow handle, the round index and the carried value."""

    CATEGORY = "compat/loop"
    RETURN_TYPES = ("LOOP_FLOW", "INT", any_type)
    RETURN_NAMES = ("flow", "index", "value")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"total": ("INT", {"default": 3, "min": 1, "max": 50})},
            "optional": {"value": (any_type,)},
            # Not shown by the frontend; the close node sets it on each copy of this node.
            # A tuple is never a special token, even holding a type that equals everything.
            "hidden": {"index": (AlwaysEqualProxy("*"),), "unique_id": "UNIQUE_ID"},
        }

    def run(self, total, value=None, index=0, unique_id=None):
        return ("stub", index, value)


class LoopAddInt:
    CATEGORY = "compat/loop"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    def run(self, a, b):
        return (a + b,)


class LoopClose:
    """End of a for loop: while rounds remain, clone the body with the open node's index + 1."""

    CATEGORY = "compat/loop"
    RETURN_TYPES = (any_type,)
    RETURN_NAMES = ("value",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"flow": ("LOOP_FLOW", {"rawLink": True}), "value": (any_type,)},
            "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"},
        }

    def _upstream(self, node_id, dynprompt, consumers):
        """Fill ``consumers`` (node id -> ids that link to it) for everything above ``node_id``."""
        todo = [node_id]
        while todo:
            current = todo.pop()
            for value in dynprompt.get_node(current).get("inputs", {}).values():
                if not is_link(value):
                    continue
                source = value[0]
                if source not in consumers:
                    consumers[source] = []
                    todo.append(source)
                consumers[source].append(current)

    def _body(self, open_id, consumers):
        """Every node reachable downstream from the open node, on the way to this one."""
        body = {open_id}
        todo = [open_id]
        while todo:
            for child in consumers.get(todo.pop(), ()):
                if child not in body:
                    body.add(child)
                    todo.append(child)
        return body

    def run(self, flow, value, dynprompt=None, unique_id=None):
        _check_depth(unique_id)
        open_id = flow[0]
        open_node = dynprompt.get_node(open_id)
        index = open_node["inputs"].get("index", 0)
        total = open_node["inputs"]["total"]
        if index + 1 >= total:
            return (value,)

        consumers = {}
        self._upstream(unique_id, dynprompt, consumers)
        body = self._body(open_id, consumers) | {unique_id}
        graph = GraphBuilder()
        new_id = {node_id: "Recurse" if node_id == unique_id else node_id for node_id in body}
        for node_id in body:
            copy = graph.node(dynprompt.get_node(node_id)["class_type"], new_id[node_id])
            copy.set_override_display_id(node_id)
        for node_id in body:
            copy = graph.lookup_node(new_id[node_id])
            for name, input_value in dynprompt.get_node(node_id)["inputs"].items():
                if is_link(input_value) and input_value[0] in body:
                    copy.set_input(name, graph.lookup_node(new_id[input_value[0]]).out(input_value[1]))
                else:
                    copy.set_input(name, input_value)
        next_open = graph.lookup_node(open_id)
        next_open.set_input("index", index + 1)
        next_open.set_input("value", value)
        return {"result": (graph.lookup_node("Recurse").out(0),), "expand": graph.finalize()}


class LoopShow:
    """Output node: reports the value it receives."""

    CATEGORY = "compat/loop"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (any_type,)}}

    def run(self, value):
        return {"ui": {"value": [value]}}


NODE_CLASS_MAPPINGS = {
    "LoopCountdown": LoopCountdown,
    "LoopOpen": LoopOpen,
    "LoopAddInt": LoopAddInt,
    "LoopClose": LoopClose,
    "LoopShow": LoopShow,
}
