"""Stream layout: vocabulary, placement of spans, labels, positions; packing properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anymodal as am
from anymodal.model import AnyModalTransformer, ModelConfig
from anymodal.packing import assign_rows, pack
from anymodal.stream import IGNORE, StreamBuilder, Vocabulary, build_tokenizers
from anymodal.tokenizers.registry import unregister_tokenizer


class ConstTokenizer(am.ModalityTokenizer):
    """Emits ``n`` vectors all equal to ``value`` (segment data = (value, n))."""

    modality, kind, bidirectional = "const", "continuous", True

    def __init__(self, dim: int = 4):
        self.input_dim = dim

    def encode(self, segment):
        value, n = segment.data
        return am.TokenBlock(vectors=torch.full((n, self.input_dim), float(value)), grid=(1, 1, n))


class CodesTokenizer(am.ModalityTokenizer):
    modality, kind = "codes", "discrete"

    def __init__(self):
        self.vocab_size = 10

    def encode(self, segment):
        return am.TokenBlock(ids=torch.tensor(segment.data))

    def decode(self, ids):
        return ids.tolist()


@pytest.fixture(autouse=True, scope="module")
def test_tokenizers():
    """Register this module's tokenizers for its tests only: other modules see the registry as shipped."""
    am.register_tokenizer("test.const")(ConstTokenizer)
    am.register_tokenizer("test.codes")(CodesTokenizer)
    yield
    unregister_tokenizer("test.const")
    unregister_tokenizer("test.codes")


def Const(value, n, role="prompt"):
    return am.Segment(data=(value, n), modality="const", role=role)


def Codes(ids, role="prompt"):
    return am.Segment(data=ids, modality="codes", role=role)


def builder():
    return StreamBuilder(build_tokenizers(["test.const", "text.bytes", "test.codes"]))


def test_vocabulary_offsets_text_first():
    v = Vocabulary(build_tokenizers(["test.codes", "text.bytes", "test.const"]))
    assert v.offset == {"text.bytes": 0, "test.codes": 256}
    assert (v.bos, v.eos, v.pad) == (266, 267, 268)
    assert v.begin == {"test.codes": 269, "test.const": 271} and v.size == 273
    assert v.token_name(270) == "<end:test.codes>" and v.token_name(260) == "test.codes:4"


def test_vocabulary_needs_one_text_tokenizer():
    with pytest.raises(ValueError, match="text tokenizer"):
        Vocabulary(build_tokenizers(["test.codes"]))


def test_placement_uneven_lengths():
    """Each span lands at its exact positions; vectors reach the model there (torchtune-style)."""
    b = builder()
    samples = [["ab", Const(1, 3), "c", Const(2, 5)], [Const(3, 2), "hello", Codes([1, 2])]]
    streams = [b.build(s) for s in samples]
    v = b.vocab
    k = v.index["test.const"]
    s0 = streams[0]
    # <bos> a b <begin> x x x <end> c <begin> y*5 <end> <eos>
    assert s0.ids[:4].tolist() == [v.bos, 97, 98, v.begin["test.const"]]
    assert (s0.modality == k).nonzero().flatten().tolist() == [4, 5, 6, 10, 11, 12, 13, 14]
    assert s0.ids[7].item() == v.end["test.const"] and s0.ids[-1].item() == v.eos
    s1 = streams[1]
    assert s1.ids[-5:-1].tolist() == [v.begin["test.codes"], 257, 258, v.end["test.codes"]]
    batch = pack(streams, 40, v.pad)
    cfg = ModelConfig(dim=8, n_layers=1, n_heads=2, vocab_size=v.size, continuous_inputs={"test.const": 4})
    m = AnyModalTransformer(cfg, {"test.const": k})
    with torch.no_grad():
        proj = m.input_proj["test__const"]
        proj.weight.zero_()
        proj.weight[:4, :4] = torch.eye(4)
        proj.bias.zero_()
        h = m.embed_inputs(batch.ids, batch.modality, batch.vectors)
    for r in range(batch.ids.shape[0]):
        for t in range(batch.ids.shape[1]):
            if batch.modality[r, t] == k:
                value = h[r, t, 0].item()
                assert value in (1.0, 2.0, 3.0) and torch.all(h[r, t, :4] == value)
    # each sample's vectors stay in its own doc, in order
    rows = {}
    for r in range(batch.ids.shape[0]):
        for t in range(batch.ids.shape[1]):
            if batch.modality[r, t] == k:
                rows.setdefault((r, int(batch.doc[r, t])), []).append(h[r, t, 0].item())
    assert sorted(rows.values()) == sorted([[1.0] * 3 + [2.0] * 5, [3.0] * 2])


def test_labels_only_on_targets_and_next_token():
    b = builder()
    s = b.build(["Q", Const(1, 2), am.Text("yes", role="target")])
    v = b.vocab
    lab = s.labels.tolist()
    # positions: bos Q begin c c end y e s eos ; labels predict the target text and <eos>
    assert lab == [IGNORE] * 5 + [ord("y"), ord("e"), ord("s"), v.eos, IGNORE]
    lm = b.build(["hi"])  # no target: train on everything discrete
    assert lm.labels.tolist() == [ord("h"), ord("i"), v.eos, IGNORE]


