"""The audio front end on known signals: WAV parsing, resampling, log-mel, MFCC and frame fixing."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.pipelines import frontend
from agent.pipelines.frontend import AudioError, FrontEndConfigError
from protos.edgefleet.v1 import bundle_pb2

FSDD = Path(__file__).parent / "data" / "fsdd"
RATE = 8000


def make_config(**overrides) -> bundle_pb2.AudioFrontEnd:
    settings = dict(
        sample_rate_hz=RATE,
        kind="log-mel",
        n_fft=256,
        hop_length=80,
        win_length=200,
        n_mels=40,
        n_mfcc=13,
        fmin_hz=20.0,
        fmax_hz=4000.0,
        num_frames=100,
        labels_file="labels.txt",
        clip_seconds=1.0,
    )
    settings.update(overrides)
    return bundle_pb2.AudioFrontEnd(**settings)


def tone(freq_hz: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    pcm = np.clip(np.round(np.asarray(samples) * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes() if width == 2 else bytes(len(pcm) * width))
    return buffer.getvalue()


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


def mel_band_of(freq_hz: float, cfg) -> int:
    edges = frontend._mel_to_hz(
        np.linspace(frontend._hz_to_mel(cfg.fmin_hz), frontend._hz_to_mel(cfg.fmax_hz), cfg.n_mels + 2)
    )
    return int(np.argmin(np.abs(edges[1:-1] - freq_hz)))


def test_read_wav_returns_samples_in_unit_range_and_the_rate():
    samples, rate = frontend.read_wav(wav_bytes(tone(440, 0.5)))
    assert rate == RATE
    assert samples.dtype == np.float32 and samples.shape == (4000,)
    assert -1.0 <= samples.min() < -0.49 and 0.49 < samples.max() <= 1.0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"not a wav file at all", "not a RIFF/WAVE"),
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk", "not a readable"),
        (wav_bytes(tone(440, 0.1), channels=2), "2 channels"),
        (wav_bytes(tone(440, 0.1), width=1), "8-bit"),
        (wav_bytes(np.zeros(0)), "no samples"),
        (wav_bytes(tone(440, 0.1))[:-100], "declares"),
        (wav_bytes(np.zeros(61 * 1000), rate=1000), "limit is 60 s"),
    ],
)
def test_read_wav_refuses_what_it_cannot_read_with_a_clear_reason(data, reason):
    with pytest.raises(AudioError, match=reason):
        frontend.read_wav(data)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_resample_is_exact_when_rates_are_equal():
    x = tone(440, 0.25)
    assert np.array_equal(frontend.resample(x, RATE, RATE), x)


@pytest.mark.parametrize(("from_hz", "to_hz"), [(16000, 8000), (8000, 16000), (44100, 16000), (8000, 11025)])
def test_resample_keeps_a_tones_frequency_and_the_duration(from_hz, to_hz):
    x = tone(440, 1.0, rate=from_hz)
    y = frontend.resample(x, from_hz, to_hz)
    assert abs(y.size - to_hz) <= 1
    assert abs(dominant_hz(y, to_hz) - 440) < 3


def test_downsampling_suppresses_content_above_the_new_nyquist():
    y = frontend.resample(tone(6000, 1.0, rate=16000), 16000, 8000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 0.05  # the 6 kHz tone would alias to 2 kHz


@pytest.mark.parametrize("freq_hz", [300.0, 1000.0, 2500.0])
def test_a_pure_tone_puts_its_energy_in_the_mel_band_centred_on_it(freq_hz):
    cfg = make_config()
    mel = frontend.log_mel(tone(freq_hz, 0.5), cfg)
    assert mel.dtype == np.float32 and mel.shape[0] == cfg.n_mels
    loudest = int(np.argmax(mel[:, 10:-10].mean(axis=1)))
    assert abs(loudest - mel_band_of(freq_hz, cfg)) <= 1


def test_silence_gives_a_flat_spectrogram_at_the_log_floor():
    mel = frontend.log_mel(np.zeros(4000, dtype=np.float32), make_config())
    assert np.allclose(mel, np.log(frontend.LOG_FLOOR))


def test_log_mel_frame_count_follows_hop_length():
    mel = frontend.log_mel(np.zeros(8000, dtype=np.float32), make_config())
    assert mel.shape == (40, 1 + 8000 // 80)


def test_mfcc_of_silence_has_energy_only_in_the_first_coefficient():
    coefficients = frontend.mfcc(np.zeros(4000, dtype=np.float32), make_config(kind="mfcc"))
    assert coefficients.shape[0] == 13
    assert np.allclose(coefficients[1:], 0.0, atol=1e-4)
    assert np.allclose(coefficients[0], np.log(frontend.LOG_FLOOR) * np.sqrt(40), rtol=1e-5)


def test_fix_frames_pads_with_the_minimum_and_crops_the_middle():
    short = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    assert frontend.fix_frames(short, 4).tolist() == [[1.0, 1.0, 2.0, 1.0], [1.0, 3.0, 4.0, 1.0]]
    long = np.arange(10, dtype=np.float32)[None, :]
    assert frontend.fix_frames(long, 4).tolist() == [[3.0, 4.0, 5.0, 6.0]]


@pytest.mark.parametrize(("kind", "rows"), [("log-mel", 40), ("mfcc", 13), ("raw", 1)])
def test_features_have_the_model_input_shape(kind, rows):
    cfg = make_config(kind=kind, num_frames=8000 if kind == "raw" else 100)
    out = frontend.features(tone(440, 0.3, rate=16000), 16000, cfg)
    assert out.dtype == np.float32 and out.shape == (1, 1, rows, cfg.num_frames)


def test_features_are_deterministic():
    x = np.random.default_rng(7).standard_normal(6000).astype(np.float32) * 0.1
    cfg = make_config(kind="mfcc")
    assert np.array_equal(frontend.features(x, RATE, cfg), frontend.features(x.copy(), RATE, cfg))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"kind": "spectrogram"}, "unknown front-end kind"),
        ({"win_length": 512}, "longer than n_fft"),
        ({"fmax_hz": 6000.0}, "Nyquist"),
        ({"kind": "mfcc", "n_mfcc": 41}, "n_mfcc"),
        ({"num_frames": 0}, "num_frames"),
    ],
)
def test_inconsistent_settings_are_a_config_error(overrides, reason):
    with pytest.raises(FrontEndConfigError, match=reason):
        frontend.features(tone(440, 0.2), RATE, make_config(**overrides))


@pytest.mark.parametrize("path", sorted(FSDD.glob("*.wav")), ids=lambda p: p.stem)
def test_a_real_fsdd_recording_goes_through_the_front_end(path):
    samples, rate = frontend.read_wav(path.read_bytes())
    assert rate == 8000 and samples.size > 1000
    for kind, rows in (("log-mel", 40), ("mfcc", 13)):
        out = frontend.features(samples, rate, make_config(kind=kind))
        assert out.shape == (1, 1, rows, 100)
        assert np.isfinite(out).all()


def test_the_fsdd_recordings_are_vendored():
    assert len(list(FSDD.glob("*.wav"))) == 3
