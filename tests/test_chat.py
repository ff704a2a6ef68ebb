"""Chat template (role tokens), assistant-only loss, and a conversation that keeps its KV cache."""

import pytest
import torch

import anymodal as am
from anymodal.api import AnyModal
from anymodal.chat import Conversation, messages_to_segments
from anymodal.model import ModelConfig
from anymodal.segments import Turn
from anymodal.stream import IGNORE

TOKS = ["text.bytes", {"name": "image.patch", "patch_size": 16}]


def tiny(chat_template="default", seed=0):
    torch.manual_seed(seed)
    return AnyModal(TOKS, ModelConfig(dim=32, n_layers=2, n_heads=2, chat_template=chat_template)).eval()


def names(model, ids):
    v = model.vocab
    return [chr(i) if i < 256 else v.token_name(i) for i in ids]


def test_label_mask_is_on_every_assistant_turn_token_by_token():
    model = tiny()
    img = torch.rand(3, 16, 16)  # one 16x16 patch
    record = [Turn("user"), am.Image(img), am.Text("a?"), Turn("assistant"), am.Text("x", role="target"),
              Turn("user"), am.Text("b?"), am.Image(img), Turn("assistant"), am.Text("y", role="target"),
              Turn("user"), am.Text("c?"), Turn("assistant"), am.Text("z", role="target")]
    s = model.builder.build(record)
    got = list(zip(names(model, s.ids.tolist()),
                   [None if t == IGNORE else names(model, [t])[0] for t in s.labels.tolist()]))
    A, E = "<turn:assistant>", "</turn:assistant>"
    assert got == [
        ("<bos>", None), ("<turn:user>", None), ("<begin:image.patch>", None), ("<pad>", None),
        ("<end:image.patch>", None), ("a", None), ("?", None), ("</turn:user>", None),
        (A, "x"), ("x", E), (E, None),                       # turn 1: the answer and its end
        ("<turn:user>", None), ("b", None), ("?", None), ("<begin:image.patch>", None), ("<pad>", None),
        ("<end:image.patch>", None), ("</turn:user>", None),
        (A, "y"), ("y", E), (E, None),                       # turn 2
        ("<turn:user>", None), ("c", None), ("?", None), ("</turn:user>", None),
        (A, "z"), ("z", E), (E, "<eos>"), ("<eos>", None)]   # turn 3, then the end of the sample
    assert model.builder.num_tokens(record) == len(s)


def test_role_tokens_are_opt_in_and_declared_once():
    off, on = tiny(None), tiny("default")
    # off: the vocabulary (and so every export and recipe) is exactly as before
    assert "turn_begin" not in off.vocab.to_dict() and off.vocab.size == 261
    assert on.vocab.size == off.vocab.size + 6  # begin and end of system, user, assistant, appended last
    assert {k: v for k, v in on.vocab.to_dict().items() if k in off.vocab.to_dict() and k != "size"} == \
        {k: v for k, v in off.vocab.to_dict().items() if k != "size"}
    with pytest.raises(ValueError, match="model.arch.chat_template"):
        off.builder.build([Turn("user"), "hi"])
    with pytest.raises(ValueError, match="chat_template='chatgpt' is unknown"):
        tiny("chatgpt")
    # an HF chat LM's text markers: no new ids, the text tokenizer writes them
    chatml = tiny("chatml")
    assert chatml.vocab.size == off.vocab.size
    s = chatml.builder.build(messages_to_segments([{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "yo"}]))
    text = bytes(i for i in s.ids.tolist() if i < 256).decode()
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    trained = bytes(t for t in s.labels.tolist() if 0 <= t < 256).decode()
    assert trained == "yo<|im_end|>\n"  # the loss: the reply and the marker that ends it, nothing else


def test_export_keeps_the_chat_template(tmp_path):
    model = tiny()
    back = AnyModal.load(model.export(tmp_path / "m"))
    assert back.vocab.to_dict() == model.vocab.to_dict() and back.config.chat_template == "default"


