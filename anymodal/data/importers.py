"""Importers: public interleaved-document corpora -> our JSONL manifest (:mod:`anymodal.data.manifest`).

Two layouts cover most web-scale interleaved corpora:

- **OBELICS** (Laurençon et al. 2023, HuggingFaceM4/OBELICS): per document, two lists of the same
  length, ``texts`` and ``images``; at each index exactly one of them is not ``None``. The web
  page ``<image_1> text <image_2>`` is ``images = [url_1, None, url_2]``,
  ``texts = [None, "text", None]``. ``general_metadata`` (a JSON string) holds the page URL.
- **MMC4** (Zhu et al. 2023, allenai/mmc4): ``text_list`` (the sentences of the page) and
  ``image_info`` (a list of ``{"image_name", "raw_url", "matched_text_index", "matched_sim"}``): each
  image was assigned to one sentence by CLIP similarity. As in OpenFlamingo's MMC4 loader, an
  image goes right *before* the sentence it was matched to (``image_position="after"`` for the
  other choice), and images below ``min_similarity`` can be dropped.

Both corpora ship image URLs, not pixels: download them first (e.g. with img2dataset), then say
where they are. An image reference is resolved in this order: ``url_map`` (a dict URL -> local
path, e.g. a TSV built from your downloader's log, read with :func:`read_url_map`), MMC4's ``image_name`` under
``image_root``, a relative local path under ``image_root``; otherwise the reference is kept as is
(a URL in a manifest is a sample the loader will skip as "file not found"). Resolved files are
written relative to the output manifest's folder when they lie inside it, absolute otherwise,
so the manifest reader (which resolves relative paths against that folder) finds them. With
``drop_missing=True`` images whose file does not exist are removed from their document and
counted; a document left without any segment is dropped.

Consecutive text entries are joined into one text segment (``"\\n\\n"`` between OBELICS
paragraphs, ``" "`` between MMC4 sentences). Records carry no ``target`` role: they train as
plain interleaved language modelling on every discrete token.

Command line::

    anymodal data import --format obelics obelics-000.jsonl data/obelics.jsonl --image-root img/
    anymodal data import --format mmc4 docs_shard_0_v2.jsonl data/mmc4.jsonl --image-root mmc4_images/ \\
        --min-similarity 0.24 --drop-missing

Input files are JSONL (one document per line; ``.jsonl.gz`` too) or, when ``pyarrow`` is
installed, Parquet (the OBELICS release format).

**Conversations** (instruction data; records with turns, for a model with
``model.arch.chat_template``, see :mod:`anymodal.chat`). Input: a JSON array or JSONL.

- ``llava`` (LLaVA, LLaVA-1.5, ShareGPT4V, LLaVA-Video): ``{"id", "image": "p.png" | ["p1", "p2"],
  "video": ..., "conversations": [{"from": "human"|"gpt"|"system", "value": "<image>\\n..."}]}``.
  Each ``<image>`` (``<video>``) placeholder becomes an image (video) segment where it stands; a
  record with media but no placeholder gets them before the first human turn, as LLaVA does.
- ``sharegpt``: the same ``conversations`` layout (text only, or with media as above).
- ``messages``: Hugging Face ``{"messages": [{"role", "content": str | [{"type": "text"|"image"|
  "video"|"audio", ...}]}]}``.

Each turn becomes ``{"type": "turn", "turn": "user"}`` followed by its segments; assistant
segments are ``role: target`` (the loss falls on every assistant turn). A record is dropped and
its reason kept (``--strict``: the import stops there) when it is malformed, names a media file
that is not on disk, or has placeholders that do not match its media count::

    anymodal data import --format llava llava_v1_5_mix665k.json data/llava.jsonl --image-root coco/
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anymodal.errors import ManifestError

FORMATS = ("obelics", "mmc4", "llava", "sharegpt", "messages")
CHAT_FORMATS = ("llava", "sharegpt", "messages")
#: speaker names of ShareGPT/LLaVA ``from`` fields -> our turn speakers
_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
             "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
_MEDIA = ("image", "video", "audio")
_URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "ftp://", "hf://")


@dataclass
class ImportReport:
    """What an import did; ``reasons`` keeps the first few reasons documents were dropped."""

    docs_read: int = 0
    docs_written: int = 0
    docs_dropped: int = 0
    images_kept: int = 0
    images_missing: int = 0
    images_below_similarity: int = 0
    reasons: list[str] = field(default_factory=list)

    def drop(self, where: str, reason: str) -> None:
        self.docs_dropped += 1
        if len(self.reasons) < 20:
            self.reasons.append(f"{where}: {reason}")

    def summary(self) -> str:
        return (f"{self.docs_read} documents read, {self.docs_written} written, {self.docs_dropped} dropped; "
                f"{self.images_kept} images kept, {self.images_missing} missing on disk, "
                f"{self.images_below_similarity} below the similarity threshold")


class _DocError(ValueError):
    """A document that does not follow its format (becomes a ManifestError naming file:line)."""


def _is_url(ref: str) -> bool:
    return ref.startswith(_URL_SCHEMES)


class _Resolver:
    def __init__(self, image_root: str | os.PathLike | None, url_map: dict[str, str] | None, drop_missing: bool,
                 report: ImportReport, out_dir: Path):
        self.root = Path(image_root).absolute() if image_root is not None else None
        self.out_dir = out_dir.absolute()
        self.url_map = url_map or {}
        self.drop_missing = drop_missing
        self.report = report

    def __call__(self, ref: Any, name: str | None = None) -> str | None:
        """A local path (or the reference as given) for an image; None if dropped as missing."""
        if isinstance(ref, dict):  # {"url": ...} / {"path": ...} variants of re-packed corpora
            ref = ref.get("path") or ref.get("url") or ref.get("src")
        if not isinstance(ref, str) or not ref:
            raise _DocError(f"image reference must be a non-empty string, got {type(ref).__name__}")
        if ref in self.url_map:
            out = self.url_map[ref]
        elif name and self.root is not None:
            out = str(self.root / name)
        elif not _is_url(ref) and self.root is not None and not os.path.isabs(ref):
            out = str(self.root / ref)
        else:
            out = ref
        if self.drop_missing and (_is_url(out) or not os.path.isfile(out)):
            self.report.images_missing += 1
            return None
        self.report.images_kept += 1
        if _is_url(out) or out == ref and not os.path.isabs(out):
            return out  # as given: a URL, or a path the user means relative to the manifest
        # a file we resolved: relative to the manifest's folder when inside it (the folder can
        # move), absolute otherwise
        full = Path(out).absolute()
        return str(full.relative_to(self.out_dir)) if full.is_relative_to(self.out_dir) else str(full)


def _merge_texts(segments: list[dict], sep: str) -> list[dict]:
    out: list[dict] = []
    for s in segments:
        if s["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = {"type": "text", "text": out[-1]["text"] + sep + s["text"]}
        else:
            out.append(s)
    return out


def obelics_to_record(doc: dict, resolve: _Resolver) -> dict | None:
    """One OBELICS document -> one manifest record (a dict), or None if nothing is left."""
    texts, images = doc.get("texts"), doc.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        raise _DocError("needs 'texts' and 'images' lists")
    if len(texts) != len(images):
        raise _DocError(f"'texts' has {len(texts)} entries but 'images' has {len(images)}")
    segments: list[dict] = []
    for i, (t, im) in enumerate(zip(texts, images)):
        if (t is None) == (im is None):
            raise _DocError(f"index {i}: exactly one of texts[{i}] and images[{i}] must be set")
        if t is not None:
            if not isinstance(t, str):
                raise _DocError(f"texts[{i}] must be a string")
            if t.strip():
                segments.append({"type": "text", "text": t})
        else:
            path = resolve(im)
            if path is not None:
                segments.append({"type": "image", "path": path})
    segments = _merge_texts(segments, "\n\n")
    if not segments:
        return None
    rec: dict = {"segments": segments}
    meta = doc.get("general_metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    if isinstance(meta, dict) and isinstance(meta.get("url"), str):
        rec["source_url"] = meta["url"]
    return rec


def mmc4_to_record(doc: dict, resolve: _Resolver, image_position: str = "before",
                   min_similarity: float | None = None, report: ImportReport | None = None) -> dict | None:
    """One MMC4 document -> one manifest record (a dict), or None if nothing is left."""
    if image_position not in ("before", "after"):
        raise ValueError(f"image_position must be 'before' or 'after', got {image_position!r}")
    sentences, infos = doc.get("text_list"), doc.get("image_info", [])
    if not isinstance(sentences, list) or not isinstance(infos, list):
        raise _DocError("needs a 'text_list' list (and 'image_info' as a list)")
    at: dict[int, list[str]] = {}
    for j, info in enumerate(infos):
        if not isinstance(info, dict):
            raise _DocError(f"image_info[{j}] must be an object")
        k = info.get("matched_text_index")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(sentences):
            raise _DocError(f"image_info[{j}]: matched_text_index {k!r} is not an index of text_list "
                            f"({len(sentences)} sentences)")
        sim = info.get("matched_sim")
        if min_similarity is not None and isinstance(sim, (int, float)) and sim < min_similarity:
            if report is not None:
                report.images_below_similarity += 1
            continue
        name = info.get("image_name")
        path = resolve(info.get("raw_url") or name, name if isinstance(name, str) else None)
        if path is not None:
            at.setdefault(k, []).append(path)
    segments: list[dict] = []
    for k, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise _DocError(f"text_list[{k}] must be a string")
        imgs = [{"type": "image", "path": p} for p in at.get(k, [])]
        text = [{"type": "text", "text": sentence}] if sentence.strip() else []
        segments += imgs + text if image_position == "before" else text + imgs
    segments = _merge_texts(segments, " ")
    if not segments:
        return None
    rec: dict = {"segments": segments}
    if isinstance(doc.get("url"), str):
        rec["source_url"] = doc["url"]
    return rec


class _MediaRoots:
    """Media references of conversation records -> paths; a file that is not there drops the record."""

    def __init__(self, roots: dict[str, str | os.PathLike | None], out_dir: Path, report: ImportReport):
        self.roots = {k: Path(v).absolute() for k, v in roots.items() if v is not None}
        self.out_dir, self.report = out_dir.absolute(), report

    def __call__(self, kind: str, ref: Any) -> str:
        if isinstance(ref, dict):
            ref = ref.get("path") or ref.get(kind) or ref.get("url")
        if not isinstance(ref, str) or not ref:
            raise _DocError(f"{kind} reference must be a non-empty string, got {type(ref).__name__}")
        if _is_url(ref):
            raise _DocError(f"{kind} {ref!r} is a URL; download it and pass --{kind}-root")
        root = self.roots.get(kind)
        full = Path(ref) if os.path.isabs(ref) or root is None else root / ref
        if not full.is_file():
            self.report.images_missing += 1
            raise _DocError(f"{kind} file not found: {full}" + ("" if root else f" (pass --{kind}-root)"))
        self.report.images_kept += 1
        full = full.absolute()
        return str(full.relative_to(self.out_dir)) if full.is_relative_to(self.out_dir) else str(full)


def _split_placeholders(text: str, media: dict[str, list[str]], used: dict[str, int]) -> list[dict]:
    """``"<image>\\nWhat is it?"`` -> image and text segments in order, taking media in turn."""
    import re

    out: list[dict] = []
    for piece in re.split(r"(<image>|<video>|<audio>)", text):
        kind = piece[1:-1] if piece in ("<image>", "<video>", "<audio>") else None
        if kind is None:
            if piece.strip():
                out.append({"type": "text", "text": piece.strip()})
            continue
        i = used[kind]
        used[kind] += 1
        if i < len(media[kind]):
            out.append({"type": kind, "path": media[kind][i]})
    return out


def sharegpt_to_record(doc: dict, resolve: _MediaRoots) -> dict:
    """One LLaVA / ShareGPT record -> one manifest record with turns (see the module docstring)."""
    conv = doc.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise _DocError("needs a non-empty 'conversations' list")
    media: dict[str, list[str]] = {}
    for kind in _MEDIA:
        refs = doc.get(kind)
        refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
        media[kind] = [resolve(kind, r) for r in refs]
    turns: list[tuple[str, str]] = []
    for j, t in enumerate(conv):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            raise _DocError(f"conversations[{j}] must be an object with a string 'value'")
        speaker = _SPEAKERS.get(str(t.get("from", t.get("role", ""))).lower())
        if speaker is None:
            raise _DocError(f"conversations[{j}]: unknown speaker {t.get('from')!r} "
                            f"(expected human, gpt or system)")
        turns.append((speaker, t["value"]))
    if not any(s == "assistant" for s, _ in turns):
        raise _DocError("no assistant (gpt) turn to learn from")
    for kind in _MEDIA:
        n_tags = sum(v.count(f"<{kind}>") for _, v in turns)
        if n_tags and n_tags != len(media[kind]):
            raise _DocError(f"{n_tags} <{kind}> placeholder(s) but {len(media[kind])} {kind}(s)")
    used = dict.fromkeys(_MEDIA, 0)
    segments: list[dict] = []
    leading_done = False
    for speaker, value in turns:
        segments.append({"type": "turn", "turn": speaker})
        if speaker == "user" and not leading_done:  # media without placeholders: before the first question
            leading_done = True
            for kind in _MEDIA:
                if media[kind] and not any(f"<{kind}>" in v for _, v in turns):
                    segments += [{"type": kind, "path": p} for p in media[kind]]
        parts = _split_placeholders(value, media, used)
        if speaker == "assistant":
            parts = [{**p, "role": "target"} for p in parts]
        segments += parts
    return {"segments": segments}


def messages_to_record(doc: dict, resolve: _MediaRoots) -> dict:
    """One Hugging Face ``{"messages": [...]}`` record -> one manifest record with turns."""
    msgs = doc.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _DocError("needs a non-empty 'messages' list")
    segments: list[dict] = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise _DocError(f"messages[{j}] needs a 'role' of system, user or assistant")
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise _DocError(f"messages[{j}]: 'content' must be a string or a list of parts")
        segments.append({"type": "turn", "turn": m["role"]})
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                seg = {"type": "text", "text": part["text"]}
            elif kind in _MEDIA:
                seg = {"type": kind, "path": resolve(kind, part.get("path") or part.get(kind) or part.get("url"))}
            else:
                raise _DocError(f"messages[{j}].content[{k}]: expected a text, image, video or audio part")
            segments.append({**seg, "role": "target"} if m["role"] == "assistant" else seg)
    if not any(m.get("role") == "assistant" for m in msgs):
        raise _DocError("no assistant message to learn from")
    return {"segments": segments}


def _read_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(record number from 1, record) of a JSON array file (LLaVA's release format)."""
    try:
        docs = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(path, 1, f"not a valid JSON array ({e})") from None
    if not isinstance(docs, list):
        raise ManifestError(path, 1, "expected a JSON array of records (or JSONL)")
    yield from enumerate(docs, 1)


