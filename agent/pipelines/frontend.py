"""The audio front end: WAV bytes to the feature tensor a speech model reads.

This module is used identically at model-build time and on the device: build
scripts import it to compute training features, the agent imports it to serve,
so a model never sees features from a different recipe than it was trained on.

Invariants:
- numpy and the standard library only; no I/O beyond parsing the bytes given.
- Deterministic: the same samples and config give bit-identical features
  (float64 maths throughout, one cast to float32 at the end).
- Input is bounded: at most ``MAX_SECONDS`` of 16-bit PCM mono audio.
- The config is a ``bundle_pb2.AudioFrontEnd`` (or any object with the same
  fields); ``kind`` is ``log-mel``, ``mfcc`` or ``raw``.

Recipe: Hann window (periodic, ``win_length`` samples, centred in ``n_fft``),
frames centred on ``t * hop_length`` with zero padding of ``n_fft // 2`` on
both sides, power spectrum ``|rfft|^2``, HTK mel scale with unnormalised
triangular filters between ``fmin_hz`` and ``fmax_hz`` (0 means Nyquist),
``log(mel + 1e-6)``. MFCC is the orthonormal DCT-II of the log-mel over mel
bands, first ``n_mfcc`` coefficients. ``raw`` is the waveform itself, one row
of ``num_frames`` samples.
"""

from __future__ import annotations

import io
import wave
from functools import lru_cache

import numpy as np

MAX_SECONDS = 60.0
MIN_SAMPLE_RATE_HZ = 1000
MAX_SAMPLE_RATE_HZ = 192_000
LOG_FLOOR = 1e-6
KINDS = ("log-mel", "mfcc", "raw")


class AudioError(ValueError):
    """The audio input is not something the front end accepts; the message says why."""


class FrontEndConfigError(ValueError):
    """The bundle's ``AudioFrontEnd`` settings are inconsistent; the build is broken, not the input."""


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parse a RIFF/WAVE file, PCM 16-bit mono; returns (float32 samples in [-1, 1], sample rate).

    Raises AudioError for empty, malformed, truncated, non-PCM, multi-channel,
    non-16-bit, out-of-range sample rate, or longer than ``MAX_SECONDS`` input.
    """
    if not data:
        raise AudioError("the audio is empty: send a RIFF/WAVE file, PCM 16-bit mono")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("the audio is not a RIFF/WAVE file: send PCM 16-bit mono WAV")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            count = reader.getnframes()
            if channels != 1:
                raise AudioError(f"the audio has {channels} channels: send mono")
            if width != 2:
                raise AudioError(f"the audio has {8 * width}-bit samples: send 16-bit PCM")
            if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
                raise AudioError(f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz")
            if count / rate > MAX_SECONDS:
                raise AudioError(f"the audio is {count / rate:.1f} s long: the limit is {MAX_SECONDS:.0f} s")
            raw = reader.readframes(count)
    except AudioError:
        raise
    except (wave.Error, EOFError, ValueError) as exc:
        raise AudioError(f"the audio is not a readable PCM 16-bit WAV file: {exc}") from exc
    if len(raw) < 2:
        raise AudioError("the audio has no samples")
    if len(raw) != 2 * count:
        raise AudioError(f"the WAV header declares {count} samples but the file holds {len(raw) // 2}")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    return samples, rate


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Change the sample rate: a windowed-sinc low-pass when going down, then linear interpolation.

    Returns a float32 copy, exactly equal to the input when the rates are equal.
    Raises ValueError for non-positive rates.
    """
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} and {to_hz}")
    x = np.asarray(samples, dtype=np.float64)
    if from_hz == to_hz or x.size == 0:
        return np.asarray(samples, dtype=np.float32).copy()
    if to_hz < from_hz:
        x = np.convolve(x, _lowpass(0.5 * to_hz / from_hz), mode="same")
    n_out = max(1, round(x.size * to_hz / from_hz))
    positions = np.arange(n_out, dtype=np.float64) * (from_hz / to_hz)
    return np.interp(positions, np.arange(x.size, dtype=np.float64), x).astype(np.float32)


@lru_cache(maxsize=8)
def _lowpass(cutoff: float, taps: int = 63) -> np.ndarray:
    # Anti-aliasing before decimation; cutoff in cycles per input sample, a little under Nyquist.
    n = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    h = 2 * cutoff * 0.95 * np.sinc(2 * cutoff * 0.95 * n) * np.hamming(taps)
    return h / h.sum()


def log_mel(samples: np.ndarray, cfg) -> np.ndarray:
    """Log-mel spectrogram, float32 [n_mels, frames]; ``samples`` are at ``cfg.sample_rate_hz``.

    Raises FrontEndConfigError for inconsistent settings.
    """
    n_fft, hop, win = _check_stft(cfg)
    if cfg.n_mels < 1:
        raise FrontEndConfigError("n_mels must be at least 1")
    power = _power_spectrum(np.asarray(samples, dtype=np.float64), n_fft, hop, win)
    fmax = float(cfg.fmax_hz) or cfg.sample_rate_hz / 2
    bank = _mel_filterbank(int(cfg.sample_rate_hz), n_fft, int(cfg.n_mels), float(cfg.fmin_hz), fmax)
    return np.log(bank @ power + LOG_FLOOR).astype(np.float32)


