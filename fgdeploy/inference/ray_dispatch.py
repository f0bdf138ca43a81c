"""The driver's side of ``infer --ray``: hand blocks of images to model actors, count the worker deaths each
block causes, isolate the image that keeps killing its worker, and give the results back in block order.

Why the driver does this and not Ray Data: in Ray 2.60 the only way to bound how often Ray Data retries a block
whose worker died is ``map_batches(**ray_remote_args)`` (``max_retries`` for tasks, ``max_restarts`` and
``max_task_retries`` for actors), which Ray deprecates (removed in 2.64); its ``DataContext`` options cover
exceptions raised by user code (``max_map_retries``, ``retried_map_errors``, ``actor_task_retry_on_errors``) and
deaths in an actor's constructor (``max_consecutive_actor_init_deaths``), not a worker that dies on a block.
Its defaults retry such a block forever, and when a bound runs out the whole execution fails: it cannot go on
with the block's images one by one. Here every actor is created with Ray Core's ``max_restarts=0,
max_task_retries=0`` and every decode task with ``max_retries=0`` (documented ``ray.remote`` options), so each
death reaches the driver, which decides:

- a block whose worker died is sent again, up to ``max_retries`` times; then each of its images is sent alone,
  up to ``max_retries`` times; an image whose worker still dies gets an error line ("worker died N times
  decoding/scoring this image") and the run goes on. A poison image therefore costs ``2 * (max_retries + 1)``
  worker deaths (each a new actor: a process start and a model load) before it is reported.
- which block is charged: a death is charged to a block only when it was the one call its worker held. A worker
  holds two calls (one running, one waiting), and when it dies the reply of a call that had just finished can be
  lost with it, so which one killed it is not known: then no block is charged, and each is sent again as a
  *suspect*, which runs alone on an idle actor (as do blocks sent again after a charged death, and the single
  images of a split block), so that its next death is its own. A poison image thus costs
  ``2 * (max_retries + 1)`` deaths, one more if another block was waiting behind it the first time.
- a dead actor is replaced at once (on any node with room); only actors that have loaded their model get work,
  so a replacement that cannot be placed (a node lost, no CPUs left) never holds blocks back.
- results are kept until every earlier block is done and then handed out in block order (so OUT keeps the
  paths' order); at most ``window`` blocks are started ahead of the oldest unfinished one, which bounds memory.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fgdeploy.errors import FgdeployError
from fgdeploy.inference.ray_cluster import fgdeploy_cause, first_line

logger = logging.getLogger(__name__)

CALLS_PER_ACTOR = 2        # one running, one waiting: the actor never idles while the driver answers
STALL_SECONDS = 600.0      # no actor alive this long while work remains: stop (the cluster cannot place one)


@dataclass
class Unit:
    """Images sent together to one worker: a whole block, or one image of a block that killed its workers."""

    block: int
    first: int                          # index of the unit's first image in its block
    items: list[tuple[str, str]]        # (path the worker reads, name OUT records)
    deaths: int = 0                     # worker deaths charged to this unit
    suspect: bool = False               # was on a worker that died: runs alone on an idle actor

    @property
    def alone(self) -> bool:
        """A single image (a one-image block, or split out of a block that kept killing its worker)."""
        return len(self.items) == 1


@dataclass
class _Block:
    names: list[str]
    lines: list[str | None]
    failed: list[bool]
    missing: int


@dataclass
class _Actor:
    handle: Any
    ready: Any                          # ObjectRef of the ready() call until the model is loaded, then None
    node: str = ""
    calls: deque[tuple[Any, Unit]] = field(default_factory=deque)   # in the order sent


@dataclass
class DispatchStats:
    """What the dispatcher saw; ``deaths`` counts dead actors and crashed decode tasks."""

    deaths: int = 0
    isolated: int = 0                   # blocks whose images were then sent one by one
    given_up: int = 0                   # images reported as killing their worker


class Dispatcher:
    """Runs units on a pool of model actors (optionally fed by decode tasks) with bounded retries.

    Args:
        ray: the ``ray`` module of a connected session.
        new_actor: starts a model actor (an actor handle with ``ready()``, ``score_paths(items)`` and
            ``score_decoded(decoded)``), created with ``max_restarts=0, max_task_retries=0``.
        actors: how many actors to keep running.
        max_retries: times a block, then an image alone, is sent again after its worker died.
        decode: with decode tasks, starts one for a unit's items and returns its ObjectRef (``max_retries=0``);
            None: the actors decode.
        decoders: decode tasks running at once (with ``decode``).
    """

    def __init__(self, ray: Any, new_actor: Callable[[], Any], actors: int, max_retries: int,
                 decode: Callable[[list[tuple[str, str]]], Any] | None = None, decoders: int = 1) -> None:
        self.ray, self.new_actor, self.target, self.max_retries = ray, new_actor, actors, max_retries
        self.decode, self.decoders = decode, max(1, decoders)
        self.window = max(4, 2 * CALLS_PER_ACTOR * actors)   # blocks started ahead of the oldest unfinished one
        self.stats = DispatchStats()
        self._actors: list[_Actor] = []
        self._pending: deque[Unit] = deque()             # units to send, retried ones first
        self._decoding: dict[Any, Unit] = {}              # decode task ref -> unit
        self._decoded: deque[tuple[Any, Unit]] = deque()  # finished decode refs waiting for an actor
        self._blocks: dict[int, _Block] = {}
        self._start_failures = 0
        self._last_alive = time.monotonic()

    # ----------------------------------------------------------------------------------------
    def run(self, blocks: Sequence[Sequence[tuple[str, str]]]) -> Iterator[tuple[list[str], list[str], list[bool]]]:
        """Yield (names, journal lines, failed flags) per block, in block order, each block once."""
        next_block, next_out = 0, 0
        try:
            while next_out < len(blocks):
                while next_block < len(blocks) and next_block < next_out + self.window and \
                        len(self._pending) < self._room():
                    self._add_block(next_block, blocks[next_block])
                    next_block += 1
                self._keep_actors()
                self._send()
                self._wait_and_collect()
                self._send()              # before handing results out: the workers go on meanwhile
                while next_out in self._blocks and self._blocks[next_out].missing == 0:
                    done = self._blocks.pop(next_out)
                    yield done.names, [line or "" for line in done.lines], done.failed
                    next_out += 1
                self._check_stall()
        finally:
            self._stop()

    def _room(self) -> int:
        """Units worth keeping queued: what the actors (and decode tasks) can take now, at least one."""
        ready = sum(a.ready is None for a in self._actors) or 1
        return ready * CALLS_PER_ACTOR + (2 * self.decoders if self.decode else 0)

    def _add_block(self, index: int, items: Sequence[tuple[str, str]]) -> None:
        self._blocks[index] = _Block([name for _, name in items], [None] * len(items), [False] * len(items),
                                     len(items))
        self._pending.append(Unit(index, 0, list(items)))

    # ----------------------------------------------------------------------------------------
    # actors
    def _keep_actors(self) -> None:
        while len(self._actors) < self.target:
            handle = self.new_actor()
            self._actors.append(_Actor(handle, handle.ready.remote()))

    def _send(self) -> None:
        """Give queued units to ready actors with a free slot (and start decode tasks, with ``decode``)."""
        if self.decode:   # a second task per decode CPU waits in Ray's queue, so no CPU waits for the driver
            waiting_room = CALLS_PER_ACTOR * max(1, len(self._actors))
            while self._pending and len(self._decoding) < 2 * self.decoders and len(self._decoded) < waiting_room:
                unit = self._pending.popleft()
                self._decoding[self.decode(unit.items)] = unit
        queue = self._decoded if self.decode else self._pending
        while queue:
            unit = queue[0][1] if self.decode else queue[0]
            ready = [a for a in self._actors if a.ready is None]
            if unit.suspect:   # alone on an idle actor; until one is idle, nothing else is sent
                choices = [a for a in ready if not a.calls]
            else:
                choices = [a for a in ready
                           if len(a.calls) < CALLS_PER_ACTOR and not any(u.suspect for _, u in a.calls)]
            if not choices:
                return
            if self.decode:
                ref, unit = queue.popleft()
                actor = self._near(choices, ref)
                actor.calls.append((actor.handle.score_decoded.remote(ref), unit))
            else:
                queue.popleft()
                actor = min(choices, key=lambda a: len(a.calls))
                actor.calls.append((actor.handle.score_paths.remote(unit.items), unit))

    def _near(self, actors: list[_Actor], ref: Any) -> _Actor:
        """An actor on a node that holds ``ref`` (no copy between nodes), else the least busy."""
        try:
            nodes = set(self.ray.experimental.get_object_locations([ref]).get(ref, {}).get("node_ids", ()))
        except Exception:  # noqa: BLE001 - locality is an optimisation only
            nodes = set()
        return min(actors, key=lambda a: (a.node not in nodes, len(a.calls)))

    def _stop(self) -> None:
        for actor in self._actors:
            self._kill(actor.handle)
        self._actors.clear()
        for ref in list(self._decoding) + [ref for ref, _ in self._decoded]:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished or gone already
                pass

    def _kill(self, handle: Any) -> None:
        try:
            self.ray.kill(handle)
        except Exception:  # noqa: BLE001 - already dead
            pass

    # ----------------------------------------------------------------------------------------
    # results
    def _wait_and_collect(self) -> None:
        refs = [a.ready for a in self._actors if a.ready is not None] + list(self._decoding)
        refs += [ref for a in self._actors for ref, _ in a.calls]
        if not refs:
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        for ref in [r for r in self._decoding if r in done]:
            self._decoded.append((ref, self._decoding.pop(ref)))
        for actor in list(self._actors):
            if actor.ready is not None and actor.ready in done:
                self._on_ready(actor)
            else:   # only the actor handled removes itself: the others of the list are all still there
                for ref, unit in list(actor.calls):
                    if ref in done and actor in self._actors:
                        self._on_result(actor, ref, unit)

    def _on_ready(self, actor: _Actor) -> None:
        try:
            actor.node = self.ray.get(actor.ready)
        except self.ray.exceptions.RayError as exc:
            self._actors.remove(actor)
            self._kill(actor.handle)
            self._start_failures += 1
            if cause := fgdeploy_cause(exc):
                raise cause from None
            if self._start_failures > self.max_retries:
                raise FgdeployError(f"model actors fail to start ({self._start_failures} in a row): "
                                    f"{first_line(exc)}") from None
            logger.warning("a model actor failed to start (%s); starting another", first_line(exc))
            return
        actor.ready = None
        self._start_failures = 0

    def _on_result(self, actor: _Actor, ref: Any, unit: Unit) -> None:
        try:
            lines, failed = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._on_actor_death(actor)
            return
        except self.ray.exceptions.RayError as exc:
            actor.calls.remove((ref, unit))
            if not worker_died(self.ray, exc):
                raise
            self.stats.deaths += 1          # its decode task died; the actor lives on
            self._charge(unit, exc)
            return
        actor.calls.remove((ref, unit))
        self._fill(unit, lines, failed)

    def _on_actor_death(self, actor: _Actor) -> None:
        """The actor died: the call it held is charged; of several, none is (which one killed it is not known:
        a finished call's reply can die with the process), and each is sent again as a suspect."""
        self._actors.remove(actor)
        self._kill(actor.handle)
        self.stats.deaths += 1
        refs = [ref for ref, _ in actor.calls]
        self.ray.wait(refs, num_returns=len(refs), timeout=30.0)
        lost: list[tuple[Unit, BaseException]] = []
        for ref, unit in actor.calls:
            try:
                lines, failed = self.ray.get(ref, timeout=0)
            except Exception as exc:  # noqa: BLE001 - a dead actor's calls fail with its death
                lost.append((unit, exc))
                continue
            self._fill(unit, lines, failed)
        actor.calls.clear()
        if len(lost) == 1:
            self._charge(*lost[0])
            return
        if lost:
            logger.info("a worker died holding %d blocks (%s); each is sent again alone", len(lost),
                        first_line(lost[0][1]))
        for unit, _ in reversed(lost):
            unit.suspect = True
            self._pending.appendleft(unit)

    def _charge(self, unit: Unit, exc: BaseException) -> None:
        """A worker died on ``unit``: send it again, split it into single images, or give its image up."""
        unit.deaths += 1
        logger.info("a worker died on %d image(s) of block %d (death %d): %s", len(unit.items), unit.block,
                    unit.deaths, first_line(exc))
        if unit.deaths <= self.max_retries:
            unit.suspect = True
            self._pending.appendleft(unit)
        elif not unit.alone:
            self.stats.isolated += 1
            singles = [Unit(unit.block, unit.first + i, [item], suspect=True)
                       for i, item in enumerate(unit.items)]
            self._pending.extendleft(reversed(singles))
        else:
            self.stats.given_up += 1
            name = unit.items[0][1]
            reason = (f"worker died {unit.deaths} times decoding/scoring this image (alone, after its block's "
                      f"workers died {self.max_retries + 1} times; --max-retries {self.max_retries}): the file crashes "
                      "the decoder or needs more memory than a worker has")
            self._fill(unit, [json.dumps({"path": name, "error": reason}, ensure_ascii=False)], [True])

    def _fill(self, unit: Unit, lines: Sequence[str], failed: Sequence[bool]) -> None:
        block = self._blocks[unit.block]
        for i, (line, bad) in enumerate(zip(lines, failed)):
            block.lines[unit.first + i], block.failed[unit.first + i] = line, bool(bad)
        block.missing -= len(lines)

    def _check_stall(self) -> None:
        """Once per round: note the time while a model actor is running; none for ``STALL_SECONDS``: stop."""
        if any(a.ready is None for a in self._actors):
            self._last_alive = time.monotonic()
        elif time.monotonic() - self._last_alive > STALL_SECONDS:
            raise FgdeployError(f"no model actor has been running for {STALL_SECONDS:.0f} s: the Ray cluster "
                                "cannot place one (lost nodes? `ray status` shows what is free)")


def worker_died(ray: Any, exc: BaseException) -> bool:
    """Whether a Ray error means the process (or node) running the work died, not that the work raised (an
    actor's own death, ``RayActorError``, is handled before this is asked)."""
    deaths = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
              ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
    return isinstance(exc, deaths)
