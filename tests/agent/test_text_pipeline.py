"""The text-nlu pipeline turns an utterance into an intent, its confidence and character-offset slots,
with a real tokenizer and a real onnxruntime model; the Understand RPC serves the same answer."""

from __future__ import annotations

import asyncio
import itertools
import math

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing

from agent.local_api import LocalInferenceService, socket_path, start_local_api
from agent.pipelines import BundleContractError, PipelineInputError
from agent.pipelines.text import MAX_TEXT_BYTES, BioDecoder, Slot, TextPipeline, TextPipelines, decode_bio
from agent.serving import Serving
from protos.edgefleet.v1 import bundle_pb2, common_pb2, inference_pb2, inference_pb2_grpc

VOCAB = ["[UNK]", "[CLS]", "[SEP]", "play", "jazz", "in", "the", "kitchen", "stop", "rock"]
INTENTS = ["PlayMusic", "Stop"]
SLOTS = ["O", "B-genre", "I-genre", "B-room", "I-room"]
# Per token: the slot tag it gets, and the intent logits it contributes (the model takes the max over tokens).
TOKEN_SLOT = {"jazz": "B-genre", "rock": "B-genre", "the": "B-room", "kitchen": "I-room"}
TOKEN_INTENT = {"play": [3.0, 0.0], "stop": [0.0, 3.0]}
PLAY_CONFIDENCE = math.exp(3.0) / (math.exp(3.0) + 1.0)


def _tokenizer_json() -> str:
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))]
    )
    return tokenizer.to_str()


