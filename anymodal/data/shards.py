"""WebDataset-style tar shards: many samples per file, media bytes inside, read without extraction.

Why shards: a manifest of millions of small files is slow to read from network storage (one
open/seek per image); a few hundred large tar files are read sequentially, copied and cached
as units, and split across nodes and data-loader workers by file (the WebDataset layout,
Aizman et al. 2019). ``anymodal data shard`` writes them from a manifest::

    anymodal data shard --manifest data/train.jsonl --out data/shards --samples-per-shard 1000

Layout of ``data/shards/``::

    shard-000000.tar   shard-000001.tar   ...   index.json

Inside a tar, the members of one sample share a *key* (WebDataset convention: the member name
up to its first dot), e.g. sample ``000000017``::

    000000017.json        {"id": ..., "task": ..., "segments": [{"type": "text", "text": ...},
                                                               {"type": "image", "member": "seg1.png"}]}
    000000017.seg1.png    the image bytes, exactly as in the source file

``member`` names the sample's media member by its suffix after the key; all other segment keys
are those of the manifest schema (:mod:`anymodal.data.manifest`). ``index.json`` lists the shards
and their sample counts and is written last, so a folder with an ``index.json`` is complete.
Shards are written deterministically (sorted, mtime 0, no user names): the same manifest gives
byte-identical tars. The ``webdataset`` package reads them as they are
(``wds.WebDataset(urls)`` yields ``{"__key__": "000000017", "json": ..., "seg1.png": ...}``).

Reading (:class:`ShardFile`) never extracts to disk: it scans the tar headers (seeks only, no
data read) and reads one sample's members on demand, so samples can be visited in any order —
a seeded shuffle inside each shard, resumable by position (:mod:`anymodal.train.sources`).
A truncated or corrupt shard keeps the samples before the damage; a bad sample raises
:class:`anymodal.ManifestError` naming the shard and the sample.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from anymodal.data.manifest import ManifestIndex, Record, parse_line
from anymodal.errors import ManifestError
from anymodal.segments import Segment, segment_from_dict

INDEX_FILE = "index.json"
FORMAT = "anymodal-shards"
VERSION = 1
#: members larger than this are refused when reading (a corrupt size field must not allocate GBs)
MAX_MEMBER_BYTES = 1 << 30
MAX_JSON_BYTES = 16 << 20


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class ShardReport:
    """What :func:`write_shards` did: samples written and skipped (with the first reasons),
    media files read, shards written."""

    samples: int = 0
    skipped: int = 0
    files_read: int = 0
    bytes_written: int = 0
    shards: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.samples} samples in {len(self.shards)} shards ({self.bytes_written / 1e6:.1f} MB), "
                f"{self.files_read} media files read, {self.skipped} samples skipped")


def _ext(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,8}", suffix) else "bin"


def _segment_dict(seg: Segment) -> dict:
    d: dict = {"type": seg.modality}
    if seg.modality == "text":
        d["text"] = seg.data
    if seg.role != "prompt":
        d["role"] = seg.role
    if seg.tokenizer is not None:
        d["tokenizer"] = seg.tokenizer
    d.update(seg.options)
    return d


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _sample_members(rec: Record, key: str) -> list[tuple[str, bytes]]:
    """The tar members of one record; OSError/ValueError if a media file cannot be read."""
    segments, media = [], []
    for k, seg in enumerate(rec.segments):
        d = _segment_dict(seg)
        if seg.modality != "text":
            if not isinstance(seg.data, str):
                raise ValueError(f"segment {k} holds no file path")
            data = Path(seg.data).read_bytes()
            if not data:
                raise ValueError(f"{seg.data}: empty file (0 bytes)")
            suffix = f"seg{k}.{_ext(seg.data)}"
            media.append((f"{key}.{suffix}", data))
            d["member"] = suffix
        segments.append(d)
    meta = {"id": rec.id, "segments": segments}
    if rec.task:
        meta["task"] = rec.task
    if rec.answer is not None:
        meta["answer"] = rec.answer
    if rec.choices:
        meta["choices"] = rec.choices
    return [(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))] + media


def write_shards(manifest: str | os.PathLike, out: str | os.PathLike, samples_per_shard: int = 1000,
                 prefix: str = "shard", strict: bool = False) -> ShardReport:
    """Write the records of ``manifest`` into tar shards of ``samples_per_shard`` samples.

    A record whose line is bad or whose media file cannot be read is skipped and counted
    (``strict=True``: raise instead). Each shard is written to a temporary name and renamed;
    ``index.json`` comes last.

    >>> write_shards("data/train.jsonl", "data/shards", samples_per_shard=1000).summary()  # doctest: +SKIP
    '60000 samples in 60 shards (212.4 MB), 60000 media files read, 0 samples skipped'
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_FILE).exists():
        (out / INDEX_FILE).unlink()  # the folder is incomplete until the new index is written
    index = ManifestIndex(manifest)
    report = ShardReport()
    entries: list[dict] = []
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    in_shard = 0

    def close():
        nonlocal tar, in_shard
        if tar is None:
            return
        tar.close()
        name = f"{prefix}-{len(entries):06d}.tar"
        os.replace(tmp, out / name)
        report.bytes_written += (out / name).stat().st_size
        entries.append({"name": name, "samples": in_shard})
        report.shards.append(name)
        tar, in_shard = None, 0

    for i in range(len(index)):
        try:
            rec = index.record(i)
            members = _sample_members(rec, f"{report.samples:09d}")
        except (ManifestError, OSError, ValueError) as e:
            if strict:
                raise
            report.skipped += 1
            if len(report.reasons) < 20:
                report.reasons.append(f"{index.path}:{i + 1}: {e}")
            continue
        if tar is None:
            tmp = out / f"{prefix}-{len(entries):06d}.tar.tmp"
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT if _short(members) else tarfile.PAX_FORMAT)
        for name, data in members:
            _add(tar, name, data)
        report.files_read += len(members) - 1
        report.samples += 1
        in_shard += 1
        if in_shard == samples_per_shard:
            close()
    close()
    meta = {"format": FORMAT, "version": VERSION, "source": str(manifest), "samples": report.samples,
            "skipped": report.skipped, "shards": entries}
    tmp_index = out / (INDEX_FILE + ".tmp")
    tmp_index.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_index, out / INDEX_FILE)
    return report


