"""Writing a bundle directory (manifest.json + files) so that it appears whole or not at all."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_bundle_dir(out: Path, name: str, payloads: Mapping[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write ``out/name`` with every payload at its bundle path and ``manifest.json``; returns the path.

    The directory is assembled beside its final place and renamed into it, replacing an older
    build of the same name; a failure leaves the previous directory as it was.
    """
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        for path, payload in payloads.items():
            (staging / path).write_bytes(payload)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
