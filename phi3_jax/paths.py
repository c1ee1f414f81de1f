"""Paths that may be buckets (gs://, s3://) or local, and the one atomic directory write.

One path layer: `etils.epath`, which orbax uses for its own files; without TensorFlow it runs over
fsspec (gcsfs for gs://, s3fs for s3://), which datatrove's readers and writers use too. So a
`--workdir`, a shard glob, a tokenizer or a Hugging Face directory is read and written the same
way wherever it lives. Credentials are the clients' standard ones (application default
credentials for GCS, the AWS environment and config files for S3); nothing here reads or stores
them. Endpoints too (STORAGE_EMULATOR_HOST, AWS_ENDPOINT_URL: the bucket tests' emulators).

A leaf module (no phi3_jax imports), so that every layer can use it.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence

import fsspec
from etils import epath

# The URL schemes of buckets; anything else is a local path.
REMOTE_SCHEMES = ("gs://", "s3://")

# Listings are not cached: another process (a resumed run, another host of the same run, an
# evaluation reading the checkpoints) writes the same bucket, and a stale listing would hide its
# objects. epath instantiates gcsfs and s3fs itself, so the default goes into fsspec's config.
for _protocol in ("gcs", "gs", "s3"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def _filesystem(url: str | os.PathLike) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem of a bucket URL (gcsfs, s3fs), as epath's backend uses it."""
    return fsspec.filesystem(os.fspath(url).split("://", 1)[0])


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a bucket URL (gs://, s3://)."""
    return os.fspath(path).startswith(REMOTE_SCHEMES)


def resolve(path: str | os.PathLike) -> str:
    """A bucket URL unchanged, a local path made absolute (orbax wants absolute paths)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def path(path: str | os.PathLike) -> epath.Path:
    """`path` (local or a bucket URL, made absolute) as an epath.Path: open, read_text,
    write_bytes, exists, is_dir, iterdir, mkdir, rmtree work on both."""
    return epath.Path(resolve(path))


def join(base: str | os.PathLike, *names: str) -> str:
    """`base`/`names`... as a string (a bucket URL keeps its scheme)."""
    return os.fspath(path(base).joinpath(*names))


def glob(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (`**` matches any depth), files and directories; a bucket
    pattern's matches are URLs of the same scheme."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern, recursive=True))
    scheme = pattern[: pattern.index("://") + 3]
    return sorted(scheme + match for match in _filesystem(pattern).glob(pattern))


def _store(path_: str) -> str:
    """What holds `path_`: SCHEME://BUCKET for a bucket URL, "" for a local path."""
    return "/".join(path_.split("/", 3)[:3]) if is_remote(path_) else ""


def common_folder(files: Sequence[str | os.PathLike]) -> tuple[str, list[str]]:
    """(the deepest folder holding all `files`, each file's path relative to it), for readers
    given a folder and names in it (datatrove's): local paths made absolute, bucket URLs kept.
    Files on two stores (two buckets, or a bucket and local disk) are a ValueError naming one
    file of each, since no folder holds both."""
    resolved = [resolve(f) for f in files]
    other = next((f for f in resolved if _store(f) != _store(resolved[0])), None)
    if other is not None:
        raise ValueError(
            f"{resolved[0]} and {other}: on different stores; put the files in one bucket or on "
            "one disk"
        )
    scheme = resolved[0][: resolved[0].index("://") + 3] if is_remote(resolved[0]) else ""
    keys = [f.removeprefix(scheme) for f in resolved]
    root = posixpath.commonpath([posixpath.dirname(k) for k in keys])
    return scheme + root, [posixpath.relpath(k, root) for k in keys]


def has_magic(pattern: str) -> bool:
    """Whether `pattern` is a glob (holds *, ? or [) rather than one path."""
    return glob_lib.has_magic(pattern)


def makedirs(directory: str | os.PathLike) -> None:
    """Create a local directory and its parents; nothing for a bucket (it has no directories,
    and making one could create a mistyped bucket)."""
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)


def check_writable(directory: str | os.PathLike) -> None:
    """Create `directory` and write and delete a probe file there: an OSError naming it on one
    line if that fails (a missing bucket, no permission, a read-only disk, no credentials)."""
    directory = path(directory)
    try:
        makedirs(directory)
        probe = directory / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as error:  # noqa: BLE001 - each client raises its own kinds of error.
        text = str(error).splitlines()[0] if str(error) else ""
        raise OSError(
            f"{directory}: not a writable directory ({type(error).__name__}: "
            f"{getattr(error, 'strerror', None) or text})"
        ) from None


class Appender:
    """A text file appended to, each `write` durable once it returns: locally a file opened to
    append and flushed; on a bucket, whose objects are only ever written whole, the object
    rewritten with all of its text so far (what it held before included, so a resumed run
    continues it). Meant for small logs such as metrics.jsonl."""

    def __init__(self, file: str | os.PathLike):
        self._path = path(file)
        self._text: str | None = None
        self._local = None
        if is_remote(self._path):
            self._text = self._path.read_text() if self._path.exists() else ""
        else:
            makedirs(self._path.parent)
            self._local = open(self._path, "a")  # noqa: SIM115 - closed in close().

    def write(self, text: str) -> None:
        if self._local is None:
            self._text += text
            self._path.write_text(self._text)
        else:
            self._local.write(text)
            self._local.flush()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