def _short(members) -> bool:
    return all(len(n) < 100 for n, _ in members)


# ---------------------------------------------------------------------------------------------
# reading


def list_shards(path: str | os.PathLike) -> tuple[list[Path], list[int] | None]:
    """Shard files of a folder (from its ``index.json`` if present, else every ``*.tar`` in name
    order) or of a single ``.tar`` file, and their sample counts when the index gives them."""
    p = Path(path)
    if p.is_file():
        return [p], None
    if not p.is_dir():
        raise FileNotFoundError(f"shards not found: {p}")
    idx = p / INDEX_FILE
    if idx.is_file():
        try:
            meta = json.loads(idx.read_text())
            shards = [p / e["name"] for e in meta["shards"]]
            counts = [int(e["samples"]) for e in meta["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{idx}: not a valid shard index ({e})") from None
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{p}: the index lists shards that are missing: {missing[:5]}")
        return shards, counts
    shards = sorted(p.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{p}: no .tar shards and no {INDEX_FILE}")
    return shards, None


class ShardFile:
    """Random access to the samples of one tar shard.

    ``keys`` lists the sample keys in file order; :meth:`record` reads one sample's members and
    returns a :class:`Record` whose media segments hold the bytes. ``error`` is set when the tar
    is damaged: the samples whose headers came before the damage stay readable.

    >>> sf = ShardFile("data/shards/shard-000000.tar")  # doctest: +SKIP
    >>> len(sf), sf.record(0).segments[1].data[:4]
    (1000, b'\\x89PNG')
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.error: str | None = None
        self._members: dict[str, dict[str, tarfile.TarInfo]] = {}
        self.keys: list[str] = []
        self._tar: tarfile.TarFile | None = None
        try:
            self._tar = tarfile.open(self.path, "r:")
            while True:
                info = self._tar.next()
                if info is None:
                    break
                if not info.isfile():
                    continue  # links, folders, devices: never followed
                base = info.name.rsplit("/", 1)
                stem = base[-1]
                if "." not in stem:
                    continue
                key = (base[0] + "/" if len(base) == 2 else "") + stem.split(".", 1)[0]
                suffix = stem.split(".", 1)[1]
                if key not in self._members:
                    self._members[key] = {}
                    self.keys.append(key)
                self._members[key][suffix] = info
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            self.error = f"damaged tar after {len(self.keys)} samples ({e})"

    def __len__(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def _read(self, key: str, info: tarfile.TarInfo, limit: int) -> bytes:
        if info.size > limit:
            raise ValueError(f"member {info.name} has {info.size} bytes, over the limit of {limit}")
        fh = self._tar.extractfile(info)
        data = fh.read() if fh is not None else b""
        if len(data) != info.size:
            raise ValueError(f"member {info.name} is truncated ({len(data)} of {info.size} bytes)")
        return data

    def record(self, i: int) -> Record:
        """Sample ``i`` (0-based, file order) as a Record; :class:`ManifestError` if it is bad."""
        key = self.keys[i]
        where = f"{self.path}:{key}"
        members = self._members[key]
        try:
            if "json" not in members:
                raise ValueError("no .json member")
            raw = self._read(key, members["json"], MAX_JSON_BYTES)
            line = raw.decode("utf-8")
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("segments"), list) or not obj["segments"]:
                raise ValueError("the .json member needs a non-empty 'segments' list")
            segs = []
            for k, d in enumerate(obj["segments"]):
                if not isinstance(d, dict):
                    raise ValueError(f"segment {k} must be an object")
                d = dict(d)
                if not isinstance(d.get("tokenizer", ""), (str, type(None))):
                    raise ValueError(f"segment {k}: 'tokenizer' must be a string")
                if d.get("type") != "text" and "member" in d:
                    m = d.pop("member")
                    if not isinstance(m, str) or m not in members:
                        raise ValueError(f"segment {k} names member {m!r}, which the sample lacks")
                    d["data"] = self._read(key, members[m], MAX_MEMBER_BYTES)
                    segs.append(segment_from_dict(d))
                else:  # text, or a media segment that points at a file outside the shard
                    segs.append(parse_line(json.dumps({"segments": [d]}), where, 1, self.path.parent).segments[0])
        except ManifestError as e:
            raise ManifestError(where, i + 1, e.reason) from None
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError, tarfile.TarError, OSError) as e:
            raise ManifestError(self.path, i + 1, f"sample {key}: {e}") from None
        choices = obj.get("choices") or []
        return Record(segments=segs, id=str(obj.get("id", where)), task=str(obj.get("task", "")),
                      answer=obj.get("answer"), choices=[str(c) for c in choices] if isinstance(choices, list) else [])