def mfcc(samples: np.ndarray, cfg) -> np.ndarray:
    """MFCC, float32 [n_mfcc, frames]: orthonormal DCT-II of the log-mel, first ``n_mfcc`` rows.

    Raises FrontEndConfigError for inconsistent settings.
    """
    if not 1 <= cfg.n_mfcc <= cfg.n_mels:
        raise FrontEndConfigError(f"n_mfcc must be between 1 and n_mels ({cfg.n_mels}), got {cfg.n_mfcc}")
    mel = log_mel(samples, cfg).astype(np.float64)
    return (_dct_matrix(int(cfg.n_mfcc), int(cfg.n_mels)) @ mel).astype(np.float32)


def fix_frames(features: np.ndarray, num_frames: int, pad_value: float | None = None) -> np.ndarray:
    """Bring [n, frames] to exactly ``num_frames`` columns, centred: crop the middle or pad both sides.

    Padding uses ``pad_value``, by default the minimum of ``features`` (silence
    in log-mel terms). Raises FrontEndConfigError if ``num_frames`` < 1.
    """
    if num_frames < 1:
        raise FrontEndConfigError("num_frames must be at least 1")
    have = features.shape[1]
    if have >= num_frames:
        start = (have - num_frames) // 2
        return np.ascontiguousarray(features[:, start : start + num_frames])
    if pad_value is None:
        pad_value = float(features.min()) if features.size else 0.0
    before = (num_frames - have) // 2
    out = np.full((features.shape[0], num_frames), pad_value, dtype=features.dtype)
    out[:, before : before + have] = features
    return out


def features(samples: np.ndarray, sample_rate: int, cfg) -> np.ndarray:
    """The model input, float32 [1, 1, n, num_frames] (n = n_mels, n_mfcc, or 1 for raw).

    Resamples to ``cfg.sample_rate_hz``, keeps the centred ``clip_seconds``
    (when set), computes the ``cfg.kind`` features and fixes the frame count.
    Raises FrontEndConfigError for inconsistent settings, AudioError for empty audio.
    """
    if cfg.kind not in KINDS:
        raise FrontEndConfigError(f"unknown front-end kind {cfg.kind!r}: expected one of {', '.join(KINDS)}")
    if not MIN_SAMPLE_RATE_HZ <= cfg.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise FrontEndConfigError(f"sample_rate_hz {cfg.sample_rate_hz} is out of range")
    if np.asarray(samples).size == 0:
        raise AudioError("the audio has no samples")
    x = resample(samples, sample_rate, int(cfg.sample_rate_hz))
    clip = round(cfg.clip_seconds * cfg.sample_rate_hz) if cfg.clip_seconds > 0 else 0
    if 0 < clip < x.size:
        x = fix_frames(x[None, :], clip)[0]
    if cfg.kind == "raw":
        out = fix_frames(x[None, :], int(cfg.num_frames), 0.0)
    elif cfg.kind == "mfcc":
        out = fix_frames(mfcc(x, cfg), int(cfg.num_frames))
    else:
        out = fix_frames(log_mel(x, cfg), int(cfg.num_frames))
    return out.astype(np.float32)[None, None, :, :]


def _check_stft(cfg) -> tuple[int, int, int]:
    n_fft, hop = int(cfg.n_fft), int(cfg.hop_length)
    win = int(cfg.win_length) or n_fft
    if n_fft < 2 or hop < 1:
        raise FrontEndConfigError("n_fft must be at least 2 and hop_length at least 1")
    if win > n_fft:
        raise FrontEndConfigError(f"win_length {win} is longer than n_fft {n_fft}")
    fmax = float(cfg.fmax_hz) or cfg.sample_rate_hz / 2
    if not 0 <= cfg.fmin_hz < fmax <= cfg.sample_rate_hz / 2:
        raise FrontEndConfigError(f"need 0 <= fmin_hz < fmax_hz <= {cfg.sample_rate_hz / 2} (Nyquist)")
    return n_fft, hop, win


def _power_spectrum(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    padded = np.pad(x, n_fft // 2)
    if padded.size < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.size))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * _window(n_fft, win), axis=1)
    return (spectrum.real**2 + spectrum.imag**2).T  # [bins, frames]


@lru_cache(maxsize=8)
def _window(n_fft: int, win: int) -> np.ndarray:
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    left = (n_fft - win) // 2
    return np.pad(hann, (left, n_fft - win - left))


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.flags.writeable = False
    return bank  # [n_mels, bins]


@lru_cache(maxsize=8)
def _dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    k = np.arange(n_out, dtype=np.float64)[:, None]
    n = np.arange(n_in, dtype=np.float64)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    basis.flags.writeable = False
    return basis
