"""The pydocs corpus: the reStructuredText sources of the Python 3.11 documentation (Debian python3.11-doc).

The package is fetched at a pinned version with the machine's own package client (`apt-get download`,
from whatever sources the machine is configured with) and checked against its SHA-256, so every build
reads the same bytes. Files are split into training and held-out sets by a hash of their path (not at random), so
the split does not depend on the order files are listed in.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEB_PACKAGE = "python3.11-doc"
DEB_VERSION = "3.11.2-6+deb12u8"
DEB_FILE = "python3.11-doc_3.11.2-6+deb12u8_all.deb"
SOURCE = f"Debian package {DEB_PACKAGE} {DEB_VERSION}"  # how manifests name the corpus
DEB_SHA256 = "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"
SOURCES_PREFIX = "./usr/share/doc/python3.11/html/_sources/"
HELD_OUT_EVERY = 20  # about 5% of files are held out


@dataclass(frozen=True)
class Document:
    path: str  # relative to _sources/, e.g. "library/json.rst.txt"
    text: str

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.path.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def fetch_deb(cache_dir: Path) -> Path:
    """The pinned .deb in `cache_dir`, downloaded once with `apt-get download` and checked."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / DEB_FILE
    if path.exists() and _sha256(path.read_bytes()) == DEB_SHA256:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"],
                cwd=tmp,
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            raise RuntimeError(f"apt-get download {DEB_PACKAGE}={DEB_VERSION} failed: {detail.strip()}") from error
        data = next(Path(tmp).glob("*.deb")).read_bytes()
    if _sha256(data) != DEB_SHA256:
        raise ValueError(f"{DEB_PACKAGE} {DEB_VERSION}: SHA-256 mismatch; expected {DEB_SHA256}")
    path.write_bytes(data)
    return path


def read_documents(deb_path: Path) -> list[Document]:
    """The *.rst.txt files inside the .deb's data.tar.xz, sorted by path."""
    data_tar = _ar_member(deb_path.read_bytes(), "data.tar.xz")
    documents = []
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data_tar))) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith(SOURCES_PREFIX) and member.name.endswith(".rst.txt"):
                file = archive.extractfile(member)
                assert file is not None  # None only for members that are not regular files
                text = file.read().decode("utf-8")
                documents.append(Document(member.name[len(SOURCES_PREFIX) :], text))
    if not documents:
        raise ValueError(f"{deb_path}: no documentation sources found")
    return sorted(documents, key=lambda d: d.path)


def _ar_member(archive: bytes, name: str) -> bytes:
    # A .deb is a Unix ar archive: 8-byte magic, then 60-byte headers each followed by the member.
    if not archive.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (ar archive)")
    offset = 8
    while offset + 60 <= len(archive):
        header = archive[offset : offset + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        start = offset + 60
        if member == name:
            return archive[start : start + size]
        offset = start + size + (size % 2)
    raise ValueError(f"{name} not found in the package")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