def _model(n_intents: int = len(INTENTS), n_slots: int = len(SLOTS)) -> bytes:
    """input_ids → slot_logits = one-hot table[ids]; intent_logits = max over tokens of table[ids] * mask."""
    slot_table = np.zeros((len(VOCAB), len(SLOTS)), dtype=np.float32)
    intent_table = np.zeros((len(VOCAB), len(INTENTS)), dtype=np.float32)
    for i, word in enumerate(VOCAB):
        slot_table[i, SLOTS.index(TOKEN_SLOT.get(word, "O"))] = 5.0
        intent_table[i] = TOKEN_INTENT.get(word, [0.0, 0.0])
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["slot_table", "input_ids"], ["slot_logits"]),
            helper.make_node("Gather", ["intent_table", "input_ids"], ["per_token"]),
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask_3d"]),
            helper.make_node("Mul", ["per_token", "mask_3d"], ["masked"]),
            helper.make_node("ReduceMax", ["masked"], ["intent_logits"], axes=[1], keepdims=0),
        ],
        "text-nlu-test",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info("intent_logits", TensorProto.FLOAT, ["batch", n_intents]),
            helper.make_tensor_value_info("slot_logits", TensorProto.FLOAT, ["batch", "seq", n_slots]),
        ],
        initializer=[
            numpy_helper.from_array(slot_table, "slot_table"),
            numpy_helper.from_array(intent_table, "intent_table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _build(root, version: int = 1, *, max_sequence_length: int = 32, lowercase: bool = False,
           intents: list[str] = INTENTS, skip: str = ""):  # fmt: skip
    """A text-nlu build directory as the agent stages it; returns (ref, directory, manifest bytes)."""
    directory = root / f"nlu-{version}"
    directory.mkdir()
    files = {
        "model.onnx": _model(),
        "tokenizer.json": _tokenizer_json().encode(),
        "intents.txt": "\n".join(intents).encode() + b"\n",
        "slots.txt": "\n".join(SLOTS).encode() + b"\n",
    }
    for name, data in files.items():
        if name != skip:
            (directory / name).write_bytes(data)
    manifest = bundle_pb2.BundleManifest(
        name="nlu",
        version=version,
        variant="fp32",
        model_file="model.onnx",
        preprocessing=bundle_pb2.Preprocessing(
            text=bundle_pb2.TextPreprocessing(
                tokenizer_file="tokenizer.json",
                max_sequence_length=max_sequence_length,
                lowercase=lowercase,
                intent_labels_file="intents.txt",
                slot_labels_file="slots.txt",
            )
        ),
    )
    (directory / "manifest.pb").write_bytes(manifest.SerializeToString())
    return common_pb2.ModelRef(name="nlu", version=version, variant="fp32"), directory, manifest.SerializeToString()


def _pipeline(tmp_path, **build) -> TextPipeline:
    loaded = Serving(tmp_path, threads=1).activate("text-nlu", *_build(tmp_path, **build))
    return TextPipeline.load(loaded)


def test_utterance_gives_intent_confidence_and_slots_with_exact_character_offsets(tmp_path):
    answer = _pipeline(tmp_path).understand("play jazz in the kitchen")
    assert answer.intent == "PlayMusic"
    assert answer.confidence == pytest.approx(PLAY_CONFIDENCE, rel=1e-5)
    assert answer.slots == [Slot("genre", "jazz", 5, 9), Slot("room", "the kitchen", 13, 24)]
    assert answer.tokens == 7 and answer.latency_ms > 0


def test_lowercase_bundles_match_any_case_and_slots_keep_the_original_text(tmp_path):
    answer = _pipeline(tmp_path, lowercase=True).understand("Play  JAZZ in The Kitchen")
    assert answer.intent == "PlayMusic"
    assert answer.slots == [Slot("genre", "JAZZ", 6, 10), Slot("room", "The Kitchen", 14, 25)]


def test_sequences_longer_than_the_maximum_are_truncated(tmp_path):
    answer = _pipeline(tmp_path, max_sequence_length=4).understand("play jazz in the kitchen")
    assert answer.tokens == 4  # [CLS] play jazz [SEP]
    assert answer.intent == "PlayMusic" and answer.slots == [Slot("genre", "jazz", 5, 9)]


@pytest.mark.parametrize("text", ["", "x" * (MAX_TEXT_BYTES + 1), "é" * (MAX_TEXT_BYTES // 2 + 1)])
def test_empty_and_oversized_text_is_refused(tmp_path, text):
    with pytest.raises(PipelineInputError, match="empty|limit"):
        _pipeline(tmp_path).understand(text)


def test_bio_decoding_starts_a_span_at_an_orphan_inside_tag_and_splits_on_type_change():
    text = "kitchen jazz rock"
    offsets = [(0, 7), (8, 12), (13, 17)]
    assert decode_bio(["I-room", "B-genre", "I-genre"], offsets, text) == [
        Slot("room", "kitchen", 0, 7),
        Slot("genre", "jazz rock", 8, 17),
    ]
    assert decode_bio(["B-room", "I-genre", "O"], offsets, text) == [
        Slot("room", "kitchen", 0, 7),
        Slot("genre", "jazz", 8, 12),
    ]


def test_bio_decoding_reads_each_word_from_its_first_word_piece():
    text = "play jazzy pop."  # pieces: play | jazz | ##y | pop | .
    offsets = [(0, 4), (5, 9), (9, 10), (11, 14), (14, 15)]
    # A continuation piece's own tag is ignored: it extends its word's span, and never starts or ends one.
    assert decode_bio(["O", "B-genre", "O", "I-genre", "O"], offsets, text) == [Slot("genre", "jazzy pop", 5, 14)]
    assert decode_bio(["O", "O", "B-genre", "O", "O"], offsets, text) == []
    assert decode_bio(["O", "B-genre", "B-room", "O", "O"], offsets, text) == [Slot("genre", "jazzy", 5, 10)]
    # Punctuation is a word of its own, even with no space before it.
    assert decode_bio(["O", "O", "O", "B-genre", "I-genre"], offsets, text) == [Slot("genre", "pop.", 11, 15)]


def _scores(*rows: dict[str, float]) -> np.ndarray:
    """Logits per word: the named tags get their value, every other tag -5."""
    out = np.full((len(rows), len(SLOTS)), -5.0)
    for i, row in enumerate(rows):
        for tag, value in row.items():
            out[i, SLOTS.index(tag)] = value
    return out


def test_bio_decoder_keeps_a_valid_argmax_and_mends_an_invalid_one_by_probability():
    decoder = BioDecoder(tuple(SLOTS))
    valid = _scores({"O": 2}, {"B-genre": 3}, {"I-genre": 1}, {"B-room": 2})
    assert decoder.best(valid) == [0, 1, 2, 3]
    # "I-genre" after "O": the cheaper repair wins. Here the second word's B-genre is close behind.
    orphan = _scores({"O": 3, "B-genre": 0}, {"I-genre": 2, "B-genre": 1.9})
    assert [SLOTS[i] for i in decoder.best(orphan)] == ["O", "B-genre"]
    # Here the first word is nearly a B-genre and the second is sure it is inside a genre.
    pulled = _scores({"O": 1, "B-genre": 0.9}, {"I-genre": 6})
    assert [SLOTS[i] for i in decoder.best(pulled)] == ["B-genre", "I-genre"]
    # Never an inside tag first, and never one of another type after a span.
    assert [SLOTS[i] for i in decoder.best(_scores({"I-room": 4, "O": 1}))] == ["O"]
    assert [SLOTS[i] for i in decoder.best(_scores({"B-genre": 3}, {"I-room": 3, "I-genre": 2.5}))] == [
        "B-genre",
        "I-genre",
    ]
    assert decoder.best(np.zeros((0, len(SLOTS)))) == []


def test_bio_decoder_finds_the_most_probable_valid_sequence():
    """Against brute force over every valid sequence, on random logits."""
    decoder = BioDecoder(tuple(SLOTS))

    def valid(sequence) -> bool:
        previous = "O"
        for tag in sequence:
            if tag.startswith("I-") and previous not in (f"B-{tag[2:]}", tag):
                return False
            previous = tag
        return True

    rng = np.random.default_rng(7)
    repaired = 0
    for _ in range(200):
        scores = rng.normal(scale=2.0, size=(int(rng.integers(1, 5)), len(SLOTS)))
        log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        best = max(
            (seq for seq in itertools.product(range(len(SLOTS)), repeat=len(scores)) if valid([SLOTS[i] for i in seq])),
            key=lambda seq: sum(log_p[t, i] for t, i in enumerate(seq)),
        )
        assert decoder.best(scores) == list(best)
        repaired += list(best) != scores.argmax(axis=1).tolist()
    assert repaired > 20  # the random cases did exercise the search, not only the valid-argmax path


def test_bio_decoder_reads_words_from_their_first_piece_only():
    decoder = BioDecoder(tuple(SLOTS))
    text = "play jazzy pop"  # pieces: play | jazz | ##y | pop
    offsets = [(0, 4), (5, 9), (9, 10), (11, 14)]
    # The "##y" piece's strong I-room is not read; "pop" continues the genre.
    scores = _scores({"O": 3}, {"B-genre": 3}, {"I-room": 9}, {"I-genre": 3})
    assert decoder.slots(scores, offsets, text) == [Slot("genre", "jazzy pop", 5, 14)]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        ({"skip": "tokenizer.json"}, "tokenizer file 'tokenizer.json' is missing"),
        ({"skip": "slots.txt"}, "slot labels 'slots.txt' is missing"),
        ({"intents": ["PlayMusic", "Stop", "Pause"]}, "2 classes but the bundle lists 3 intent labels"),
        ({"max_sequence_length": 100_000}, "max_sequence_length"),
    ],
)
def test_a_bundle_that_breaks_the_contract_is_refused_with_the_reason(tmp_path, build, reason):
    with pytest.raises(BundleContractError, match=reason):
        _pipeline(tmp_path, **build)


def test_the_pipeline_loads_once_per_activation(tmp_path):
    serving = Serving(tmp_path, threads=1)
    pipelines = TextPipelines()
    first = serving.activate("text-nlu", *_build(tmp_path, 1))
    assert pipelines.cached(first) is None
    assert pipelines.get(first) is pipelines.get(first) is pipelines.cached(first)
    second = serving.activate("text-nlu", *_build(tmp_path, 2))
    assert pipelines.cached(second) is None and pipelines.get(second).loaded is second


def test_understand_rpc_answers_with_slots_and_served_by_and_records_tokens(tmp_path):
    serving = Serving(tmp_path, threads=1)
    serving.activate("text-nlu", *_build(tmp_path, 3))
    records = []

    async def scenario():
        service = LocalInferenceService(serving, device_id="gw-1", record=lambda *args: records.append(args))
        server, _ = await start_local_api(service, tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket_path(tmp_path)}") as channel:
                stub = inference_pb2_grpc.LocalInferenceStub(channel)
                answer = await stub.Understand(
                    inference_pb2.UnderstandRequest(text="play jazz in the kitchen"), timeout=10
                )
                again = await stub.Understand(inference_pb2.UnderstandRequest(text="stop"), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as empty:
                    await stub.Understand(inference_pb2.UnderstandRequest(text=""), timeout=10)
            return answer, again, empty.value
        finally:
            await server.stop(None)

    answer, again, empty = asyncio.run(scenario())
    assert answer.intent == "PlayMusic" and answer.confidence == pytest.approx(PLAY_CONFIDENCE, rel=1e-5)
    assert [(s.slot, s.value, s.start, s.end) for s in answer.slots] == [
        ("genre", "jazz", 5, 9),
        ("room", "the kitchen", 13, 24),
    ]
    assert answer.served_by.model.version == 3 and answer.served_by.latency_ms > 0
    assert again.intent == "Stop" and list(again.slots) == []
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in empty.details()
    assert [(r[2], r[4]) for r in records] == [(True, 7), (True, 3)]
    assert records[0][3] == pytest.approx(PLAY_CONFIDENCE, rel=1e-5)


def test_understand_rpc_on_a_build_that_breaks_the_contract_says_why(tmp_path):
    serving = Serving(tmp_path, threads=1)
    serving.activate("text-nlu", *_build(tmp_path, 4, intents=["PlayMusic", "Stop", "Pause"]))
    records = []

    async def scenario():
        service = LocalInferenceService(serving, device_id="gw-1", record=lambda *args: records.append(args))
        server, _ = await start_local_api(service, tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket_path(tmp_path)}") as channel:
                stub = inference_pb2_grpc.LocalInferenceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as broken:
                    await stub.Understand(inference_pb2.UnderstandRequest(text="play jazz"), timeout=10)
            return broken.value
        finally:
            await server.stop(None)

    broken = asyncio.run(scenario())
    assert broken.code() == grpc.StatusCode.FAILED_PRECONDITION and "3 intent labels" in broken.details()
    assert [r[2] for r in records] == [False]
