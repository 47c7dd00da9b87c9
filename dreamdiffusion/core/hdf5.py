"""Opening an HDF5 file that a stage reads: a file from a shared DVC remote or another user is
untrusted, so it is checked before a byte of data is read.

HDF5 can make a read leave the file: external links, external storage (a dataset whose bytes are
another file, e.g. /etc/passwd read as pixels) and virtual datasets (mapped from other files).
Soft links name nothing the project's files need. `open_h5` refuses all of them, refuses datasets
whose declared size the file cannot hold (a few-MB file declaring 3e10 rows would make the first
read allocate tens of GB) and, given a schema, checks every dataset's dtype, rank and length
before the caller reads it. Each refusal is a DataError naming the file, the dataset, what was
expected and what was found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

# a dataset may declare at most this many times the bytes it stores (compression of real EEG or
# images stays far below it; the project's writers do not compress at all) ...
MAX_EXPANSION = 32
# ... plus this much (fill values of a small, never-written dataset)
FILL_ALLOWANCE = 2**20
MAX_OBJECTS = 64  # the project's files hold at most 7 datasets: walking a hostile file stays cheap
FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
           h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_LZF: "lzf"}


@dataclass(frozen=True)
class Field:
    """What one dataset must be: `dtype` ('str': text, 'int': any signed integer, else that exact
    numpy dtype), `rank`, fixed sizes of its last axes (None: any), and `rows`, the name of the
    axis its length is shared with (datasets with the same `rows` have equally many rows)."""

    dtype: str
    rank: int
    rows: str = ""
    tail: tuple[int | None, ...] = ()


def _refuse(message: str):
    """Raise a DataError with `message`."""
    from dreamdiffusion.core.fileio import DataError  # io imports torch: only when there is something to refuse

    raise DataError(message)


def describe(dtype: np.dtype) -> str:
    """A dtype in words: 'variable-length utf-8 text', 'int8', 'complex64', ..."""
    text = h5py.check_string_dtype(dtype)
    if text is not None:
        return f"{'variable-length' if text.length is None else f'{text.length}-byte'} {text.encoding} text"
    inner = h5py.check_vlen_dtype(dtype)
    if inner is not None:
        return f"variable-length sequences of {np.dtype(inner)}"
    if h5py.check_ref_dtype(dtype) is not None:
        return "object references"
    return str(dtype)


def _expected(field: Field) -> str:
    """What `field` asks for, in words."""
    kind = {"str": "text", "int": "signed integers"}.get(field.dtype, field.dtype)
    tail = ", ".join("*" if size is None else str(size) for size in field.tail)
    return f"{kind} of rank {field.rank}" + (f" ending in ({tail})" if tail else "")


def _dtype_fits(dtype: np.dtype, field: Field) -> bool:
    """Whether a dataset of `dtype` holds what `field` asks for."""
    if field.dtype == "str":
        return h5py.check_string_dtype(dtype) is not None
    if field.dtype == "int":
        return dtype.kind == "i"
    return dtype == np.dtype(field.dtype)


def _check_links(h5: h5py.File, path: Path) -> list[str]:
    """Names of the file's datasets; any link but a hard one (external, soft) is refused."""
    names: list[str] = []

    def visit(name: str, link) -> str | None:  # a message stops the walk (raising inside it cannot)
        if len(names) >= MAX_OBJECTS:
            return f"{path}: holds more than {MAX_OBJECTS} objects; a processed file holds a few datasets"
        if isinstance(link, h5py.ExternalLink):
            return (f"{path}: '{name}' is an external link to {link.filename}:{link.path}; a processed file "
                    f"must hold its data itself")
        if not isinstance(link, h5py.HardLink):
            kind = "soft link" if isinstance(link, h5py.SoftLink) else type(link).__name__
            return f"{path}: '{name}' is a {kind} to {getattr(link, 'path', '?')!r}; a processed file holds no links"
        names.append(name)
        return None

    problem = h5.visititems_links(visit)
    if problem:
        _refuse(problem)
    return [name for name in names if isinstance(h5.get(name), h5py.Dataset)]


