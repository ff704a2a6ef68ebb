"""Training data at scale: source mixtures, token-budget packing inside the loader, and loaders
whose position is saved in checkpoints so that a resumed run sees exactly the batches an
uninterrupted run would have seen.

Two training paths, both resumable (``anymodal fit ... --ckpt_path last``):

1. **Map-style** (the default: ``data.train`` manifest, ``data.batch_size`` samples per step):
   :class:`ResumableSampler` is a ``DistributedSampler`` (seeded permutation per epoch, rank
   ``r`` takes every ``world_size``-th index, so the ranks' batches together are the batch a
   single process takes) that can start an epoch part-way. Lightning leaves a
   ``DistributedSampler`` alone, so the same recipe runs on one process or many.
2. **Packed mixture** (``data.sources`` and/or ``data.tokens_per_batch``): :class:`PackedMixture`
   is an ``IterableDataset`` that draws samples from weighted sources
   (``[{path: a.jsonl, weight: 0.7}, {shards: shards/, weight: 0.3}]``), builds their streams and
   fills ``tokens_per_batch // seq_len`` rows of ``seq_len`` tokens (first fit); a batch is
   emitted when the next sample fits no row. Steps therefore hold a fixed token budget, not a
   fixed sample count (the usual practice for LM pre-training: constant work per step).
   It streams forever (sources restart with a new shuffle each epoch): set ``trainer.max_steps``.

Splitting: the readers are the ``world_size * num_workers`` data-loader workers of all ranks;
reader ``g = rank * num_workers + worker`` takes every ``G``-th shard of a shard source (after a
seeded shuffle of the shard order per epoch; samples inside a shard are shuffled too) and every
``G``-th record of a manifest source. A shard source with fewer shards than readers is refused
with a clear error (some readers would get no data). A mixture draw ``k`` of reader ``g`` picks
its source from a hash of ``(seed, g, k)``, so no random-generator state needs saving.

Exact resume: every batch carries its loader state (map-style: epoch and batches into it;
packed: per-source cursors and the draw counter of the reader that made it, taken *before* the
sample that did not fit, which the resumed reader draws again). The data module marks a batch
consumed when Lightning hands it to the training step (``on_before_batch_transfer``), so the
saved state is that of the last batch trained on, whatever the loader prefetched. Lightning
stores :meth:`StatefulLoader.state_dict` in the checkpoint (``loops.fit_loop.state_dict.
combined_loader``) and gives it back on resume before the first ``iter()``. Worker ``w`` of the
resumed loader plays reader ``(w + consumed) % num_workers``, so the round-robin order of worker
batches continues where it stopped. In DDP each rank's reader states are gathered into the
checkpoint (rank 0 writes it). Per-sample randomness (classifier-free-guidance dropout, random
frame sampling) is reseeded from ``(seed, sample, epoch)`` before each sample is built.

Everything saved is plain data (ints, strings, lists, dicts): checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, get_worker_info

from anymodal.data.manifest import ManifestIndex, Record
from anymodal.data.shards import ShardFile, list_shards
from anymodal.errors import ManifestError
from anymodal.packing import Batch, collate_rows
from anymodal.stream import StreamBuilder

log = logging.getLogger("anymodal")

STATE_VERSION = 1


@dataclass
class Source:
    """One weighted training source: a JSONL manifest (``path``) or a folder of tar shards
    written by ``anymodal data shard`` (``shards``). Relative paths resolve against ``data.root``.

    >>> Source(path="train.jsonl", weight=0.7), Source(shards="shards/", weight=0.3)  # doctest: +SKIP
    """

    path: str | None = None
    shards: str | None = None
    weight: float = 1.0

    def __post_init__(self):
        if (self.path is None) == (self.shards is None):
            raise ValueError(f"a data source needs exactly one of 'path' (a manifest) or 'shards' (a folder), "
                             f"got path={self.path!r}, shards={self.shards!r}")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source weight must be a finite number > 0, got {self.weight!r}")

    @property
    def name(self) -> str:
        return self.path if self.path is not None else self.shards


def as_sources(specs: Sequence[Source | dict]) -> list[Source]:
    """Normalise ``[{path: ..., weight: ...}, {shards: ..., weight: ...}]`` into :class:`Source`."""
    out = []
    for s in specs:
        if isinstance(s, Source):
            out.append(s)
        elif isinstance(s, dict):
            unknown = set(s) - {"path", "shards", "weight"}
            if unknown:
                raise ValueError(f"data source {s}: unknown keys {sorted(unknown)} (use path, shards, weight)")
            out.append(Source(**s))
        else:
            raise TypeError(f"a data source must be a mapping like {{path: a.jsonl, weight: 1}}, got {s!r}")
    if not out:
        raise ValueError("data.sources is empty")
    return out


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any printable parts, stable across processes and Python runs."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _perm(n: int, *parts: Any) -> np.ndarray:
    return np.random.default_rng(stable_seed(*parts)).permutation(n)


#: what building one record's stream may raise for a bad record: media that do not decode
#: (MediaError), a bad manifest line (ManifestError), a segment type or tokenizer the model lacks
#: (KeyError), an option value a tokenizer or decoder refuses (ValueError, TypeError). Training
#: skips such a record and counts it; it never ends the run.
RECORD_ERRORS = (ValueError, KeyError, TypeError)


def record_error_message(e: BaseException) -> str:
    """The one-line reason for a skipped record (a KeyError's message without its quotes)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


class Skipped:
    """A sample the loader dropped (bad media, bad record, longer than a row), and why."""

    def __init__(self, sample_id: str, reason: str):
        self.sample_id, self.reason = sample_id, reason


# ---------------------------------------------------------------------------------------------
# readers: one source, one reader (g of G); a cursor is a list of ints, advanced by next()


class _ManifestReader:
    def __init__(self, index: ManifestIndex, src: int, seed: int, g: int, G: int):
        self.index, self.src, self.seed, self.g, self.G = index, src, seed, g, G
        self._epoch, self._share = None, None

    @staticmethod
    def start() -> list[int]:
        return [0, 0]  # epoch, position in this reader's share

    def _share_of(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            self._share = _perm(len(self.index), self.seed, "manifest", self.src, epoch)[self.g::self.G].copy()
            self._epoch = epoch
        return self._share

    def next(self, cur: list[int]) -> tuple[Record | ManifestError, str, int, list[int]]:
        epoch, pos = cur
        if pos >= len(self._share_of(epoch)):
            epoch, pos = epoch + 1, 0
        i = int(self._share_of(epoch)[pos])
        try:
            rec: Record | ManifestError = self.index.record(i)
        except ManifestError as e:
            rec = e
        return rec, f"{self.index.path}:{i + 1}", epoch, [epoch, pos + 1]


class _ShardReader:
    def __init__(self, shards: list[Path], src: int, seed: int, g: int, G: int):
        self.shards, self.src, self.seed, self.g, self.G = shards, src, seed, g, G
        self._open: tuple[Path, ShardFile] | None = None
        self._warned: set[Path] = set()
        self._mine: tuple[int, np.ndarray] | None = None  # (epoch, this reader's shard indices)
        self._order: tuple[tuple[int, int], np.ndarray] | None = None  # ((epoch, shard), sample order)

    @staticmethod
    def start() -> list[int]:
        return [0, 0, 0]  # epoch, position in this reader's shard list, position in the shard

    def _file(self, path: Path) -> ShardFile:
        if self._open is None or self._open[0] != path:
            if self._open is not None:
                self._open[1].close()
            sf = ShardFile(path)
            if sf.error and path not in self._warned:
                self._warned.add(path)
                log.warning("anymodal: shard %s: %s", path, sf.error)
            self._open = (path, sf)
        return self._open[1]

    def next(self, cur: list[int]) -> tuple[Record | ManifestError, str, int, list[int]]:
        epoch, spos, pos = cur
        empty_run = 0
        while True:
            if self._mine is None or self._mine[0] != epoch:
                self._mine = (epoch, _perm(len(self.shards), self.seed, "shards", self.src, epoch)[self.g::self.G])
            mine = self._mine[1]
            if spos >= len(mine):
                epoch, spos, pos = epoch + 1, 0, 0
                continue
            k = int(mine[spos])
            sf = self._file(self.shards[k])
            if pos >= len(sf):
                spos, pos = spos + 1, 0
                empty_run += 1
                if empty_run > 2 * len(mine) + 1:
                    raise RuntimeError(f"no readable sample in the shards of reader {self.g} "
                                       f"({[str(self.shards[int(j)]) for j in mine][:5]})")
                continue
            if self._order is None or self._order[0] != (epoch, k):
                self._order = ((epoch, k), _perm(len(sf), self.seed, "shard", self.src, epoch, k))
            i = int(self._order[1][pos])
            try:
                rec: Record | ManifestError = sf.record(i)
            except ManifestError as e:
                rec = e
            return rec, f"{sf.path.name}:{sf.keys[i]}", epoch, [epoch, spos, pos + 1]


# ---------------------------------------------------------------------------------------------
# the packed mixture


class PackedMixture(IterableDataset):
    """Weighted sources -> streams -> batches of ``rows`` rows of ``seq_len`` tokens (first fit).

    Yields :class:`anymodal.packing.Batch` objects with ``skipped`` (samples dropped while this
    batch was filled) and a ``_loader_state`` attribute (see the module docstring). ``rank`` and
    ``world_size`` come from the trainer; the data-loader worker id from ``get_worker_info``.
    """

    def __init__(self, sources: Sequence[Source], root: str | Path, builder: StreamBuilder, seq_len: int,
                 tokens_per_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if tokens_per_batch < seq_len:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} is smaller than one row (seq_len={seq_len})")
        self.sources = as_sources(sources)
        self.builder, self.seq_len, self.rows = builder, seq_len, tokens_per_batch // seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        root = Path(root)
        self._data: list[tuple[str, Any]] = []
        for s in self.sources:
            p = Path(s.name) if Path(s.name).is_absolute() else root / s.name
            if s.path is not None:
                self._data.append(("manifest", ManifestIndex(p)))
            else:
                self._data.append(("shards", list_shards(p)[0]))
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self._cum = np.cumsum(w / w.sum())
        self.resume: dict[int, dict] = {}  # logical reader -> state, set by StatefulLoader
        self.rotation = 0

    def check_readers(self, num_workers: int) -> None:
        """Refuse layouts where a reader would get nothing (fewer shards or records than readers)."""
        W = max(1, num_workers)
        G = self.world_size * W
        for s, (kind, data) in zip(self.sources, self._data):
            n = len(data)
            if n < G:
                unit = "shards" if kind == "shards" else "records"
                raise ValueError(
                    f"data source {s.name}: {n} {unit} for {self.world_size} rank(s) x {W} worker(s) = {G} readers; "
                    f"every reader needs at least one. Write more, smaller shards (anymodal data shard "
                    f"--samples-per-shard N) or use fewer workers/devices.")

    def fresh_state(self) -> dict:
        return {"k": 0, "cursors": [(_ManifestReader if kind == "manifest" else _ShardReader).start()
                                    for kind, _ in self._data]}

    def _choose(self, g: int, k: int) -> int:
        if len(self._cum) == 1:
            return 0
        u = random.Random(stable_seed(self.seed, "mix", g, k)).random()
        return min(int(np.searchsorted(self._cum, u, side="right")), len(self._cum) - 1)

    def _build(self, rec: Record | ManifestError, where: str, epoch: int):
        if isinstance(rec, ManifestError):
            return Skipped(where, str(rec))
        sid = f"{rec.id} ({where})" if rec.id and rec.id != where else where  # the record and where it lives
        seed = stable_seed(self.seed, "sample", where, epoch)
        with torch.random.fork_rng(devices=[]):  # the main process's RNG is the model's: leave it alone
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are never touched
            self.builder.rng.seed(seed)
            try:
                s = self.builder.build(rec.segments)
            except RECORD_ERRORS as e:
                return Skipped(sid, record_error_message(e))
        if len(s) > self.seq_len:
            return Skipped(sid, f"{len(s)} tokens > seq_len {self.seq_len}")
        return s

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        W, w = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (w + self.rotation) % W
        g, G = self.rank * W + logical, self.world_size * W
        readers = [(_ManifestReader if kind == "manifest" else _ShardReader)(d, i, self.seed, g, G)
                   for i, (kind, d) in enumerate(self._data)]
        state = self.resume.get(logical) or self.fresh_state()
        state = {"k": int(state["k"]), "cursors": [list(c) for c in state["cursors"]]}
        pad = self.builder.vocab.pad
        streams, rows, free, skipped = [], [], [], 0
        # skipping is per record; a source where nothing is usable (every line bad, a wrong model)
        # must not spin forever without a batch
        in_a_row, limit = 0, 1000 + 10 * sum(len(d) for _, d in self._data)
        while True:
            before = {"k": state["k"], "cursors": [list(c) for c in state["cursors"]]}
            src = self._choose(g, state["k"])
            state["k"] += 1
            rec, where, epoch, state["cursors"][src] = readers[src].next(state["cursors"][src])
            item = self._build(rec, where, epoch)
            if isinstance(item, Skipped):
                log.warning("anymodal: skipping sample %s: %s", item.sample_id, item.reason)
                skipped += 1
                in_a_row += 1
                if in_a_row > limit:
                    raise RuntimeError(f"no usable sample in {in_a_row} draws from {[s.name for s in self.sources]}; "
                                       f"the last: {item.sample_id}: {item.reason}")
                continue
            in_a_row = 0
            n = len(item)
            r = next((j for j, f in enumerate(free) if f >= n), None)
            if r is None and len(rows) == self.rows:
                batch = collate_rows(streams, rows, self.seq_len, pad)
                batch.skipped = skipped
                batch._loader_state = {"reader": logical, "state": before}
                yield batch
                streams, rows, free, skipped = [], [], [], 0
            if r is None:
                rows.append([])
                free.append(self.seq_len)
                r = len(rows) - 1
            rows[r].append(len(streams))
            streams.append(item)
            free[r] -= n


# ---------------------------------------------------------------------------------------------
# map-style sampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded permutation per epoch; rank r takes indices r, r+W, ...)
    that can start its next epoch ``skip`` samples in, for mid-epoch resume.

    >>> s = ResumableSampler(range(10), num_replicas=1, rank=0, seed=0)
    >>> s.set_epoch(3); s.skip = 4; len(list(s))
    6
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


# ---------------------------------------------------------------------------------------------
# the loader


def _identity(x):
    return x


class StatefulLoader(DataLoader):
    """A ``DataLoader`` over a map-style dataset with a :class:`ResumableSampler`, or over a
    :class:`PackedMixture`, whose ``state_dict()`` is the position after the last batch the
    training step consumed (:meth:`mark_consumed`), for Lightning to save and restore."""

    def __init__(self, dataset, *, rank: int = 0, world_size: int = 1, **kw):
        self._packed = isinstance(dataset, PackedMixture)
        if self._packed:
            kw.setdefault("batch_size", None)
            kw.setdefault("collate_fn", _identity)
        super().__init__(dataset, **kw)
        self._rank, self._world = rank, world_size
        self._consumed = 0  # batches consumed in this run and before (packed)
        self._readers: dict[int, dict] = {}  # logical reader -> state after its last consumed batch
        self._map_state: dict | None = None  # {"epoch", "batches"} of the last consumed batch
        self._map_start = 0  # batches already consumed in the epoch the next iterator starts

    def __iter__(self):
        if self._packed:
            yield from super().__iter__()
            return
        epoch, start = self.sampler.epoch, self._map_start
        self._map_start = 0
        for i, batch in enumerate(super().__iter__()):
            batch._loader_state = {"epoch": epoch, "batches": start + i + 1}
            yield batch

    def mark_consumed(self, batch) -> None:
        """Record that the training step took ``batch`` (called by the data module)."""
        st = getattr(batch, "_loader_state", None)
        if st is None:
            return
        if self._packed:
            self._readers[int(st["reader"])] = st["state"]
            self._consumed += 1
        else:
            self._map_state = dict(st)

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def state_dict(self) -> dict:
        if not self._packed:
            st = self._map_state or {"epoch": self.sampler.epoch, "batches": 0}
            return {"version": STATE_VERSION, "kind": "map", "epoch": int(st["epoch"]), "batches": int(st["batches"]),
                    "batch_size": int(self.batch_size), "world_size": self._world}
        local = {"readers": {str(k): v for k, v in self._readers.items()}, "consumed": self._consumed}
        ranks = [local]
        if self._world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, local)  # every rank saves through rank 0's file
        return {"version": STATE_VERSION, "kind": "packed", "world_size": self._world, "num_workers": self._workers(),
                "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        kind = "packed" if self._packed else "map"
        if state.get("kind") != kind:
            warnings.warn(f"anymodal: the checkpoint's data-loader state is for the {state.get('kind')!r} data path, "
                          f"this run uses {kind!r}: the data order restarts", stacklevel=2)
            return
        if not self._packed:
            self._load_map(state)
            return
        if state["world_size"] != self._world or state["num_workers"] != self._workers():
            warnings.warn(f"anymodal: the checkpoint was written by {state['world_size']} rank(s) x "
                          f"{state['num_workers']} worker(s), this run has {self._world} x {self._workers()}: "
                          "the data streams restart from the beginning (an exact resume needs the same layout)",
                          stacklevel=2)
            return
        mine = state["ranks"][self._rank if len(state["ranks"]) > 1 else 0]
        self._readers = {int(k): v for k, v in mine["readers"].items()}
        self._consumed = int(mine["consumed"])
        self.dataset.resume = dict(self._readers)
        self.dataset.rotation = self._consumed % self._workers()

    def _load_map(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if state["world_size"] != self._world or state["batch_size"] != self.batch_size:
            samples = batches * state["batch_size"] * state["world_size"]
            batches = samples // (self.batch_size * self._world)
            warnings.warn(f"anymodal: batch size or world size changed since the checkpoint; resuming epoch {epoch} "
                          f"after {batches * self.batch_size * self._world} of its samples (approximate)", stacklevel=2)
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = batches * self.batch_size
        self._map_start = batches
        self._map_state = {"epoch": epoch, "batches": batches}