def test_kept_cache_gives_the_same_tokens_as_reencoding_and_runs_fewer_tokens():
    model = tiny()
    img = torch.rand(3, 16, 16)
    sys = [{"role": "system", "content": "be brief"}]
    convs = {use: Conversation(model, sys, use_cache=use) for use in (True, False)}
    work, replies = {}, {}
    for use, conv in convs.items():
        r1 = conv.ask(["first", am.Image(img)], max_new_tokens=6)
        before, unfed = conv.tokens_processed, len(conv._unfed)  # reply 1's last token (+ end marker if cut)
        r2 = conv.ask(["second", am.Image(img)], max_new_tokens=6)
        replies[use] = (r1.ids, r2.ids)
        work[use] = conv.tokens_processed - before
    assert replies[True] == replies[False]
    # turn 2 with the cache runs its own tokens once each; re-encoding runs the whole history per step
    n_turn2 = len(model.builder.build([Turn("user"), "second", am.Image(img), Turn("assistant")], add_eos=False)) - 1
    assert work[True] == unfed + n_turn2 + len(replies[True][1]) - 1  # the new turn, then a token per step
    assert work[False] > 6 * work[True]
    # the history holds both turns, the replies as targets
    hist = convs[True].history
    assert [s.data for s in hist if s.modality == "turn"] == ["system", "user", "assistant", "user", "assistant"]
    replies_kept = [s for s in hist if s.generated]
    assert replies_kept and all(s.role == "target" for s in replies_kept)


def test_turn_by_turn_layout_equals_one_stream_of_the_whole_history():
    """What the conversation ran through the model, turn by turn, is token for token the stream
    the builder makes of the whole history at once (ids, positions, spans, grids, vectors)."""
    model = tiny()
    with torch.no_grad():  # equal logits: greedy picks id 0 (NUL), valid text that re-encodes to itself
        model.model.head.weight.zero_()
    img = torch.rand(3, 16, 16)
    conv = Conversation(model, [{"role": "system", "content": "hi"}], use_cache=False)
    assert conv.ask(["look", am.Image(img)], max_new_tokens=3).text == "\x00" * 3  # cut: closed by the end marker
    conv.ask(["again", am.Image(img)], max_new_tokens=1)
    whole = model.builder.build(conv.history[:-1], add_eos=False)  # all but the last reply (not yet run)
    ran = conv._full
    assert ran.ids[0].tolist() == whole.ids.tolist()
    for name in ("modality", "span", "bidir"):
        assert getattr(ran, name)[0].tolist() == getattr(whole, name).tolist(), name
    assert ran.pos[0].tolist() == whole.pos.tolist() and ran.grid[0].tolist() == whole.grid.tolist()
    assert torch.equal(ran.vectors["image.patch"], whole.vectors["image.patch"])
    assert ran.index[0].tolist() == list(range(len(whole)))


def test_streaming_and_model_chat():
    model = tiny()
    conv = Conversation(model)
    segs = list(conv.ask("hi", max_new_tokens=4, stream=True))
    assert segs and all(isinstance(x, am.Text) for x in segs)
    again = tiny().chat([{"role": "user", "content": "hi"}], max_new_tokens=4)
    assert again.text == "".join(x.data for x in segs) and again.ids == conv.last.ids
    with pytest.raises(ValueError, match="no chat template"):
        Conversation(tiny(None))
    with pytest.raises(ValueError, match="end with a user message"):
        model.chat([{"role": "assistant", "content": "hi"}])


def test_generate_on_a_turn_prompt_stops_where_the_assistant_closes_its_turn():
    model = tiny()
    end = model.vocab.turn_end["assistant"]
    prompt = messages_to_segments([{"role": "user", "content": "hi"}]) + [Turn("assistant")]
    out = model.generate(prompt, max_new_tokens=8, forced=[ord("o"), ord("k"), end])
    assert out.ids == [ord("o"), ord("k"), end] and out.text == "ok"


def test_a_conversation_longer_than_max_seq_len_is_refused_and_stays_usable():
    torch.manual_seed(0)
    model = AnyModal(TOKS, ModelConfig(dim=32, n_layers=1, n_heads=2, chat_template="default", max_seq_len=40)).eval()
    conv = Conversation(model, [{"role": "system", "content": "brief"}])
    with pytest.raises(ValueError, match="over the model's max_seq_len=40: start a new Conversation"):
        conv.ask("x" * 40)
    out = conv.ask("hi", max_new_tokens=100)  # the budget is capped by what the context has left
    assert conv._length + len(conv._unfed) <= 40 and len(out.ids) >= 1
    assert [s.data for s in conv.history if s.modality == "turn"] == ["system", "user", "assistant"]