def _starts_with_array(path: Path) -> bool:
    if path.suffix in (".gz", ".parquet"):
        return False
    with open(path, "rb") as fh:
        return fh.read(4096).lstrip().startswith(b"[")


def _read_docs(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, document) from JSONL(.gz) or Parquet; bad JSON -> ManifestError."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for doc in batch.to_pylist():
                row += 1
                yield row, doc
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield i, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise ManifestError(path, i, f"not a valid JSON document ({e})") from None


def read_url_map(path: str | os.PathLike) -> dict[str, str]:
    """URL -> local path, from a TSV (``url<TAB>path`` per line) or a JSONL file of
    ``{"url": ..., "path": ...}`` objects (relative paths resolve against the file's folder)."""
    path = Path(path)
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
                url, local = obj["url"], obj["path"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ManifestError(path, i, "expected {\"url\": ..., \"path\": ...}") from None
        else:
            parts = line.split("\t")
            if len(parts) != 2:
                raise ManifestError(path, i, "expected 'url<TAB>path'")
            url, local = parts
        out[url] = local if os.path.isabs(local) else str(path.parent / local)
    return out


def import_documents(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, *,
                     image_root: str | os.PathLike | None = None, url_map: dict[str, str] | None = None,
                     drop_missing: bool = False, strict: bool = False, image_position: str = "before",
                     min_similarity: float | None = None, limit: int | None = None,
                     video_root: str | os.PathLike | None = None,
                     audio_root: str | os.PathLike | None = None) -> ImportReport:
    """Convert an OBELICS-, MMC4-, LLaVA-, ShareGPT- or messages-style file into a manifest at
    ``dst`` (written atomically). The conversation formats read ``image_root``, ``video_root`` and
    ``audio_root`` for relative media paths, and keep a record's ``id``.

    A document that breaks its format is dropped and counted (``strict=True``: raise
    :class:`anymodal.ManifestError` naming ``src:line`` instead). Media paths in the output are
    as resolved (absolute if ``image_root`` is absolute), so the manifest can live anywhere.

    >>> rep = import_documents("obelics.jsonl", "data/obelics.jsonl", "obelics", image_root="img")  # doctest: +SKIP
    >>> rep.summary()
    '1000 documents read, 996 written, 4 dropped; 3120 images kept, 0 missing on disk, 0 below ...'
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; choose one of {FORMATS}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"input not found: {src}")
    report = ImportReport()
    resolve = _Resolver(image_root, url_map, drop_missing, report, dst.parent)
    media = _MediaRoots({"image": image_root, "video": video_root, "audio": audio_root}, dst.parent, report)
    docs = _read_json_array(src) if fmt in CHAT_FORMATS and _starts_with_array(src) else _read_docs(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for line, doc in docs:
            if limit is not None and report.docs_read >= limit:
                break
            report.docs_read += 1
            try:
                if not isinstance(doc, dict):
                    raise _DocError(f"expected a JSON object, got {type(doc).__name__}")
                if fmt in ("llava", "sharegpt"):
                    rec = sharegpt_to_record(doc, media)
                elif fmt == "messages":
                    rec = messages_to_record(doc, media)
                elif fmt == "obelics":
                    rec = obelics_to_record(doc, resolve)
                else:
                    rec = mmc4_to_record(doc, resolve, image_position, min_similarity, report)
            except _DocError as e:
                where = f"record {doc['id']!r}: " if isinstance(doc, dict) and "id" in doc else ""
                if strict:
                    raise ManifestError(src, line, where + str(e)) from None
                report.drop(f"{src}:{line}", where + str(e))
                continue
            if rec is None:
                report.drop(f"{src}:{line}", "no text and no image left")
                continue
            rec = {"id": str(doc["id"]) if fmt in CHAT_FORMATS and "id" in doc else f"{src.name}:{line}", **rec}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            report.docs_written += 1
    os.replace(tmp, dst)
    return report
