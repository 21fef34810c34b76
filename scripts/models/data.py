"""Loaders for the vendored datasets under data/ (numpy only; no network, no ../shared).

    from scripts.models.data import load_snips, snips_split, load_fsdd, fsdd_official_split

SNIPS 2017 (CC0 1.0): 7 intents, 13,784 training utterances with character-offset slot spans.
FSDD (CC BY-SA 4.0, Free Spoken Digit Dataset, Zohar Jackson and contributors): 2,500 clips,
5 speakers, digits 0-9, 50 takes each, 8 kHz mono. Regenerate data/ with
``python scripts/models/vendor_data.py``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SNIPS_PATH = DATA / "snips" / "snips-2017.jsonl.gz"
FSDD_PATH = DATA / "fsdd" / "fsdd.npz"
FSDD_SPEAKERS_PATH = DATA / "fsdd" / "speakers.json"
FSDD_SAMPLE_RATE = 8000
FSDD_TEST_TAKES = range(0, 5)  # the dataset's own convention: takes 0-4 test, 5-49 train

SNIPS_INTENTS: tuple[str, ...] = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)

SLOT_TYPES: tuple[str, ...] = (
    "album",
    "artist",
    "best_rating",
    "city",
    "condition_description",
    "condition_temperature",
    "country",
    "cuisine",
    "current_location",
    "entity_name",
    "facility",
    "genre",
    "geographic_poi",
    "location_name",
    "movie_name",
    "movie_type",
    "music_item",
    "object_location_type",
    "object_name",
    "object_part_of_series_type",
    "object_select",
    "object_type",
    "party_size_description",
    "party_size_number",
    "playlist",
    "playlist_owner",
    "poi",
    "rating_unit",
    "rating_value",
    "restaurant_name",
    "restaurant_type",
    "served_dish",
    "service",
    "sort",
    "spatial_relation",
    "state",
    "timeRange",
    "track",
    "year",
)


def bio_tags() -> tuple[str, ...]:
    """("O", "B-album", "I-album", "B-artist", "I-artist", ...) in SLOT_TYPES order; index = tag id."""
    tags = ["O"]
    for slot in SLOT_TYPES:
        tags += [f"B-{slot}", f"I-{slot}"]
    return tuple(tags)


@dataclass(frozen=True)
class Utterance:
    intent: str
    text: str
    spans: tuple[tuple[int, int, str], ...]  # (start, end, slot): text[start:end] is the slot value


@dataclass(frozen=True, eq=False)
class Clip:
    digit: int
    speaker: str
    take: int
    samples: np.ndarray  # float32 in [-1, 1], read-only
    sample_rate: int
    accent: str


@cache
def _snips() -> tuple[Utterance, ...]:
    with gzip.open(SNIPS_PATH, "rt", encoding="utf-8") as stream:
        return tuple(
            Utterance(row["intent"], row["text"], tuple((int(s), int(e), str(slot)) for s, e, slot in row["spans"]))
            for row in map(json.loads, stream)
        )


def load_snips() -> list[Utterance]:
    """All 13,784 SNIPS 2017 training utterances, intents sorted, original file order within each."""
    return list(_snips())


def snips_split(
    utterances: Sequence[Utterance], *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Deterministic split stratified by intent: round(n * val_fraction) of each intent go to val.

    Both halves keep the input order. The same input, fraction and seed always give the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_intent: dict[str, list[int]] = {}
    for index, utterance in enumerate(utterances):
        by_intent.setdefault(utterance.intent, []).append(index)
    val_indices: set[int] = set()
    for rank, intent in enumerate(sorted(by_intent)):
        indices = by_intent[intent]
        rng = np.random.default_rng([seed, rank])
        n_val = int(round(len(indices) * val_fraction))
        val_indices.update(indices[i] for i in rng.permutation(len(indices))[:n_val])
    train = [u for i, u in enumerate(utterances) if i not in val_indices]
    val = [u for i, u in enumerate(utterances) if i in val_indices]
    return train, val


@cache
def _fsdd() -> tuple[Clip, ...]:
    accents = {name: meta["accent"] for name, meta in json.loads(FSDD_SPEAKERS_PATH.read_text("utf-8")).items()}
    with np.load(FSDD_PATH, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    sample_rate = int(arrays["sample_rate"])
    names = [str(name) for name in arrays["speaker_names"]]
    audio = (arrays["samples"].astype(np.float32) / np.float32(32768.0)).clip(-1.0, 1.0)
    audio.flags.writeable = False
    offsets = arrays["offsets"]
    clips = []
    for i, (digit, speaker, take) in enumerate(zip(arrays["digit"], arrays["speaker"], arrays["take"], strict=True)):
        name = names[int(speaker)]
        clips.append(Clip(int(digit), name, int(take), audio[offsets[i] : offsets[i + 1]], sample_rate, accents[name]))
    return tuple(clips)


def load_fsdd() -> list[Clip]:
    """All 2,500 FSDD clips sorted by (speaker, digit, take); samples are read-only float32 views."""
    return list(_fsdd())


def fsdd_official_split(clips: Iterable[Clip]) -> tuple[list[Clip], list[Clip]]:
    """(train, test): takes 0-4 of every digit and speaker are test, takes 5-49 train."""
    clips = list(clips)
    return [c for c in clips if c.take not in FSDD_TEST_TAKES], [c for c in clips if c.take in FSDD_TEST_TAKES]


def fsdd_leave_one_speaker_out(clips: Iterable[Clip], speaker: str) -> tuple[list[Clip], list[Clip]]:
    """(train, test): test is every clip of `speaker`, train every clip of the others."""
    clips = list(clips)
    if not any(c.speaker == speaker for c in clips):
        raise ValueError(f"no clips of speaker {speaker!r}")
    return [c for c in clips if c.speaker != speaker], [c for c in clips if c.speaker == speaker]