def _bigram_model(chat_template: str, follows: dict[str, str]) -> AnyModal:
    """A text.bytes model whose greedy next byte depends only on the current one (``follows``):
    one-hot embeddings, blocks that add nothing, the head a transition table."""
    model = AnyModal(["text.bytes"], ModelConfig(dim=260, n_layers=1, n_heads=2, chat_template=chat_template)).eval()
    with torch.no_grad():
        model.model.embed.weight.copy_(torch.eye(259, 260))
        model.model.blocks[0].attn.wo.weight.zero_()
        model.model.blocks[0].mlp.w2.weight.zero_()
        model.model.head.weight.zero_()
        for cur, nxt in follows.items():
            model.model.head.weight[ord(nxt), ord(cur)] = 1.0
    return model


def test_a_text_chat_template_reply_stops_at_its_text_end_marker(monkeypatch):
    """With an HF chat LM's text markers (here a made-up one), the reply ends where the model writes
    the end marker, which is not part of the reply's text, and the next turn continues after it."""
    from anymodal import stream

    monkeypatch.setitem(stream.CHAT_TEMPLATES, "test", {r: (f"{r[0].upper()}:", "!?") for r in stream.TURN_SPEAKERS})
    model = _bigram_model("test", {":": "o", "o": "k", "k": "!", "!": "?"})
    for use_cache in (True, False):
        conv = Conversation(model, use_cache=use_cache)
        out = conv.ask("hi", max_new_tokens=10)
        assert out.text == "ok" and out.ids == [ord(c) for c in "ok!?"]
        assert conv.ask("again", max_new_tokens=10).text == "ok"
        # what ran: the whole history as one stream up to the open reply, then the reply but its last
        # token (that one runs with the next turn)
        assert conv._length == len(model.builder.build(conv.history[:-1], add_eos=False)) + len("ok!")


def test_generate_given_hf_messages_speaks_the_chat_template():
    """``model.generate(messages)``: a chat model gets its role tokens (the turns of
    :func:`anymodal.chat.chat_prompt`, an open assistant turn last); a model without a chat
    template gets the messages interleaved plainly, as before."""
    from anymodal.chat import chat_prompt, is_chat_messages
    from anymodal.segments import to_segments

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert is_chat_messages(msgs) and is_chat_messages(msgs[0]) and not is_chat_messages(["hi", {"type": "text"}])
    assert chat_prompt(msgs) == messages_to_segments(msgs) + [Turn("assistant")]
    # a last assistant message is continued (HF's continue_final_message), not closed
    assert chat_prompt(msgs + [{"role": "assistant", "content": "o"}])[-1].data == "o"

    def logits(model, prompt):
        return model.generate(prompt, max_new_tokens=2, return_logits=True)[1]

    chat = tiny()
    assert torch.equal(logits(chat, msgs), logits(chat, chat_prompt(msgs)))
    assert not torch.allclose(logits(chat, msgs), logits(chat, to_segments(msgs)))  # not plain interleaving
    plain = tiny(None)
    assert torch.equal(logits(plain, msgs), logits(plain, to_segments(msgs)))
    # the reply ends where the assistant closes its turn
    end = chat.vocab.turn_end["assistant"]
    out = chat.generate(msgs, max_new_tokens=8, forced=[ord("o"), ord("k"), end])
    assert out.text == "ok" and out.ids[-1] == end


def test_a_conversation_record_is_scored_on_its_last_reply():
    """Evaluation asks a conversation record its last assistant turn, the earlier turns (and their
    reference replies) as the history; a model without a chat template is reported as unable to
    read turns rather than failing the run."""
    import json
    from pathlib import Path

    from anymodal.data.manifest import parse_line
    from anymodal.evaluate.qa import evaluate_records

    line = {"id": "c/0", "task": "chat.toy", "answer": "b", "choices": ["a", "b"],
            "segments": [{"type": "turn", "turn": "user"}, {"type": "text", "text": "x?"},
                         {"type": "turn", "turn": "assistant"}, {"type": "text", "text": "a", "role": "target"},
                         {"type": "turn", "turn": "user"}, {"type": "text", "text": "y?"},
                         {"type": "turn", "turn": "assistant"}, {"type": "text", "text": "b", "role": "target"}]}
    rec = parse_line(json.dumps(line), "m.jsonl", 1, Path("."))
    report = evaluate_records(tiny(), [rec])
    task = report["tasks"]["chat.toy"]
    assert task["status"] == "ok" and task["n"] == 1 and task["chance"] == 0.5 and task["kind"] == "text"
    off = evaluate_records(tiny(None), [rec])["tasks"]["chat.toy"]
    assert off["status"] == "unsupported" and "no chat template" in off["reason"]
