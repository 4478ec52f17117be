"""Running one prompt: the staging loop and the per-node step (execution-semantics §5–§11).

A ``PromptRun`` lives on the executor thread inside the executor's asyncio loop. Sync node
functions run right there; ``async`` ones become tasks so several overlap while other ready
nodes are staged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from kernel.events import ServerMessage
from kernel.executor.cache import CacheEntry, SignatureKeys
from kernel.executor.calls import (
    ClassInfo,
    blocker_in,
    call_plan,
    format_value,
    full_type_name,
    gather_inputs,
    merge_outputs,
    merge_ui,
)
from kernel.executor.graph import DependencyCycleError, DynamicPrompt, ExecutionList, NodeNotFoundError
from kernel.executor.guards import PromptLimitExceeded
from kernel.executor.progress import ProgressReporter
from kernel.nodes import ExecutionBlocker, graph_prefix_scope, is_link, node_specs
from kernel.progress import ExecutionContext, Interrupted, executing

if TYPE_CHECKING:
    from kernel.executor.engine import Executor
    from kernel.queue import QueueItem

log = logging.getLogger("comfykernel.executor")


# Coalesced progress_state waiting to go out is sent before these, so clients never see a node's
# output or the prompt's end next to an older state.
_STATE_FLUSHED_BEFORE = frozenset(
    {"executed", "execution_success", "execution_error", "execution_interrupted"}
)


class Outcome(Enum):
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


def now_ms() -> int:
    return int(time.time() * 1000)


class PromptRun:
    """The state of one prompt while it executes."""

    def __init__(self, executor: Executor, item: QueueItem) -> None:
        self.executor = executor
        self.kernel = executor.kernel
        self.item = item
        self.prompt_id = item.prompt_id
        self.extra_data = {**item.extra_data, **item.sensitive}
        self.client_id: str | None = item.extra_data.get("client_id")
        self.dynprompt = DynamicPrompt(item.prompt)
        self.status_messages: list[list[Any]] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self._executed_set: set[str] = set()
        self.results: dict[str, CacheEntry] = {}
        self.success = False
        self._infos: dict[str, ClassInfo] = {}
        self._specs = node_specs(self.kernel)
        self.keys = SignatureKeys(self.dynprompt, lambda ct: self._info(ct).identity_bound)
        self.reporter = ProgressReporter(
            self.prompt_id,
            self.client_id,
            self.dynprompt,
            self.publish,
            self._interrupted_or_over_memory,
            self.kernel.settings.preview_size,
            schedule=self._schedule_on_server_loop,
            publish_nowait=lambda message: self.kernel.bus.publish_threadsafe(message, block=False),
        )
        self.pending_async: dict[str, list[Any]] = {}
        self.pending_expansion: dict[str, list[tuple[bool, Any]]] = {}
        self._watchers: list[asyncio.Task[Any]] = []
        # Output release: for each node, how many pending nodes still read its outputs, and for
        # each pending node, the sources it was counted against (see _count_consumers).
        self._consumers: dict[str, int] = {}
        self._reads: dict[str, list[str]] = {}
        # Cache keys this run stored, dropped again when a limit ends it.
        self._stored_keys: list[bytes] = []

    # --- messages -------------------------------------------------------------------------

    def publish(self, message: ServerMessage) -> None:
        self.kernel.bus.publish_threadsafe(message)

    def send(self, event: str, data: Any, broadcast: bool = False) -> None:
        if event in _STATE_FLUSHED_BEFORE:
            self.reporter.flush(final=event != "executed")
        self.publish(ServerMessage(type=event, data=data, sid=self.client_id, broadcast=broadcast))

    def _schedule_on_server_loop(self, delay: float, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the server's loop in ``delay`` seconds (False: no loop to run it)."""
        loop = self.kernel.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        try:
            loop.call_soon_threadsafe(loop.call_later, delay, callback)
        except RuntimeError:  # closed in between
            return False
        return True

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append([event, data])
        self.send(event, data, broadcast)

    # --- lookups --------------------------------------------------------------------------

    def _info(self, class_type: str) -> ClassInfo:
        info = self._infos.get(class_type)
        if info is None:
            spec = self._specs.get(class_type)
            if spec is None:
                raise NodeNotFoundError(f"Node type {class_type!r} is not registered")
            info = self._infos[class_type] = ClassInfo(spec, spec.execution_input_types())
        return info

    def _traits(self, class_type: str) -> tuple[frozenset[str], bool, bool]:
        return self._info(class_type).traits

    def lookup(self, node_id: str) -> CacheEntry | None:
        """This node's outputs if it ran in this prompt or its key hits the persistent cache."""
        entry = self.results.get(node_id)
        if entry is None and node_id not in self.pending_expansion:
            entry = self.executor.outputs.get(self.keys.key(node_id))
            if entry is not None:
                self.results[node_id] = entry
        return entry

    def is_available(self, node_id: str) -> bool:
        return self.lookup(node_id) is not None

    def check_interrupt(self) -> None:
        self.executor.memory.check()
        if self.executor.is_interrupted():
            raise Interrupted("Processing interrupted")

    def _interrupted_or_over_memory(self) -> bool:
        """The progress sink's check: a node reporting progress also stops at the memory ceiling."""
        self.executor.memory.check()
        return self.executor.is_interrupted()

    # --- releasing outputs nobody needs any more ------------------------------------------

    def _count_consumers(self, node_id: str) -> None:
        """``node_id`` became pending: the nodes it links to are needed until it completes."""
        sources = [v[0] for v in self.dynprompt.get_node(node_id).get("inputs", {}).values() if is_link(v)]
        self._reads[node_id] = sources
        for source in sources:
            self._consumers[source] = self._consumers.get(source, 0) + 1

    def _completed(self, node_id: str) -> None:
        """After ``node_id`` completes: drop the outputs its completion left without a reader.

        Only this run's own reference goes; a cache policy that keeps outputs still has them (and
        ``lookup`` finds them there). A node that a later expansion links to again after its
        outputs went is simply run again.
        """
        for source in self._reads.pop(node_id, ()):
            self._drop_read(source)
        if node_id not in self._consumers:
            self.results.pop(node_id, None)

    def _drop_read(self, source: str) -> None:
        left = self._consumers[source] - 1
        if left:
            self._consumers[source] = left
        else:
            del self._consumers[source]
            self.results.pop(source, None)

    def _free_outputs(self) -> None:
        """A limit ended the run: let go of everything it produced, cached copies included."""
        self.results.clear()
        self.executor.outputs.discard(self._stored_keys)
        self._stored_keys.clear()

    # --- IS_CHANGED -----------------------------------------------------------------------

    async def compute_is_changed(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            node = self.dynprompt.get_node(node_id)
            spec = self._specs.get(node.get("class_type"))
            if spec is None:
                continue
            fn = spec.is_changed
            if fn is None:
                continue
            info = self._info(node["class_type"])
            data, _ = gather_inputs(
                node_id, node.get("inputs", {}), info, None, self.dynprompt, self.extra_data
            )
            try:
                kwargs_ok = _accepted(fn)
                values = []
                for _, kwargs in call_plan(data, info.spec.input_is_list):
                    if kwargs_ok is not None:
                        kwargs = {k: v for k, v in kwargs.items() if k in kwargs_ok}
                    value = fn(**kwargs)
                    if inspect.isawaitable(value):
                        value = await value
                    values.append(value)
                self.keys.is_changed[node_id] = values[0] if len(values) == 1 else values
            except Exception:
                log.warning("IS_CHANGED of node %s (%s) failed; it will re-run", node_id, node["class_type"])
                self.keys.is_changed[node_id] = float("nan")

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        executor = self.executor
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        execution_list = ExecutionList(
            self.dynprompt, self.is_available, self._traits, on_pending=self._count_consumers
        )
        try:
            prompt_ids = list(self.item.prompt)
            self.executor.limits.check_nodes(len(prompt_ids))
            await self.compute_is_changed(prompt_ids)
            used: set[Any] = {self.keys.key(n) for n in prompt_ids}
            used.update(self._owner(n) for n in prompt_ids)
            executor.outputs.begin_prompt(used)
            executor.memory.begin_prompt()
            if executor.cache_mode == "classic":
                executor.objects.keep_only(set(prompt_ids))
            cached = [n for n in prompt_ids if self.lookup(n) is not None]
            self.add_message(
                "execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, broadcast=False
            )

            for output_id in self.item.outputs_to_execute:
                execution_list.add_node(output_id)
            while not execution_list.is_empty():
                error: dict[str, Any] | None = None
                exc: BaseException | None = None
                node_id = ""
                try:
                    node_id = await execution_list.stage_node_execution(self.check_interrupt)
                    outcome, error, exc = await self.execute_node(node_id, execution_list)
                    if outcome is Outcome.PENDING:
                        execution_list.unstage_node_execution()
                        continue
                    if outcome is Outcome.SUCCESS:
                        execution_list.complete_node_execution()
                        self._completed(node_id)
                        executor.outputs.after_node()
                        executor.memory.check()
                        continue
                except PromptLimitExceeded as limit:
                    error, exc = self._limit_error(execution_list.staged_node_id or node_id, limit), limit
                except DependencyCycleError as cycle:
                    error = {
                        "node_id": str(cycle),
                        "exception_message": "Dependency cycle detected",
                        "exception_type": "graph.DependencyCycleError",
                        "traceback": [],
                        "current_inputs": [],
                    }
                    exc = cycle
                except Interrupted as interrupted:  # while only async nodes were running
                    blamed = next(iter(self.pending_async), None) or next(iter(execution_list.pending))
                    error, exc = {"node_id": self.dynprompt.get_real_node_id(blamed)}, interrupted
                assert error is not None and exc is not None
                self.handle_error(error, exc)
                break
            else:
                self.success = True
                self._replay_intermediate_outputs()
                self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        except PromptLimitExceeded as limit:  # the prompt itself is over the node limit
            self.handle_error(self._limit_error(next(iter(self.item.prompt), ""), limit), limit)
        except Exception as exc:  # an engine bug must still end the prompt cleanly
            log.exception("prompt %s failed inside the executor", self.prompt_id)
            self.handle_error(
                {
                    "node_id": execution_list.staged_node_id or "",
                    "exception_message": f"{exc}\n",
                    "exception_type": full_type_name(type(exc)),
                    "traceback": traceback.format_tb(exc.__traceback__),
                    "current_inputs": {},
                },
                exc,
            )
        finally:
            for tasks in self.pending_async.values():
                for task in tasks:
                    if isinstance(task, asyncio.Task):
                        task.cancel()
            for watcher in self._watchers:
                watcher.cancel()

    def _limit_error(self, node_id: str, limit: PromptLimitExceeded) -> dict[str, Any]:
        log.warning("prompt %s stopped: %s", self.prompt_id, limit)
        return {
            "node_id": self.dynprompt.get_real_node_id(node_id) if node_id else "",
            "exception_message": f"{limit}\n",
            "exception_type": full_type_name(type(limit)),
            "traceback": [],
            "current_inputs": {},
        }

    def _replay_intermediate_outputs(self) -> None:
        """``HAS_INTERMEDIATE_OUTPUT`` nodes that did not run still show their cached UI."""
        for node_id, node in self.item.prompt.items():
            spec = self._specs.get(node.get("class_type"))
            if spec is None or not spec.has_intermediate_output or node_id in self._executed_set:
                continue
            entry = self.lookup(node_id)
            if entry is not None and entry.ui:
                self.ui_outputs[node_id] = {"meta": self._meta(node_id), "output": entry.ui}
                self.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": self.dynprompt.get_display_node_id(node_id),
                        "output": entry.ui,
                        "prompt_id": self.prompt_id,
                    },
                )

    def handle_error(self, error: dict[str, Any], exc: BaseException) -> None:
        node_id = error["node_id"]
        try:
            node_type = self.dynprompt.get_node(node_id).get("class_type")
        except NodeNotFoundError:
            node_type = None
        base = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": node_type,
            "executed": list(self.executed),
        }
        if isinstance(exc, Interrupted):
            self.add_message("execution_interrupted", base, broadcast=True)
            return
        if isinstance(exc, PromptLimitExceeded):
            self._free_outputs()
        details = {
            "exception_message": error["exception_message"],
            "exception_type": error["exception_type"],
            "traceback": error["traceback"],
            "current_inputs": error["current_inputs"],
            "current_outputs": list(self.results),
        }
        self.add_message("execution_error", {**base, **details}, broadcast=False)

    def history_result(self) -> tuple[dict[str, Any], dict[str, Any]]:
        outputs = {k: v["output"] for k, v in self.ui_outputs.items()}
        meta = {k: v["meta"] for k, v in self.ui_outputs.items()}
        return outputs, meta

    # --- one node -------------------------------------------------------------------------

    def _meta(self, node_id: str) -> dict[str, Any]:
        dp = self.dynprompt
        return {
            "node_id": node_id,
            "display_node": dp.get_display_node_id(node_id),
            "parent_node": dp.get_parent_node_id(node_id),
            "real_node_id": dp.get_real_node_id(node_id),
        }

    async def execute_node(
        self, node_id: str, execution_list: ExecutionList
    ) -> tuple[Outcome, dict[str, Any] | None, BaseException | None]:
        dp = self.dynprompt
        node = dp.get_node(node_id)
        class_type = node.get("class_type")
        display_id = dp.get_display_node_id(node_id)
        real_id = dp.get_real_node_id(node_id)
        reporter = self.reporter

        if node_id not in self.pending_async and node_id not in self.pending_expansion:
            cached = self.lookup(node_id)
            if cached is not None:
                # Only staged explicitly (an output node): replay its UI.
                self.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": display_id,
                        "output": cached.ui,
                        "prompt_id": self.prompt_id,
                    },
                )
                if cached.ui:
                    self.ui_outputs[node_id] = {"meta": self._meta(node_id), "output": cached.ui}
                reporter.finish(node_id)
                return Outcome.SUCCESS, None, None

        data: dict[str, list[Any]] | None = None
        try:
            info = self._info(class_type)
            spec = info.spec
            if node_id in self.pending_async:
                raw_results = [
                    t.result() if isinstance(t, asyncio.Task) else t for t in self.pending_async.pop(node_id)
                ]
                outputs, ui, expansions = self._collect(spec, raw_results)
            elif node_id in self.pending_expansion:
                # The resolution pass: no ``executing``, no UI of its own.
                resolved = self._resolve_expansion(self.pending_expansion.pop(node_id))
                first_ui = self.ui_outputs.get(node_id, {}).get("output")
                self._store(node_id, CacheEntry(first_ui, merge_outputs(resolved, spec.output_is_list)))
                reporter.finish(node_id)
                return Outcome.SUCCESS, None, None
            else:
                reporter.start(node_id)
                data, missing = gather_inputs(
                    node_id, node.get("inputs", {}), info, self.lookup, dp, self.extra_data
                )
                self.executor.executing_node = display_id
                self.send(
                    "executing", {"node": node_id, "display_node": display_id, "prompt_id": self.prompt_id}
                )
                instance = self.executor.objects.get_or_create(node_id, class_type, spec.make_instance)

                check = spec.check_lazy_status(instance)
                if check is not None:
                    wanted = await self._ask_lazy(check, data, spec.input_is_list, node_id)
                    wanted = [w for w in wanted if w not in data or w in missing]
                    if wanted:
                        for name in wanted:
                            execution_list.make_input_strong_link(node_id, name)
                        return Outcome.PENDING, None, None

                fn = spec.function(instance)
                raw_results = self.kernel.hooks.wrap_node_execution(
                    self.kernel,
                    node_id,
                    class_type,
                    lambda: self._call_all(fn, data, spec.input_is_list, node_id, class_type),
                )
                await asyncio.sleep(0)  # one loop tick: quick coroutines finish inline
                if any(isinstance(r, asyncio.Task) and not r.done() for r in raw_results):
                    self._wait_async(node_id, raw_results, execution_list)
                    return Outcome.PENDING, None, None
                raw_results = [r.result() if isinstance(r, asyncio.Task) else r for r in raw_results]
                outputs, ui, expansions = self._collect(spec, raw_results)

            if ui:
                self.ui_outputs[node_id] = {"meta": self._meta(node_id), "output": ui}
                self.send(
                    "executed",
                    {"node": node_id, "display_node": display_id, "output": ui, "prompt_id": self.prompt_id},
                )
            if expansions is not None:
                await self._expand(node_id, expansions, execution_list)
                return Outcome.PENDING, None, None
            self._store(node_id, CacheEntry(ui or None, outputs))
            reporter.finish(node_id)
            return Outcome.SUCCESS, None, None
        except Interrupted as exc:
            return Outcome.FAILURE, {"node_id": real_id}, exc
        except PromptLimitExceeded as exc:
            return Outcome.FAILURE, self._limit_error(node_id, exc), exc
        except Exception as exc:
            log.error("!!! Exception during processing !!! %s", exc)
            current_inputs = (
                {name: [format_value(x) for x in values] for name, values in data.items()}
                if data is not None
                else {}
            )
            return (
                Outcome.FAILURE,
                {
                    "node_id": real_id,
                    "exception_message": f"{exc}\n",
                    "exception_type": full_type_name(type(exc)),
                    "traceback": traceback.format_tb(exc.__traceback__),
                    "current_inputs": current_inputs,
                },
                exc,
            )

    def _store(self, node_id: str, entry: CacheEntry) -> None:
        self.results[node_id] = entry
        real_id = self.dynprompt.get_real_node_id(node_id)
        key = self.keys.key(node_id)
        self.executor.outputs.set(key, entry, key if real_id == node_id else self._owner(real_id))
        self._stored_keys.append(key)
        if node_id not in self._executed_set:
            self._executed_set.add(node_id)
            self.executed.append(node_id)

    def _owner(self, real_id: str) -> tuple[str, str, Any]:
        # Expansion results belong to (node id, class) like the reference's subcaches, so a
        # loop node whose widgets changed still finds the bodies it expanded last time.
        return ("expansion", real_id, self.dynprompt.get_node(real_id).get("class_type"))

    async def _ask_lazy(
        self, check: Callable[..., Any], data: dict[str, list[Any]], input_is_list: bool, node_id: str
    ) -> list[str]:
        wanted: list[str] = []
        for index, kwargs in call_plan(data, input_is_list):
            self.check_interrupt()
            with executing(ExecutionContext(self.prompt_id, node_id, index, self.reporter)):
                answer = check(**kwargs)
                if inspect.isawaitable(answer):
                    answer = await answer
            if isinstance(answer, list):
                wanted.extend(a for a in answer if isinstance(a, str) and a not in wanted)
        return wanted

    def _call_all(
        self,
        fn: Callable[..., Any],
        data: dict[str, list[Any]],
        input_is_list: bool,
        node_id: str,
        class_type: str,
    ) -> list[Any]:
        """Call ``fn`` once per list index; coroutines become tasks started in the node's context."""
        results: list[Any] = []
        loop = asyncio.get_running_loop()
        for index, kwargs in call_plan(data, input_is_list):
            self.check_interrupt()
            blocker = blocker_in(kwargs, input_is_list)
            if blocker is not None:
                results.append(self._on_blocked(blocker, node_id, class_type))
                continue
            with executing(ExecutionContext(self.prompt_id, node_id, index, self.reporter)):
                with graph_prefix_scope(node_id, index):
                    value = fn(**kwargs)
                    if inspect.iscoroutine(value):
                        value = loop.create_task(value)
            results.append(value)
        return results

    def _on_blocked(self, blocker: ExecutionBlocker, node_id: str, class_type: str) -> ExecutionBlocker:
        if blocker.message is None:
            return blocker
        # Reported once, to the client only: it neither fails the prompt nor enters history.
        self.send(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(self.executed),
                "exception_message": f"Execution Blocked: {blocker.message}",
                "exception_type": "ExecutionBlocked",
                "traceback": [],
                "current_inputs": [],
                "current_outputs": [],
            },
        )
        return ExecutionBlocker(None)

    def _wait_async(self, node_id: str, raw_results: list[Any], execution_list: ExecutionList) -> None:
        self.pending_async[node_id] = raw_results
        unblock = execution_list.add_external_block(node_id)
        tasks = [r for r in raw_results if isinstance(r, asyncio.Task)]

        async def watch() -> None:
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                unblock()

        self._watchers.append(asyncio.get_running_loop().create_task(watch()))

    def _collect(
        self, spec: Any, raw_results: list[Any]
    ) -> tuple[list[list[Any]], dict[str, Any], list[tuple[dict[str, Any] | None, Any]] | None]:
        """(merged outputs, merged UI, per-call (graph, result) when any call expanded)."""
        results: list[tuple[Any, ...]] = []
        uis: list[dict[str, Any]] = []
        per_call: list[tuple[dict[str, Any] | None, Any]] = []
        expanded = False
        for raw in raw_results:
            normalized = spec.normalize_result(raw)
            if normalized.ui is not None:
                uis.append(normalized.ui)
            if normalized.expand is not None:
                expanded = True
                per_call.append((normalized.expand, normalized.outputs))
            elif normalized.outputs is not None:
                results.append(normalized.outputs)
                per_call.append((None, normalized.outputs))
        ui = merge_ui(uis)
        if expanded:
            return [], ui, per_call
        return merge_outputs(results, spec.output_is_list), ui, None

    async def _expand(
        self, node_id: str, per_call: list[tuple[dict[str, Any] | None, Any]], execution_list: ExecutionList
    ) -> None:
        dp = self.dynprompt
        limits = self.executor.limits
        pending: list[tuple[bool, Any]] = []
        new_ids: list[str] = []
        new_outputs: list[str] = []
        new_links: list[tuple[str, Any]] = []
        for graph, result in per_call:
            if graph is None:
                pending.append((False, result))
                continue
            limits.check_nodes(dp.node_count() + len(graph))
            limits.check_depth(dp.depth(node_id) + 1)
            for new_id in graph:
                if dp.has_node(new_id):
                    raise ValueError(
                        f"Expansion of node {node_id} tried to add node {new_id!r} twice; "
                        "use GraphBuilder for unique, deterministic ids"
                    )
            for new_id, node_info in graph.items():
                new_ids.append(new_id)
                dp.add_ephemeral_node(
                    new_id, node_info, node_id, node_info.get("override_display_id", node_id)
                )
                if self._info(node_info["class_type"]).spec.is_output_node:
                    new_outputs.append(new_id)
            for value in result or ():
                if is_link(value):
                    new_links.append((value[0], value[1]))
            pending.append((True, result))
        await self.compute_is_changed(new_ids)
        for output_id in new_outputs:
            execution_list.add_node(output_id)
        # The expanding node's function ran: from now on it reads the expansion's results (when
        # it resolves), not its own inputs. A loop node waits for its whole loop, so keeping its
        # inputs counted would hold every iteration's outputs until the end.
        # (Dropped after the new nodes were added and counted their own reads.)
        reads = [source for source, _ in new_links]
        for source in reads:
            self._consumers[source] = self._consumers.get(source, 0) + 1
        for source, socket in new_links:
            execution_list.add_strong_link(source, socket, node_id)
        for source in self._reads.pop(node_id, ()):
            self._drop_read(source)
        self._reads[node_id] = reads
        self.pending_expansion[node_id] = pending

    def _resolve_expansion(self, pending: list[tuple[bool, Any]]) -> list[tuple[Any, ...]]:
        resolved: list[tuple[Any, ...]] = []
        for from_graph, result in pending:
            if not from_graph:
                resolved.append(result)
                continue
            values: list[Any] = []
            for value in result or ():
                if is_link(value):
                    entry = self.lookup(value[0])
                    if entry is None:
                        raise NodeNotFoundError(f"expanded node {value[0]} produced no output")
                    values.extend(entry.outputs[int(value[1])])
                else:
                    values.append(value)
            resolved.append(tuple(values))
        return resolved


def _accepted(fn: Callable[..., Any]) -> set[str] | None:
    """Parameter names ``fn`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}
