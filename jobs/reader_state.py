"""Where a torch reader stands in an epoch: resumable and elastic reading (jobs/reader_stream.py's RowStream).

An epoch is one canonical sequence of the dataset's n rows, a pure function of (seed, epoch,
shuffle) and the row groups: it does not depend on the world size or the DataLoader workers.
Each reader slot (rank x workers + worker) reads contiguous ranges of positions in it. A slot's
state says which ranges it was given and how many rows it has yielded, so:

- resumed with the same slots, each slot continues its own ranges: the remaining rows are
  exactly those an uninterrupted run would have yielded, in the same order;
- resumed with other slots (world size or workers changed), the states of every old slot are
  merged (merge_states) into the positions nobody has read, which are split evenly over the new
  slots: every row of the epoch exactly once, shares within one row of each other.

States are plain dicts of ints (torch.save and JSON both take them); nothing here does I/O or
imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from vae_core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One row group of one part: the unit an epoch's order is made of."""

    part: str  # the part file's name
    index: int  # its row group in that file
    rows: int


STATE_FORMAT = "vaegen-reader-state/1"
Ranges = list[tuple[int, int]]  # half-open [start, stop) position ranges in the epoch's canonical sequence


def count(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(stop - start for start, stop in ranges)


def skip(ranges: Sequence[tuple[int, int]], rows: int) -> Ranges:
    """The ranges without their first `rows` positions."""
    left = []
    for start, stop in ranges:
        taken = min(rows, stop - start)
        rows -= taken
        if start + taken < stop:
            left.append((start + taken, stop))
    return left


def take(ranges: Sequence[tuple[int, int]], first: int, last: int) -> Ranges:
    """Positions first..last-1 (counted along the ranges) of the ranges, as ranges."""
    out, offset = [], 0
    for start, stop in ranges:
        low, high = max(first - offset, 0), min(last - offset, stop - start)
        if low < high:
            out.append((start + low, start + high))
        offset += stop - start
    return out


def split_evenly(ranges: Sequence[tuple[int, int]], slots: int) -> list[Ranges]:
    """Slot s of S gets the rows [s R / S, (s + 1) R / S) of the R rows in `ranges`: shares within one row."""
    rows = count(ranges)
    return [take(ranges, slot * rows // slots, (slot + 1) * rows // slots) for slot in range(slots)]


def slot_state(identity: dict[str, Any], slot: int, slots: int, assigned: Ranges, consumed: int) -> dict[str, Any]:
    """The state of one reader slot: `identity` (dataset, seed, shuffle, epoch) and where it stands."""
    return {
        "format": STATE_FORMAT,
        **identity,
        "slot": slot,
        "slots": slots,
        "assigned": [list(pair) for pair in assigned],
        "consumed": consumed,
    }


def merge_states(states: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One state from the states of every slot of a run (every rank's, every DataLoader worker's; see
    loader_states): the positions of the epoch that no slot has yielded yet. Load it at any world size."""
    states = [check_format(state) for state in states]
    if not states:
        raise UsageError("merge_states needs the states of every reader slot, got none")
    if any("remaining" in state for state in states):
        raise UsageError("merge_states takes the states of reader slots (state_dict() of each), not a merged state")
    identity = _identity(states[0])
    slots = states[0]["slots"]
    for state in states:
        if _identity(state) != identity or state["slots"] != slots:
            raise UsageError(
                f"reader states of different runs cannot be merged: {_identity(state)} with "
                f"{state['slots']} slots, {identity} with {slots}"
            )
    seen = sorted(state["slot"] for state in states)
    if seen != list(range(slots)):
        missing = sorted(set(range(slots)) - set(seen))
        raise UsageError(
            f"merge_states needs one state per reader slot 0..{slots - 1} (rank x workers + worker); "
            f"missing {missing}, got {seen}: gather every rank's loader state (all_gather_object)"
        )
    remaining = []
    for state in sorted(states, key=lambda state: state["slot"]):
        remaining += skip([tuple(pair) for pair in state["assigned"]], state["consumed"])
    return {"format": STATE_FORMAT, **identity, "remaining": [list(pair) for pair in _joined(remaining)]}


def loader_states(loader_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The reader states inside a torchdata StatefulDataLoader's state_dict() (0 or more workers)."""
    if "_snapshot" not in loader_state:  # no workers: the dataset's own state
        return [loader_state["dataset_state"]] if loader_state.get("dataset_state") else []
    snapshot = loader_state["_snapshot"]
    if loader_state.get("_steps_since_snapshot", 0):
        raise UsageError(
            "the StatefulDataLoader state is older than its last batches: build the loader with "
            "snapshot_every_n_steps=1 (its default) to merge reader states"
        )
    workers = snapshot["_worker_snapshots"].values()
    return [worker["dataset_state"] for worker in workers if worker.get("dataset_state")]


def check_format(state: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UsageError(
            f"not a vaegen reader state (format {found!r}, expected {STATE_FORMAT!r}); pass what "
            "state_dict() or merge_states() returned"
        )
    return state


def check_identity(state: dict[str, Any], identity: dict[str, Any]) -> None:
    """A state resumes only the dataset, seed and shuffle it was saved with (its epoch is adopted)."""
    saved = {key: state[key] for key in identity if key != "epoch"}
    expected = {key: value for key, value in identity.items() if key != "epoch"}
    if saved != expected:
        raise UsageError(
            f"this reader state was saved for {saved}, not {expected}: open the same dataset with the "
            "same seed and shuffle to resume it"
        )


def resumed_ranges(state: dict[str, Any], identity: dict[str, Any], slot: int, slots: int) -> Ranges:
    """The ranges slot `slot` of `slots` reads after loading `state` (see the module docstring)."""
    check_identity(state, identity)
    if "remaining" in state:
        return split_evenly([tuple(pair) for pair in state["remaining"]], slots)[slot]
    if state["slots"] == 1 and slots != 1:  # one slot's state is the whole run's
        return resumed_ranges(merge_states([state]), identity, slot, slots)
    if (state["slot"], state["slots"]) != (slot, slots):
        raise UsageError(
            f"this state is reader slot {state['slot']} of {state['slots']}, loaded into slot {slot} of "
            f"{slots}: after a change of world size or DataLoader workers, load "
            "merge_states(the states of every old slot) instead"
        )
    return skip([tuple(pair) for pair in state["assigned"]], state["consumed"])


def _identity(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state[key] for key in ("dataset_id", "n", "seed", "shuffle", "epoch")}


def _joined(ranges: Ranges) -> Ranges:
    """Adjacent ranges joined: a merged state stays small after many resumes."""
    out: Ranges = []
    for start, stop in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


class Resumable:
    """state_dict() / load_state_dict() for RowStream (the Stateful protocol of torchdata's
    StatefulDataLoader, which calls them in each DataLoader worker); RowStream provides identity(),
    reader_slot() and epoch, and calls start() as an iteration begins and advance() as rows leave."""

    _resume: dict[str, Any] | None = None
    _progress: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """This reader slot's state: epoch, seed, the positions it was given, the rows it has yielded."""
        progress = self._progress
        if progress is None or progress["epoch"] != self.epoch:
            slot, slots = self.reader_slot()
            return slot_state(self.identity(), slot, slots, self.ranges(slot, slots), 0)
        return slot_state(
            self.identity(), progress["slot"], progress["slots"], progress["assigned"], progress["consumed"]
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from state_dict() of the same slot, or from merge_states() of every slot of a run."""
        check_identity(check_format(state), self.identity())
        self.epoch = state["epoch"]
        self._resume, self._progress = state, None

    def ranges(self, slot: int, slots: int) -> Ranges:
        """The positions this slot reads this epoch: from a loaded state of this epoch, else its even share."""
        if self._resume is not None and self._resume["epoch"] == self.epoch:
            return resumed_ranges(self._resume, self.identity(), slot, slots)
        return split_evenly([(0, self.identity()["n"])], slots)[slot]

    def start(self, slot: int, slots: int) -> Ranges:
        assigned = self.ranges(slot, slots)
        self._progress = {"epoch": self.epoch, "slot": slot, "slots": slots, "assigned": assigned, "consumed": 0}
        return assigned

    def advance(self, rows: int) -> None:
        """Called before rows are yielded: a state taken after they leave counts them."""
        self._progress["consumed"] += rows

    def finish(self) -> None:
        """The epoch's share is read: a loaded state has served its purpose."""
        self._resume = None
