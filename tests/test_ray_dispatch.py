"""The driver's dispatcher (``fgdeploy.inference.ray_dispatch``) against a scripted stand-in for Ray: actors run
their calls in order, one step per ``wait``, and die on a poison image (taking their queued calls with them).

Must show: a block whose worker dies is sent again at most ``max_retries`` times, then its images alone as
often, and the image that still kills its worker comes back as an error line naming the count; a death with two
calls on the worker charges neither (both are sent again alone), so an innocent block is never split; blocks
come out in order, each once; actors that cannot start stop the run after ``max_retries`` tries; a poison image
costs ``2 * (max_retries + 1)`` deaths, one more when a block waited behind it.
"""

from __future__ import annotations

import json
import logging
import types
from collections import deque

import pytest

ray_exceptions = pytest.importorskip("ray.exceptions")


class _Ref:
    def __init__(self) -> None:
        self.done, self.value, self.error = False, None, None


class _Method:
    def __init__(self, actor: "_Actor", kind: str) -> None:
        self.actor, self.kind = actor, kind

    def remote(self, arg=None) -> _Ref:
        ref = _Ref()
        if self.actor.alive:
            self.actor.queue.append((ref, self.kind, arg))
        else:
            self.actor.fail(ref)
        return ref


class _Actor:
    def __init__(self, world: "_FakeRay", number: int) -> None:
        self.world, self.number, self.alive, self.queue = world, number, True, deque()
        self.ready, self.score_paths = _Method(self, "ready"), _Method(self, "score")

    def fail(self, ref: _Ref) -> None:
        ref.done, ref.error = True, ray_exceptions.ActorDiedError()

    def die(self) -> None:
        self.alive = False
        while self.queue:
            self.fail(self.queue.popleft()[0])

    def step(self) -> None:
        """Run the oldest call: ready() fails for a broken actor; a block with a poison image kills the actor."""
        if not self.alive or not self.queue:
            return
        ref, kind, items = self.queue.popleft()
        if kind == "ready":
            if self.world.broken_starts:
                ref.done, ref.error = True, ray_exceptions.ActorDiedError()
                self.alive = False
                return
            ref.done, ref.value = True, f"node{self.number % 2}"
            return
        names = [name for _, name in items]
        self.world.calls.append(names)
        if any(name in self.world.poison for name in names) or self.world.transient.pop(tuple(names), False):
            self.world.deaths += 1
            self.world.held.append(1 + len(self.queue))   # calls the dying actor held: this one and those queued
            ref.done, ref.error = True, ray_exceptions.ActorDiedError()
            self.die()
            return
        ref.done, ref.value = True, ([json.dumps({"path": n, "ok": True}) for n in names], [False] * len(names))


class _FakeRay:
    exceptions = ray_exceptions

    def __init__(self, poison=(), transient=(), broken_starts=False) -> None:
        self.poison, self.broken_starts = set(poison), broken_starts
        self.transient = {tuple(names): True for names in transient}   # blocks that kill their worker once
        self.actors: list[_Actor] = []
        self.calls: list[list[str]] = []
        self.deaths = 0
        self.held: list[int] = []      # per death: the calls its actor held
        self.experimental = types.SimpleNamespace(get_object_locations=lambda refs: {})

    def new_actor(self) -> _Actor:
        self.actors.append(_Actor(self, len(self.actors)))
        return self.actors[-1]

    def wait(self, refs, num_returns=1, timeout=None):
        if not any(r.done for r in refs):
            for actor in list(self.actors):
                actor.step()
        done = [r for r in refs if r.done]
        return done, [r for r in refs if not r.done]

    def get(self, ref, timeout=None):
        assert ref.done, "get() of an unfinished call would block"
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor) -> None:
        actor.die()

    def cancel(self, ref, force=False) -> None:
        pass


def _blocks(count: int, size: int, poison: str = "") -> list[list[tuple[str, str]]]:
    names = [f"b{b}_{i}.png" for b in range(count) for i in range(size)]
    if poison:
        names[names.index(poison)] = poison
    return [[(f"/abs/{n}", n) for n in names[b * size:(b + 1) * size]] for b in range(count)]


