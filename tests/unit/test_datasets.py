"""The vendored datasets under data/ load with the documented counts, spans and splits (no ../shared needed)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from scripts.models.data import (
    FSDD_SAMPLE_RATE,
    SLOT_TYPES,
    SNIPS_INTENTS,
    Clip,
    Utterance,
    bio_tags,
    fsdd_leave_one_speaker_out,
    fsdd_official_split,
    load_fsdd,
    load_snips,
    snips_split,
)

SNIPS_COUNTS = {
    "AddToPlaylist": 1942,
    "BookRestaurant": 1973,
    "GetWeather": 2000,
    "PlayMusic": 2000,
    "RateBook": 1956,
    "SearchCreativeWork": 1954,
    "SearchScreeningEvent": 1959,
}
SPEAKERS = ("jackson", "lucas", "nicolas", "theo", "yweweler")


@pytest.fixture(scope="module")
def utterances() -> list[Utterance]:
    return load_snips()


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    return load_fsdd()


def test_snips_counts_and_constants(utterances):
    assert len(utterances) == 13_784
    assert Counter(u.intent for u in utterances) == SNIPS_COUNTS
    assert tuple(sorted(SNIPS_COUNTS)) == SNIPS_INTENTS
    assert tuple(sorted({slot for u in utterances for _, _, slot in u.spans})) == SLOT_TYPES
    assert len(SLOT_TYPES) == 39
    # Intents sorted, file order within each: the first utterance of each file is where it belongs.
    assert [u.intent for u in utterances] == sorted(u.intent for u in utterances)
    assert utterances[0].text == "Add another song to the Cita Romántica playlist. "


def test_bio_tags_are_fixed():
    tags = bio_tags()
    assert tags[0] == "O" and len(tags) == 1 + 2 * len(SLOT_TYPES) and len(set(tags)) == len(tags)
    assert tags[1:3] == ("B-album", "I-album") and tags[-2:] == ("B-year", "I-year")
    assert bio_tags() == tags


def test_spans_slice_non_empty_text_in_order(utterances):
    n_spans = 0
    for u in utterances:
        previous_end = 0
        for start, end, slot in u.spans:
            assert previous_end <= start < end <= len(u.text), (u, start, end)
            assert u.text[start:end].strip(), (u, slot)
            assert slot in SLOT_TYPES
            previous_end = end
            n_spans += 1
    assert n_spans > 10_000
    first_music = next(u for u in utterances if u.intent == "PlayMusic")
    assert first_music.text == "I need to hear the song Aspro Mavro from Bill Szymczyk on Youtube"
    assert [(first_music.text[s:e], slot) for s, e, slot in first_music.spans] == [
        ("song", "music_item"),
        ("Aspro Mavro", "track"),
        ("Bill Szymczyk", "artist"),
        ("Youtube", "service"),
    ]


def test_playmusic_latin1_fallback(utterances):
    assert not any("\ufffd" in u.text for u in utterances)
    music = [u for u in utterances if u.intent == "PlayMusic"]
    assert any("í" in u.text for u in music)
    # The one utterance with bytes that are not UTF-8 (ED A0 BC ED BD 95), decoded byte by byte as Latin-1.
    assert music[461].text == "I want toi hear some Pop Punk Perfection í\xa0¼í½\x95 off of Deezer"


def test_snips_split_is_stratified_deterministic_disjoint(utterances):
    train, val = snips_split(utterances)
    assert len(train) + len(val) == len(utterances)
    assert {id(u) for u in train}.isdisjoint(id(u) for u in val)
    val_counts = Counter(u.intent for u in val)
    assert val_counts == {intent: round(n * 0.1) for intent, n in SNIPS_COUNTS.items()}
    again_train, again_val = snips_split(utterances)
    assert again_train == train and again_val == val
    _, other_val = snips_split(utterances, seed=1)
    assert other_val != val and Counter(u.intent for u in other_val) == val_counts
    _, small_val = snips_split(utterances, val_fraction=0.2)
    assert len(small_val) == sum(round(n * 0.2) for n in SNIPS_COUNTS.values())


def test_fsdd_counts(clips):
    assert len(clips) == 2_500
    assert {c.speaker for c in clips} == set(SPEAKERS)
    assert Counter((c.speaker, c.digit) for c in clips) == {(s, d): 50 for s in SPEAKERS for d in range(10)}
    assert {(c.speaker, c.digit, c.take) for c in clips} == {
        (s, d, t) for s in SPEAKERS for d in range(10) for t in range(50)
    }
    accents = {c.speaker: c.accent for c in clips}
    assert accents == {
        "jackson": "USA/neutral",
        "lucas": "DEU/German",
        "nicolas": "BEL/French",
        "theo": "USA/neutral",
        "yweweler": "DEU/German",
    }


def test_fsdd_samples(clips):
    for clip in clips:
        assert clip.sample_rate == FSDD_SAMPLE_RATE == 8000
        assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1 and clip.samples.size > 0
    everything = np.concatenate([c.samples for c in clips])
    assert everything.min() >= -1.0 and everything.max() <= 1.0
    assert np.abs(everything).max() > 0.1  # real audio, not silence
    assert not clips[0].samples.flags.writeable


def test_fsdd_official_split(clips):
    train, test = fsdd_official_split(clips)
    # Takes 0-4 of 10 digits x 5 speakers: 250 test clips (10%), 2,250 train.
    assert len(test) == 250 and len(train) == 2_250
    assert {c.take for c in test} == set(range(5)) and {c.take for c in train} == set(range(5, 50))


@pytest.mark.parametrize("speaker", SPEAKERS)
def test_fsdd_leave_one_speaker_out(clips, speaker):
    train, test = fsdd_leave_one_speaker_out(clips, speaker)
    assert len(test) == 500 and len(train) == 2_000
    assert {c.speaker for c in test} == {speaker}
    assert speaker not in {c.speaker for c in train}


def test_fsdd_leave_one_speaker_out_refuses_unknown_speaker(clips):
    with pytest.raises(ValueError, match="no clips"):
        fsdd_leave_one_speaker_out(clips, "nobody")
