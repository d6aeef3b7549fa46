"""Where a command may write, and writing there safely.

Every file a verb writes goes through :func:`check_output` first and through
:func:`atomic_write_text` or :func:`staged_files` to be written. The rules:

* an output is never the input model, nor a file the input reads (its external data,
  however the path is spelled: ``./sub/../weights.bin``, a hard link, a symbolic link);
* an output that is a symbolic link is refused (writing through it would replace a file
  elsewhere, and external data beside it would not be found beside the link);
* an existing file is replaced only when ``overwrite`` is given;
* files are written in a temporary folder beside their destination and moved into place
  once all of them are complete, so a failure leaves nothing behind; folders created
  for the output are removed again when writing fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that would destroy or shadow a file."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(
    path: str | os.PathLike[str],
    *,
    protected: Iterable[tuple[Path, str]] = (),
    overwrite: bool = False,
    option: str = "output",
) -> Path:
    """Check that ``path`` may be written; return it as an absolute path (links not followed).

    ``protected`` pairs each file that must never be written with what it is ("the input
    model", "external data of the input model").
    """
    target = Path(os.path.abspath(os.fspath(path)))
    if not target.name or target.name in (".", ".."):
        raise OutputPathError(f"{option} {path}: not a file name")
    if target.is_symlink():
        raise OutputPathError(
            f"{option} {path} is a symbolic link to {os.readlink(target)}; refusing to write through it "
            "(give the real path)"
        )
    for other, what in protected:
        if (target.exists() or other.exists()) and _same_file(target, other):
            raise OutputPathError(f"{option} {path} is {what}; choose another output path")
        if target.resolve() == other.resolve():
            raise OutputPathError(f"{option} {path} is {what}; choose another output path")
    if target.is_dir():
        raise OutputPathError(f"{option} {path} is a folder")
    if target.exists() and not overwrite:
        raise OutputPathError(f"{option} {path} exists; pass --overwrite to replace it")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{option} {path}: {parent} is not writable")
    return target


@contextlib.contextmanager
def staged_files(targets: Iterable[Path]) -> Iterator[dict[Path, Path]]:
    """Yield ``{target: staging path}``; on a clean exit move every staged file that was
    written onto its target (targets listed first are moved first), else remove them all.

    All targets must share one folder. Folders created for them are removed on failure.
    """
    targets = list(targets)
    folder = targets[0].parent
    created = []
    missing = folder
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.", dir=folder))
    try:
        staged = {target: staging / target.name for target in targets}
        yield staged
        for target, temporary in staged.items():
            if temporary.exists():
                os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:  # innermost first; only folders this call made, and only if empty
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, option: str = "output") -> None:
    """Write ``text`` to ``path`` atomically (the checks of :func:`check_output`, overwriting
    allowed: a report or input file is the user's to replace)."""
    atomic_write_with(path, lambda staging: staging.write_text(text), option=option)


def atomic_write_with(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, option: str = "output"
) -> None:
    """Call ``write(staging path)`` and move the file it wrote onto ``path`` atomically
    (the checks of :func:`check_output`, overwriting allowed)."""
    target = check_output(path, overwrite=True, option=option)
    with staged_files([target]) as staged:
        write(staged[target])
