"""The distillation teacher: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) fine-tuned jointly on intents and BIO slots.

The encoder is written out here (a plain post-LayerNorm BERT) and loaded from the package's
model.safetensors, read with numpy, so the build needs neither transformers nor network access.
Batches hold one sequence length each (see ``nlu_student.batches``), so there is no padding and
training passes no mask; the exported model takes the contract's ``attention_mask`` and applies it.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scripts.models.data import SNIPS_INTENTS, Utterance
from scripts.models.nlu_labels import IGNORE, TAGS, Encoded
from scripts.models.nlu_student import batches

HIDDEN = 384
HEADS = 12
LAYERS = 6
FFN = 1536
VOCAB = 30522
POSITIONS = 512
_DTYPES = {"F32": np.float32, "I64": np.int64}


@dataclass(frozen=True)
class TeacherConfig:
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4  # the pretrained encoder's
    head_learning_rate: float = 1e-3  # the two freshly initialised heads'
    warmup: float = 0.1  # fraction of the steps with a linear warm-up; then linear decay to 0
    first_subword: bool = True  # slot loss only on each word's first sub-word (what decode_bio reads)
    seed: int = 0
    average_last: int = 3  # > 1: the final weights are the mean of the last N epochs' end weights (0 or 1: the last's)


# What a checkpoint saved before a TeacherConfig field existed was trained with (a resume must not
# take such a checkpoint for one trained with the field's new default).
LEGACY = {"first_subword": False, "average_last": 0}


def first_subword_only(utterances: Sequence[Utterance], encoded: Sequence[Encoded]) -> list[Encoded]:
    """``encoded`` with the slot tag of every WordPiece continuation piece set to IGNORE.

    A piece continues a word exactly when ``decode_bio`` would skip it (it starts where the previous
    decodable token ends, between two alphanumeric characters): the decoder reads each word's label from
    its first sub-word only, so that is the only one trained, as in joint BERT.
    """
    out = []
    for utterance, enc in zip(utterances, encoded, strict=True):
        text, tags, previous_end = utterance.text, list(enc.tags), None
        for i, (start, end) in enumerate(enc.offsets):
            if not enc.decodable[i]:
                continue
            if start == previous_end and 0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum():
                tags[i] = IGNORE
            previous_end = end
        out.append(replace(enc, tags=tags))
    return out


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    base = 8 + header_size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.out = nn.Linear(FFN, HIDDEN)
        self.out_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=bias
        )
        attended = attended.transpose(1, 2).reshape(b, n, HIDDEN)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.out_norm(x + self.dropout(self.out(F.gelu(self.intermediate(x)))))


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(POSITIONS, HIDDEN)
        self.token_types = nn.Embedding(2, HIDDEN)
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.dropout = nn.Dropout(0.1)
        self.intent_head = nn.Linear(HIDDEN, len(SNIPS_INTENTS))
        self.slot_head = nn.Linear(HIDDEN, len(TAGS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.words(input_ids) + self.positions(positions) + self.token_types.weight[0]
        x = self.dropout(self.embedding_norm(x))
        # Keys where the mask is 0 get -10000 added to their attention scores, as in BERT; the contract
        # feeds unpadded rows (all ones), and training batches are unpadded too.
        bias = None if attention_mask is None else (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        x = self.dropout(x)
        return self.intent_head(x[:, 0]), self.slot_head(x)

    def load_pretrained(self, path: Path) -> None:
        """Copy the BERT weights of all-MiniLM-L6-v2's model.safetensors; the heads stay freshly initialised."""
        weights = read_safetensors(path)
        names = {
            "words.weight": "embeddings.word_embeddings.weight",
            "positions.weight": "embeddings.position_embeddings.weight",
            "token_types.weight": "embeddings.token_type_embeddings.weight",
            "embedding_norm.weight": "embeddings.LayerNorm.weight",
            "embedding_norm.bias": "embeddings.LayerNorm.bias",
        }
        parts = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attention_out": "attention.output.dense",
            "attention_norm": "attention.output.LayerNorm",
            "intermediate": "intermediate.dense",
            "out": "output.dense",
            "out_norm": "output.LayerNorm",
        }
        for i in range(LAYERS):
            for ours, theirs in parts.items():
                for kind in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
        state = {ours: weights[theirs] for ours, theirs in names.items()}
        missing, _ = self.load_state_dict(state, strict=False)
        assert set(missing) == {"intent_head.weight", "intent_head.bias", "slot_head.weight", "slot_head.bias"}