def _check_storage(dataset: h5py.Dataset, path: Path, file_size: int) -> None:
    """Refuse data kept outside the file, unknown filters, and declared sizes the file cannot hold."""
    name = dataset.name.lstrip("/")
    if dataset.is_virtual:
        _refuse(f"{path}: dataset '{name}' is a virtual dataset (mapped from other files); a processed file "
                f"must hold its data itself")
    if dataset.external:
        files = sorted({entry[0] for entry in dataset.external})
        _refuse(f"{path}: dataset '{name}' keeps its bytes in external file(s) {files}; a processed file "
                f"must hold its data itself")
    plist = dataset.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in FILTERS:
            _refuse(f"{path}: dataset '{name}' uses HDF5 filter {code}; expected only {sorted(FILTERS.values())}")
    shape = dataset.shape or ()
    declared = math.prod(shape) * dataset.dtype.itemsize
    limit = min(dataset.id.get_storage_size(), file_size) * MAX_EXPANSION + FILL_ALLOWANCE
    if declared > limit:
        _refuse(f"{path}: dataset '{name}' declares shape {shape} {describe(dataset.dtype)} ({declared:,} bytes), "
                f"more than the {limit:,} bytes its {dataset.id.get_storage_size():,} stored bytes in a "
                f"{file_size:,}-byte file can hold ({MAX_EXPANSION}x for compression): the file is damaged or "
                f"hostile; rerun the stage that wrote it")


def check_schema(h5: h5py.File, schema: dict[str, Field], path: Path) -> None:
    """Every dataset of `schema` present with its dtype, rank and trailing sizes; lengths agree."""
    lengths: dict[str, tuple[str, int]] = {}
    for name, field in schema.items():
        dataset = h5.get(name)
        if not isinstance(dataset, h5py.Dataset):
            found = "missing" if dataset is None else "a group"
            _refuse(f"{path}: dataset '{name}' is {found}; expected {_expected(field)}")
        if not _dtype_fits(dataset.dtype, field):
            _refuse(f"{path}: dataset '{name}' holds {describe(dataset.dtype)}; expected {_expected(field)}")
        shape = dataset.shape or ()
        tail = shape[len(shape) - len(field.tail):] if field.tail else ()
        if len(shape) != field.rank or any(want not in (None, got) for want, got in zip(field.tail, tail)):
            _refuse(f"{path}: dataset '{name}' has shape {shape}; expected {_expected(field)}")
        if field.rows:
            first, rows = lengths.setdefault(field.rows, (name, shape[0]))
            if rows != shape[0]:
                _refuse(f"{path}: dataset '{name}' has {shape[0]} rows but '{first}' has {rows}; expected one "
                        f"row per {field.rows}")


def open_h5(path: str | Path, schema: dict[str, Field] | None = None) -> h5py.File:
    """`path` opened read-only after its links and datasets are checked (see the module docstring)
    and, with `schema`, its datasets checked against it. A missing file raises FileNotFoundError;
    one HDF5 cannot open, or one refused, a DataError naming it."""
    path = Path(path)
    h5 = None
    try:
        h5 = h5py.File(path, "r")
        file_size = path.stat().st_size
        for name in _check_links(h5, path):
            _check_storage(h5[name], path, file_size)
        if schema is not None:
            check_schema(h5, schema, path)
    except OSError as err:
        _close(h5)
        if isinstance(err, FileNotFoundError):  # the caller knows which stage writes it
            raise
        _refuse(f"{path}: cannot read ({err}): not an intact HDF5 file; rerun the stage that wrote it")
    except BaseException:
        _close(h5)
        raise
    return h5


def _close(h5: h5py.File | None) -> None:
    """Close `h5` if it was opened."""
    if h5 is not None:
        h5.close()


def read_strings(dataset: h5py.Dataset) -> list[str]:
    """The text of a string dataset (checked by `open_h5`), each decoded as UTF-8; an entry that is
    not UTF-8 is a DataError naming the file, the dataset and the entry."""
    strings = []
    for index, value in enumerate(dataset[()]):
        try:
            strings.append(value.decode() if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError as err:
            _refuse(f"{dataset.file.filename}: {dataset.name.lstrip('/')}[{index}] is not UTF-8 text ({err})")
    return strings
