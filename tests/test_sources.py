"""Data sources: manifest reading at scale, OBELICS/MMC4 importers, tar shards (written, read,
damaged, read by the webdataset package), the split over ranks x workers, token-budget packing,
mixture weights, and the map-style loader's saved position."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import anymodal as am
from anymodal.cli import main as cli_main
from anymodal.data.importers import import_documents, read_url_map
from anymodal.data.manifest import ManifestIndex, read_manifest
from anymodal.data.shards import INDEX_FILE, ShardFile, list_shards, write_shards
from anymodal.model import debug
from anymodal.train.sources import (
    PackedMixture,
    ResumableSampler,
    Source,
    StatefulLoader,
    _ManifestReader,
    _ShardReader,
    as_sources,
)


def _subset(synth_root: Path, tmp: Path, n: int, name: str = "m.jsonl", start: int = 0) -> Path:
    lines = (synth_root / "train.jsonl").read_text().splitlines()[start:start + n]
    lines = [json.dumps({**json.loads(ln), "segments": [
        {**s, "path": str(synth_root / s["path"])} if "path" in s else s for s in json.loads(ln)["segments"]]})
        for ln in lines]
    p = tmp / name
    p.write_text("\n".join(lines) + "\n")
    return p


# ---- manifests ---------------------------------------------------------------------------------


def test_manifest_index_matches_read_manifest_and_names_bad_lines(tmp_path):
    good = json.dumps({"segments": [{"type": "text", "text": "hi"}, {"type": "image", "path": "a.png"}]})
    p = tmp_path / "m.jsonl"
    p.write_bytes((good + "\n" + '{"segments": [{"type": "image", "path": ["a"]}]}\n' + good + "\n").encode()
                  + b'{"segments": [{"type": "text", "text": "\xff"}]}\n')
    idx = ManifestIndex(p)
    assert len(idx) == 4
    assert idx.record(0).segments[1].data == str(tmp_path / "a.png")
    with pytest.raises(am.ManifestError, match=r"m.jsonl:2: bad segment: segment 0 \(image\): 'path' must be"):
        idx.record(1)
    with pytest.raises(am.ManifestError, match=r"m.jsonl:4: not valid UTF-8"):
        idx.record(3)
    with pytest.raises(am.ManifestError, match=r"m.jsonl:2:"):
        read_manifest(p)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"segments": ' + "[" * 100_000 + "\n")
    with pytest.raises(am.ManifestError, match="deep.jsonl:1: not valid JSON"):
        read_manifest(deep)


# ---- importers ---------------------------------------------------------------------------------


def test_obelics_import_keeps_order_and_counts_bad_documents(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.png").write_bytes(b"png")
    docs = [
        {"texts": [None, "A cat.", "More text.", None], "images": ["http://x/a.png", None, None, "b.png"],
         "general_metadata": json.dumps({"url": "http://page"})},
        {"texts": ["both", None], "images": ["http://x/c.png", None]},  # index 0 has both, index 1 neither
        {"texts": [None], "images": ["http://x/missing.png"]},  # nothing left after --drop-missing
    ]
    src = tmp_path / "obelics.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    url_map = tmp_path / "urls.tsv"
    url_map.write_text("http://x/a.png\timg/a.png\n")
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    rep = import_documents(src, tmp_path / "out.jsonl", "obelics", image_root=tmp_path / "img",
                           url_map=read_url_map(url_map), drop_missing=True)
    assert (rep.docs_read, rep.docs_written, rep.docs_dropped, rep.images_kept, rep.images_missing) == (3, 1, 2, 2, 1)
    assert "exactly one of texts[0] and images[0]" in rep.reasons[0]
    (rec,) = read_manifest(tmp_path / "out.jsonl")
    assert [(s.modality, s.data) for s in rec.segments] == [
        ("image", str(tmp_path / "img" / "a.png")), ("text", "A cat.\n\nMore text."),
        ("image", str(tmp_path / "img" / "b.png"))]
    assert rec.id == "obelics.jsonl:1"
    with pytest.raises(am.ManifestError, match=r"obelics.jsonl:2: index 0"):
        import_documents(src, tmp_path / "strict.jsonl", "obelics", strict=True)


def test_mmc4_import_places_images_by_matched_sentence(tmp_path):
    doc = {"url": "http://page", "text_list": ["First.", "Second.", "Third."],
           "image_info": [{"image_name": "i1.jpg", "raw_url": "http://x/1.jpg", "matched_text_index": 1,
                           "matched_sim": 0.31},
                          {"image_name": "i2.jpg", "raw_url": "http://x/2.jpg", "matched_text_index": 2,
                           "matched_sim": 0.12}]}
    src = tmp_path / "mmc4.jsonl"
    src.write_text(json.dumps(doc) + "\n" + json.dumps({**doc, "image_info": [{"matched_text_index": 9}]}) + "\n")
    rep = import_documents(src, tmp_path / "before.jsonl", "mmc4", image_root=tmp_path / "imgs")
    assert rep.docs_written == 1 and rep.docs_dropped == 1 and "not an index of text_list" in rep.reasons[0]
    segs = [(s.modality, s.data) for s in read_manifest(tmp_path / "before.jsonl")[0].segments]
    assert segs == [("text", "First."), ("image", str(tmp_path / "imgs/i1.jpg")), ("text", "Second."),
                    ("image", str(tmp_path / "imgs/i2.jpg")), ("text", "Third.")]
    assert '"path": "imgs/i1.jpg"' in (tmp_path / "before.jsonl").read_text()  # relative: the folder can move
    # through the command line: images after their sentence, low-similarity ones dropped
    assert cli_main(["data", "import", "--format", "mmc4", str(src), str(tmp_path / "after.jsonl"),
                     "--image-position", "after", "--min-similarity", "0.2"]) == 0
    segs = [(s.modality, s.data) for s in read_manifest(tmp_path / "after.jsonl")[0].segments]
    assert segs == [("text", "First. Second."), ("image", "http://x/1.jpg"), ("text", "Third.")]


# ---- shards ------------------------------------------------------------------------------------


def test_shards_roundtrip_deterministic_and_readable_by_webdataset(tmp_path, synth_root):
    m = _subset(synth_root, tmp_path, 7)
    rep = write_shards(m, tmp_path / "s1", samples_per_shard=3)
    assert (rep.samples, len(rep.shards), rep.skipped) == (7, 3, 0)
    write_shards(m, tmp_path / "s2", samples_per_shard=3)
    assert all((tmp_path / "s1" / n).read_bytes() == (tmp_path / "s2" / n).read_bytes() for n in rep.shards)
    shards, counts = list_shards(tmp_path / "s1")
    assert counts == [3, 3, 1]
    recs = read_manifest(m)
    got = [ShardFile(s).record(i) for s in shards for i in range(len(ShardFile(s)))]
    for a, b in zip(recs, got):
        assert a.id == b.id and a.answer == b.answer and len(a.segments) == len(b.segments)
        for sa, sb in zip(a.segments, b.segments):
            assert (sa.modality, sa.role) == (sb.modality, sb.role)
            assert sb.data == (sa.data if sa.modality == "text" else Path(sa.data).read_bytes())
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(samples) == 7 and json.loads(samples[0]["json"])["id"] == recs[0].id
    assert samples[0]["seg1.png"] == Path(recs[0].segments[1].data).read_bytes()


def test_damaged_shard_keeps_earlier_samples_and_names_bad_ones(tmp_path, synth_root):
    m = _subset(synth_root, tmp_path, 6)
    write_shards(m, tmp_path / "s", samples_per_shard=6)
    tar = tmp_path / "s" / "shard-000000.tar"
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    sf = ShardFile(cut)
    assert 0 < len(sf) < 6 and sf.error is None or "damaged" in (sf.error or "")
    sf.record(0)  # the first sample is intact
    # a sample whose JSON member is garbage: a ManifestError naming shard and sample
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as t:
        info = tarfile.TarInfo("000000000.json")
        info.size = 5
        t.addfile(info, io.BytesIO(b"{nope"))
    with pytest.raises(am.ManifestError, match=r"bad.tar:1: sample 000000000"):
        ShardFile(bad).record(0)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00junk" * 100)
    assert len(ShardFile(garbage)) == 0


def test_shard_cli_and_missing_media_are_counted(tmp_path, synth_root):
    m = _subset(synth_root, tmp_path, 4)
    lines = m.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["segments"][1]["path"] = str(tmp_path / "gone.png")
    lines[1] = json.dumps(rec)
    m.write_text("\n".join(lines) + "\n")
    assert cli_main(["data", "shard", "--manifest", str(m), "--out", str(tmp_path / "s"),
                     "--samples-per-shard", "2"]) == 0
    meta = json.loads((tmp_path / "s" / INDEX_FILE).read_text())
    assert meta["samples"] == 3 and meta["skipped"] == 1 and [e["samples"] for e in meta["shards"]] == [2, 1]


# ---- split, packing, mixture ---------------------------------------------------------------------


def test_readers_split_shards_and_records_disjointly(tmp_path, synth_root):
    m = _subset(synth_root, tmp_path, 23)
    write_shards(m, tmp_path / "s", samples_per_shard=2)  # 12 shards
    shards = list_shards(tmp_path / "s")[0]
    idx = ManifestIndex(m)
    G = 4
    seen_samples, seen_lines = [], []
    for g in range(G):
        sr, mr = _ShardReader(shards, 0, 5, g, G), _ManifestReader(idx, 1, 5, g, G)
        cur, cur2 = sr.start(), mr.start()
        while True:  # one epoch of this reader's shards
            _, where, epoch, cur = sr.next(cur)
            if epoch:
                break
            seen_samples.append(where)
        while True:
            _, where, epoch, cur2 = mr.next(cur2)
            if epoch:
                break
            seen_lines.append(where)
    # every sample exactly once per epoch over all readers, none twice
    assert len(seen_samples) == len(set(seen_samples)) == 23
    assert sorted(seen_lines) == sorted(f"{m}:{i + 1}" for i in range(23))


def test_fewer_shards_than_readers_is_a_clear_error(tmp_path, synth_root):
    m = _subset(synth_root, tmp_path, 6)
    write_shards(m, tmp_path / "s", samples_per_shard=2)  # 3 shards
    net = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8}], debug())
    ds = PackedMixture([Source(shards=str(tmp_path / "s"))], tmp_path, net.builder, 128, 256, world_size=2)
    ds.check_readers(1)  # 2 readers: fine
    with pytest.raises(ValueError, match=r"3 shards for 2 rank\(s\) x 2 worker\(s\) = 4 readers"):
        ds.check_readers(2)
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        as_sources([{"path": "a.jsonl", "shards": "s/"}])
    with pytest.raises(ValueError, match="unknown keys"):
        as_sources([{"path": "a.jsonl", "wieght": 2}])


def test_token_budget_packing_and_mixture_weights(tmp_path, synth_root):
    _subset(synth_root, tmp_path, 10, "a.jsonl")
    b = _subset(synth_root, tmp_path, 10, "b.jsonl", start=40)
    write_shards(b, tmp_path / "s", samples_per_shard=5)
    net = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}], debug())
    ds = PackedMixture([Source(path="a.jsonl", weight=3), Source(shards="s", weight=1)], tmp_path, net.builder,
                       seq_len=128, tokens_per_batch=3 * 128 + 50, seed=0)
    it = iter(ds)
    batches = [next(it) for _ in range(5)]
    for bt in batches:
        assert bt.ids.shape == (3, 128)  # a fixed shape: tokens_per_batch // seq_len rows
        per_row = (bt.doc >= 0).sum(1)
        assert (per_row <= 128).all() and per_row.sum() > 2 * 128  # rows are filled, not one sample each
        assert bt.skipped == 0 and bt._loader_state["reader"] == 0
    # mixture draws follow the weights (no decoding needed to check them)
    draws = Counter(ds._choose(0, k) for k in range(20_000))
    assert abs(draws[0] / 20_000 - 0.75) < 0.015
    # a resumed iterator continues with exactly the batches that followed
    ds2 = PackedMixture([Source(path="a.jsonl", weight=3), Source(shards="s", weight=1)], tmp_path, net.builder,
                        seq_len=128, tokens_per_batch=3 * 128 + 50, seed=0)
    ds2.resume = {0: batches[2]._loader_state["state"]}
    again = next(iter(ds2))
    assert torch.equal(again.ids, batches[3].ids) and torch.equal(again.doc, batches[3].doc)


def test_map_style_loader_state_resumes_mid_epoch(tmp_path, synth_root):
    from anymodal.train.data import PackCollate, StreamDataset

    net = am.AnyModal(["text.bytes", {"name": "image.patch", "patch_size": 8, "max_tokens": 16}], debug())
    ds = StreamDataset(read_manifest(_subset(synth_root, tmp_path, 12)), net.builder, 256)

    def loader():
        return StatefulLoader(ds, sampler=ResumableSampler(ds, seed=3), batch_size=3, drop_last=True,
                              collate_fn=PackCollate(256, net.vocab.pad))

    first = loader()
    first.sampler.set_epoch(1)
    full = list(first)
    assert len(full) == 4
    for bt in full[:2]:
        first.mark_consumed(bt)
    state = first.state_dict()
    assert state == {"version": 1, "kind": "map", "epoch": 1, "batches": 2, "batch_size": 3, "world_size": 1}
    second = loader()
    second.load_state_dict(state)
    rest = list(second)
    assert len(rest) == 2 and all(torch.equal(x.ids, y.ids) for x, y in zip(rest, full[2:]))
    assert len(list(second)) == 4  # the skip applies to the resumed epoch only


def test_sampler_ranks_cover_the_single_process_batches():
    for W in (2, 3):
        single = list(ResumableSampler(range(12), num_replicas=1, rank=0, seed=4))
        per_rank = [list(ResumableSampler(range(12), num_replicas=W, rank=r, seed=4)) for r in range(W)]
        b = 2
        for k in range(12 // (b * W)):
            union = sorted(i for r in range(W) for i in per_rank[r][k * b:(k + 1) * b])
            assert union == sorted(single[k * b * W:(k + 1) * b * W])