def test_positions_3d():
    b = builder()
    s = b.build(["ab", am.Segment(data=(1, 6), modality="const")])
    # bos a b begin at 0..3; grid (1,1,6): t stays 4, h stays 4, w 4..9; end at 4 + 6 = 10
    assert s.pos[:, 4].tolist() == [4, 4, 4] and s.pos[:, 9].tolist() == [4, 4, 9]
    assert s.pos[:, 10].tolist() == [10, 10, 10]
    assert s.bidir[4:10].all() and not s.bidir[:4].any()
    assert (s.span[4:10] == 1).all()


def test_loss_weights_and_unknown_names():
    b = StreamBuilder(build_tokenizers(["text.bytes", "test.codes"]), {"test.codes": 0.5})
    s = b.build([Codes([1, 2, 3])])
    k = b.vocab.index["test.codes"]
    nxt = torch.roll(s.modality, -1)
    assert torch.all(s.loss_weight[:-1][nxt[:-1] == k] == 0.5)
    with pytest.raises(ValueError, match="unknown tokenizers"):
        StreamBuilder(build_tokenizers(["text.bytes"]), {"nope": 1.0})


def test_num_tokens_matches_build():
    b = builder()
    sample = ["abc", Const(1, 4), Codes([1])]
    assert b.num_tokens(sample) == len(b.build(sample))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(50, 120))
def test_assign_rows_property(lengths, seq_len):
    rows = assign_rows(lengths, seq_len)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))  # every stream exactly once
    assert all(sum(lengths[i] for i in r) <= seq_len for r in rows)
    # first-fit never leaves two rows that could be merged
    loads = sorted(sum(lengths[i] for i in r) for r in rows)
    if len(loads) >= 2:
        assert loads[0] + loads[1] > seq_len


segment_strategy = st.one_of(
    st.text(alphabet="abc xyz", min_size=1, max_size=6),
    st.tuples(st.integers(1, 3), st.integers(1, 5)).map(lambda t: Const(*t)),
    st.lists(st.integers(0, 9), min_size=1, max_size=4).map(Codes),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(segment_strategy, min_size=1, max_size=4), min_size=1, max_size=5))
def test_packed_batch_invariants(samples):
    b = builder()
    streams = [b.build(s) for s in samples]
    seq_len = max(len(s) for s in streams) + 3
    batch = pack(streams, seq_len, b.vocab.pad)
    assert batch.num_real_tokens == sum(len(s) for s in streams)
    for r in range(batch.ids.shape[0]):
        docs = batch.doc[r]
        real = docs >= 0
        # documents are contiguous and each restarts its 1D index at 0
        change = (docs[1:] != docs[:-1]).nonzero().flatten() + 1
        starts = [0, *change.tolist()]
        for s in starts:
            if docs[s] >= 0:
                assert batch.index[r, s] == 0 and batch.ids[r, s] == b.vocab.bos
        # spans never cross documents
        for sp in batch.span[r][batch.span[r] > 0].unique():
            assert len(docs[batch.span[r] == sp].unique()) == 1
        assert (batch.labels[r][~real] == IGNORE).all()
    n_vec = sum(int((s.modality == b.vocab.index["test.const"]).sum()) for s in streams)
    assert batch.vectors.get("test.const", torch.zeros(0, 4)).shape[0] == n_vec


def test_a_grid_over_max_grid_names_the_tokenizer_the_input_and_the_fix():
    b = StreamBuilder(build_tokenizers(["text.bytes", "test.const"]), max_grid=64)
    b.build(["ok", Const(1.0, 64)])  # coordinates 0..63 fit
    with pytest.raises(ValueError, match=r"<tuple>: tokenizer 'test.const' laid it out as a grid \(1, 1, 127\), "
                                         r"whose side 127 is over model.arch.max_grid=64; raise model.arch.max_grid "
                                         r"to at least 127"):
        b.build(["too long:", Const(1.0, 127)])


def test_a_fixed_grid_over_max_grid_is_refused_at_setup():
    class Tiles(CodesTokenizer):
        fixed_grid, fixed_length = (1, 8, 80), 640

    am.register_tokenizer("test.tiles")(Tiles)
    try:
        with pytest.raises(ValueError, match=r"tokenizer 'test.tiles' emits a fixed grid \(1, 8, 80\) with a side "
                                             r"of 80 > model.arch.max_grid=64; raise model.arch.max_grid"):
            am.AnyModal(["text.bytes", "test.tiles"], ModelConfig(dim=8, n_layers=1, n_heads=2))
        # without learned media positions there is no bound
        am.AnyModal(["text.bytes", "test.tiles"], ModelConfig(dim=8, n_layers=1, n_heads=2, media_pos_embed=False))
    finally:
        unregister_tokenizer("test.tiles")

