"""Tests of the factorizer (chain fusion) and of fused execution.

Random DAGs are built with ``ox.task``; each node's function counts its executions (keyed by the
node id, passed as an argument) and computes a deterministic hash-like value of its inputs and its
id, so that results can be compared with a direct recursive evaluation of the same DAG.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import orchestrix as ox
from orchestrix.graph.factorize import WorkUnit, factorize, one_unit_per_task
from orchestrix.graph.tasks import Delayed, Graph, build_graph

# -- task functions that count their executions ---------------------------------------------------

runs: Counter[int] = Counter()
_MODULUS = (1 << 61) - 1


def _mix(node_id: int, inputs: Sequence[Any]) -> int:
    """A deterministic, order-sensitive combination of a node id and its (nested) inputs."""
    h = (node_id + 1) * 1_000_003 % _MODULUS
    for item in inputs:
        if isinstance(item, list):
            item = _mix(-1, item)
        h = (h * 6_364_136_223_846_793_005 + item + 0x9E3779B9) % _MODULUS
    return h


def _single(node_id: int, *inputs: Any) -> int:
    runs[node_id] += 1
    return _mix(node_id, inputs)


def _pair(node_id: int, *inputs: Any) -> tuple[int, int]:
    runs[node_id] += 1
    value = _mix(node_id, inputs)
    return value, (value * 31 + 7) % _MODULUS


single = ox.task(_single, name="single")
pair = ox.task(_pair, nout=2, name="pair")


def expected_single(node_id: int, *inputs: Any) -> int:
    return _mix(node_id, inputs)


def expected_pair(node_id: int, *inputs: Any) -> tuple[int, int]:
    value = _mix(node_id, inputs)
    return value, (value * 31 + 7) % _MODULUS


# -- random DAG specifications ------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    nout: int
    sources: tuple[tuple[int, int | None], ...]
    nested: bool  # pass the inputs inside one list argument instead of as separate arguments


@dataclass(frozen=True)
class DagSpec:
    nodes: tuple[NodeSpec, ...]
    targets: tuple[tuple[int, int | None], ...]


@st.composite
def dag_specs(draw: st.DrawFn, max_nodes: int = 18) -> DagSpec:
    count = draw(st.integers(1, max_nodes))
    nodes: list[NodeSpec] = []
    for i in range(count):
        nout = draw(st.sampled_from((1, 1, 2)))
        if i == 0:
            chosen: list[int] = []
        else:
            # Favour a single predecessor, so that chains (the interesting case) are common.
            chosen = draw(
                st.one_of(
                    st.lists(st.integers(0, i - 1), max_size=1),
                    st.lists(st.integers(0, i - 1), max_size=3, unique=True),
                )
            )
        sources: list[tuple[int, int | None]] = []
        for j in chosen:
            if nodes[j].nout == 1:
                sources.append((j, None))
            else:
                outputs = draw(st.sampled_from(((0,), (1,), (0, 1), (1, 0))))
                sources.extend((j, k) for k in outputs)
        nested = draw(st.booleans()) if sources else False
        nodes.append(NodeSpec(nout, tuple(sources), nested))
    outputs = [(i, None) if n.nout == 1 else (i, k) for i, n in enumerate(nodes) for k in (0, 1)]
    outputs = list(dict.fromkeys(outputs))
    # Duplicates are allowed: the same value may be asked for twice.
    targets = draw(st.lists(st.sampled_from(outputs), min_size=1, max_size=4))
    return DagSpec(tuple(nodes), tuple(targets))


def build(spec: DagSpec) -> list[Delayed]:
    """Call the tasks of ``spec``; return the Delayed targets."""
    outputs: list[Any] = []
    for i, node in enumerate(spec.nodes):
        inputs = [outputs[j] if k is None else outputs[j][k] for j, k in node.sources]
        args = [inputs] if node.nested else inputs
        outputs.append((single if node.nout == 1 else pair)(i, *args))
    return [outputs[i] if k is None else outputs[i][k] for i, k in spec.targets]


def evaluate(spec: DagSpec) -> list[Any]:
    """The values of the targets of ``spec``, by direct recursive evaluation (memoised)."""
    memo: dict[int, Any] = {}

    def value_of(i: int) -> Any:
        if i not in memo:
            node = spec.nodes[i]
            inputs = [value_of(j) if k is None else value_of(j)[k] for j, k in node.sources]
            args = [inputs] if node.nested else inputs
            function = expected_single if node.nout == 1 else expected_pair
            memo[i] = function(i, *args)
        return memo[i]

    return [value_of(i) if k is None else value_of(i)[k] for i, k in spec.targets]


def needed_nodes(spec: DagSpec) -> set[int]:
    """The ids of the nodes that the targets need (the targets and their ancestors)."""
    seen: set[int] = set()
    stack = [i for i, _ in spec.targets]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(j for j, _ in spec.nodes[i].sources)
    return seen


# -- structural checks --------------------------------------------------------------------------


def consumers_of(graph: Graph) -> dict[str, set[str]]:
    """For each node key, the keys of the distinct nodes that read any of its outputs."""
    consumers: dict[str, set[str]] = {key: set() for key in graph.nodes}
    for node in graph.nodes.values():
        for dep in node.deps:
            consumers[dep.key].add(node.key)
    return consumers


def check_units(graph: Graph, targets: set[str], units: list[WorkUnit], fused: bool) -> None:
    consumers = consumers_of(graph)

    # Every node of the graph is in exactly one unit, and units hold nothing else.
    placement: dict[str, tuple[int, int]] = {}
    for u, unit in enumerate(units):
        assert unit.tasks, "a unit without tasks"
        for position, node in enumerate(unit.tasks):
            assert node.key not in placement, f"{node.key} is in two units"
            placement[node.key] = (u, position)
    assert set(placement) == set(graph.nodes)

    # Every target is a unit's output.
    unit_keys = [unit.key for unit in units]
    assert targets <= set(unit_keys)

    seen: set[str] = set()
    for unit in units:
        head = unit.tasks[0]
        # A unit reads exactly what its head reads.
        assert unit.deps == tuple(dep.key for dep in head.deps)
        # Topological order: a unit's inputs are outputs of earlier units.
        for dep in unit.deps:
            assert dep in seen, f"{unit!r} reads {dep}, which no earlier unit produces"
        seen.add(unit.key)
        # The tasks form a chain.
        for previous, node in zip(unit.tasks, unit.tasks[1:], strict=False):
            assert [dep.key for dep in node.deps] == [previous.key]
            assert consumers[previous.key] == {node.key}
            assert previous.key not in targets
        assert unit.key == unit.tasks[-1].key
        check_release(unit)

    if not fused:
        assert all(len(unit.tasks) == 1 for unit in units)
        assert unit_keys == list(graph.nodes)
        return

    # Maximality: a task whose only consumer reads only it, and that is no target, is fused.
    for key, readers in consumers.items():
        if len(readers) != 1 or key in targets:
            continue
        (reader,) = readers
        if [dep.key for dep in graph.nodes[reader].deps] != [key]:
            continue
        u, position = placement[key]
        assert placement[reader] == (u, position + 1), f"{key} -> {reader} was not fused"


def check_release(unit: WorkUnit) -> None:
    """Each value a unit reads, but its output, is released once, right after its last reader;
    the output (the only value read outside the unit) never is."""
    if len(unit.tasks) == 1:
        assert unit.release == ()
        return
    assert len(unit.release) == len(unit.tasks)
    last_reader = {dep.key: i for i, node in enumerate(unit.tasks) for dep in node.deps}
    last_reader.pop(unit.key, None)
    released = {key: i for i, keys in enumerate(unit.release) for key in keys}
    assert sum(len(keys) for keys in unit.release) == len(released), "a value released twice"
    assert released == last_reader


def plan(targets: list[Delayed], fused: bool) -> tuple[Graph, set[str], list[WorkUnit]]:
    graph = build_graph(targets)
    keys = {t.key for t in targets}
    units = factorize(graph, keys) if fused else one_unit_per_task(graph)
    return graph, keys, units


# -- property tests -----------------------------------------------------------------------------

FUSION = st.booleans()


@settings(max_examples=60, deadline=None)
@given(spec=dag_specs(), fused=FUSION)
def test_compute_matches_direct_evaluation_and_runs_each_task_once(
    spec: DagSpec, fused: bool
) -> None:
    targets = build(spec)
    expected = evaluate(spec)
    with ox.Orchestrator(mode="sequential", factorize_tasks=fused) as orch:
        runs.clear()
        assert orch.compute(targets) == expected
        assert runs == Counter(dict.fromkeys(needed_nodes(spec), 1))
        # A second compute runs everything again, once more.
        runs.clear()
        assert orch.compute(tuple(targets)) == tuple(expected)
        assert runs == Counter(dict.fromkeys(needed_nodes(spec), 1))


@settings(max_examples=60, deadline=None)
@given(spec=dag_specs())
def test_fused_and_unfused_give_the_same_results(spec: DagSpec) -> None:
    targets = build(spec)
    results = []
    for fused in (True, False):
        with ox.Orchestrator(mode="sequential", factorize_tasks=fused) as orch:
            results.append(orch.compute(targets))
    assert results[0] == results[1] == evaluate(spec)


@settings(max_examples=60, deadline=None)
@given(spec=dag_specs(max_nodes=30), fused=FUSION)
def test_unit_structure(spec: DagSpec, fused: bool) -> None:
    graph, keys, units = plan(build(spec), fused)
    assert len(graph) == len(needed_nodes(spec))
    check_units(graph, keys, units, fused)


@settings(max_examples=60, deadline=None)
@given(spec=dag_specs())
def test_factorize_is_deterministic_and_matches_engine_plan(spec: DagSpec) -> None:
    targets = build(spec)
    _, keys, units = plan(targets, True)
    again = factorize(build_graph(build(spec)), keys)
    assert [[t.key for t in u.tasks] for u in units] == [[t.key for t in u.tasks] for u in again]
    with ox.Orchestrator(mode="sequential") as orch:
        planned = orch._engine.plan(targets)
    assert [[t.key for t in u.tasks] for u in units] == [[t.key for t in u.tasks] for u in planned]


# -- deterministic tests ------------------------------------------------------------------------


def test_chain_of_four_is_one_unit() -> None:
    a = single(0)
    b = single(1, a)
    c = single(2, b)
    d = single(3, c)
    graph, keys, units = plan([d], True)
    assert len(units) == 1
    assert [t.key for t in units[0].tasks] == [a.key, b.key, c.key, d.key]
    assert units[0].deps == ()
    assert units[0].key == d.key
    check_units(graph, keys, units, True)

    value = expected_single(3, expected_single(2, expected_single(1, expected_single(0))))
    with ox.Orchestrator(mode="sequential", factorize_tasks=True) as orch:
        runs.clear()
        assert orch.compute(d) == value
        assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})


def test_chain_unfused_is_four_units() -> None:
    d = single(3, single(2, single(1, single(0))))
    graph, keys, units = plan([d], False)
    assert len(units) == 4
    check_units(graph, keys, units, False)


def test_diamond_is_four_units() -> None:
    a = single(0)
    b = single(1, a)
    c = single(2, a)
    d = single(3, b, c)
    graph, keys, units = plan([d], True)
    assert len(units) == 4
    assert all(len(unit.tasks) == 1 for unit in units)
    assert units[0].key == a.key and units[-1].key == d.key
    assert units[-1].deps == (b.key, c.key)
    check_units(graph, keys, units, True)

    va = expected_single(0)
    expected = expected_single(3, expected_single(1, va), expected_single(2, va))
    with ox.Orchestrator(mode="sequential") as orch:
        runs.clear()
        assert orch.compute(d) == expected
        assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})


def test_two_output_task_feeding_two_consumers_is_not_fused_and_runs_once() -> None:
    source = single(0)
    left, right = pair(1, source)
    x = single(2, left)
    y = single(3, right)
    graph, keys, units = plan([x, y], True)
    pair_unit = next(u for u in units if u.key == left.key)
    # The source is fused into the pair task (its only consumer, which reads only it), but the
    # pair task, read by two different tasks, ends its unit: its output is never recomputed.
    assert [t.key for t in pair_unit.tasks] == [source.key, left.key]
    assert len(units) == 3
    assert all(u.deps == (left.key,) for u in units if u is not pair_unit)
    check_units(graph, keys, units, True)

    p0, p1 = expected_pair(1, expected_single(0))
    for fused in (True, False):
        with ox.Orchestrator(mode="sequential", factorize_tasks=fused) as orch:
            runs.clear()
            assert orch.compute([x, y]) == [expected_single(2, p0), expected_single(3, p1)]
            assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})


def test_two_output_task_with_both_outputs_read_by_one_consumer_is_fused() -> None:
    left, right = pair(0)
    z = single(1, right, left)
    graph, keys, units = plan([z], True)
    assert len(units) == 1
    assert [t.key for t in units[0].tasks] == [left.key, z.key]
    check_units(graph, keys, units, True)

    p0, p1 = expected_pair(0)
    with ox.Orchestrator(mode="sequential") as orch:
        runs.clear()
        assert orch.compute(z) == expected_single(1, p1, p0)
        assert runs == Counter({0: 1, 1: 1})


def test_two_output_task_that_is_a_target_and_fed_on() -> None:
    left, right = pair(0)
    z = single(1, left)
    graph, keys, units = plan([right, z], True)
    assert len(units) == 2  # the pair's output is asked for, so it leaves its unit
    check_units(graph, keys, units, True)

    p0, p1 = expected_pair(0)
    with ox.Orchestrator(mode="sequential") as orch:
        runs.clear()
        assert orch.compute({"right": right, "z": z, "both": [left, right]}) == {
            "right": p1,
            "z": expected_single(1, p0),
            "both": [p0, p1],
        }
        assert runs == Counter({0: 1, 1: 1})


def test_target_in_the_middle_splits_the_chain() -> None:
    a = single(0)
    b = single(1, a)
    c = single(2, b)
    d = single(3, c)
    graph, keys, units = plan([b, d], True)
    assert [[t.key for t in u.tasks] for u in units] == [[a.key, b.key], [c.key, d.key]]
    assert units[1].deps == (b.key,)
    check_units(graph, keys, units, True)

    vb = expected_single(1, expected_single(0))
    vd = expected_single(3, expected_single(2, vb))
    with ox.Orchestrator(mode="sequential", factorize_tasks=True) as orch:
        runs.clear()
        assert orch.compute([b, d]) == [vb, vd]
        assert runs == Counter({0: 1, 1: 1, 2: 1, 3: 1})
        runs.clear()
        assert orch.compute(b) == vb
        assert runs == Counter({0: 1, 1: 1})


def test_same_call_twice_is_one_node() -> None:
    a1 = single(0)
    a2 = single(0)  # a pure task called again with the same arguments: the same key
    b = single(1, a1, a2)
    graph, _, units = plan([b], True)
    assert len(graph) == 2
    assert len(units) == 1
    with ox.Orchestrator(mode="sequential") as orch:
        runs.clear()
        assert orch.compute(b) == expected_single(1, expected_single(0), expected_single(0))
        assert runs == Counter({0: 1, 1: 1})


def test_empty_graph_has_no_units() -> None:
    assert factorize(Graph({}), set()) == []
    assert one_unit_per_task(Graph({})) == []


def test_long_chain_is_one_unit_and_computes() -> None:
    add = ox.task(operator.add)
    d = add(0, 1)
    for _ in range(4_999):
        d = add(d, 1)
    units = plan([d], True)[2]
    assert len(units) == 1 and len(units[0].tasks) == 5_000
    with ox.Orchestrator(mode="sequential") as orch:
        assert orch.compute(d) == 5_000


def test_hundred_thousand_tasks_factorize_into_a_thousand_units() -> None:
    add = ox.task(operator.add)
    tails = []
    for chain in range(1_000):
        d = add(chain, 1)
        for _ in range(99):
            d = add(d, 1)
        tails.append(d)
    graph = build_graph(tails)
    assert len(graph) == 100_000
    units = factorize(graph, {t.key for t in tails})
    assert len(units) == 1_000
    assert all(len(unit.tasks) == 100 and unit.deps == () for unit in units)
    assert [unit.key for unit in units] == [t.key for t in tails]
    assert len(one_unit_per_task(graph)) == 100_000
