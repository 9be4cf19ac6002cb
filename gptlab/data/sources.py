"""Finding the raw text: Tiny Shakespeare (local copy or download) or the user's own files."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from gptlab.errors import GptlabError

DATA_DIR_ENV = "GPTLAB_DATA_DIR"


@dataclass(frozen=True)
class NamedText:
    """A public text gptlab knows: where it sits under a data dir, where to download it, its checksum."""

    name: str
    file: Path
    url: str
    sha256: str


SHAKESPEARE = NamedText("shakespeare", Path("tinyshakespeare") / "input.txt",
                        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")


class DataError(GptlabError):
    pass


def data_dirs(configured: Optional[str]) -> list[Path]:
    """Where to look for data sets: $GPTLAB_DATA_DIR first, then the configured folder."""
    out: list[Path] = []
    for d in (os.environ.get(DATA_DIR_ENV), configured):
        if d and Path(d).expanduser().resolve() not in out:
            out.append(Path(d).expanduser().resolve())
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_or_download(relpath: Path, url: str, sha256: Optional[str], configured_dir: Optional[str]) -> Path:
    """Return data_dir/relpath from the first data dir that has it; else download it into the first data dir."""
    dirs = data_dirs(configured_dir)
    for d in dirs:
        if (d / relpath).is_file():
            return d / relpath
    if not dirs:
        raise DataError(f"no data folder configured: set {DATA_DIR_ENV} or paths.data_dir")
    target = dirs[0] / relpath
    where = " or ".join(str(d / relpath) for d in dirs)
    try:
        fetch(url, target, sha256)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{relpath} is not on disk and downloading it from {url} failed ({reason}); if offline, "
                        f"copy the file to {where} (or set {DATA_DIR_ENV} to a folder holding {relpath})") from None
    return target


def fetch(url: str, target: Path, sha256: Optional[str]) -> None:
    """Download with a progress bar into a temporary file; check its sha256; then move it into place.
    A failed download leaves nothing behind, not even the folders it made."""
    made = [p for p in reversed(target.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.download")
    ok = False
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        if sha256 is not None and (got := sha256_file(tmp)) != sha256:
            raise DataError(f"downloaded {url} but its sha256 is {got}, expected {sha256}; try again later")
        os.replace(tmp, target)
        ok = True
    finally:
        tmp.unlink(missing_ok=True)
        for folder in reversed(made) if not ok else ():
            if not any(folder.iterdir()):
                folder.rmdir()


def read_text(path: Path) -> str:
    """A UTF-8 file, or every .txt file below a folder (sorted, joined by blank lines)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"folder {path} has no .txt files: point data.path at a text file or a folder of .txt files")
        return "\n\n".join(_read_one(p) for p in files)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: check data.path (relative paths start from {Path.cwd()})")
    return _read_one(path)


def _read_one(path: Path) -> str:
    text = decode(path.read_bytes(), str(path), 0)
    if not text.strip():
        raise DataError(f"{path} is empty: give it some text to train on")
    return text.lstrip("\ufeff")  # a byte-order mark is not part of the text


def decode(data: bytes, path: str, offset: int) -> str:
    """UTF-8 or one line saying where it is not; offset: where data starts in the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start}): "
            "convert it first, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`"
        ) from None