@contextlib.contextmanager
def local_directory(directory: str | os.PathLike) -> Iterator[str]:
    """A local directory holding what `directory` holds, for readers of local files only
    (safetensors, tokenizer libraries): a local `directory` itself; a bucket's, downloaded into
    a temporary directory removed on exit."""
    if not is_remote(directory):
        yield os.fspath(directory)
        return
    source = path(directory)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such directory")
    with tempfile.TemporaryDirectory(prefix=f".{source.name}.") as tmp:
        _filesystem(source).get(os.fspath(source) + "/", tmp + "/", recursive=True)
        yield tmp


def cache_path(url: str | os.PathLike) -> str:
    """The local place of a bucket's `url` on this machine: ~/.cache/phi3_jax/buckets/SCHEME/KEY
    (under $XDG_CACHE_HOME where set), for its mirror or for local state kept beside it."""
    scheme, key = os.fspath(url).split("://", 1)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "phi3_jax", "buckets", scheme, key)


def local_mirror(file_or_directory: str | os.PathLike) -> str:
    """A local path holding what `file_or_directory` holds, for readers that open local files
    and keep their paths (tokenizers): a local path itself; a bucket's, downloaded (afresh) into
    ~/.cache/phi3_jax/buckets/SCHEME/BUCKET/KEY, a file with the files beside it, which readers
    look for (a sentencepiece model's PREFIX.json, a tokenizer.json's tokenizer_config.json)."""
    if not is_remote(file_or_directory):
        return os.fspath(file_or_directory)
    source = path(file_or_directory)
    local = cache_path(source)
    filesystem = _filesystem(source)
    if source.is_dir():
        filesystem.get(os.fspath(source) + "/", local + "/", recursive=True)
    elif source.is_file():
        os.makedirs(os.path.dirname(local), exist_ok=True)
        beside = [p for p in source.parent.iterdir() if p.is_file()]
        filesystem.get([os.fspath(p) for p in beside], os.path.dirname(local) + "/")
    else:
        raise FileNotFoundError(f"{source}: no such file or directory")
    return local


def _upload(local: str, target: epath.Path) -> None:
    """Copy the local directory `local` to `target`, the files at its top last: a reader that
    waits for a top-level file (a params checkpoint's config.json, a Hugging Face config.json)
    sees it only once everything below is there."""
    files = [
        os.path.join(root, name) for root, _, names in os.walk(local) for name in sorted(names)
    ]
    files.sort(key=lambda f: (os.path.dirname(f) == local, f))
    for file in files:
        _copy_up(file, target / os.path.relpath(file, local))


def _copy_up(local: str, target: epath.Path) -> None:
    """Copy the local file `local` to `target` (a bucket's object, written whole)."""
    with open(local, "rb") as source, target.open("wb") as sink:
        shutil.copyfileobj(source, sink)


@contextlib.contextmanager
def local_file(file: str | os.PathLike) -> Iterator[str]:
    """A local path at which to write `file`, for writers of local files only (fastText,
    sentencepiece, tiktoken ranks): a local `file` itself, its parent created; for a bucket's, a
    path in a temporary directory whose files (`file` and any written beside it, such as a
    sentencepiece model's PREFIX.vocab) are uploaded beside `file` on a clean exit (nothing is
    uploaded after an error)."""
    if not is_remote(file):
        makedirs(os.path.dirname(os.path.abspath(file)))
        yield os.fspath(file)
        return
    target = path(file)
    with tempfile.TemporaryDirectory(prefix=".local-file.") as tmp:
        yield os.path.join(tmp, target.name)
        for name in sorted(os.listdir(tmp)):
            _copy_up(os.path.join(tmp, name), target.parent / name)


@contextlib.contextmanager
def atomic_directory(path_: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary local directory to write into; on a clean exit it becomes `path_`, so a
    reader sees the directory only once complete (a crash or an error leaves nothing at
    `path_`, and the temporary directory is removed).

    Locally the temporary directory is a sibling of `path_`, renamed to it. A bucket has no
    rename: the directory is written on local disk, then uploaded file by file, the top-level
    files last (`_upload`), so a reader checking one of those sees a complete directory; an
    upload that fails removes what it wrote, and one cut short by a crash lacks those files.

    An existing `path_` is a FileExistsError naming it (never overwritten); missing parents are
    created.
    """
    target = path(path_)
    if target.exists():
        raise FileExistsError(f"{target}: already exists; refusing to overwrite")
    if is_remote(target):
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.") as tmp:
            yield tmp
            try:
                _upload(tmp, target)
            except BaseException:
                # What was uploaded goes too, where the bucket still answers.
                with contextlib.suppress(Exception):
                    target.rmtree(missing_ok=True)
                raise
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        yield tmp
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
