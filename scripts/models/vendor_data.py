"""Regenerate the vendored datasets under data/ from the shared, unchanged copies.

Usage (from the repository root):
    python scripts/models/vendor_data.py                        # reads ../shared/datasets
    python scripts/models/vendor_data.py --source /path/to/datasets

Writes, byte-for-byte reproducibly (fixed gzip and zip timestamps):
    data/snips/snips-2017.jsonl.gz   one {"intent", "text", "spans"} object per utterance
    data/snips/LICENSE               copy of the CC0 1.0 licence
    data/fsdd/fsdd.npz               all recordings as one int16 array + offsets + labels
    data/fsdd/speakers.json          copy of the speaker metadata
The READMEs under data/ are written by hand and are not touched, except that the
per-intent counts are printed so that data/snips/README.md can be checked.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import io
import json
import re
import shutil
import wave
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets"
DATA = ROOT / "data"
SAMPLE_RATE = 8000
_WAV_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    """Decode only the bytes that are not valid UTF-8 as Latin-1."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("edgefleet-latin1-fallback", _latin1_fallback)


def read_snips(source: Path) -> list[dict]:
    """Every utterance of the seven training files, intents sorted, file order within each."""
    rows: list[dict] = []
    for path in sorted((source / "snips-2017").glob("train_*_full.json")):
        document = json.loads(path.read_bytes().decode("utf-8", "edgefleet-latin1-fallback"))
        for intent, utterances in sorted(document.items()):
            for utterance in utterances:
                text, spans = "", []
                for piece in utterance["data"]:
                    start = len(text)
                    text += piece["text"]
                    if "entity" in piece:
                        spans.append([start, len(text), piece["entity"]])
                rows.append({"intent": intent, "text": text, "spans": spans})
    rows.sort(key=lambda row: row["intent"])  # stable: keeps file order within an intent
    return rows


def write_snips(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as stream:
        stream.write(payload.encode("utf-8"))
    out.write_bytes(buffer.getvalue())


def read_fsdd(source: Path) -> dict[str, np.ndarray]:
    """All recordings sorted by (speaker, digit, take) as one concatenated int16 array."""
    entries = []
    for path in (source / "fsdd" / "recordings").glob("*.wav"):
        match = _WAV_NAME.match(path.name)
        if match is None:
            raise ValueError(f"unexpected file name {path.name}")
        entries.append((match[2], int(match[1]), int(match[3]), path))
    entries.sort(key=lambda entry: entry[:3])
    speakers = sorted({entry[0] for entry in entries})
    chunks, offsets = [], [0]
    for _speaker, _digit, _take, path in entries:
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getcomptype())
            if shape != (1, 2, SAMPLE_RATE, "NONE"):
                raise ValueError(f"{path.name}: expected 8 kHz mono 16-bit PCM, got {shape}")
            chunk = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        chunks.append(chunk)
        offsets.append(offsets[-1] + len(chunk))
    return {
        "samples": np.concatenate(chunks).astype(np.int16),
        "offsets": np.asarray(offsets, dtype=np.int64),
        "digit": np.asarray([entry[1] for entry in entries], dtype=np.int8),
        "speaker": np.asarray([speakers.index(entry[0]) for entry in entries], dtype=np.int8),
        "take": np.asarray([entry[2] for entry in entries], dtype=np.int16),
        "speaker_names": np.asarray(speakers, dtype="<U16"),
        "sample_rate": np.asarray(SAMPLE_RATE, dtype=np.int32),
    }


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    """Like np.savez_compressed, but with fixed timestamps so the file is reproducible."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array, order="C"), allow_pickle=False)
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with snips-2017/ and fsdd/")
    parser.add_argument("--out", type=Path, default=DATA, help="data folder to write (default: data/)")
    args = parser.parse_args(argv)

    rows = read_snips(args.source)
    write_snips(rows, args.out / "snips" / "snips-2017.jsonl.gz")
    shutil.copyfile(args.source / "snips-2017" / "LICENSE", args.out / "snips" / "LICENSE")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["intent"]] = counts.get(row["intent"], 0) + 1
    print(f"snips: {len(rows)} utterances", json.dumps(counts))

    arrays = read_fsdd(args.source)
    write_npz(arrays, args.out / "fsdd" / "fsdd.npz")
    shutil.copyfile(args.source / "fsdd" / "speakers.json", args.out / "fsdd" / "speakers.json")
    names = arrays["speaker_names"].tolist()
    print(f"fsdd: {len(arrays['digit'])} clips, {len(arrays['samples'])} samples, speakers {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