def accumulate_average(
    average: dict[str, torch.Tensor] | None, state: dict[str, torch.Tensor], count: int
) -> dict[str, torch.Tensor]:
    """The running mean of ``count`` + 1 state dicts: ``average`` (the mean of ``count``) updated with ``state``.

    Floating-point tensors are averaged; any other tensor (e.g. integer position ids) is taken from ``state``.
    """
    if average is None or count == 0:
        return {name: tensor.detach().clone() for name, tensor in state.items()}
    return {
        name: average[name] + (tensor.detach() - average[name]) / (count + 1)
        if tensor.is_floating_point()
        else tensor.detach().clone()
        for name, tensor in state.items()
    }


def train_teacher(
    encoded: Sequence[Encoded],
    weights: Path,
    config: TeacherConfig,
    *,
    log=print,
    checkpoint: Path | None = None,
    after_epoch=None,
    utterances: Sequence[Utterance] | None = None,
) -> Teacher:
    """Fine-tune from ``weights``: AdamW, linear warm-up then linear decay, gradients clipped at 1.

    With ``config.average_last`` N > 1 the returned weights are the mean of the weights at the end of
    each of the last N epochs (checkpoint averaging); ``after_epoch`` still sees each epoch's own.

    With ``checkpoint`` the weights are saved there after every epoch, and a run restarted with the same
    config resumes after the last epoch saved. ``after_epoch(epoch, model)`` (e.g. a validation score) is
    called after every epoch with the model in eval mode. ``config.first_subword`` needs ``utterances``
    (the texts of ``encoded``) to find the continuation pieces.
    """
    if config.first_subword:
        if utterances is None:
            raise ValueError("first_subword needs the utterances of encoded")
        encoded = first_subword_only(utterances, encoded)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = Teacher()
    model.load_pretrained(weights)
    heads = [p for name, p in model.named_parameters() if name.split(".")[0] in ("intent_head", "slot_head")]
    encoder = [p for name, p in model.named_parameters() if name.split(".")[0] not in ("intent_head", "slot_head")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder, "lr": config.learning_rate}, {"params": heads, "lr": config.head_learning_rate}],
        weight_decay=0.01,
    )
    per_epoch = sum(1 for _ in batches(encoded, config.batch_size, None))
    total_steps = config.epochs * per_epoch
    warmup = max(1, int(config.warmup * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup)))
    )
    start = 0
    average, averaged = None, 0  # the running mean of the last ``config.average_last`` epochs' weights
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if {**LEGACY, **vars(state["config"])} == vars(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            start = state["epoch"]
            average, averaged = state.get("average"), state.get("averaged", 0)
            log(f"teacher: resumed from {checkpoint} after epoch {start}")
    for epoch in range(start, config.epochs):
        model.train()
        total = 0.0
        for step, (ids, _, intents, tags, chunk) in enumerate(batches(encoded, config.batch_size, rng)):
            intent_logits, slot_logits = model(ids)
            loss = F.cross_entropy(intent_logits, intents) + F.cross_entropy(
                slot_logits.reshape(-1, len(TAGS)), tags.reshape(-1), ignore_index=IGNORE
            )
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chunk)
            if step % 50 == 0:
                log(f"teacher epoch {epoch + 1}/{config.epochs} step {step}/{per_epoch}: loss {loss.item():.4f}")
        log(f"teacher epoch {epoch + 1}/{config.epochs}: loss {total / len(encoded):.4f}")
        if config.average_last > 1 and epoch + 1 > config.epochs - config.average_last:
            average, averaged = accumulate_average(average, model.state_dict(), averaged), averaged + 1
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "config": config,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "average": average,
                "averaged": averaged,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
        if after_epoch is not None:
            after_epoch(epoch + 1, model.eval())
    if average is not None and averaged > 1:
        model.load_state_dict(average)
        log(f"teacher: final weights are the mean of the last {averaged} epochs' weights")
    return model.eval()