def _run(world: _FakeRay, blocks, actors: int = 2, max_retries: int = 3):
    from fgdeploy.inference.ray_dispatch import Dispatcher

    dispatcher = Dispatcher(world, world.new_actor, actors, max_retries)
    return list(dispatcher.run(blocks)), dispatcher.stats


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_a_poison_image_costs_bounded_deaths_and_comes_back_as_an_error_line(max_retries):
    blocks = _blocks(4, 3, poison="b1_1.png")
    world = _FakeRay(poison={"b1_1.png"})
    results, stats = _run(world, blocks, max_retries=max_retries)
    assert [names for names, _, _ in results] == [[n for _, n in b] for b in blocks]   # in order, each block once
    lines = {json.loads(line)["path"]: (json.loads(line), bad) for _, ls, fs in results for line, bad in zip(ls, fs)}
    assert len(lines) == 12
    poison, bad = lines.pop("b1_1.png")
    assert bad and poison["error"].startswith(f"worker died {max_retries + 1} time")
    assert f"--max-retries {max_retries}" in poison["error"]
    assert all(rec["ok"] and not bad for rec, bad in lines.values())
    assert world.deaths == stats.deaths
    assert 2 * (max_retries + 1) <= stats.deaths <= 2 * (max_retries + 1) + 1   # as a block, then alone
    assert stats.isolated == 1 and stats.given_up == 1              # only the poison's block was split
    assert world.calls.count(["b1_1.png"]) == max_retries + 1      # alone, each death charged
    assert all(len(call) == 3 or (len(call) == 1 and call[0].startswith("b1_")) for call in world.calls)


def test_a_death_with_two_calls_on_the_worker_charges_neither():
    """One actor, no retries (one charge splits a block, or gives a single image up). Block 0 kills the actor
    while block 1 waits behind it: neither is charged, both run again alone; block 0 kills it alone (charged:
    split), its poison image kills it alone (charged: given up). Block 1 is never split, nothing else fails."""
    blocks = _blocks(3, 4, poison="b0_2.png")
    world = _FakeRay(poison={"b0_2.png"})
    results, stats = _run(world, blocks, actors=1, max_retries=0)
    assert world.calls[:2] == [[f"b0_{i}.png" for i in range(4)]] * 2       # once with block 1 behind, once alone
    assert not any(len(call) == 1 and not call[0].startswith("b0_") for call in world.calls)
    assert stats.isolated == 1 and stats.given_up == 1 and stats.deaths == 3
    assert [f for _, _, fs in results for f in fs] == [False, False, True, False] + [False] * 8


@pytest.mark.parametrize("actors, max_retries, held", [(5, 1, 1), (2, 0, 2)])
def test_a_block_whose_worker_died_once_is_sent_again_whole(caplog, actors, max_retries, held):
    """A lost node or one out-of-memory kill: the block is sent again once, whole; nothing is split, nothing
    fails. Five actors, one block each: the dying worker held only this block, so the death is charged to it and
    it is sent again as ``max_retries`` 1 allows. Two actors, two calls each: the dying worker held another block
    too, so nothing is charged and both are sent again alone, which no retry budget limits (``max_retries`` 0)."""
    caplog.set_level(logging.INFO, logger="fgdeploy.inference.ray_dispatch")
    blocks = _blocks(5, 2)
    world = _FakeRay(transient=[["b2_0.png", "b2_1.png"]])
    results, stats = _run(world, blocks, actors=actors, max_retries=max_retries)
    assert [names for names, _, _ in results] == [[n for _, n in b] for b in blocks]
    assert not any(f for _, _, fs in results for f in fs)
    assert stats.deaths == 1 and stats.isolated == 0 and stats.given_up == 0
    assert world.calls.count(["b2_0.png", "b2_1.png"]) == 2                # sent again once
    assert world.held == [held]
    charged = "a worker died on 2 image(s) of block 2 (death 1)" in caplog.text
    assert charged == (held == 1) and ("a worker died holding 2 blocks" in caplog.text) == (held == 2)


def test_actors_that_cannot_start_stop_the_run_after_max_retries():
    from fgdeploy.errors import FgdeployError

    world = _FakeRay(broken_starts=True)
    with pytest.raises(FgdeployError, match="model actors fail to start"):
        _run(world, _blocks(2, 2), actors=1, max_retries=2)
    assert len(world.actors) == 3 and not world.calls
